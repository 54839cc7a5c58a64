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
import datetime
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NoReturn, TextIO

import zmq

from ..detectors.kinds import DETECTORS
from .client import Client
from .protocol import ProtocolError, decode
from .server import POLICIES, Streamer, serve
from .simulate import DETECTOR_ALIASES, Simulator

__all__ = ["DETECTOR_CHOICES", "add_commands", "check_detector_options", "detector_name",
           "endpoint_arg", "module_list", "monitor", "positive_int"]

_SERVER_SOCKS = ("REP", "PUB", "PUSH")
_CLIENT_SOCKS = ("REQ", "SUB", "PULL")

#: Names ``--detector`` accepts (any case): the kinds of ``detectors.DETECTORS``, then aliases.
DETECTOR_CHOICES = [*DETECTORS, *(a for a in DETECTOR_ALIASES if a not in DETECTORS)]

_TCP_RE = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})")
_HOST_PORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})")


def module_list(text: str) -> list[int]:
    """Parse a module list such as ``"0-3,8"`` into sorted module numbers (an argparse type).

    Parameters
    ----------
    text
        Comma-separated module numbers and inclusive ranges ``lo-hi``.

    Returns
    -------
    list of int
        The module numbers, sorted, each once.

    Raises
    ------
    argparse.ArgumentTypeError
        On anything but non-negative numbers and increasing ranges.

    Examples
    --------
    >>> module_list("0-3,8")
    [0, 1, 2, 3, 8]
    """
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.strip().isdigit() or (dash and not hi.strip().isdigit()):
            raise argparse.ArgumentTypeError(
                f"bad module list {text!r}: use module numbers and ranges, e.g. 0-3,8")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise argparse.ArgumentTypeError(
                f"module range {part} runs backwards; write {last}-{first}")
        out.update(range(first, last + 1))
    return sorted(out)


def detector_name(text: str) -> str:
    """The kind name in ``detectors.DETECTORS`` for a detector name or alias, any case (argparse type).

    >>> detector_name("lpd"), detector_name("JUNGFRAU")
    ('LPD1M', 'JUNGFRAU')
    """
    key = text.strip().upper()
    key = DETECTOR_ALIASES.get(key, key)
    if key not in DETECTORS:
        raise argparse.ArgumentTypeError(
            f"unknown detector {text!r} (choose from {', '.join(DETECTOR_CHOICES)})")
    return key


def check_detector_options(kind_name: str, modules: Sequence[int] | None,
                           frames: int | None) -> str | None:
    """Why ``--modules`` or ``--frames`` do not fit a detector kind, or None if they do.

    Parameters
    ----------
    kind_name
        A kind in ``detectors.DETECTORS``.
    modules
        Module numbers asked for (None: all).
    frames
        Frames (memory cells for JUNGFRAU) per train asked for (None: the default).
    """
    kind = DETECTORS[kind_name]
    unknown = sorted(set(modules or ()) - set(kind.modules))
    if unknown:
        lo, hi = min(kind.modules), max(kind.modules)
        return (f"argument --modules: {kind.name} has no module(s) "
                f"{', '.join(map(str, unknown))}; its modules are {lo}-{hi}")
    if frames is not None and frames > kind.max_frames:
        what = "memory cells" if kind.row_holds_cells else "frames"
        return f"argument --frames: {kind.name} has at most {kind.max_frames} {what} per train"
    return None


def _number(convert: Callable[[str], float], what: str,
            ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: a number (``convert``) for which ``ok`` holds, described as ``what``."""
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return value
    return parse


positive_int = _number(int, "a positive integer", lambda v: v > 0)
non_negative_int = _number(int, "a non-negative integer", lambda v: v >= 0)
non_negative_float = _number(float, "a non-negative number", lambda v: v >= 0)
positive_float = _number(float, "a positive number", lambda v: v > 0)


def _port(text: str) -> int:
    port = non_negative_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {text}")
    return port


def endpoint_arg(text: str) -> str:
    """Check a ZeroMQ endpoint to connect to: ``tcp://host:port`` or ``ipc://path`` (argparse type).

    >>> endpoint_arg("tcp://127.0.0.1:4545")
    'tcp://127.0.0.1:4545'
    """
    m = _TCP_RE.fullmatch(text)
    if (m and 0 < int(m.group(2)) <= 65535) or (text.startswith("ipc://") and len(text) > 6):
        return text
    hint = ""
    if _HOST_PORT_RE.fullmatch(text):
        hint = f" (did you mean tcp://{text}?)"
    raise argparse.ArgumentTypeError(
        f"endpoint must look like tcp://host:port or ipc://path, not {text!r}{hint}")


def _endpoint(args: argparse.Namespace) -> str:
    return f"tcp://{args.host}:{args.port}"


def _add_server_options(p: argparse.ArgumentParser, rate: float | None) -> None:
    p.add_argument("--port", type=_port, default=4545, help="TCP port (default 4545; 0 = any free)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; '*' for every interface)")
    p.add_argument("--sock", default="REP", choices=_SERVER_SOCKS, type=str.upper,
                   help="ZeroMQ socket type (default REP: one train per client request)")
    p.add_argument("--protocol", default="2.2", choices=("1.0", "2.2"),
                   help="Karabo bridge protocol version (default 2.2)")
    p.add_argument("--policy", default="wait", choices=POLICIES,
                   help="when clients are slower than the source (default: wait)")
    p.add_argument("--maxlen", type=positive_int, default=10, help="trains queued by queue/drop/raise (default 10)")
    p.add_argument("--rate", type=non_negative_float, default=rate,
                   help=f"trains per second at most (default {rate or 'no limit'}; 0 = no limit)")
    p.add_argument("--ntrains", type=positive_int, default=None,
                   help="stop after this many trains (default: no limit)")
    p.add_argument("--stack-detector", action="store_true",
                   help="send detector modules as one stacked <device>/CAL/APPEND source")


def _exit_interrupted() -> NoReturn:
    """End the process at once after Ctrl-C, without interpreter finalization.

    After an interrupted stream, h5py's global lock was sometimes found held
    by no running thread (4 exits in 21 hung), and tearing down the last
    h5py objects at interpreter exit then waited on it forever.  The run's
    files are open read-only and the server is stopped, so nothing is lost by
    skipping finalization; the standard streams are flushed first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _run_streamer(handle: Streamer, what: str) -> int:
    print(f"Serving {what} on {handle.endpoint} (Ctrl-C to stop)", flush=True)
    try:
        while not handle.join(0.5):
            pass
    except KeyboardInterrupt:
        handle.stop()
        print(f"\nstopped after {handle.server.sent} trains", file=sys.stderr)
        _exit_interrupted()
    print(f"done: {handle.server.sent} trains sent", file=sys.stderr)
    return 0


def _check_selection(run: Any, source_glob: str | None, key_glob: str | None) -> None:
    """Raise a one-line error if the ``--source``/``--key`` globs select nothing in ``run``."""
    from ..errors import PropertyNameError

    if source_glob is None and key_glob is None:
        return
    try:
        run.select(source_glob or "*", key_glob or "*")
    except PropertyNameError as exc:
        looked = run.select(source_glob or "*").sources
        shown = ", ".join(looked[:5]) + (f", ... ({len(looked)} in all)" if len(looked) > 5 else "")
        hint = f"; did you mean: {', '.join(exc.matches)}?" if exc.matches else ""
        where = "the run" if source_glob is None else f"sources matching {source_glob!r}"
        raise ValueError(f"no key matching {key_glob!r} in {where} (looked in {shown}){hint}") \
            from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from .. import open_run

    run = open_run(args.run)
    _check_selection(run, args.source, args.key)
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
    try:
        return monitor(args.endpoint, sock=args.sock, ntrains=args.ntrains, timeout=args.timeout)
    except zmq.ZMQError as exc:  # e.g. an ipc path too long for the system
        raise OSError(f"cannot connect to {args.endpoint}: {exc.strerror}") from None


def _check_simulate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    problem = check_detector_options(args.detector, args.modules, args.frames)
    if problem:
        parser.error(problem)


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


#: Data older than this (s) is taken as replayed: the monitor shows when it was recorded instead of its age.
REPLAY_AGE = 3600.0


def _age_text(age: float | None, now: float) -> str:
    if age is None:
        return "age ?"
    if abs(age) < REPLAY_AGE:
        return f"age {age:7.3f} s"
    recorded = datetime.datetime.fromtimestamp(now - age, datetime.timezone.utc)
    return f"recorded {recorded:%Y-%m-%d %H:%M:%S} UTC (replayed?)"


def monitor(endpoint: str, sock: str = "REQ", ntrains: int | None = None,
            timeout: float | None = None, out: TextIO | None = None) -> int:
    """Print what a bridge endpoint sends: a table of sources and keys, then one line per train.

    Each line has the train ID, the number of sources, the message size, the
    rate (trains/s and MB/s over the last 10 trains, from the second train on:
    the first may have waited in the server for the client) and the data age
    (now minus the newest timestamp in the metadata), or, for data older than
    :data:`REPLAY_AGE` (a run replayed from files), when it was recorded.

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
            if count > 1:  # the first train may have waited for us: the rate starts at the second
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
            age_text = _age_text(age, now)
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
    p.add_argument("--source", default=None, metavar="GLOB", help="sources to send (glob; default: all)")
    p.add_argument("--key", default=None, metavar="GLOB", help="keys to send (glob; default: all)")
    p.set_defaults(func=_cmd_serve)

    p = subparsers.add_parser("simulate", help="stream simulated detector trains")
    p.add_argument("--detector", default="AGIPD1M", choices=DETECTOR_CHOICES, type=detector_name,
                   help="detector kind, any case (AGIPD, LPD and DSSC stand for the 1M ones, "
                        "LPD_MINI for LPDMINI, EPIX for EPIX100; default AGIPD1M)")
    _add_server_options(p, rate=10.0)
    raw = p.add_mutually_exclusive_group()
    raw.add_argument("--raw", dest="raw", action="store_true", default=True,
                     help="raw uint16 data (default)")
    raw.add_argument("--corrected", dest="raw", action="store_false", help="corrected float32 data")
    p.add_argument("--frames", type=positive_int, default=None,
                   help="frames per train (default 64; JUNGFRAU memory cells, default 16)")
    p.add_argument("--modules", type=module_list, default=None, help="e.g. 0-3,8 (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data (default 0)")
    p.set_defaults(func=_cmd_simulate, check=partial(_check_simulate, p))

    p = subparsers.add_parser("monitor", help="show what a Karabo bridge endpoint sends")
    p.add_argument("endpoint", type=endpoint_arg, help="e.g. tcp://127.0.0.1:4545")
    p.add_argument("--sock", default="REQ", choices=_CLIENT_SOCKS, type=str.upper,
                   help="ZeroMQ socket type (default REQ, for a REP server)")
    p.add_argument("--ntrains", type=positive_int, default=None,
                   help="stop after this many trains (default: no limit)")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="exit with code 1 after this many seconds without data (default: wait forever)")
    p.set_defaults(func=_cmd_monitor)
