"""A persistent cache of file indexes, so a run opens again without reading its files.

The :class:`~xfeldata.files.index.FileIndex` of every file of a directory is kept
in one file per directory: each kind of array (train IDs, flags, index
``first``/``count``, ...) concatenated over all files, a compact JSON header
(per file: path, size, mtime, metadata if it was read, sources and their index groups), and the
keys' metadata as JSON per file, decoded only when a source's keys are used.
Layers above may keep more in it (``extras``: a JSON header and 1-d arrays
each, e.g. a run's combined index, :mod:`xfeldata.snapshot`).  The file is
read with one read call: magic bytes, a CRC-32 of the rest, the JSON header
and the arrays' bytes; nothing in it is executable (no pickle), so a cache
written by someone else cannot run code.  Entries are keyed on each file's absolute path and checked against its
size, modification time and inode number, so a changed or replaced file is
indexed again.  A file rewritten in place with the same size and the same mtime
is a known limit of stat-based keys: open it with ``cache=False``.  A damaged
cache is ignored with a warning and rewritten.  The cache is
written atomically (a temporary file renamed into place).

Where: ``<run directory>/.xfeldata/index.bin`` when the run directory is
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
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import FileFormatError
from .index import (
    DamagedEntries,
    FileIndex,
    IndexGroup,
    KeyInfo,
    LazyKeys,
    LazyMetadata,
    SourceInfo,
    read_file_index,
)
from .parallel import read_file_indexes
from .progress import tqdm
from .strings import decode_str

#: Bump when the stored layout changes; older entries are then ignored.
CACHE_VERSION = 6
CACHE_ENV = "XFELDATA_CACHE_DIR"
CACHE_SWITCH_ENV = "XFELDATA_INDEX_CACHE"
RUN_DIR_CACHE = Path(".xfeldata") / "index.bin"
#: The first bytes of a cache file; then CRC-32 and length of the JSON header (two uint32).
_MAGIC = b"XFDINDEX"
_PREFIX = struct.Struct("<8sII")


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
    if isinstance(value, h5py.Empty):  # an attribute with a null dataspace
        return {"__empty__": _dtype_descr(value.dtype)}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__array__" in value:
        return np.array(value["__array__"], dtype=np.lib.format.descr_to_dtype(value["dtype"]))
    if isinstance(value, dict) and "__empty__" in value:
        return h5py.Empty(_descr_dtype(value["__empty__"]))
    return value


@lru_cache(maxsize=256)  # a run has few distinct dtypes, and many keys of each
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
        "compression": k.compression,
        "compression_opts": _jsonable(k.compression_opts) if k.compression_opts is not None else None,
        "shuffle": k.shuffle, "attrs": _jsonable(k.attrs) if k.attrs else {},
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


def _metadata_read(metadata: Mapping[str, Any]) -> bool:
    """Whether a file's METADATA scalars are at hand (kept in the cache only then: reading
    them all costs about a tenth of indexing a file, and few callers need them)."""
    return not isinstance(metadata, LazyMetadata) or metadata.loaded


def entry_of(fi: FileIndex) -> Entry:
    """The cache entry of a file index."""
    n = len(fi.train_ids)
    groups = [ig for si in fi.sources.values() for ig in si.groups.values()]
    header = {
        "path": fi.path, "size": fi.size, "mtime": fi.mtime, "inode": fi.inode,
        "format_version": fi.format_version,
        "damaged": [[d.source, d.group, d.train_ids.tolist(), d.message] for d in fi.damaged],
        "metadata": _jsonable(dict(fi.metadata)) if _metadata_read(fi.metadata) else None,
        "aliases": fi.aliases, "problems": list(fi.problems),
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
        metadata=h["metadata"] if h["metadata"] is not None else LazyMetadata(h["path"]), train_ids=a["train_ids"],
        timestamps=a["timestamps"] if h["timestamps"] else None, valid=a["valid"],
        suspect=a["suspect"], sources=sources, aliases=h["aliases"], problems=tuple(h["problems"]),
        inode=h["inode"], damaged=tuple(DamagedEntries(source, group, np.array(tids, np.uint64), message)
                                        for source, group, tids, message in h["damaged"]),
        auxiliary=tuple(_auxiliary_info(item) for item in h["auxiliary"]),
    )


def _bundle_paths(directory: str, kind: str = "index") -> list[Path]:
    """Where the bundle ``kind`` of a directory goes: the run directory, else the user's cache."""
    digest = hashlib.sha1(directory.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    tail = "" if kind == "index" else f".{kind}"
    return [Path(directory) / RUN_DIR_CACHE.with_name(f"{kind}.bin"),
            user_cache_dir() / f"{Path(directory).name}.{digest}{tail}.bin"]


#: Per-file numbers of a bundle, one array element per file (in ``paths`` order).
_FILE_ARRAYS = {"file_n": np.int64, "file_rows": np.int64, "file_has_timestamps": np.bool_,
                "file_size": np.int64, "file_mtime": np.float64, "file_inode": np.uint64,
                "keys_offset": np.int64, "keys_length": np.int64}


class Bundle(Mapping[str, Entry]):
    """The cache of one directory: ``{path: Entry}`` (not yet validated) and the
    ``extras`` stored with them.

    Only the list of paths and the arrays' places are decoded when it is read;
    the files' JSON headers when the first entry is asked for, and each entry's
    arrays when it is.  ``extras`` maps a name to ``(header, arrays)``: JSON-able
    data and 1-d arrays that layers above keep with the entries (see
    :func:`write_bundle`).
    """

    def __init__(self, header: dict[str, Any] | None = None, blob: bytes = b""):
        header = header or {"paths": [], "arrays": {}, "extras": {}}
        self.paths: list[str] = list(header["paths"])
        self._numbers = {path: i for i, path in enumerate(self.paths)}
        self._stored = _arrays_in(blob, header["arrays"])
        self.extras: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {
            name: (extra["header"], _arrays_in(blob, extra["arrays"]))
            for name, extra in header.get("extras", {}).items()}
        expected = {**_ARRAY_DTYPES, **_FILE_ARRAYS, "keys": np.uint8, "files_json": np.uint8} \
            if self.paths else {}
        if self._stored.keys() != expected.keys() or any(
                self._stored[name].dtype != dtype for name, dtype in expected.items()):
            raise ValueError("unexpected arrays in the index cache")
        if any(len(self._stored[name]) != len(self.paths) for name in _FILE_ARRAYS if self.paths):
            raise ValueError("index cache file arrays do not match its paths")
        self._headers: list[dict[str, Any]] | None = None
        self._offsets: dict[str, np.ndarray] | None = None
        self._entries: dict[str, Entry] = {}

    def stamps_of(self, paths: list[str]) -> list[list[Any]] | None:
        """``[size, mtime, inode]`` of each path's entry as indexed; None if one has none."""
        numbers = [self._numbers.get(p) for p in paths]
        if None in numbers:
            return None
        columns = [self._stored[a][numbers].tolist() for a in ("file_size", "file_mtime", "file_inode")]
        return [list(stamp) for stamp in zip(*columns, strict=True)]

    def _prepare(self) -> None:
        """Decode the files' headers and find where each file's arrays start."""
        if self._offsets is not None:
            return
        headers = json.loads(self._stored["files_json"].tobytes()) if self.paths else []
        if not isinstance(headers, list) or len(headers) != len(self.paths):
            raise ValueError("index cache file headers do not match its paths")
        n, rows, has_ts = (self._stored[a].astype(np.int64) for a in ("file_n", "file_rows", "file_has_timestamps"))
        sizes = {"train_ids": n, "valid": n, "suspect": n, "timestamps": n * has_ts,
                 "first": rows * n, "count": rows * n}
        offsets = {}
        for name, size in sizes.items():
            ends = np.cumsum(size)
            if len(ends) and ends[-1] != len(self._stored[name]):
                raise ValueError("index cache arrays do not match its header")
            offsets[name] = ends - size
        ends = self._stored["keys_offset"] + self._stored["keys_length"]
        if len(ends) and ends.max() > len(self._stored["keys"]):
            raise ValueError("index cache keys do not match its header")
        self._headers, self._offsets = headers, {**offsets, "rows": rows, "n": n}

    def __getitem__(self, path: str) -> Entry:
        entry = self._entries.get(path)
        if entry is None:
            i = self._numbers[path]
            self._prepare()
            at, stored = self._offsets, self._stored
            n, rows = int(at["n"][i]), int(at["rows"][i])
            h = self._headers[i]
            sizes = {"train_ids": n, "valid": n, "suspect": n, "timestamps": n if h["timestamps"] else 0,
                     "first": rows * n, "count": rows * n}
            arrays = {name: stored[name][int(at[name][i]):int(at[name][i]) + size] for name, size in sizes.items()}
            arrays["first"] = arrays["first"].reshape(rows, n)
            arrays["count"] = arrays["count"].reshape(rows, n)
            k0 = int(stored["keys_offset"][i])
            keys_json = stored["keys"][k0:k0 + int(stored["keys_length"][i])].tobytes()
            entry = self._entries[path] = Entry({**h, "path": path}, arrays, keys_json)
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: object) -> bool:
        return path in self._numbers


def _arrays_in(blob: bytes, layout: dict[str, list]) -> dict[str, np.ndarray]:
    """Views of the 1-d arrays ``{name: [dtype, offset, count]}`` in a blob."""
    out = {}
    for name, (dtype, offset, count) in layout.items():
        dt = np.dtype(dtype)
        if dt.hasobject or dt.fields is not None:
            raise ValueError(f"unexpected dtype {dtype} in the index cache")
        out[name] = np.frombuffer(blob, dt, count, offset)
    return out


def read_bundle(directory: str, kind: str = "index") -> Bundle:
    """The cache of a directory's files (entries not yet validated); empty if none.

    ``kind`` picks another bundle of the same directory (one holding only
    ``extras``, such as the run states of :mod:`xfeldata.snapshot`).

    A cache that cannot be read (truncated, emptied, bit-flipped, a hostile
    header) is ignored with a warning naming it; the files are then indexed
    again and the cache is rewritten.
    """
    for candidate in _bundle_paths(directory, kind):
        try:
            bundle = _load_bundle(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except Exception as exc:  # noqa: BLE001 - whatever the damage, the files are still there
            warnings.warn(f"{candidate}: damaged index cache ignored, indexing the files again "
                          f"({type(exc).__name__}: {str(exc)[:200]})", stacklevel=4)
            continue
        if bundle is not None:
            return bundle
    return Bundle()


def _load_bundle(candidate: Path) -> Bundle | None:
    """The bundle of one cache file; None if it is of another cache version.

    Raises
    ------
    FileNotFoundError
        If there is no such cache.
    Exception
        Of many kinds if it is damaged.
    """
    with open(candidate, "rb", buffering=0) as f:
        data = f.read()
    magic, crc, header_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("not an xfeldata index cache")
    if zlib.crc32(memoryview(data)[_PREFIX.size:]) != crc:
        raise ValueError("checksum mismatch")
    header = json.loads(data[_PREFIX.size:_PREFIX.size + header_len])
    if not isinstance(header, dict) or header.get("cache_version") != CACHE_VERSION:
        return None
    start = _PREFIX.size + header_len + (-(_PREFIX.size + header_len) % 8)
    return Bundle(header, memoryview(data)[start:])


def _concatenate(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, list]]:
    """One byte blob holding 1-d arrays, each 8-byte aligned, and where each one is:
    ``{name: [dtype descr, offset, count]}`` (one read and views into it, no copies)."""
    parts, layout, offset = [], {}, 0
    for name, arr in arrays.items():
        layout[name] = [arr.dtype.str, offset, len(arr)]
        parts += [arr.tobytes(), b"\0" * (-arr.nbytes % 8)]
        offset += arr.nbytes + (-arr.nbytes % 8)
    return np.frombuffer(b"".join(parts), np.uint8), layout


def write_bundle(directory: str, entries: Mapping[str, Entry],
                 extras: Mapping[str, tuple[dict[str, Any], dict[str, np.ndarray]]] | None = None,
                 kind: str = "index") -> Path | None:
    """Store a directory's entries (and ``extras``: name -> (JSON-able header, 1-d
    arrays)) atomically as its bundle ``kind``; returns where, or None if nowhere is writable."""
    values = list(entries.values())
    stored: dict[str, np.ndarray] = {}
    if values:
        stored = {name: np.concatenate([e.arrays[name].ravel() for e in values])
                  .astype(dtype, copy=False) for name, dtype in _ARRAY_DTYPES.items()}
        stored["keys"] = np.frombuffer(b"".join(e.keys_json for e in values), np.uint8)
        headers = [{k: v for k, v in e.header.items() if k != "path"} for e in values]
        stored["files_json"] = np.frombuffer(json.dumps(headers).encode(), np.uint8)
        lengths = [len(e.keys_json) for e in values]
        per_file = {
            "file_n": [e.header["n"] for e in values],
            "file_rows": [sum(len(g) for _, _, g in e.header["sources"]) for e in values],
            "file_has_timestamps": [e.header["timestamps"] for e in values],
            "file_size": [e.header["size"] for e in values], "file_mtime": [e.header["mtime"] for e in values],
            "file_inode": [e.header["inode"] for e in values],
            "keys_offset": np.cumsum([0, *lengths[:-1]]), "keys_length": lengths}
        stored.update({name: np.asarray(per_file[name], _FILE_ARRAYS[name]) for name in _FILE_ARRAYS})
    named = dict(stored)
    for name, (_, arrays) in (extras or {}).items():
        named.update({f"{name}/{a}": np.ascontiguousarray(v).ravel() for a, v in arrays.items()})
    blob, layout = _concatenate(named)
    header = {"cache_version": CACHE_VERSION, "paths": [e.header["path"] for e in values],
              "arrays": {name: layout[name] for name in stored},
              "extras": {name: {"header": h, "arrays": {a: layout[f"{name}/{a}"] for a in arrays}}
                         for name, (h, arrays) in (extras or {}).items()}}
    head = json.dumps(header).encode()
    body = b"".join([head, b"\0" * (-(_PREFIX.size + len(head)) % 8), blob.tobytes()])
    data = _PREFIX.pack(_MAGIC, zlib.crc32(body), len(head)) + body
    for candidate in _bundle_paths(directory, kind):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=candidate.parent, prefix=".tmp-", suffix=candidate.suffix)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
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
        bundle = read_bundle(directory)
        found, changed = index_through(bundle, dir_paths, bar)
        results.update(found)
        if changed is not None:
            write_bundle(directory, changed, bundle.extras)
    if bar is not None:
        bar.close()
    return [results[p] for p in paths]


def index_through(bundle: Bundle, paths: list[str], bar: Any = None
                  ) -> tuple[dict[str, FileIndex | FileFormatError], dict[str, Entry] | None]:
    """Index files of one directory (absolute paths) through its bundle.

    Returns
    -------
    found
        Path -> file index, or the error that indexing it raised.
    changed
        The directory's entries with those of files indexed again, if any
        were (to be written with :func:`write_bundle`); else None.
    """
    found: dict[str, FileIndex | FileFormatError] = {}
    fresh: dict[str, Entry] = {}
    todo: list[tuple[str, os.stat_result | None]] = []
    for path in paths:
        st, entry = _stat(path), bundle.get(path)
        cached = _cached_index(entry, st) if st is not None and entry else None
        if cached is not None:
            found[path] = cached
            if bar is not None:
                bar.update()
        else:
            todo.append((path, st))
    outcomes = read_file_indexes([p for p, _ in todo], on_done=bar.update if bar is not None else None)
    for (path, st), fi in zip(todo, outcomes, strict=True):
        found[path] = fi
        if not isinstance(fi, FileFormatError) and st is not None and (fi.size, fi.mtime, fi.inode) == _stamp(st):
            fresh[path] = entry_of(fi)
    return found, ({**bundle, **fresh} if fresh else None)


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
