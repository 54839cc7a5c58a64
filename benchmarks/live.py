"""Live buffer: latency of a train received -> Dataset ready, the newest train as numpy, receive rate.

Three cases.  ``live``:
The buffer is fed in-process with :meth:`LiveBuffer.add` (what its receiving
thread calls after decoding a message), so the figure is the buffer's own
latency, without the socket transfer measured by the bridge case.  The buffer
already holds ``maxlen - 1`` trains, so each measurement files one new train and
builds the Dataset of the ``maxlen`` buffered trains of all 16 modules.  The
Dataset is lazy (one dask chunk per train and module, views of the buffered
frames), so that figure is the build; two ref lines add computing values: the
newest train only (what a live display reads), and every buffered train (one
copy of all frames into one array).  No peer has this.

``live_newest``: the newest train as numpy arrays, ``detector(last=1,
dask=False)``, against its ceiling, a memcpy of its ``image.data`` bytes into
memory allocated beforehand (module by module, as the frames are buffered).

``live_receive``: a :class:`~xfeldata.bridge.LiveBuffer` receiving the bridge
case's trains (``serve`` -> its receiving thread, decoding and filing
included) against the raw pyzmq ceiling of the bridge case (the same frames,
``copy=False`` on both ends), each in a fresh process, both in the steady
state: the buffer full and the trains in flight received before timing
(:func:`benchmarks.bench_bridge.time_live_buffer`), the ceiling after two
trains, so that neither is timed faulting in memory it has not used yet.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .bridge import add_worker_timings
from .harness import CaseResult, measure
from .offline import Context

MAXLEN = 10
FRAMES = 32


def case_live(ctx: Context) -> list[CaseResult]:
    """Latency of filing one train and building the stacked detector Dataset."""
    res = CaseResult("live", f"live buffer: add a 16-module AGIPD train ({FRAMES} frames), "
                     f"then detector() over {MAXLEN} buffered trains")
    if importlib.util.find_spec("xfeldata.bridge.live") is None:
        res.skipped = "xfeldata.bridge.live does not exist yet"
        return [res]
    from xfeldata.bridge import LiveBuffer, Simulator

    sim = Simulator("AGIPD", frames=FRAMES, ntrains=MAXLEN + 1, slow=False)
    trains = list(sim)
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=MAXLEN)  # never started: fed by add()
    for data, meta in trains[:-1]:
        buf.add(data, meta)
    new_data, new_meta = trains[-1]
    tid = next(iter(new_meta.values()))["timestamp.tid"]
    ds = None

    def setup() -> None:
        buf.clear()
        for data, meta in trains[1:-1]:
            buf.add(data, meta)

    def latency() -> None:
        nonlocal ds
        buf.add(new_data, new_meta)
        ds = buf.detector()

    nbytes = sum(v["image.data"].nbytes for v in new_data.values() if "image.data" in v) * MAXLEN
    res.timings.append(measure("add(train) + detector()", "xfeldata", latency, ctx.repeat,
                               setup=setup, nbytes=nbytes))
    res.timings.append(measure("detector() alone", "ref", buf.detector, ctx.repeat,
                               nbytes=nbytes))
    res.timings.append(measure("detector(), newest train computed", "ref",
                               lambda: buf.detector()["image.data"].isel(trainId=-1).values,
                               ctx.repeat, nbytes=nbytes // MAXLEN))
    res.timings.append(measure("detector().compute(), every train", "ref",
                               lambda: buf.detector().compute(), ctx.repeat, nbytes=nbytes))
    if ds is not None:
        res.notes.append(f"Dataset {dict(ds.sizes)}; newest train {tid} present: "
                         f"{int(ds.trainId[-1]) == tid}; at 10 trains/s the budget is 100 ms")
    setup()
    buf.add(new_data, new_meta)
    modules = [new_data[sim.kind.source(m)] for m in range(16)]
    return [res, _newest(buf, modules, ctx.repeat), _receive(ctx)]


def _newest(buf, modules: list[dict], repeat: int) -> CaseResult:
    """The newest train as numpy arrays against a memcpy of its frames."""
    res = CaseResult("live_newest", f"live buffer: the newest train ({FRAMES} frames x 16 modules) "
                     f"as numpy, detector(last=1, dask=False), over {MAXLEN} buffered trains")
    frames = [v["image.data"] for v in modules]
    nbytes = sum(f.nbytes for f in frames)
    out = np.empty((len(frames), *frames[0].shape), frames[0].dtype)

    def memcpy() -> None:
        for i, f in enumerate(frames):
            np.copyto(out[i], f)

    newest = {}

    def ours() -> None:
        newest["ds"] = buf.detector(last=1, dask=False)

    res.timings.append(measure("detector(last=1, dask=False)", "xfeldata", ours, repeat,
                               nbytes=nbytes, items=1))
    res.timings.append(measure("memcpy of its frames into allocated memory", "ceiling", memcpy,
                               repeat, nbytes=nbytes, items=1))
    res.timings.append(measure("detector()['image.data'].isel(trainId=-1).values", "ref",
                               lambda: buf.detector()["image.data"].isel(trainId=-1).values,
                               repeat, nbytes=nbytes, items=1))
    ds = newest["ds"]
    same = all(np.array_equal(ds["image.data"].values[0, :, m], f) for m, f in enumerate(frames))
    res.notes.append(f"image.data {ds['image.data'].shape} {ds['image.data'].dtype}, "
                     f"{nbytes / 2**20:.0f} MiB; equals the frames sent: {same}")
    res.check("fraction of memcpy (within 2x)", "ceiling", 0.5)
    return res


def _receive(ctx: Context) -> CaseResult:
    """LiveBuffer's receive rate against the raw pyzmq ceiling, each in a fresh process."""
    n, mib = ctx.size.bridge_trains, ctx.size.bridge_mib
    res = CaseResult("live_receive", f"live buffer receiving over REQ/REP on loopback: {n} trains "
                     f"of 16 modules x {mib} MiB, each contender in a fresh process")
    add_worker_timings(res, ["live_buffer", "raw_steady"], n, mib, ctx.repeat)
    res.check("fraction of raw pyzmq", "ceiling", 0.8)
    return res


CASES = {"live": case_live}
