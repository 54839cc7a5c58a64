"""Write HDF5 files in the European XFEL on-disk format (``format.md``).

:class:`FileWriter` writes one file: its trains (``INDEX/trainId``,
``timestamp``, ``flag``, ``origin``), its sources with their per-train row
counts (``INDEX/<source>/first,count``), their keys in ``CONTROL``, ``RUN``
and ``INSTRUMENT``, and, when closed, ``METADATA`` for the chosen format
version (0.5 to 1.3).  Datasets are created at their final size when a source
is added; their rows are then streamed with :class:`RowWriter` in any number
of ``append`` calls, whole chunks at a time, so a writer never holds more than
a few chunks of a key in memory.

Storage (chunk rows, deflate level, shuffle) is chosen per key with
:class:`Storage`; :func:`pixel_storage` is the facility's layout for detector
pixel data (one frame per chunk, raw uncompressed, corrected deflate level 1
with shuffle).

Nothing here knows synthetic content: :mod:`xfeldata.testing` and the
exports both write through this module.

Examples
--------
>>> import tempfile, h5py, numpy as np
>>> path = tempfile.mkdtemp() + "/RAW-R0001-DA01-S00000.h5"
>>> with FileWriter(path, [10000, 10001, 10002], proposal=700000, run=1) as f:
...     xgm = f.add_control("SA1_XTD2_XGM/DOOCS/MAIN", [Key("pulseEnergy.photonFlux", "f4")],
...                         run_values={"pulseEnergy.photonFlux": 1.5})
...     xgm["pulseEnergy.photonFlux"].append(np.array([1.5, 1.6, 1.7], "f4"))
...     xgm["pulseEnergy.photonFlux.timestamp"].append(np.zeros(3, "u8"))
...     cam = f.add_instrument("SPB_CAM/CAM/1:daqOutput", [Key("data.image.pixels", "u2", (4, 4))],
...                            counts=[1, 0, 1])
...     cam["data.image.pixels"].append(np.ones((2, 4, 4), "u2"))
>>> with h5py.File(path, "r") as h:
...     print(h["METADATA/dataSources/dataSourceId"].asstr()[:].tolist())
...     print(h["INDEX/SPB_CAM/CAM/1:daqOutput/data/first"][:].tolist())
['CONTROL/SA1_XTD2_XGM/DOOCS/MAIN', 'INSTRUMENT/SPB_CAM/CAM/1:daqOutput/data']
[0, 1, 1]
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import ArrayLike

from .layout import FORMAT_VERSIONS, key_to_path

__all__ = ["FileWriter", "Key", "RowWriter", "Storage", "pixel_storage", "TIMESERVER_ENTRY"]

#: Variable-length bytes, the type of every string dataset (UTF-8 content).
STRING_DTYPE = h5py.special_dtype(vlen=bytes)
#: Source-list entry of the time server that format 1.1 files list first.
TIMESERVER_ENTRY = "Karabo_TimerServer/SA1_RR_UTC/TSYS/TIMESERVER"
#: Chunks of automatic size hold about this many bytes.
_AUTO_CHUNK_BYTES = 1 << 20
#: A RowWriter writes its buffer when it holds this many bytes.
_FLUSH_BYTES = 64 << 20


@dataclass(frozen=True)
class Key:
    """One key of a source: dotted name, dtype, entry shape and attributes.

    ``dtype`` is a numpy dtype (also structured) or ``"str"`` for strings,
    stored as variable-length UTF-8 bytes.  ``attrs`` (units, ``alias``,
    ``description``...) are written from format 1.3: for control keys on the
    key's group, except ``description`` on ``value``; for instrument keys on
    the dataset.

    Examples
    --------
    >>> Key("data.adc", "u2", (16, 512, 1024)).is_string
    False
    """

    name: str
    dtype: object
    shape: tuple[int, ...] = ()
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_string(self) -> bool:
        return isinstance(self.dtype, str) and self.dtype == "str"

    @property
    def h5_dtype(self):
        return STRING_DTYPE if self.is_string else np.dtype(self.dtype)

    @property
    def row_bytes(self) -> int:
        itemsize = 16 if self.is_string else np.dtype(self.dtype).itemsize
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize


@dataclass(frozen=True)
class Storage:
    """How a dataset is stored: rows per chunk and compression.

    ``rows_per_chunk`` None chooses about 1 MiB per chunk.  ``compression`` is
    None, ``"gzip"`` (deflate at ``level``) or ``"lzf"``; ``shuffle`` applies
    with compression only.

    Examples
    --------
    >>> Storage().chunks((1000,), 4, n_rows=50)
    (50, 1000)
    >>> Storage(rows_per_chunk=1).chunks((512, 128), 4, n_rows=50)
    (1, 512, 128)
    """

    rows_per_chunk: int | None = None
    compression: str | None = None
    level: int = 1
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.compression not in (None, "gzip", "lzf"):
            raise ValueError(f"compression must be None, 'gzip' or 'lzf', not {self.compression!r}")
        if self.rows_per_chunk is not None and self.rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be at least 1, not {self.rows_per_chunk}")

    def chunks(self, entry_shape: tuple[int, ...], itemsize: int, n_rows: int) -> tuple[int, ...]:
        """Chunk shape of a dataset of ``n_rows`` rows of ``entry_shape``."""
        row_bytes = max(1, int(np.prod(entry_shape, dtype=np.int64)) * itemsize)
        rows = self.rows_per_chunk or max(1, _AUTO_CHUNK_BYTES // row_bytes)
        return (max(1, min(rows, n_rows)), *entry_shape)

    def h5py_kwargs(self) -> dict:
        if self.compression is None:
            return {}
        kw = {"compression": self.compression, "shuffle": self.shuffle}
        if self.compression == "gzip":
            kw["compression_opts"] = self.level
        return kw


def pixel_storage(corrected: bool) -> Storage:
    """The facility's storage of detector pixel data: one frame (row) per chunk.

    Raw data is uncompressed; corrected data (``data``, ``mask``, ``gain``) is
    deflated at level 1 after shuffle.

    Examples
    --------
    >>> pixel_storage(corrected=True)
    Storage(rows_per_chunk=1, compression='gzip', level=1, shuffle=True)
    """
    return Storage(rows_per_chunk=1, compression="gzip" if corrected else None)


def _encode_chunk(block: np.ndarray, shuffle: bool, level: int | None) -> np.ndarray | bytes:
    """One chunk as stored by HDF5's shuffle and deflate filters (in that order)."""
    raw = np.ascontiguousarray(block)
    if shuffle and raw.itemsize > 1:
        raw = np.ascontiguousarray(raw.view(np.uint8).reshape(-1, raw.itemsize).T)
    return raw if level is None else zlib.compress(raw, level)


class RowWriter:
    """Append rows to a dataset created at its final size, writing whole chunks.

    Numeric datasets, uncompressed or deflated (with or without shuffle), are
    written with ``write_direct_chunk``; deflate runs here, in threads (zlib
    releases the GIL), and the last, partial chunk is zero-filled as HDF5 does.
    Other datasets (strings, structured dtypes, lzf) go through h5py.  Rows
    left unwritten when the file closes stay zero.

    Examples
    --------
    >>> import tempfile, h5py, numpy as np
    >>> with h5py.File(tempfile.mkdtemp() + "/f.h5", "w") as f:
    ...     rows = RowWriter(f.create_dataset("x", (5, 2), "i4", chunks=(2, 2)))
    ...     rows.append(np.ones((3, 2), "i4")); rows.append(np.full((2, 2), 2, "i4"))
    ...     rows.close()
    ...     f["x"][:, 0].tolist()
    [1, 1, 1, 2, 2]
    """

    def __init__(self, dset: h5py.Dataset):
        self.dset = dset
        self.pos = 0
        self.buf: list[np.ndarray] = []
        self.nbytes = 0
        self.chunk_rows = dset.chunks[0] if dset.chunks else 1
        self.direct = (dset.chunks is not None and dset.dtype.kind in "uif"
                       and dset.compression in (None, "gzip"))
        self.level = dset.compression_opts if dset.compression == "gzip" else None
        self.closed = False

    def append(self, rows: ArrayLike) -> None:
        """Append rows (an array whose first axis is rows); strings as ``str``."""
        rows = self._as_stored(rows)
        if len(rows) == 0:
            return
        if self.pos + sum(len(b) for b in self.buf) + len(rows) > self.dset.shape[0]:
            raise ValueError(f"{self.dset.file.filename}: {self.dset.name} has "
                             f"{self.dset.shape[0]} rows; more were appended")
        self.buf.append(rows)
        self.nbytes += rows.nbytes
        if self.nbytes >= _FLUSH_BYTES:
            self._flush(final=False)

    def _as_stored(self, rows: ArrayLike) -> np.ndarray:
        if self.dset.dtype == STRING_DTYPE or h5py.check_string_dtype(self.dset.dtype):
            given = np.asarray(rows, dtype=object)   # rows of strings may have an entry shape
            return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8")
                             for v in given.ravel()], dtype=object).reshape(given.shape)
        return np.asarray(rows)

    def _flush(self, final: bool) -> None:
        if not self.buf:
            return
        data = self.buf[0] if len(self.buf) == 1 else np.concatenate(self.buf)
        k = len(data) if final else (len(data) // self.chunk_rows) * self.chunk_rows
        if k:
            if self.direct:
                self._write_chunks(data[:k])
            else:
                self.dset[self.pos:self.pos + k] = data[:k]
            self.pos += k
        rest = data[k:]
        self.buf = [rest] if len(rest) else []
        self.nbytes = rest.nbytes

    def _write_chunks(self, data: np.ndarray) -> None:
        cr = self.chunk_rows
        blocks = []
        for i in range(0, len(data), cr):
            block = data[i:i + cr]
            if len(block) < cr:
                block = np.concatenate([block, np.zeros((cr - len(block), *block.shape[1:]),
                                                        dtype=block.dtype)])
            blocks.append(block.astype(self.dset.dtype, copy=False))
        encode = partial(_encode_chunk, shuffle=self.dset.shuffle, level=self.level)
        if self.level is not None and len(blocks) > 1:
            with ThreadPoolExecutor(os.cpu_count()) as pool:
                payloads = list(pool.map(encode, blocks))
        else:
            payloads = [encode(b) for b in blocks]
        zeros = (0,) * (data.ndim - 1)
        for j, payload in enumerate(payloads):
            self.dset.id.write_direct_chunk((self.pos + j * cr, *zeros), payload)

    def close(self) -> None:
        """Write the rows still buffered (idempotent)."""
        if not self.closed:
            self._flush(final=True)
            self.closed = True


def _date(ns: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns / 1e9))


def _ascii_attrs(obj, attrs: Mapping[str, str]) -> None:
    for name, value in attrs.items():
        obj.attrs[name] = str(value).encode("ascii", "replace")


class FileWriter:
    """Write one file of the facility's format; use as a context manager.

    Parameters
    ----------
    path
        The file; refused if it exists unless ``overwrite``.
    train_ids
        ``INDEX/trainId``: one row per train of the file, in file order.
    format_version
        ``"0.5"``, ``"1.0"``, ``"1.1"``, ``"1.2"`` or ``"1.3"``: which INDEX and
        METADATA datasets exist and how ``flag`` is coded (inverted in 1.1).
    timestamps
        ``INDEX/timestamp`` (ns since the epoch, UTC; 0 = unknown), 1.0+.
        Default 0 for every train.
    good
        Per train, False where the train ID is suspect (``INDEX/flag``, 1.0+).
        Default all good.
    origin
        ``{row: source-list entry}`` for ``INDEX/origin`` (1.2+): rows whose
        train ID came from that source; every other row is -1 (time server).
    zero_padding
        Zero rows appended to every INDEX dataset, as a DAQ preallocating rows
        leaves them.
    old_index
        Per-source index as ``first``/``last``/``status`` (early 0.5 files).
    proposal, run, sequence
        ``METADATA/proposalNumber``, ``runNumber``, ``sequenceNumber`` (1.0+).
    metadata
        Other length-1 METADATA strings (``runType``, ``sample``, ``daqLibrary``,
        ``karaboFramework``, ``creationDate``, ``updateDate``); the dates
        default to the first and last timestamp (or now).
    overwrite
        Replace an existing file.

    Notes
    -----
    If the ``with`` block raises, the file is closed as it is, incomplete; to
    leave no partial file, write to a temporary name and rename it when done.
    """

    def __init__(self, path: str | os.PathLike, train_ids: ArrayLike, *,
                 format_version: str = "1.3", timestamps: ArrayLike | None = None,
                 good: ArrayLike | None = None, origin: Mapping[int, str] | None = None,
                 zero_padding: int = 0, old_index: bool = False, proposal: int = 0,
                 run: int = 0, sequence: int = 0, metadata: Mapping[str, str] | None = None,
                 overwrite: bool = False) -> None:
        if format_version not in FORMAT_VERSIONS:
            raise ValueError(f"format_version must be one of {FORMAT_VERSIONS}, "
                             f"not {format_version!r}")
        if old_index and format_version != "0.5":
            raise ValueError("old_index (first/last/status) exists only in format 0.5")
        if zero_padding < 0:
            raise ValueError("zero_padding must not be negative")
        self.path = Path(path)
        self.train_ids = np.asarray(train_ids, dtype=np.uint64).ravel()
        n = len(self.train_ids)
        self.timestamps = (np.zeros(n, np.uint64) if timestamps is None
                           else np.asarray(timestamps, dtype=np.uint64).ravel())
        self.good = np.ones(n, bool) if good is None else np.asarray(good, dtype=bool).ravel()
        for name, arr in (("timestamps", self.timestamps), ("good", self.good)):
            if len(arr) != n:
                raise ValueError(f"{self.path.name}: {name} has {len(arr)} rows, "
                                 f"train_ids {n}")
        self.origin = dict(origin or {})
        self.version = format_version
        self.v = tuple(int(p) for p in format_version.split("."))
        self.zero_padding = zero_padding
        self.old_index = old_index
        self.numbers = {"proposalNumber": proposal, "runNumber": run, "sequenceNumber": sequence}
        self.metadata = dict(metadata or {})
        self.sources: list[str] = []  # source-list entries (listed sorted, CONTROL first)
        self.rows: list[RowWriter] = []
        self.file = h5py.File(self.path, "w" if overwrite else "w-")
        for section in ("CONTROL", "RUN", "INSTRUMENT"):
            self.file.require_group(section)

    # -- context manager --------------------------------------------------------
    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the error that stopped the writing is the one to report: closing may fail again (a full disk)
            with contextlib.suppress(Exception):
                self.file.close()

    def close(self) -> None:
        """Flush every key, write INDEX trains and METADATA, close the file."""
        if not self.file.id.valid:
            return
        for rows in self.rows:
            rows.close()
        entries = self.source_list
        self._write_train_index(entries)
        self._write_metadata(entries)
        self.file.close()

    @property
    def source_list(self) -> list[str]:
        """``METADATA/dataSources/dataSourceId`` as it will be written: CONTROL
        entries, then INSTRUMENT entries, each sorted (1.1 lists the time server first)."""
        return (([TIMESERVER_ENTRY] if self.version == "1.1" else [])
                + sorted(e for e in self.sources if e.startswith("CONTROL/"))
                + sorted(e for e in self.sources if e.startswith("INSTRUMENT/")))

    # -- sources ----------------------------------------------------------------
    def _counts(self, counts: ArrayLike | None, what: str) -> np.ndarray:
        if counts is None:
            return np.ones(len(self.train_ids), np.uint64)
        counts = np.asarray(counts).ravel()
        if len(counts) != len(self.train_ids) or (counts < 0).any():
            raise ValueError(f"{self.path.name}: {what}: counts need one non-negative value "
                             f"per train ({len(self.train_ids)}), got {len(counts)}")
        return counts.astype(np.uint64)

    def _create(self, group: h5py.Group, path: str, n_rows: int, dtype, entry_shape,
                storage: Storage) -> RowWriter:
        itemsize = 16 if dtype is STRING_DTYPE else np.dtype(dtype).itemsize
        dset = group.create_dataset(path, shape=(n_rows, *entry_shape), dtype=dtype,
                                    maxshape=(None, *entry_shape),
                                    chunks=storage.chunks(tuple(entry_shape), itemsize, n_rows),
                                    **storage.h5py_kwargs())
        rows = RowWriter(dset)
        self.rows.append(rows)
        return rows

    def _write_source_index(self, path: str, counts: np.ndarray) -> None:
        first = np.cumsum(counts) - counts
        pad = np.zeros(self.zero_padding, dtype=np.uint64)
        grp = self.file.require_group(f"INDEX/{path}")
        grp["first"] = np.concatenate([first, pad])
        if self.old_index:
            last = np.where(counts > 0, first + counts - np.uint64(1), first)
            grp["last"] = np.concatenate([last, pad])
            grp["status"] = np.concatenate([(counts > 0).astype(np.uint64), pad])
        else:
            grp["count"] = np.concatenate([counts, pad])

    def add_control(self, source: str, keys: Sequence[Key], counts: ArrayLike | None = None, *,
                    run_values: Mapping[str, object] | None = None, run_timestamp: int = 0,
                    storage: Mapping[str, Storage] | None = None,
                    spare_rows: int = 0) -> dict[str, RowWriter]:
        """Add a control source and return its row writers.

        ``counts`` is 0 or 1 per train (default 1).  The writers are keyed by
        the key for ``value`` and by ``<key>.timestamp`` for ``timestamp``.
        ``RUN/<source>`` gets each key's ``run_values`` entry (default zeros or
        ``""``) with ``run_timestamp``.  ``spare_rows`` zero rows are allocated
        after the data (a DAQ's preallocation).
        """
        counts = self._counts(counts, source)
        n_rows = int(counts.sum()) + spare_rows
        run_values = dict(run_values or {})
        storage = storage or {}
        grp = self.file.require_group(f"CONTROL/{source}")
        run_grp = self.file.require_group(f"RUN/{source}")
        writers = {}
        for key in keys:
            path = key_to_path(key.name)
            st = storage.get(key.name, Storage())
            writers[key.name] = self._create(grp, f"{path}/value", n_rows, key.h5_dtype,
                                             key.shape, st)
            writers[f"{key.name}.timestamp"] = self._create(grp, f"{path}/timestamp", n_rows,
                                                            np.uint64, (), Storage())
            start = run_values.pop(key.name, "" if key.is_string
                                   else np.zeros(key.shape, key.h5_dtype))
            self._write_run_value(run_grp, key.name, start, run_timestamp, key)
            if self.v >= (1, 3):
                on_group = {k: v for k, v in key.attrs.items() if k != "description"}
                on_value = {k: v for k, v in key.attrs.items() if k == "description"}
                for g in (grp, run_grp):
                    _ascii_attrs(g[path], on_group)
                    _ascii_attrs(g[f"{path}/value"], on_value)
        self.add_run_values(source, run_values, run_timestamp)
        self._write_source_index(source, counts)
        self.sources.append(f"CONTROL/{source}")
        return writers

    def _write_run_value(self, grp: h5py.Group, name: str, value, ts: int,
                         key: Key | None = None) -> None:
        path = key_to_path(name)
        if isinstance(value, (str, bytes)) or (key is not None and key.is_string):
            data = [value if isinstance(value, bytes) else str(value).encode("utf-8")]
            grp.create_dataset(f"{path}/value", data=data, dtype=STRING_DTYPE, maxshape=(None,))
        else:
            dtype = None if key is None else key.h5_dtype
            arr = np.asarray(value, dtype=dtype)[None]
            grp.create_dataset(f"{path}/value", data=arr, maxshape=(None, *arr.shape[1:]))
        grp.create_dataset(f"{path}/timestamp", data=[ts], dtype=np.uint64, maxshape=(None,))

    def add_run_values(self, source: str, values: Mapping[str, object], timestamp: int = 0) -> None:
        """Write keys recorded only in ``RUN/<source>`` (no CONTROL data, not listed
        in METADATA unless the source also has control data)."""
        grp = self.file.require_group(f"RUN/{source}")
        for name, value in values.items():
            self._write_run_value(grp, name, value, timestamp)

    def add_instrument(self, source: str, keys: Sequence[Key],
                       counts: ArrayLike | Mapping[str, ArrayLike] | None = None, *,
                       storage: Mapping[str, Storage] | None = None) -> dict[str, RowWriter]:
        """Add an instrument source (``device:channel``) and return its row writers.

        Keys are ``<group>.<...>``; each index group gets ``counts`` rows per
        train, one array for every group or ``{group: counts}`` (default 1).
        ``storage`` maps key names to their :class:`Storage` (default: about
        1 MiB chunks, uncompressed).
        """
        return self._add_indexed("INSTRUMENT", source, keys, counts, storage)

    def add_auxiliary(self, section: str, source: str, keys: Sequence[Key],
                      counts: ArrayLike | Mapping[str, ArrayLike] | None = None, *,
                      storage: Mapping[str, Storage] | None = None) -> dict[str, RowWriter]:
        """Add an auxiliary source and return its row writers.

        ``section`` is ``"REDUCTION"`` or ``"ERRATA"``; the source is written as an
        instrument source is (``source`` may lack a ``:channel``), below
        ``/<section>/<source>``, and listed in ``METADATA/auxiliarySources/<section>``
        instead of the source list.
        """
        if section not in ("REDUCTION", "ERRATA"):
            raise ValueError(f"section must be 'REDUCTION' or 'ERRATA', not {section!r}")
        return self._add_indexed(section, source, keys, counts, storage)

    def _add_indexed(self, section: str, source: str, keys: Sequence[Key],
                     counts: ArrayLike | Mapping[str, ArrayLike] | None,
                     storage: Mapping[str, Storage] | None) -> dict[str, RowWriter]:
        storage = storage or {}
        groups = list(dict.fromkeys(k.name.split(".", 1)[0] for k in keys))
        by_group = {g: self._counts(counts[g] if isinstance(counts, Mapping) else counts,
                                    f"{source}/{g}") for g in groups}
        grp = self.file.require_group(f"{section}/{source}")
        writers = {}
        for key in keys:
            n_rows = int(by_group[key.name.split(".", 1)[0]].sum())
            writers[key.name] = rows = self._create(grp, key_to_path(key.name), n_rows,
                                                    key.h5_dtype, key.shape,
                                                    storage.get(key.name, Storage()))
            if self.v >= (1, 3):
                _ascii_attrs(rows.dset, key.attrs)
        for g, group_counts in by_group.items():
            self._write_source_index(f"{source}/{g}", group_counts)
            self.sources.append(f"{section}/{source}/{g}")
        return writers

    def add_alias(self, alias: str, source: str) -> None:
        """List instrument source ``alias`` as soft links to ``source`` in INDEX and
        INSTRUMENT (how corrected data keeps the legacy ``.../DET/<n>CH0:xtdf`` name)."""
        groups = [e.rsplit("/", 1)[1] for e in self.sources
                  if e.startswith(f"INSTRUMENT/{source}/")]
        if not groups:
            raise ValueError(f"{self.path.name}: no instrument source {source!r} to alias")
        for top in ("INSTRUMENT", "INDEX"):
            parent, name = f"{top}/{alias}".rsplit("/", 1)
            self.file.require_group(parent)[name] = h5py.SoftLink(f"/{top}/{source}")
        self.sources += [f"INSTRUMENT/{alias}/{g}" for g in groups]

    # -- INDEX and METADATA -----------------------------------------------------
    def _write_train_index(self, entries: list[str]) -> None:
        pad = self.zero_padding
        f = self.file
        f["INDEX/trainId"] = np.concatenate([self.train_ids, np.zeros(pad, np.uint64)])
        if self.v >= (1, 0):
            flag = (~self.good if self.version == "1.1" else self.good).astype(np.int32)
            f["INDEX/timestamp"] = np.concatenate([self.timestamps, np.zeros(pad, np.uint64)])
            f["INDEX/flag"] = np.concatenate([flag, np.zeros(pad, np.int32)])
        if self.v >= (1, 2):
            origin = np.full(len(self.train_ids), -1, np.int32)
            for row, entry in self.origin.items():
                if entry not in entries:
                    raise ValueError(f"{self.path.name}: origin {entry!r} is not in the "
                                     "source list")
                origin[row] = entries.index(entry)
            f["INDEX/origin"] = np.concatenate([origin, np.zeros(pad, np.int32)])

    def _write_metadata(self, entries: list[str]) -> None:
        f = self.file
        lists = {"dataSourceId": entries, "root": [e.split("/", 1)[0] for e in entries],
                 "deviceId": [e.split("/", 1)[1] for e in entries]}
        if self.version == "0.5":
            n = (len(entries) // 16 + 1) * 16  # padded with empty strings, as the DAQ did
            for name, values in lists.items():
                f.create_dataset(f"METADATA/{name}", dtype=STRING_DTYPE, maxshape=(None,),
                                 data=[v.encode() for v in values] + [b""] * (n - len(values)))
            self._write_auxiliary_list()
            return
        for name, values in lists.items():
            f.create_dataset(f"METADATA/dataSources/{name}", dtype=STRING_DTYPE,
                             maxshape=(None,), data=[v.encode() for v in values])
        self._write_auxiliary_list()
        known = self.timestamps[self.timestamps > 0]
        t0 = int(known.min()) if len(known) else time.time_ns()
        t1 = int(known.max()) if len(known) else t0
        meta = {"dataFormatVersion": self.version, "creationDate": _date(t0),
                "updateDate": _date(t1), "daqLibrary": "", "karaboFramework": "",
                "runType": "", "sample": "", **self.metadata}
        for name, value in meta.items():
            f.create_dataset(f"METADATA/{name}", data=[str(value).encode("utf-8")],
                             dtype=STRING_DTYPE)
        for name, value in self.numbers.items():
            f.create_dataset(f"METADATA/{name}", data=[value], dtype=np.uint32)

    def _write_auxiliary_list(self) -> None:
        """``METADATA/auxiliarySources/{REDUCTION,ERRATA}``, if the file has auxiliary sources."""
        auxiliary = [e for e in self.sources if e.startswith(("REDUCTION/", "ERRATA/"))]
        if auxiliary:
            for section in ("REDUCTION", "ERRATA"):
                self.file.create_dataset(
                    f"METADATA/auxiliarySources/{section}", dtype=STRING_DTYPE, maxshape=(None,),
                    data=[e.encode() for e in sorted(auxiliary) if e.startswith(f"{section}/")])
