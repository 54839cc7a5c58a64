"""A bounded, per-process cache of read-only h5py file handles.

Chunk tasks open files where they run (on a thread, in another process or on a
dask worker); h5py objects never travel in a task graph.  The cache keeps the
most recently used files open and closes the least recently used one when full.
A file used inside :meth:`FileHandleCache.use` is closed only once that use
ends, so its OS descriptor is never reused under a running ``pread``.  After a
fork the child starts with an empty cache.

Readers pass the :data:`FileStamp` (size, mtime, inode) the file had when it
was indexed: a file opened under a path that now holds another file, or whose
open file was truncated or rewritten, raises
:class:`~xfeldata.errors.FileChangedError` instead of being read under the old
index.

Examples
--------
>>> with handles.use("RAW-R0001-AGIPD00-S00000.h5") as opened:       # doctest: +SKIP
...     layout = opened.plain_layout("INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data")
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import h5py

from ..errors import FileChangedError
from .plain import PlainLayout, plain_layout

#: ``(size, mtime, inode)`` of a file when it was indexed (inode 0: not checked).
FileStamp = tuple[int, float, int]

#: How many files one process keeps open at most.
MAX_OPEN_FILES = 128
#: HDF5 chunk cache per dataset: large enough for a detector chunk, so reads that
#: do not align with chunks (and are not read raw by files.direct) decode it once.
CHUNK_CACHE_BYTES = 16 * 2**20


class OpenFile:
    """One cached, read-only file: the h5py handle, its OS descriptor and the
    plain layouts of its datasets (found once)."""

    def __init__(self, file: h5py.File):
        self.file = file
        self.users = 0
        self.evicted = False
        self._layouts: dict[str, PlainLayout | None] = {}
        self._memo: dict[Hashable, Any] = {}
        self._userblock: int | None = None
        try:  # HDF5's own descriptor: same file, same lifetime as the handle
            self.fd: int | None = file.id.get_vfd_handle() if file.driver == "sec2" else None
        except (AttributeError, ValueError, RuntimeError):
            self.fd = None

    @property
    def userblock(self) -> int:
        """The size of the file's user block (read once)."""
        if self._userblock is None:
            self._userblock = self.file.id.get_create_plist().get_userblock()
        return self._userblock

    def plain_layout(self, dataset: str) -> PlainLayout | None:
        """The :func:`~xfeldata.files.plain.plain_layout` of one dataset, found once."""
        if dataset not in self._layouts:
            self._layouts[dataset] = plain_layout(self.file[dataset])
        return self._layouts[dataset]

    def memo(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """What ``make()`` returns, made once for this open file (readers of its
        datasets, with what they learnt of where the rows are): it goes with the
        handle when the file is closed or found changed."""
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = make()
        return found

    def close(self) -> None:
        self.file.close()


class FileHandleCache:
    """Least-recently-used cache of open, read-only h5py files.

    Parameters
    ----------
    maxsize
        The most files kept in the cache; files evicted while in use stay open
        until their use ends, so more may be open for a moment.
    """

    def __init__(self, maxsize: int = MAX_OPEN_FILES):
        self.maxsize = maxsize
        self._files: OrderedDict[str, OpenFile] = OrderedDict()
        self._lock = threading.Lock()
        _after_fork_in_child(self)

    def _forget_parent(self) -> None:
        """In a forked child: start empty, with a fresh lock (another thread of the
        parent may have held it; the handles belong to the parent)."""
        self._lock = threading.Lock()
        self._files = OrderedDict()

    def _open(self, path: str, stamp: FileStamp | None = None) -> OpenFile:
        """The cached entry of ``path``, opened if needed (call with the lock held).

        With ``stamp``, the file must still be the one indexed: checked with a
        ``stat`` of the path when opening, an ``fstat`` of the open file after.
        """
        entry = self._files.get(path)
        if entry is not None and entry.file.id.valid:
            if stamp is not None and entry.fd is not None:
                try:
                    _check_stamp(path, os.fstat(entry.fd), stamp)
                except FileChangedError:  # HDF5's view of the file is stale: never reuse it
                    self._retire(self._files.pop(path))
                    raise
            self._files.move_to_end(path)
            return entry
        if stamp is not None:
            try:
                _check_stamp(path, os.stat(path), stamp)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: run file vanished since the run was opened") from None
        try:
            entry = OpenFile(h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: run file vanished since the run was opened") from None
        except OSError as exc:
            raise OSError(f"{path}: run file cannot be read any more ({exc})") from None
        if stamp is not None and entry.fd is not None:  # replaced between stat and open?
            try:
                _check_stamp(path, os.fstat(entry.fd), stamp)
            except FileChangedError:
                entry.close()
                raise
        self._files[path] = entry
        while len(self._files) > self.maxsize:
            _, old = self._files.popitem(last=False)
            self._retire(old)
        return entry

    @staticmethod
    def _retire(entry: OpenFile) -> None:
        """Close a dropped entry now, or when its last use ends."""
        entry.evicted = True
        if entry.users == 0:
            entry.close()

    @contextmanager
    def use(self, path: str, stamp: FileStamp | None = None) -> Iterator[OpenFile]:
        """The open file of ``path``, kept open until the ``with`` block ends.

        Parameters
        ----------
        stamp
            The file's size, mtime and inode when it was indexed; if given, the
            file must still match it.

        Raises
        ------
        FileChangedError
            If the file does not match ``stamp``.
        OSError
            (``FileNotFoundError`` included) naming the file if it cannot be opened.
        """
        with self._lock:
            entry = self._open(path, stamp)
            entry.users += 1
        try:
            yield entry
        finally:
            with self._lock:
                entry.users -= 1
                if entry.evicted and entry.users == 0:
                    entry.close()

    def forget(self, path: str) -> None:
        """Close and drop one file (e.g. after it failed)."""
        with self._lock:
            entry = self._files.pop(path, None)
            if entry is not None:
                self._retire(entry)

    def clear(self) -> None:
        """Close every cached file (those in use when their use ends)."""
        with self._lock:
            for entry in self._files.values():
                self._retire(entry)
            self._files.clear()

    def __len__(self) -> int:
        return len(self._files)


def _check_stamp(path: str, st: os.stat_result, stamp: FileStamp) -> None:
    """Raise :class:`~xfeldata.errors.FileChangedError` if ``st`` does not match ``stamp``."""
    size, mtime, inode = stamp
    changes = []
    if inode and st.st_ino != inode:
        changes.append("another file now has its name")
    if st.st_size != size:
        changes.append(f"size {st.st_size} bytes, indexed at {size}")
    if st.st_mtime != mtime:
        changes.append("modified")
    if changes:
        raise FileChangedError(path, "; ".join(changes))


def _after_fork_in_child(cache: FileHandleCache) -> None:
    """Make a forked child's copy of ``cache`` start empty (holding it weakly)."""
    ref = weakref.ref(cache)

    def reset() -> None:
        alive = ref()
        if alive is not None:
            alive._forget_parent()

    os.register_at_fork(after_in_child=reset)


#: The cache used by xfeldata's readers in this process.
handles = FileHandleCache()
