"""Analysis cases: xfeldata.analysis against EXtra-geom, pyFAI and a numpy copy of the same bytes.

Frames are synthetic AGIPD-1M module stacks in memory (16 x 512 x 128 pixels),
so the cases time the computation only; xfeldata runs them as dask graphs on
the threaded scheduler (all cores), the peers frame by frame as their users do.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import ceilings
from .harness import CaseResult, measure
from .offline import Context

DISTANCE, WAVELENGTH, NPT = 0.25, 1.3e-10, 500
QUAD_POS = [(-525, 625), (-550, -10), (520, -160), (542.5, 475)]


def _n_frames(ctx: Context) -> int:
    return 4 if ctx.size.name == "tiny" else 32


def _geometry():
    from extra_geom import AGIPD_1MGeometry

    return AGIPD_1MGeometry.from_quad_positions(quad_pos=QUAD_POS)


def _frames(n: int, dtype=np.float32):
    import xarray as xr

    rng = np.random.default_rng(0)
    values = (rng.random((n, 16, 512, 128), dtype=np.float32) * 100).astype(dtype)
    return xr.DataArray(values, dims=("pulseId", "module", "slow_scan", "fast_scan"),
                        coords={"pulseId": np.arange(n), "module": np.arange(16)})


def _best_of_threads(ctx: Context, make: Callable, size: int, label: str, **units: int) -> list:
    """A ceiling of :mod:`benchmarks.ceilings`, ``make(size, threads)`` over ``size`` bytes, timed on 1 and
    2 threads: the faster is the ceiling, the slower a reference line (xfeldata runs on dask's threads)."""
    timings = []
    for threads in (1, 2):
        run, close, _ = make(size, threads)
        timings.append(measure(f"{label}, {threads} thread(s)", "ceiling", run, ctx.repeat, **units))
        close()
    timings.sort(key=lambda t: t.median)
    timings[1].role = "ref"
    return timings


def _assemble_kernel(arr, geom) -> Callable[[], None]:
    """assemble's block kernel, outside dask, on 2 threads into one preallocated image stack."""
    from concurrent.futures import ThreadPoolExecutor

    from xfeldata.analysis import geometry

    modules = np.arange(geom.expected_data_shape[0])
    kernel = geometry._Assembler(geometry._layout(geom), geom, modules, np.dtype(np.float32))
    frames = arr.values
    images = np.empty((len(frames), *geometry.image_grid(geom)[0]), np.float32)
    parts = [p for p in np.array_split(np.arange(len(frames)), 8) if len(p)]

    def run() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: kernel(frames[p[0]:p[-1] + 1], images[p[0]:p[-1] + 1]), parts))

    return run


def case_assemble(ctx: Context) -> list[CaseResult]:
    """Assemble detector images: analysis.assemble (dask) vs position_modules per frame."""
    from xfeldata import analysis

    n, geom = _n_frames(ctx), _geometry()
    arr = _frames(n)
    lazy = arr.chunk({"pulseId": 4})
    res = CaseResult("assemble", f"assemble {n} AGIPD-1M frames into images")
    res.timings.append(measure("analysis.assemble(arr, geom).values", "xfeldata",
                               lambda: analysis.assemble(lazy, geom).values, ctx.repeat, items=n))
    res.timings.append(measure("the compiled kernel alone on 2 threads into images written before (no dask)", "form",
                               _assemble_kernel(arr, geom), ctx.repeat, items=n))
    res.timings.append(measure("geom.position_modules(frame) per frame", "peer",
                               lambda: [geom.position_modules(f) for f in arr.values], ctx.repeat, items=n))
    # less than assembling: it writes the frames' bytes, not the larger images'
    copies = _best_of_threads(ctx, ceilings.memcpy, arr.values.nbytes,
                              "numpy copy of the frames' bytes into preallocated memory", items=n)
    res.timings += copies
    images = np.empty((n, *analysis.geometry.image_grid(geom)[0]), np.float32)
    res.timings.append(measure("NaN-fill new images and copy the frames (1 thread, new memory)", "ref",
                               lambda: (np.full_like(images, np.nan), arr.values.copy()), ctx.repeat, items=n))
    res.check("assemble frames/s vs position_modules", "peer", 5.0)
    peer, limit = res.get("peer").median, copies[0].median
    res.notes.append(f"the memory-bandwidth limit allows at most {peer / limit:.1f}x position_modules here")
    res.notes.append("items are frames; assemble copies, mirrors or transposes 8 x 8 blocks of pixels in vector "
                     "registers, planned once per geometry from EXtra-geom's placement (compiled; EXtra-geom's "
                     "snapped geometry as the numpy twin); "
                     "the ceiling reads every frame once and writes fewer bytes than the images hold")
    return [res]


def case_radial_profile(ctx: Context) -> list[CaseResult]:
    """Radial profiles: analysis.radial_profile (dask) vs pyFAI integrate1d per frame."""
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from xfeldata import analysis

    n, geom = _n_frames(ctx), _geometry()
    arr = _frames(n)
    lazy = arr.chunk({"pulseId": 8})
    ai = AzimuthalIntegrator(dist=DISTANCE, poni1=0, poni2=0, detector=geom.to_pyfai_detector(),
                             wavelength=WAVELENGTH)

    def pyfai() -> list:
        return [ai.integrate1d(f.reshape(-1, 128), NPT, unit="q_nm^-1", method=("no", "histogram", "cython"),
                               correctSolidAngle=False, polarization_factor=None) for f in arr.values]

    res = CaseResult("radial_profile", f"radial profiles ({NPT} q bins) of {n} AGIPD-1M frames")
    res.timings.append(measure("analysis.radial_profile(...).values", "xfeldata",
                               lambda: analysis.radial_profile(lazy, geom, DISTANCE, WAVELENGTH, NPT).values,
                               ctx.repeat, items=n))
    res.timings.append(measure("ai.integrate1d(frame) per frame, no splitting", "peer", pyfai,
                               ctx.repeat, items=n))
    res.timings += _best_of_threads(ctx, ceilings.read_sum, arr.values.nbytes,
                                    "numpy sum of the frames' bytes (reading each once)", items=n)
    res.check("radial_profile frames/s vs pyFAI integrate1d", "peer", 10.0)
    res.notes.append("the pixel-to-bin matrix is built in the warm-up call and cached per geometry and parameters")
    return [res]


def _vs_copy(ctx: Context, name: str, title: str, label: str, fn: Callable[[], object],
             source: np.ndarray) -> CaseResult:
    """``fn`` against the memory-bandwidth limit: copying ``source``'s bytes into preallocated
    memory, the faster of 1 and 2 threads (xfeldata runs on the threaded scheduler), and, for
    context, ``source.copy()`` (one thread, into new memory, as ``fn``'s result is)."""
    res = CaseResult(name, title)
    res.timings.append(measure(label, "xfeldata", fn, ctx.repeat, nbytes=source.nbytes))
    res.timings += _best_of_threads(ctx, ceilings.memcpy, source.nbytes,
                                    "numpy copy of the same bytes into preallocated memory", nbytes=source.nbytes)
    res.timings.append(measure("numpy source.copy() (1 thread, into new memory)", "ref", source.copy,
                               ctx.repeat, nbytes=source.nbytes))
    res.check(f"{name} fraction of a numpy copy", "ceiling", 0.5)
    res.notes.append("the ceiling writes into memory it has written before; xfeldata's result is new "
                     "memory, which the kernel zeroes as it is first written (the last line's extra cost)")
    return res


def case_photon_count(ctx: Context) -> list[CaseResult]:
    """Photon counting of float32 frames vs a numpy copy of the same bytes."""
    from xfeldata import analysis

    n = _n_frames(ctx)
    arr = _frames(n)
    lazy = arr.chunk({"pulseId": 4})
    return [_vs_copy(ctx, "photon_count", f"photon count of {n} AGIPD-1M float32 frames",
                     "analysis.photon_count(arr, 60).values",
                     lambda: analysis.photon_count(lazy, 60).values, arr.values)]


def _raw_agipd(n: int, rng: np.random.Generator):
    """``n`` raw AGIPD-1M frames (uint16, signal and gain planes, 4 memory cells) as run.detector()
    labels and chunks them (one module, whole trains)."""
    import xarray as xr

    raw = rng.integers(4000, 6000, size=(n // 4, 4, 16, 2, 512, 128), dtype=np.uint16)
    return raw, xr.Dataset(
        {"image.data": (("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan"), raw),
         "cellId": (("trainId", "pulseId", "module"), np.broadcast_to(np.arange(4)[None, :, None], raw.shape[:3]))},
        coords={"trainId": np.arange(n // 4), "pulseId": np.arange(4), "module": np.arange(16)},
        attrs={"kind": "AGIPD1M"},  # as run.detector() labels it: plane 1 of the gain axis is the gain signal
    ).chunk({"module": 1})  # as run.detector() chunks: one module, whole trains (up to 128 MiB)


def _raw_lpd(n: int, rng: np.random.Generator):
    """``n`` raw LPD-1M frames (uint16: 12-bit signal, stage 0-2 in bits 12-13, 4 memory cells), labelled
    and chunked as run.detector() does (one module, whole trains)."""
    import xarray as xr

    raw = (rng.integers(0, 4096, size=(n // 4, 4, 16, 256, 256), dtype=np.uint16)
           | (rng.integers(0, 3, size=(n // 4, 4, 16, 256, 256), dtype=np.uint16) << 12))
    return raw, xr.Dataset(
        {"image.data": (("trainId", "pulseId", "module", "slow_scan", "fast_scan"), raw),
         "cellId": (("trainId", "pulseId", "module"), np.broadcast_to(np.arange(4)[None, :, None], raw.shape[:3]))},
        coords={"trainId": np.arange(n // 4), "pulseId": np.arange(4), "module": np.arange(16)},
        attrs={"kind": "LPD1M"},
    ).chunk({"module": 1})


def _offsets(rng: np.random.Generator, stages: int, pixels: tuple[int, int] = (512, 128)):
    """Dark constants of 16 modules, 4 cells and ``stages`` gain stages; with more than one stage,
    gain thresholds that put about a third of the raw gain signal (4000-6000) in each stage."""
    import xarray as xr

    shape = (16, 4, stages, *pixels)
    dims = ("module", "cell", "gain_stage", "slow_scan", "fast_scan")
    constants = xr.Dataset({"offset": (dims, rng.normal(5000, 300, shape).astype(np.float32)),
                            "bad_pixels": (dims, rng.random(shape) < 0.01)},
                           coords={"module": np.arange(16), "cell": np.arange(4)})
    if stages > 1:
        limits = np.linspace(4000, 6000, stages + 1)[1:-1].astype(np.float32)
        shape = (16, 4, stages - 1, *pixels)
        constants["gain_threshold"] = (("module", "cell", "threshold", "slow_scan", "fast_scan"),
                                       np.ascontiguousarray(np.broadcast_to(limits[None, None, :, None, None], shape)))
    return constants


def _values(calibrated) -> tuple:
    """``image.data`` and ``image.gain`` of a calibrated Dataset, computed in one pass."""
    out = calibrated[["image.data", "image.gain"]].compute()
    return out["image.data"].values, out["image.gain"].values


def case_calibrate(ctx: Context) -> list[CaseResult]:
    """Offset correction of raw uint16 AGIPD frames (gain plane, 4 memory cells) vs a numpy copy:
    one gain stage, and three stages taken from the gain plane by thresholds (also giving the stage);
    and of raw LPD frames, whose three stages are in their bits."""
    from xfeldata import analysis

    n = _n_frames(ctx)
    rng = np.random.default_rng(1)
    raw, det = _raw_agipd(n, rng)
    single, staged = _offsets(rng, 1), _offsets(rng, 3)

    lpd_raw, lpd = _raw_lpd(n, rng)
    lpd_constants = _offsets(rng, 3, (256, 256)).drop_vars("gain_threshold")  # LPD's stage is in its bits

    def with_stages() -> tuple:
        return _values(analysis.calibrate(det, staged))

    return [_vs_copy(ctx, "calibrate", f"offset correction of {n} raw AGIPD-1M frames (uint16, gain plane)",
                     "analysis.calibrate(det, constants)['image.data'].values",
                     lambda: analysis.calibrate(det, single)["image.data"].values, raw),
            _vs_copy(ctx, "calibrate_gain", f"offset correction of {n} raw AGIPD-1M frames in 3 gain stages "
                     "by the gain plane's thresholds",
                     "calibrate(det, constants): 'image.data' and 'image.gain' values",
                     with_stages, raw),
            _vs_copy(ctx, "calibrate_lpd", f"offset correction of {n} raw LPD-1M frames in 3 gain stages by "
                     "their bits 12-13", "calibrate(lpd, constants): 'image.data' and 'image.gain' values",
                     lambda: _values(analysis.calibrate(lpd, lpd_constants)), lpd_raw)]


CASES: dict[str, Callable[[Context], list[CaseResult]]] = {
    "assemble": case_assemble,
    "radial_profile": case_radial_profile,
    "photon_count": case_photon_count,
    "calibrate": case_calibrate,
}
