"""A persistent cache of file indexes, so a run opens again without reading its files.

Each file's :class:`~xfeldata.files.index.FileIndex` is stored as one ``.npz``
(numpy arrays plus a JSON description; loaded with ``allow_pickle=False``, so a
cache file written by someone else cannot run code).  Entries are keyed on the
file's absolute path and checked against its size and modification time, so a
changed file is indexed again.  Entries are written atomically (a temporary file
renamed into place).

Where: ``<run directory>/.xfeldata/index/`` when the run directory is writable,
else a per-user directory (``$XFELDATA_CACHE_DIR`` or ``~/.cache/xfeldata/index``).
Both are read.  ``XFELDATA_INDEX_CACHE=0`` turns the cache off.

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

from .index import FileIndex, IndexGroup, KeyInfo, SourceInfo, read_file_index

#: Bump when the stored layout changes; older entries are then ignored.
CACHE_VERSION = 1
CACHE_ENV = "XFELDATA_CACHE_DIR"
CACHE_SWITCH_ENV = "XFELDATA_INDEX_CACHE"
RUN_DIR_CACHE = Path(".xfeldata") / "index"
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


def _entry_name(path: str) -> str:
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{Path(path).name}.{digest}.npz"


def _candidates(path: str) -> list[Path]:
    name = _entry_name(path)
    return [Path(path).parent / RUN_DIR_CACHE / name, user_cache_dir() / name]


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


def load_cached(path: str, st: os.stat_result) -> FileIndex | None:
    """The cached index of ``path`` if one matches its size and mtime, else None."""
    for candidate in _candidates(path):
        try:
            with _LOAD_LOCK, np.load(candidate, allow_pickle=False) as npz:
                meta = json.loads(bytes(npz["__meta__"]).decode())
                if (meta.get("cache_version") != CACHE_VERSION or meta["path"] != path
                        or meta["size"] != st.st_size or meta["mtime"] != st.st_mtime):
                    continue
                arrays = {name: npz[name] for name in npz.files if name != "__meta__"}
            return _from_arrays(arrays, meta)
        except (OSError, ValueError, KeyError, json.JSONDecodeError, TypeError, SystemError):
            continue
    return None


def save_cached(fi: FileIndex) -> Path | None:
    """Store an index atomically; returns where, or None if no cache directory is writable."""
    arrays, meta = _to_arrays(fi)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for candidate in _candidates(fi.path):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=candidate.parent, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as out:
                    np.savez(out, **arrays)
                os.replace(tmp, candidate)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return candidate
        except OSError:
            continue
    return None


def cached_file_index(path: str | os.PathLike, use_cache: bool = True) -> FileIndex:
    """Index a file, from the cache when it is up to date (and store it there otherwise).

    Raises
    ------
    FileFormatError
        As :func:`~xfeldata.files.index.read_file_index`.
    """
    path = os.path.abspath(os.fspath(path))
    if not (use_cache and cache_enabled()):
        return read_file_index(path)
    try:
        st = os.stat(path)
    except OSError:
        return read_file_index(path)  # raises the proper error
    cached = load_cached(path, st)
    if cached is not None:
        return cached
    fi = read_file_index(path)
    if fi.size == st.st_size and fi.mtime == st.st_mtime:
        save_cached(fi)
    return fi
