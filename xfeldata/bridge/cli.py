"""Bridge subcommands of the ``xfeldata`` command: ``serve``, ``simulate``, ``monitor``.

Examples
--------
.. code-block:: console

    $ xfeldata simulate --detector AGIPD --modules 0-3 --frames 32 --port 4545
    $ xfeldata monitor tcp://127.0.0.1:4545 --ntrains 20
    $ xfeldata serve r0001 --port 4545 --source "*XGM*" --loop
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from typing import TextIO

from .client import Client
from .protocol import ProtocolError, decode
from .server import POLICIES, Streamer, serve
from .simulate import DETECTOR_ALIASES, Simulator

__all__ = ["add_commands", "monitor"]

_SERVER_SOCKS = ("REP", "PUB", "PUSH")
_CLIENT_SOCKS = ("REQ", "SUB", "PULL")


def _modules(text: str) -> list[int]:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad module list {text!r} (e.g. 0-3,8)") from None
    return out


def _endpoint(args: argparse.Namespace) -> str:
    return f"tcp://{args.host}:{args.port}"


def _add_server_options(p: argparse.ArgumentParser, rate: float | None) -> None:
    p.add_argument("--port", type=int, default=4545, help="TCP port (default 4545; 0 = any free)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; '*' for every interface)")
    p.add_argument("--sock", default="REP", choices=_SERVER_SOCKS, type=str.upper)
    p.add_argument("--protocol", default="2.2", choices=("1.0", "2.2"))
    p.add_argument("--policy", default="wait", choices=POLICIES,
                   help="when clients are slower than the source (default: wait)")
    p.add_argument("--maxlen", type=int, default=10, help="trains queued by queue/drop/raise")
    p.add_argument("--rate", type=float, default=rate,
                   help=f"trains per second at most (default {rate or 'no limit'}; 0 = no limit)")
    p.add_argument("--ntrains", type=int, default=None, help="stop after this many trains")
    p.add_argument("--stack-detector", action="store_true",
                   help="send detector modules as one stacked <device>/CAL/APPEND source")


def _run_streamer(handle: Streamer, what: str) -> int:
    print(f"Serving {what} on {handle.endpoint} (Ctrl-C to stop)", flush=True)
    try:
        while not handle.join(0.5):
            pass
    except KeyboardInterrupt:
        handle.stop()
        print(f"\nstopped after {handle.server.sent} trains", file=sys.stderr)
        return 130
    print(f"done: {handle.server.sent} trains sent", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .. import open_run

    run = open_run(args.run)
    handle = serve(run, _endpoint(args), sock=args.sock, protocol=args.protocol,
                   policy=args.policy, maxlen=args.maxlen, rate=args.rate or None, loop=args.loop,
                   sources=args.source, keys=args.key, stack_detector=args.stack_detector,
                   ntrains=args.ntrains, background=True)
    return _run_streamer(handle, args.run)


def _cmd_simulate(args: argparse.Namespace) -> int:
    sim = Simulator(args.detector, raw=args.raw, modules=args.modules, frames=args.frames,
                    seed=args.seed)
    handle = serve(sim, _endpoint(args), sock=args.sock, protocol=args.protocol,
                   policy=args.policy, maxlen=args.maxlen, rate=args.rate or None,
                   stack_detector=args.stack_detector, ntrains=args.ntrains, background=True)
    return _run_streamer(handle, f"simulated {sim.kind.name} ({len(sim.modules)} modules, "
                                 f"{sim.frames} frames, {'raw' if sim.raw else 'corrected'})")


def _cmd_monitor(args: argparse.Namespace) -> int:
    return monitor(args.endpoint, sock=args.sock, ntrains=args.ntrains, timeout=args.timeout)


def _describe(value: object) -> tuple[str, str]:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return "x".join(map(str, shape)) or "()", str(dtype)
    return "", type(value).__name__


def _print_table(data: dict, metadata: dict, out: TextIO) -> None:
    rows = [("source", "key", "shape", "dtype")]
    for source in sorted(data):
        for key in sorted(data[source]):
            if key == "metadata":
                continue
            rows.append((source, key, *_describe(data[source][key])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
    print(file=out)


def _age(metadata: dict, now: float) -> float | None:
    stamps = [m.get("timestamp") for m in metadata.values() if isinstance(m, dict)]
    stamps = [t for t in stamps if isinstance(t, (int, float))]
    return now - max(stamps) if stamps else None


def monitor(endpoint: str, sock: str = "REQ", ntrains: int | None = None,
            timeout: float | None = None, out: TextIO | None = None) -> int:
    """Print what a bridge endpoint sends: a table of sources and keys, then one line per train.

    Each line has the train ID, the number of sources, the message size, the
    rate (trains/s and MB/s over the last 10 trains) and the data age (now
    minus the newest timestamp in the metadata).

    Parameters
    ----------
    endpoint
        Server address, e.g. ``tcp://127.0.0.1:4545``.
    sock
        Client socket type: ``REQ``, ``SUB`` or ``PULL``.
    ntrains
        Stop after this many trains (default: run until Ctrl-C).
    timeout
        Give up (exit code 1) after this many seconds without data.
    out
        Where to print (default: stdout).

    Returns
    -------
    int
        Exit code: 0 when done, 1 on timeout, 130 on Ctrl-C.

    Examples
    --------
    >>> monitor("tcp://127.0.0.1:4545", ntrains=10, timeout=5)   # doctest: +SKIP
    """
    out = out or sys.stdout
    recent: deque[tuple[float, int]] = deque(maxlen=11)
    shown_sources: set[str] | None = None
    count = 0
    client = Client(endpoint, sock=sock, timeout=timeout)
    try:
        print(f"Monitoring {endpoint} ({sock})", file=out, flush=True)
        while ntrains is None or count < ntrains:
            try:
                frames = client.recv_frames()
            except TimeoutError:
                print(f"no data from {endpoint} for {timeout} s", file=sys.stderr)
                return 1
            now = time.time()
            nbytes = sum(len(f.buffer) for f in frames)
            try:
                data, metadata = decode(frames)
            except ProtocolError as exc:
                print(f"bad message ({nbytes} bytes): {exc}", file=out, flush=True)
                continue
            count += 1
            if shown_sources != set(data):
                shown_sources = set(data)
                _print_table(data, metadata, out)
            recent.append((time.monotonic(), nbytes))
            tids = {m.get("timestamp.tid") for m in metadata.values() if isinstance(m, dict)}
            tids.discard(None)
            tid = "mixed " + ",".join(map(str, sorted(tids))) if len(tids) > 1 else (
                str(tids.pop()) if tids else "?")
            rate = mbps = ""
            if len(recent) > 1:
                span = recent[-1][0] - recent[0][0]
                if span > 0:
                    rate = f"{(len(recent) - 1) / span:8.1f} trains/s"
                    mbps = f"{sum(b for _, b in list(recent)[1:]) / span / 1e6:9.1f} MB/s"
            age = _age(metadata, now)
            age_text = f"age {age:7.3f} s" if age is not None else "age ?"
            print(f"train {tid:>12}  {len(data):3d} sources  {nbytes / 1e6:9.2f} MB  "
                  f"{rate:>17}  {mbps:>14}  {age_text}", file=out, flush=True)
    except KeyboardInterrupt:
        print(f"\nstopped after {count} trains", file=sys.stderr)
        return 130
    finally:
        client.close()
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``simulate`` and ``monitor`` to the ``xfeldata`` command's subparsers."""
    p = subparsers.add_parser("serve", help="stream a run to Karabo bridge clients")
    p.add_argument("run", help="run directory or file")
    _add_server_options(p, rate=None)
    p.add_argument("--loop", action="store_true", help="start again at the end of the run")
    p.add_argument("--source", default=None, metavar="GLOB", help="sources to send (glob)")
    p.add_argument("--key", default=None, metavar="GLOB", help="keys to send (glob)")
    p.set_defaults(func=_cmd_serve)

    p = subparsers.add_parser("simulate", help="stream simulated detector trains")
    p.add_argument("--detector", default="AGIPD",
                   choices=sorted({*DETECTOR_ALIASES, "AGIPD500K", "JUNGFRAU"}), type=str.upper)
    _add_server_options(p, rate=10.0)
    raw = p.add_mutually_exclusive_group()
    raw.add_argument("--raw", dest="raw", action="store_true", default=True,
                     help="raw uint16 data (default)")
    raw.add_argument("--corrected", dest="raw", action="store_false", help="corrected float32 data")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per train (default 64; JUNGFRAU memory cells, default 16)")
    p.add_argument("--modules", type=_modules, default=None, help="e.g. 0-3,8 (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_simulate)

    p = subparsers.add_parser("monitor", help="show what a Karabo bridge endpoint sends")
    p.add_argument("endpoint", help="e.g. tcp://127.0.0.1:4545")
    p.add_argument("--sock", default="REQ", choices=_CLIENT_SOCKS, type=str.upper)
    p.add_argument("--ntrains", type=int, default=None, help="stop after this many trains")
    p.add_argument("--timeout", type=float, default=None,
                   help="exit with code 1 after this many seconds without data")
    p.set_defaults(func=_cmd_monitor)
