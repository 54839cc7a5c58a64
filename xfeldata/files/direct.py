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


def read_rows_into(ds: h5py.Dataset, start: int, stop: int, dest: np.ndarray,
                   decoded: dict | None = None) -> None:
    """Read ``ds[start:stop]`` into ``dest`` (same dtype, C-contiguous, ``stop - start`` rows).

    Uses raw chunk reads and decodes outside the HDF5 lock when the chunks are
    whole rows with no filter or deflate (maybe with shuffle); otherwise h5py's
    ``read_direct``.

    Parameters
    ----------
    decoded
        A dict that keeps decoded chunks between calls (e.g. for the reads of one
        dask block), so rows picked from the same chunk decode it once.
    """
    if stop <= start:
        return
    filters = _direct_filters(ds) if dest.dtype == ds.dtype else None
    if filters is None:
        ds.read_direct(dest, np.s_[start:stop])
        return
    rows_per_chunk = ds.chunks[0]
    row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    chunk_bytes = rows_per_chunk * row_bytes
    flat_dest = dest.reshape(-1).view(np.uint8)
    zeros = (0,) * (ds.ndim - 1)
    where = (ds.file.filename, ds.name) if decoded is not None else None
    for chunk_start in range(start - start % rows_per_chunk, stop, rows_per_chunk):
        lo, hi = max(start, chunk_start), min(stop, chunk_start + rows_per_chunk)
        a, b = (lo - start) * row_bytes, (hi - start) * row_bytes
        hdf5_reads = np.s_[lo:hi], np.s_[lo - start:hi - start]
        if ds.id.get_chunk_info_by_coord((chunk_start, *zeros)).byte_offset is None:
            ds.read_direct(dest, *hdf5_reads)  # never written: HDF5 knows the fill value
            continue
        if not filters and hi - lo == rows_per_chunk:
            # a whole uncompressed chunk: straight from the file into place
            mask, _ = ds.id.read_direct_chunk((chunk_start, *zeros), out=flat_dest[a:b])
            if not mask:
                continue
        cache_key = (where, chunk_start)
        chunk = decoded.get(cache_key) if decoded is not None else None
        if chunk is None:
            mask, raw = ds.id.read_direct_chunk((chunk_start, *zeros))
            if mask:  # some filter was skipped for this chunk: let HDF5 decode it
                ds.read_direct(dest, *hdf5_reads)
                continue
            in_place = flat_dest[a:b] if hi - lo == rows_per_chunk else None
            chunk = _decode(raw, filters, chunk_bytes, ds.dtype.itemsize, in_place) if filters \
                else np.frombuffer(raw, np.uint8)
            if chunk is in_place:
                continue  # a whole chunk, unshuffled straight into place
            if decoded is not None and (lo > chunk_start or hi < chunk_start + rows_per_chunk):
                decoded.clear()  # keep only the chunk being picked from
                decoded[cache_key] = chunk
        flat_dest[a:b] = chunk[(lo - chunk_start) * row_bytes:(hi - chunk_start) * row_bytes]
