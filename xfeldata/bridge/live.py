"""A live buffer of the latest trains from a Karabo bridge, with the offline views.

:class:`LiveBuffer` receives trains in a background thread and keeps the last
``maxlen`` of them, matched by train ID (each source's ``timestamp.tid``).
Its views build the same xarray/pandas layout as the offline views of a run
(:func:`xfeldata.detectors.stacking.detector_dataset`, :func:`xfeldata.views.run_dataset`,
:func:`xfeldata.views.control_frame`) through :mod:`xfeldata.schema`, so
analysis code runs unchanged on live and on recorded data.

What cannot be the same: the wire carries scalars as plain msgpack numbers,
so scalar values come back as int64/float64/bool/str whatever their dtype in
the files (arrays keep their dtype).  Variable attrs hold ``source`` and
``key`` but not what only files record (units, displayed names, files read).
Pulse IDs are the union over the buffered trains (offline: over the selected
trains).  Control sources are told from instrument sources by name (no ``:``).

Examples
--------
>>> from xfeldata.bridge import LiveBuffer, Simulator, serve
>>> handle = serve(Simulator("AGIPD", modules=[0, 1], frames=2, ntrains=3, slow=False),
...                background=True)
>>> with LiveBuffer(handle.endpoint, maxlen=10) as buf:
...     _ = buf.wait(3, timeout=10)
...     ds = buf.detector()
>>> handle.stop()
>>> ds["image.data"].dims
('trainId', 'pulseId', 'module', 'gain', 'slow_scan', 'fast_scan')
"""

from __future__ import annotations

import fnmatch
import logging
import numbers
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zmq

from .. import schema
from ..arrays import BlockRead, blocks_array, execute_block
from ..detectors.kinds import (
    DetectorKind,
    detector_kind_of_device,
    generic_kind,
    group_detector_sources,
    match_detector_source,
)
from ..detectors.plan import kept_trains, plan_frames
from ..detectors.stacking import choose_detector, detector_kind, stacked_modules
from ..files.strings import decode_strings
from ..fill import default_fill_value
from ..views import merge_variables
from .buffers import ArrayPool
from .client import Client
from .protocol import ProtocolError
from .sockets import Throttle

__all__ = ["LiveBuffer", "Newest"]

log = logging.getLogger(__name__)

TrainData = dict[str, dict[str, Any]]
#: Values that detector views stack (numbers and arrays).
_VALUE_TYPES = (np.ndarray, numbers.Number)
_MAX_TID = 2**64 - 1
#: Default ``max_bytes`` of a :class:`LiveBuffer`: 2 GiB of buffered trains.
DEFAULT_MAX_BYTES = 2 * 2**30
#: A jump forward of more train IDs than this is counted in ``trains_missed``
#: only once the next message confirms it (one bogus ID must not count 1.8e19).
_LONG_JUMP = 1000
#: Ranges of train IDs counted missed that a late arrival can still take back.
_GAPS_KEPT = 64
_VALUE_BYTES = 64  # what a non-array value is counted as in max_bytes


def _read_only(value: Any) -> Any:
    """A read-only view of a writeable array (the array itself stays writeable);
    other values as they are."""
    if isinstance(value, np.ndarray) and value.flags.writeable:
        value = value.view()
        value.flags.writeable = False
    return value


def _nbytes(props: Mapping[str, Any]) -> int:
    """What one source of a train counts for ``max_bytes``: array bytes, 64 per other value."""
    return sum(v.nbytes if isinstance(v, np.ndarray) else _VALUE_BYTES for v in props.values())


def _valid_tid(value: Any) -> int | None:
    """A train ID from untrusted metadata: a non-negative 64-bit integer, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    value = int(value)
    return value if 0 <= value <= _MAX_TID else None


@dataclass(frozen=True)
class Newest:
    """The newest buffered train, from :meth:`LiveBuffer.wait_newer`.

    Attributes
    ----------
    filed : int
        Messages filed by the buffer so far (pass it to the next ``wait_newer``).
    train_id : int
        The train.
    data, metadata : dict
        Its ``{source: {key: value}}`` and ``{source: metadata}`` (arrays read-only).
    received_at : float
        ``time.monotonic()`` when the last message was filed.
    """

    filed: int
    train_id: int
    data: TrainData
    metadata: TrainData
    received_at: float


class LiveBuffer:
    """Keep the last ``maxlen`` trains of a Karabo bridge stream; view them like a run.

    Parameters
    ----------
    client_or_endpoint
        A :class:`~xfeldata.bridge.Client` (with a finite ``timeout``; the
        buffer uses it from its thread and does not close it) or an endpoint
        such as ``"tcp://127.0.0.1:4545"`` (the buffer makes its own client).
    maxlen
        Number of trains kept; the ones received first are evicted (and counted).
    max_bytes
        Most bytes of buffered trains (array bytes, plus 64 per other value;
        default 2 GiB): trains received first are evicted to stay under it,
        but the newest train is always kept.
    sock, ser
        Socket type and serialisation of the client made from an endpoint.
    timeout
        Receive timeout (seconds) of that client.  Silent periods are not
        errors: a REQ client keeps waiting for its request's reply, and asks
        again only if the connection was lost (a restarted server is picked
        up).  :meth:`stop` does not wait for the timeout.

    Notes
    -----
    Network input is untrusted.  A malformed message is counted in
    :attr:`errors` and skipped; the thread keeps receiving.  Repeated
    warnings are throttled: the first is logged, then one line with a count
    at growing intervals (1 s, 2 s, ... up to a minute).

    Train IDs going back mean the source restarted (a simulator started
    again, ``serve(..., loop=True)``): a message whose train ID is below
    every buffered train and more than ``maxlen`` below the previous
    message's, or that repeats a source of a buffered train below the
    previous message's ID, empties the buffer (counted in ``restarts``, its
    trains in ``trains_evicted``) and filing starts afresh.  A train a little
    older than the buffered ones that does not fit a full buffer is
    discarded and counted in ``trains_discarded``.  A jump forward of more
    than 1000 train IDs counts as missed trains only if the next message
    goes on from it; a single bogus ID (e.g. 2**64-1) is evicted like any
    other train.  A train counted missed that arrives later (out of order) is
    filed and taken back from ``trains_missed``.

    Attributes
    ----------
    errors : int
        Malformed messages received (logged, skipped).
    last_error : Exception or None
        The last of them.
    mismatched_trains : int
        Messages whose sources carried different train IDs (each source is
        filed under its own ``timestamp.tid``).
    trains_evicted, trains_missed : int
        Trains evicted (by ``maxlen``, ``max_bytes`` or a restart), and
        train IDs skipped by the stream.
    trains_discarded : int
        Trains (or late sources of them) refused as older than a full buffer.
    restarts : int
        Times the train IDs went back and the buffer started afresh.
    received : int
        Messages received.

    Examples
    --------
    >>> buf = LiveBuffer("tcp://127.0.0.1:4545", maxlen=20)      # doctest: +SKIP
    >>> with buf:                                                  # doctest: +SKIP
    ...     buf.wait(10, timeout=30)
    ...     frame = buf.control_frame()
    ...     mean = buf.detector()["image.data"].mean("pulseId")
    """

    def __init__(self, client_or_endpoint: Client | str, maxlen: int = 100, sock: str = "REQ",
                 timeout: float = 10, ser: str = "msgpack",
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if isinstance(client_or_endpoint, Client):
            if client_or_endpoint.timeout is None:
                raise ValueError("the client needs a finite timeout so that stop() can end the "
                                 "receiving thread: Client(endpoint, timeout=0.5)")
            self._client: Client | None = client_or_endpoint
            self.endpoint = client_or_endpoint.endpoint
        else:
            self._client = None
            self.endpoint = str(client_or_endpoint)
        self.maxlen = int(maxlen)
        self.max_bytes = int(max_bytes)
        self.sock, self.ser, self.timeout = sock, ser, timeout
        self.errors = 0
        self.last_error: Exception | None = None
        self.mismatched_trains = 0
        self.trains_evicted = 0
        self.trains_missed = 0
        self.trains_discarded = 0
        self.restarts = 0
        self.received = 0
        # In the order received (eviction order), with each train's byte count.
        self._trains: dict[int, tuple[TrainData, TrainData]] = {}
        self._sizes: dict[int, int] = {}
        self._last: int | None = None  # the newest train ID of the messages so far
        self._jump: tuple[int, int] | None = None  # (ID before, gap) of an unconfirmed long jump
        self._gaps: deque[tuple[int, int]] = deque(maxlen=_GAPS_KEPT)  # [first, stop) counted missed
        self._throttles = {kind: Throttle(log.warning)
                           for kind in ("malformed", "mismatched", "restart", "discarded")}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._context: zmq.Context | None = None
        self._filed, self._filed_at = 0, 0.0  # messages filed (not all discarded), when the last was
        self._pool = ArrayPool()  # memory of numpy detector arrays nothing uses any more

    # -- receiving -------------------------------------------------------------

    def start(self) -> LiveBuffer:
        """Start the receiving thread (done by ``with LiveBuffer(...)``); returns self."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            if self._client is None:
                self._context = zmq.Context()
            self._thread = threading.Thread(target=self._run, args=(self._context,), daemon=True,
                                            name=f"live-buffer {self.endpoint}")
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10) -> None:
        """Stop receiving; the buffered trains stay.

        A buffer that made its own client interrupts a pending receive at once
        (by terminating its ZeroMQ context); with a client passed in, the
        thread ends within that client's timeout.
        """
        self._stopping.set()
        if self._context is not None:
            self._context.term()  # a blocked receive raises ContextTerminated
            self._context = None
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, context: zmq.Context | None) -> None:
        own = self._client is None
        try:
            client = self._client or Client(self.endpoint, sock=self.sock, ser=self.ser,
                                            timeout=self.timeout, context=context)
        except Exception as exc:  # e.g. a malformed endpoint
            self._failure = exc
            with self._cond:
                self._cond.notify_all()
            return
        try:
            while not self._stopping.is_set():
                try:
                    data, metadata = client.next()
                except TimeoutError:
                    continue
                except ProtocolError as exc:
                    self._error(exc)
                    continue
                self.add(data, metadata)
        except zmq.ZMQError as exc:
            if not self._stopping.is_set():  # else: stop() terminated the context
                log.exception("live buffer: receiving from %s failed", self.endpoint)
                self._failure = exc
        except Exception as exc:  # keep it for wait() to report
            log.exception("live buffer: receiving from %s failed", self.endpoint)
            self._failure = exc
        finally:
            if own:
                client.close()
            with self._cond:
                self._cond.notify_all()

    def _error(self, exc: Exception) -> None:
        with self._cond:
            self.errors += 1
            self.last_error = exc
        self._warn("malformed", f"live buffer: malformed message from {self.endpoint} skipped: {exc}")

    def _warn(self, kind: str, text: str) -> None:
        self._throttles[kind](text)  # a flood of one kind does not hide the others

    def add(self, data: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        """File one decoded message by train ID (the receiving thread calls this).

        Sources are matched by their ``timestamp.tid``; a message whose
        sources disagree counts in :attr:`mismatched_trains`, and each source
        goes to its own train.  Sources without a valid train ID go with the
        message's most common one; a message without any is an error.  The
        most common ID also tells restarts and missed trains (class notes).

        Arrays are kept without copying, as read-only views: Datasets built
        by :meth:`detector` read them when computed, after later trains came.
        A caller that adds arrays itself must not modify them afterwards.
        """
        tids = {}
        for source in data:
            meta = metadata.get(source) if isinstance(metadata, Mapping) else None
            tids[source] = _valid_tid(meta.get("timestamp.tid")) if isinstance(meta, Mapping) else None
        counts = Counter(t for t in tids.values() if t is not None)
        if not counts:
            self._error(ProtocolError("message without a valid train ID (timestamp.tid)"))
            return
        common = counts.most_common(1)[0][0]
        with self._cond:
            self.received += 1
            if len(counts) > 1:
                self.mismatched_trains += 1
                self._warn("mismatched", f"live buffer: sources from {self.endpoint} carry different train IDs "
                           f"in one message: {tids}")
            self._follow(common, data)
            discarded, filed = set(), False
            for source, props in data.items():
                if not isinstance(props, Mapping):
                    continue
                tid = tids[source] if tids[source] is not None else common
                if self._file(tid, source, props, metadata.get(source) or {}):
                    filed = True
                else:
                    discarded.add(tid)
            if filed:
                self._filed += 1
                self._filed_at = time.monotonic()
            self._evict()
            if discarded:
                self.trains_discarded += len(discarded)
                self._warn("discarded", f"live buffer: train(s) {sorted(discarded)} from {self.endpoint} are "
                           f"older than the {len(self._trains)} buffered trains: discarded")
            self._cond.notify_all()

    def _follow(self, tid: int, data: Mapping[str, Any]) -> None:
        """Count missed train IDs and detect a restart, from a message's train ID."""
        last = self._last
        self._last = tid
        if last is None:
            return
        if self._jump is not None:
            before, gap = self._jump
            self._jump = None
            if tid > last:
                self._missed(before + 1, last)  # the stream went on from the jump: gap IDs missed
            else:
                last = before  # the jump was one bogus ID: go on from the ID before it
        if tid < last:
            late = self._arrived_late(tid)  # a train counted missed, come after all
            below = not self._trains or tid < min(self._trains)
            repeated = tid in self._trains and any(s in self._trains[tid][0] for s in data)
            if not late and ((below and tid < last - self.maxlen) or repeated):
                self.restarts += 1
                self.trains_evicted += len(self._trains)
                self._warn("restart", f"live buffer: train IDs from {self.endpoint} went back from {last} "
                           f"to {tid}: the source restarted, starting afresh "
                           f"({len(self._trains)} buffered trains dropped)")
                self._trains.clear()
                self._sizes.clear()
                self._gaps.clear()
            else:
                self._last = last  # a late train: the newest ID stays
        elif tid > last + 1:
            gap = tid - last - 1
            if gap <= _LONG_JUMP:
                self._missed(last + 1, tid)
            else:
                self._jump = (last, gap)

    def _missed(self, first: int, stop: int) -> None:
        """Count train IDs ``first`` to ``stop - 1`` as missed (a later arrival takes one back)."""
        if stop > first:
            self.trains_missed += stop - first
            self._gaps.append((first, stop))

    def _arrived_late(self, tid: int) -> bool:
        """If ``tid`` was counted missed, take it back (it came, out of order): True."""
        for i, (first, stop) in enumerate(self._gaps):
            if first <= tid < stop:
                self.trains_missed -= 1
                del self._gaps[i]
                for part in ((first, tid), (tid + 1, stop)):
                    if part[1] > part[0]:
                        self._gaps.append(part)
                return True
        return False

    def _file(self, tid: int, source: str, props: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
        """Put one source in its train; False if the train is too old for the full buffer."""
        if tid not in self._trains:
            if len(self._trains) >= self.maxlen and tid < min(self._trains):
                return False
            self._trains[tid] = ({}, {})
            self._sizes[tid] = 0
        data, metadata = self._trains[tid]
        if source in data:
            self._sizes[tid] -= _nbytes(data[source])
        data[source] = {k: _read_only(v) for k, v in props.items()}
        metadata[source] = dict(meta)
        self._sizes[tid] += _nbytes(data[source])
        return True

    def _evict(self) -> None:
        """Evict the trains received first while over ``maxlen`` or ``max_bytes``."""
        total = sum(self._sizes.values())
        while len(self._trains) > self.maxlen or (total > self.max_bytes and len(self._trains) > 1):
            first = next(iter(self._trains))
            del self._trains[first]
            total -= self._sizes.pop(first)
            self.trains_evicted += 1

    @property
    def nbytes(self) -> int:
        """Bytes of the buffered trains, as counted for ``max_bytes``."""
        with self._cond:
            return sum(self._sizes.values())

    def wait(self, ntrains: int = 1, timeout: float = 10) -> LiveBuffer:
        """Block until ``ntrains`` trains are buffered; returns self.

        Raises
        ------
        TimeoutError
            Fewer trains arrived within ``timeout`` seconds (a silent endpoint).
        RuntimeError
            The receiving thread failed or is not running.
        """
        if ntrains > self.maxlen:
            raise ValueError(f"cannot wait for {ntrains} trains in a buffer of {self.maxlen}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._trains) < ntrains:
                if self._failure is not None:
                    raise RuntimeError(f"the live buffer stopped: {self._failure!r}")
                if not self.running:
                    raise RuntimeError("the live buffer is not running (call start())")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._trains)} of {ntrains} trains from "
                                       f"{self.endpoint} within {timeout} s")
                self._cond.wait(min(left, 0.1))
        return self

    def wait_newer(self, seen: int = 0, timeout: float = 10) -> Newest:
        """Block until more than ``seen`` messages were filed; then the newest buffered train.

        A consumer that keeps only up with the newest train passes the
        ``filed`` count of the last :class:`Newest` it got: messages filed
        since then that are not the newest are the ones it skipped.

        Raises
        ------
        TimeoutError
            No newer message within ``timeout`` seconds.
        RuntimeError
            The receiving thread failed.

        Examples
        --------
        >>> newest = buf.wait_newer(0, timeout=10)        # doctest: +SKIP
        >>> newest = buf.wait_newer(newest.filed)         # doctest: +SKIP
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._filed <= seen or not self._trains:
                if self._failure is not None:
                    raise RuntimeError(f"the live buffer stopped: {self._failure!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no new train from {self.endpoint} within {timeout} s")
                self._cond.wait(min(left, 0.1))
            tid = max(self._trains)
            data, metadata = self._trains[tid]
            return Newest(self._filed, tid, dict(data), dict(metadata), self._filed_at)

    # -- contents --------------------------------------------------------------

    @property
    def train_ids(self) -> np.ndarray:
        """IDs of the buffered trains, ascending (uint64)."""
        with self._cond:
            return np.array(sorted(self._trains), dtype=np.uint64)

    @property
    def trains_dropped(self) -> int:
        """Trains lost: evicted by ``maxlen`` plus gaps in the train IDs received."""
        return self.trains_evicted + self.trains_missed

    def __len__(self) -> int:
        with self._cond:
            return len(self._trains)

    def train(self, train_id: int) -> tuple[TrainData, TrainData]:
        """The buffered ``(data, metadata)`` of one train (``KeyError`` if not buffered).

        Arrays are read-only views of the received data.
        """
        with self._cond:
            data, metadata = self._trains[int(train_id)]
            return dict(data), dict(metadata)

    def clear(self) -> None:
        """Forget the buffered trains (the counters stay)."""
        with self._cond:
            self._trains.clear()
            self._sizes.clear()

    def _snapshot(self, last: int | None = None) -> list[tuple[int, TrainData]]:
        """The buffered trains (the newest ``last`` of them), by ascending train ID."""
        if last is not None and last < 1:
            raise ValueError(f"last must be at least 1, got {last}")
        with self._cond:
            tids = sorted(self._trains)[-last:] if last is not None else sorted(self._trains)
            return [(tid, dict(self._trains[tid][0])) for tid in tids]

    # -- views -----------------------------------------------------------------

    def detector(self, name: str | None = None, *, modules: Sequence[int] | None = None,
                 fill_value: Any = None, require_all_modules: bool = False,
                 pulses: Any = None, keys: Sequence[str] | None = None,
                 dask: bool = True, last: int | None = None,
                 parallel_gain: bool | None = None) -> xr.Dataset:
        """The buffered trains of a multi-module detector, stacked as ``run.detector()`` does.

        Parameters are those of :func:`xfeldata.detectors.stacking.detector_dataset`
        (``modules``, ``pulses``, ``require_all_modules``, ``fill_value``, ``keys``,
        ``parallel_gain``);
        ``dask=False`` gives numpy variables, each frame copied once straight
        into place (the trains are in memory already), in the memory of
        earlier such arrays that nothing uses any more (the buffer keeps up
        to four: :class:`~xfeldata.bridge.buffers.ArrayPool`); ``last=n``
        takes only the newest ``n`` buffered trains (``last=1, dask=False``:
        the newest train as numpy arrays, what a live display shows).

        Returns
        -------
        xarray.Dataset
            ``image.data`` (and ``image.mask``, ``image.gain``)
            ``(trainId, pulseId, module, [gain,] slow_scan, fast_scan)``
            (JUNGFRAU: ``cell``), ``present (trainId, pulseId, module)`` (True
            exactly where a frame was received), ``cellId``
            (int64, -1 where missing).  The pixel variables are dask arrays
            with one chunk per train and module, views of the buffered arrays:
            building copies nothing, and computing copies only what a selection
            touches.  The Dataset keeps its trains' arrays alive, so it stays
            valid when later trains evict them or the buffer is cleared.
            ``present`` and ``cellId`` are numpy arrays.

        Examples
        --------
        >>> buf.detector("AGIPD", modules=[0, 1])["present"].dims   # doctest: +SKIP
        ('trainId', 'pulseId', 'module')
        >>> frames = buf.detector(last=1, dask=False)["image.data"][0].values   # doctest: +SKIP
        """
        return _detector(self._snapshot(last), name, modules, fill_value, require_all_modules, keys,
                         pulses, dask, self._pool, parallel_gain)

    def dataset(self, sources: str = "*", keys: str = "*", last: int | None = None) -> xr.Dataset:
        """Every matching key of the buffered trains, as ``run.select(sources, keys).dataset()``.

        Variables are named ``"source/key"``; per-train keys are
        ``(trainId, *entry)``, frame-resolved detector keys (``image.*``)
        ``(trainId, pulseId, *entry)``; generic entry dimensions are named
        ``"<key>.dim_0"``, ....  ``last=n``: only the newest ``n`` buffered trains.

        Examples
        --------
        >>> buf.dataset("SA1_XTD2_XGM/*")     # doctest: +SKIP
        """
        return _dataset(self._snapshot(last), sources, keys)

    def control_frame(self, sources: str = "*", keys: str = "*",
                      last: int | None = None) -> pd.DataFrame:
        """Scalar values of control sources, as ``run.control_frame()``.

        Indexed by ``trainId``, one column per ``"source/key"``; keys with
        array values are listed in ``frame.attrs["skipped"]``.  Control
        sources are those without ``:`` in their name (Karabo pipeline outputs
        have one).  ``last=n``: only the newest ``n`` buffered trains.

        Examples
        --------
        >>> buf.control_frame("*MOTOR*")     # doctest: +SKIP
        """
        return _control_frame(self._snapshot(last), sources, keys)

    # -- protocol --------------------------------------------------------------

    def __enter__(self) -> LiveBuffer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"<LiveBuffer {self.endpoint} ({state}) {len(self)}/{self.maxlen} trains, "
                f"{self.trains_dropped} dropped, {self.errors} errors>")


# ---------------------------------------------------------------------------
# Detector stacking (the layout of xfeldata.detectors.stacking.detector_dataset)
# ---------------------------------------------------------------------------


def _xtdf_rows(props: Mapping[str, Any], kind: DetectorKind | None) -> tuple[int, dict[str, np.ndarray]]:
    """Frames of one XTDF module in one train and its ``image.*`` values as rows ``(n, *entry)``.

    Per-train dicts drop the row axis of a single row (as files read train by
    train do): the detector kind's frame shape tells whether it was dropped.
    """
    image = {k: np.asarray(v) for k, v in props.items() if k.startswith("image.")
             and isinstance(v, _VALUE_TYPES)}
    data = image.get("image.data")
    single = False
    if data is not None and kind is not None:
        entry = kind.corrected_entry_shape if data.dtype.kind in "fc" else kind.raw_entry_shape
        single = data.ndim == len(entry)
    elif data is None and "image.pulseId" in image:
        single = image["image.pulseId"].ndim == 0
    if single:
        image = {k: v[np.newaxis] for k, v in image.items()}
    lengths = {len(v) for v in image.values() if v.ndim}
    if len(lengths) > 1:
        raise ValueError(f"image.* keys differ in their number of frames: "
                         f"{ {k: v.shape for k, v in image.items()} }")
    return (lengths.pop() if lengths else 0), image


def _pulse_ids(image: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    pids = image.get("image.pulseId")
    if pids is None:
        return np.arange(n)
    return pids.reshape(n, -1)[:, 0] if pids.ndim > 1 else pids


@dataclass
class _Frames:
    """What stacking needs of the buffered trains of one detector.

    Attributes
    ----------
    per_train
        Per kept train, ``{module: (frames, {key: rows (frames, *entry)})}``
        (JUNGFRAU: one row per train holding every memory cell).
    modules
        The stacked module numbers, in order.
    xtdf
        Frames are labelled by pulse ID (else the slots are memory cells).
    pulse_coord
        The slot axis: sorted pulse IDs (XTDF) or memory cells.
    pids
        XTDF: per module, per kept train, ``(frames, pulse ID per frame)``.
    stages
        LPD parallel gain: per module, per kept train, the gain stage per frame.
    n_stages
        Gain stages stacked (the plan's; 1 unless ``stages``).
    """

    per_train: list[dict[int, tuple[int, dict[str, np.ndarray]]]]
    modules: list[int]
    xtdf: bool
    pulse_coord: np.ndarray
    pids: dict[int, list[tuple[int, np.ndarray]]]
    stages: dict[int, list[np.ndarray]] | None
    n_stages: int = 1


@dataclass(frozen=True, eq=False)  # holds arrays: compared and hashed by identity
class _PlacedFrames:
    """One ``(train, module)`` chunk whose frames do not fill the pulse slots in order.

    Built when dask computes the chunk (the form of
    :class:`xfeldata.arrays.BlockRead`: a ``shape`` and ``__getitem__``).

    Attributes
    ----------
    rows
        The module's frames ``(n, *entry)``, as buffered.
    slots
        Pulse slot of every frame.
    stages
        Gain stage of every frame (LPD parallel gain), else None.
    shape
        The chunk: ``(1, slots, 1, [3,] *entry)``.
    dtype
        Of the chunk.
    fill_value
        Value of the cells no frame fills; None when the frames cover the chunk.
    """

    rows: np.ndarray
    slots: np.ndarray
    stages: np.ndarray | None
    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any

    def __getitem__(self, key: Any) -> np.ndarray:
        """The part of the chunk that ``key`` selects (the whole chunk is built)."""
        return self.build()[key]

    def build(self, out: np.ndarray | None = None) -> np.ndarray:
        """The chunk with every frame in its slot (and gain stage), in ``out`` if given."""
        if out is None:
            out = np.empty(self.shape, self.dtype)
        if self.fill_value is not None:
            out[...] = self.fill_value
        if self.stages is None:
            out[0, self.slots, 0] = self.rows
        else:
            out[0, self.slots, 0, self.stages] = self.rows
        return out


def _module_frames(frames: _Frames, i: int, m: int, key: str, entry: tuple[int, ...]
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """Frames ``(n, *entry)`` of module ``m`` in kept train ``i`` and their slot labels.

    None where the module has no frames or not the key.  The frames are views
    of the buffered arrays (a length-1 axis that the stacked entry drops is
    indexed away).
    """
    mods = frames.per_train[i]
    if m not in mods or key not in mods[m][1] or not mods[m][0]:
        return None
    rows = mods[m][1][key]
    if not frames.xtdf:  # one row holding every memory cell in order, or a camera's one frame
        return (rows[0] if rows.ndim == len(entry) + 2 else rows), frames.pulse_coord
    if rows.ndim == len(entry) + 2:
        rows = rows[:, 0]
    return rows, frames.pids[m][i][1]


def _module_chunk(frames: _Frames, i: int, j: int, key: str, entry: tuple[int, ...],
                  dtype: np.dtype, fill: Any) -> np.ndarray | _PlacedFrames | BlockRead:
    """The ``(train i, module position j)`` chunk of a stacked key, without copying frames.

    A view of the buffered frames where they fill the pulse slots in order (the
    usual case), a :class:`_PlacedFrames` where frames are missing, reordered
    or stored per gain stage out of that order, and a filled block where the
    module has no frames.
    """
    m = frames.modules[j]
    n_stages = frames.n_stages
    n_slots = len(frames.pulse_coord)
    shape = (1, n_slots, 1, *((n_stages,) if frames.stages else ()), *entry)
    found = _module_frames(frames, i, m, key, entry)
    if found is None:
        return BlockRead(shape, dtype, len(entry), fill, ())
    rows, ids = found
    in_order = len(ids) == n_slots * n_stages and (ids[:n_slots] == frames.pulse_coord).all()
    if in_order and frames.stages is None:
        return rows[np.newaxis, :, np.newaxis]
    if in_order:  # parallel gain: every stage's pulses in order, one stage after the other
        return rows.reshape(n_stages, n_slots, *entry).swapaxes(0, 1)[np.newaxis, :, np.newaxis]
    slots = np.searchsorted(frames.pulse_coord, ids)
    stages = frames.stages[m][i] if frames.stages else None
    cells = slots * n_stages + (stages if stages is not None else 0)
    covered = len(np.unique(cells)) == n_slots * n_stages
    return _PlacedFrames(rows, slots, stages, shape, dtype, None if covered else fill)


def _stacked_array(frames: _Frames, key: str, entry: tuple[int, ...], dtype: np.dtype,
                   fill: Any, dask: bool = True, pool: ArrayPool | None = None
                   ) -> da.Array | np.ndarray:
    """One key of every module, ``(train, slot, module, [stage,] *entry)``, as a lazy array.

    One chunk per train and module (:func:`_module_chunk`): building it copies
    nothing; computing copies only the chunks that a selection touches.  The
    chunks keep the buffered arrays alive, so the array stays valid while later
    trains arrive, evict these or the buffer is cleared.  With ``dask=False``
    the chunks are copied straight into one numpy array instead (each frame's
    bytes once), in memory from ``pool`` if given.
    """
    n_trains, n_modules = len(frames.per_train), len(frames.modules)
    stage_chunks = ((frames.n_stages,),) if frames.stages else ()
    chunks = (tuple([1] * n_trains), (len(frames.pulse_coord),), tuple([1] * n_modules),
              *stage_chunks, *((d,) for d in entry))
    if not dask:
        out = (pool.empty if pool is not None else np.empty)(tuple(sum(c) for c in chunks), dtype)
        for i in range(n_trains):
            for j in range(n_modules):
                chunk = _module_chunk(frames, i, j, key, entry, dtype, fill)
                place = out[i:i + 1, :, j:j + 1]
                if isinstance(chunk, np.ndarray):
                    place[...] = chunk
                elif isinstance(chunk, _PlacedFrames):
                    chunk.build(place)
                else:
                    execute_block(chunk, place)
        return out
    if not n_trains:  # dask's own constructors fail for zero-size arrays
        return da.from_array(np.empty(tuple(sum(c) for c in chunks), dtype), chunks=-1)
    blocks = {}
    for i in range(n_trains):
        for j in range(n_modules):
            index = (i, 0, j) + (0,) * (len(stage_chunks) + len(entry))
            blocks[index] = _module_chunk(frames, i, j, key, entry, dtype, fill)
    # The name cannot be a token of the contents (hashing them would copy as much
    # as stacking); each snapshot gets its own.
    return blocks_array(f"xfeldata-live-{key}-{uuid.uuid4().hex}", blocks, chunks, dtype)


def _cell_ids(frames: _Frames, cell_key: str) -> np.ndarray:
    """Memory cell IDs ``(trainId, slot, module)`` as int64, -1 where missing."""
    n_slots = len(frames.pulse_coord)
    cell_ids = np.full((len(frames.per_train), n_slots, len(frames.modules)), -1, np.int64)
    for i, mods in enumerate(frames.per_train):
        for j, m in enumerate(frames.modules):
            if m not in mods or cell_key not in mods[m][1] or not mods[m][0]:
                continue
            cells = mods[m][1][cell_key]
            if not frames.xtdf:
                cell_ids[i, :, j] = cells.reshape(n_slots)
                continue
            cells = cells.reshape(len(cells), -1)[:, 0].astype(np.int64)
            ids = frames.pids[m][i][1]
            if frames.stages:
                sel = frames.stages[m][i] == 0
                cells, ids = cells[sel], ids[sel]
            cell_ids[i, np.searchsorted(frames.pulse_coord, ids), j] = cells
    return cell_ids


def _detector(trains: list[tuple[int, TrainData]], name: str | None, modules: Sequence[int] | None,
              fill_value: Any, require_all_modules: bool, keys: Sequence[str] | None,
              pulses: Any = None, dask: bool = True, pool: ArrayPool | None = None,
              parallel_gain: bool | None = None) -> xr.Dataset:
    found = group_detector_sources({s for _, data in trains for s in data})
    device, sources = choose_detector(found, name, "the buffered trains")
    kind = detector_kind(device, list(sources)) or generic_kind(
        device, any("image.data" in d.get(s, {}) for _, d in trains for s in sources.values()))
    xtdf, data_key = kind.row_per_frame, kind.data_key
    all_modules, present_sources = stacked_modules(device, kind, sources, modules, "the buffered trains")

    # Rows of every module in every train: n frames and the group's values (n, *entry)
    per_train: list[dict[int, tuple[int, dict[str, np.ndarray]]]] = []
    for _, data in trains:
        mods = {}
        for m, s in present_sources.items():
            props = data.get(s)
            if props is None:
                continue
            if xtdf:
                mods[m] = _xtdf_rows(props, kind)
            else:
                values = {k: np.asarray(v)[np.newaxis] for k, v in props.items()
                          if k.startswith("data.") and isinstance(v, _VALUE_TYPES)}
                mods[m] = (1 if data_key in values else 0, values)
        per_train.append(mods)

    first = next(iter(present_sources.values()))
    first_keys = {k for _, d in trains for k in d.get(first, {})}
    candidates = keys or kind.pixel_keys
    var_keys = [k for k in candidates if k in first_keys]
    if not var_keys:
        raise KeyError(f"{first} has none of the keys {list(candidates)} in the buffered trains")
    infos: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for key in var_keys:
        seen = {(m, v[key].shape[1:], v[key].dtype) for mods in per_train
                for m, (n, v) in mods.items() if key in v and n}
        shapes = {(shape, dtype) for _, shape, dtype in seen}
        if len(shapes) > 1:
            detail = ", ".join(sorted({f"module {m}: {shape} {dtype}" for m, shape, dtype in seen}))
            raise ValueError(f"{device} {key}: modules differ in shape or dtype ({detail})")
        if shapes:
            infos[key] = shapes.pop()

    # Common train axis: trains where any (require_all_modules: every) module has frames
    has = np.array([[mods.get(m, (0,))[0] > 0 for m in present_sources] for mods in per_train],
                   bool).reshape(len(per_train), len(present_sources))
    keep = kept_trains(has.T, require_all_modules)
    train_ids = np.array([tid for (tid, _), k in zip(trains, keep, strict=True) if k], np.uint64)
    per_train = [mods for mods, k in zip(per_train, keep, strict=True) if k]

    # The plan (pulse axis, slots, gain stages, selection, present), as for files
    counts = {m: np.array([mods[m][0] if m in mods else 0 for mods in per_train], np.int64)
              for m in present_sources}
    ids = {m: np.concatenate([np.zeros(0, np.int64)] + [
        _pulse_ids(mods[m][1], mods[m][0]).astype(np.int64) for mods in per_train
        if m in mods and mods[m][0]]) for m in present_sources} if xtdf else {}
    first_info = infos.get(data_key) or next(iter(infos.values()))
    plan = plan_frames(kind, all_modules, counts, ids, pulses, kind.cells_in_row(first_info[0]),
                       present_sources, parallel_gain, train_ids)
    pulse_coord = plan.pulse_coord
    pids: dict[int, list[tuple[int, np.ndarray]]] = {}
    stages: dict[int, list[np.ndarray]] | None = {} if plan.stages else None
    ids = plan.pulse_ids  # the IDs labelling the rows (parallel_gain=True: the first stage's)
    for m in ids:  # per train: the selected frames, their pulse IDs and gain stages
        pids[m] = []
        if stages is not None:
            stages[m] = []
        ends = np.cumsum(counts[m])
        for i, (start, end) in enumerate(zip(ends - counts[m], ends, strict=True)):
            sel = plan.selected[m][start:end]
            if m in per_train[i] and not sel.all():
                values = per_train[i][m][1]
                per_train[i][m] = (int(sel.sum()), {k: v[sel] if v.ndim and len(v) == len(sel) else v
                                                    for k, v in values.items()})
            pids[m].append((int(sel.sum()), ids[m][start:end][sel]))
            if stages is not None:
                stages[m].append(plan.stages[m][start:end][sel])
    frames = _Frames(per_train, all_modules, xtdf, pulse_coord, pids, stages, plan.n_stages)

    variables, pixel_dims = {}, {}
    for key, (shape, dtype) in infos.items():
        var = schema.DETECTOR_VARIABLES.get(key, key)
        entry = kind.stacked_entry(shape)
        fill = schema.detector_fill_value(key, dtype, fill_value)
        variables[var] = _stacked_array(frames, key, entry, dtype, fill, dask, pool)
        pixel = schema.detector_pixel_dims(entry)
        pixel_dims[var] = (schema.GAIN_DIM, *pixel) if stages else pixel

    cell_key = kind.cell_key
    cell_ids = _cell_ids(frames, cell_key) if cell_key in first_keys else None

    first_dtype = (infos.get(data_key) or next(iter(infos.values())))[1]
    attrs = {
        "detector": device, "kind": kind.name,
        "fill_value": schema.fill_value_for(first_dtype, fill_value),
        "frames_per_pulse": plan.n_stages,
        **schema.renamed_keys(infos),
    }
    ds = schema.detector_dataset(
        variables, train_ids=train_ids, pulse_ids=pulse_coord, modules=all_modules, present=plan.present,
        pixel_dims=pixel_dims, cell_ids=cell_ids,
        pulse_dim=kind.pulse_dim, attrs=attrs,
    )
    if plan.cells_selected is not None and not plan.cells_selected.all():
        ds = ds.isel({kind.pulse_dim: np.flatnonzero(plan.cells_selected)})
    return ds if dask else ds.load()


# ---------------------------------------------------------------------------
# Dataset and control frame (the layouts of xfeldata.views)
# ---------------------------------------------------------------------------


def _is_xtdf_source(source: str) -> bool:
    match = match_detector_source(source)
    if match is None:
        return False
    kind = detector_kind_of_device(match[0])
    return kind is None or kind.row_per_frame


def _as_array(values: list[Any]) -> np.ndarray:
    """Stack per-train values; strings become object arrays of ``str`` (as offline)."""
    if all(isinstance(v, str | bytes) for v in values):
        return decode_strings(np.array(values, dtype=object))
    arr = np.stack([np.asarray(v) for v in values])
    if arr.dtype.kind in "SU":
        arr = arr.astype(object)
    return arr


def _key_variables(source: str, key: str, found: list[tuple[int, Any]],
                   rows: dict[int, tuple[int, dict[str, np.ndarray]]] | None) -> dict[str, xr.DataArray]:
    """The DataArray(s) of one key over the trains that have it (cf. views.key_array)."""
    pulse_ids, positional = None, False
    if rows is not None:  # frame-resolved XTDF image.* key
        found = [(tid, rows[tid][1][key]) for tid, _ in found if rows[tid][0] and key in rows[tid][1]]
        counts = [len(v) for _, v in found]
        train_ids = np.array([tid for tid, _ in found], np.uint64)
        if max(counts, default=0) <= 1:
            data = _as_array([v[0] for _, v in found]) if found else np.zeros(0)
        else:
            per_train = [_pulse_ids(rows[tid][1], len(v)) for tid, v in found]
            unique = all(len(np.unique(p)) == len(p) for p in per_train)
            if unique and all("image.pulseId" in rows[tid][1] for tid, _ in found):
                pulse_ids = np.unique(np.concatenate(per_train))
                slots = [np.searchsorted(pulse_ids, p) for p in per_train]
            else:
                pulse_ids, positional = np.arange(max(counts)), True
                slots = [np.arange(len(v)) for _, v in found]
            first = np.asarray(found[0][1])
            shape = (len(found), len(pulse_ids), *first.shape[1:])
            if all(len(s) == len(pulse_ids) for s in slots):  # every slot of every train filled
                data = np.empty(shape, first.dtype)
            else:
                data = np.full(shape, default_fill_value(first.dtype), dtype=first.dtype)
            for i, ((_, v), s) in enumerate(zip(found, slots, strict=True)):
                data[i, s] = v
    else:
        train_ids = np.array([tid for tid, _ in found], np.uint64)
        data = _as_array([v for _, v in found])
    if data.dtype.names:
        arrays = {f"{key}.{f}": schema.key_dataarray(data[f], train_ids, source=source, key=f"{key}.{f}",
                                                     pulse_ids=pulse_ids, positional=positional)
                  for f in data.dtype.names}
    else:
        arrays = {key: schema.key_dataarray(data, train_ids, source=source, key=key,
                                            pulse_ids=pulse_ids, positional=positional)}
    out = {}
    for name, arr in arrays.items():
        generic = {d: f"{key}.{d}" for d in arr.dims if d.startswith("dim_")}
        out[f"{source}/{name}"] = arr.rename(generic) if generic else arr
    return out


def _group_presence(source: str, group: str, train_ids: list[int],
                    rows: dict[int, tuple[int, dict[str, np.ndarray]]] | None) -> xr.DataArray:
    """Where an index group of a source has data (cf. views.group_presence).

    ``train_ids`` are the trains listing a key of the group; ``rows`` the frame
    rows of an XTDF ``image`` group, else None.
    """
    key = f"{group}.present"
    if rows is not None:
        train_ids = [t for t in train_ids if rows[t][0]]
    ids = np.array(train_ids, np.uint64)
    counts = [rows[t][0] for t in train_ids] if rows is not None else []
    if max(counts, default=0) <= 1:
        return schema.key_dataarray(np.ones(len(ids), bool), ids, source=source, key=key, dims=())
    per_train = [_pulse_ids(rows[t][1], rows[t][0]) for t in train_ids]
    positional = not (all(len(np.unique(p)) == len(p) for p in per_train)
                      and all("image.pulseId" in rows[t][1] for t in train_ids))
    if positional:
        pulse_ids = np.arange(max(counts))
        slots = [np.arange(n) for n in counts]
    else:
        pulse_ids = np.unique(np.concatenate(per_train))
        slots = [np.searchsorted(pulse_ids, p) for p in per_train]
    mask = np.zeros((len(ids), len(pulse_ids)), bool)
    for i, slot in enumerate(slots):
        mask[i, slot] = True
    return schema.key_dataarray(mask, ids, source=source, key=key, pulse_ids=pulse_ids,
                                positional=positional, dims=())


def _dataset(trains: list[tuple[int, TrainData]], sources: str, keys: str) -> xr.Dataset:
    names = sorted({s for _, d in trains for s in d if fnmatch.fnmatchcase(s, sources)})
    variables: dict[str, xr.DataArray] = {}
    masks: dict[str, xr.DataArray] = {}
    for source in names:
        rows = None
        if _is_xtdf_source(source):
            match = match_detector_source(source)
            kind = detector_kind(match[0], [match[1]]) if match else None
            rows = {tid: _xtdf_rows(d[source], kind) for tid, d in trains if source in d}
        source_keys = sorted({k for _, d in trains for k in d.get(source, {})
                              if k != "metadata" and fnmatch.fnmatchcase(k, keys)})
        for key in source_keys:
            found = [(tid, d[source][key]) for tid, d in trains if key in d.get(source, {})]
            resolved = rows if rows is not None and key.startswith("image.") else None
            try:
                variables.update(_key_variables(source, key, found, resolved))
            except ValueError as exc:  # values of different shapes in different trains
                log.warning("live buffer: %s/%s left out of the dataset: %s", source, key, exc)
        # index groups as the files have them: a control source's keys share one
        groups = {k.split(".", 1)[0] if ":" in source else "" for k in source_keys}
        for group in sorted(groups):
            in_group = [k for k in source_keys if (k.split(".", 1)[0] if ":" in source else "") == group]
            tids = [tid for tid, d in trains if any(k in d.get(source, {}) for k in in_group)]
            masks[f"{source}/{group}.present"] = _group_presence(
                source, group, tids, rows if rows is not None and group == "image" else None)
    return merge_variables(variables, masks)  # exactly as the offline run_dataset merges


def _is_scalar(value: Any) -> bool:
    if isinstance(value, str | bytes | numbers.Number | np.generic):
        return not (isinstance(value, np.void) and value.dtype.names)
    return isinstance(value, np.ndarray) and value.ndim == 0 and not value.dtype.names


def _control_frame(trains: list[tuple[int, TrainData]], sources: str, keys: str) -> pd.DataFrame:
    names = sorted({s for _, d in trains for s in d
                    if ":" not in s and fnmatch.fnmatchcase(s, sources)})
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped = []
    for source in names:
        source_keys = sorted({k for _, d in trains for k in d.get(source, {})
                              if k != "metadata" and fnmatch.fnmatchcase(k, keys)})
        for key in source_keys:
            found = [(tid, d[source][key]) for tid, d in trains if key in d.get(source, {})]
            if not all(_is_scalar(v) for _, v in found):
                skipped.append(f"{source}/{key}")
                continue
            values = [v.item() if isinstance(v, np.ndarray | np.generic) else v for _, v in found]
            columns[f"{source}/{key}"] = (np.array([t for t, _ in found], np.uint64),
                                          _as_array(values))
    frame = schema.control_frame(columns)
    frame.attrs["skipped"] = skipped
    return frame
