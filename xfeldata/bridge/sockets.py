"""Receiving from untrusted peers: bounded messages and throttled warnings.

:func:`recv_message` receives one multipart message frame by frame and
refuses (without keeping it) a message larger than a byte or frame limit;
:func:`limit_frames` sets ZeroMQ's ``MAXMSGSIZE`` so that one frame larger
than the limit disconnects its peer before it is held in memory.
:class:`Throttle` turns a flood of identical warnings into one line, then a
count at growing intervals.

Examples
--------
>>> import zmq
>>> ctx = zmq.Context.instance()
>>> a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
>>> _ = a.bind("inproc://sockets-doc"), b.connect("inproc://sockets-doc")
>>> a.send_multipart([b"x" * 10, b"y" * 10])
>>> try:
...     recv_message(b, max_bytes=15, peer="inproc://sockets-doc")
... except ProtocolError as exc:
...     print(exc)
inproc://sockets-doc: message larger than 15 bytes (20 bytes in 2 frames), discarded
>>> a.close(); b.close()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from .protocol import MAX_FRAMES, ProtocolError

__all__ = ["DEFAULT_MAX_MESSAGE", "Throttle", "limit_frames", "recv_message"]

#: Default largest message a client accepts: 4 GiB, over twice a whole
#: AGIPD 1M train of 352 raw frames (1.5 GB) stacked in one source.
DEFAULT_MAX_MESSAGE = 4 * 2**30


def limit_frames(socket: zmq.Socket, max_bytes: int) -> None:
    """Set ``MAXMSGSIZE``: ZeroMQ disconnects a peer that sends a frame over ``max_bytes``.

    Set it before ``bind``/``connect``; it applies to each frame of a message.
    """
    socket.setsockopt(zmq.MAXMSGSIZE, int(max_bytes))


def recv_message(socket: zmq.Socket, max_bytes: int, peer: str,
                 max_frames: int = MAX_FRAMES) -> list[zmq.Frame]:
    """Receive one multipart message of at most ``max_bytes`` in ``max_frames`` frames.

    The frames of a message arrive together, so only the first receive waits
    (``RCVTIMEO`` applies: ``zmq.Again`` when it passes).  A message over a
    limit is received to its end, its frames freed as they come, so that the
    socket stays usable, and then refused.

    Raises
    ------
    ProtocolError
        The message is over a limit; the text names ``peer`` and the size.
    """
    frames: list[zmq.Frame] = []
    nbytes = nframes = 0
    while True:
        frame = socket.recv(copy=False)
        nbytes += len(frame)
        nframes += 1
        if nbytes <= max_bytes and nframes <= max_frames:
            frames.append(frame)
        else:
            frames.clear()
        if not frame.more:
            break
    if nbytes > max_bytes:
        raise ProtocolError(f"{peer}: message larger than {max_bytes} bytes ({nbytes} bytes in "
                            f"{nframes} frames), discarded")
    if nframes > max_frames:
        raise ProtocolError(f"{peer}: message of {nframes} frames (at most {max_frames}), discarded")
    return frames


class Throttle:
    """Emit the first of a run of repeated warnings, then only counts, ever less often.

    Parameters
    ----------
    emit
        Called with each line to show (e.g. ``logger.warning``).
    first_interval, max_interval
        Seconds before the first count line; each later one waits twice as
        long, up to ``max_interval``.  After ``max_interval`` without a
        warning, the next one is shown at once again.
    clock
        Monotonic clock in seconds (tests pass their own).

    Examples
    --------
    >>> lines, now = [], [0.0]
    >>> warn = Throttle(lines.append, first_interval=1, clock=lambda: now[0])
    >>> for t in (0, 0.1, 0.2, 1.5):
    ...     now[0] = t
    ...     _ = warn("bad message from tcp://h:1")
    >>> lines
    ['bad message from tcp://h:1', 'bad message from tcp://h:1 (and 2 more like it in the last 1.5 s)']
    """

    def __init__(self, emit: Callable[[str], object], first_interval: float = 1.0,
                 max_interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.first_interval = first_interval
        self.max_interval = max_interval
        self.clock = clock
        self.suppressed = 0
        self._lock = threading.Lock()
        self._interval = first_interval
        self._shown_at: float | None = None
        self._last_at: float | None = None

    def __call__(self, text: str) -> bool:
        """Show ``text`` now (True) or count it for a later line (False)."""
        now = self.clock()
        with self._lock:
            if self._last_at is not None and now - self._last_at > self.max_interval:
                if self.suppressed == 0:  # a quiet spell: start afresh
                    self._shown_at, self._interval = None, self.first_interval
            self._last_at = now
            if self._shown_at is None:
                self._shown_at = now
                line = text
            elif now - self._shown_at >= self._interval:
                if self.suppressed == 0:
                    self._shown_at, self._interval = now, self.first_interval
                    line = text
                else:
                    line = (f"{text} (and {self.suppressed} more like it in the last "
                            f"{now - self._shown_at:.1f} s)")
                    self._shown_at = now
                    self._interval = min(self._interval * 2, self.max_interval)
                self.suppressed = 0
            else:
                self.suppressed += 1
                return False
        self.emit(line)
        return True
