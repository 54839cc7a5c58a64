"""Export throughput: ``run.write`` of uncompressed detector data against h5py writing the same bytes.

The selection is ``image.data`` of every AGIPD-1M module for the first
``read_trains`` trains of the raw benchmark run (uncompressed, one frame per
chunk, as the facility stores it).  ``run.write`` reads the frames from the
run and writes them; the ceiling writes the same bytes, already in memory,
with h5py into datasets of the same shape and chunking: ``write_direct_chunk``
of each frame, or one ``dataset[...] = array`` (the faster one is the ceiling).
Output goes to a directory beside the run (same file system) and is deleted
before every call; times are warm page cache.  ``write_cxi`` (copied) and
``write_virtual`` of the same selection are shown for reference.

Target (issue 12): ``run.write`` at >= 0.5 of the ceiling.  A note gives the
peak memory ``run.write`` allocates (numpy's allocations, as ``tracemalloc``
counts them) while writing every detector key of the whole run: it stays at
a few blocks of rows, whatever the size of the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from .harness import CaseResult, measure
from .offline import Context

DETECTOR = "SPB_DET_AGIPD1M-1/DET/*CH0:xtdf"


def _h5py_write(frames: dict[str, np.ndarray], path: Path, direct: bool) -> None:
    with h5py.File(path, "w") as f:
        for source, arr in frames.items():
            dset = f.create_dataset(f"INSTRUMENT/{source}/image/data", arr.shape, arr.dtype,
                                    chunks=(1, *arr.shape[1:]))
            if direct:
                for i in range(len(arr)):
                    dset.id.write_direct_chunk((i, 0, 0, 0), arr[i])
            else:
                dset[...] = arr


def _peak_bytes(fn) -> int:
    """Peak bytes allocated (tracemalloc, which counts numpy's buffers) while ``fn`` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def case_export(ctx: Context) -> list[CaseResult]:
    """``run.write`` vs the h5py write ceiling of the same bytes."""
    import xfeldata as xd

    modules = xd.open_run(ctx.raw, progress=False).select(DETECTOR).isel(trainId=slice(0, ctx.size.read_trains))
    run = modules.select(DETECTOR, "image.data")
    frames = {s: run[s, "image.data"].values.reshape(-1, 2, 512, 128) for s in run.sources}
    nbytes = sum(a.nbytes for a in frames.values())
    res = CaseResult("export", f"run.write of {nbytes / 2**20:.0f} MiB of raw AGIPD frames "
                     f"({len(frames)} modules, {len(run.train_ids)} trains) vs h5py writing the same bytes")
    out = ctx.raw.parent / "_export"

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    try:
        res.timings.append(measure("run.write (one file)", "xfeldata",
                                   lambda: run.write(out / "w.h5", progress=False), ctx.repeat,
                                   setup=fresh, nbytes=nbytes))
        for label, direct in (("h5py write_direct_chunk per frame", True), ("h5py dataset[...] = array", False)):
            res.timings.append(measure(label, "ref", lambda d=direct: _h5py_write(frames, out / "c.h5", d),
                                       ctx.repeat, setup=fresh, nbytes=nbytes))
        best = min((t for t in res.timings if t.role == "ref"), key=lambda t: t.median)
        best.role = "ceiling"
        det = modules.detector(keys=["image.data"])
        res.timings.append(measure("write_cxi (copied)", "ref",
                                   lambda: xd.write_cxi(det, out / "c.cxi", progress=False), ctx.repeat,
                                   setup=fresh, nbytes=nbytes))
        res.timings.append(measure("run.write_virtual (nothing copied)", "ref",
                                   lambda: run.write_virtual(out / "v.h5", progress=False), ctx.repeat,
                                   setup=fresh))
        fresh()
        whole = xd.open_run(ctx.raw, progress=False).select(DETECTOR)
        peak = _peak_bytes(lambda: whole.write(out / "whole.h5", progress=False))
        res.notes.append(f"peak memory allocated while writing the whole run's detector "
                         f"({ctx.size.raw.nbytes() / 2**30:.2f} GiB of frames): {peak / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res.check("fraction of the h5py write ceiling", "ceiling", 0.5)
    res.notes.append("the ceiling is the faster of the two h5py writes; run.write also reads the frames")
    return [res]


CASES = {"export": case_export}
