"""The example pipeline live and offline: ``python -m benchmarks.pipeline`` (from the repository root).

The step is the README's: calibrate (offset and gain per pixel), count photons,
and a radial profile of each train's photon map, on a 16-module AGIPD train of
32 frames (raw, 64 MiB a train).  Calibration constants and pixel radii are
plain arrays here (the analysis package's ``calibrate``, ``photon_count`` and
``radial_profile`` take their place in real use).

- live: four simulated trains, made beforehand, are served again and again
  under new train IDs as fast as they are asked for (REQ), and
  ``pipeline.live`` runs the step for ``--seconds``; printed are the sustained
  trains/s, the trains skipped, and the lag (train received -> result
  published) distribution.
- offline: ``run_batch`` over a synthetic run on a ``LocalCluster`` of 1 and of
  2 worker processes; printed is whole-run throughput (trains/s and GB/s of
  raw pixel data), the results file written included.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

FRAMES = 32
MODULE_SHAPE = (512, 128)
PHOTON_ADU = 1000.0
N_BINS = 100


def constants() -> dict[str, np.ndarray]:
    """Offsets, gains and pixel radii (modules on a 4x4 grid around the beam)."""
    rng = np.random.default_rng(0)
    offset = rng.normal(4000, 50, (16, *MODULE_SHAPE)).astype("f4")
    gain = rng.normal(1.0, 0.02, (16, *MODULE_SHAPE)).astype("f4")
    ss, fs = np.indices(MODULE_SHAPE)
    y = (np.arange(16) // 4 - 2)[:, None, None] * 512 + ss + 0.5
    x = (np.arange(16) % 4 - 2)[:, None, None] * 128 * 4 + fs * 4 + 0.5
    r = np.hypot(x, y)
    bins = np.minimum((r / r.max() * N_BINS).astype(np.int64), N_BINS - 1)
    return {"offset": offset, "gain": gain, "bins": bins}


CONST = constants()


def inputs(d):
    return d.detector()


def _profile(photons: np.ndarray) -> np.ndarray:
    """(trains, module, ss, fs) photon maps -> (trains, N_BINS) mean photons per pixel by radius."""
    flat = CONST["bins"].ravel()
    npix = np.bincount(flat, minlength=N_BINS)
    out = np.stack([np.bincount(flat, weights=p.ravel(), minlength=N_BINS) for p in photons])
    return out / np.maximum(npix, 1)


def fn(ds: xr.Dataset) -> xr.Dataset:
    """Calibrate, count photons per frame, radial profile of each train's photon map."""
    raw = ds["image.data"].isel(gain=0).transpose("trainId", "pulseId", "module", "slow_scan", "fast_scan")
    modules = ds["module"].values
    offset = xr.DataArray(CONST["offset"][modules], dims=("module", "slow_scan", "fast_scan"))
    gain = xr.DataArray(CONST["gain"][modules], dims=("module", "slow_scan", "fast_scan"))
    calibrated = (raw.astype("f4") - offset) * gain
    photons = np.rint(calibrated / PHOTON_ADU).clip(min=0)
    # both sums in one compute: the calibration runs once (computing them one after
    # the other ran it twice)
    sums = xr.Dataset({
        "map": photons.sum("pulseId").transpose("trainId", "module", "slow_scan", "fast_scan"),
        "photons": photons.sum(["module", "slow_scan", "fast_scan"]),
    }).compute()
    full = np.zeros((sums.sizes["trainId"], 16, *MODULE_SHAPE), "f8")
    full[:, modules] = sums["map"].values
    return xr.Dataset({
        "photons": sums["photons"],
        "profile": (("trainId", "radius"), _profile(full)),
    })


def bench_live(seconds: float) -> None:
    from xfeldata.bridge import Simulator, serve
    from xfeldata.pipeline import live

    # A few simulated trains made beforehand, served again and again under new train IDs:
    # simulating a 64 MiB train takes longer than the step (it was the 1 train/s limit).
    made = [data for data, _ in Simulator("AGIPD", frames=FRAMES, ntrains=4, slow=False)]
    trains = ((tid, made[tid % len(made)]) for tid in itertools.count(10**9))
    stream = serve(trains, background=True)
    try:
        with live(fn, stream.endpoint, inputs=inputs) as pipe:
            pipe.wait(2, timeout=120)
            start = pipe.stats
            t0 = time.monotonic()
            time.sleep(seconds)
            end = pipe.stats
            elapsed = time.monotonic() - t0
    finally:
        stream.stop()
    done = end.published - start.published
    p = end.lag_percentiles((50, 90, 99, 100))
    print(f"live: {done / elapsed:.2f} trains/s sustained over {elapsed:.0f} s "
          f"({done} published, {end.skipped - start.skipped} skipped of "
          f"{end.received - start.received} received)")
    print("live lag (received -> published), last trains: "
          + ", ".join(f"p{q:g} {v * 1e3:.0f} ms" for q, v in p.items()))


def bench_offline(n_trains: int, workers: list[int], data: Path | None) -> None:
    import xfeldata as xd
    from xfeldata.pipeline import make_cluster, run_batch
    from xfeldata.testing import make_example

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(data or tmp)
        run_dir = root / f"pipeline-r{n_trains}"
        if not (run_dir / ".complete").exists():
            make_example(run_dir, n_trains=n_trains, frames_per_train=FRAMES,
                         trains_per_sequence=max(1, n_trains // 4), slow_sources=False)
            (run_dir / ".complete").touch()
        run = xd.open_run(run_dir)
        nbytes = run.detector()["image.data"].nbytes
        for n in workers:
            with make_cluster("local", workers=n) as cluster:
                t0 = time.perf_counter()
                run_batch(fn, run, Path(tmp) / f"out{n}.nc", inputs=inputs, cluster=cluster,
                          trains_per_block=2, progress=False, overwrite=True)
                elapsed = time.perf_counter() - t0
            print(f"offline, {n} worker(s): {n_trains} trains in {elapsed:.1f} s = "
                  f"{n_trains / elapsed:.2f} trains/s, {nbytes / elapsed / 1e9:.2f} GB/s of raw pixels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="live measurement time")
    parser.add_argument("--trains", type=int, default=16, help="trains of the offline run")
    parser.add_argument("--workers", default="1,2", help="offline worker counts")
    parser.add_argument("--data", type=Path, default=None, help="keep the offline run here")
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--skip-offline", action="store_true")
    args = parser.parse_args()
    if not args.skip_live:
        bench_live(args.seconds)
    if not args.skip_offline:
        bench_offline(args.trains, [int(w) for w in args.workers.split(",")], args.data)


if __name__ == "__main__":
    main()
