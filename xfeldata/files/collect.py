"""Indexing the files of a run: in parallel threads, through the index cache.

An unreadable file among many is skipped with a warning naming it, unless
``strict`` asks for an error.

Examples
--------
>>> indexes = index_files(["r0001/RAW-R0001-DA01-S00000.h5"])      # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from ..errors import FileFormatError
from .cache import cached_file_index
from .index import FileIndex

PathLike = str | os.PathLike


def index_files(paths: Iterable[PathLike], strict: bool = False,
                progress: bool | None = None, cache: bool = True) -> list[FileIndex]:
    """Index files in parallel threads, skipping unreadable ones with a warning.

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
    results: list[FileIndex] = []
    failures: list[FileFormatError] = []

    def index_one(path: str) -> FileIndex | FileFormatError:
        try:
            return cached_file_index(path, use_cache=cache)
        except FileFormatError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(paths)))) as pool:
        for result in tqdm(pool.map(index_one, paths), total=len(paths), disable=not progress,
                           desc="Indexing files", unit="file"):
            (failures if isinstance(result, FileFormatError) else results).append(result)
    if failures and (strict or not results):
        if len(failures) == 1:
            raise failures[0]
        raise FileFormatError(failures[0].path, f"{failures[0].problem} (and {len(failures) - 1} "
                              "more unreadable files: " + ", ".join(f.path for f in failures[1:]) + ")")
    for exc in failures:
        warnings.warn(f"skipping unreadable file {exc}", stacklevel=3)
    return results
