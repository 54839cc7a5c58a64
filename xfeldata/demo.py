"""``xfeldata demo``: write a synthetic run, open it, summarise it and read some data.

Examples
--------
>>> run_demo()      # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .api import open_run
from .testing import make_example


def run_demo(keep: str | None = None, n_trains: int = 20, frames: int = 4) -> None:
    """Write a 16-module AGIPD run with slow data, then open, summarise and read it.

    Parameters
    ----------
    keep
        Directory to write the run into and keep; by default a temporary one.
    n_trains, frames
        Size of the synthetic run.
    """
    with tempfile.TemporaryDirectory(prefix="xfeldata-demo-") as tmp:
        target = Path(keep) if keep else Path(tmp) / "r0001"
        t0 = time.perf_counter()
        path = make_example(target, detector="AGIPD1M", n_trains=n_trains, frames_per_train=frames,
                            trains_per_sequence=max(1, n_trains // 2), irregular=True)
        print(f"Wrote a synthetic AGIPD-1M run ({n_trains} trains, up to {frames} frames per train, "
              f"2 sequence files) in {time.perf_counter() - t0:.1f} s. It is irregular on purpose, "
              "like real runs: one bogus, flagged train ID (kept as a suspect train, so the run has "
              "one train more), trains without detector data, a module missing trains and frame "
              "counts that vary.\n")

        t0 = time.perf_counter()
        run = open_run(path)
        print(f">>> run = xd.open_run(path)    # {time.perf_counter() - t0:.2f} s\n>>> run.info()")
        run.info()

        xgm = "SA1_XTD2_XGM/DOOCS/MAIN"
        print(f"\n>>> run['{xgm}', 'pulseEnergy.photonFlux'].to_series().head()")
        print(run[xgm, "pulseEnergy.photonFlux"].to_series().head())

        print(f"\n>>> run.control_frame(sources='{xgm}', keys='beamPosition.*').head()")
        print(run.control_frame(sources=xgm, keys="beamPosition.*").head())

        print("\n>>> det = run.detector()")
        det = run.detector()
        print(det)
        first = int(det.trainId[0])
        print(f"\n>>> det['image.data'].sel(trainId={first}).isel(gain=0).where(det.present)"
              ".mean(['slow_scan', 'fast_scan']).values   # mean signal per pulse and module; "
              "frames a train lacks are masked with present (NaN), never averaged as 0")
        frames = det["image.data"].sel(trainId=first).isel(gain=0)
        means = frames.where(det.present.sel(trainId=first)).mean(["slow_scan", "fast_scan"])
        print(means.values.round(1))
        missing = (~det.present.any("pulseId")).sum("module")
        print("\n>>> (~det.present.any('pulseId')).sum('module')   # modules missing per train")
        print(missing.to_series().to_string())
        if keep:
            print(f"\nThe run is kept in {path}; try: xfeldata info {path}")
