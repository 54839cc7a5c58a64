"""Peak memory of the whole-run reduction on a run larger than half the RAM (``--size large``).

Each library runs the reduction of :func:`benchmarks.offline.case_reduction`
in a fresh interpreter whose resident set size (psutil RSS) a thread samples
every 20 ms; a child whose RSS passes 75 % of the RAM is stopped (reported as
aborted) so the machine never swaps or kills other work.  At the default sizes
the run is much smaller than the RAM and the case is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil

from .harness import CaseResult, Timing
from .offline import Context

_CHILD = r"""
import json, os, sys, threading, time, warnings
import psutil
lib, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
proc = psutil.Process()
peak = [proc.memory_info().rss]
baseline = peak[0]
done = threading.Event()
def sample():
    while not done.wait(0.02):
        rss = proc.memory_info().rss
        peak[0] = max(peak[0], rss)
        if rss > limit:
            print(json.dumps({"aborted": True, "peak": rss, "baseline": baseline}), flush=True)
            os._exit(3)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
if lib == "xfeldata":
    import xfeldata as xd
    from xfeldata.analysis import masked_mean
    masked_mean(xd.open_run(path, progress=False).detector(), ["trainId", "pulseId"]).values
else:
    import extra_data as ed
    from extra_data.components import AGIPD1M
    warnings.simplefilter("ignore")
    AGIPD1M(ed.RunDirectory(path), raw=True).get_dask_array("image.data").mean(axis=1).values
dt = time.perf_counter() - t
done.set()
print(json.dumps({"aborted": False, "peak": peak[0], "baseline": baseline, "seconds": dt}))
"""


def _child(lib: str, path: str, limit: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, lib, path, str(limit)],
                         capture_output=True, text=True, timeout=3600)
    lines = out.stdout.strip().splitlines()
    if not lines:
        return {"aborted": True, "error": out.stderr[-500:]}
    return json.loads(lines[-1])


def case_memory(ctx: Context) -> list[CaseResult]:
    """Peak RSS of the whole-run reduction, xfeldata and EXtra-data, one run each."""
    ram = psutil.virtual_memory().total
    run_bytes = ctx.size.raw.nbytes()
    res = CaseResult("memory", f"peak memory of the whole-run reduction "
                     f"({run_bytes / 2**30:.1f} GiB run, {ram / 2**30:.1f} GiB RAM)")
    if not ctx.size.memory_case:
        res.skipped = ("needs a run larger than half the RAM: only with --size large "
                       f"(this run: {run_bytes / 2**30:.1f} GiB)")
        return [res]
    if run_bytes < ram / 2:
        res.notes.append("the run is smaller than half of this machine's RAM")
    limit = int(ram * 0.75)
    for lib, role in (("xfeldata", "xfeldata"), ("extra_data", "peer")):
        got = _child(lib, os.fspath(ctx.raw), limit)
        peak = got.get("peak", 0) - got.get("baseline", 0)
        if got.get("aborted"):
            res.notes.append(f"{lib}: stopped when RSS passed 75 % of RAM "
                             f"({got.get('peak', 0) / 2**30:.1f} GiB) {got.get('error', '')}")
            continue
        res.timings.append(Timing(lib, role, [got["seconds"]], nbytes=run_bytes))
        res.notes.append(f"{lib}: peak RSS {got['peak'] / 2**30:.2f} GiB "
                         f"({peak / 2**30:.2f} GiB above the child's starting RSS"
                         f"), {got['seconds']:.1f} s")
    return [res]


CASES = {"memory": case_memory}
