"""Reuse the memory of received messages instead of faulting in fresh pages for each one.

ZeroMQ allocates every received frame with ``malloc`` in its I/O thread, and
the frame is freed when the last array viewing it goes.  With glibc's
defaults, frames of a few MiB come from ``mmap`` (or from a per-thread heap
that is given back to the kernel as soon as it is empty), so the next message
lands in fresh pages and the kernel zeroes and maps every 4 KiB page of it
on first touch: on loopback that costs about as much CPU as the transfer
itself (about 15 000 page faults per 64 MiB train).

:func:`keep_freed_memory` tunes glibc's allocator so that freed blocks stay
in the process and the next message reuses them:

- ``M_MMAP_THRESHOLD`` fixed at 32 MiB (glibc's largest; its dynamic
  threshold reaches the same value on its own): smaller blocks come from
  the heap;
- ``M_TOP_PAD`` 64 MiB: a per-thread heap is kept when it empties;
- ``M_TRIM_THRESHOLD`` twice the largest message seen (at least 128 MiB, at
  most 2 GiB): free memory at the top of a heap up to that size is not given back.

These are process-wide settings: freed memory up to about twice the largest
message stays mapped (reused for the next message).  Frames over 32 MiB are
still mapped afresh each time (glibc always uses ``mmap`` for them).  Nothing
happens where glibc's ``mallopt`` is missing (macOS, musl) or when the
environment variable ``XFELDATA_KEEP_BUFFERS`` is ``0``.

:class:`ArrayPool` does the same for arrays larger than that, which glibc
always maps afresh: it hands out the memory of an array again once nothing
uses it any more (used by ``LiveBuffer.detector(dask=False)``).

Examples
--------
>>> keep_freed_memory(64 * 2**20) in (True, False)   # False: not glibc, or turned off
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from ..pool import ArrayPool

__all__ = ["MMAP_THRESHOLD", "ArrayPool", "keep_freed_memory"]

#: Blocks up to this size come from the heap (glibc refuses larger thresholds).
MMAP_THRESHOLD = 32 * 2**20
_TOP_PAD = 64 * 2**20  # glibc's per-thread heaps are 64 MiB: a heap is kept when it empties
_MIN_TRIM = 128 * 2**20
_MAX_TRIM = 2**31 - 1  # mallopt takes a C int
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

_lock = threading.Lock()
_state: dict[str, object] = {"mallopt": None, "trim": 0}


def _mallopt():
    """glibc's ``mallopt``, or None."""
    if _state["mallopt"] is None:
        fn = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
                fn = libc.mallopt
                fn.argtypes = (ctypes.c_int, ctypes.c_int)
                fn.restype = ctypes.c_int
        except OSError:
            pass
        _state["mallopt"] = fn
    return _state["mallopt"] or None


def keep_freed_memory(nbytes: int) -> bool:
    """Make glibc keep freed blocks for messages of up to ``nbytes`` (process-wide).

    Called by :class:`~xfeldata.bridge.Client` when it is made (``nbytes`` 0)
    and with the size of every message larger than any before.  Cheap when
    nothing changes.

    Returns
    -------
    bool
        Whether the allocator is tuned (False: not glibc, or turned off with
        ``XFELDATA_KEEP_BUFFERS=0``).
    """
    if os.environ.get("XFELDATA_KEEP_BUFFERS", "1") == "0":
        return False
    want = min(max(2 * int(nbytes), _MIN_TRIM), _MAX_TRIM)
    if want <= _state["trim"]:
        return True
    with _lock:
        mallopt = _mallopt()
        if mallopt is None:
            return False
        if want <= _state["trim"]:
            return True
        if not _state["trim"]:
            mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            mallopt(_M_TOP_PAD, _TOP_PAD)
        mallopt(_M_TRIM_THRESHOLD, want)
        _state["trim"] = want
    return True
