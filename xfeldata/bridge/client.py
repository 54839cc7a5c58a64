"""Karabo bridge clients: :class:`Client` and the seed-talk style :class:`KaraboBridge`.

Examples
--------
>>> from xfeldata.bridge import Client
>>> with Client("tcp://127.0.0.1:4545", timeout=5) as client:   # doctest: +SKIP
...     data, metadata = client.next()
"""

from __future__ import annotations

import uuid
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .buffers import keep_freed_memory
from .protocol import ProtocolError, decode
from .sockets import DEFAULT_MAX_MESSAGE, limit_frames, recv_message

__all__ = ["Client", "KaraboBridge"]

_SOCKETS = {"REQ": zmq.REQ, "SUB": zmq.SUB, "PULL": zmq.PULL}


class Client:
    """Receive trains from a Karabo bridge server.

    Parameters
    ----------
    endpoint
        ZeroMQ address of the server, e.g. ``"tcp://host:4545"`` or ``"ipc:///tmp/b"``.
    sock
        ``"REQ"`` (ask for each train, default), ``"SUB"`` (receive a copy of
        every train published) or ``"PULL"`` (share pushed trains with other clients).
    ser
        ``"msgpack"`` (default).  ``"pickle"`` also accepts pickled one-frame
        trains, which runs code chosen by the server: only for trusted servers.
    timeout
        Seconds :meth:`next` waits before raising :class:`TimeoutError`; None
        waits forever.
    context
        A ``zmq.Context`` to use; by default the client makes its own, and
        terminates it in :meth:`close` once its sockets are closed.
    max_bytes
        Largest message accepted (default :data:`~xfeldata.bridge.sockets.DEFAULT_MAX_MESSAGE`,
        4 GiB).  A single frame over it makes ZeroMQ drop the connection
        (``MAXMSGSIZE``; ZeroMQ reconnects); a message over it in several
        frames is discarded frame by frame and raises
        :class:`~xfeldata.bridge.ProtocolError`.

    Notes
    -----
    Like the published ``karabo_bridge.Client`` the socket has a high-water
    mark of 1 and LINGER 0.  A REQ client whose request timed out keeps
    waiting for that reply in the next call (a train that comes late is
    delivered, not lost), and asks again on a fresh socket only when the
    connection the request went out on was lost (a server that stopped or
    restarted).  A malformed message raises
    :class:`~xfeldata.bridge.ProtocolError` naming the endpoint, and the
    client stays usable.  Closing never blocks, nor does a client that is
    garbage-collected unclosed (its socket is closed with LINGER 0).

    Making a client tunes glibc's allocator for the process so that the
    memory of received messages is reused rather than mapped afresh for each
    one (:func:`~xfeldata.bridge.buffers.keep_freed_memory`; about half the
    CPU time of a large train on loopback; ``XFELDATA_KEEP_BUFFERS=0`` turns
    it off).

    Examples
    --------
    >>> client = Client("tcp://127.0.0.1:4545", timeout=2)   # doctest: +SKIP
    >>> for data, metadata in client:                        # doctest: +SKIP
    ...     print(sorted(data))
    """

    def __init__(self, endpoint: str, sock: str = "REQ", ser: str = "msgpack",
                 timeout: float | None = None, context: zmq.Context | None = None,
                 max_bytes: int = DEFAULT_MAX_MESSAGE) -> None:
        if sock not in _SOCKETS:
            raise ValueError(f"unsupported socket type {sock!r}; use one of {sorted(_SOCKETS)}")
        if ser not in ("msgpack", "pickle"):
            raise ValueError(f"unknown serialisation {ser!r} (msgpack or pickle)")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if "://" not in endpoint:  # zmq would say only "Invalid argument"
            raise ValueError(f"endpoint {endpoint!r} has no transport: did you mean 'tcp://{endpoint}'?")
        self.endpoint = endpoint
        self.sock = sock
        self.ser = ser
        self.timeout = timeout
        self.max_bytes = int(max_bytes)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._waiting = False  # REQ: a request is out and its reply not yet received
        self._largest = 0  # bytes of the largest message received
        keep_freed_memory(0)
        self._connect()

    def _connect(self) -> None:
        socket = self._context.socket(_SOCKETS[self.sock])
        socket.setsockopt(zmq.LINGER, 0)
        socket.set_hwm(1)
        limit_frames(socket, self.max_bytes)
        if self.sock == "SUB":
            socket.setsockopt(zmq.SUBSCRIBE, b"")
        if self.timeout is not None:
            socket.setsockopt(zmq.RCVTIMEO, max(int(self.timeout * 1000), 0))
        # Tells when the connection is lost: a REQ request with it, and ZeroMQ does not
        # reconnect after dropping a peer that sent a frame over MAXMSGSIZE.
        # (A name of its own: pyzmq's default is made from the file descriptor, which
        # a socket closed a moment ago may still hold.)
        self._monitor = socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED, addr=f"inproc://xfeldata-client-monitor-{uuid.uuid4().hex}")
        try:
            socket.connect(self.endpoint)
        except BaseException:
            self._socket = socket
            self._close_sockets()
            raise
        self._socket = socket
        self._waiting = False

    def _close_sockets(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _reset(self) -> None:
        """Drop the socket and connect a fresh one (after the connection was lost)."""
        self._close_sockets()
        self._connect()

    def _connection_lost(self) -> bool:
        """Whether the REQ socket lost a connection since the last check."""
        lost = False
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            lost = lost or event["event"] == zmq.EVENT_DISCONNECTED
        return lost

    def recv_frames(self) -> list[zmq.Frame]:
        """Receive one raw message (list of ``zmq.Frame``) without decoding it.

        A REQ client whose request timed out keeps it: the next call waits
        for that reply again (a late train is not lost).  Only if the
        connection was lost meanwhile does it reset the socket and ask again
        (a restarted server answers); other clients reset and reconnect then
        too.

        Raises
        ------
        TimeoutError
            If no message arrived within ``timeout``.
        ProtocolError
            The message is larger than ``max_bytes`` (it is discarded).
        """
        if self._socket is None:
            raise RuntimeError("the client is closed")
        if self.sock == "REQ":
            if self._waiting and self._connection_lost():
                self._reset()  # the request went to a server that is gone: ask again
            if not self._waiting:
                self._connection_lost()  # forget losses before this request
                self._socket.send(b"next")
                self._waiting = True
        try:
            frames = recv_message(self._socket, self.max_bytes, self.endpoint)
        except zmq.Again:
            if self._connection_lost():
                self._reset()  # reconnect; a REQ client asks again in the next call
            raise TimeoutError(f"no data from {self.endpoint} within {self.timeout} s") from None
        except ProtocolError:
            self._waiting = False
            raise
        self._waiting = False
        nbytes = sum(len(f) for f in frames)
        if nbytes > self._largest:
            self._largest = nbytes
            keep_freed_memory(nbytes)
        return frames

    def next(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Receive the next train.

        Returns
        -------
        data, metadata
            ``{source: {key: value}}`` and ``{source: metadata dict}``.

        Raises
        ------
        TimeoutError
            No train within ``timeout`` seconds; the client stays usable.
        ProtocolError
            The message was malformed (the text names the endpoint); the
            client stays usable.
        """
        frames = self.recv_frames()
        try:
            return decode(frames, ser=self.ser)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.endpoint}: {exc}") from None

    def close(self) -> None:
        """Close the socket at once (LINGER 0), then the context if the client made it."""
        self._close_sockets()
        if self._own_context and not self._context.closed:
            self._context.term()  # nothing left to wait for

    def __del__(self) -> None:
        # Never block in a finalizer: close with LINGER 0, never terminate a context.
        try:
            self._close_sockets()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._socket is None

    def __iter__(self) -> Client:
        return self

    def __next__(self) -> tuple[dict, dict]:
        return self.next()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.sock} {self.endpoint} ({state})>"


class KaraboBridge(Client):
    """The 2018 client interface: ``next()`` returns one dict per train.

    ``KaraboBridge(endpoint).next()`` returns ``{source: {key: value, ...,
    "metadata": {...}}}``, as in the seed talk's demo.  Parameters are those
    of :class:`Client`.

    Examples
    --------
    >>> kb = KaraboBridge("tcp://127.0.0.1:4545")            # doctest: +SKIP
    >>> train = kb.next()                                     # doctest: +SKIP
    >>> train["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]["metadata"]["timestamp.tid"]  # doctest: +SKIP
    """

    def next(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        """Receive the next train as ``{source: {key: value, "metadata": {...}}}``."""
        data, metadata = super().next()
        for source, props in data.items():
            props["metadata"] = metadata.get(source, {})
        return data

    def __next__(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        return self.next()
