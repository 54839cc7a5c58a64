"""A bounded, per-process cache of read-only h5py file handles.

Chunk tasks open files where they run (on a thread, in another process or on a
dask worker); h5py objects never travel in a task graph.  The cache keeps the
most recently used files open and closes the least recently used one when full.
After a fork the child starts with an empty cache.

Examples
--------
>>> handles.get("RAW-R0001-DA01-S00000.h5")["INDEX/trainId"].shape   # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import h5py

#: How many files one process keeps open at most.
MAX_OPEN_FILES = 128
#: HDF5 chunk cache per dataset: large enough for a detector chunk, so reads that
#: do not align with chunks (and are not read raw by files.direct) decode it once.
CHUNK_CACHE_BYTES = 16 * 2**20


class FileHandleCache:
    """Least-recently-used cache of open, read-only h5py files.

    Parameters
    ----------
    maxsize
        The most files kept open.
    """

    def __init__(self, maxsize: int = MAX_OPEN_FILES):
        self.maxsize = maxsize
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def get(self, path: str) -> h5py.File:
        """An open, read-only handle of ``path``.

        Raises
        ------
        OSError
            (``FileNotFoundError`` included) naming the file if it cannot be opened.
        """
        with self._lock:
            if self._pid != os.getpid():  # forked: handles belong to the parent
                self._files = OrderedDict()
                self._pid = os.getpid()
            f = self._files.get(path)
            if f is not None and f.id.valid:
                self._files.move_to_end(path)
                return f
            try:
                f = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: run file vanished since the run was opened") from None
            except OSError as exc:
                raise OSError(f"{path}: run file cannot be read any more ({exc})") from None
            self._files[path] = f
            while len(self._files) > self.maxsize:
                _, old = self._files.popitem(last=False)
                old.close()
            return f

    def forget(self, path: str) -> None:
        """Close and drop one file (e.g. after it failed)."""
        with self._lock:
            f = self._files.pop(path, None)
            if f is not None:
                f.close()

    def clear(self) -> None:
        """Close every cached file."""
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def __len__(self) -> int:
        return len(self._files)


#: The cache used by xfeldata's readers in this process.
handles = FileHandleCache()
