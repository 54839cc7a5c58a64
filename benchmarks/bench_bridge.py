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
import threading
import time

import numpy as np


def make_train(modules: int, mib: int) -> dict:
    n = mib * 2**20 // 2
    return {f"DET/MOD/{m}CH0:xtdf": {"image.data": np.full(n, m, dtype=np.uint16), "n": m}
            for m in range(modules)}


def run_ours(train: dict, ntrains: int, sock: str, client_sock: str) -> float:
    from xfeldata.bridge import Client, Server, ServerClosed

    with Server(sock=sock, policy="queue", maxlen=2) as server:
        def feed():
            for tid in range(ntrains + 1):
                try:
                    server.feed(train, train_id=tid, timeout=30)
                except (ServerClosed, TimeoutError):
                    return

        t = threading.Thread(target=feed, daemon=True)
        t.start()
        with Client(server.endpoint, sock=client_sock, timeout=30) as client:
            client.next()  # connected and warm
            start = time.perf_counter()
            for _ in range(ntrains):
                data, _ = client.next()
            elapsed = time.perf_counter() - start
    t.join(5)
    return elapsed


def run_published(train: dict, ntrains: int) -> float:
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
    client = karabo_bridge.Client(server.endpoint, timeout=30)
    try:
        client.next()
        start = time.perf_counter()
        for _ in range(ntrains):
            client.next()
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        client._context.destroy(linger=0)
        server.stop()
    t.join(5)
    return elapsed


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
