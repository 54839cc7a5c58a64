"""Indexing the files of a run, through the index cache.

An unreadable file among many is skipped with a warning naming it, unless
``strict`` asks for an error.

Examples
--------
>>> indexes = index_files(["r0001/RAW-R0001-DA01-S00000.h5"])      # doctest: +SKIP
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ..errors import FileFormatError
from .cache import cache_enabled, index_files_cached
from .index import FileIndex
from .parallel import read_file_indexes
from .progress import tqdm

PathLike = str | os.PathLike


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while many small objects are made.

    Indexing (or loading the cache of) a run creates tens of thousands of dicts,
    tuples and arrays, none of them in reference cycles; the collector's passes
    over every object of a session with xarray, dask and pandas imported took
    longer than the work itself (open again 76 -> 27 ms in a fresh interpreter).
    Nested uses leave the collector as they found it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def index_files(paths: Iterable[PathLike], strict: bool = False,
                progress: bool | None = None, cache: bool = True) -> list[FileIndex]:
    """Index files (through the cache), skipping unreadable ones with a warning.

    Parameters
    ----------
    paths
        Run files.
    strict
        Raise :class:`~xfeldata.errors.FileFormatError` for an unreadable file
        instead of warning and skipping it.
    progress
        Show a progress bar; by default only on a terminal and for many files.
    cache
        Use and fill the persistent index cache (:mod:`xfeldata.files.cache`).
    """
    paths = [os.fspath(p) for p in paths]
    if progress is None:
        progress = len(paths) > 20 and sys.stderr.isatty()
    # Not in threads: h5py serialises every HDF5 call (73 files: 0.61 s on one thread,
    # 1.2 s on eight); many files are shared with worker processes (files.parallel).
    if cache and cache_enabled():
        outcomes = index_files_cached(paths, progress=progress)
    else:
        bar = tqdm(total=len(paths), desc="Indexing files", unit="file") if progress else None
        outcomes = read_file_indexes(paths, on_done=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
    return checked_outcomes(outcomes, strict, stacklevel=3)


def checked_outcomes(outcomes: list[FileIndex | FileFormatError], strict: bool,
                     stacklevel: int = 2) -> list[FileIndex]:
    """The file indexes among indexing outcomes; unreadable files are skipped with
    a warning each, or, with ``strict`` or if none is readable, raise.

    Raises
    ------
    FileFormatError
        Naming the unreadable file(s).
    """
    results = [o for o in outcomes if not isinstance(o, FileFormatError)]
    failures = [o for o in outcomes if isinstance(o, FileFormatError)]
    if failures and (strict or not results):
        if len(failures) == 1:
            raise failures[0]
        raise FileFormatError(failures[0].path, f"{failures[0].problem} (and {len(failures) - 1} "
                              "more unreadable files: " + ", ".join(f.path for f in failures[1:]) + ")")
    for exc in failures:
        warnings.warn(f"skipping unreadable file {exc}", stacklevel=stacklevel + 1)
    return results
