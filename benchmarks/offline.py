"""Cases on files: xfeldata vs EXtra-data vs the h5py ceiling on the same runs.

Each case function takes a :class:`Context` and returns a
:class:`~benchmarks.harness.CaseResult`.  Runs and components are opened outside
the timed region unless opening is what is timed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h5py
import numpy as np

from . import ceilings
from .data import Size
from .harness import CaseResult, SelfTimed, measure

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
CONTROL_KEY = "pulseEnergy.photonFlux"
ITER_SOURCES = (XGM, "SA1_XTD2_XGM/DOOCS/MAIN:output", "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf")


@dataclass
class Context:
    """What every case needs: the size, the two runs of one data set, repetitions and a
    logger; ``data_dir`` and ``dataset`` let a case write runs of its own (scaling)."""

    size: Size
    raw: Path
    corr: Path
    repeat: int
    log: Callable[[str], None] = print
    dataset: str = "ours"
    data_dir: Path | None = None


def _peer_agipd(run, raw: bool):
    from extra_data.components import AGIPD1M

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AGIPD1M(run, raw=raw) if raw else AGIPD1M(run)


# -- open ------------------------------------------------------------------------

_OPEN_CODE = {
    # xfeldata's top-level exports are lazy: import what open_run needs before timing
    "xfeldata": "import xfeldata as xd\nimport xfeldata.api, xarray, dask.array\n"
                "open_ = lambda p: xd.open_run(p, progress=False)",
    "extra_data": "import extra_data as ed\nimport xarray, dask.array\nopen_ = ed.RunDirectory",
}


def _open_in_subprocess(lib: str, run_dir: Path, env: dict[str, str]) -> SelfTimed:
    """Time one open in a fresh interpreter (no in-process caches); imports are not timed,
    nor is collecting their garbage (``gc.collect()`` first, as :func:`measure` does)."""
    code = (_OPEN_CODE[lib] + "\nimport gc, sys, time\ngc.collect()\nt = time.perf_counter()\n"
            "run = open_(sys.argv[1])\nprint(time.perf_counter() - t)\n")
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], env=env, check=True,
                         capture_output=True, text=True, timeout=600)
    return SelfTimed(float(out.stdout.strip().splitlines()[-1]))


def _forget_caches(run_dir: Path, cache_dirs: list[Path]) -> None:
    shutil.rmtree(run_dir / ".xfeldata", ignore_errors=True)
    (run_dir / "karabo_data_map.json").unlink(missing_ok=True)
    for d in cache_dirs:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)


def case_open(ctx: Context) -> list[CaseResult]:
    """Open the raw run the first time (no caches) and again (caches written)."""
    return open_cases(ctx, ctx.raw)


def open_cases(ctx: Context, run_dir: Path, suffix: str = "") -> list[CaseResult]:
    """``open_first`` and ``open_again`` (names + ``suffix``) on one run directory."""
    files = ceilings.run_files(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix="xfeldata-bench-"))
    xd_cache, xdg = tmp / "xfeldata", tmp / "xdg"
    env = dict(os.environ, XFELDATA_CACHE_DIR=str(xd_cache), XDG_CACHE_HOME=str(xdg))
    forget = lambda: _forget_caches(run_dir, [xd_cache, xdg])  # noqa: E731
    try:
        first = CaseResult(f"open_first{suffix}", f"open a run of {len(files)} files, first time "
                           "(no index caches; each in a fresh interpreter)")
        for lib in ("xfeldata", "extra_data"):
            first.timings.append(measure(
                lib, "xfeldata" if lib == "xfeldata" else "peer",
                lambda lib=lib: _open_in_subprocess(lib, run_dir, env), ctx.repeat, setup=forget))
        again = CaseResult(f"open_again{suffix}", f"open the same run of {len(files)} files again "
                           "(index caches in place; each in a fresh interpreter)")
        forget()
        for lib in ("xfeldata", "extra_data"):
            again.timings.append(measure(
                lib, "xfeldata" if lib == "xfeldata" else "peer",
                lambda lib=lib: _open_in_subprocess(lib, run_dir, env), ctx.repeat))
        has_json = (run_dir / "karabo_data_map.json").exists()
        first.timings.append(measure("h5py: open each file, read INDEX/trainId and the "
                                     "METADATA sources", "ceiling",
                                     lambda: ceilings.read_train_ids_and_sources(files),
                                     ctx.repeat))
        first.timings.append(measure("h5py: read every INDEX array", "ref",
                                     lambda: ceilings.read_indexes(files), ctx.repeat))
        again.timings.append(measure("list the run, stat each file, read the run-state cache", "ceiling",
                                     lambda: ceilings.stat_and_read_cache(run_dir), ctx.repeat))
        first.check("speed-up vs EXtra-data (first time)", "peer", 2.0)
        again.check("speed-up vs EXtra-data (again)", "peer", 2.0)
        first.notes.append("first time: before each repetition the run directory's .xfeldata/ "
                           "and karabo_data_map.json and both user cache directories are "
                           "removed; xfeldata writes its index cache during the timed open")
        again.notes.append(f"EXtra-data wrote its JSON file map (karabo_data_map.json) into the "
                           f"run directory: {has_json}; both stat every file; xfeldata loads the "
                           "run's combined index from its run-state cache (one small read) and reads "
                           "its files' index cache when a file's index is first needed; the ceiling "
                           "is the stats and the read of the run states alone")
        return [first, again]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- control data ----------------------------------------------------------------


def case_control_key(ctx: Context) -> list[CaseResult]:
    """One control key over the whole run."""
    return control_key_cases(ctx, ctx.raw)


def control_key_cases(ctx: Context, run_dir: Path, suffix: str = "") -> list[CaseResult]:
    """``control_key`` (+ ``suffix``): ``run[src, key].values`` against EXtra-data's
    ``run[src, key].ndarray()`` on one run directory (runs opened untimed)."""
    import extra_data as ed

    import xfeldata as xd

    res = CaseResult(f"control_key{suffix}", f"one control key over the whole run ({XGM} {CONTROL_KEY})")
    run, peer = xd.open_run(run_dir, progress=False), ed.RunDirectory(run_dir)
    a = run[XGM, CONTROL_KEY].values
    b = peer[XGM, CONTROL_KEY].ndarray()
    if not np.array_equal(a, b):
        res.notes.append(f"values differ: xfeldata {a.shape}, EXtra-data {b.shape}")
    repeat = max(ctx.repeat, 25)  # each call takes well under a millisecond
    res.timings.append(measure("run[src, key].values", "xfeldata",
                               lambda: run[XGM, CONTROL_KEY].values, repeat))
    res.timings.append(measure("run[src, key].ndarray()", "peer",
                               lambda: peer[XGM, CONTROL_KEY].ndarray(), repeat))
    path = f"CONTROL/{XGM}/{CONTROL_KEY.replace('.', '/')}/value"
    paths = [p for p in ceilings.run_files(run_dir) if "DA01" in p.name]
    read, close = ceilings.key_pread_reader(paths, path)
    files = [h5py.File(p, "r") for p in paths]
    try:
        res.timings.append(measure("preadv of the dataset's bytes in each file", "ceiling", read, repeat))
        res.timings.append(measure("h5py read of the dataset in each file", "ref",
                                   lambda: [f[path][()] for f in files], repeat))
    finally:
        close()
        for f in files:
            f.close()
    res.check("speed-up vs EXtra-data", "peer", 2.0)
    res.notes.append(f"{len(a)} values in {len(files)} files; the preadv ceiling (and the h5py ref) read "
                     "whole datasets, including any padding rows, with the files already open and "
                     "the bytes' offsets found before timing; xfeldata's includes labelling "
                     "(DataArray over trainId), its files opened in the first call")
    return [res]


def case_control_frame(ctx: Context) -> list[CaseResult]:
    """Control table of one source with 30-odd keys."""
    import extra_data as ed

    import xfeldata as xd

    run, peer = xd.open_run(ctx.raw, progress=False), ed.RunDirectory(ctx.raw)
    a = run.control_frame(XGM)
    b = peer.get_dataframe(fields=[(XGM, "*")])
    res = CaseResult("control_frame", f"control table of {XGM} ({a.shape[1]} keys)")
    res.timings.append(measure("run.control_frame(src)", "xfeldata",
                               lambda: run.control_frame(XGM), ctx.repeat))
    res.timings.append(measure("run.get_dataframe(fields=[(src, '*')])", "peer",
                               lambda: peer.get_dataframe(fields=[(XGM, "*")]), ctx.repeat))
    res.notes.append(f"shapes: xfeldata {a.shape}, EXtra-data {b.shape}")
    return [res]


# -- stacked detector reads --------------------------------------------------------


def _stacked(ctx: Context, run_dir: Path, corrected: bool) -> CaseResult:
    import extra_data as ed

    import xfeldata as xd

    n = ctx.size.read_trains
    run, peer = xd.open_run(run_dir, progress=False), ed.RunDirectory(run_dir)
    tids = run.train_ids
    lo = min(max(len(tids) // 5, 0), len(tids) - n)  # a window crossing a sequence boundary
    first, last = int(tids[lo]), int(tids[lo + n - 1])
    kind = "corrected float32, deflate+shuffle" if corrected else "raw uint16, uncompressed"
    res = CaseResult("stacked_" + ("corr" if corrected else "raw"),
                     f"stacked detector read of {n} trains ({first}..{last}), {kind}")

    def ours() -> np.ndarray:  # the headline: the README's first form
        return run.detector()["image.data"].sel(trainId=slice(first, last)).values

    def ours_numpy() -> np.ndarray:
        return run.detector(dask=False).sel(trainId=slice(first, last))["image.data"].values

    def ours_sel_first() -> np.ndarray:
        return run.sel(trainId=slice(first, last)).detector()["image.data"].values

    def theirs() -> np.ndarray:
        sel = peer.select_trains(ed.by_id[first:last + 1])
        return _peer_agipd(sel, raw=not corrected)["image.data"].xarray().values

    a, b = ours(), theirs()
    nbytes = a.nbytes
    # xfeldata: (trainId, pulseId, module, ...); EXtra-data: (module, train_pulse, ...)
    same = np.array_equal(a[0, 0, 3], b[3, 0]) and np.array_equal(a[-1, -1, 15], b[15, -1])
    if not same:
        res.notes.append("sampled frames differ between xfeldata and EXtra-data")
    for other in (ours_numpy, ours_sel_first):
        if not np.array_equal(a, other(), equal_nan=True):
            res.notes.append(f"{other.__name__} and the headline's values differ")
    del a, b
    numpy_label = "run.detector(dask=False).sel(...)['image.data'].values"
    sel_first_label = "run.sel(trainId=...).detector()['image.data'].values"
    res.timings.append(measure("run.detector()['image.data'].sel(trainId=...).values", "xfeldata",
                               ours, ctx.repeat, nbytes=nbytes))
    res.timings.append(measure(numpy_label, "form", ours_numpy, ctx.repeat, nbytes=nbytes))
    res.timings.append(measure(sel_first_label, "form", ours_sel_first, ctx.repeat,
                               nbytes=nbytes))
    res.timings.append(measure("AGIPD1M(run)['image.data'].xarray()", "peer",
                               theirs, ctx.repeat, nbytes=nbytes))
    rows = ceilings.detector_rows(run_dir, tids[lo:lo + n])
    readers = [("h5py read_direct of the rows (HDF5 filters)", "ref", ceilings.h5py_reader)]
    if corrected:
        readers.append((f"preadv of the raw chunks + libdeflate on {os.cpu_count()} threads", "ceiling",
                        ceilings.threaded_decode_reader))
        readers.append((f"preadv of the raw chunks + zlib_into on {os.cpu_count()} threads", "ref",
                        partial(ceilings.threaded_decode_reader, inflater="zlib_into")))
    else:
        readers.append((f"preadv of just the rows into a preallocated array, {os.cpu_count()} "
                        "threads", "ceiling", ceilings.pread_reader))
        readers.append((f"preadv of just the rows into fresh memory (a new array each call, as a "
                        f"result the caller keeps), {os.cpu_count()} threads", "ref",
                        partial(ceilings.pread_reader, fresh=True)))
        readers.append(("read_direct_chunk into a preallocated array", "ref",
                        ceilings.direct_chunk_reader))
    for label, role, make in readers:
        fn, close, useful = make(rows)
        try:
            res.timings.append(measure(label, role, fn, ctx.repeat, nbytes=useful))
        finally:
            close()
    copy, _, _ = ceilings.memcpy(nbytes)
    res.timings.append(measure("memcpy of the same bytes (numpy copyto)", "ref", copy,
                               ctx.repeat, nbytes=nbytes))
    if corrected:
        res.check("speed-up vs EXtra-data", "peer", 1.5)
        res.check("fraction of the threaded-decompression ceiling", "ceiling", 0.8)
    else:
        res.check("speed-up vs EXtra-data", "peer", 2.0)
        res.check("fraction of the preadv ceiling", "ceiling", 0.5)
        res.check("dask=False: fraction of the preadv ceiling", "ceiling", 0.8, of=numpy_label)
        res.check("selecting after building, within 1.2x of selecting first "
                  "(sel-first time / headline time)", "form", 1 / 1.2, label=sel_first_label)
    res.notes.append("the headline is the README's first form (dask-backed run.detector() "
                     "with a selection); dask=False and selecting first are listed beside it")
    res.notes.append(f"{nbytes / 2**20:.0f} MiB delivered; the preadv ceiling reads exactly the "
                     "selected rows, the decompression ceiling exactly the chunks holding them "
                     "(GB/s counts the selected bytes only)")
    return res


def case_stacked_raw(ctx: Context) -> list[CaseResult]:
    """Stacked detector read of a few trains, raw uint16 uncompressed."""
    return [_stacked(ctx, ctx.raw, corrected=False)]


def case_stacked_corr(ctx: Context) -> list[CaseResult]:
    """Stacked detector read of a few trains, corrected float32 deflate+shuffle."""
    return [_stacked(ctx, ctx.corr, corrected=True)]


# -- whole-run reduction ----------------------------------------------------------


def case_reduction(ctx: Context) -> list[CaseResult]:
    """Mean image per module over all frames of the raw run, with dask (threads)."""
    return [reduction(ctx.raw, ctx.repeat)]


def reduction(run_dir: Path, repeat: int) -> CaseResult:
    """Mean image per module over all frames of the run at ``run_dir`` (raw AGIPD).

    The headline is the README's form, ``analysis.masked_mean(det, dims)`` (masked
    with ``present``); ``where(present).mean()``, the unmasked mean and the
    sum / present-count form are listed beside it.  The ceiling reads every frame
    with ``preadv`` on all cores into reused buffers and sums them per module
    (float64), no dask.
    """
    import extra_data as ed

    import xfeldata as xd
    from xfeldata.analysis import masked_mean

    run, peer = xd.open_run(run_dir, progress=False), ed.RunDirectory(run_dir)
    arr = run.detector()["image.data"]
    nbytes = arr.nbytes
    dims = ["trainId", "pulseId"]
    res = CaseResult("reduction", f"whole-run reduction: mean image per module over all "
                     f"frames ({nbytes / 2**30:.2f} GiB raw)")

    def ours() -> np.ndarray:
        return masked_mean(run.detector(), dims).values

    def ours_where() -> np.ndarray:
        det = run.detector()
        return det["image.data"].where(det["present"]).mean(dims).values

    def ours_unmasked() -> np.ndarray:
        return run.detector()["image.data"].mean(dims).values

    def ours_counted() -> np.ndarray:  # integer pixels: missing cells hold the fill value 0
        det = run.detector()
        return (det["image.data"].sum(dims, dtype=np.float64) / det["present"].sum(dims)).values

    def theirs() -> np.ndarray:
        return _peer_agipd(peer, raw=True).get_dask_array("image.data").mean(
            axis=1).values

    a, b, c = ours(), theirs(), ours_counted()
    if not (np.allclose(a, b) and np.allclose(a, c)):
        res.notes.append("the means differ between xfeldata's forms or from EXtra-data's")
    del a, b, c
    res.timings.append(measure("analysis.masked_mean(run.detector(), dims).values", "xfeldata",
                               ours, repeat, nbytes=nbytes))
    res.timings.append(measure("det['image.data'].where(det['present']).mean(...).values", "ref",
                               ours_where, repeat, nbytes=nbytes))
    res.timings.append(measure("run.detector()['image.data'].mean(...).values (unmasked)", "ref",
                               ours_unmasked, repeat, nbytes=nbytes))
    res.timings.append(measure("det['image.data'].sum(...) / det['present'].sum(...)", "ref",
                               ours_counted, repeat, nbytes=nbytes))
    res.timings.append(measure("AGIPD1M(run).get_dask_array(...).mean(axis=1)", "peer",
                               theirs, repeat, nbytes=nbytes))
    fn, close, useful = ceilings.pread_sum_reader(ceilings.detector_rows(run_dir, run.train_ids))
    try:
        res.timings.append(measure(f"preadv + numpy sum per module, {os.cpu_count()} threads",
                                   "ceiling", fn, repeat, nbytes=useful))
    finally:
        close()
    res.check("speed-up vs EXtra-data", "peer", 2.0)
    ours_chunks = arr.data.numblocks
    theirs_arr = _peer_agipd(peer, raw=True).get_dask_array("image.data")
    res.notes.append(f"dask chunks: xfeldata {arr.data.chunksize} x {np.prod(ours_chunks)}; "
                     f"EXtra-data {theirs_arr.data.chunksize} x "
                     f"{int(np.prod(theirs_arr.data.numblocks))}; default threaded scheduler")
    return res


# -- per-train iteration ----------------------------------------------------------


def case_trains(ctx: Context) -> list[CaseResult]:
    """Iterate over trains of 3 selected sources (control, instrument, one detector module)."""
    import extra_data as ed

    import xfeldata as xd

    n = ctx.size.iter_trains
    run = xd.open_run(ctx.raw, progress=False).select({s: set() for s in ITER_SOURCES})
    peer = ed.RunDirectory(ctx.raw).select([(s, "*") for s in ITER_SOURCES])
    res = CaseResult("trains", f"iterate {n} trains of 3 sources: " + ", ".join(ITER_SOURCES))

    def ours() -> int:
        return sum(1 for _ in itertools.islice(run.trains(), n))

    def theirs() -> int:
        return sum(1 for _ in itertools.islice(peer.trains(), n))

    got = (ours(), theirs())
    if got != (n, n):
        res.notes.append(f"trains iterated: xfeldata {got[0]}, EXtra-data {got[1]}")
    res.timings.append(measure("run.select(...).trains()", "xfeldata", ours, ctx.repeat, items=n))
    res.timings.append(measure("run.select(...).trains()", "peer", theirs, ctx.repeat, items=n))
    res.check("speed-up vs EXtra-data (trains/s)", "peer", 3.0)
    return [res]


CASES: dict[str, Callable[[Context], list[CaseResult]]] = {
    "open": case_open,
    "control_key": case_control_key,
    "control_frame": case_control_frame,
    "stacked_raw": case_stacked_raw,
    "stacked_corr": case_stacked_corr,
    "reduction": case_reduction,
    "trains": case_trains,
}
