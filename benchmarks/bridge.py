"""Karabo bridge throughput over loopback (REQ/REP): xfeldata vs karabo-bridge vs raw pyzmq.

A train is 16 module sources, each one array of ``bridge_mib`` MiB (one frame
per module, as detector sources travel), built by
:func:`benchmarks.bench_bridge.make_train`; the peer's server and client are
driven by :func:`benchmarks.bench_bridge.run_published`.  Every measurement
times ``bridge_trains`` trains after one warm-up train on a fresh server, and
every server, thread and socket is stopped before the next one starts.  All
socket waits have timeouts, all loops are bounded in count.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from . import bench_bridge
from .harness import CaseResult, SelfTimed, measure
from .offline import Context

_TIMEOUT_S = 30


def _serve_client(train: dict, ntrains: int, **serve_kw) -> float:
    """``serve`` a list of trains in the background; time ``ntrains`` ``Client.next()``."""
    from xfeldata.bridge import Client, serve

    trains = [(tid, train) for tid in range(ntrains + 1)]
    handle = serve(trains, sock="REP", background=True, **serve_kw)
    try:
        with Client(handle.endpoint, timeout=_TIMEOUT_S) as client:
            client.next()
            start = time.perf_counter()
            for _ in range(ntrains):
                data, _ = client.next()
            elapsed = time.perf_counter() - start
    finally:
        handle.stop()
    return elapsed


def _raw_pyzmq(arrays: list[np.ndarray], ntrains: int) -> float:
    """REP thread sends a small header + one frame per array (zero-copy); REQ receives."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.setsockopt(zmq.RCVTIMEO, _TIMEOUT_S * 1000)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    header = b"h" * 64

    def server() -> None:
        try:
            for _ in range(ntrains + 1):
                rep.recv()
                rep.send_multipart([header, *arrays], copy=False)
        except zmq.ZMQError:
            pass

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, _TIMEOUT_S * 1000)
    req.connect(f"tcp://127.0.0.1:{port}")
    try:
        req.send(b"next")
        req.recv_multipart(copy=False)
        start = time.perf_counter()
        for _ in range(ntrains):
            req.send(b"next")
            frames = req.recv_multipart(copy=False)
            [np.frombuffer(f.buffer, np.uint8) for f in frames[1:]]
        elapsed = time.perf_counter() - start
    finally:
        thread.join(_TIMEOUT_S)
        req.close(0)
        rep.close(0)
        ctx.term()
    return elapsed


def case_bridge(ctx: Context) -> list[CaseResult]:
    """16-module detector trains over REQ/REP on loopback."""
    n, mib = ctx.size.bridge_trains, ctx.size.bridge_mib
    train = bench_bridge.make_train(16, mib)
    size = 16 * mib * 2**20
    res = CaseResult("bridge", f"bridge REQ/REP on loopback: {n} trains of 16 modules x "
                     f"{mib} MiB ({size / 2**20:.0f} MiB/train)")
    kw = dict(nbytes=n * size, items=n)
    res.timings.append(measure("serve(trains) + Client", "xfeldata",
                               lambda: SelfTimed(_serve_client(train, n)), ctx.repeat, **kw))
    res.timings.append(measure("ServerInThread + karabo_bridge.Client", "peer",
                               lambda: SelfTimed(bench_bridge.run_published(train, n)),
                               ctx.repeat, **kw))
    arrays = [v["image.data"] for v in train.values()]
    res.timings.append(measure("raw pyzmq REQ/REP, one frame per module", "ceiling",
                               lambda: SelfTimed(_raw_pyzmq(arrays, n)), ctx.repeat, **kw))
    res.timings.append(measure("serve(..., policy='queue', maxlen=2) + Client", "ref",
                               lambda: SelfTimed(_serve_client(train, n, policy="queue",
                                                               maxlen=2)), ctx.repeat, **kw))
    res.timings.append(measure("encode + decode, no sockets (bench_bridge)", "ref",
                               lambda: SelfTimed(bench_bridge.run_codec(train, n)),
                               ctx.repeat, **kw))
    res.check("speed-up vs karabo-bridge (GB/s)", "peer", 1.5)
    res.check("fraction of raw pyzmq", "ceiling", 0.8)
    return [res]


CASES = {"bridge": case_bridge}
