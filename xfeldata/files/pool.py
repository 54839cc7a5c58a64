"""One pool of reader threads per process, shared by every read that fans out.

Reads of several blocks (one selection, or several dask tasks at once) all go
through :func:`run_all`, so a process has at most :data:`READERS` reader
threads however many dask tasks read side by side (a pool per task would
start one per task).  A call from one of the pool's own threads runs its jobs
in that thread (no waiting on the pool from inside it).  After a fork the child
makes its own pool: the parent's threads do not exist there.

Examples
--------
>>> run_all(lambda x: x * x, [1, 2, 3])
[1, 4, 9]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: The cores this process may run on.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
#: Reader threads of the shared pool: one per core.
READERS = CORES

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_inside = threading.local()


def _mark_reader() -> None:
    _inside.reader = True


def _shared() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(READERS, thread_name_prefix="xfeldata-reader",
                                       initializer=_mark_reader)
            _pool_pid = os.getpid()
        return _pool


def run_all(work: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
    """``[work(job) for job in jobs]``, on the shared reader threads when there are several.

    The first exception raised by a job is raised here (once every job has ended).
    """
    jobs = list(jobs)
    if len(jobs) < 2 or READERS < 2 or getattr(_inside, "reader", False):
        return [work(job) for job in jobs]
    futures = [_shared().submit(work, job) for job in jobs]
    errors = [f.exception() for f in futures]  # waits for every job: none still writes after we return
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]
