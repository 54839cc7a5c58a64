"""Indexing many files at once: the calling process and worker processes share them.

A worker is a fresh interpreter (``python -m xfeldata.files.parallel``), not a
fork: forking a process whose threads (dask's, a user's) may hold HDF5's or
h5py's locks can deadlock the child, and a fresh interpreter does not import
the caller's ``__main__`` either.  Starting one costs about 0.2 s (importing
numpy and h5py), as much as indexing some 40 files, so workers start only when
at least :data:`MIN_FILES` files are to be indexed; the calling process indexes
files from the front of the queue meanwhile, so a worker that starts slowly
never makes indexing slower than one process alone by more than sharing the
cores.  Files go out in chunks of :data:`CHUNK`; results (pickled
:class:`~xfeldata.files.index.FileIndex` es, or the problem of an unreadable
file) come back one per file, so a worker that dies, hangs (no result for
:data:`TIMEOUT` seconds) or raises is reported naming the file it was
indexing (:class:`~xfeldata.errors.IndexWorkerError`).  Workers are always
shut down (killed if need be) before :func:`read_file_indexes` returns.

``XFELDATA_INDEX_WORKERS=0`` (or ``workers=0``) indexes in the calling process
only; ``XFELDATA_INDEX_WORKERS=N`` uses N workers whatever the number of files.

Examples
--------
>>> read_file_indexes([])
[]
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import FileFormatError, IndexWorkerError
from .index import FileIndex, read_file_index
from .pool import CORES

WORKERS_ENV = "XFELDATA_INDEX_WORKERS"
#: Fewest files to index for workers to start (2 cores: neutral at 72 files, 2.2x at 288 and 720).
MIN_FILES = 96
#: Files handed to a worker at a time.
CHUNK = 4
#: Seconds without a result from a busy worker before it is killed and the file named.
TIMEOUT = 120.0
_LEN = struct.Struct("<Q")

Outcome = FileIndex | FileFormatError


def worker_count(n_files: int, workers: int | None = None) -> int:
    """How many worker processes to start for indexing ``n_files`` files.

    ``workers`` (or ``$XFELDATA_INDEX_WORKERS``) overrides the default: one fewer
    than the usable cores (the calling process indexes too), none below
    :data:`MIN_FILES` files.  Never more than there are chunks for besides the
    caller's own.

    >>> worker_count(10, 0), worker_count(10_000, 3)
    (0, 3)
    """
    if workers is None and os.environ.get(WORKERS_ENV, "").strip():
        try:
            workers = int(os.environ[WORKERS_ENV])
        except ValueError:
            raise ValueError(f"${WORKERS_ENV} must be a whole number of worker processes "
                             f"(0 turns them off), not {os.environ[WORKERS_ENV]!r}") from None
    if workers is None:
        if n_files < MIN_FILES:
            return 0
        workers = CORES - 1
    chunks = -(-n_files // CHUNK)
    return max(0, min(workers, chunks - 1))


def read_file_indexes(paths: list[str], workers: int | None = None,
                      on_done: Callable[[], Any] | None = None) -> list[Outcome]:
    """Index files, in worker processes too when there are many (see the module docs).

    Parameters
    ----------
    paths
        Files to index.
    workers
        Worker processes; None: :func:`worker_count`'s choice, 0: none.
    on_done
        Called once per file indexed (a progress bar's ``update``).

    Returns
    -------
    list
        Per path, in order: its :class:`~xfeldata.files.index.FileIndex`, or the
        :class:`~xfeldata.errors.FileFormatError` indexing it raised; the same
        as :func:`~xfeldata.files.index.read_file_index` gives one by one.

    Raises
    ------
    IndexWorkerError
        A worker died, timed out or raised something else than FileFormatError,
        naming the file it was indexing.
    """
    n = worker_count(len(paths), workers)
    if n == 0:
        return [_index_one(p, on_done) for p in paths]
    return _Shared(paths, on_done).run(n)


def _index_one(path: str, on_done: Callable[[], Any] | None) -> Outcome:
    try:
        out: Outcome = read_file_index(path)
    except FileFormatError as exc:
        out = exc
    if on_done is not None:
        on_done()
    return out


class _Shared:
    """Chunks of files taken by the calling process and by one thread per worker."""

    def __init__(self, paths: list[str], on_done: Callable[[], Any] | None):
        self.paths = paths
        self.chunks = deque(paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK))
        self.by_path: dict[str, Outcome] = {}
        self.lock = threading.Lock()
        self.failure: IndexWorkerError | None = None
        self.on_done = on_done

    def take(self) -> list[str] | None:
        with self.lock:
            if self.failure is not None or not self.chunks:
                return None
            return self.chunks.popleft()

    def done(self, path: str, outcome: Outcome) -> None:
        with self.lock:
            self.by_path[path] = outcome
            if self.on_done is not None:
                self.on_done()

    def run(self, n_workers: int) -> list[Outcome]:
        procs: list[subprocess.Popen] = []
        threads: list[threading.Thread] = []
        try:
            for _ in range(n_workers):
                proc = _start_worker()
                procs.append(proc)
                thread = threading.Thread(target=self._serve, args=(proc,), daemon=True,
                                          name="xfeldata-index-worker")
                thread.start()
                threads.append(thread)
            while (chunk := self.take()) is not None:
                for path in chunk:
                    self.done(path, _index_one(path, None))
            for thread in threads:
                thread.join()
        finally:
            for proc in procs:
                _stop_worker(proc)
        if self.failure is not None:
            raise self.failure
        return [self.by_path[p] for p in self.paths]

    def _fail(self, path: str, problem: str) -> None:
        with self.lock:
            if self.failure is None:
                self.failure = IndexWorkerError(path, problem)

    def _serve(self, proc: subprocess.Popen) -> None:
        path = "?"
        try:
            while (chunk := self.take()) is not None:
                _send(proc.stdin, chunk)
                for path in chunk:
                    kind, value = _receive(proc.stdout.fileno(), TIMEOUT)
                    if kind == "index":
                        self.done(path, value)
                    elif kind == "error":
                        self.done(path, FileFormatError(path, value))
                    else:
                        self._fail(path, f"indexing it in a worker process raised {value}")
                        return
        except TimeoutError:
            proc.kill()  # hung: no point in asking it to stop
            proc.wait()
            self._fail(path, f"no index from the worker process after {TIMEOUT:g} s (killed)")
        except (EOFError, OSError) as exc:
            proc.poll()
            self._fail(path, f"the worker process indexing it ended (exit code {proc.returncode}; {exc})")
        except Exception as exc:  # noqa: BLE001 - any other failure names the file too
            self._fail(path, f"indexing it in a worker process failed ({type(exc).__name__}: {exc})")


def _start_worker() -> subprocess.Popen:
    """A fresh interpreter importing this copy of xfeldata first."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.Popen([sys.executable, "-m", "xfeldata.files.parallel"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)


def _stop_worker(proc: subprocess.Popen) -> None:
    """Ask a worker to stop; kill it if it does not within a few seconds."""
    try:
        if proc.poll() is None:
            _send(proc.stdin, None)
            proc.stdin.close()
            proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def _send(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    parts, left = [], n
    while left:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
        part = os.read(fd, left)
        if not part:
            raise EOFError("no more output")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _receive(fd: int, timeout: float | None = None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def _worker() -> None:
    """Index the chunks of paths sent on stdin; one ``(kind, value)`` per file on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    sys.stdout = sys.stderr  # nothing else may write into the results
    while (chunk := _receive(0)) is not None:
        for path in chunk:
            try:
                item: tuple[str, Any] = ("index", read_file_index(path))
            except FileFormatError as exc:
                item = ("error", exc.problem)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, naming the file
                item = ("raise", f"{type(exc).__name__}: {exc}")
            _send(out, item)


if __name__ == "__main__":
    _worker()
