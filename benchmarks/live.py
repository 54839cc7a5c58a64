"""Live buffer latency: a train received -> ``LiveBuffer.detector()`` Dataset ready.

The buffer is fed in-process with :meth:`LiveBuffer.add` (what its receiving
thread calls after decoding a message), so the figure is the buffer's own
latency, without the socket transfer measured by the bridge case.  The buffer
already holds ``maxlen - 1`` trains, so each measurement files one new train and
builds the Dataset of the ``maxlen`` buffered trains of all 16 modules.  The
Dataset is lazy (one dask chunk per train and module, views of the buffered
frames), so that figure is the build; two ref lines add computing values: the
newest train only (what a live display reads), and every buffered train (one
copy of all frames into one array).  No peer has this.
"""

from __future__ import annotations

import importlib.util

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
    return [res]


CASES = {"live": case_live}
