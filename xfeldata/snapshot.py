"""Opening a run again without combining its files' indexes: the run's state in the index cache.

Combining the file indexes of a run (:class:`~xfeldata.run.RunFiles`: the train
axis, the catalogue of sources, one train map per index group) costs more than
loading them.  :func:`run_files` keeps the result (:meth:`RunFiles.state`) in a
small bundle of its own next to the run directory's index cache
(:mod:`xfeldata.files.cache`, bundle ``runs``), one per set of files and
``inc_suspect_trains``, together with the size, mtime and inode of every file.
Opening again then takes a directory listing, one ``stat`` per file and one
read of that small file; the files' index cache is read, and each file's own
index made from it, only when something needs one (a source's keys, reading),
and its entry must carry the same stamp (else the file is indexed again, and a
file changed since the run was opened is an error).  If any file's stamp
differs at open, or the state cannot be used, the files are indexed through
their cache entries as usual and the state is stored anew.

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

from .errors import FileFormatError
from .files.cache import Bundle, cache_enabled, file_index_of, index_through, read_bundle, write_bundle
from .files.collect import checked_outcomes, index_files
from .files.index import FileIndex
from .files.progress import tqdm
from .run import RunFiles

#: How many run states one directory's cache keeps (the most recently stored).
MAX_STATES = 8
_PREFIX = "run-state."
#: The bundle (:func:`~xfeldata.files.cache.read_bundle` ``kind``) holding the run states.
STATES = "runs"


class CachedFiles(Sequence[FileIndex]):
    """The file indexes of a run, each made when first used from its entry in the
    directory's index cache (read then), which must carry the file's stamp as the run
    was opened; else the files are indexed through that cache (once, refreshing it).

    Raises
    ------
    FileFormatError
        On first use of a file changed since the run was opened (its index would
        not match the run's).
    """

    def __init__(self, directory: str, paths: Sequence[str], stamps: Sequence[Sequence[Any]],
                 bundle: Bundle | None = None):
        self._directory, self._paths, self._stamps = directory, list(paths), [list(s) for s in stamps]
        self._bundle = bundle
        self._indexed: dict[str, FileIndex | FileFormatError] | None = None
        self._made: list[FileIndex | None] = [None] * len(self._paths)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        fi = self._made[i]
        if fi is None:
            fi = self._made[i] = self._make(i)
        return fi

    def _make(self, i: int) -> FileIndex:
        if self._bundle is None:
            self._bundle = read_bundle(self._directory)
        path, stamp = self._paths[i], self._stamps[i]
        if self._indexed is None and self._bundle.stamps_of([path]) == [stamp]:
            try:
                return file_index_of(self._bundle[path])
            except Exception as exc:  # noqa: BLE001 - a damaged entry: index the files again
                warnings.warn(f"{path}: damaged index cache entry ignored "
                              f"({type(exc).__name__}: {str(exc)[:200]})", stacklevel=4)
        if self._indexed is None:  # the cache is missing, damaged or stale: index through it once
            self._indexed, changed = index_through(self._bundle, self._paths)
            if changed is not None:
                write_bundle(self._directory, changed, _without_states(self._bundle.extras))
        fi = self._indexed[path]
        if isinstance(fi, FileFormatError):
            raise fi
        if [fi.size, fi.mtime, fi.inode] != stamp:
            raise FileFormatError(path, "changed since the run was opened; open the run again")
        return fi

    def __len__(self) -> int:
        return len(self._paths)


def _without_states(extras: dict[str, Any]) -> dict[str, Any]:
    """Extras of the files' index cache but run states (kept there by earlier versions)."""
    return {k: v for k, v in extras.items() if not k.startswith(_PREFIX)}


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


def _from_state(states: Bundle, directory: str, name: str, paths: list[str], stamps: list[list[Any]] | None,
                inc_suspect_trains: bool) -> RunFiles | None:
    """The run from a stored state that matches every file's stamp, else None."""
    stored = states.extras.get(name)
    if stored is None or stamps is None:
        return None
    header, arrays = stored
    try:
        if header["paths"] != paths or header["stamps"] != stamps or \
                header["inc_suspect_trains"] != inc_suspect_trains:
            return None
        return RunFiles.from_state(header, arrays, CachedFiles(directory, paths, stamps), stacklevel=5)
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
    states = read_bundle(directory, STATES)
    name, stamps = _state_name(paths, inc_suspect_trains), _stamps(paths)
    found = _from_state(states, directory, name, paths, stamps, inc_suspect_trains)
    if found is not None:
        return found
    bundle = read_bundle(directory)
    if progress is None:
        progress = len(paths) > 20 and sys.stderr.isatty()
    bar = tqdm(total=len(paths), desc="Indexing files", unit="file") if progress else None
    outcomes, changed = index_through(bundle, paths, bar)
    if bar is not None:
        bar.close()
    files = checked_outcomes([outcomes[p] for p in paths], strict, stacklevel=3)
    combined = RunFiles(files, inc_suspect_trains, stacklevel=5)
    if changed is not None:
        write_bundle(directory, changed, _without_states(bundle.extras))
    if len(files) == len(paths) and stamps is not None and \
            all([fi.size, fi.mtime, fi.inode] == s for fi, s in zip(combined.files, stamps, strict=True)):
        header, arrays = combined.state()
        extras = {k: v for k, v in states.extras.items() if k != name and k.startswith(_PREFIX)}
        extras[name] = ({**header, "stamps": stamps}, arrays)
        for old in list(extras)[:-MAX_STATES]:
            del extras[old]
        write_bundle(directory, {}, extras, STATES)
    return combined
