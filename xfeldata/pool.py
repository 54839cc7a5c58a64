"""New numpy arrays in the memory of earlier ones that nothing uses any more.

Used by the live buffer's numpy detector arrays (``LiveBuffer.detector(dask=False)``)
and by the outputs of analysis functions computed whole (:mod:`xfeldata.into`).
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

__all__ = ["ArrayPool"]


class ArrayPool:
    """New numpy arrays in memory of earlier ones that nothing uses any more.

    A fresh array of 128 MiB is mapped by the kernel page by page as it is
    first written, which takes about as long as copying into it.
    :meth:`empty` returns an array in the memory of a pooled block that no
    array (view) uses any more, else in a new block.  Every view of a block
    holds a reference to it (numpy points views at the array owning the
    memory), so a block is free exactly when the pool holds its only
    reference (CPython reference counts).

    Parameters
    ----------
    keep
        Blocks kept for reuse: memory held is at most ``keep`` of the
        largest arrays asked for.

    Examples
    --------
    >>> pool = ArrayPool()
    >>> a = pool.empty((4, 3), np.uint16)
    >>> b = pool.empty((4, 3), np.uint16)   # a is in use: another block
    >>> np.shares_memory(a, b)
    False
    >>> del a
    >>> c = pool.empty((2, 6), np.uint16)   # the same bytes: a's memory again
    >>> c.shape, c.flags.writeable
    ((2, 6), True)
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._blocks: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reused = 0

    def _free(self, i: int) -> bool:
        # the list's reference and getrefcount's argument: no array uses it
        return sys.getrefcount(self._blocks[i]) <= 2

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if sys.implementation.name != "cpython" or nbytes == 0:
            return np.empty(shape, dtype)
        with self._lock:
            for i in range(len(self._blocks)):
                if self._blocks[i].nbytes == nbytes and self._free(i):
                    self.reused += 1
                    return self._blocks[i].view(dtype).reshape(shape)
            block = np.empty(nbytes, np.uint8)
            if len(self._blocks) >= self.keep:  # replace a free block, else do not pool
                free = [i for i in range(len(self._blocks)) if self._free(i)]
                if not free:
                    return block.view(dtype).reshape(shape)
                del self._blocks[free[0]]
            self._blocks.append(block)
            return block.view(dtype).reshape(shape)
