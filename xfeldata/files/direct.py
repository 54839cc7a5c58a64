"""Reading rows of chunked datasets chunk by chunk, decoding outside h5py's lock.

h5py holds one lock per process around every HDF5 call, so HDF5's own deflate
filter decompresses on one core at a time.  Here whole chunks are fetched raw
with ``read_direct_chunk`` (the lock is held only for the I/O) and inflated
(libdeflate, else zlib) and unshuffled afterwards without the GIL, so several
threads decode at once.  Whole uncompressed chunks go straight from the file
into the destination.  Datasets with other filters, partial-entry chunks or
anything unexpected are read through h5py as usual.

Examples
--------
>>> out = np.empty((10, 512, 128), np.float32)                       # doctest: +SKIP
>>> read_rows_into(f["INSTRUMENT/.../image/data"], 0, 10, out)       # doctest: +SKIP
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import h5py
import numpy as np

from .plain import stored_as

try:  # libdeflate: about twice as fast as zlib at inflating, releases the GIL
    import deflate
except ImportError:  # pragma: no cover - optional speed-up
    deflate = None
try:  # unshuffles (and inflates) into preallocated buffers
    import zlib_into
except ImportError:  # pragma: no cover - optional speed-up
    zlib_into = None

_GZIP = h5py.h5z.FILTER_DEFLATE
_SHUFFLE = h5py.h5z.FILTER_SHUFFLE


def _filters(ds: h5py.Dataset) -> tuple[int, ...] | None:
    """Filter ids of the dataset's pipeline, or None if the fast path cannot decode them."""
    plist = ds.id.get_create_plist()
    ids = tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))
    if set(ids) <= {_GZIP, _SHUFFLE} and (not ids or ids[-1] == _GZIP or ids == (_SHUFFLE,)):
        return ids
    return None


def _direct_filters(ds: h5py.Dataset) -> tuple[int, ...] | None:
    """The filter ids to undo if rows can be read chunk by chunk, else None."""
    if ds.chunks is None or ds.chunks[1:] != ds.shape[1:] or not stored_as(ds.id, ds.dtype):
        return None
    return _filters(ds)


def _decode(raw: bytes | memoryview, filters: tuple[int, ...], nbytes: int, itemsize: int,
            out: np.ndarray | None = None) -> np.ndarray:
    """Undo the filter pipeline of one chunk: inflate, then unshuffle.

    ``out`` (``nbytes`` uint8, contiguous), if given, receives the last step's
    result where that step can write into place; the decoded chunk is returned
    either way.
    """
    buf = np.frombuffer(raw, np.uint8)
    if _GZIP in filters:
        if deflate is not None:
            buf = np.frombuffer(deflate.zlib_decompress(raw, nbytes), np.uint8)
        else:
            buf = np.empty(nbytes, np.uint8)
            if zlib_into is not None:
                zlib_into.decompress_into(raw, buf)
            else:
                buf[:] = np.frombuffer(zlib.decompress(raw), np.uint8)
    if _SHUFFLE in filters and itemsize > 1:
        if zlib_into is not None:
            plain = np.empty(nbytes, np.uint8) if out is None else out
            zlib_into.unshuffle(buf, plain, itemsize)
            buf = plain
        else:
            buf = np.ascontiguousarray(buf.reshape(itemsize, -1).T).reshape(-1)
    return buf


def read_rows_into(ds: h5py.Dataset, start: int, stop: int, dest: np.ndarray | Sequence[np.ndarray],
                   decoded: dict | None = None) -> None:
    """Read ``ds[start:stop]`` into ``dest``: one array (same dtype, C-contiguous,
    ``stop - start`` rows), or one array per row (each the dataset's dtype and row
    size; e.g. one module's frames in a stacked array).

    Uses raw chunk reads and decodes outside the HDF5 lock when the chunks are
    whole rows with no filter or deflate (maybe with shuffle); a chunk of one
    row is decoded straight into its row's array.  Otherwise h5py reads.

    Parameters
    ----------
    decoded
        A dict that keeps decoded chunks between calls (e.g. for the reads of one
        dask block), so rows picked from the same chunk decode it once.
    """
    if stop <= start:
        return
    row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    rows = _Rows(dest, row_bytes) if isinstance(dest, np.ndarray) else _Frames(dest, row_bytes)
    filters = _direct_filters(ds) if rows.dtype == ds.dtype and rows.direct else None
    if filters is None:
        rows.from_hdf5(ds, start, stop, start)
        return
    rows_per_chunk = ds.chunks[0]
    chunk_bytes = rows_per_chunk * row_bytes
    zeros = (0,) * (ds.ndim - 1)
    where = (ds.file.filename, ds.name) if decoded is not None else None
    for chunk_start in range(start - start % rows_per_chunk, stop, rows_per_chunk):
        lo, hi = max(start, chunk_start), min(stop, chunk_start + rows_per_chunk)
        whole = hi - lo == rows_per_chunk
        in_place = rows.place(lo - start, hi - start) if whole else None
        if ds.id.get_chunk_info_by_coord((chunk_start, *zeros)).byte_offset is None:
            rows.from_hdf5(ds, lo, hi, start)  # never written: HDF5 knows the fill value
            continue
        if not filters and in_place is not None:
            # a whole uncompressed chunk: straight from the file into place
            mask, _ = ds.id.read_direct_chunk((chunk_start, *zeros), out=in_place)
            if not mask:
                continue
        cache_key = (where, chunk_start)
        chunk = decoded.get(cache_key) if decoded is not None else None
        if chunk is None:
            mask, raw = ds.id.read_direct_chunk((chunk_start, *zeros))
            if mask:  # some filter was skipped for this chunk: let HDF5 decode it
                rows.from_hdf5(ds, lo, hi, start)
                continue
            chunk = _decode(raw, filters, chunk_bytes, ds.dtype.itemsize, in_place) if filters \
                else np.frombuffer(raw, np.uint8)
            if chunk is in_place:
                continue  # a whole chunk, unshuffled straight into place
            if decoded is not None and not whole:
                decoded.clear()  # keep only the chunk being picked from
                decoded[cache_key] = chunk
        rows.put(lo - start, chunk[(lo - chunk_start) * row_bytes:(hi - chunk_start) * row_bytes])


class _Rows:
    """Destination of :func:`read_rows_into`: one C-contiguous array of the rows."""

    def __init__(self, dest: np.ndarray, row_bytes: int):
        self.dest, self.dtype, self.row_bytes = dest, dest.dtype, row_bytes
        self.direct = dest.flags.c_contiguous
        self.flat = dest.reshape(-1).view(np.uint8) if self.direct else None

    def place(self, lo: int, hi: int) -> np.ndarray | None:
        """Where the bytes of rows ``lo:hi`` (of the destination) go, if one buffer."""
        return self.flat[lo * self.row_bytes: hi * self.row_bytes]

    def put(self, lo: int, data: np.ndarray) -> None:
        """Bytes of whole rows, from row ``lo`` on."""
        self.flat[lo * self.row_bytes: lo * self.row_bytes + len(data)] = data

    def from_hdf5(self, ds: h5py.Dataset, lo: int, hi: int, start: int) -> None:
        """Dataset rows ``lo:hi`` read by HDF5; ``start`` is the dataset row of row 0."""
        if self.direct:
            ds.read_direct(self.dest, np.s_[lo:hi], np.s_[lo - start:hi - start])
        else:
            self.dest[lo - start:hi - start] = ds[lo:hi]


class _Frames(_Rows):
    """Destination of :func:`read_rows_into`: one array per row, anywhere in memory."""

    def __init__(self, frames: Sequence[np.ndarray], row_bytes: int):
        self.frames, self.row_bytes = list(frames), row_bytes
        self.dtype = self.frames[0].dtype
        self.direct = all(f.flags.c_contiguous and f.dtype == self.dtype and f.nbytes == row_bytes
                          for f in self.frames)
        self.bufs = [f.reshape(-1).view(np.uint8) for f in self.frames] if self.direct else []

    def place(self, lo: int, hi: int) -> np.ndarray | None:
        return self.bufs[lo] if hi - lo == 1 else None

    def put(self, lo: int, data: np.ndarray) -> None:
        for i in range(len(data) // self.row_bytes):
            self.bufs[lo + i][:] = data[i * self.row_bytes:(i + 1) * self.row_bytes]

    def from_hdf5(self, ds: h5py.Dataset, lo: int, hi: int, start: int) -> None:
        values = ds[lo:hi]
        for i, frame in enumerate(self.frames[lo - start:hi - start]):
            frame[...] = values[i].reshape(frame.shape)
