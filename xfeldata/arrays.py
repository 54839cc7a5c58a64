"""Dask arrays over HDF5 rows, built from plain, picklable read tasks.

A :class:`BlockRead` describes one dask chunk: its shape, dtype, fill value and
the row ranges of HDF5 datasets that go into it (:class:`RowRead`).  Tasks name
files by path and open them where they run through the per-process handle
cache, so the same graph computes on threads, processes or a distributed
cluster.  Chunks are whole multiples of the HDF5 chunks where the selection
allows, end at file boundaries, and aim at :data:`TARGET_CHUNK_BYTES`.

Examples
--------
>>> arr = rows_array(run, "SA1_XTD2_XGM/DOOCS/MAIN:output", "data.intensityTD")  # doctest: +SKIP
>>> arr.data          # doctest: +SKIP
dask.array<...>
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import groupby, product
from typing import Any

import dask.array as da
import numpy as np
from dask.array.core import finalize, getter
from dask.base import get_scheduler, is_dask_collection, tokenize
from dask.local import get_sync
from dask.threaded import get as get_threaded

from .errors import DataIndexError, DataReadError, FileChangedError
from .files.direct import read_rows_into
from .files.handles import FileStamp, OpenFile, handles
from .files.index import FileIndex, KeyInfo
from .files.plain import PlainLayout, pread_rows, pread_rows_to_buffers
from .files.pool import run_all
from .fill import default_fill_value
from .into import tiled_base
from .run import RunSelection, TrainMap, positions_within

#: Keys with at most this many bytes in the selection are small: one block across
#: files (for slow data, dask's per-chunk overhead costs more than the reads), and
#: ``run[source, key]`` gives them without dask, lazily indexed numpy
#: (:func:`xfeldata.views.key_array`): nothing is read before the values are used.
SMALL_KEY_BYTES = 16 * 2**20
#: Size that dask chunks aim at: large enough that per-task overhead stays small.
TARGET_CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class RowRead:
    """Rows ``start:stop`` of one dataset, and where they go in the block.

    ``target`` is either the first row of the block (as ``(-1, *entry)``) that
    the rows fill contiguously, or an array of block rows, one per dataset row.
    ``stamp`` is the file's size, mtime and inode when it was indexed: a file
    that no longer matches is not read (None: not checked).
    """

    path: str
    dataset: str
    source: str
    key: str
    start: int
    stop: int
    target: int | np.ndarray
    stamp: FileStamp | None = None

    def __dask_tokenize__(self) -> tuple:
        target = self.target if isinstance(self.target, int) else tokenize(self.target)
        return (self.path, self.dataset, self.start, self.stop, target)


@dataclass(frozen=True)
class BlockRead:
    """A picklable description of one dask chunk.

    Attributes
    ----------
    shape, dtype
        The chunk.
    entry_ndim
        Trailing dimensions that belong to one dataset row.
    fill_value
        Value of the cells no read fills (None when the reads cover the chunk).
    reads
        The row ranges to read.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    entry_ndim: int
    fill_value: Any
    reads: tuple[RowRead, ...]

    def __dask_tokenize__(self) -> tuple:
        return ("xfeldata.BlockRead", self.shape, str(self.dtype), self.entry_ndim, self.fill_value,
                tuple(r.__dask_tokenize__() for r in self.reads))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read the part of the block that ``key`` selects (numpy indexing).

        The dask graph holds ``getter(block, index)`` tasks, so dask's optimiser
        fuses later slicing (``.sel``, ``.isel``) into the index and only the
        selected rows are read.  Keys of ints, slices and one increasing 1-d
        integer or boolean array restrict the reads; anything else reads the
        whole block and indexes it.
        """
        parts = _grid_and_entry_key(key, self.shape, self.entry_ndim)
        if parts is None:
            return execute_block(self)[key]
        grid_key, entry_key = parts
        sub = self.restrict(grid_key)
        out = execute_block(sub)
        drop = tuple(0 if isinstance(k, int) else slice(None) for k in grid_key)
        return out[drop + entry_key]

    def restrict(self, grid_key: tuple) -> BlockRead:
        """The block of the cells that ``grid_key`` (ints, slices, increasing index
        arrays on the leading, non-entry axes) selects; int axes are kept with length 1."""
        grid_shape = self.shape[: self.ndim - self.entry_ndim]
        picked = [np.atleast_1d(np.arange(n)[k]) for n, k in zip(grid_shape, grid_key, strict=True)]
        box = tuple(len(p) for p in picked)
        if all(np.array_equal(p, np.arange(n)) for p, n in zip(picked, grid_shape, strict=True)):
            return self
        new_pos = []
        for n, p in zip(grid_shape, picked, strict=True):
            pos = np.full(n, -1, np.int64)
            pos[p] = np.arange(len(p))
            new_pos.append(pos)
        read_no, row, cell = _cells_of(self.reads)
        coords = [pos[c] for pos, c in zip(new_pos, np.unravel_index(cell, grid_shape), strict=True)]
        keep = np.logical_and.reduce([c >= 0 for c in coords]) if coords else np.ones(len(cell), bool)
        new_cell = np.ravel_multi_index([c[keep] for c in coords], box) if len(box) else cell[keep]
        read_no, row = read_no[keep], row[keep]
        reads = []
        for i, j in zip(*contiguous_runs(read_no, row, new_cell), strict=True):
            r = self.reads[int(read_no[i])]
            reads.append(replace(r, start=int(row[i]), stop=int(row[j]) + 1, target=int(new_cell[i])))
        covered = len(row) == int(np.prod(box))
        return BlockRead((*box, *self.shape[self.ndim - self.entry_ndim:]), self.dtype, self.entry_ndim,
                         None if covered else self.fill_value, tuple(reads))


def _grid_and_entry_key(key: Any, shape: tuple[int, ...], entry_ndim: int) -> tuple[tuple, tuple] | None:
    """Split a numpy index into its part on the grid (leading) axes and on the entry axes.

    None for keys that :meth:`BlockRead.restrict` cannot apply (new axes, lone
    bools, several, unsorted, repeating or out-of-range index arrays, an index
    array with integers, multi-dimensional arrays).
    """
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None for k in key) or sum(k is Ellipsis for k in key) > 1:
        return None
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - len(key) + 1) + key[at + 1:]
    if len(key) > len(shape):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    arrays = 0
    normal = []
    for k, n in zip(key, shape, strict=False):
        if isinstance(k, bool | np.bool_):
            return None  # numpy reads a lone bool as a new axis
        if isinstance(k, int | np.integer):
            normal.append(int(k))
        elif isinstance(k, slice):
            normal.append(k)
        else:
            a = np.asarray(k)
            if a.ndim != 1 or a.dtype.kind not in "iub":
                return None
            if a.dtype.kind != "b":
                if len(a) and (a.min() < -n or a.max() >= n):
                    return None  # let numpy raise its IndexError
                a = np.where(a < 0, a + n, a)
                if len(a) > 1 and not (np.diff(a) > 0).all():
                    return None
            arrays += 1
            normal.append(a)
    if arrays > 1 or (arrays and not _outer_like(normal)):
        return None  # numpy would move the broadcast axes: leave it to numpy
    split = len(shape) - entry_ndim
    return tuple(normal[:split]), tuple(normal[split:])


def _outer_like(normal: list) -> bool:
    """Whether numpy indexes with ``normal`` (ints, slices and one index array) as outer
    indexing does: the array's axis stays where it is, which numpy does unless ints
    and the array are apart and a slice comes before the array (it then moves the
    array's axis to the front).

    >>> _outer_like([np.arange(2), slice(None), 3]), _outer_like([slice(None), np.arange(2), 3])
    (True, True)
    >>> _outer_like([slice(None), np.arange(2), slice(None), 3])
    False
    """
    at = next(i for i, k in enumerate(normal) if isinstance(k, np.ndarray))
    advanced = [i for i, k in enumerate(normal) if isinstance(k, int)] + [at]
    together = max(advanced) - min(advanced) + 1 == len(advanced)
    return together or all(isinstance(k, int) for k in normal[:at])


def _cells_of(reads: Sequence[RowRead]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per dataset row of the reads: the read's number, the row and the block cell it fills."""
    counts = np.array([r.stop - r.start for r in reads], np.int64)
    read_no = np.repeat(np.arange(len(reads)), counts)
    within = positions_within(counts)
    starts = np.array([r.start for r in reads], np.int64)
    row = np.repeat(starts, counts) + within
    cell = np.concatenate([r.target + np.arange(r.stop - r.start) if isinstance(r.target, int)
                           else np.asarray(r.target, np.int64) for r in reads] or [np.zeros(0, np.int64)])
    return read_no, row, cell.astype(np.int64)


def contiguous_runs(group: np.ndarray, row: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of each run of entries in the same ``group`` whose dataset
    ``row`` and block ``cell`` both go up by one: each run is one contiguous read.

    >>> first, last = contiguous_runs(np.array([0, 0, 0, 1]), np.array([4, 5, 7, 8]), np.array([0, 1, 2, 3]))
    >>> first.tolist(), last.tolist()
    ([0, 2, 3], [1, 2, 3])
    """
    cut = np.ones(len(row), bool)
    if len(row) > 1:
        cut[1:] = (row[1:] != row[:-1] + 1) | (cell[1:] != cell[:-1] + 1) | (group[1:] != group[:-1])
    first = np.flatnonzero(cut)
    last = np.append(first[1:], len(row)) - 1 if len(first) else first
    return first, last


def execute_block(block: BlockRead, out: np.ndarray | None = None) -> np.ndarray:
    """Read one block (the function dask calls for each chunk).

    Parameters
    ----------
    out
        Where to read to (the block's shape and dtype), e.g. a view of a larger
        array; each entry (trailing ``entry_ndim`` axes) must be C-contiguous.
        Default: a new array.

    Raises
    ------
    DataIndexError
        If the file's index points past the end of the dataset.
    FileChangedError
        If a file is no longer the one indexed (replaced, truncated, rewritten).
    DataReadError
        Naming file, dataset, source, key and rows if reading the rows failed
        (e.g. a corrupt compressed chunk).
    OSError
        Naming the file if it vanished or became unreadable since opening.
    """
    if out is None:
        out = np.empty(block.shape, block.dtype) if block.fill_value is None \
            else np.full(block.shape, block.fill_value, block.dtype)
    elif block.fill_value is not None:
        out[...] = block.fill_value
    grid_shape = block.shape[: block.ndim - block.entry_ndim]
    flat = out.reshape((-1, *block.shape[len(grid_shape):])) if out.flags.c_contiguous else None
    decoded: dict = {}  # the last partly used compressed chunk, decoded once
    for (path, stamp), reads in groupby(block.reads, key=lambda r: (r.path, r.stamp)):
        with handles.use(path, stamp) as opened:
            for read in reads:
                try:
                    if flat is not None:
                        _read_rows(opened, read, flat, decoded)
                    else:
                        _read_rows_strided(opened, read, out, grid_shape, decoded)
                except (DataIndexError, FileChangedError, DataReadError):
                    raise
                except Exception as exc:  # noqa: BLE001 - h5py, HDF5 filters, libdeflate, zlib
                    raise DataReadError(read.path, read.dataset, read.source, read.key,
                                        read.start, read.stop, exc) from exc
    return out


def file_stamp(fi: FileIndex) -> FileStamp:
    """The :data:`~xfeldata.files.handles.FileStamp` a file had when it was indexed."""
    return fi.size, fi.mtime, fi.inode


def _locate(opened: OpenFile, read: RowRead) -> tuple[PlainLayout | None, Any]:
    """The read's plain layout (or None) and its h5py dataset (None when plain),
    checking that the dataset exists and holds the rows."""
    try:
        layout = opened.plain_layout(read.dataset)
        ds = opened.file[read.dataset] if layout is None else None
    except KeyError:
        handles.forget(read.path)
        raise OSError(f"{read.path}: dataset {read.dataset} ({read.source} {read.key}) "
                      "is missing from the file") from None
    nrows = layout.nrows if layout is not None else ds.shape[0]
    if not 0 <= read.start <= read.stop <= nrows:
        raise DataIndexError(read.path, read.source, read.key,
                             f"index points to rows {read.start}:{read.stop} but the dataset "
                             f"{read.dataset} has only {nrows} rows")
    return layout, ds


def _read_rows(opened: OpenFile, read: RowRead, flat: np.ndarray, decoded: dict) -> None:
    """One :class:`RowRead` into the block ``flat`` (rows, *entry)."""
    layout, ds = _locate(opened, read)
    n = read.stop - read.start
    if n == 0:
        return
    if not isinstance(read.target, int):
        ds = opened.file[read.dataset] if ds is None else ds
        flat[read.target] = ds[read.start: read.stop]
        return
    dest = flat[read.target: read.target + n]
    if layout is not None and opened.fd is not None \
            and pread_rows(opened.fd, layout, read.start, read.stop, dest):
        return
    _read_through_hdf5(opened.file[read.dataset] if ds is None else ds, read, dest, decoded)


def _read_through_hdf5(ds: Any, read: RowRead, dest: np.ndarray, decoded: dict) -> None:
    """Rows of ``read`` into ``dest`` (contiguous) with raw chunk reads or h5py."""
    dest = dest.reshape((read.stop - read.start, *ds.shape[1:]))  # blocks may drop length-1 axes
    if dest.dtype == ds.dtype and dest.flags.c_contiguous and ds.dtype.kind != "O":
        read_rows_into(ds, read.start, read.stop, dest, decoded)
    else:
        dest[...] = ds[read.start: read.stop]


def _read_rows_strided(opened: OpenFile, read: RowRead, out: np.ndarray,
                       grid_shape: tuple[int, ...], decoded: dict) -> None:
    """One :class:`RowRead` into a block-shaped ``out`` that is not contiguous (a view
    of a larger array): each row goes to its own entry of ``out``."""
    layout, ds = _locate(opened, read)
    n = read.stop - read.start
    if n == 0:
        return
    cells = read.target + np.arange(n) if isinstance(read.target, int) else np.asarray(read.target)
    coords = np.unravel_index(cells, grid_shape)
    if layout is not None and opened.fd is not None and out.dtype == layout.dtype:
        buffers = _entry_buffers(out, coords)
        if buffers is not None and pread_rows_to_buffers(opened.fd, layout, read.start, read.stop, buffers):
            return
    frames = [out[index] for index in zip(*(c.tolist() for c in coords), strict=True)]
    ds = opened.file[read.dataset] if ds is None else ds
    if out.dtype == ds.dtype and ds.dtype.kind != "O" and all(f.flags.c_contiguous for f in frames):
        read_rows_into(ds, read.start, read.stop, frames, decoded)  # decoded into place
        return
    rows = np.empty((n, *out.shape[len(grid_shape):]), out.dtype)
    _read_through_hdf5(ds, replace(read, target=0), rows, decoded)
    out[coords] = rows


def _entry_buffers(out: np.ndarray, coords: tuple[np.ndarray, ...]) -> list[memoryview] | None:
    """Writable byte buffers of the entries of ``out`` at grid ``coords`` (leading axes),
    as slices of one memoryview of the C-contiguous array ``out`` is a view of;
    None if ``out``'s entries are not contiguous or it is not such a view."""
    root = out
    while isinstance(root.base, np.ndarray):
        root = root.base
    entry = out.shape[len(coords):]
    entry_strides, step = [], out.itemsize
    for d in reversed(entry):
        entry_strides.insert(0, step)
        step *= d
    if not root.flags.c_contiguous or root.dtype.hasobject or not root.flags.writeable \
            or any(d > 1 and s != e for d, s, e in zip(entry, out.strides[len(coords):], entry_strides,
                                                       strict=True)):
        return None
    at = out.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    offsets = np.atleast_1d(at + sum(c.astype(np.int64) * s for c, s in zip(coords, out.strides, strict=False)))
    flat = memoryview(root.reshape(-1).view(np.uint8))
    if len(offsets) and (offsets.min() < 0 or offsets.max() + step > len(flat)):
        return None
    return [flat[o: o + step] for o in offsets.tolist()]


def chunk_rows(info: KeyInfo, target_bytes: int = TARGET_CHUNK_BYTES) -> int:
    """Rows per dask chunk: a whole multiple of the HDF5 chunk rows near ``target_bytes``."""
    row_bytes = max(1, int(np.prod(info.entry_shape, dtype=np.int64)) * info.dtype.itemsize)
    hdf5_rows = info.chunks[0] if info.chunks else 1
    multiples = max(1, target_bytes // (row_bytes * hdf5_rows))
    return int(hdf5_rows * multiples)


def plan_ranges(ranges: Sequence[tuple[int, int]], rows_per_chunk: int,
                align: int) -> list[list[tuple[int, int]]]:
    """Cut row ranges of one file into chunks of at most ``rows_per_chunk`` rows.

    Cuts inside a range fall on multiples of ``align`` (the HDF5 chunk rows) where
    possible, so each dask chunk reads whole HDF5 chunks.

    >>> plan_ranges([(0, 10)], 4, 2)
    [[(0, 4)], [(4, 8)], [(8, 10)]]
    >>> plan_ranges([(0, 2), (5, 6)], 4, 1)
    [[(0, 2), (5, 6)]]
    """
    chunks: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    used = 0
    for start, stop in ranges:
        while start < stop:
            end = min(stop, start + rows_per_chunk - used)
            if end < stop:
                aligned = (end // align) * align
                if aligned > start:
                    end = aligned
                elif used:
                    chunks.append(current)
                    current, used = [], 0
                    continue
            current.append((start, end))
            used += end - start
            start = end
            if used >= rows_per_chunk or end < stop:
                chunks.append(current)
                current, used = [], 0
    if current:
        chunks.append(current)
    return chunks


def _contiguous_ranges(first: np.ndarray, count: np.ndarray) -> list[tuple[int, int]]:
    """Merge per-train row ranges that follow each other into longer ranges."""
    keep = count > 0
    first, count = first[keep].astype(np.int64), count[keep].astype(np.int64)
    if not len(first):
        return []
    stops = first + count
    breaks = np.flatnonzero(first[1:] != stops[:-1]) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(first)]])
    return list(zip(first[starts].tolist(), stops[ends - 1].tolist(), strict=True))


def flat_rows_array(run: RunSelection, source: str, key: str,
                    target_bytes: int = TARGET_CHUNK_BYTES,
                    planned: tuple[list[BlockRead], TrainMap] | None = None) -> tuple[da.Array, TrainMap]:
    """All rows of a key for the selected trains, concatenated in train order.

    ``planned`` is what :func:`flat_rows_blocks` gave for the same arguments, if
    already at hand.

    Returns
    -------
    array
        Dask array ``(rows, *entry_shape)``.
    found
        The selected trains that list the source, with their row counts (zeros
        included); the rows of each train follow those of the trains before it.
    """
    source = run.resolve_source(source)
    info = run.key_info(source, key)
    blocks, found = planned or flat_rows_blocks(run, source, key, target_bytes)
    name = "xfeldata-rows-" + tokenize(source, key, found.train_ids, found.file_no,
                                       found.first, found.count, target_bytes,
                                       [fi.path for fi in run.file_indexes])
    return _blocks_to_array(name, blocks, info.entry_shape, info.dtype), found


def flat_rows_blocks(run: RunSelection, source: str, key: str,
                     target_bytes: int = TARGET_CHUNK_BYTES,
                     found: TrainMap | None = None) -> tuple[list[BlockRead], TrainMap]:
    """The blocks of :func:`flat_rows_array` (same parameters and ``found``; pass
    ``found``, ``run.rows(source, group)`` of the key's group, if at hand)."""
    source = run.resolve_source(source)
    info = run.key_info(source, key)
    run.check_index(source, key)
    found = run.rows(source, info.group) if found is None else found
    blocks: list[BlockRead] = []
    file_no = found.file_no
    change = np.flatnonzero(np.diff(file_no)) + 1
    for seg_start, seg_stop in zip(np.r_[0, change], np.r_[change, len(file_no)], strict=True):
        if seg_start == seg_stop:
            continue
        fno = int(file_no[seg_start])
        finfo = run.file_key_info(fno, source, key)
        path, stamp = run.file(fno).path, file_stamp(run.file(fno))
        ranges = _contiguous_ranges(found.first[seg_start:seg_stop], found.count[seg_start:seg_stop])
        align = finfo.chunks[0] if finfo.chunks else 1
        for chunk in plan_ranges(ranges, chunk_rows(finfo, target_bytes), align):
            reads, offset = [], 0
            for start, stop in chunk:
                reads.append(RowRead(path, finfo.path, source, info.key, start, stop, offset, stamp))
                offset += stop - start
            blocks.append(BlockRead((offset, *info.entry_shape), info.dtype, len(info.entry_shape),
                                    None, tuple(reads)))
    if len(blocks) > 1 and sum(int(np.prod(b.shape)) for b in blocks) * info.dtype.itemsize \
            <= SMALL_KEY_BYTES:
        blocks = [_joined(blocks)]
    return blocks, found


def small_block(blocks: Sequence[BlockRead]) -> BlockRead | None:
    """The one block of a key of :data:`SMALL_KEY_BYTES` or less (from :func:`flat_rows_blocks`), else None."""
    if len(blocks) != 1 or int(np.prod(blocks[0].shape)) * blocks[0].dtype.itemsize > SMALL_KEY_BYTES:
        return None
    return blocks[0]


def _joined(blocks: Sequence[BlockRead]) -> BlockRead:
    """Row blocks one after another as one block (their reads may span several files)."""
    reads, offset = [], 0
    for block in blocks:
        reads += [replace(r, target=offset + r.target) for r in block.reads]
        offset += block.shape[0]
    first = blocks[0]
    return BlockRead((offset, *first.shape[1:]), first.dtype, first.entry_ndim, None, tuple(reads))


def _stacked_rows(blocks: list[BlockRead], inner_shape: tuple[int, ...]
                  ) -> tuple[dict[tuple[int, ...], BlockRead], tuple[tuple[int, ...], ...]]:
    """Blocks one after another along the first axis, as block indices and chunks;
    ``inner_shape`` is every block's shape but the first."""
    chunks = (tuple(b.shape[0] for b in blocks), *((d,) for d in inner_shape))
    return {(i, *([0] * len(inner_shape))): b for i, b in enumerate(blocks)}, chunks


def _blocks_to_array(name: str, blocks: list[BlockRead], inner_shape: tuple[int, ...],
                     dtype: np.dtype) -> da.Array:
    """Blocks stacked along the first axis; ``inner_shape`` is every block's shape but the first."""
    return blocks_array(name, *_stacked_rows(blocks, inner_shape), dtype)


def blocks_array(name: str, blocks: Mapping[tuple[int, ...], BlockRead | np.ndarray | Any],
                 chunks: tuple[tuple[int, ...], ...], dtype: np.dtype, fresh: bool = False) -> da.Array:
    """A dask array whose chunk at each block index is one block.

    A block is anything with ``shape`` that numpy-style indexing turns into an
    array: a :class:`BlockRead` (read when computed), a numpy array (e.g. a
    live buffer's frames), or another such description.  Each chunk is the task
    ``getter(block, whole block)``, the form of :func:`dask.array.from_array`:
    dask's optimiser fuses later slicing into the index, so a selection reads
    only its rows.  ``fresh=True`` (blocks that read into new memory every time,
    like :class:`BlockRead` and :class:`GridChunk`, never numpy arrays): a
    :class:`FreshArray`, which hands over a result that is one chunk without copying it.
    """
    if not all(chunks):  # no blocks: dask's own constructors fail for zero-size arrays
        return da.from_array(np.empty(tuple(sum(c) for c in chunks), dtype), chunks=-1)
    graph: dict = {}
    for index, block in blocks.items():
        graph[(f"{name}-read", *index)] = block
        graph[(name, *index)] = (getter, (f"{name}-read", *index),
                                 tuple(slice(0, n) for n in block.shape))
    arr = (FreshArray if fresh else da.Array)(graph, name, chunks, dtype=dtype,
                                              meta=np.empty((0,) * len(chunks), dtype))
    return arr


def grid_array(name: str, grid: BlockGrid) -> da.Array:
    """A :class:`BlockGrid` as a dask array: a chunk (a :class:`GridChunk`) per
    block of the first axis, whole along every other axis.

    Selecting from it (``.sel``/``.isel``/``[...]``) with ints, slices or one
    1-d index array gives, while the selection fits in one chunk's bytes, one
    task reading just the selected cells straight into one new array, however
    many chunks it spans (no concatenation); computing it hands that array
    over without dask's final copy (:class:`FreshArray`).

    >>> arr = grid_array("xfeldata-detector-...", grid)   # doctest: +SKIP
    >>> arr[3:13].numblocks                             # doctest: +SKIP
    (1, 1, 1, 1, 1, 1)
    """
    per_lead: dict[int, dict[tuple[int, ...], BlockRead]] = {}
    for index, block in grid.blocks.items():
        per_lead.setdefault(index[0], {})[(0, *index[1:])] = block
    rest = grid.chunks[1:]
    chunks = (grid.chunks[0], *((sum(c),) for c in rest))
    parts = {(i, *(0,) * len(rest)): GridChunk(BlockGrid(part, ((grid.chunks[0][i],), *rest), grid.dtype))
             for i, part in per_lead.items()}
    arr = blocks_array(name, parts, chunks, grid.dtype, fresh=True)
    if isinstance(arr, FreshArray):
        arr._xfeldata_grid = grid
        arr._xfeldata_read = (grid, (slice(None),) * grid.ndim)
    return arr


class FreshArray(da.Array):
    """A dask array whose chunks are new memory every time they are computed
    (:class:`BlockRead`, :class:`GridChunk` reads; never numpy arrays held in
    the graph), and the arrays sliced from it.

    Computing a dask array that is one chunk copies the chunk (dask guards
    against handing out a buffer its graph holds); these chunks are the task's
    own new memory, so the result is handed over as it is.  Everything else
    (arithmetic, reductions, a persisted copy) gives plain dask arrays.  Slicing
    an array made by :func:`grid_array` reads the selection in one task.

    An array made by :func:`grid_array`, or selected from one, computed by
    itself (``.compute()``, ``np.asarray``, xarray's ``.values``) with dask's
    local schedulers (threads or synchronous, which share this process's
    memory) is read straight into one new array, however many chunks it
    spans: no task per chunk and no concatenation, peak memory about the
    result.  Other schedulers (``dask.distributed``, processes), and
    ``dask.compute`` of several collections, compute the chunks as usual.

    >>> isinstance(grid_array("x", grid)[2:5], FreshArray)   # doctest: +SKIP
    True
    """

    __slots__ = ()

    def __dask_postcompute__(self) -> tuple:
        return _postcompute_fresh(self.chunks)

    def compute(self, **kwargs: Any) -> Any:
        direct = _read_directly(self, kwargs)
        return super().compute(**kwargs) if direct is None else direct

    def __getitem__(self, key: Any) -> da.Array:
        grid = self.__dict__.get("_xfeldata_grid")
        normal = _grid_selection(grid.shape, key) if grid is not None else None
        one = _one_task_selection(self.name, grid, normal, self.chunks) if normal is not None else None
        out = super().__getitem__(key) if one is None else one
        if type(out) is da.Array:
            out.__class__ = FreshArray  # slices of new memory are new memory (a view of part is copied)
        read = (grid, normal) if normal is not None else _composed(self.__dict__.get("_xfeldata_read"),
                                                                   key, self.shape)
        if read is not None and isinstance(out, FreshArray):
            out._xfeldata_read = read
        return out


def _read_directly(arr: FreshArray, kwargs: dict) -> np.ndarray | None:
    """``arr`` read straight into one array when it is a whole :class:`BlockGrid` or
    a selection of one and the scheduler shares this process's memory; else None."""
    read = arr.__dict__.get("_xfeldata_read")
    if read is None or set(kwargs) - {"scheduler"}:
        return None
    if get_scheduler(scheduler=kwargs.get("scheduler"), collections=[arr]) not in (get_threaded, get_sync):
        return None
    grid, normal = read
    out = grid[normal]
    return out if out.shape == arr.shape else None  # (never expected; dask's path then)


def _composed(read: tuple | None, key: Any, shape: tuple[int, ...]) -> tuple | None:
    """``(grid, grid key)`` of ``grid[grid key][key]``, where ``shape`` is that of
    ``grid[grid key]`` (xarray selects one axis after another); None if ``key``
    is not one :func:`_grid_selection` takes."""
    if read is None:
        return None
    grid, normal = read
    new = _grid_selection(shape, key)
    if new is None:
        return None
    then = iter(new)
    composed = []
    for k, n in zip(normal, grid.shape, strict=True):
        composed.append(k if isinstance(k, int) else np.arange(n)[k][next(then)])
    return grid, tuple(int(k) if np.ndim(k) == 0 else k for k in composed)


def _grid_selection(grid_shape: tuple[int, ...], key: Any) -> tuple | None:
    """``key`` as a key of :class:`BlockGrid` (ints, slices, one 1-d increasing index
    array per axis) that selects what numpy's ``[key]`` selects, or None (lazy
    dask indices, keys numpy and outer indexing read differently, out-of-range
    ints and bad boolean lengths, left to dask to raise, empty or 0-d results)."""
    if any(is_dask_collection(k) for k in (key if isinstance(key, tuple) else (key,))):
        return None  # a lazy index stays lazy: dask's slicing
    parts = _grid_and_entry_key(key, grid_shape, 0)
    if parts is None:
        return None
    normal = parts[0]
    shape = []
    for k, n in zip(normal, grid_shape, strict=True):
        if isinstance(k, np.ndarray) and k.dtype.kind == "b" and len(k) != n:
            return None  # let dask raise its IndexError
        if isinstance(k, int):
            if not -n <= k < n:
                return None
            continue
        shape.append(len(np.arange(n)[k]))
    if not shape or 0 in shape:
        return None
    return normal


def _one_task_selection(name: str, grid: BlockGrid, normal: tuple,
                        chunks: tuple[tuple[int, ...], ...]) -> da.Array | None:
    """``grid[normal]`` (from :func:`_grid_selection`) as a one-chunk dask array whose
    one task reads the selected cells into one new array; None when the result is
    larger than the largest chunk (dask's chunks then, so that a lazy reduction
    over it holds a few chunks at a time)."""
    shape = tuple(len(np.arange(n)[k]) for k, n in zip(normal, grid.shape, strict=True)
                  if not isinstance(k, int))
    row_bytes = int(np.prod(grid.shape[1:], dtype=np.int64)) * grid.dtype.itemsize
    if int(np.prod(shape, dtype=np.int64)) * grid.dtype.itemsize > max(chunks[0]) * row_bytes:
        return None
    out = f"{name}-sel-{tokenize(name, normal)}"
    graph = {f"{out}-read": GridChunk(grid),
             (out, *(0,) * len(shape)): (getter, f"{out}-read", normal)}
    return FreshArray(graph, out, tuple((n,) for n in shape), dtype=grid.dtype,
                      meta=np.empty((0,) * len(shape), grid.dtype))


def handed_over(arr: da.Array) -> da.Array:
    """``arr``, whose chunks are new memory every time they are computed, computed as a
    :class:`FreshArray` is (blocks written into one array, that array handed over) but still
    a plain dask array: xarray refuses to compute a Dataset that mixes dask array types.

    >>> type(handed_over(da.ones(4, chunks=2))) is da.Array
    True
    """
    arr.__dask_postcompute__ = partial(_postcompute_fresh, arr.chunks)
    return arr


def _postcompute_fresh(chunks: tuple[tuple[int, ...], ...] | None = None) -> tuple:
    return _finalize_fresh, (chunks,)


def _finalize_fresh(results: Any, chunks: tuple[tuple[int, ...], ...] | None = None) -> Any:
    """dask's ``finalize`` without the copy of a result that is one whole fresh chunk, or whose
    blocks tile one new array in place (:func:`~xfeldata.into.into_one`: that array)."""
    tiled = tiled_base(results, chunks) if chunks is not None else None
    if tiled is not None:
        return tiled
    one = results
    while isinstance(one, list | tuple) and len(one) == 1:
        one = one[0]
    if isinstance(one, np.ndarray):
        base = one
        while isinstance(base.base, np.ndarray):
            base = base.base
        if base.nbytes == one.nbytes and base.base is None:
            return one  # (a small view of a large chunk is copied: the chunk is let go)
    return finalize(results)


def padded_array(
    run: RunSelection, source: str, key: str, train_ids: np.ndarray, n_slots: int,
    slot_of_row: np.ndarray | None = None, row_selected: np.ndarray | None = None,
    fill_value: Any = None, trains_per_block: int | None = None,
    target_bytes: int = TARGET_CHUNK_BYTES, boundaries: Sequence[int] = (),
) -> da.Array:
    """A key as a ``(train, slot, *entry)`` dask array over a given train axis.

    The chunks are the :func:`padded_blocks` (same parameters).
    """
    blocks = padded_blocks(run, source, key, train_ids, n_slots, slot_of_row, row_selected,
                           fill_value, trains_per_block, target_bytes, boundaries)
    info = run.key_info(run.resolve_source(source), key)
    name = "xfeldata-padded-" + tokenize(source, key, n_slots, *blocks)  # blocks tokenize their reads
    return _blocks_to_array(name, blocks, (n_slots, *info.entry_shape), info.dtype)


def padded_blocks(
    run: RunSelection, source: str, key: str, train_ids: np.ndarray, n_slots: int,
    slot_of_row: np.ndarray | None = None, row_selected: np.ndarray | None = None,
    fill_value: Any = None, trains_per_block: int | None = None,
    target_bytes: int = TARGET_CHUNK_BYTES, boundaries: Sequence[int] = (), at_files: bool = True,
) -> list[BlockRead]:
    """The blocks of a key as a ``(train, slot, *entry)`` array over a given train axis.

    Each selected train's rows go into slots: by ``slot_of_row`` (one slot per
    row of the key's rows for ``train_ids`` in train order, as in
    :func:`flat_rows_array`) or positionally.  Trains without data and empty slots
    hold ``fill_value`` (default: :func:`default_fill_value`).

    Parameters
    ----------
    train_ids
        The train axis (sorted; may include trains where the source has no data).
    n_slots
        Size of the slot (pulse) axis.
    slot_of_row
        Slot of every row, or None for positions 0, 1, ... within each train.
    row_selected
        Boolean per row: read only these rows (pulse selection before reading).
    trains_per_block
        Trains per dask chunk; by default from ``target_bytes``.
    boundaries
        Train positions where a chunk must end (e.g. other modules' file boundaries).
    at_files
        End chunks where the key's file changes (False: a chunk's reads may span
        files, so that several modules' chunks can share their train edges).
    """
    source = run.resolve_source(source)
    info = run.key_info(source, key)
    train_ids = np.asarray(train_ids, np.uint64)
    run.check_index(source, key)
    found = run.rows(source, info.group).lookup(train_ids)
    fill = default_fill_value(info.dtype) if fill_value is None else fill_value
    n_trains = len(train_ids)
    counts = np.zeros(n_trains, np.int64)
    train_pos = np.searchsorted(train_ids, found.train_ids)
    counts[train_pos] = found.count.astype(np.int64)
    if slot_of_row is None:
        slot_of_row = positions_within(counts)
    row_train = np.repeat(np.arange(n_trains), counts)
    if row_selected is None:
        row_selected = np.ones(len(row_train), bool)
    row_selected = row_selected & (slot_of_row < n_slots)
    row_offsets = np.concatenate([[0], np.cumsum(counts)])

    entry_bytes = max(1, int(np.prod(info.entry_shape, dtype=np.int64)) * info.dtype.itemsize)
    if trains_per_block is None:
        trains_per_block = max(1, int(target_bytes // max(1, entry_bytes * n_slots)))
    # Block edges: every trains_per_block, at file changes (at_files), and at given boundaries.
    file_of_train = np.full(n_trains, -1)
    file_of_train[train_pos] = found.file_no
    first_of_train = np.zeros(n_trains, np.int64)
    first_of_train[train_pos] = found.first.astype(np.int64)
    edge_set = set(range(0, n_trains, trains_per_block)) | {int(b) for b in boundaries if 0 < b < n_trains}
    with_data = np.flatnonzero(file_of_train >= 0)
    changes = with_data[1:][file_of_train[with_data[1:]] != file_of_train[with_data[:-1]]] \
        if at_files else with_data[:0]
    edges = np.array(sorted(edge_set | set(changes.tolist()) | {0}) + [n_trains], np.int64)

    # Every selected row: its dataset row, file, block and flat target cell, then
    # cut into runs that are contiguous in the dataset and in the block.
    rows = np.flatnonzero(row_selected)
    r_train = row_train[rows]
    r_file = file_of_train[r_train]
    r_start = first_of_train[r_train] + (rows - row_offsets[r_train])
    r_block = np.searchsorted(edges, r_train, side="right") - 1
    r_target = (r_train - edges[r_block]) * n_slots + slot_of_row[rows]
    seg_first, seg_last = contiguous_runs(r_block * (int(r_file.max(initial=0)) + 1) + r_file,
                                          r_start, r_target)
    locations = {int(f): (run.file(int(f)).path, run.file_key_info(int(f), source, key),
                          file_stamp(run.file(int(f)))) for f in np.unique(r_file)}
    reads_by_block: dict[int, list[RowRead]] = {}
    for i, j in zip(seg_first.tolist(), seg_last.tolist(), strict=True):
        path, finfo, stamp = locations[int(r_file[i])]
        reads_by_block.setdefault(int(r_block[i]), []).append(RowRead(
            path, finfo.path, source, info.key, int(r_start[i]), int(r_start[j]) + 1, int(r_target[i]), stamp))


    blocks = []
    for b, (b0, b1) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)):
        if b0 == b1:
            continue
        reads = tuple(reads_by_block.get(b, ()))
        shape = (b1 - b0, n_slots, *info.entry_shape)
        covered = sum(r.stop - r.start for r in reads) == (b1 - b0) * n_slots
        blocks.append(BlockRead(shape, info.dtype, len(info.entry_shape),
                                None if covered else fill, reads))
    return blocks


class BlockGrid:
    """Blocks tiling one array, read without dask: any outer selection is read
    straight into its place in one new array.

    The in-memory counterpart of :func:`blocks_array` (same blocks and chunks):
    each block intersecting the selection reads its part into a view of the
    result, on the shared reader threads (:func:`~xfeldata.files.pool.run_all`),
    so a selection costs one pass over
    its bytes and no concatenation.

    Examples
    --------
    >>> grid = BlockGrid(blocks, chunks, np.uint16)      # doctest: +SKIP
    >>> grid[2:5, :, [0, 3]].shape                        # doctest: +SKIP
    (3, 8, 2, 2, 512, 128)
    """

    def __init__(self, blocks: Mapping[tuple[int, ...], BlockRead],
                 chunks: tuple[tuple[int, ...], ...], dtype: np.dtype):
        self.blocks = dict(blocks)
        self.chunks, self.dtype = chunks, np.dtype(dtype)
        self.shape = tuple(sum(c) for c in chunks)
        self._edges = [np.cumsum((0, *c)) for c in chunks]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Outer indexing: per axis an int, a slice or a 1-d integer array (any order,
        repeats allowed)."""
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        picked = [np.arange(n)[k] for n, k in zip(self.shape, key, strict=True)]
        drop = tuple(0 if p.ndim == 0 else slice(None) for p in picked)
        picked = [np.atleast_1d(p) for p in picked]
        out = np.empty(tuple(len(p) for p in picked), self.dtype)
        per_axis = [self._parts(axis, p) for axis, p in enumerate(picked)]
        jobs = [(self.blocks[index], [per_axis[axis][b] for axis, b in enumerate(index)])
                for index in product(*per_axis) if index in self.blocks]
        run_all(lambda job: _read_part(out, *job), jobs)
        return out[drop]

    def _parts(self, axis: int, picked: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """For each block along ``axis`` that holds picked positions: where they go in
        the result and where they are in the block."""
        edges = self._edges[axis]
        block_of = np.searchsorted(edges, picked, side="right") - 1
        parts = {}
        for b in np.unique(block_of).tolist():
            where = np.flatnonzero(block_of == b)
            parts[b] = (where, picked[where] - edges[b])
        return parts


class GridChunk:
    """A :class:`BlockGrid` as one dask chunk: numpy indexing (as dask's ``getter``
    passes it), the selected cells read straight into one new array.

    Keys that outer indexing gives differently from numpy (several index arrays,
    an index array with integers, new axes) read the whole grid and index it.

    >>> chunk = GridChunk(BlockGrid(blocks, chunks, np.uint16))   # doctest: +SKIP
    >>> chunk[2:5, :, 3].shape                                    # doctest: +SKIP
    (3, 8, 2, 512, 128)
    """

    def __init__(self, grid: BlockGrid):
        self.grid, self.shape, self.dtype = grid, grid.shape, grid.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        parts = _grid_and_entry_key(key, self.shape, 0)
        return self.grid[()][key] if parts is None else self.grid[parts[0]]

    def __dask_tokenize__(self) -> tuple:
        return ("xfeldata.GridChunk", self.grid.chunks, str(self.dtype),
                tuple((index, block.__dask_tokenize__()) for index, block in self.grid.blocks.items()))


def _read_part(out: np.ndarray, block: BlockRead, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The cells of ``block`` at local positions ``parts[axis][1]`` into ``out`` at
    positions ``parts[axis][0]``."""
    grid_ndim = block.ndim - block.entry_ndim
    wheres, local = zip(*parts, strict=True)
    if any(len(w) > 1 and not (np.diff(w) == 1).all() for w in wheres) \
            or any(len(np.unique(p)) != len(p) for p in local[:grid_ndim]):
        out[np.ix_(*wheres)] = execute_block(block)[np.ix_(*local)]
        return
    view = out[tuple(slice(int(w[0]), int(w[-1]) + 1) for w in wheres)]
    sub = block.restrict(tuple(local[:grid_ndim]))
    entry_whole = all(np.array_equal(p, np.arange(n)) for p, n in
                      zip(local[grid_ndim:], block.shape[grid_ndim:], strict=True))
    if entry_whole:
        execute_block(sub, out=view)
    else:  # a part of each entry (a region of pixels): read whole entries, keep the part
        view[...] = execute_block(sub)[(slice(None),) * grid_ndim + np.ix_(*local[grid_ndim:])]


def read_rows(run: RunSelection, source: str, key: str) -> tuple[np.ndarray, TrainMap]:
    """Read all rows of a (small) key now, straight into one array, without dask:
    ``(values, trains listing the source)``."""
    blocks, found = flat_rows_blocks(run, source, key)
    if len(blocks) == 1:  # the usual case (small keys are one block): no concatenation
        return execute_block(blocks[0]), found
    info = run.key_info(run.resolve_source(source), key)
    return BlockGrid(*_stacked_rows(blocks, info.entry_shape), info.dtype)[()], found
