"""Rows that HDF5 stores as plain bytes, read with ``pread`` outside HDF5's lock.

A dataset with no filters and a fixed-size type, stored contiguously or in
chunks that hold whole rows, keeps each run of rows of one chunk as one piece
of the file.  Those bytes can be read with :func:`os.preadv` straight into the
destination: no HDF5 selection machinery, no intermediate buffer, and without
h5py's process-wide lock, so several threads read (and fault in fresh output
pages) at once.  :func:`plain_layout` finds where the pieces are, once per
dataset; :func:`pread_rows` reads them.

Examples
--------
>>> layout = plain_layout(f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data"])  # doctest: +SKIP
>>> out = np.empty((10, 2, 512, 128), np.uint16)                                   # doctest: +SKIP
>>> pread_rows(f.id.get_vfd_handle(), layout, 0, 10, out)                          # doctest: +SKIP
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np


@dataclass(frozen=True)
class PlainLayout:
    """Where a plainly stored dataset's rows are in its file.

    Attributes
    ----------
    nrows, row_bytes
        The dataset's rows and the bytes of one row.
    offset
        Contiguous layout: the file offset of row 0 (None for chunked layout).
    chunk_rows
        Chunked layout: rows per chunk (0 for contiguous layout).
    chunk_offsets
        Chunked layout: the file offset of each chunk, -1 where HDF5 never wrote it.
    """

    nrows: int
    row_bytes: int
    offset: int | None = None
    chunk_rows: int = 0
    chunk_offsets: np.ndarray | None = None

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int, int]] | None:
        """``(file offset, offset in the destination, bytes)`` of rows ``lo:hi``.

        None if some of the rows are in a chunk that was never written (HDF5
        knows its fill value).

        >>> PlainLayout(10, 4, offset=100).pieces(2, 5)
        [(108, 0, 12)]
        >>> PlainLayout(10, 4, chunk_rows=4, chunk_offsets=np.array([0, 64, -1])).pieces(3, 6)
        [(12, 0, 4), (64, 4, 8)]
        """
        rb = self.row_bytes
        if self.offset is not None:
            return [(self.offset + lo * rb, 0, (hi - lo) * rb)]
        c = self.chunk_rows
        pieces = []
        for k in range(lo // c, (hi - 1) // c + 1):
            start, stop = max(lo, k * c), min(hi, (k + 1) * c)
            base = int(self.chunk_offsets[k]) if k < len(self.chunk_offsets) else -1
            if base < 0:
                return None
            pieces.append((base + (start - k * c) * rb, (start - lo) * rb, (stop - start) * rb))
        return pieces


def _chunk_offsets(dsid: h5py.h5d.DatasetID, nchunks: int, chunk_rows: int) -> np.ndarray:
    """File offset of every chunk along the rows (-1: not written)."""
    offsets = np.full(nchunks, -1, np.int64)

    def visit(info: h5py.h5d.StoreInfo) -> None:
        if info.filter_mask == 0 and info.byte_offset is not None:
            offsets[info.chunk_offset[0] // chunk_rows] = info.byte_offset

    dsid.chunk_iter(visit)
    return offsets


def plain_layout(ds: h5py.Dataset) -> PlainLayout | None:
    """The layout of a dataset whose rows can be read with ``pread``, else None.

    That is: no filters, a fixed-size numeric or bool type, no user block in the
    file, and contiguous storage (allocated) or chunks holding whole rows.

    Examples
    --------
    >>> plain_layout(f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data"])  # doctest: +SKIP
    PlainLayout(nrows=200, row_bytes=262144, offset=None, chunk_rows=32, ...)
    """
    if not ds.shape or ds.dtype.kind not in "biufc" or ds.dtype.metadata:
        return None
    row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    nrows = ds.shape[0]
    try:
        plist = ds.id.get_create_plist()
        if plist.get_nfilters() or ds.file.userblock_size or row_bytes == 0:
            return None
        layout = plist.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            return None if offset is None else PlainLayout(nrows, row_bytes, offset=offset)
        if layout == h5py.h5d.CHUNKED and ds.chunks[1:] == ds.shape[1:]:
            c = ds.chunks[0]
            return PlainLayout(nrows, row_bytes, chunk_rows=c,
                               chunk_offsets=_chunk_offsets(ds.id, -(-nrows // c), c))
    except (AttributeError, ValueError, RuntimeError):  # an h5py or HDF5 without these calls
        return None
    return None


def pread_rows(fd: int, layout: PlainLayout, lo: int, hi: int, dest: np.ndarray) -> bool:
    """Read rows ``lo:hi`` into ``dest`` (C-contiguous, the dataset's dtype and row shape).

    Returns False, having read nothing useful, if a chunk was never written or the
    file is shorter than the layout says; the caller then reads through HDF5.
    """
    if hi <= lo:
        return True
    pieces = layout.pieces(lo, hi)
    if pieces is None:
        return False
    flat = dest.reshape(-1).view(np.uint8)
    for file_offset, at, size in pieces:
        if os.preadv(fd, [flat[at: at + size]], file_offset) != size:
            return False
    return True
