"""Karabo bridge throughput over loopback (REQ/REP): xfeldata vs karabo-bridge vs raw pyzmq.

A train is 16 module sources, each one array of ``bridge_mib`` MiB (one frame
per module, as detector sources travel), built by
:func:`benchmarks.bench_bridge.make_train`.  Every contender runs in a fresh
interpreter (``python -m benchmarks.bridge --worker NAME``): xfeldata's
client tunes the process's allocator (:mod:`xfeldata.bridge.buffers`), and
that must not leak into the peer's figures.  Each run times
``bridge_trains`` trains after one warm-up train on a fresh server and
reports wall time, CPU time of the whole process (both ends, every thread)
and minor page faults; the contenders take turns, one run each per
repetition, so that a busy machine slows them alike.  Every server, thread
and socket is stopped before the run ends; all socket waits have timeouts,
all loops are bounded in count.

Contenders (server -> client):

- xfeldata: ``serve(trains)`` -> :class:`xfeldata.bridge.Client`;
- peer: karabo-bridge ``ServerInThread`` -> ``karabo_bridge.Client``;
- ceiling: the same frames over raw pyzmq, ``copy=False`` on both ends, one
  context per end, allocator tuned as xfeldata's client tunes it
  (:func:`benchmarks.bench_bridge.run_raw`);
- refs: the raw pyzmq ceiling with glibc's default allocator; each
  package's client against the other's server; ``serve(policy="queue")``;
  encode + decode without sockets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from . import bench_bridge
from .harness import CaseResult, Timing
from .offline import Context

_ROOT = Path(__file__).resolve().parent.parent

#: name -> (role, label, driver call taking (train, ntrains)): the bridge case's contenders
CONTENDERS = {
    "xfeldata": ("xfeldata", "serve(trains) -> Client",
                 lambda t, n: bench_bridge.run_xfeldata(t, n)),
    "karabo_bridge": ("peer", "ServerInThread -> karabo_bridge.Client",
                      lambda t, n: bench_bridge.run_published(t, n)),
    "raw": ("ceiling", "raw pyzmq, same frames, copy=False both ends",
            lambda t, n: bench_bridge.run_raw(t, n)),
    "raw_default_malloc": ("ref", "raw pyzmq, glibc's default allocator",
                           lambda t, n: bench_bridge.run_raw(t, n, keep_buffers=False)),
    "kb_client_on_ours": ("ref", "serve(trains) -> karabo_bridge.Client",
                          lambda t, n: bench_bridge.run_xfeldata(t, n, client="karabo_bridge")),
    "ours_on_kb_server": ("ref", "ServerInThread -> xfeldata Client",
                          lambda t, n: bench_bridge.run_published(t, n, client="xfeldata")),
    "queue": ("ref", "serve(..., policy='queue', maxlen=2) -> Client",
              lambda t, n: bench_bridge.run_xfeldata(t, n, policy="queue", maxlen=2)),
    "codec": ("ref", "encode + decode, no sockets",
              lambda t, n: bench_bridge.run_codec(t, n)),
}
#: Every driver a worker process can run (the live case's too).
WORKERS = {**CONTENDERS,
           "live_buffer": ("xfeldata", "serve(trains) -> LiveBuffer(maxlen=4), full",
                           lambda t, n: bench_bridge.run_live_buffer(t, n)),
           "raw_steady": ("ceiling", "raw pyzmq, same frames, copy=False both ends, 2 warm-up trains",
                          lambda t, n: bench_bridge.run_raw(t, n, warmup=2))}


def worker(name: str, ntrains: int, mib: int) -> dict:
    """One run of one contender in this process: wall and CPU seconds, minor faults."""
    train = bench_bridge.make_train(16, mib)
    if name == "live_buffer":
        import xfeldata.bridge.live  # noqa: F401  (xarray, dask, pandas: not timed)
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = WORKERS[name][2](train, ntrains)
    after = resource.getrusage(resource.RUSAGE_SELF)
    # CPU and faults cover the warm-up train and the set-up too: an upper bound per train
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": seconds, "cpu": cpu, "minflt": after.ru_minflt - before.ru_minflt}


def run_worker(name: str, ntrains: int, mib: int) -> dict:
    """:func:`worker` in a fresh interpreter (its settings do not leak into the next)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, "-m", "benchmarks.bridge", "--worker", name,
                          "--trains", str(ntrains), "--mib", str(mib)],
                         env=env, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def case_bridge(ctx: Context) -> list[CaseResult]:
    """16-module detector trains over REQ/REP on loopback, each contender in its own process."""
    n, mib = ctx.size.bridge_trains, ctx.size.bridge_mib
    size = 16 * mib * 2**20
    res = CaseResult("bridge", f"bridge REQ/REP on loopback: {n} trains of 16 modules x "
                     f"{mib} MiB ({size / 2**20:.0f} MiB/train), each contender in a fresh process")
    add_worker_timings(res, list(CONTENDERS), n, mib, ctx.repeat)
    res.check("speed-up vs karabo-bridge (GB/s)", "peer", 1.5)
    res.check("fraction of raw pyzmq", "ceiling", 0.8)
    return [res]


def add_worker_timings(res: CaseResult, names: list[str], ntrains: int, mib: int,
                       repeat: int) -> None:
    """Run the ``names`` workers ``repeat`` times, taking turns; add their timings and notes."""
    size = 16 * mib * 2**20
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(repeat):  # take turns, so that a busy machine slows every contender alike
        for name in names:
            runs[name].append(run_worker(name, ntrains, mib))
    nbytes = (ntrains + 1) * size  # CPU and faults include the warm-up train
    for name in names:
        role, label, _ = WORKERS[name]
        res.timings.append(Timing(label, role, [r["seconds"] for r in runs[name]],
                                  nbytes=ntrains * size, items=ntrains))
        cpu = statistics.median(r["cpu"] for r in runs[name]) / (nbytes / 1e9)
        faults = statistics.median(r["minflt"] for r in runs[name]) / (ntrains + 1)
        res.notes.append(f"{label}: {cpu:.2f} CPU s per GB (both ends, whole process), "
                         f"{faults:.0f} minor page faults per train")


CASES = {"bridge": case_bridge}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one bridge contender in this process (JSON on stdout)")
    p.add_argument("--worker", choices=list(WORKERS), required=True)
    p.add_argument("--trains", type=int, default=10)
    p.add_argument("--mib", type=int, default=4)
    args = p.parse_args(argv)
    print(json.dumps(worker(args.worker, args.trains, args.mib)))


if __name__ == "__main__":
    main()
