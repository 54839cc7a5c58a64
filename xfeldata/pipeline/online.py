"""A pipeline step live on a Karabo bridge stream, with its results published as a stream.

:func:`live` receives trains in the receiving thread of a
:class:`~xfeldata.bridge.LiveBuffer` of one train and applies ``fn`` in
another thread.  The buffer keeps only the newest train: when ``fn`` is
slower than the trains, the processing thread takes the newest one and the
ones it never saw are counted in :attr:`LiveStats.skipped`, so the pipeline
never falls behind by more than one train.  Each train becomes a one-train
:class:`~xfeldata.bridge.LiveBuffer`, ``inputs(buffer)`` builds ``fn``'s
input exactly as on a Run, and the result is published as a Karabo bridge
train (protocol 2.2) under one source name, with the input train's ID and
timestamp: every data variable is a key, its value the train's slice.

Examples
--------
>>> from xfeldata.bridge import Simulator, serve
>>> from xfeldata.pipeline import live
>>> def fn(ds):
...     return ds["image.data"].sum(["slow_scan", "fast_scan"])
>>> stream = serve(Simulator("AGIPD", modules=[0], frames=2, slow=False), background=True)
>>> with live(fn, stream.endpoint, source="RESULTS/SUM:output") as pipe:   # doctest: +SKIP
...     _ = pipe.wait(3, timeout=30)
...     pipe.stats.processed >= 3
True
>>> stream.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..bridge import LiveBuffer, Server
from ..bridge.protocol import make_metadata
from ..detectors.kinds import group_detector_sources
from .steps import Inputs, Step, apply_step, default_inputs

__all__ = ["Live", "LiveStats", "live", "result_train"]

log = logging.getLogger(__name__)

#: Trains over which rate and lag are reported.
WINDOW = 200


@dataclass
class LiveStats:
    """Counters and timing of a live pipeline (a snapshot; see :attr:`Live.stats`).

    Attributes
    ----------
    received, processed, skipped, failed, published : int
        Trains received; given to ``fn``; received but never processed
        (a newer train came first); for which ``fn`` raised; results sent.
    rate : float
        Trains processed per second over the last :data:`WINDOW` trains.
    lag : numpy.ndarray
        Seconds from receiving a train to publishing its result, for the
        last :data:`WINDOW` processed trains (oldest first).
    """

    received: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    published: int = 0
    rate: float = 0.0
    lag: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def lag_percentiles(self, q: tuple[float, ...] = (50, 95, 100)) -> dict[float, float]:
        """Percentiles of :attr:`lag` in seconds (NaN before the first train)."""
        if not len(self.lag):
            return {p: float("nan") for p in q}
        return dict(zip(q, np.percentile(self.lag, q).tolist(), strict=True))

    def __str__(self) -> str:
        p = self.lag_percentiles()
        return (f"{self.processed} processed, {self.skipped} skipped, {self.failed} failed of "
                f"{self.received} received; {self.rate:.1f} trains/s; lag median {p[50] * 1e3:.1f} ms, "
                f"95% {p[95] * 1e3:.1f} ms, max {p[100] * 1e3:.1f} ms")


def result_train(result: xr.Dataset, source: str, train_id: int, timestamp: float | None
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """One train of a step's result as a bridge message ``(data, metadata)``.

    Every data variable is a key holding its values at ``train_id``
    (a numpy array, or a numpy scalar for 0-d values).

    Examples
    --------
    >>> ds = xr.Dataset({"sum": ("trainId", [3.0])}, coords={"trainId": [7]})
    >>> data, meta = result_train(ds, "RES:out", 7, 1700000000.0)
    >>> float(data["RES:out"]["sum"]), meta["RES:out"]["timestamp.tid"]
    (3.0, 7)
    """
    one = result.sel(trainId=train_id)
    props = {}
    for name, var in one.data_vars.items():
        values = np.asarray(var.values)
        props[str(name)] = values[()] if values.ndim == 0 else np.ascontiguousarray(values)
    return {source: props}, {source: make_metadata(source, train_id, timestamp)}


def _timestamp(metadata: dict[str, dict[str, Any]]) -> float | None:
    for meta in metadata.values():
        if isinstance(meta, dict) and isinstance(meta.get("timestamp"), (int, float)):
            return float(meta["timestamp"])
    return None


class Live:
    """A running live pipeline (made by :func:`live`; use it as a context manager).

    Attributes
    ----------
    endpoint : str
        Where results are published.
    last_error : Exception or None
        The last exception ``fn`` (or ``inputs``) raised.
    """

    def __init__(self, fn: Step, endpoint: str, inputs: Inputs | None = None,
                 publish: str = "tcp://127.0.0.1:0", source: str = "XFELDATA/PIPELINE:output",
                 sock: str = "REQ", publish_sock: str = "PUB", timeout: float = 0.5) -> None:
        self.fn = fn
        self.inputs = default_inputs if inputs is None else inputs
        self.input_endpoint = endpoint
        self.source = source
        self.last_error: Exception | None = None
        self._server = Server(publish, sock=publish_sock, policy="drop", maxlen=10)
        self.endpoint = self._server.endpoint
        self._timeout = timeout
        # Receives in its own thread and keeps the newest train (the one receive loop).
        self._input = LiveBuffer(endpoint, maxlen=1, sock=sock, timeout=timeout)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._counts = LiveStats()
        self._done: deque[tuple[float, float]] = deque(maxlen=WINDOW)  # (publish time, lag)
        self._thread = threading.Thread(target=self._process, daemon=True, name="live-process")
        self._failure: BaseException | None = None
        self._module_sources: dict[str, None] = {}  # detector modules of the trains seen, in order

    def start(self) -> Live:
        self._server.start()
        self._input.start()
        self._thread.start()
        return self

    # -- processing thread -----------------------------------------------------

    def _process(self) -> None:
        seen = 0
        while not self._stopping.is_set():
            try:
                newest = self._input.wait_newer(seen, timeout=0.1)
            except TimeoutError:
                continue
            except RuntimeError as exc:  # receiving failed: reported by wait()
                if not self._stopping.is_set():
                    log.error("live pipeline: receiving from %s failed: %s", self.input_endpoint, exc)
                    self._failure = exc
                with self._cond:
                    self._cond.notify_all()
                return
            with self._cond:
                self._counts.skipped += newest.filed - seen - 1  # filed, never processed
                self._counts.processed += 1
            seen = newest.filed
            self._apply(newest.data, newest.metadata, newest.received_at)

    def _apply(self, data: dict, metadata: dict, received: float) -> None:
        try:
            buf = LiveBuffer(self.input_endpoint, maxlen=1)  # this train only, never started
            buf.add(self._with_every_module(data), metadata)
            result = apply_step(self.fn, self.inputs, buf)
            tid = int(buf.train_ids[-1])
            message = result_train(result.compute(), self.source, tid,
                                   _timestamp(metadata))
        except Exception as exc:
            with self._cond:
                self._counts.failed += 1
                first = self.last_error is None
                self.last_error = exc
            if first:
                log.exception("live pipeline: fn failed (later failures are counted in stats.failed)")
            return
        self._server.feed(*message)
        now = time.monotonic()
        with self._cond:
            self._counts.published += 1
            self._done.append((now, now - received))
            self._cond.notify_all()

    def _with_every_module(self, data: dict) -> dict:
        """The train with every detector module seen so far, those it lacks as sources without
        data: its Dataset then has their module slots (not present), as a run's has, so a
        per-module result keeps its place (a module missing from one message shifted the rest)."""
        for sources in group_detector_sources(data).values():
            self._module_sources.update(dict.fromkeys(sources.values()))
        missing = [s for s in self._module_sources if s not in data]
        return {**data, **{s: {} for s in missing}} if missing else data

    # -- state -----------------------------------------------------------------

    @property
    def stats(self) -> LiveStats:
        """A snapshot of the counters, the rate and the lag distribution."""
        with self._cond:
            done = list(self._done)
            c = self._counts
            rate = (len(done) - 1) / (done[-1][0] - done[0][0]) if len(done) > 1 and done[-1][0] > done[0][0] \
                else 0.0
            return LiveStats(self._input.received, c.processed, c.skipped, c.failed, c.published, rate,
                             np.array([lag for _, lag in done]))

    def wait(self, ntrains: int = 1, timeout: float = 10) -> Live:
        """Block until ``ntrains`` results are published (or ``fn`` failed that often); returns self.

        Raises
        ------
        TimeoutError
            Not within ``timeout`` seconds.
        RuntimeError
            Receiving failed.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._counts.published + self._counts.failed < ntrains:
                if self._failure is not None:
                    raise RuntimeError(f"the live pipeline stopped receiving: {self._failure!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._counts.published} of {ntrains} results from "
                                       f"{self.input_endpoint} within {timeout} s")
                self._cond.wait(min(left, 0.1))
        return self

    def stop(self) -> None:
        """Stop receiving and processing, and close the results socket."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._input.stop()
        if self._thread.is_alive():
            self._thread.join(self._timeout + 10)
        self._server.stop()

    def __enter__(self) -> Live:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Live {self.input_endpoint} -> {self.endpoint} {self.source}: {self.stats}>"


@contextmanager
def live(fn: Step, endpoint: str, inputs: Inputs | None = None, publish: str = "tcp://127.0.0.1:0",
         source: str = "XFELDATA/PIPELINE:output", sock: str = "REQ", publish_sock: str = "PUB",
         timeout: float = 0.5) -> Iterator[Live]:
    """Apply ``fn`` to each new train from ``endpoint`` and publish each result.

    Parameters
    ----------
    fn, inputs
        The step and its inputs, as for :func:`~xfeldata.pipeline.offline`;
        ``inputs`` gets a :class:`~xfeldata.bridge.LiveBuffer` holding one train.
    endpoint
        The Karabo bridge to read (``sock``: ``"REQ"``, ``"SUB"`` or ``"PULL"``).
    publish
        Where to bind the results socket (``publish_sock``: ``"PUB"`` by
        default, ``"REP"`` or ``"PUSH"``); ``Live.endpoint`` is the bound
        address.  Results wait in a queue of 10 and the oldest are dropped
        when nobody takes them (REP, PUSH).
    source
        The source name of the results (keys are ``fn``'s data variables).
    timeout
        Receive timeout in seconds (how quickly ``stop()`` ends the receiving thread).

    Yields
    ------
    Live
        With ``endpoint``, ``stats`` (:class:`LiveStats`), ``wait()`` and ``last_error``.

    Examples
    --------
    >>> with live(fn, "tcp://127.0.0.1:4545", publish="tcp://*:4600") as pipe:   # doctest: +SKIP
    ...     time.sleep(60)
    ...     print(pipe.stats)
    """
    pipe = Live(fn, endpoint, inputs=inputs, publish=publish, source=source, sock=sock,
                publish_sock=publish_sock, timeout=timeout)
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()
