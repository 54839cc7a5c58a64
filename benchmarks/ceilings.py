"""Hardware ceilings: the fastest plain way to get the same bytes, without any labelling.

Every reader here is built once (files opened, buffers preallocated) and
returns a function to time.  None of them uses xfeldata.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import deflate
import h5py
import numpy as np
import zlib_into


@dataclass(frozen=True)
class Rows:
    """Rows ``start:stop`` of dataset ``dataset`` in file ``path``."""

    path: str
    dataset: str
    start: int
    stop: int


def _index_groups(index: h5py.Group) -> list[h5py.Group]:
    """Every group under INDEX with ``first`` and ``count`` arrays."""
    groups: list[h5py.Group] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and "first" in obj and "count" in obj:
            groups.append(obj)
    index.visititems(visit)
    return groups


def read_indexes(paths: list[Path]) -> int:
    """Read every INDEX array (``trainId`` and each group's ``first``/``count``) with h5py.

    The ceiling of opening a run: what any reader must at least read.
    Returns the number of arrays read.
    """
    n = 0
    for p in paths:
        with h5py.File(p, "r") as f:
            index = f["INDEX"]
            index["trainId"][()]
            n += 1
            for g in _index_groups(index):
                g["first"][()]
                g["count"][()]
                n += 2
    return n


def read_train_ids_and_sources(paths: list[Path]) -> int:
    """Open every file and read ``INDEX/trainId`` and the METADATA source list with h5py.

    The ceiling of opening a run the first time: without them a reader knows
    neither the trains nor the sources (the per-source INDEX arrays can wait
    for the first read).  Returns the number of train IDs read.
    """
    n = 0
    for p in paths:
        with h5py.File(p, "r") as f:
            n += len(f["INDEX/trainId"][()])
            meta = f["METADATA"]
            (meta["dataSources/dataSourceId"] if "dataSources" in meta
             else meta["dataSourceId"])[()]
    return n


def stat_and_read_cache(run_dir: Path) -> int:
    """List the run directory, ``stat`` each HDF5 file and read the cache a reopen needs.

    The ceiling of opening a run again: a reader must at least see which files
    there are, that they did not change since its cache was written, and read
    that cache: xfeldata's run states (``.xfeldata/runs.bin``) where present,
    else every file of ``.xfeldata/``.  Returns the bytes of cache read.
    """
    for e in os.scandir(run_dir):
        if e.name.endswith(".h5"):
            e.stat()
    cache = Path(run_dir) / ".xfeldata"
    states = cache / "runs.bin"
    if states.is_file():
        return len(states.read_bytes())
    return sum(len(p.read_bytes()) for p in cache.glob("*") if p.is_file())


def key_pread_reader(paths: list[Path], dataset: str) -> tuple[Callable[[], np.ndarray], Callable[[], None]]:
    """``os.preadv`` of one unfiltered dataset's bytes in each file into one new array.

    The ceiling of reading one control key over a run: where the bytes are
    (contiguous storage or each chunk's offset) is found, and the files opened,
    before timing; a call allocates the result and reads each file's rows with one
    ``preadv`` per chunk.  Returns ``(read, close)``.
    """
    plan, fds, rows, dtype = [], [], 0, None
    for path in paths:
        with h5py.File(path, "r") as f:
            ds = f[dataset]
            if ds.compression or ds.shuffle or ds.dtype.hasobject:
                raise ValueError(f"{path}: {dataset} is filtered or not fixed-size")
            dtype, row_bytes = ds.dtype, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
            if ds.chunks is None:
                extents = [(ds.id.get_offset(), ds.shape[0])]
            else:
                extents = [(ds.id.get_chunk_info_by_coord((k,) + (0,) * (ds.ndim - 1)).byte_offset,
                            min(ds.chunks[0], ds.shape[0] - k)) for k in range(0, ds.shape[0], ds.chunks[0])]
        fd = os.open(path, os.O_RDONLY)
        fds.append(fd)
        for offset, n in extents:
            plan.append((fd, offset, rows * row_bytes, n * row_bytes))
            rows += n
    shape = (rows,)

    def read() -> np.ndarray:
        out = np.empty(shape, dtype)
        flat = out.view(np.uint8)
        for fd, offset, at, size in plan:
            os.preadv(fd, [flat[at: at + size]], offset)
        return out

    def close() -> None:
        for fd in fds:
            os.close(fd)

    return read, close


def run_files(run_dir: Path) -> list[Path]:
    """The HDF5 files of a run directory, sorted."""
    return sorted(Path(run_dir).glob("*.h5"))


def detector_rows(run_dir: Path, train_ids: np.ndarray, key: str = "image.data") -> list[Rows]:
    """Where the detector ``key`` rows of ``train_ids`` lie, one :class:`Rows` per module file.

    Read from each file's INDEX with h5py (modules sorted by file name).
    """
    group, _, rest = key.partition(".")
    wanted = set(int(t) for t in train_ids)
    out = []
    for p in run_files(run_dir):
        if "AGIPD" not in p.name:
            continue
        with h5py.File(p, "r") as f:
            tids = f["INDEX/trainId"][()]
            ids = f["METADATA/dataSources/dataSourceId"].asstr()[()]
            # entries are "INSTRUMENT/<source>/<index group>"; the detector group is "image"
            src = next(s for s in ids if s.startswith("INSTRUMENT/") and s.endswith("/" + group))
            src = src[len("INSTRUMENT/"):-len(group) - 1]
            first = f[f"INDEX/{src}/{group}/first"][()]
            count = f[f"INDEX/{src}/{group}/count"][()]
            # INDEX/trainId may be padded past the index arrays (EXtra-data's mock writers
            # pad it to a chunk multiple with zeros, as older DAQ versions did)
            tids = tids[:len(first)]
            sel = np.array([int(t) in wanted for t in tids]) & (count > 0)
            if not sel.any():
                continue
            start = int(first[sel].min())
            stop = int((first[sel] + count[sel]).max())
            out.append(Rows(str(p), f"INSTRUMENT/{src}/{group}/{rest.replace('.', '/')}",
                            start, stop))
    return out


def _chunk_starts(ds: h5py.Dataset, start: int, stop: int) -> range:
    step = ds.chunks[0]
    return range(start - start % step, stop, step)


class _Opened:
    """Open datasets of a list of :class:`Rows` (kept open, like the libraries' handle caches)."""

    def __init__(self, rows: list[Rows]) -> None:
        self.rows = rows
        self.files = {r.path: h5py.File(r.path, "r", rdcc_nbytes=0) for r in rows}
        self.datasets = [self.files[r.path][r.dataset] for r in rows]

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def useful_bytes(self) -> int:
        return sum((r.stop - r.start) * int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
                   for r, ds in zip(self.rows, self.datasets, strict=True))


def h5py_reader(rows: list[Rows]) -> tuple[Callable[[], None], Callable[[], None], int]:
    """``Dataset.read_direct`` of the rows into one preallocated array (HDF5's own filters).

    The files are opened again for every call: HDF5 keeps decoded chunks of
    open datasets cached, so repeated reads through one handle would not
    decode again.  Returns ``(read, close, useful_bytes)``.
    """
    op = _Opened(rows)
    outs = [np.empty((r.stop - r.start, *ds.shape[1:]), ds.dtype)
            for r, ds in zip(rows, op.datasets, strict=True)]
    useful = op.useful_bytes()
    op.close()

    def read() -> None:
        fresh = _Opened(rows)
        try:
            for r, ds, out in zip(rows, fresh.datasets, outs, strict=True):
                ds.read_direct(out, np.s_[r.start:r.stop])
        finally:
            fresh.close()
    return read, lambda: None, useful


def _chunk_plan(rows: list[Rows], op: _Opened) -> tuple[list[tuple], int]:
    """Every chunk covering the rows: ``(dataset id, chunk offset, byte position in
    one output buffer, chunk bytes, item size)``, and the buffer's total size."""
    plan, total = [], 0
    for r, ds in zip(rows, op.datasets, strict=True):
        chunk_bytes = int(np.prod(ds.chunks)) * ds.dtype.itemsize
        zeros = (0,) * (ds.ndim - 1)
        for c in _chunk_starts(ds, r.start, r.stop):
            plan.append((ds.id, (c, *zeros), total, chunk_bytes, ds.dtype.itemsize))
            total += chunk_bytes
    return plan, total


def direct_chunk_reader(rows: list[Rows]) -> tuple[Callable[[], None], Callable[[], None], int]:
    """``read_direct_chunk`` of every chunk covering the rows into one preallocated buffer.

    No decoding (for uncompressed data that is the data itself).  Returns
    ``(read, close, useful_bytes)``.
    """
    op = _Opened(rows)
    plan, total = _chunk_plan(rows, op)
    buf = np.empty(total, np.uint8)

    def read() -> None:
        for dsid, offset, at, n, _ in plan:
            dsid.read_direct_chunk(offset, out=buf[at:at + n])
    return read, op.close, op.useful_bytes()


def pread_reader(rows: list[Rows], workers: int | None = None, fresh: bool = False
                 ) -> tuple[Callable[[], None], Callable[[], None], int]:
    """``os.preadv`` of exactly the rows (uncompressed, at the offsets HDF5 reports) into
    one preallocated buffer, on a thread pool: the page cache's copy speed.

    Chunks that lie back to back in a file (one-frame chunks written in order)
    are read with one call.  ``fresh=True`` reads into a new buffer every call
    (``np.empty``: the kernel gives and zeroes new pages as they are first
    written), as a reader must for a result its caller keeps.

    Returns ``(read, close, useful_bytes)``.
    """
    op = _Opened(rows)
    fds = {path: os.open(path, os.O_RDONLY) for path in op.files}
    pieces, total = [], 0
    for r, ds in zip(rows, op.datasets, strict=True):
        row_bytes = int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
        c = ds.chunks[0]
        for k in range(r.start // c, (r.stop - 1) // c + 1):
            lo, hi = max(r.start, k * c), min(r.stop, (k + 1) * c)
            base = ds.id.get_chunk_info_by_coord((k * c,) + (0,) * (ds.ndim - 1)).byte_offset
            piece = (fds[r.path], base + (lo - k * c) * row_bytes, total, (hi - lo) * row_bytes)
            prev = pieces[-1] if pieces else None
            if prev and prev[0] == piece[0] and prev[1] + prev[3] == piece[1]:
                # one-frame chunks written in order lie back to back: one read for all
                pieces[-1] = (*prev[:3], prev[3] + piece[3])
            else:
                pieces.append(piece)
            total += (hi - lo) * row_bytes
    buf = [np.empty(total, np.uint8)]
    pool = ThreadPoolExecutor(workers or os.cpu_count() or 2)

    def one(piece: tuple) -> None:
        fd, offset, at, n = piece
        os.preadv(fd, [buf[0][at:at + n]], offset)

    read, close, useful = _pooled(pool, one, pieces, fds, op)
    if not fresh:
        return read, close, useful

    def read_fresh() -> None:
        buf[0] = np.empty(total, np.uint8)
        read()
    return read_fresh, close, useful


def threaded_decode_reader(rows: list[Rows], workers: int | None = None,
                           inflater: str = "libdeflate", out: np.ndarray | None = None
                           ) -> tuple[Callable[[], None], Callable[[], None], int]:
    """Raw chunks read with ``os.preadv`` at the offsets HDF5 reports (no HDF5 call, no
    lock) and inflated + unshuffled on a thread pool, into one preallocated array.

    The ceiling of compressed reads with deflate+shuffle: the least work any
    reader must do.  Chunk offsets and sizes are looked up once, when the reader
    is built; each worker reads into its own reused buffer and unshuffles
    straight into the output (libdeflate's inflate returns a new buffer, the only
    copy).  The chunks are split into a few contiguous batches per worker so the
    threads finish together.  ``inflater`` is ``"libdeflate"`` (the ``deflate``
    package, the fastest installed) or ``"zlib_into"`` (zlib straight into a
    reused buffer); unshuffling is ``zlib_into.unshuffle``.  Chunks stored with
    a filter skipped are refused (a ceiling must decode the same bytes).
    ``out`` (uint8, the bytes of all chunks covering the rows, in order) receives
    the decoded chunks; by default a new buffer.  Returns ``(read, close, useful_bytes)``.
    """
    op = _Opened(rows)
    workers = workers or os.cpu_count() or 2
    plan, total = _chunk_plan(rows, op)
    fds = {path: os.open(path, os.O_RDONLY) for path in op.files}
    fd_of = {r.path: fds[r.path] for r in rows}
    dsid_path = {id(ds.id): r.path for r, ds in zip(rows, op.datasets, strict=True)}
    pieces = []  # (fd, file offset, stored size, output position, chunk bytes, item size)
    for dsid, offset, at, n, itemsize in plan:
        info = dsid.get_chunk_info_by_coord(offset)
        if info.byte_offset is None or info.filter_mask:
            raise ValueError(f"chunk {offset} of {dsid_path[id(dsid)]} is unwritten or "
                             "skips a filter")
        pieces.append((fd_of[dsid_path[id(dsid)]], info.byte_offset, info.size, at, n, itemsize))
    largest = max(p[2] for p in pieces)
    out = np.empty(total, np.uint8) if out is None else out
    if out.dtype != np.uint8 or out.shape != (total,):
        raise ValueError(f"out must be {total} uint8 bytes, not {out.dtype} {out.shape}")
    pool = ThreadPoolExecutor(workers)
    local = threading.local()  # one raw and one inflate buffer per worker thread

    def one(piece: tuple) -> None:
        fd, offset, size, at, n, itemsize = piece
        raw = getattr(local, "raw", None)
        if raw is None:
            raw = local.raw = np.empty(largest, np.uint8)
        os.preadv(fd, [raw[:size]], offset)
        if inflater == "libdeflate":
            tmp = np.frombuffer(deflate.zlib_decompress(raw[:size], n), np.uint8)
        else:
            tmp = getattr(local, "buf", None)
            if tmp is None or tmp.size != n:
                tmp = local.buf = np.empty(n, np.uint8)
            zlib_into.decompress_into(raw[:size], tmp)
        zlib_into.unshuffle(tmp, out[at:at + n], itemsize)

    # a few contiguous batches per worker: per-chunk tasks hand the GIL and the pool's
    # queue back and forth for every chunk, one batch per file leaves a thread idle at the end
    step = max(1, -(-len(pieces) // (4 * workers)))
    batches = [pieces[i:i + step] for i in range(0, len(pieces), step)]

    return _pooled(pool, lambda batch: [one(piece) for piece in batch], batches, fds, op)


def memcpy(nbytes: int, threads: int = 1) -> tuple[Callable[[], None], Callable[[], None], int]:
    """numpy copy of ``nbytes`` between two preallocated arrays (memory bandwidth), on
    ``threads`` threads, each copying one contiguous part (numpy releases the GIL)."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    if threads == 1:
        def copy() -> None:
            np.copyto(dst, src)
        return copy, lambda: None, nbytes
    edges = [nbytes * i // threads // 4096 * 4096 for i in range(threads)] + [nbytes]
    parts = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    pool = ThreadPoolExecutor(threads)

    def copy_threads() -> None:
        list(pool.map(lambda part: np.copyto(dst[part], src[part]), parts))
    return copy_threads, pool.shutdown, nbytes


def read_sum(nbytes: int, threads: int = 1) -> tuple[Callable[[], None], Callable[[], None], int]:
    """numpy sum of ``nbytes`` of float32 in preallocated memory (reading every byte once, writing
    nothing: the limit of any reduction of those bytes), on ``threads`` threads, one part each."""
    src = np.ones(nbytes // 4, np.float32)
    edges = [len(src) * i // threads // 1024 * 1024 for i in range(threads)] + [len(src)]
    parts = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    if threads == 1:
        return lambda: src.sum(), lambda: None, nbytes
    pool = ThreadPoolExecutor(threads)

    def sum_threads() -> None:
        list(pool.map(lambda part: src[part].sum(), parts))
    return sum_threads, pool.shutdown, nbytes


def pread_sum_reader(rows: list[Rows], workers: int | None = None, slab_rows: int = 64
                     ) -> tuple[Callable[[], None], Callable[[], None], int]:
    """``os.preadv`` of the rows (uncompressed) in slabs of ``slab_rows`` into one reused
    buffer per thread, each slab added into its dataset's float64 sum, on a thread pool.

    The ceiling of a whole-run mean per module: one pass over the bytes from the
    page cache and one float64 addition per value, no new memory.  Returns
    ``(read, close, useful_bytes)``.
    """
    op = _Opened(rows)
    fds = {path: os.open(path, os.O_RDONLY) for path in op.files}
    jobs = []
    for r, ds in zip(rows, op.datasets, strict=True):
        row_bytes = int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
        if ds.chunks is not None and ds.chunks[0] != 1:
            raise ValueError(f"{r.path}: {r.dataset} is not one row per chunk")
        for lo in range(r.start, r.stop, slab_rows):
            hi = min(r.stop, lo + slab_rows)
            offsets = [ds.id.get_chunk_info_by_coord((k,) + (0,) * (ds.ndim - 1)).byte_offset
                       if ds.chunks else ds.id.get_offset() + k * row_bytes for k in range(lo, hi)]
            jobs.append((fds[r.path], r.dataset, offsets, row_bytes, ds.dtype, ds.shape[1:]))
    sums = {r.dataset: None for r in rows}
    lock = threading.Lock()
    local = threading.local()
    pool = ThreadPoolExecutor(workers or os.cpu_count() or 2)

    def one(job: tuple) -> None:
        fd, name, offsets, row_bytes, dtype, entry = job
        buf = getattr(local, "buf", None)
        if buf is None or buf.nbytes < len(offsets) * row_bytes:
            buf = local.buf = np.empty(slab_rows * row_bytes, np.uint8)
        for i, offset in enumerate(offsets):
            os.preadv(fd, [buf[i * row_bytes:(i + 1) * row_bytes]], offset)
        part = buf[:len(offsets) * row_bytes].view(dtype).reshape(len(offsets), *entry).sum(
            axis=0, dtype=np.float64)
        with lock:
            sums[name] = part if sums[name] is None else sums[name] + part

    return _pooled(pool, one, jobs, fds, op)


def _pooled(pool: ThreadPoolExecutor, work, items: list, fds: dict, op) -> tuple:
    """``(read, close, useful bytes)`` of a pooled reader: ``read`` runs ``work`` on every
    item on ``pool``; ``close`` stops the pool, closes the descriptors and ``op``."""

    def read() -> None:
        list(pool.map(work, items))

    def close() -> None:
        pool.shutdown()
        for fd in fds.values():
            os.close(fd)
        op.close()
    return read, close, op.useful_bytes()
