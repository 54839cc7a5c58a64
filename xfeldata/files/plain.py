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

import h5py
import numpy as np


class PlainLayout:
    """Where a plainly stored dataset's rows are in its file.

    Chunk offsets are asked of HDF5 once per chunk, when first needed.

    Parameters
    ----------
    dsid
        The dataset's low-level identifier (asked for chunk offsets).
    dtype
        The numpy dtype whose bytes the file holds (byte order included).
    nrows, row_bytes
        The dataset's rows and the bytes of one row.
    offset
        Contiguous layout: the file offset of row 0 (None for chunked layout).
    chunk_rows
        Chunked layout: rows per chunk (0 for contiguous layout).
    """

    def __init__(self, dsid: h5py.h5d.DatasetID | None, dtype: np.dtype, nrows: int, row_bytes: int,
                 offset: int | None = None, chunk_rows: int = 0):
        self.dsid, self.dtype, self.nrows, self.row_bytes = dsid, np.dtype(dtype), nrows, row_bytes
        self.offset, self.chunk_rows = offset, chunk_rows
        self._chunk_offsets: dict[int, int | None] = {}

    def __repr__(self) -> str:
        where = f"offset={self.offset}" if self.offset is not None else f"chunk_rows={self.chunk_rows}"
        return f"PlainLayout(nrows={self.nrows}, row_bytes={self.row_bytes}, {where})"

    def chunk_offset(self, k: int) -> int | None:
        """File offset of chunk ``k`` (along the rows); None if HDF5 never wrote it."""
        if k not in self._chunk_offsets:
            coord = (k * self.chunk_rows,) + (0,) * (len(self.dsid.shape) - 1)
            info = self.dsid.get_chunk_info_by_coord(coord)
            self._chunk_offsets[k] = info.byte_offset if info.filter_mask == 0 else None
        return self._chunk_offsets[k]

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int, int]] | None:
        """``(file offset, offset in the destination, bytes)`` of rows ``lo:hi``; chunks
        that follow each other in the file are one piece.

        None if some of the rows are in a chunk that was never written (HDF5
        knows its fill value).

        >>> PlainLayout(None, np.float32, 10, 4, offset=100).pieces(2, 5)
        [(108, 0, 12)]
        """
        rb = self.row_bytes
        if self.offset is not None:
            return [(self.offset + lo * rb, 0, (hi - lo) * rb)]
        c = self.chunk_rows
        pieces = []
        for k in range(lo // c, (hi - 1) // c + 1):
            start, stop = max(lo, k * c), min(hi, (k + 1) * c)
            base = self.chunk_offset(k)
            if base is None:
                return None
            offset, at, size = base + (start - k * c) * rb, (start - lo) * rb, (stop - start) * rb
            if pieces and pieces[-1][0] + pieces[-1][2] == offset and pieces[-1][2] + size <= 2**30:
                # chunks written in order lie back to back in the file: one piece (one
                # preadv; Linux reads at most 2 GiB a call)
                pieces[-1] = (pieces[-1][0], pieces[-1][1], pieces[-1][2] + size)
            else:
                pieces.append((offset, at, size))
        return pieces


def stored_as(dsid: h5py.h5d.DatasetID, dtype: np.dtype) -> bool:
    """True if the file holds the dataset's values as the bytes of ``dtype``: a
    fixed-size number or bool type whose HDF5 type is exactly numpy's (not, say, a
    12-bit integer or a float with an unusual exponent bias that HDF5 converts)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc" or dtype.metadata:
        return False
    try:
        stored = dsid.get_type()
        return stored.get_size() == dtype.itemsize and stored.equal(h5py.h5t.py_create(dtype))
    except (TypeError, ValueError, RuntimeError):
        return False


def layout_of(dsid: h5py.h5d.DatasetID, shape: tuple[int, ...], dtype: np.dtype,
              chunks: tuple[int, ...] | None, filtered: bool, userblock: int) -> PlainLayout | None:
    """The plain layout of a dataset from facts already known (e.g. its file index
    entry), else None: filters, a user block, a type that is not fixed-size
    numbers, or chunks that split rows rule ``pread`` out."""
    if filtered or userblock or not shape or not stored_as(dsid, dtype):
        return None
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if row_bytes == 0:
        return None
    if chunks is None:
        offset = dsid.get_offset()
        return None if offset is None else PlainLayout(dsid, dtype, shape[0], row_bytes, offset=offset)
    if tuple(chunks[1:]) != tuple(shape[1:]):
        return None
    return PlainLayout(dsid, dtype, shape[0], row_bytes, chunk_rows=chunks[0])


def plain_layout(ds: h5py.Dataset) -> PlainLayout | None:
    """The layout of a dataset whose rows can be read with ``pread``, else None.

    That is: no filters, a fixed-size numeric or bool type, no user block in the
    file, and contiguous storage (allocated) or chunks holding whole rows.

    Examples
    --------
    >>> plain_layout(f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data"])  # doctest: +SKIP
    PlainLayout(nrows=200, row_bytes=262144, chunk_rows=32)
    """
    try:
        plist = ds.id.get_create_plist()
        layout = plist.get_layout()
        if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
            return None
        return layout_of(ds.id, ds.shape, ds.dtype, ds.chunks, bool(plist.get_nfilters()),
                         ds.file.userblock_size)
    except (AttributeError, ValueError, RuntimeError):  # an h5py or HDF5 without these calls
        return None


def pread_rows(fd: int, layout: PlainLayout, lo: int, hi: int, dest: np.ndarray) -> bool:
    """Read rows ``lo:hi`` into ``dest`` (C-contiguous, the dataset's dtype and row size).

    Returns False, having read nothing useful, if ``dest`` does not match the
    layout's dtype and size, a chunk was never written, or the file is shorter
    than the layout says; the caller then reads through HDF5.
    """
    if hi <= lo:
        return True
    if dest.dtype != layout.dtype or dest.nbytes != (hi - lo) * layout.row_bytes:
        return False
    pieces = layout.pieces(lo, hi)
    return pieces is not None and pread_pieces(fd, pieces, dest)


def pread_pieces(fd: int, pieces: list[tuple[int, int, int]], dest: np.ndarray) -> bool:
    """Read ``(file offset, offset in dest, bytes)`` pieces into ``dest`` with ``preadv``.

    False if the file ends early or ``dest`` is not C-contiguous.  No HDF5 call:
    safe on any thread.
    """
    if not dest.flags.c_contiguous:
        return False
    flat = dest.reshape(-1).view(np.uint8)
    for file_offset, at, size in pieces:
        if os.preadv(fd, [flat[at: at + size]], file_offset) != size:
            return False
    return True


def pread_rows_to_frames(fd: int, layout: PlainLayout, lo: int, hi: int,
                         frames: list[np.ndarray]) -> bool:
    """Read rows ``lo:hi`` into one destination per row (each C-contiguous, the
    dataset's dtype and row size), with one ``preadv`` per contiguous piece of the file.

    The destinations may lie anywhere (e.g. one module's frames in a stacked
    array); returns False, like :func:`pread_rows`, when HDF5 must read instead.
    """
    if any(f.dtype != layout.dtype or not f.flags.c_contiguous for f in frames):
        return False
    return pread_rows_to_buffers(fd, layout, lo, hi, [f.reshape(-1).view(np.uint8) for f in frames])


def pread_rows_to_buffers(fd: int, layout: PlainLayout, lo: int, hi: int, buffers: list) -> bool:
    """:func:`pread_rows_to_frames` into writable byte buffers (e.g. memoryview slices of
    one array, cheaper to make than numpy views), one of ``layout.row_bytes`` per row;
    the caller makes sure they hold the dataset's dtype."""
    if hi <= lo:
        return True
    rb = layout.row_bytes
    if len(buffers) != hi - lo or any(len(b) != rb for b in buffers):
        return False
    pieces = layout.pieces(lo, hi)
    if pieces is None:
        return False
    for file_offset, at, size in pieces:
        first, last = at // rb, (at + size) // rb
        for i in range(first, last, _IOV_MAX):
            part = buffers[i: min(last, i + _IOV_MAX)]
            if os.preadv(fd, part, file_offset + (i - first) * rb) != len(part) * rb:
                return False
    return True


#: Buffers one ``preadv`` call takes at most (POSIX guarantees at least 16; Linux 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
