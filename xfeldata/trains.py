"""Per-train dicts, the classic API: iterate over trains, fetch one, stack modules.

Each train is ``(train_id, {source: {key: value, ..., "metadata": {...}}})``, the
same shape as a Karabo bridge message (``bridge-protocol.md``), so code written
for the live stream runs on files too.

- Control keys are named as in EXtra-data, ``"<key>.value"`` and
  ``"<key>.timestamp"``, so scripts written for EXtra-data's ``trains()`` run
  unchanged (with ``bridge_names=True``, as the bridge server sends them: the key
  without ``.value`` and no timestamps); the value for the train is unwrapped: a
  number or a (decoded) string for scalars, the row for arrays.
- Instrument keys give the rows of the train, ``(count, *entry)``; a single row
  loses its first dimension unless ``keep_dims=True`` (as in EXtra-data).
- A key whose source has no rows in a train is left out; the source still
  appears with its ``metadata`` (as in EXtra-data), unless ``require_all=True``
  drops the train.
- ``metadata`` holds ``source``, ``timestamp`` (float Unix seconds),
  ``timestamp.sec`` and ``timestamp.frac`` (strings: whole seconds and 18 digits
  of attoseconds) and ``timestamp.tid``, from the file's ``INDEX/timestamp``;
  the timestamps are 0 (``"0"``) where the files do not record one.

Reading is done in blocks: for each key, the rows of many consecutive trains
(up to :data:`BLOCK_BYTES` shared among the selected keys, at least one train)
are read with one call per file and handed out per train as views of that
block.  So keeping one train's array alive keeps its block alive; the arrays of
different trains never overlap.  Uncompressed rows are read with ``pread``
around HDF5 (see :class:`_Rows`), through the descriptor of the handle cache's
open file, and large blocks of different keys (detector modules) are read side by
side on the process's shared reader threads (:func:`~xfeldata.files.pool.run_all`):
the iterating thread opens the datasets and finds where the rows are, the threads
only ``pread``.

Examples
--------
>>> for tid, data in iter_trains(run, devices={"*/DET/*CH0:xtdf": {"image.data"}}):  # doctest: +SKIP
...     modules = stack_detector_data(data, "image.data")         # (frames, 16, 512, 128)
>>> tid, data = train_from_index(run, 100)                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, closing
from itertools import pairwise
from typing import Any

import h5py
import numpy as np

from .detectors.kinds import detector_kind_of_device, group_detector_sources
from .detectors.plan import TrainModules, plan_train_modules
from .errors import DataIndexError, DataReadError, PropertyNameError
from .files.handles import OpenFile, handles
from .files.index import KeyInfo
from .files.plain import layout_of, pread_pieces
from .files.pool import run_all
from .files.strings import decode_str
from .run import RunSelection, SelectionSpec

__all__ = ["iter_trains", "stack_detector_data", "train_from_id", "train_from_index"]

#: Memory that one pass of block reads may use (shared among the selected keys).
BLOCK_BYTES = 64 * 2**20
#: The least memory one key's block may use, however many keys are selected.
MIN_KEY_BLOCK_BYTES = 256 * 2**10
#: The most trains read in one block.
MAX_BLOCK_TRAINS = 512
#: Blocks at least this large are read on the shared reader threads, side by side.
PARALLEL_MIN_BYTES = 256 * 2**10
#: Bytes that may be read in vain to join two trains' rows into one read.
MAX_GAP_BYTES = 2 * 2**20

TrainData = dict[str, dict[str, Any]]


# ----- reading ---------------------------------------------------------------
class _GroupRows:
    """Where the rows of one index group are, for every selected train position."""

    def __init__(self, run: RunSelection, source: str, group: str):
        tids = run.train_ids
        found = run.rows(source, group)
        pos = np.searchsorted(tids, found.train_ids)
        self.file_no = np.full(len(tids), -1, np.int64)
        self.first = np.zeros(len(tids), np.int64)
        self.count = np.zeros(len(tids), np.int64)
        self.file_no[pos] = found.file_no
        self.first[pos] = found.first.astype(np.int64)
        self.count[pos] = found.count.astype(np.int64)


class _KeyReader:
    """Rows of one key for consecutive trains, read a block at a time."""

    def __init__(self, run: RunSelection, source: str, key: str, rows: _GroupRows,
                 unwrap: bool, keep_dims: bool):
        self.run, self.source, self.key, self.rows = run, source, key, rows
        self.unwrap, self.keep_dims = unwrap, keep_dims
        info = run.key_info(source, key)
        self.row_bytes = max(1, int(np.prod(info.entry_shape, dtype=np.int64)) * info.dtype.itemsize)
        n = len(rows.count)
        self.bytes_per_train = self.row_bytes * float(rows.count.sum()) / max(n, 1)
        self.block_trains = 1
        self.start = self.stop = 0
        self.values: list[Any] = []
        self._datasets: dict[int, Any] = {}
        self._damage = [(np.isin(run.train_ids, tids), error) for _, tids, error in run.index_damage(source, key)]

    def get(self, i: int) -> Any:
        """The value of train position ``i`` (None if the train has no rows)."""
        if not self.start <= i < self.stop:
            self.fill(i)
        return self.values[i - self.start]

    def _dataset(self, file_no: int, leases: ExitStack) -> Any:
        """The key's dataset in one file (False if the file lacks the key), its file
        kept open by a lease in ``leases`` until the block is installed."""
        ds = self._datasets.get(file_no)
        if ds is False:
            return ds
        try:
            info = self.run.file_key_info(file_no, self.source, self.key)
        except PropertyNameError:  # this file of the source lacks the key
            self._datasets[file_no] = False
            return False
        fi = self.run.file(file_no)
        path = fi.path
        entry = leases.enter_context(handles.use(path, (fi.size, fi.mtime, fi.inode)))
        if ds is None or ds.entry is not entry:  # new, or the cache reopened the file
            try:  # one reader per dataset and open file, kept for later iterations too
                ds = entry.memo((_Rows, info.path, info.shape), lambda: _Rows(entry, info, path))
            except KeyError:
                handles.forget(path)
                raise OSError(f"{path}: dataset {info.path} ({self.source} {self.key}) "
                              "is missing from the file") from None
            self._datasets[file_no] = ds
        return ds

    def fill(self, i: int) -> None:
        """Read the block of trains starting at position ``i``."""
        block = self.plan(i)
        with block:
            block.fetch()
            self.install(block)

    def install(self, block: _Block) -> None:
        """Make a fetched block the current one."""
        self.start, self.stop, self.values = block.start, block.stop, self._values(block)

    def plan(self, i: int) -> _Block:
        """The reads of the block of trains starting at position ``i``.

        The block holds leases on its files: use it in a ``with`` statement.
        """
        r = self.rows
        b0, b1 = i, min(i + self.block_trains, len(r.count))
        for damaged, error in self._damage:
            if damaged[b0:b1].any():
                raise error
        file_no, first, count = r.file_no[b0:b1], r.first[b0:b1], r.count[b0:b1]
        has = np.flatnonzero(count > 0)
        block = _Block(b0, b1)
        try:
            for fno in np.unique(file_no[has]).tolist():
                ds = self._dataset(fno, block.leases)
                if ds is False:
                    continue
                local = has[file_no[has] == fno]
                for lo, hi, members in _plan_reads(first[local], count[local], self.row_bytes):
                    if hi > ds.nrows:
                        raise DataIndexError(
                            self.run.file(fno).path, self.source, self.key,
                            f"index points to rows {lo}:{hi} but {ds.name} has only {ds.nrows} rows")
                    t = local[members]
                    trains = list(zip(t.tolist(), (first[t] - lo).tolist(), count[t].tolist(), strict=True))
                    block.reads.append(_Read(ds, lo, hi, trains))
        except BaseException:
            block.leases.close()
            raise
        return block

    def _values(self, block: _Block) -> list[Any]:
        """The value of each train of a fetched block (None where a train has no rows)."""
        values: list[Any] = [None] * (block.stop - block.start)
        for read in block.reads:
            buf = read.result()
            if self.unwrap and buf.ndim == 1:  # control scalars: all rows to Python at once
                rows = buf.tolist()
                if buf.dtype.kind in "OS":
                    rows = [decode_str(v) for v in rows]
                for t, offset, _ in read.trains:
                    values[t] = rows[offset]
            else:
                for t, offset, count in read.trains:
                    values[t] = self._value(buf, offset, count)
        return values

    def _value(self, buf: np.ndarray, offset: int, count: int) -> Any:
        if self.unwrap:  # control data: one row per train, an array here
            value = buf[offset]
            return decode_str(value) if value.dtype.kind in "OS" else value
        if count == 1 and not self.keep_dims:
            return buf[offset]
        return buf[offset: offset + count]


class _Read:
    """Rows ``lo:hi`` of one dataset, holding the rows of some trains of a block.

    ``trains`` lists ``(train position in the block, first row - lo, rows)``.
    Where in the file the rows are is found when the read is made (HDF5 calls
    stay in the iterating thread); :meth:`fetch` then only calls ``pread``.
    """

    def __init__(self, rows: _Rows, lo: int, hi: int, trains: list[tuple[int, int, int]]):
        self.rows, self.lo, self.hi, self.trains = rows, lo, hi, trains
        self.pieces = rows.pieces(lo, hi)
        self.buf: np.ndarray | None = None

    def fetch(self) -> None:
        """Read the rows if ``pread`` can (no HDF5 calls: safe in any thread)."""
        if self.pieces is not None:
            self.buf = self.rows.pread(self.lo, self.hi, self.pieces)

    def result(self) -> np.ndarray:
        """The rows, read now through HDF5 unless :meth:`fetch` read them."""
        if self.buf is None:
            try:
                self.buf = self.rows.read_hdf5(self.lo, self.hi)
            except Exception as exc:  # noqa: BLE001 - h5py and HDF5 filters: name what failed
                info = self.rows.info
                raise DataReadError(self.rows.path, info.path, info.source, info.key,
                                    self.lo, self.hi, exc) from exc
        return self.buf


class _Block:
    """The reads of one key for the trains at positions ``start:stop``.

    It holds leases on the files it reads (:meth:`FileHandleCache.use`), so their
    datasets and descriptors stay valid until the ``with`` block using it ends.
    """

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.reads: list[_Read] = []
        self.leases = ExitStack()

    def fetch(self) -> None:
        """Read what ``pread`` can read (safe in any thread)."""
        for read in self.reads:
            read.fetch()

    def __enter__(self) -> _Block:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leases.close()


def _plan_reads(first: np.ndarray, count: np.ndarray,
                row_bytes: int) -> list[tuple[int, int, np.ndarray]]:
    """Join the row ranges of several trains into few reads.

    Ranges are joined when the rows read in vain between them stay below
    :data:`MAX_GAP_BYTES`.  Returns ``(start, stop, entry numbers)`` per read.

    >>> [(lo, hi, e.tolist()) for lo, hi, e in _plan_reads(np.array([0, 2, 100]),
    ...                                                    np.array([2, 2, 1]), 10**6)]
    [(0, 4, [0, 1]), (100, 101, [2])]
    """
    order = np.argsort(first, kind="stable")
    lo = first[order]
    reach = np.maximum.accumulate(lo + count[order])  # the end of the rows read so far
    cuts = (np.flatnonzero(lo[1:] - reach[:-1] > MAX_GAP_BYTES // row_bytes) + 1).tolist()
    bounds = [0, *cuts, len(order)]
    return [(int(lo[a]), int(reach[b - 1]), order[a:b]) for a, b in pairwise(bounds)]


class _Rows:
    """Reads rows of one dataset: with ``pread`` where HDF5 stores them plainly.

    Unfiltered datasets of fixed-size types, contiguous or chunked along rows
    only, hold each row's bytes in one piece of the file
    (:class:`~xfeldata.files.plain.PlainLayout`).  Those rows are read with
    :func:`~xfeldata.files.plain.pread_rows` straight into the result, without
    HDF5's selection machinery and its global lock; everything else goes
    through h5py.  The layout and filters come from the file's index (``info``)
    and the dataset is held by its low-level identifier: opening thousands of
    datasets (every key of every sequence file) costs less that way.
    """

    def __init__(self, entry: OpenFile, info: KeyInfo, path: str):
        self.entry, self.path, self.info = entry, path, info
        self.dsid = h5py.h5d.open(entry.file.id, info.path.encode())  # KeyError if missing
        self.shape, self.dtype = info.shape, info.dtype
        self.nrows = self.shape[0] if self.shape else 0
        self.layout = layout_of(self.dsid, info.shape, info.dtype, info.chunks,
                                info.compression is not None or info.shuffle, entry.userblock)
        if self.layout is None and info.chunks is None:
            # the index knows no chunks (a control key's timestamps are not indexed): ask
            # the dataset itself; pread only if it holds exactly the bytes of info's dtype
            found = entry.plain_layout(info.path)
            row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            if found is not None and found.dtype == self.dtype and found.row_bytes == row_bytes \
                    and found.nrows == self.nrows:
                self.layout = found

    @property
    def name(self) -> str:
        """The dataset's path in its file."""
        return h5py.h5i.get_name(self.dsid).decode()

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as a new array."""
        pieces = self.pieces(lo, hi)
        out = self.pread(lo, hi, pieces) if pieces is not None else None
        return self.read_hdf5(lo, hi) if out is None else out

    def read_hdf5(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as a new array, read through HDF5."""
        ds = h5py.Dataset(self.dsid)
        if self.dtype.hasobject or hi == lo:
            return ds[lo:hi]
        out = np.empty((hi - lo, *self.shape[1:]), self.dtype)
        ds.read_direct(out, np.s_[lo:hi])
        return out

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int, int]] | None:
        """Where rows ``lo:hi`` are (see :meth:`PlainLayout.pieces`); None if HDF5
        must read them.  Asks HDF5 (under its lock) for chunk offsets not seen yet,
        so call it in the iterating thread."""
        if self.layout is None or hi == lo:
            return None
        return self.layout.pieces(lo, hi)

    def pread(self, lo: int, hi: int, pieces: list[tuple[int, int, int]]) -> np.ndarray | None:
        """Rows ``lo:hi`` read at ``pieces`` with ``pread`` (no HDF5 calls); None if the file is short."""
        out = np.empty((hi - lo, *self.shape[1:]), self.dtype)
        # the block's lease keeps the entry's file open, its descriptor valid
        if self.entry.fd is None or not pread_pieces(self.entry.fd, pieces, out):  # not sec2
            return None
        return out


def _metadata(source: str, tid: int, ns: int) -> dict[str, Any]:
    sec, rest = divmod(ns, 10**9)
    return {"source": source, "timestamp": ns / 1e9, "timestamp.sec": str(sec),
            "timestamp.frac": f"{rest * 10**9:018d}", "timestamp.tid": tid}


def _require_all(run: RunSelection) -> RunSelection:
    """Only the trains where every selected source has rows in every index group it uses."""
    keep = np.ones(len(run.train_ids), bool)
    for source in run.sources:
        groups = {run.key_info(source, k).group for k in run.keys(source)} or {""}
        for group in groups:
            keep &= _GroupRows(run, source, group).count > 0
    return run.isel(trainId=keep) if not keep.all() else run


def iter_trains(run: RunSelection, devices: SelectionSpec | None = None, train_range: Any = None,
                require_all: bool = False, keep_dims: bool = False,
                bridge_names: bool = False) -> TrainIterator:
    """Iterate over the selected trains as ``(train_id, {source: {key: value}})``.

    Parameters
    ----------
    run
        The run or selection to read.
    devices
        Sources and keys to read, anything :meth:`RunSelection.select` accepts: a
        source glob, ``{source: {keys}}`` (an empty set means all keys), or a list
        of ``(source, key)`` pairs.  Default: everything selected in ``run``.
    train_range
        Trains to read: ``by_id[...]`` (train IDs, slices inclusive as in
        ``run.sel``), ``by_index[...]`` or a slice (positions in the selection).
    require_all
        Skip trains in which any selected source (in any index group of the
        selected keys) has no data.
    keep_dims
        Keep the first dimension of instrument data with one row in a train.
    bridge_names
        Name control keys as bridge messages do (``"<key>"``, no timestamps)
        instead of EXtra-data's ``"<key>.value"`` and ``"<key>.timestamp"``.

    Returns
    -------
    TrainIterator
        Of ``(train_id, {source: {key: value, "metadata": {...}}})`` (see the module
        docstring); ``len()`` gives the number of trains, so ``tqdm`` shows progress.

    Raises
    ------
    DataIndexError
        When a file's index points past the end of a key's data (on reaching it).

    Examples
    --------
    >>> for tid, data in iter_trains(run, devices="SA1_XTD2_XGM/DOOCS/MAIN"):   # doctest: +SKIP
    ...     print(tid, data["SA1_XTD2_XGM/DOOCS/MAIN"]["beamPosition.ixPos.value"])
    """
    if devices is not None:
        run = run.select(devices)
    if train_range is not None:
        run = _select_trains(run, train_range)
    if require_all:
        run = _require_all(run)
    tids = run.train_ids.tolist()
    timestamps = run.train_timestamps_ns().tolist()
    readers: list[tuple[str, list[tuple[str, _KeyReader]]]] = []
    group_rows: dict[tuple[str, str], _GroupRows] = {}
    control_sources = set(run.control_sources)
    for source in run.sources:
        control = source in control_sources
        key_readers = []
        values = run.keys(source)
        timestamp_keys = sorted(set(run.keys(source, timestamps=True)) - set(values)) if (
            control and not bridge_names) else []
        for key in values + timestamp_keys:
            group = run.key_info(source, key).group
            rows = group_rows.get((source, group))
            if rows is None:
                rows = group_rows[source, group] = _GroupRows(run, source, group)
            name = f"{key}.value" if control and not bridge_names and key in values else key
            key_readers.append((name, _KeyReader(run, source, key, rows, control, keep_dims)))
        readers.append((source, key_readers))
    all_readers = [kr for _, krs in readers for _, kr in krs]
    _size_blocks(all_readers)
    return TrainIterator(_generate(readers, tids, timestamps), len(tids))


class TrainIterator(Iterator[tuple[int, TrainData]]):
    """The trains :func:`iter_trains` yields, with ``len()`` (the trains still to come at the start).

    Examples
    --------
    >>> from tqdm import tqdm
    >>> for tid, data in tqdm(run.trains()):    # doctest: +SKIP
    ...     pass
    """

    def __init__(self, trains: Iterator[tuple[int, TrainData]], n_trains: int):
        self._trains, self._n = trains, n_trains

    def __next__(self) -> tuple[int, TrainData]:
        return next(self._trains)

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        """Stop reading (releases the thread pool and open blocks)."""
        close = getattr(self._trains, "close", None)
        if close is not None:
            close()


def _select_trains(run: RunSelection, train_range: Any) -> RunSelection:
    """``train_range`` of :func:`iter_trains` applied to ``run``."""
    by = getattr(train_range, "by", None)
    if by == "id":
        return run.sel(trainId=train_range.value)
    if by == "index":
        return run.isel(trainId=train_range.value)
    if isinstance(train_range, slice):
        return run.isel(trainId=train_range)
    raise TypeError(f"train_range must be by_id[...], by_index[...] or a slice, not {train_range!r}")


def _generate(readers: list[tuple[str, list[tuple[str, _KeyReader]]]], tids: list[int],
              timestamps: list[int]) -> Iterator[tuple[int, TrainData]]:
    big = [r for _, krs in readers for _, r in krs
           if r.bytes_per_train * r.block_trains >= PARALLEL_MIN_BYTES]
    for i, tid in enumerate(tids):
        _fill_side_by_side([r for r in big if not r.start <= i < r.stop], i)
        yield tid, _assemble(readers, i, tid, timestamps[i])


def _fill_side_by_side(readers: list[_KeyReader], i: int) -> None:
    """Read the blocks of several keys starting at train position ``i`` on the shared reader threads.

    The reads are planned here (HDF5 calls stay in this thread); the threads only ``pread``.
    """
    if len(readers) < 2:
        return
    with ExitStack() as stack:
        blocks = [stack.enter_context(r.plan(i)) for r in readers]
        run_all(lambda block: block.fetch(), blocks)
        for r, block in zip(readers, blocks, strict=True):
            r.install(block)


def _assemble(readers: list[tuple[str, list[tuple[str, _KeyReader]]]], i: int, tid: int,
              ns: int) -> TrainData:
    """The dict of train position ``i`` from the key readers."""
    train: TrainData = {}
    for source, key_readers in readers:
        data: dict[str, Any] = {}
        for key, reader in key_readers:
            value = reader.get(i)
            if value is not None:
                data[key] = value
        data["metadata"] = _metadata(source, tid, ns)
        train[source] = data
    return train


def _size_blocks(readers: list[_KeyReader]) -> None:
    """Share :data:`BLOCK_BYTES` among the key readers: trains per block for each."""
    if not readers:
        return
    per_key = max(MIN_KEY_BLOCK_BYTES, BLOCK_BYTES // len(readers))
    for r in readers:
        r.block_trains = int(np.clip(per_key // max(r.bytes_per_train, 1.0), 1, MAX_BLOCK_TRAINS))


def train_from_id(run: RunSelection, train_id: int, devices: SelectionSpec | None = None,
                  keep_dims: bool = False) -> tuple[int, TrainData]:
    """The data of one train, by train ID.

    Parameters
    ----------
    run
        The run or selection to read.
    train_id
        The train ID.
    devices
        Sources and keys to read (see :func:`iter_trains`).
    keep_dims
        Keep the first dimension of instrument data with one row in the train.

    Returns
    -------
    (train_id, data)
        As :func:`iter_trains` yields them.

    Raises
    ------
    TrainIdError
        (a ``KeyError``) if the train is not in the selection.

    Examples
    --------
    >>> tid, data = train_from_id(run, 1541486130)     # doctest: +SKIP
    """
    one = run.sel(trainId=int(train_id))
    with closing(iter_trains(one, devices=devices, keep_dims=keep_dims)) as trains:
        return next(trains)


def train_from_index(run: RunSelection, index: int, devices: SelectionSpec | None = None,
                     keep_dims: bool = False) -> tuple[int, TrainData]:
    """The data of the ``index``-th selected train (negative counts from the end).

    Raises
    ------
    IndexError
        If ``index`` is out of range.

    Examples
    --------
    >>> devs = {"SPB_DET_AGIPD1M-1/DET/5CH0:xtdf": {"image.data", "image.gain"}}
    >>> tid, data = train_from_index(run, 12, devices=devs)   # doctest: +SKIP
    """
    one = run.isel(trainId=int(index))
    with closing(iter_trains(one, devices=devices, keep_dims=keep_dims)) as trains:
        return next(trains)


# ----- stacking detector modules ----------------------------------------------
def stack_detector_data(
    train: Mapping[str, Mapping[str, Any]], key: str, axis: int = -3,
    modules: int | None = None, fill_value: Any = None, real_array: bool = True,
    *, device: str | None = None,
) -> np.ndarray | StackView:
    """Stack the modules of a multi-module detector from one train's data.

    The detector's module sources (``.../DET/<n>CH0:xtdf``, ``.../CORR/<n>CH0:output``,
    ``.../DET/JNGFR<nn>:daqOutput``) are found by name; other sources in
    ``train`` are ignored.  Semantics follow EXtra-data's function of the same name.

    Parameters
    ----------
    train
        ``{source: {key: array}}``, as :func:`iter_trains` yields it.
    key
        The key to stack, e.g. ``"image.data"``.
    axis
        Where the new module axis goes in the result (default -3: corrected
        ``(frames, 512, 128)`` modules give ``(frames, modules, 512, 128)``;
        note that raw AGIPD ``(frames, 2, 512, 128)`` gives
        ``(frames, 2, modules, 512, 128)`` with this default, as in EXtra-data,
        and ``axis=1`` gives ``(frames, modules, 2, 512, 128)``).
    modules
        Number of modules; by default that of the detector kind named in the
        source (16 for AGIPD-1M, LPD-1M, DSSC-1M; 8 for AGIPD-500K and JUNGFRAU),
        else 16.  JUNGFRAU modules, numbered from 1, go to positions 0, 1, ...
    fill_value
        Value of missing modules: default NaN for floats, 0 for integers
        (:func:`xfeldata.fill.default_fill_value`, as in EXtra-data), False for bools.
    real_array
        Return a NumPy array (default).  False returns a :class:`StackView` that
        copies nothing (enough for assembling images module by module).
    device
        The detector device (``SPB_DET_AGIPD1M-1``) when the train holds several.

    Returns
    -------
    numpy.ndarray or StackView

    Raises
    ------
    ValueError
        If the train has no module with ``key``, modules of several detectors
        (and no ``device``), modules whose shapes or dtypes differ, a module
        number out of range, or a fill value the dtype cannot hold.

    Examples
    --------
    >>> tid, data = train_from_index(run, 0)                        # doctest: +SKIP
    >>> stack_detector_data(data, "image.data").shape               # doctest: +SKIP
    (64, 16, 512, 128)
    """
    found = {dev: mods for dev, mods in group_detector_sources(train).items()
             if device is None or dev == device}
    if not found:
        what = f"of {device} " if device else ""
        raise ValueError(f"no detector module sources {what}in this train "
                         f"(sources: {', '.join(sorted(train)) or 'none'})")
    if len(found) > 1:
        raise ValueError(f"modules of several detectors in this train ({', '.join(sorted(found))}); "
                         "pass device= or select one")
    (dev, mods), = found.items()
    values = {m: (source, train[source].get(key)) for m, source in mods.items()}
    placed = plan_train_modules(dev, detector_kind_of_device(dev), values, key, modules, fill_value)
    if not placed.arrays:
        raise ValueError(f"no module of {dev} has frames of {key!r} in this train")
    view = StackView(placed, axis)
    return view.asarray() if real_array else view


class StackView:
    """Detector modules side by side without copying them (``real_array=False``).

    Index it with one module (``view[:, 3]`` for the default axis) or all
    modules (``view[:, :]``, the same as :meth:`asarray`).

    Attributes
    ----------
    shape, dtype, ndim
        As those of the stacked array.
    modules
        ``{position: array}`` of the modules present.
    """

    def __init__(self, placed: TrainModules, axis: int = -3):
        self.placed = placed
        self.modules = placed.arrays
        self.n_modules = len(placed.numbers)
        self.dtype = placed.dtype
        self.fill_value = placed.fill_value
        self.axis = placed.module_axis(axis)
        self.module_shape = placed.shape
        self.shape = placed.stacked_shape(self.axis)
        self.ndim = len(self.shape)

    def __repr__(self) -> str:
        return (f"<StackView shape={self.shape} dtype={self.dtype} "
                f"{len(self.modules)}/{self.n_modules} modules>")

    def asarray(self) -> np.ndarray:
        """Copy the modules into one array (missing ones filled)."""
        return self.placed.stack(self.axis)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.asarray()
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (self.ndim - len(index) + 1) + index[at + 1:]
        index = index + (slice(None),) * (self.ndim - len(index))
        module, rest = index[self.axis], index[: self.axis] + index[self.axis + 1:]
        if isinstance(module, int | np.integer):
            i = int(module) % self.n_modules
            if i in self.modules:
                return self.modules[i][rest]
            return np.full(self.module_shape, self.fill_value, self.dtype)[rest]
        return self.asarray()[index]
