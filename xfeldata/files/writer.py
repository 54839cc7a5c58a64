"""Write realistic synthetic runs in the European XFEL on-disk format.

:func:`make_example` writes a run directory of real HDF5 files laid out as the
facility's DAQ writes them (see ``format.md``): one file per detector module
and sequence, slow data in ``DA01``/``DA02``, every format version from 0.5 to
1.3, raw or corrected data, and on request the irregularities real runs have
(missing trains, zero padding, suspect and repeated train IDs, empty sources).
Content comes from :mod:`xfeldata.synthetic`, so a test can recompute what any
train must contain.

Choices where the format leaves room (documented here, relied on by tests):

- Slow files take the run's data class (``CORR-...-DA01`` in corrected runs).
- Sequence boundaries: every aggregator starts a new sequence every
  ``trains_per_sequence`` trains of the run, but ``DA01`` and ``DA02`` shift
  their boundaries by 1 and 2 trains (their first file is longer), so sequence N
  of different aggregators does not cover the same trains.
- Irregular rows go into the *primary* aggregator, ``DA01`` (or the first
  module's file in runs without slow data):

  * suspect train: one extra row in the middle with a bogus train ID
    (``last train ID + 10**9``) carrying data for every source of the file,
    INDEX ``timestamp`` 0 (unknown), flagged suspect from 1.0 (``flag`` 0, 1 in
    1.1), ``origin`` the position of the XGM (or module) source in the source
    list (1.2+), unflagged in 0.5;
  * repeated train: the row of an earlier train is repeated right after it
    with all counts 0 and a good flag (a reader must cope with the duplicate).
- A module missing trains does not list them in its files' ``INDEX/trainId``.
- Zero padding appends zero rows to ``INDEX/trainId``, ``timestamp``, ``flag``,
  ``origin`` and every per-source ``first``/``count`` (counts 0), and the same
  number of zero rows to CONTROL datasets (as a DAQ preallocating rows does).
- Empty sources (:data:`xfeldata.synthetic.EMPTY_SOURCES`) go into the primary
  aggregator; their RUN entries exist with default values.
- RUN-only sources are written to ``DA01`` only, and are not listed in METADATA.

Examples
--------
>>> import tempfile, h5py
>>> run = make_example(tempfile.mkdtemp() + "/r0001", n_trains=4, frames_per_train=2,
...                    modules=[0, 1], slow_sources=False)
>>> sorted(p.name for p in run.iterdir())
['RAW-R0001-AGIPD00-S00000.h5', 'RAW-R0001-AGIPD01-S00000.h5']
>>> with h5py.File(run / "RAW-R0001-AGIPD01-S00000.h5", "r") as f:
...     f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/1CH0:xtdf/image/data"].shape
(8, 2, 512, 128)
"""

from __future__ import annotations

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
from tqdm.auto import tqdm

from .. import synthetic as syn
from .layout import DETECTORS, FORMAT_VERSIONS, DetectorKind, file_name, key_to_path, parse_file_name

__all__ = ["make_example", "IRREGULAR_PADDING", "BOGUS_TRAIN_OFFSET"]

#: Zero-padding rows used by ``irregular=True`` (unless ``zero_padding`` is larger).
IRREGULAR_PADDING = 3
#: The suspect train's ID is the last real train ID plus this.
BOGUS_TRAIN_OFFSET = 10**9
#: Pixel data chunks hold this many frames (XTDF); JUNGFRAU chunks hold one train.
FRAMES_PER_CHUNK = 32
#: Datasets whose rows are at least this large are compressed (with ``compression``).
_COMPRESS_MIN_ROW_BYTES = 1024
_FLUSH_BYTES = 64 << 20
_VLEN_BYTES = h5py.special_dtype(vlen=bytes)
#: Seconds between the last change of a slow value before the run and the run start.
_PRE_RUN_CHANGE_S = 3600
_TIMESERVER_ENTRY = "Karabo_TimerServer/SA1_RR_UTC/TSYS/TIMESERVER"


# --------------------------------------------------------------------------
# Options and plans
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    det: DetectorKind | None
    corrected: bool
    new_corr_names: bool
    modules: tuple[int, ...]
    frames_per_train: int
    version: str
    old_index: bool
    compression: str | None
    proposal: int
    run: int
    seed: int
    varying_frames: bool
    zero_padding: int
    parallel_gain: bool
    run_t0: int = 0
    dark: bool = False  # ns: time of the run's first train

    @property
    def pre_run_time(self) -> int:
        """Change time of slow values already set before the run."""
        return self.run_t0 - _PRE_RUN_CHANGE_S * 10**9

    @property
    def data_class(self) -> str:
        return "CORR" if self.corrected else "RAW"

    @property
    def v(self) -> tuple[int, int]:
        major, minor = self.version.split(".")
        return int(major), int(minor)

    def flag_value(self, good: np.ndarray) -> np.ndarray:
        """INDEX/flag values: 1 = good (0 = good in format 1.1)."""
        good = np.asarray(good, dtype=bool)
        return (~good if self.version == "1.1" else good).astype(np.int32)


@dataclass
class _Rows:
    """INDEX rows of one file (or of all files of one aggregator), in file order."""

    train_ids: np.ndarray  # uint64
    real_time: np.ndarray  # int64 ns, when the row was recorded
    suspect: np.ndarray  # bool: bogus train ID (flagged from 1.0)
    has_data: np.ndarray  # bool: False for the repeated train's row
    sequence: np.ndarray  # int: sequence file number of each row

    def __len__(self) -> int:
        return len(self.train_ids)

    def take(self, sel) -> _Rows:
        return _Rows(self.train_ids[sel], self.real_time[sel], self.suspect[sel],
                     self.has_data[sel], self.sequence[sel])

    @property
    def index_timestamp(self) -> np.ndarray:
        return np.where(self.suspect, 0, self.real_time).astype(np.uint64)


@dataclass
class _Aggregator:
    name: str
    rows: _Rows
    slow: list[syn.SlowSource] = field(default_factory=list)
    empty: list[syn.SlowSource] = field(default_factory=list)
    module: int | None = None
    run_only: bool = False


def _sequence_of(run_pos: np.ndarray, per_seq: int | None, shift: int) -> np.ndarray:
    """Sequence number of trains at run positions; the first file takes ``shift`` more."""
    if not per_seq:
        return np.zeros(len(run_pos), dtype=np.int64)
    if per_seq < 4:
        shift = 0
    return np.maximum(run_pos - shift, 0) // per_seq


def _base_rows(tids: np.ndarray, first_tid: int, per_seq: int | None, shift: int) -> _Rows:
    pos = (tids.astype(np.int64) - first_tid)
    n = len(tids)
    return _Rows(tids.astype(np.uint64), syn.train_timestamp_ns(tids).astype(np.int64),
                 np.zeros(n, bool), np.ones(n, bool), _sequence_of(pos, per_seq, shift))


def _insert_row(rows: _Rows, after: int, train_id: int, *, suspect: bool,
                has_data: bool) -> _Rows:
    at = after + 1
    return _Rows(np.insert(rows.train_ids, at, np.uint64(train_id)),
                 np.insert(rows.real_time, at, rows.real_time[after] + 1_000_000),
                 np.insert(rows.suspect, at, suspect),
                 np.insert(rows.has_data, at, has_data),
                 np.insert(rows.sequence, at, rows.sequence[after]))


# --------------------------------------------------------------------------
# Small HDF5 helpers
# --------------------------------------------------------------------------


def _chunks(entry_shape: tuple[int, ...], itemsize: int, n_rows: int,
            rows_per_chunk: int | None = None) -> tuple[int, ...]:
    row_bytes = max(1, int(np.prod(entry_shape, dtype=np.int64)) * itemsize)
    rows = rows_per_chunk or max(1, (1 << 20) // row_bytes)
    return (max(1, min(rows, n_rows)), *entry_shape)


def _create_rows(group: h5py.Group, path: str, n_rows: int, dtype, entry_shape=(), *,
                 opts: _Options, rows_per_chunk: int | None = None,
                 compress: bool | None = None) -> h5py.Dataset:
    """Create a chunked, extendible dataset of ``n_rows`` rows."""
    dtype = np.dtype(dtype) if dtype is not _VLEN_BYTES else dtype
    itemsize = 16 if dtype is _VLEN_BYTES else dtype.itemsize
    entry_shape = tuple(entry_shape)
    kw = {}
    row_bytes = int(np.prod(entry_shape, dtype=np.int64)) * itemsize
    if compress is None:
        compress = row_bytes >= _COMPRESS_MIN_ROW_BYTES
    if opts.compression and compress:
        kw = {"compression": opts.compression, "shuffle": True}
        if opts.compression == "gzip":
            kw["compression_opts"] = 1
    return group.create_dataset(
        path, shape=(n_rows, *entry_shape), dtype=dtype, maxshape=(None, *entry_shape),
        chunks=_chunks(entry_shape, itemsize, n_rows, rows_per_chunk), **kw)


def _strings(values) -> list[bytes]:
    return [str(v).encode("utf-8") for v in values]


def _as_written(spec: syn.KeySpec, values: np.ndarray) -> np.ndarray:
    if spec.is_string:
        return np.array(_strings(values), dtype=object)
    return np.asarray(values)


def _spec_dtype(spec: syn.KeySpec):
    return _VLEN_BYTES if spec.is_string else np.dtype(spec.dtype)


def _ascii_attrs(obj, attrs: Mapping[str, str]) -> None:
    for name, value in attrs.items():
        obj.attrs[name] = str(value).encode("ascii", "replace")


def _key_attrs(spec: syn.KeySpec) -> tuple[dict, dict]:
    """1.3 key attributes split into (on the key's group, on ``value``)."""
    attrs = {"displayedName": spec.key.rsplit(".", 1)[-1], **spec.attrs}
    on_value = {k: v for k, v in attrs.items() if k == "description"}
    on_group = {k: v for k, v in attrs.items() if k != "description"}
    return on_group, on_value


def _encode_chunk(block: np.ndarray, shuffle: bool, level: int | None) -> np.ndarray | bytes:
    """One chunk as stored by HDF5's shuffle and deflate filters (in that order)."""
    raw = np.ascontiguousarray(block)
    if shuffle and raw.itemsize > 1:
        raw = np.ascontiguousarray(raw.view(np.uint8).reshape(-1, raw.itemsize).T)
    return raw if level is None else zlib.compress(raw, level)


class _Appender:
    """Append rows to a preallocated chunked dataset, writing whole chunks.

    Numeric datasets that are uncompressed or use shuffle + deflate are
    written with ``write_direct_chunk`` (deflate done here, in threads: zlib
    releases the GIL); the last, partial chunk is zero-filled, as HDF5 does.
    Other datasets (strings, structured dtypes) go through h5py.
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

    def append(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.buf.append(rows)
        self.nbytes += rows.nbytes
        if self.nbytes >= _FLUSH_BYTES:
            self._flush(final=False)

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
        self._flush(final=True)
        assert self.pos <= self.dset.shape[0]


# --------------------------------------------------------------------------
# INDEX and METADATA
# --------------------------------------------------------------------------


def _write_source_index(f: h5py.File, path: str, counts: np.ndarray, opts: _Options) -> None:
    """``INDEX/<path>/{first,count}`` (or first/last/status), zero-padded."""
    counts = np.asarray(counts, dtype=np.uint64)
    first = np.cumsum(counts) - counts
    pad = np.zeros(opts.zero_padding, dtype=np.uint64)
    grp = f.require_group(f"INDEX/{path}")
    grp["first"] = np.concatenate([first, pad])
    if opts.old_index:
        status = (counts > 0).astype(np.uint64)
        last = np.where(counts > 0, first + counts - np.uint64(1), first)
        grp["last"] = np.concatenate([last, pad])
        grp["status"] = np.concatenate([status, pad])
    else:
        grp["count"] = np.concatenate([counts, pad])


def _write_train_index(f: h5py.File, rows: _Rows, sources: list[str], origin_source: str,
                       opts: _Options) -> None:
    pad = opts.zero_padding
    f["INDEX/trainId"] = np.concatenate([rows.train_ids, np.zeros(pad, np.uint64)])
    if opts.v >= (1, 0):
        f["INDEX/timestamp"] = np.concatenate([rows.index_timestamp, np.zeros(pad, np.uint64)])
        f["INDEX/flag"] = np.concatenate([opts.flag_value(~rows.suspect),
                                          np.zeros(pad, np.int32)])
    if opts.v >= (1, 2):
        origin = np.where(rows.suspect, sources.index(origin_source), -1).astype(np.int32)
        f["INDEX/origin"] = np.concatenate([origin, np.zeros(pad, np.int32)])


def _source_list(f_sources: list[str], opts: _Options) -> list[str]:
    entries = list(f_sources)
    if opts.version == "1.1":
        entries.insert(0, _TIMESERVER_ENTRY)
    return entries


def _date(ns: int) -> bytes:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns / 1e9)).encode()


def _write_metadata(f: h5py.File, entries: list[str], rows: _Rows, sequence: int,
                    opts: _Options) -> None:
    roots = [e.split("/", 1)[0] for e in entries]
    devices = [e.split("/", 1)[1] for e in entries]
    if opts.version == "0.5":
        n = (len(entries) // 16 + 1) * 16  # padded with empty strings, as the DAQ did
        pad = [b""] * (n - len(entries))
        for name, values in (("dataSourceId", entries), ("root", roots), ("deviceId", devices)):
            f.create_dataset(f"METADATA/{name}", data=_strings(values) + pad,
                             dtype=_VLEN_BYTES, maxshape=(None,))
        return
    for name, values in (("dataSourceId", entries), ("root", roots), ("deviceId", devices)):
        f.create_dataset(f"METADATA/dataSources/{name}", data=_strings(values),
                         dtype=_VLEN_BYTES, maxshape=(None,))
    t0 = int(rows.real_time.min()) if len(rows) else syn.TRAIN_EPOCH_NS
    t1 = int(rows.real_time.max()) if len(rows) else t0
    meta = {
        "dataFormatVersion": opts.version.encode(),
        "creationDate": _date(t0),
        "updateDate": _date(t1 + 10**9),
        "daqLibrary": b"1.10.4",
        "karaboFramework": b"2.16.2",
        "runType": b"Synthetic run",
        "sample": b"lysozyme",
    }
    for name, value in meta.items():
        f.create_dataset(f"METADATA/{name}", data=[value], dtype=_VLEN_BYTES)
    for name, value in (("proposalNumber", opts.proposal), ("runNumber", opts.run),
                        ("sequenceNumber", sequence)):
        f.create_dataset(f"METADATA/{name}", data=[value], dtype=np.uint32)


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


class _ControlState:
    """Last value and change time of each control key, carried across sequence files."""

    def __init__(self, pre_run_time: int) -> None:
        self.pre_run_time = pre_run_time
        self.last: dict[tuple[str, str], tuple[np.ndarray, int]] = {}

    def timestamps(self, source: str, key: str, values: np.ndarray,
                   times: np.ndarray) -> np.ndarray:
        n = len(values)
        if n == 0:
            return np.zeros(0, dtype=np.uint64)
        prev_value, prev_time = self.last.get((source, key), (None, self.pre_run_time))
        flat = values.reshape(n, -1) if values.dtype != object else values.reshape(n, 1)
        changed = np.ones(n, dtype=bool)
        changed[1:] = (flat[1:] != flat[:-1]).any(axis=1)
        changed[0] = prev_value is not None and bool((flat[0] != prev_value).any())
        last_change = np.maximum.accumulate(np.where(changed, np.arange(n), -1))
        ts = np.where(last_change >= 0, times[np.maximum(last_change, 0)], prev_time)
        self.last[source, key] = (flat[-1], int(ts[-1]))
        return ts.astype(np.uint64)


def _write_control(f: h5py.File, src: syn.SlowSource, rows: _Rows,
                   values: Mapping[str, np.ndarray] | None, run_start: Mapping[str, object],
                   state: _ControlState, opts: _Options) -> list[str]:
    """CONTROL and RUN of one control source; ``values`` None for an empty source."""
    has = rows.has_data & (values is not None)
    _write_source_index(f, src.name, has.astype(np.uint64), opts)
    n_data = int(has.sum())
    pad = opts.zero_padding if values is not None else 0
    grp = f.require_group(f"CONTROL/{src.name}")
    run_grp = f.require_group(f"RUN/{src.name}")
    times = rows.real_time[has]
    for spec in src.keys:
        path = key_to_path(spec.key)
        dtype = _spec_dtype(spec)
        val = _create_rows(grp, f"{path}/value", n_data + pad, dtype, spec.shape, opts=opts)
        tsd = _create_rows(grp, f"{path}/timestamp", n_data + pad, np.uint64, opts=opts)
        if n_data:
            v = values[spec.key]
            val[:n_data] = _as_written(spec, v)
            tsd[:n_data] = state.timestamps(src.name, spec.key, np.asarray(v), times)
        # RUN: the value at the start of the run.
        start = run_start.get(spec.key, "" if spec.is_string else np.zeros(spec.shape, dtype))
        run_grp.create_dataset(f"{path}/value", data=_as_written(spec, np.asarray([start])),
                               dtype=dtype, maxshape=(None, *spec.shape))
        run_grp.create_dataset(f"{path}/timestamp", dtype=np.uint64, maxshape=(None,),
                               data=[opts.pre_run_time])
        if opts.v >= (1, 3):
            on_group, on_value = _key_attrs(spec)
            for g in (grp, run_grp):
                _ascii_attrs(g[path], on_group)
                _ascii_attrs(g[f"{path}/value"], on_value)
    _write_run_values(run_grp, src.run_values, opts.pre_run_time)
    return [f"CONTROL/{src.name}"]


def _write_run_values(grp: h5py.Group, run_values: Mapping[str, object], ts: int) -> None:
    for key, value in run_values.items():
        path = key_to_path(key)
        if isinstance(value, str):
            grp.create_dataset(f"{path}/value", data=[value.encode()], dtype=_VLEN_BYTES,
                               maxshape=(None,))
        else:
            arr = np.asarray(value)[None]
            grp.create_dataset(f"{path}/value", data=arr, maxshape=(None, *arr.shape[1:]))
        grp.create_dataset(f"{path}/timestamp", data=[ts],
                           dtype=np.uint64, maxshape=(None,))


def _write_instrument(f: h5py.File, src: syn.SlowSource, rows: _Rows,
                      values: Mapping[str, np.ndarray] | None, opts: _Options) -> list[str]:
    """INSTRUMENT data (one row per train with data) of a slow instrument source."""
    has = rows.has_data & (values is not None)
    n_data = int(has.sum())
    for group in src.index_groups:
        _write_source_index(f, f"{src.name}/{group}", has.astype(np.uint64), opts)
    grp = f.require_group(f"INSTRUMENT/{src.name}")
    for spec in src.keys:
        dset = _create_rows(grp, key_to_path(spec.key), n_data, _spec_dtype(spec), spec.shape,
                            opts=opts)
        if n_data:
            dset[:] = _as_written(spec, values[spec.key])
        if opts.v >= (1, 3):
            on_group, on_value = _key_attrs(spec)
            _ascii_attrs(dset, {**on_group, **on_value})
    return [f"INSTRUMENT/{src.name}/{g}" for g in src.index_groups]


def _detector_counts(rows: _Rows, opts: _Options) -> np.ndarray:
    """Frames (XTDF) or 1 (JUNGFRAU) per row; 0 for rows without data."""
    det = opts.det
    if det.xtdf:
        n = syn.train_frame_counts(rows.train_ids, opts.frames_per_train,
                                   varying=opts.varying_frames, seed=opts.seed)
        if opts.parallel_gain:
            n = n * 3
    else:
        n = np.ones(len(rows), dtype=np.int64)
    return np.where(rows.has_data, n, 0)


def _write_detector(f: h5py.File, module: int, rows: _Rows, opts: _Options,
                    progress) -> list[str]:
    """INSTRUMENT data of one detector module, written train by train in whole chunks."""
    det = opts.det
    source = det.source(module, corrected=opts.corrected and opts.new_corr_names)
    counts = _detector_counts(rows, opts)
    per_train = rows.has_data.astype(np.int64)
    cells = opts.frames_per_train
    specs = syn.detector_keys(det.name, corrected=opts.corrected, n_cells=cells)
    grp = f.require_group(f"INSTRUMENT/{source}")
    pixel_keys = {det.data_key, "image.mask", "image.gain", "data.gain", "data.mask"}
    groups: dict[str, np.ndarray] = {}
    appenders: dict[str, _Appender] = {}
    for key, (dtype, shape) in specs.items():
        group = key.split(".", 1)[0]
        group_counts = counts if (det.xtdf and group == "image") or not det.xtdf else per_train
        groups[group] = group_counts
        rpc = (FRAMES_PER_CHUNK if det.xtdf else 1) if key in pixel_keys else None
        dset = _create_rows(grp, key_to_path(key), int(group_counts.sum()), dtype, shape,
                            opts=opts, rows_per_chunk=rpc, compress=key in pixel_keys or None)
        appenders[key] = _Appender(dset)
    for tid, n, has in zip(rows.train_ids, counts, rows.has_data, strict=True):
        if has:
            data = syn.detector_module_train(det.name, module, int(tid),
                                             int(n) if det.xtdf else cells,
                                             corrected=opts.corrected, seed=opts.seed,
                                             parallel_gain=opts.parallel_gain, dark=opts.dark)
            for key, app in appenders.items():
                app.append(data[key])
        progress.update(1)
    for app in appenders.values():
        app.close()
    entries = []
    for group, group_counts in groups.items():
        _write_source_index(f, f"{source}/{group}", group_counts, opts)
        entries.append(f"INSTRUMENT/{source}/{group}")
    if det.xtdf and opts.corrected and opts.new_corr_names:
        legacy = det.legacy_source(module)
        for top in ("INSTRUMENT", "INDEX"):
            parent, name = f"{top}/{legacy}".rsplit("/", 1)
            f.require_group(parent)[name] = h5py.SoftLink(f"/{top}/{source}")
        entries += [f"INSTRUMENT/{legacy}/{group}" for group in groups]
    return entries


def _write_file(path: Path, agg: _Aggregator, rows: _Rows, sequence: int, opts: _Options,
                state: _ControlState, run_start: Mapping[str, Mapping[str, object]],
                progress) -> None:
    with h5py.File(path, "w") as f:
        control: list[str] = []
        instrument: list[str] = []
        values = syn.slow_trains(rows.train_ids[rows.has_data], seed=opts.seed) \
            if agg.slow else {}
        for src in agg.slow + agg.empty:
            v = values.get(src.name) if src in agg.slow else None
            if src.section == "CONTROL":
                control += _write_control(f, src, rows, v, run_start.get(src.name, {}),
                                          state, opts)
            else:
                instrument += _write_instrument(f, src, rows, v, opts)
        if agg.module is None:
            progress.update(len(rows))
        origin = f"CONTROL/{syn.XGM_SOURCE}"
        if agg.module is not None:
            entries = _write_detector(f, agg.module, rows, opts, progress)
            instrument += entries
            origin = entries[0]
        if agg.run_only:
            for name, run_values in syn.RUN_ONLY_SOURCES.items():
                _write_run_values(f.require_group(f"RUN/{name}"), run_values,
                                  opts.pre_run_time)
        for section in ("CONTROL", "RUN", "INSTRUMENT"):
            f.require_group(section)
        entries = _source_list(sorted(control) + sorted(instrument), opts)
        _write_train_index(f, rows, entries, origin if origin in entries else entries[-1], opts)
        _write_metadata(f, entries, rows, sequence, opts)


# --------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------


def _check_target(run_dir: Path) -> None:
    if run_dir.exists():
        if not run_dir.is_dir():
            raise NotADirectoryError(f"{run_dir} exists and is not a directory")
        existing = sorted(p.name for p in run_dir.iterdir() if parse_file_name(p.name))
        if existing:
            raise FileExistsError(
                f"{run_dir} already holds run files ({existing[0]}, ... {len(existing)} "
                "in all); refusing to write a synthetic run into it")
    run_dir.mkdir(parents=True, exist_ok=True)


def make_example(path: str | Path, *, detector: str | None = "AGIPD1M", corrected: bool = False,
                 new_corr_names: bool = True, modules: Sequence[int] | None = None,
                 n_trains: int = 20, frames_per_train: int = 16,
                 trains_per_sequence: int | None = None, format_version: str = "1.3",
                 old_index: bool = False, compression: str | None = None,
                 slow_sources: bool = True, first_train_id: int = 10000,
                 proposal: int = 700000, run: int = 1, seed: int = 0,
                 missing_module_trains: Mapping[int, Sequence[int]] | None = None,
                 varying_frames: bool = False, zero_padding: int = 0,
                 suspect_train: bool = False, repeated_train: bool = False,
                 empty_source: bool = False, lpd_parallel_gain: bool = False,
                 irregular: bool = False, dark: bool = False, progress: bool = False) -> Path:
    """Write a synthetic run in the European XFEL format and return its directory.

    Parameters
    ----------
    path
        Run directory; created if needed.  Refused if it already holds run files.
    detector
        A kind from :data:`~xfeldata.files.layout.DETECTORS` (``"AGIPD1M"``,
        ``"AGIPD500K"``, ``"LPD1M"``, ``"DSSC1M"``, ``"JUNGFRAU"``) or None for
        no detector.
    corrected
        Write corrected data (``CORR`` files, float32 pixels with mask and gain).
    new_corr_names
        Corrected XTDF sources named ``<device>/CORR/<n>CH0:output``, with the
        legacy ``<device>/DET/<n>CH0:xtdf`` as soft links in INDEX and INSTRUMENT
        (and listed in METADATA).  If false, corrected data uses the legacy name.
    modules
        Module numbers to write (default: all modules of the detector).
    n_trains, first_train_id
        Trains of the run: ``first_train_id, first_train_id + 1, ...``.
    frames_per_train
        Frames per train of XTDF detectors (pulses, with ``lpd_parallel_gain``),
        memory cells of JUNGFRAU (1..16).
    trains_per_sequence
        Trains per sequence file (default: one file per aggregator).
    format_version
        ``"0.5"``, ``"1.0"``, ``"1.1"``, ``"1.2"`` or ``"1.3"``.
    old_index
        Write the old ``first``/``last``/``status`` index (format 0.5 only).
    compression
        None or ``"gzip"`` (deflate level 1 with shuffle, as corrected data is
        stored) for pixel and array data (rows of 1 KiB or more); ``"lzf"`` also works.
    slow_sources
        Write the slow and instrument sources of :mod:`xfeldata.synthetic`
        (``DA01``: XGM, motors, REMI hits, RUN-only source; ``DA02``: camera
        and digitiser).
    proposal, run, seed
        Proposal and run number in METADATA and file names; content seed.
    missing_module_trains
        ``{module: [train IDs]}`` that this module's files leave out.
    varying_frames
        Vary the frames per train (see :func:`xfeldata.synthetic.train_frame_counts`).
    zero_padding
        Zero rows appended to every INDEX array.
    suspect_train, repeated_train
        Add a bogus out-of-order train ID (flagged suspect from format 1.0),
        or repeat a train ID (see the module docstring).
    empty_source
        Add the sources of :data:`xfeldata.synthetic.EMPTY_SOURCES`, listed but
        without data.
    lpd_parallel_gain
        LPD parallel-gain mode: 3 gain stages per pulse stored in sequence.
    irregular
        Turn on a set of irregularities at once: the second module written (or
        the only one) misses 3 trains (run positions 2, 3 and ``n_trains - 2``),
        varying frames, 3 rows of zero padding, a suspect train and empty sources.
    dark
        A dark run: XTDF detector frames hold pedestal and noise, no photons.
    progress
        Show a tqdm progress bar (one step per train and file).

    Returns
    -------
    pathlib.Path
        The run directory.

    Examples
    --------
    >>> import tempfile
    >>> run = make_example(tempfile.mkdtemp(), detector="JUNGFRAU", modules=[1],
    ...                    frames_per_train=1, n_trains=3, slow_sources=False)
    >>> [p.name for p in run.iterdir()]
    ['RAW-R0001-JNGFR01-S00000.h5']
    """
    if format_version not in FORMAT_VERSIONS:
        raise ValueError(f"format_version must be one of {FORMAT_VERSIONS}, "
                         f"not {format_version!r}")
    if old_index and format_version != "0.5":
        raise ValueError("old_index (first/last/status) exists only in format 0.5")
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"compression must be None, 'gzip' or 'lzf', not {compression!r}")
    if n_trains < 1:
        raise ValueError("n_trains must be at least 1")
    if trains_per_sequence is not None and trains_per_sequence < 1:
        raise ValueError("trains_per_sequence must be at least 1")
    det = None
    if detector is not None:
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; known: {sorted(DETECTORS)}")
        det = DETECTORS[detector]
        modules = tuple(det.modules if modules is None else modules)
        unknown = sorted(set(modules) - set(det.modules))
        if unknown:
            raise ValueError(f"{detector} has no modules {unknown}; it has {det.modules}")
        if not det.xtdf and not 1 <= frames_per_train <= det.max_frames:
            raise ValueError(f"JUNGFRAU frames_per_train is the number of memory cells, "
                             f"1..{det.max_frames}, not {frames_per_train}")
        if lpd_parallel_gain and det.aggregator_prefix != "LPD":
            raise ValueError("lpd_parallel_gain needs an LPD detector")
    else:
        modules = ()
        if not slow_sources:
            raise ValueError("nothing to write: no detector and no slow sources")
    if frames_per_train < 0:
        raise ValueError("frames_per_train must not be negative")

    tids = np.arange(first_train_id, first_train_id + n_trains, dtype=np.uint64)
    missing = {int(m): [int(t) for t in ts] for m, ts in (missing_module_trains or {}).items()}
    if irregular:
        if modules and not missing:
            picks = [tids[p] for p in (2, 3, n_trains - 2) if 0 <= p < n_trains]
            missing = {modules[min(1, len(modules) - 1)]: [int(t) for t in picks]}
        varying_frames = True
        zero_padding = max(zero_padding, IRREGULAR_PADDING)
        suspect_train = True
        empty_source = True
    opts = _Options(det, corrected, new_corr_names, tuple(modules), frames_per_train,
                    format_version, old_index, compression, proposal, run, seed,
                    varying_frames and (det is None or det.xtdf), zero_padding,
                    lpd_parallel_gain, int(syn.train_timestamp_ns(first_train_id)[0]), dark)

    run_dir = Path(path)
    _check_target(run_dir)

    # Aggregators and their rows, in file order.
    aggs: list[_Aggregator] = []
    if slow_sources:
        for shift, name in ((1, "DA01"), (2, "DA02")):
            srcs = [s for s in syn.SLOW_SOURCES.values() if s.aggregator == name]
            aggs.append(_Aggregator(name, _base_rows(tids, first_train_id, trains_per_sequence,
                                                     shift), slow=srcs,
                                    run_only=name == "DA01"))
    for m in modules:
        keep = tids[~np.isin(tids, np.asarray(missing.get(m, []), dtype=np.uint64))]
        if len(keep):
            aggs.append(_Aggregator(det.aggregator(m),
                                    _base_rows(keep, first_train_id, trains_per_sequence, 0),
                                    module=m))
    primary = aggs[0]
    if empty_source:
        primary.empty = list(syn.EMPTY_SOURCES.values())
    n = len(primary.rows)
    if repeated_train:
        primary.rows = _insert_row(primary.rows, n // 4, int(primary.rows.train_ids[n // 4]),
                                   suspect=False, has_data=False)
    if suspect_train:
        after = len(primary.rows) // 2
        primary.rows = _insert_row(primary.rows, after, int(tids[-1]) + BOGUS_TRAIN_OFFSET,
                                   suspect=True, has_data=True)

    run_start = syn.slow_trains(tids[:1], seed=seed) if slow_sources else {}
    run_start = {src: {k: v[0] for k, v in keys.items()} for src, keys in run_start.items()}
    with tqdm(total=sum(len(a.rows) for a in aggs), unit="train", disable=not progress,
              desc=f"writing {run_dir.name}") as bar:
        for agg in aggs:
            state = _ControlState(opts.pre_run_time)
            for seq in np.unique(agg.rows.sequence):
                rows = agg.rows.take(agg.rows.sequence == seq)
                name = file_name(opts.data_class, run, agg.name, int(seq))
                _write_file(run_dir / name, agg, rows, int(seq), opts, state, run_start, bar)
    return run_dir
