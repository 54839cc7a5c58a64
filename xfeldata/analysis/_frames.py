"""Blocks of whole frames: the chunking every analysis function applies its kernel to."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

MODULE_DIM = "module"
PIXEL_DIMS = ("slow_scan", "fast_scan")

#: Bytes of one block of whole frames (all modules) that kernels work on.
BLOCK_BYTES = 64 * 2**20


def data_array(arr: xr.DataArray | xr.Dataset, var: str = "image.data") -> xr.DataArray:
    """The pixel DataArray of a detector Dataset (``image.data``), or ``arr`` itself.

    >>> da_ = xr.DataArray(np.zeros((2, 1, 1)), dims=("module", *PIXEL_DIMS))
    >>> data_array(xr.Dataset({"image.data": da_})).dims
    ('module', 'slow_scan', 'fast_scan')
    """
    if isinstance(arr, xr.Dataset):
        if var not in arr:
            raise KeyError(f"the Dataset has no {var!r} variable; it has {sorted(arr.data_vars)}")
        arr = arr[var]
    missing = [d for d in (MODULE_DIM, *PIXEL_DIMS) if d not in arr.dims]
    if missing:
        raise ValueError(f"{arr.name or 'the array'} has no {missing} dimension(s); "
                         f"a detector array has 'module', 'slow_scan' and 'fast_scan' (it has {arr.dims})")
    return arr


def whole_frames(arr: xr.DataArray, core: Sequence[str], target_bytes: int = BLOCK_BYTES) -> xr.DataArray:
    """``arr`` with the ``core`` dims in one chunk each and blocks of about ``target_bytes``.

    numpy-backed arrays are returned as they are, and so are dask arrays whose
    blocks already hold whole frames and no more than ``target_bytes``.
    Otherwise the leading (frame) dims are cut so that a block of whole frames
    stays near ``target_bytes``.
    """
    if arr.chunks is None:
        return arr
    frame_bytes = arr.dtype.itemsize * int(np.prod([arr.sizes[d] for d in core]))
    chunked = dict(zip(arr.dims, arr.chunks, strict=True))
    biggest = frame_bytes * int(np.prod([max(chunked[d]) for d in arr.dims if d not in core]))
    if all(len(chunked[d]) == 1 for d in core) and biggest <= target_bytes:
        return arr  # already whole frames in blocks small enough: no copy to merge them
    chunks: dict[str, int] = {d: -1 for d in core}
    budget = max(1, target_bytes // max(frame_bytes, 1))
    for dim in reversed([d for d in arr.dims if d not in core]):
        n = arr.sizes[dim]
        take = int(max(1, min(n, budget)))
        chunks[dim] = take
        budget = max(1, budget // take)
    return arr.chunk(chunks)
