"""A persistent cache of file indexes, so a run opens again without reading its files.

The :class:`~xfeldata.files.index.FileIndex` of every file of a directory is kept
in one ``.npz`` per directory: each kind of array (train IDs, flags, index
``first``/``count``, ...) concatenated over all files, a compact JSON header
(per file: path, size, mtime, metadata, sources and their index groups), and the
keys' metadata as JSON per file, decoded only when a source's keys are used.  It
is loaded with ``allow_pickle=False``, so a cache written by someone else cannot
run code.  Entries are keyed on each file's absolute path and checked against its
size, modification time and inode number, so a changed or replaced file is
indexed again.  A file rewritten in place with the same size and the same mtime
is a known limit of stat-based keys: open it with ``cache=False``.  A damaged
cache is ignored with a warning and rewritten.  The cache is
written atomically (a temporary file renamed into place).

Where: ``<run directory>/.xfeldata/index.npz`` when the run directory is
writable, else a per-user directory (``$XFELDATA_CACHE_DIR`` or
``~/.cache/xfeldata/index``).  Both are read.  ``XFELDATA_INDEX_CACHE=0`` turns
the cache off.

Examples
--------
>>> idx = cached_file_index("r0001/RAW-R0001-DA01-S00000.h5")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileFormatError
from .index import DamagedEntries, FileIndex, IndexGroup, KeyInfo, LazyKeys, SourceInfo, read_file_index
from .progress import tqdm
from .strings import decode_str

#: Bump when the stored layout changes; older entries are then ignored.
CACHE_VERSION = 5
CACHE_ENV = "XFELDATA_CACHE_DIR"
CACHE_SWITCH_ENV = "XFELDATA_INDEX_CACHE"
RUN_DIR_CACHE = Path(".xfeldata") / "index.npz"
# np.load parses npy headers with ast.literal_eval, which is not thread-safe on
# some CPython 3.11 releases ("AST constructor recursion depth mismatch"); the
# index is read from several threads, so loads take turns.
_LOAD_LOCK = threading.Lock()


def cache_enabled() -> bool:
    """False if ``XFELDATA_INDEX_CACHE`` is ``0``, ``no`` or ``off``."""
    return os.environ.get(CACHE_SWITCH_ENV, "1").lower() not in ("0", "no", "off", "false")


def user_cache_dir() -> Path:
    """The per-user cache directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xfeldata" / "index"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": np.lib.format.dtype_to_descr(value.dtype)} \
            if value.dtype.kind not in "OV" else [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return decode_str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__array__" in value:
        return np.array(value["__array__"], dtype=np.lib.format.descr_to_dtype(value["dtype"]))
    return value


def _dtype_descr(dtype: np.dtype) -> Any:
    if dtype.kind == "O":  # h5py's variable-length strings: metadata is not kept
        return "|O"
    return np.lib.format.dtype_to_descr(dtype)


def _descr_dtype(descr: Any) -> np.dtype:
    if isinstance(descr, list):
        descr = [tuple(field) if isinstance(field, list) else field for field in descr]
        descr = [(f[0], _descr_dtype(f[1]), *f[2:]) if isinstance(f[1], list) else f for f in descr]
    return np.lib.format.descr_to_dtype(descr)


@dataclass(frozen=True)
class Entry:
    """One file's cache entry.

    Attributes
    ----------
    header
        JSON-able: path, size, mtime, format version, metadata, aliases, problems,
        the number of train positions ``n``, whether there are timestamps, and the
        sources as ``[name, category, [index group, ...]]``.
    arrays
        ``train_ids``, ``valid``, ``suspect``, ``timestamps`` (empty if none), and
        ``first``/``count`` of every index group in header order, shape ``(groups, n)``.
    keys_json
        The sources' keys as JSON (a list per source), decoded only when used.
    """

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    keys_json: bytes


#: The arrays of an entry, each stored concatenated over the files of a bundle.
_ARRAY_DTYPES = {"train_ids": np.uint64, "valid": np.bool_, "suspect": np.bool_,
                 "timestamps": np.uint64, "first": np.uint64, "count": np.uint64}


def _key_json(k: KeyInfo) -> dict[str, Any]:
    return {
        "key": k.key, "group": k.group, "path": k.path, "dtype": _dtype_descr(k.dtype),
        "shape": list(k.shape), "chunks": list(k.chunks) if k.chunks else None,
        "compression": k.compression, "compression_opts": _jsonable(k.compression_opts),
        "shuffle": k.shuffle, "attrs": _jsonable(k.attrs),
    }


def _key_info(source: str, k: dict[str, Any]) -> KeyInfo:
    opts = k["compression_opts"]
    return KeyInfo(
        source=source, key=k["key"], group=k["group"], path=k["path"],
        dtype=_descr_dtype(k["dtype"]), shape=tuple(k["shape"]),
        chunks=tuple(k["chunks"]) if k["chunks"] else None, compression=k["compression"],
        compression_opts=tuple(opts) if isinstance(opts, list) else opts,
        shuffle=k["shuffle"], attrs={a: _from_json(v) for a, v in k["attrs"].items()},
    )


def _auxiliary_json(si: SourceInfo) -> list[Any]:
    """An auxiliary source (few, small) whole in the JSON header: name, section, index, keys."""
    groups = {g: [ig.first.tolist(), ig.count.tolist()] for g, ig in si.groups.items()}
    return [si.name, si.category, groups, [_key_json(k) for k in si.keys.values()]]


def _auxiliary_info(item: list[Any]) -> SourceInfo:
    name, section, groups, keys = item
    return SourceInfo(name, section,
                      {g: IndexGroup(np.array(f, np.uint64), np.array(c, np.uint64)) for g, (f, c) in groups.items()},
                      {k["key"]: _key_info(name, k) for k in keys})


def entry_of(fi: FileIndex) -> Entry:
    """The cache entry of a file index."""
    n = len(fi.train_ids)
    groups = [ig for si in fi.sources.values() for ig in si.groups.values()]
    header = {
        "path": fi.path, "size": fi.size, "mtime": fi.mtime, "inode": fi.inode,
        "format_version": fi.format_version,
        "damaged": [[d.source, d.group, d.train_ids.tolist(), d.message] for d in fi.damaged],
        "metadata": _jsonable(fi.metadata), "aliases": fi.aliases, "problems": list(fi.problems),
        "n": n, "timestamps": fi.timestamps is not None,
        "sources": [[si.name, si.category, list(si.groups)] for si in fi.sources.values()],
        "auxiliary": [_auxiliary_json(si) for si in fi.auxiliary],
    }
    arrays = {
        "train_ids": fi.train_ids, "valid": fi.valid, "suspect": fi.suspect,
        "timestamps": fi.timestamps if fi.timestamps is not None else np.zeros(0, np.uint64),
        "first": np.array([ig.first for ig in groups], np.uint64).reshape(len(groups), n),
        "count": np.array([ig.count for ig in groups], np.uint64).reshape(len(groups), n),
    }
    keys = [[_key_json(k) for k in si.keys.values()] for si in fi.sources.values()]
    return Entry(header, arrays, json.dumps(keys).encode())


class _FileKeys:
    """The keys of one cached file, decoded from JSON the first time a source's are used."""

    def __init__(self, keys_json: bytes, sources: list[str]):
        self._json = keys_json
        self._sources = sources
        self._decoded: dict[str, dict[str, KeyInfo]] | None = None

    def source(self, name: str) -> dict[str, KeyInfo]:
        """The keys of one source."""
        if self._decoded is None:
            per_source = json.loads(self._json)
            self._decoded = {s: {k["key"]: _key_info(s, k) for k in keys}
                             for s, keys in zip(self._sources, per_source, strict=True)}
        return self._decoded[name]


def file_index_of(entry: Entry) -> FileIndex:
    """The file index of a cache entry; its keys are decoded on first use."""
    h, a = entry.header, entry.arrays
    file_keys = _FileKeys(entry.keys_json, [name for name, _, _ in h["sources"]])
    sources, row = {}, 0
    for name, category, group_names in h["sources"]:
        groups = {}
        for group in group_names:
            groups[group] = IndexGroup(a["first"][row], a["count"][row])
            row += 1
        sources[name] = SourceInfo(name, category, groups, LazyKeys(partial(file_keys.source, name)))
    return FileIndex(
        path=h["path"], size=h["size"], mtime=h["mtime"], format_version=h["format_version"],
        metadata=h["metadata"], train_ids=a["train_ids"],
        timestamps=a["timestamps"] if h["timestamps"] else None, valid=a["valid"],
        suspect=a["suspect"], sources=sources, aliases=h["aliases"], problems=tuple(h["problems"]),
        inode=h["inode"], damaged=tuple(DamagedEntries(source, group, np.array(tids, np.uint64), message)
                                        for source, group, tids, message in h["damaged"]),
        auxiliary=tuple(_auxiliary_info(item) for item in h["auxiliary"]),
    )


def _bundle_paths(directory: str) -> list[Path]:
    digest = hashlib.sha1(directory.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return [Path(directory) / RUN_DIR_CACHE, user_cache_dir() / f"{Path(directory).name}.{digest}.npz"]


def _split_bundle(header: dict[str, Any], stored: dict[str, np.ndarray]) -> dict[str, Entry]:
    """Cut a bundle's concatenated arrays into per-file entries (views, no copies).

    Raises
    ------
    ValueError
        If the arrays do not have the lengths the header says.
    """
    entries, at = {}, dict.fromkeys(stored, 0)
    for h, keys_at in zip(header["files"], header["keys_at"], strict=True):
        n, rows = h["n"], sum(len(groups) for _, _, groups in h["sources"])
        sizes = {"train_ids": n, "valid": n, "suspect": n, "timestamps": n if h["timestamps"] else 0,
                 "first": rows * n, "count": rows * n}
        arrays = {}
        for name, size in sizes.items():
            arrays[name] = stored[name][at[name]:at[name] + size]
            at[name] += size
        arrays["first"] = arrays["first"].reshape(rows, n)
        arrays["count"] = arrays["count"].reshape(rows, n)
        keys_json = stored["keys"][keys_at[0]:keys_at[0] + keys_at[1]].tobytes()
        entries[h["path"]] = Entry(h, arrays, keys_json)
    at["keys"] = len(stored["keys"])
    if any(at[name] != len(stored[name]) for name in stored):
        raise ValueError("index cache arrays do not match its header")
    return entries


def read_bundle(directory: str) -> dict[str, Entry]:
    """The cached entries of a directory's files, ``{path: Entry}`` (not yet validated).

    A cache that cannot be read (truncated, emptied, bit-flipped, a hostile
    header) is ignored with a warning naming it; the files are then indexed
    again and the cache is rewritten.
    """
    for candidate in _bundle_paths(directory):
        try:
            entries = _load_bundle(candidate)
        except FileNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001 - whatever the damage, the files are still there
            warnings.warn(f"{candidate}: damaged index cache ignored, indexing the files again "
                          f"({type(exc).__name__}: {str(exc)[:200]})", stacklevel=4)
            continue
        if entries is not None:
            return entries
    return {}


def _load_bundle(candidate: Path) -> dict[str, Entry] | None:
    """The entries of one cache file; None if it is of another cache version.

    Raises
    ------
    FileNotFoundError
        If there is no such cache.
    Exception
        Of many kinds if it is damaged.
    """
    with _LOAD_LOCK, np.load(candidate, allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes())
        if not isinstance(header, dict) or header.get("cache_version") != CACHE_VERSION:
            return None
        blob = npz["blob"]
    stored = {name: np.frombuffer(blob, dtype, count, offset)
              for name, (dtype, offset, count) in header["arrays"].items()}
    expected = {**_ARRAY_DTYPES, "keys": np.uint8}
    if stored.keys() != expected.keys() or any(
            stored[name].dtype != dtype for name, dtype in expected.items()):
        raise ValueError("unexpected arrays in the index cache")
    return _split_bundle(header, stored)


def _concatenate(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, list]]:
    """One byte blob holding 1-d arrays, each 8-byte aligned, and where each one is:
    ``{name: [dtype descr, offset, count]}`` (one npz member loads much faster than many)."""
    parts, layout, offset = [], {}, 0
    for name, arr in arrays.items():
        layout[name] = [arr.dtype.str, offset, len(arr)]
        parts += [arr.tobytes(), b"\0" * (-arr.nbytes % 8)]
        offset += arr.nbytes + (-arr.nbytes % 8)
    return np.frombuffer(b"".join(parts), np.uint8), layout


def write_bundle(directory: str, entries: dict[str, Entry]) -> Path | None:
    """Store a directory's entries atomically; returns where, or None if nowhere is writable."""
    values = list(entries.values())
    keys_at, offset = [], 0
    for e in values:
        keys_at.append([offset, len(e.keys_json)])
        offset += len(e.keys_json)
    stored = {name: np.concatenate([e.arrays[name].ravel() for e in values] or [np.zeros(0)])
              .astype(dtype, copy=False) for name, dtype in _ARRAY_DTYPES.items()}
    stored["keys"] = np.frombuffer(b"".join(e.keys_json for e in values), np.uint8)
    blob, layout = _concatenate(stored)
    header = {"cache_version": CACHE_VERSION, "files": [e.header for e in values],
              "keys_at": keys_at, "arrays": layout}
    for candidate in _bundle_paths(directory):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=candidate.parent, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as out:
                    np.savez(out, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                             blob=blob)
                os.chmod(tmp, 0o644)  # others who read the run may use it too
                os.replace(tmp, candidate)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return candidate
        except OSError:
            continue
    return None


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _stamp(st: os.stat_result) -> tuple[int, float, int]:
    """What a cache entry is checked against: size, modification time and inode."""
    return st.st_size, st.st_mtime, st.st_ino


def _cached_index(entry: Entry, st: os.stat_result) -> FileIndex | None:
    """The file index of an entry that matches the file's stat, else None.

    A damaged entry (fields of the wrong kind) counts as not matching, with a warning.
    """
    h = entry.header
    try:
        if (h["size"], h["mtime"], h["inode"]) != _stamp(st):
            return None
        return file_index_of(entry)
    except Exception as exc:  # noqa: BLE001 - a damaged entry: index the file again
        warnings.warn(f"{h.get('path') if isinstance(h, dict) else '?'}: damaged index cache entry "
                      f"ignored ({type(exc).__name__}: {str(exc)[:200]})", stacklevel=4)
        return None


def index_files_cached(paths: list[str], progress: bool = False) -> list[FileIndex | FileFormatError]:
    """Index files through the cache of their directories; errors are returned, not raised.

    Files whose cache entry matches their size, mtime and inode are not opened;
    the others are indexed and their directory's cache is rewritten once.  A
    file rewritten with the same size and mtime in place (same inode) is not
    noticed: pass ``use_cache=False`` (``open_run(..., cache=False)``) then.
    """
    paths = [os.path.abspath(p) for p in paths]
    results: dict[str, FileIndex | FileFormatError] = {}
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    # No bar object at all unless asked: tqdm's lock imports multiprocessing (ms at open)
    bar = tqdm(total=len(paths), desc="Indexing files", unit="file") if progress else None
    for directory, dir_paths in by_dir.items():
        entries = read_bundle(directory)
        changed = False
        for path in dir_paths:
            st, entry = _stat(path), entries.get(path)
            cached = _cached_index(entry, st) if st is not None and entry else None
            if cached is not None:
                results[path] = cached
            else:
                try:
                    fi = read_file_index(path)
                except FileFormatError as exc:
                    results[path] = exc
                else:
                    results[path] = fi
                    if st is not None and (fi.size, fi.mtime, fi.inode) == _stamp(st):
                        entries[path] = entry_of(fi)
                        changed = True
            if bar is not None:
                bar.update()
        if changed:
            write_bundle(directory, entries)
    if bar is not None:
        bar.close()
    return [results[p] for p in paths]


def cached_file_index(path: str | os.PathLike, use_cache: bool = True) -> FileIndex:
    """Index one file, from its directory's cache when it is up to date.

    Raises
    ------
    FileFormatError
        As :func:`~xfeldata.files.index.read_file_index`.
    """
    path = os.path.abspath(os.fspath(path))
    if not (use_cache and cache_enabled()):
        return read_file_index(path)
    result = index_files_cached([path])[0]
    if isinstance(result, FileFormatError):
        raise result
    return result
