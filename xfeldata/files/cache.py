"""A persistent cache of file indexes, so a run opens again without reading its files.

The :class:`~xfeldata.files.index.FileIndex` of every file of a directory is kept
in one ``.npz`` per directory (the arrays of all files in one blob plus a JSON
description; loaded with ``allow_pickle=False``, so a cache written by someone
else cannot run code).  Entries are keyed on each file's absolute path and
checked against its size and modification time, so a changed file is indexed
again.  The cache is written atomically (a temporary file renamed into place).

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
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import FileFormatError
from .index import FileIndex, IndexGroup, KeyInfo, SourceInfo, read_file_index

#: Bump when the stored layout changes; older entries are then ignored.
CACHE_VERSION = 1
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
        return value.decode("utf-8", "replace")
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


def _to_arrays(fi: FileIndex) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {"train_ids": fi.train_ids, "valid": fi.valid, "suspect": fi.suspect}
    if fi.timestamps is not None:
        arrays["timestamps"] = fi.timestamps
    sources = []
    for si in fi.sources.values():
        groups = []
        for group, ig in si.groups.items():
            n = len(arrays)
            arrays[f"first_{n}"], arrays[f"count_{n}"] = ig.first, ig.count
            groups.append([group, n])
        keys = [{
            "key": k.key, "group": k.group, "path": k.path, "dtype": _dtype_descr(k.dtype),
            "shape": list(k.shape), "chunks": list(k.chunks) if k.chunks else None,
            "compression": k.compression, "compression_opts": _jsonable(k.compression_opts),
            "shuffle": k.shuffle, "attrs": _jsonable(k.attrs),
        } for k in si.keys.values()]
        sources.append({"name": si.name, "category": si.category, "groups": groups, "keys": keys})
    meta = {
        "cache_version": CACHE_VERSION, "path": fi.path, "size": fi.size, "mtime": fi.mtime,
        "format_version": fi.format_version, "metadata": _jsonable(fi.metadata),
        "sources": sources, "aliases": fi.aliases, "problems": list(fi.problems),
    }
    return arrays, meta


def _from_arrays(arrays: Any, meta: dict[str, Any]) -> FileIndex:
    sources = {}
    for s in meta["sources"]:
        groups = {g: IndexGroup(arrays[f"first_{n}"], arrays[f"count_{n}"]) for g, n in s["groups"]}
        keys = {}
        for k in s["keys"]:
            opts = k["compression_opts"]
            keys[k["key"]] = KeyInfo(
                source=s["name"], key=k["key"], group=k["group"], path=k["path"],
                dtype=_descr_dtype(k["dtype"]), shape=tuple(k["shape"]),
                chunks=tuple(k["chunks"]) if k["chunks"] else None, compression=k["compression"],
                compression_opts=tuple(opts) if isinstance(opts, list) else opts,
                shuffle=k["shuffle"], attrs={a: _from_json(v) for a, v in k["attrs"].items()},
            )
        sources[s["name"]] = SourceInfo(s["name"], s["category"], groups, keys)
    return FileIndex(
        path=meta["path"], size=meta["size"], mtime=meta["mtime"],
        format_version=meta["format_version"], metadata=meta["metadata"],
        train_ids=arrays["train_ids"], timestamps=arrays["timestamps"] if "timestamps" in arrays else None,
        valid=arrays["valid"], suspect=arrays["suspect"], sources=sources,
        aliases=meta["aliases"], problems=tuple(meta["problems"]),
    )


def _bundle_paths(directory: str) -> list[Path]:
    digest = hashlib.sha1(directory.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return [Path(directory) / RUN_DIR_CACHE, user_cache_dir() / f"{Path(directory).name}.{digest}.npz"]


Entry = tuple[dict[str, Any], dict[str, np.ndarray]]


def read_bundle(directory: str) -> dict[str, Entry]:
    """The cached entries of a directory's files, ``{path: (meta, arrays)}`` (not yet validated)."""
    for candidate in _bundle_paths(directory):
        try:
            with _LOAD_LOCK, np.load(candidate, allow_pickle=False) as npz:
                meta = json.loads(bytes(npz["__meta__"]).decode())
                blob = npz["blob"]
            if meta.get("cache_version") != CACHE_VERSION:
                continue
            entries = {}
            for entry in meta["files"]:
                arrays = {}
                for name, (offset, descr, shape) in entry.pop("arrays").items():
                    dtype = _descr_dtype(descr)
                    count = int(np.prod(shape, dtype=np.int64))
                    arrays[name] = np.frombuffer(blob, dtype, count, offset).reshape(shape)
                entries[entry["path"]] = (entry, arrays)
            return entries
        except (OSError, ValueError, KeyError, json.JSONDecodeError, TypeError, SystemError):
            continue
    return {}


def write_bundle(directory: str, entries: dict[str, Entry]) -> Path | None:
    """Store a directory's entries atomically; returns where, or None if nowhere is writable."""
    parts, files, offset = [], [], 0
    for meta, arrays in entries.values():
        layout = {}
        for name, arr in arrays.items():
            raw = np.ascontiguousarray(arr).tobytes()
            layout[name] = [offset, _dtype_descr(arr.dtype), list(arr.shape)]
            parts.append(raw)
            offset += len(raw)
            pad = -offset % 8  # keep every array aligned
            parts.append(b"\0" * pad)
            offset += pad
        files.append({**meta, "arrays": layout})
    blob = np.frombuffer(b"".join(parts), np.uint8)
    meta_bytes = np.frombuffer(json.dumps({"cache_version": CACHE_VERSION, "files": files}).encode(),
                               np.uint8)
    for candidate in _bundle_paths(directory):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=candidate.parent, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as out:
                    np.savez(out, __meta__=meta_bytes, blob=blob)
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


def index_files_cached(paths: list[str], progress: bool = False) -> list[FileIndex | FileFormatError]:
    """Index files through the cache of their directories; errors are returned, not raised.

    Files whose cache entry matches their size and mtime are not opened; the
    others are indexed and their directory's cache is rewritten once.
    """
    paths = [os.path.abspath(p) for p in paths]
    results: dict[str, FileIndex | FileFormatError] = {}
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    bar = tqdm(total=len(paths), disable=not progress, desc="Indexing files", unit="file")
    for directory, dir_paths in by_dir.items():
        entries = read_bundle(directory)
        changed = False
        for path in dir_paths:
            st, entry = _stat(path), entries.get(path)
            if st is not None and entry and (entry[0]["size"], entry[0]["mtime"]) == (st.st_size, st.st_mtime):
                results[path] = _from_arrays(entry[1], entry[0])
            else:
                try:
                    fi = read_file_index(path)
                except FileFormatError as exc:
                    results[path] = exc
                else:
                    results[path] = fi
                    if st is not None and (fi.size, fi.mtime) == (st.st_size, st.st_mtime):
                        meta_arrays = _to_arrays(fi)
                        entries[path] = (meta_arrays[1], meta_arrays[0])
                        changed = True
            bar.update()
        if changed:
            write_bundle(directory, entries)
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
