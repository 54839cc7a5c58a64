"""Karabo bridge throughput over loopback: xfeldata vs the published karabo-bridge package.

Each train holds ``--modules`` arrays of ``--mib`` MiB (one frame each, as
per-module detector sources travel).  Trains are encoded once and fed again
and again, so the numbers measure the transport and decoding, not the data
generation.

Usage::

    python benchmarks/bench_bridge.py --trains 30 --modules 4 --mib 16
"""

from __future__ import annotations

import argparse
import resource
import threading
import time

import numpy as np

_TIMEOUT_S = 30


def make_train(modules: int, mib: int) -> dict:
    n = mib * 2**20 // 2
    return {f"DET/MOD/{m}CH0:xtdf": {"image.data": np.full(n, m, dtype=np.uint16), "n": m}
            for m in range(modules)}


def _timed_next(next_train, ntrains: int, warmup: int = 1, faults: list | None = None) -> float:
    """``warmup`` untimed ``next_train()`` calls, then the time of ``ntrains`` more.

    ``faults``: a list to append the minor page faults per timed train to (whole process).
    """
    for _ in range(warmup):
        next_train()
    before = _minflt()
    start = time.perf_counter()
    for _ in range(ntrains):
        next_train()
    elapsed = time.perf_counter() - start
    if faults is not None:
        faults.append((_minflt() - before) / ntrains)
    return elapsed


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_xfeldata(train: dict, ntrains: int, client: str = "xfeldata", **serve_kw) -> float:
    """``serve`` (REP) of a list of trains in the background; time ``client.next()``.

    ``client`` is ``"xfeldata"`` (:class:`xfeldata.bridge.Client`) or
    ``"karabo_bridge"`` (the published client against xfeldata's server).
    """
    from xfeldata.bridge import Client, serve

    trains = [(tid, train) for tid in range(ntrains + 1)]
    handle = serve(trains, sock="REP", background=True, **serve_kw)
    try:
        if client == "karabo_bridge":
            import karabo_bridge

            kb = karabo_bridge.Client(handle.endpoint, timeout=_TIMEOUT_S)
            try:
                return _timed_next(kb.next, ntrains)
            finally:
                kb._context.destroy(linger=0)
        with Client(handle.endpoint, timeout=_TIMEOUT_S) as ours:
            return _timed_next(ours.next, ntrains)
    finally:
        handle.stop()


def run_ours(train: dict, ntrains: int, sock: str, client_sock: str) -> float:
    """A :class:`~xfeldata.bridge.Server` fed from a thread (policy queue, maxlen 2)."""
    from xfeldata.bridge import Client, Server, ServerClosed

    with Server(sock=sock, policy="queue", maxlen=2) as server:
        def feed():
            for tid in range(ntrains + 1):
                try:
                    server.feed(train, train_id=tid, timeout=_TIMEOUT_S)
                except (ServerClosed, TimeoutError):
                    return

        t = threading.Thread(target=feed, daemon=True)
        t.start()
        with Client(server.endpoint, sock=client_sock, timeout=_TIMEOUT_S) as client:
            elapsed = _timed_next(client.next, ntrains)
    t.join(5)
    return elapsed


def run_published(train: dict, ntrains: int, client: str = "karabo_bridge") -> float:
    """karabo-bridge's ``ServerInThread`` (REP, maxlen 2) fed from a thread; time ``next()``.

    ``client`` is ``"karabo_bridge"`` (its own client) or ``"xfeldata"``.
    """
    import karabo_bridge
    from karabo_bridge.server import ServerInThread

    server = ServerInThread("tcp://127.0.0.1:0", sock="REP", maxlen=2)
    server.start()
    stop = threading.Event()

    def feed():
        for tid in range(ntrains + 1):
            meta = {s: {"timestamp.tid": tid} for s in train}
            while not stop.is_set():
                try:
                    server.feed(train, meta, timeout=0.5)
                    break
                except Exception:  # queue.Full
                    continue

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        if client == "xfeldata":
            from xfeldata.bridge import Client

            with Client(server.endpoint, timeout=_TIMEOUT_S) as ours:
                return _timed_next(ours.next, ntrains)
        kb = karabo_bridge.Client(server.endpoint, timeout=_TIMEOUT_S)
        try:
            return _timed_next(kb.next, ntrains)
        finally:
            kb._context.destroy(linger=0)
    finally:
        stop.set()
        server.stop()
        t.join(5)


#: Trains a :class:`~xfeldata.bridge.LiveBuffer` receives beyond ``maxlen`` before its
#: memory is all in place: the one ZeroMQ's queue holds and the one being decoded.
LIVE_IN_FLIGHT = 2


def run_live_buffer(train: dict, ntrains: int, maxlen: int = 4, warmup: int | None = None) -> float:
    """``serve`` (REP) of one train again and again -> :func:`time_live_buffer`."""
    warmup = maxlen + LIVE_IN_FLIGHT if warmup is None else warmup
    return time_live_buffer([(tid, train) for tid in range(warmup + ntrains)], ntrains,
                            maxlen, warmup)


def time_live_buffer(trains: list, ntrains: int, maxlen: int = 4,
                     warmup: int | None = None, faults: list | None = None) -> float:
    """``serve(trains)`` (REP) -> :class:`~xfeldata.bridge.LiveBuffer`; time ``ntrains`` received.

    The buffer receives in its own thread (decode and :meth:`LiveBuffer.add`
    included).  Timing starts once ``warmup`` trains are in (default
    ``maxlen + LIVE_IN_FLIGHT``: the buffer full, each timed train evicting
    the oldest one as in a running monitor, and the memory of every train
    held or in flight already in use: the steady state).  ``warmup=1``
    times the filling of an empty buffer as well, where each of the first
    ``maxlen`` trains lands in memory the process has not used before (on
    Linux every 4 KiB page of it is faulted in once).  ``trains`` holds at
    least ``warmup + ntrains`` trains for :func:`xfeldata.bridge.serve`.
    ``faults``: a list to append the minor page faults per timed train to.
    """
    from xfeldata.bridge import LiveBuffer, serve

    warmup = maxlen + LIVE_IN_FLIGHT if warmup is None else warmup
    if len(trains) < warmup + ntrains:
        raise ValueError(f"{len(trains)} trains for {warmup} + {ntrains}")
    handle = serve(trains[:warmup + ntrains], sock="REP", background=True)
    try:
        with LiveBuffer(handle.endpoint, maxlen=maxlen, timeout=_TIMEOUT_S) as buf:
            # woken once per train filed (no polling loop competing for the GIL)
            filed = 0
            while filed < warmup:
                filed = buf.wait_newer(filed, timeout=_TIMEOUT_S).filed
            before = _minflt()
            start, first = time.perf_counter(), filed
            while filed < first + ntrains:
                filed = buf.wait_newer(filed, timeout=_TIMEOUT_S).filed
            elapsed = time.perf_counter() - start
            if faults is not None:
                faults.append((_minflt() - before) / (filed - first))
            return elapsed
    finally:
        handle.stop()


def array_payloads(frames: list) -> list[int]:
    """Indices of the array payload frames of a 2.2 message (after each ``array`` header).

    >>> from xfeldata.bridge import encode
    >>> array_payloads(encode({"A:o": {"n": 1, "x": np.zeros(2), "y": np.ones(3)}},
    ...                       {"A:o": {"timestamp.tid": 1}}))
    [3, 5]
    """
    import msgpack

    return [i + 1 for i in range(0, len(frames), 2)
            if msgpack.unpackb(frames[i])["content"] == "array"]


def run_raw(train: dict, ntrains: int, keep_buffers: bool = True, warmup: int = 1,
            faults: list | None = None) -> float:
    """The ceiling: the same frames over raw pyzmq REQ/REP, ``copy=False`` on both ends.

    The frames are those :func:`xfeldata.bridge.encode` makes for the train
    (made once, before timing); a REP thread sends them on each request with
    ``send_multipart(copy=False)``, and the REQ side receives them with
    ``recv_multipart(copy=False)`` and wraps each array frame with
    ``numpy.frombuffer``, which is all a receiver must do.  Each end has its
    own ZeroMQ context (so its own I/O thread, as two programs would; one
    shared context serialises both ends' copies on one thread), and the
    sockets have the protocol's high-water mark of 1 and LINGER 0.  With
    ``keep_buffers`` the allocator keeps freed message memory as xfeldata's
    client makes it (:func:`xfeldata.bridge.buffers.keep_freed_memory`).
    ``warmup`` trains are received before timing: 1 as the clients are
    timed; with 2 the second train's memory is in use too (the steady
    state: no page faults in the timed trains).  ``faults`` as for
    :func:`_timed_next`.
    """
    import zmq

    from xfeldata.bridge.buffers import keep_freed_memory
    from xfeldata.bridge.protocol import encode

    if keep_buffers:
        keep_freed_memory(sum(v.nbytes for p in train.values() for v in p.values()
                                  if isinstance(v, np.ndarray)))
    frames = encode(train, {s: {"timestamp.tid": 1} for s in train})
    arrays = array_payloads(frames)  # known before timing: the same frames every time
    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    rep = server_ctx.socket(zmq.REP)
    req = client_ctx.socket(zmq.REQ)
    for sock in (rep, req):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, _TIMEOUT_S * 1000)
        sock.set_hwm(1)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def server() -> None:
        try:
            for _ in range(ntrains + warmup):
                rep.recv()
                rep.send_multipart(frames, copy=False)
        except zmq.ZMQError:
            pass

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    req.connect(f"tcp://127.0.0.1:{port}")

    def next_train() -> list:
        req.send(b"next")
        got = req.recv_multipart(copy=False)
        return [np.frombuffer(got[i].buffer, np.uint8) for i in arrays]

    try:
        return _timed_next(next_train, ntrains, warmup, faults)
    finally:
        thread.join(_TIMEOUT_S)
        req.close(0)
        rep.close(0)
        server_ctx.term()
        client_ctx.term()


def run_codec(train: dict, ntrains: int) -> float:
    from xfeldata.bridge import decode, encode

    meta = {s: {"timestamp.tid": 1} for s in train}
    start = time.perf_counter()
    for _ in range(ntrains):
        decode(encode(train, meta))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trains", type=int, default=30)
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--mib", type=int, default=16, help="MiB per module array")
    args = parser.parse_args()
    train = make_train(args.modules, args.mib)
    size = args.modules * args.mib * 2**20
    print(f"{args.trains} trains of {args.modules} x {args.mib} MiB ({size / 2**20:.0f} MiB/train)")
    cases = [
        ("encode+decode, no sockets", lambda: run_codec(train, args.trains)),
        ("raw pyzmq REQ/REP, copy=False", lambda: run_raw(train, args.trains)),
        ("xfeldata REP -> REQ", lambda: run_ours(train, args.trains, "REP", "REQ")),
        ("xfeldata PUSH -> PULL", lambda: run_ours(train, args.trains, "PUSH", "PULL")),
        ("karabo-bridge REP -> REQ", lambda: run_published(train, args.trains)),
    ]
    for name, case in cases:
        elapsed = case()
        print(f"{name:28s} {args.trains / elapsed:8.1f} trains/s  "
              f"{args.trains * size / elapsed / 1e9:6.2f} GB/s")


if __name__ == "__main__":
    main()
