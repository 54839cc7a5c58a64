"""Write realistic synthetic runs in the European XFEL on-disk format.

:func:`make_example` writes a run directory of real HDF5 files laid out as the
facility's DAQ writes them (see ``format.md``): one file per detector module
and sequence, slow data in ``DA01``/``DA02``, every format version from 0.5 to
1.3, raw or corrected data, and on request the irregularities real runs have
(missing trains, zero padding, suspect and repeated train IDs, empty sources).
Content comes from :mod:`xfeldata.testing.synthetic`, so a test can recompute what any
train must contain; the HDF5 writing is :class:`xfeldata.files.writer.FileWriter`'s.

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
- Empty sources (:data:`xfeldata.testing.synthetic.EMPTY_SOURCES`) go into the primary
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

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..detectors.kinds import DETECTORS, DetectorKind
from ..files.layout import FORMAT_VERSIONS, file_name, parse_file_name
from ..files.progress import tqdm
from ..files.writer import FileWriter, Key, Storage, pixel_storage
from . import synthetic as syn

__all__ = ["make_example", "IRREGULAR_PADDING", "BOGUS_TRAIN_OFFSET"]

#: Zero-padding rows used by ``irregular=True`` (unless ``zero_padding`` is larger).
IRREGULAR_PADDING = 3
#: The suspect train's ID is the last real train ID plus this.
BOGUS_TRAIN_OFFSET = 10**9
#: Detector pixel keys besides the kind's data key, stored like it (one frame per chunk).
_PIXEL_KEYS = frozenset({"image.mask", "image.gain", "data.gain", "data.mask"})
#: Other datasets are compressed (with an explicit ``compression``) from this row size.
_COMPRESS_MIN_ROW_BYTES = 1024
#: Seconds between the last change of a slow value before the run and the run start.
_PRE_RUN_CHANGE_S = 3600


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
    pixel_chunk_frames: int
    proposal: int
    run: int
    seed: int
    varying_frames: bool
    zero_padding: int
    parallel_gain: bool
    run_t0: int = 0  # ns: time of the run's first train
    dark: bool = False  # pedestal and noise only, no photons

    @property
    def pre_run_time(self) -> int:
        """Change time of slow values already set before the run."""
        return self.run_t0 - _PRE_RUN_CHANGE_S * 10**9

    @property
    def data_class(self) -> str:
        return "CORR" if self.corrected else "RAW"


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
# Keys and their storage
# --------------------------------------------------------------------------


def _key(spec: syn.KeySpec) -> Key:
    """A synthetic key as the file writer takes it (1.3 attributes with a display name)."""
    attrs = {"displayedName": spec.key.rsplit(".", 1)[-1], **spec.attrs}
    return Key(spec.key, spec.dtype, tuple(spec.shape), attrs)


def _array_storage(key: Key, opts: _Options) -> Storage:
    """Storage of non-pixel keys: compressed with an explicit ``compression`` when
    rows are at least 1 KiB, else as the DAQ writes them (uncompressed)."""
    if opts.compression in ("gzip", "lzf") and not key.is_string \
            and key.row_bytes >= _COMPRESS_MIN_ROW_BYTES:
        return Storage(compression=opts.compression)
    return Storage()


def _pixel_storage(opts: _Options) -> Storage:
    """Storage of detector pixel keys: the facility's unless asked otherwise."""
    rows = opts.pixel_chunk_frames if opts.det.xtdf else 1
    if opts.compression == "facility":
        return replace(pixel_storage(opts.corrected), rows_per_chunk=rows)
    return Storage(rows_per_chunk=rows, compression=opts.compression)


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


def _write_control(f: FileWriter, src: syn.SlowSource, rows: _Rows,
                   values: Mapping[str, np.ndarray] | None, run_start: Mapping[str, object],
                   state: _ControlState, opts: _Options) -> None:
    """CONTROL and RUN of one control source; ``values`` None for an empty source."""
    has = rows.has_data & (values is not None)
    keys = [_key(spec) for spec in src.keys]
    writers = f.add_control(src.name, keys, has.astype(np.uint64),
                            run_values={**run_start, **src.run_values},
                            run_timestamp=opts.pre_run_time,
                            storage={k.name: _array_storage(k, opts) for k in keys},
                            spare_rows=opts.zero_padding if values is not None else 0)
    if not has.any():
        return
    times = rows.real_time[has]
    for spec in src.keys:
        v = np.asarray(values[spec.key])
        writers[spec.key].append(v)
        writers[f"{spec.key}.timestamp"].append(state.timestamps(src.name, spec.key, v, times))


def _write_instrument(f: FileWriter, src: syn.SlowSource, rows: _Rows,
                      values: Mapping[str, np.ndarray] | None, opts: _Options) -> None:
    """INSTRUMENT data (one row per train with data) of a slow instrument source."""
    has = rows.has_data & (values is not None)
    keys = [_key(spec) for spec in src.keys]
    writers = f.add_instrument(src.name, keys, has.astype(np.uint64),
                               storage={k.name: _array_storage(k, opts) for k in keys})
    if has.any():
        for spec in src.keys:
            writers[spec.key].append(values[spec.key])


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


def _write_detector(f: FileWriter, module: int, rows: _Rows, opts: _Options,
                    progress) -> str:
    """INSTRUMENT data of one detector module, written train by train; returns the
    source-list entry of its first index group."""
    det = opts.det
    source = det.source(module, corrected=opts.corrected and opts.new_corr_names)
    counts = _detector_counts(rows, opts)
    per_train = rows.has_data.astype(np.int64)
    cells = opts.frames_per_train
    specs = syn.detector_keys(det.name, corrected=opts.corrected, n_cells=cells)
    keys = [Key(name, dtype, tuple(shape)) for name, (dtype, shape) in specs.items()]
    pixel_keys = _PIXEL_KEYS | {det.data_key}
    storage = {k.name: _pixel_storage(opts) if k.name in pixel_keys else _array_storage(k, opts)
               for k in keys}
    groups = dict.fromkeys(k.name.split(".", 1)[0] for k in keys)
    group_counts = {g: counts if (g == "image" or not det.xtdf) else per_train for g in groups}
    writers = f.add_instrument(source, keys, group_counts, storage=storage)
    for tid, n, has in zip(rows.train_ids, counts, rows.has_data, strict=True):
        if has:
            data = syn.detector_module_train(det.name, module, int(tid),
                                             int(n) if det.xtdf else (cells if det.row_holds_cells else 1),
                                             corrected=opts.corrected, seed=opts.seed,
                                             parallel_gain=opts.parallel_gain, dark=opts.dark)
            for key, rows_out in writers.items():
                rows_out.append(data[key])
        progress.update(1)
    if det.xtdf and opts.corrected and opts.new_corr_names:
        f.add_alias(det.legacy_source(module), source)
    return f"INSTRUMENT/{source}/{next(iter(groups))}"


def _write_file(path: Path, agg: _Aggregator, rows: _Rows, sequence: int, opts: _Options,
                state: _ControlState, run_start: Mapping[str, Mapping[str, object]],
                progress) -> None:
    t0 = int(rows.real_time.min()) if len(rows) else syn.TRAIN_EPOCH_NS
    t1 = int(rows.real_time.max()) if len(rows) else t0
    metadata = {"creationDate": _date(t0), "updateDate": _date(t1 + 10**9),
                "daqLibrary": "1.10.4", "karaboFramework": "2.16.2",
                "runType": "Synthetic run", "sample": "lysozyme"}
    suspect_rows = np.flatnonzero(rows.suspect)
    origin = f"CONTROL/{syn.XGM_SOURCE}"
    with FileWriter(path, rows.train_ids, format_version=opts.version, timestamps=rows.index_timestamp,
                    good=~rows.suspect, zero_padding=opts.zero_padding,
                    old_index=opts.old_index, proposal=opts.proposal, run=opts.run,
                    sequence=sequence, metadata=metadata) as f:
        values = syn.slow_trains(rows.train_ids[rows.has_data], seed=opts.seed) \
            if agg.slow else {}
        for src in agg.slow + agg.empty:
            v = values.get(src.name) if src in agg.slow else None
            if src.section == "CONTROL":
                _write_control(f, src, rows, v, run_start.get(src.name, {}), state, opts)
            else:
                _write_instrument(f, src, rows, v, opts)
        if agg.module is None:
            progress.update(len(rows))
        else:
            origin = _write_detector(f, agg.module, rows, opts, progress)
        if agg.run_only:
            for name, run_values in syn.RUN_ONLY_SOURCES.items():
                f.add_run_values(name, run_values, opts.pre_run_time)
        entries = f.source_list
        f.origin = {int(r): origin if origin in entries else entries[-1] for r in suspect_rows}


def _date(ns: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns / 1e9))


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
                 old_index: bool = False, compression: str | None = "facility",
                 pixel_chunk_frames: int = 1,
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
        ``"AGIPD500K"``, ``"LPD1M"``, ``"LPDMINI"``, ``"DSSC1M"``, ``"JUNGFRAU"``, ``"EPIX100"``) or None for
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
        memory cells of JUNGFRAU (1..16); ignored for ePix100 (one frame per train).
    trains_per_sequence
        Trains per sequence file (default: one file per aggregator).
    format_version
        ``"0.5"``, ``"1.0"``, ``"1.1"``, ``"1.2"`` or ``"1.3"``.
    old_index
        Write the old ``first``/``last``/``status`` index (format 0.5 only).
    compression
        ``"facility"`` (default): as the facility stores data, raw pixel data
        uncompressed, corrected pixel data (data, mask, gain) deflated at level 1
        after shuffle, everything else uncompressed.  None: nothing compressed.
        ``"gzip"`` (deflate level 1 with shuffle) or ``"lzf"``: pixel data and
        other array data (rows of 1 KiB or more) compressed so.
    pixel_chunk_frames
        Frames per HDF5 chunk of XTDF pixel data (default 1, as the facility
        writes it); JUNGFRAU pixel chunks always hold one train (one row).
    slow_sources
        Write the slow and instrument sources of :mod:`xfeldata.testing.synthetic`
        (``DA01``: XGM, motors, REMI hits, RUN-only source; ``DA02``: camera
        and digitiser).
    proposal, run, seed
        Proposal and run number in METADATA and file names; content seed.
    missing_module_trains
        ``{module: [train IDs]}`` that this module's files leave out.
    varying_frames
        Vary the frames per train (see :func:`xfeldata.testing.synthetic.train_frame_counts`).
    zero_padding
        Zero rows appended to every INDEX array.
    suspect_train, repeated_train
        Add a bogus out-of-order train ID (flagged suspect from format 1.0),
        or repeat a train ID (see the module docstring).
    empty_source
        Add the sources of :data:`xfeldata.testing.synthetic.EMPTY_SOURCES`, listed but
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
    if compression not in ("facility", None, "gzip", "lzf"):
        raise ValueError("compression must be 'facility', None, 'gzip' or 'lzf', "
                         f"not {compression!r}")
    if pixel_chunk_frames < 1:
        raise ValueError(f"pixel_chunk_frames must be at least 1, not {pixel_chunk_frames}")
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
        if det.row_holds_cells and not 1 <= frames_per_train <= det.max_frames:
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
                    format_version, old_index, compression, pixel_chunk_frames, proposal, run, seed,
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
