"""A Karabo bridge server: :class:`Server` sends the trains you :meth:`~Server.feed` it.

The server binds one ZeroMQ socket (REP, PUB or PUSH) and sends from a
background thread.  What happens when clients are slower than the trains
come in is the server's *policy* (the seed talk's "policy on busy client"):

``"wait"``
    :meth:`Server.feed` returns only when a client has taken the train.
    For PUB that means "ZeroMQ has taken it": a PUB socket never waits for
    subscribers, so with none connected the train is sent to nobody (and
    counted in ``sent``) at once.
``"queue"``
    Up to ``maxlen`` trains wait to be sent; then :meth:`Server.feed` blocks.
``"drop"``
    Up to ``maxlen`` trains wait; when full, the oldest one is dropped
    (clients get the newest trains).  Besides those, ZeroMQ and the network
    hold a few trains on their way (a PUSH socket's kernel send buffer is
    bounded to :data:`DROP_SNDBUF` for this; trains much smaller than it
    can still queue there).
``"raise"``
    Up to ``maxlen`` trains wait; when full, :meth:`Server.feed` raises
    :class:`ServerBusy`.

Examples
--------
>>> import numpy as np
>>> from xfeldata.bridge import Client, Server
>>> with Server(policy="queue") as server:
...     server.feed({"SRC": {"x": np.arange(3)}}, train_id=10000)
...     with Client(server.endpoint, timeout=5) as client:
...         data, meta = client.next()
>>> data["SRC"]["x"].tolist(), meta["SRC"]["timestamp.tid"]
([0, 1, 2], 10000)
"""

from __future__ import annotations

import logging
import numbers
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import zmq

from ..detectors.kinds import detector_kind_of_device, group_detector_sources
from ..detectors.plan import plan_train_modules
from ..run import RunSelection
from .protocol import ENCODE_VERSIONS, ProtocolError, encode, make_metadata, train_id_of
from .sockets import Throttle, limit_frames, recv_message

__all__ = ["POLICIES", "Server", "ServerBusy", "ServerClosed", "Streamer",
           "append_detector_modules", "normalize_endpoint", "serve"]

#: Policies for clients slower than the trains.
POLICIES = ("wait", "queue", "drop", "raise")
_SOCKETS = {"REP": zmq.REP, "PUB": zmq.PUB, "PUSH": zmq.PUSH}
_POLL_MS = 50  # how often the sending thread checks for stop()
#: Largest request (all frames) a REP server reads; ZeroMQ drops a peer sending a longer frame.
MAX_REQUEST_BYTES = 1024
#: Kernel send buffer of a PUSH socket with policy "drop": what the network
#: can hold besides ZeroMQ's one queued train, so that old trains are dropped.
DROP_SNDBUF = 256 * 1024

log = logging.getLogger(__name__)


class ServerBusy(RuntimeError):
    """``feed`` with policy ``"raise"``: ``maxlen`` trains are already waiting."""


class ServerClosed(RuntimeError):
    """``feed`` on a server that is stopped (or stopped while ``feed`` waited)."""


def normalize_endpoint(endpoint: str | int) -> str:
    """The address to bind: a bare port binds 127.0.0.1 on that port.

    Examples
    --------
    >>> normalize_endpoint(4545), normalize_endpoint("0")
    ('tcp://127.0.0.1:4545', 'tcp://127.0.0.1:0')
    >>> normalize_endpoint("tcp://*:4545")
    'tcp://*:4545'
    """
    if isinstance(endpoint, int) or (isinstance(endpoint, str) and endpoint.isdigit()):
        return f"tcp://127.0.0.1:{int(endpoint)}"
    if "://" not in endpoint:  # "host:port"
        return f"tcp://{endpoint}"
    return endpoint


class _Item:
    __slots__ = ("frames", "sent")

    def __init__(self, frames: list) -> None:
        self.frames = frames
        self.sent = threading.Event()


def _metadata_for(data: Mapping[str, Mapping[str, Any]],
                  metadata: Mapping[str, Mapping[str, Any]] | None,
                  train_id: int | None) -> dict[str, dict[str, Any]]:
    """Complete metadata: given, else ``data[src]["metadata"]``, else built from ``train_id``."""
    now = time.time()
    out = {}
    for source, props in data.items():
        if metadata is not None and source in metadata:
            out[source] = dict(metadata[source])
        elif isinstance(props.get("metadata"), Mapping):
            out[source] = dict(props["metadata"])
        elif train_id is not None:
            out[source] = make_metadata(source, train_id, now)
        else:
            out[source] = {"source": source}
    return out


class Server:
    """Serve trains to Karabo bridge clients from a background thread.

    Parameters
    ----------
    endpoint
        Where to bind: ``"tcp://127.0.0.1:0"`` (default, a free port on the
        loopback interface), a bare port number (binds 127.0.0.1),
        ``"tcp://*:4545"`` (every interface) or ``"ipc://..."``.
    sock
        ``"REP"`` (clients ask with ``next``), ``"PUB"`` (every client gets a
        copy; slow ones lose trains) or ``"PUSH"`` (trains shared round-robin).
    protocol
        ``"2.2"`` (default) or ``"1.0"``.
    policy
        ``"wait"``, ``"queue"``, ``"drop"`` or ``"raise"``: see the module docs.
    maxlen
        Trains waiting to be sent, for ``queue``, ``drop`` and ``raise``.

    Attributes
    ----------
    sent, dropped : int
        Trains sent, and dropped by the ``drop`` policy.
    bad_requests : int
        REP requests other than the one frame ``b"next"``, answered with a
        one-frame ``b"Error: bad request ..."`` reply (the server keeps
        serving).  Requests longer than :data:`MAX_REQUEST_BYTES` are
        refused too; a single frame over it makes ZeroMQ drop the peer.

    Examples
    --------
    >>> server = Server(sock="PUB", policy="drop").start()
    >>> server.endpoint.startswith("tcp://127.0.0.1:")
    True
    >>> server.stop()
    """

    def __init__(self, endpoint: str | int = "tcp://127.0.0.1:0", sock: str = "REP",
                 protocol: str = "2.2", policy: str = "wait", maxlen: int = 10) -> None:
        if sock not in _SOCKETS:
            raise ValueError(f"unsupported socket type {sock!r}; use one of {sorted(_SOCKETS)}")
        if protocol not in ENCODE_VERSIONS:
            raise ValueError(f"unknown protocol {protocol!r}; use one of {ENCODE_VERSIONS}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; use one of {POLICIES}")
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.sock = sock
        self.protocol = protocol
        self.policy = policy
        self.maxlen = 1 if policy == "wait" else maxlen
        self.sent = 0
        self.dropped = 0
        self.bad_requests = 0
        self._queue: deque[_Item] = deque()
        self._sending: _Item | None = None  # taken from the queue, not yet sent
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._warn = Throttle(log.warning)
        self._context = zmq.Context()  # its one socket is closed before it is terminated
        self._socket = self._context.socket(_SOCKETS[sock])
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.set_hwm(1)
        limit_frames(self._socket, MAX_REQUEST_BYTES)
        if sock == "PUSH" and policy == "drop":
            self._socket.setsockopt(zmq.SNDBUF, DROP_SNDBUF)  # before bind: copied to connections
        try:
            self._socket.bind(normalize_endpoint(endpoint))
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            self._context.term()
            raise OSError(f"cannot bind {endpoint!r}: {exc}") from None
        self._endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def endpoint(self) -> str:
        """The bound address, with the real port when port 0 was asked for."""
        return self._endpoint

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Server:
        """Start the sending thread (done by ``with Server(...)``); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"bridge-server {self.endpoint}",
                                            daemon=True)
            self._thread.start()
        return self

    # -- feeding ---------------------------------------------------------------

    def feed(self, data: Mapping[str, Mapping[str, Any]],
             metadata: Mapping[str, Mapping[str, Any]] | None = None, *,
             train_id: int | None = None, timeout: float | None = None) -> None:
        """Queue one train for sending (encoded now, in the caller's thread).

        Parameters
        ----------
        data
            ``{source: {key: value}}``.  Arrays are sent without copies: do not
            modify them after feeding.
        metadata
            ``{source: {...}}``.  Missing sources take ``data[source]["metadata"]``
            or, with ``train_id``, metadata built from it and the current time.
        train_id
            Train ID for building missing metadata.
        timeout
            Longest wait in seconds where the policy blocks; then
            :class:`TimeoutError`.

        Raises
        ------
        ServerBusy
            Policy ``"raise"`` and ``maxlen`` trains are waiting.
        ServerClosed
            The server is stopped, or was stopped while waiting, or its
            sending thread failed (the text names the error).
        TimeoutError
            ``timeout`` passed while the policy made the call wait.
        """
        if self._stopping.is_set():
            raise ServerClosed("the server is stopped")
        if self._thread is None:
            self.start()
        self._check_thread()
        item = _Item(encode(data, _metadata_for(data, metadata, train_id), self.protocol))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._queue) >= self.maxlen:
                if self.policy == "drop":
                    self._queue.popleft()
                    self.dropped += 1
                elif self.policy == "raise":
                    raise ServerBusy(f"{len(self._queue)} trains already wait to be sent "
                                     f"(maxlen {self.maxlen})")
                else:
                    self._wait(self._cond.wait, deadline)
            self._queue.append(item)
            self._cond.notify_all()
        if self.policy == "wait":
            try:
                while not item.sent.is_set():
                    self._wait(lambda t: item.sent.wait(t), deadline)
            except (TimeoutError, ServerClosed):
                with self._cond:  # withdraw the train nobody took
                    if item in self._queue:
                        self._queue.remove(item)
                raise

    def _check_thread(self) -> None:
        if self._error is not None or not self._thread.is_alive():
            raise ServerClosed(f"the sending thread of {self.endpoint} failed: {self._error!r}")

    def _wait(self, wait, deadline: float | None) -> None:
        """One bounded wait step that notices stop() and the caller's timeout."""
        if self._stopping.is_set():
            raise ServerClosed("the server was stopped while feed() waited")
        self._check_thread()
        step = _POLL_MS / 1000
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no client took the train in time")
            step = min(step, left)
        wait(step)

    def pending(self) -> int:
        """Number of trains waiting to be sent."""
        with self._cond:
            return len(self._queue)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every fed train is sent; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._sending is not None) and self.running:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._cond.wait(_POLL_MS / 1000)
            return not self._queue and self._sending is None

    # -- sending thread --------------------------------------------------------

    def _next_item(self) -> _Item | None:
        with self._cond:
            while not self._queue:
                if self._stopping.is_set():
                    return None
                self._cond.wait(_POLL_MS / 1000)
            item = self._sending = self._queue.popleft()
            self._cond.notify_all()
            return item

    def _wait_socket(self, event: int) -> bool:
        """Poll the socket for ``event`` until it is ready (True) or stop() (False)."""
        while not self._stopping.is_set():
            if self._socket.poll(_POLL_MS, event):
                return True
        return False

    def _request_ok(self) -> bool:
        """Read one REP request; answer anything but ``[b"next"]`` with an error reply."""
        try:
            frames = recv_message(self._socket, MAX_REQUEST_BYTES, "request", max_frames=16)
            request = [f.bytes for f in frames]
            problem = None if request == [b"next"] else f"bad request {request!r}"[:200]
        except ProtocolError as exc:
            problem = str(exc)
        if problem is None:
            return True
        self.bad_requests += 1
        self._warn(f"bridge server {self.endpoint}: {problem} (answered with an error)")
        self._socket.send(f"Error: {problem}".encode(errors="replace"))
        return False

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self.sock == "REP":
                    if not self._wait_socket(zmq.POLLIN):
                        break
                    if not self._request_ok():
                        continue
                item = self._next_item()
                if item is None:
                    break
                if self.sock == "PUSH":
                    # The peer may go between poll and send: never block in send, or
                    # stop() could not join this thread.
                    if not self._wait_socket(zmq.POLLOUT):
                        break
                    try:
                        self._socket.send_multipart(item.frames, flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        with self._cond:
                            self._queue.appendleft(item)
                            self._sending = None
                        continue
                else:
                    self._socket.send_multipart(item.frames, copy=False)
                with self._cond:
                    self.sent += 1
                    self._sending = None
                    self._cond.notify_all()
                item.sent.set()
        except BaseException as exc:  # keep it for feed() to report
            self._error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def stop(self, linger: float = 0) -> None:
        """Stop sending, close the socket and free the port.

        Trains still queued are lost.  ``linger`` is how many seconds the
        socket may take to deliver messages already handed to ZeroMQ (0
        discards them, as the published package does).
        """
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if not self._socket.closed:
            self._socket.close(linger=int(linger * 1000))
            self._context.term()  # returns once the socket has delivered or lingered

    def __del__(self) -> None:
        # Never block in a finalizer: close with LINGER 0, then the context has nothing to wait for.
        socket = getattr(self, "_socket", None)
        if socket is not None and not socket.closed:
            self._stopping.set()
            socket.close(linger=0)
            self._context.term()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<Server {self.sock} {self.endpoint} protocol {self.protocol} "
                f"policy {self.policy} sent {self.sent}>")


# ---------------------------------------------------------------------------
# Streaming a run, a simulator or any iterable of trains
# ---------------------------------------------------------------------------


def _is_run(source: Any) -> bool:
    return callable(getattr(source, "trains", None)) and callable(getattr(source, "select", None))


def _as_data_meta(item: Any) -> tuple[dict, dict]:
    """A train from an iterable: ``(data, metadata)`` or ``(train_id, data)``."""
    if not (isinstance(item, tuple) and len(item) == 2):
        raise TypeError(f"a train must be (data, metadata) or (train_id, data), got {type(item)}")
    first, second = item
    if isinstance(first, Mapping):
        return dict(first), _metadata_for(first, second, None)
    if isinstance(first, (numbers.Integral, np.integer)) and isinstance(second, Mapping):
        return dict(second), _metadata_for(second, None, int(first))
    raise TypeError("a train must be (data, metadata) or (train_id, data) with dict data")


def _filter(data: dict, metadata: dict, sources: str | None, keys: str | None) -> tuple[dict, dict]:
    if sources is None and keys is None:
        return data, metadata
    out = {}
    for source, props in data.items():
        if sources is not None and not fnmatchcase(source, sources):
            continue
        if keys is not None:
            props = {k: v for k, v in props.items() if k == "metadata" or fnmatchcase(k, keys)}
            if not set(props) - {"metadata"}:
                continue
        out[source] = props
    return out, {s: metadata[s] for s in out}


def _iter_trains(source: Any, sources: str | None, keys: str | None) -> Iterator[tuple[dict, dict]]:
    if _is_run(source):
        run = source.select(sources or "*", keys or "*") if (sources or keys) else source
        # xfeldata's runs name control keys as bridge messages do; other runs as they do
        trains = run.trains(bridge_names=True) if isinstance(run, RunSelection) else run.trains()
    else:
        trains = source
    for item in trains:
        data, metadata = _as_data_meta(item)
        yield _filter(data, metadata, sources, keys)


_ID_KEYS = ("image.pulseId", "image.cellId", "image.trainId",
            "data.memoryCell", "data.frameNumber", "data.trainId")


def append_detector_modules(data: dict, metadata: dict) -> tuple[dict, dict]:
    """Replace a detector's module sources with one stacked ``<device>/CAL/APPEND`` source.

    As the facility's "append" devices do, the pixel data of every module
    (``image.data``, or ``data.adc`` for JUNGFRAU) is stacked on a new first
    axis ``module``; modules missing from the train (or without frames) are
    filled with 0 (integers) or NaN (floats) and marked False in
    ``modulesPresent``.  The stacked source also has ``modules`` (module
    numbers), ``sources`` and the pulse/cell/train IDs of the first module
    present.  The module numbering, presence, checks and fill are those of
    :func:`xfeldata.detectors.plan.plan_train_modules`, as for
    ``stack_detector_data``.

    Raises
    ------
    ValueError
        If the modules present differ in shape or dtype, or a module number is
        out of range for the detector.

    Examples
    --------
    >>> from xfeldata.bridge import Simulator
    >>> data, meta = Simulator("AGIPD", modules=[0, 2], frames=2, slow=False).train(10)
    >>> data, meta = append_detector_modules(data, meta)
    >>> sorted(data), data["SPB_DET_AGIPD1M-1/CAL/APPEND"]["image.data"].shape
    (['SPB_DET_AGIPD1M-1/CAL/APPEND'], (16, 2, 2, 512, 128))
    """
    groups = group_detector_sources(data)
    if not groups:
        return data, metadata
    data, metadata = dict(data), dict(metadata)
    for device, by_module in groups.items():
        kind = detector_kind_of_device(device)
        keys = [kind.data_key] if kind else ["image.data", "data.adc"]
        key = next((k for k in keys for s in by_module.values()
                    if isinstance(data[s].get(k), np.ndarray)), None)
        if key is None:
            continue
        values = {m: (s, v if isinstance(v := data[s].get(key), np.ndarray) else None)
                  for m, s in by_module.items()}
        placed = plan_train_modules(device, kind, values, key)
        first_src = by_module[placed.numbers[min(placed.arrays)]] if placed.arrays \
            else by_module[min(by_module)]
        first = data[first_src]
        name = f"{device}/CAL/APPEND"
        out = {key: placed.stack(axis=0), "modules": np.array(placed.numbers, dtype=np.int64),
               "modulesPresent": placed.present.tolist(),
               "sources": [by_module.get(m, "") for m in placed.numbers]}
        out.update({k: first[k] for k in _ID_KEYS if k in first})
        meta = dict(metadata.get(first_src, {}))
        meta["source"] = name
        for source in by_module.values():
            data.pop(source)
            metadata.pop(source, None)
        data[name] = out
        metadata[name] = meta
    return data, metadata


class Streamer:
    """Handle of a :func:`serve` call running in the background.

    Attributes
    ----------
    server : Server
        The server (``endpoint``, ``sent``, ``dropped``).
    fed : int
        Trains handed to the server so far.
    unstackable : int
        Trains not sent with ``stack_detector=True`` because their modules could
        not be stacked (frame counts or dtypes differing between modules; each
        logged as a warning naming the train), where a run's ``detector()``
        marks the frames a module lacks in ``present``.

    Examples
    --------
    >>> from xfeldata.bridge import Client, Simulator, serve
    >>> sim = Simulator("AGIPD", modules=[0], frames=2, slow=False)
    >>> with serve(sim, background=True) as handle:
    ...     with Client(handle.endpoint, timeout=5) as client:
    ...         data, meta = client.next()
    >>> list(data)
    ['SPB_DET_AGIPD1M-1/DET/0CH0:xtdf']
    """

    def __init__(self, server: Server, trains: Callable[[], Iterator[tuple[dict, dict]]],
                 rate: float | None, loop: bool, ntrains: int | None, stack_detector: bool) -> None:
        self.server = server
        self.fed = 0
        self.unstackable = 0
        self.error: BaseException | None = None
        self._trains = trains
        self._rate = rate
        self._loop = loop
        self._ntrains = ntrains
        self._stack = stack_detector
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-serve", daemon=True)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def start(self) -> Streamer:
        self.server.start()
        self._thread.start()
        return self

    def _feed_all(self) -> None:
        self._due = time.monotonic()  # when the next train may go; never catches up in a burst
        while not self._stop.is_set():
            fed_before = self.fed
            # Close the trains' generator here, in this thread, also when stopped: the
            # file objects it holds must not be torn down later in another thread or at
            # interpreter exit (h5py's global lock can then block forever).
            with closing(self._trains()) as trains:
                if self._feed_trains(trains):
                    return
            if not self._loop or self.fed == fed_before:
                return

    def _feed_trains(self, trains: Iterator[tuple[dict, dict]]) -> bool:
        """Feed one pass over the trains; True if the stream must end."""
        due = self._due
        for data, metadata in trains:
            if self._stop.is_set() or (self._ntrains is not None and self.fed >= self._ntrains):
                return True
            if self._stack:
                try:
                    data, metadata = append_detector_modules(data, metadata)
                except ValueError as exc:  # one train's modules differ: that train, not the stream
                    self.unstackable += 1
                    log.warning("serve: train %s not sent: its modules cannot be stacked (%s)",
                                train_id_of(metadata), exc)
                    continue
            if self._rate:
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return True
                due = self._due = max(due, time.monotonic()) + 1 / self._rate
            self.server.feed(data, metadata)
            self.fed += 1
        return False

    def _run(self) -> None:
        try:
            self._feed_all()
            if not self._stop.is_set():
                while not self._stop.is_set() and not self.server.drain(timeout=0.1):
                    pass
        except ServerClosed:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self.server.stop(linger=0 if self._stop.is_set() else 1)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the stream to end; True if it ended.  Re-raises an error of the stream."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop streaming now and close the server."""
        self._stop.set()
        self.server._stopping.set()  # wake a feed() blocked by its policy
        self._thread.join()
        self.server.stop()

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(source: Any, endpoint: str | int = "tcp://127.0.0.1:0", *, sock: str = "REP",
          protocol: str = "2.2", policy: str = "wait", maxlen: int = 10, rate: float | None = None,
          loop: bool = False, sources: str | None = None, keys: str | None = None,
          stack_detector: bool = False, ntrains: int | None = None,
          background: bool = False) -> int | Streamer:
    """Stream trains to Karabo bridge clients.

    Parameters
    ----------
    source
        A :class:`~xfeldata.bridge.Simulator`, a Run (anything with
        ``trains()`` yielding ``(train_id, {source: {key: value}})`` and
        ``select(source_glob, key_glob)``), or any iterable of trains, either
        ``(data, metadata)`` or ``(train_id, data)`` pairs.
    endpoint, sock, protocol, policy, maxlen
        As for :class:`Server`; the default binds a free port on 127.0.0.1.
    rate
        Trains per second at most; None sends as fast as clients take them.
    loop
        Start again at the end (the source must be re-iterable, not an iterator).
    sources, keys
        Globs selecting the sources and keys to send.
    stack_detector
        Replace detector module sources by one stacked source per detector
        (see :func:`append_detector_modules`).
    ntrains
        Stop after this many trains.
    background
        Return a :class:`Streamer` at once (with ``endpoint``, ``stop()``,
        ``join()``) instead of blocking.

    Returns
    -------
    int or Streamer
        Trains sent (blocking) or the background handle.  A blocking call
        returns on Ctrl-C, after closing the socket.

    Examples
    --------
    >>> from xfeldata.bridge import Simulator, serve
    >>> serve(Simulator("LPD", ntrains=100), 4545, rate=10)   # doctest: +SKIP
    >>> handle = serve(Simulator("LPD", modules=[0], frames=2, slow=False), background=True)
    >>> handle.endpoint.startswith("tcp://127.0.0.1:")
    True
    >>> handle.stop()
    """
    if loop and iter(source) is source and not _is_run(source):
        raise ValueError("loop=True needs a re-iterable source (a list, Run or Simulator), "
                         "not a one-shot iterator")
    server = Server(endpoint, sock=sock, protocol=protocol, policy=policy, maxlen=maxlen)
    streamer = Streamer(server, lambda: _iter_trains(source, sources, keys), rate=rate,
                        loop=loop, ntrains=ntrains, stack_detector=stack_detector)
    streamer.start()
    if background:
        return streamer
    try:
        streamer.join()
    except KeyboardInterrupt:
        streamer.stop()
    return server.sent
