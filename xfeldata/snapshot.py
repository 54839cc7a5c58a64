"""Opening a run again without combining its files' indexes: the run's state in the index cache.

Combining the file indexes of a run (:class:`~xfeldata.run.RunFiles`: the train
axis, the catalogue of sources, one train map per index group) costs more than
loading them.  :func:`run_files` keeps the result (:meth:`RunFiles.state`) in the
run directory's index cache (:mod:`xfeldata.files.cache`) next to the files'
entries, one per set of files and ``inc_suspect_trains``, together with the
size, mtime and inode of every file.  Opening again then takes a directory
listing, one ``stat`` per file and one read of the cache; each file's own index
is made from the cache only when something needs it (a source's keys, reading).
If any file's stamp differs, or the state cannot be used, the files are
indexed through their cache entries as usual and the state is stored anew.

Examples
--------
>>> files = run_files(["r0001/RAW-R0001-DA01-S00000.h5"])        # doctest: +SKIP
>>> files.train_ids                                               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from .files.cache import Bundle, cache_enabled, file_index_of, index_through, read_bundle, write_bundle
from .files.collect import checked_outcomes, index_files
from .files.index import FileIndex
from .files.progress import tqdm
from .run import RunFiles

#: How many run states one directory's cache keeps (the most recently stored).
MAX_STATES = 8
_PREFIX = "run-state."


class CachedFiles(Sequence[FileIndex]):
    """The file indexes of a run, each made from its cache entry when first used."""

    def __init__(self, bundle: Bundle, paths: Sequence[str]):
        self._bundle, self._paths = bundle, list(paths)
        self._made: list[FileIndex | None] = [None] * len(self._paths)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        fi = self._made[i]
        if fi is None:
            fi = self._made[i] = file_index_of(self._bundle[self._paths[i]])
        return fi

    def __len__(self) -> int:
        return len(self._paths)


def _state_name(paths: Sequence[str], inc_suspect_trains: bool) -> str:
    digest = hashlib.sha1("\n".join([str(inc_suspect_trains), *paths]).encode("utf-8", "surrogateescape"))
    return _PREFIX + digest.hexdigest()[:16]


def _stamps(paths: Sequence[str]) -> list[list[Any]] | None:
    """``[size, mtime, inode]`` of every file, or None if one cannot be stat'ed."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        out.append([st.st_size, st.st_mtime, st.st_ino])
    return out


def _from_state(bundle: Bundle, name: str, paths: list[str], stamps: list[list[Any]] | None,
                inc_suspect_trains: bool) -> RunFiles | None:
    """The run from a stored state that matches every file's stamp, else None."""
    stored = bundle.extras.get(name)
    if stored is None or stamps is None:
        return None
    header, arrays = stored
    try:
        if header["paths"] != paths or header["stamps"] != stamps or \
                header["inc_suspect_trains"] != inc_suspect_trains:
            return None
        if bundle.stamps_of(paths) != stamps:  # the entries are of these files too
            return None
        return RunFiles.from_state(header, arrays, CachedFiles(bundle, paths), stacklevel=5)
    except Exception as exc:  # noqa: BLE001 - a damaged state: combine the files again
        warnings.warn(f"{paths[0] if paths else '?'}: damaged run state in the index cache ignored "
                      f"({type(exc).__name__}: {str(exc)[:200]})", stacklevel=4)
        return None


def run_files(paths: Iterable[str | os.PathLike], *, inc_suspect_trains: bool = True, strict: bool = False,
              progress: bool | None = None, cache: bool = True) -> RunFiles:
    """The files of a run indexed and combined, through the index cache.

    Parameters as :func:`xfeldata.files.collect.index_files`; files of several
    directories (or with the cache off) are indexed and combined as there.

    Raises
    ------
    FileFormatError
        As :func:`~xfeldata.files.collect.index_files`.
    """
    given = [os.fspath(p) for p in paths]
    dirs = {os.path.dirname(p) for p in given}
    if not (cache and cache_enabled()) or len(dirs) != 1 or len(set(given)) != len(given):
        return RunFiles(index_files(given, strict=strict, progress=progress, cache=cache), inc_suspect_trains,
                        stacklevel=5)
    given_dir = dirs.pop()
    directory = os.path.abspath(given_dir)
    cut = len(given_dir) + 1 if given_dir else 0
    paths = sorted(os.path.join(directory, p[cut:]) for p in given)  # as os.path.abspath, once
    bundle = read_bundle(directory)
    name, stamps = _state_name(paths, inc_suspect_trains), _stamps(paths)
    found = _from_state(bundle, name, paths, stamps, inc_suspect_trains)
    if found is not None:
        return found
    if progress is None:
        progress = len(paths) > 20 and sys.stderr.isatty()
    bar = tqdm(total=len(paths), desc="Indexing files", unit="file") if progress else None
    outcomes, changed = index_through(bundle, paths, bar)
    if bar is not None:
        bar.close()
    files = checked_outcomes([outcomes[p] for p in paths], strict, stacklevel=3)
    combined = RunFiles(files, inc_suspect_trains, stacklevel=5)
    extras = {k: v for k, v in bundle.extras.items() if k != name}
    if len(files) == len(paths) and stamps is not None and \
            all([fi.size, fi.mtime, fi.inode] == s for fi, s in zip(combined.files, stamps, strict=True)):
        header, arrays = combined.state()
        extras[name] = ({**header, "stamps": stamps}, arrays)
        states = [k for k in extras if k.startswith(_PREFIX)]
        for old in states[:-MAX_STATES]:
            del extras[old]
    write_bundle(directory, changed if changed is not None else bundle, extras)
    return combined
