"""Karabo bridge clients: :class:`Client` and the seed-talk style :class:`KaraboBridge`.

Examples
--------
>>> from xfeldata.bridge import Client
>>> with Client("tcp://127.0.0.1:4545", timeout=5) as client:   # doctest: +SKIP
...     data, metadata = client.next()
"""

from __future__ import annotations

from typing import Any

import zmq

from .protocol import decode

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
        A ``zmq.Context`` to use; by default the client makes (and closes) its own.

    Notes
    -----
    Like the published ``karabo_bridge.Client`` the socket has a high-water
    mark of 1 and LINGER 0.  Unlike it, a REQ client whose request timed out
    resets its socket (close, reconnect) so that the next call asks again:
    a restarted server is picked up instead of waiting forever for an answer
    that will never come.  A malformed message raises
    :class:`~xfeldata.bridge.ProtocolError` and the client stays usable.

    Examples
    --------
    >>> client = Client("tcp://127.0.0.1:4545", timeout=2)   # doctest: +SKIP
    >>> for data, metadata in client:                        # doctest: +SKIP
    ...     print(sorted(data))
    """

    def __init__(self, endpoint: str, sock: str = "REQ", ser: str = "msgpack",
                 timeout: float | None = None, context: zmq.Context | None = None) -> None:
        if sock not in _SOCKETS:
            raise ValueError(f"unsupported socket type {sock!r}; use one of {sorted(_SOCKETS)}")
        if ser not in ("msgpack", "pickle"):
            raise ValueError(f"unknown serialisation {ser!r} (msgpack or pickle)")
        if "://" not in endpoint:  # zmq would say only "Invalid argument"
            raise ValueError(f"endpoint {endpoint!r} has no transport: did you mean 'tcp://{endpoint}'?")
        self.endpoint = endpoint
        self.sock = sock
        self.ser = ser
        self.timeout = timeout
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket | None = None
        self._waiting = False  # REQ: a request is out and its reply not yet received
        self._connect()

    def _connect(self) -> None:
        socket = self._context.socket(_SOCKETS[self.sock])
        socket.setsockopt(zmq.LINGER, 0)
        socket.set_hwm(1)
        if self.sock == "SUB":
            socket.setsockopt(zmq.SUBSCRIBE, b"")
        if self.timeout is not None:
            socket.setsockopt(zmq.RCVTIMEO, max(int(self.timeout * 1000), 0))
        socket.connect(self.endpoint)
        self._socket = socket
        self._waiting = False

    def _reset(self) -> None:
        """Drop the socket and connect a fresh one (REQ after a timeout)."""
        if self._socket is not None:
            self._socket.close(linger=0)
        self._connect()

    def recv_frames(self) -> list[zmq.Frame]:
        """Receive one raw message (list of ``zmq.Frame``) without decoding it.

        A REQ client whose request timed out keeps it: the next call first waits
        for that reply (a late train is not lost), and only if it still does not
        come resets the socket and asks again (a restarted server answers).

        Raises
        ------
        TimeoutError
            If no message arrived within ``timeout``.
        """
        if self._socket is None:
            raise RuntimeError("the client is closed")
        if self.sock == "REQ" and self._waiting:
            try:
                return self._receive()
            except zmq.Again:
                self._reset()  # the request went to a server that is gone: ask again
        if self.sock == "REQ":
            self._socket.send(b"next")
            self._waiting = True
        try:
            return self._receive()
        except zmq.Again:
            raise TimeoutError(f"no data from {self.endpoint} within {self.timeout} s") from None

    def _receive(self) -> list[zmq.Frame]:
        frames = self._socket.recv_multipart(copy=False)
        self._waiting = False
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
            The message was malformed; the client stays usable.
        """
        return decode(self.recv_frames(), ser=self.ser)

    def close(self) -> None:
        """Close the socket (and the context, if the client made it)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._own_context:
            self._context.term()

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
