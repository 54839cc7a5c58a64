"""Blocks of whole frames: the chunking every analysis function applies its kernel to."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ..arrays import handed_over
from ..into import written_into

MODULE_DIM = "module"
PIXEL_DIMS = ("slow_scan", "fast_scan")
GAIN_PLANE_DIM = "gain"  # AGIPD raw frames: plane 0 the signal, plane 1 the gain signal

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


def no_gain_plane(arr: xr.DataArray, what: str) -> xr.DataArray:
    """``arr``, refused (ValueError) where it is raw AGIPD data (integers) with its two planes
    (signal, gain signal) on a ``gain`` axis, which ``what`` would take as signal.

    >>> raw = xr.DataArray(np.zeros((2, 1, 1), np.uint16), dims=(GAIN_PLANE_DIM, *PIXEL_DIMS), name="image.data")
    >>> no_gain_plane(raw.sel(gain=0), "photon_count").dims
    ('slow_scan', 'fast_scan')
    """
    if arr.sizes.get(GAIN_PLANE_DIM) == 2 and arr.dtype.kind in "ui":  # (LPD's gain axis holds its stages)
        raise ValueError(
            f"{what} takes calibrated (or one plane of) frames; {arr.name or 'the array'} has a {GAIN_PLANE_DIM!r} "
            f"axis, raw AGIPD data whose plane 1 is the gain signal: calibrate it first "
            f"(analysis.calibrate(det, analysis.dark_constants(dark_det))) or take the signal, .sel(gain=0)")
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


def map_frames(kernel: Callable[..., Any], *arrays: Any, core_ndims: Sequence[int],
               out_core: tuple[int, ...], dtypes: Sequence[Any], into: bool = False, **kwargs: Any) -> Any:
    """``kernel(*blocks, **kwargs)`` on every block of the loop (frame) dims, core dims whole.

    For ``xarray.apply_ufunc(..., dask="allowed")``: each of ``arrays`` has
    the loop axes (length 1 where broadcast, leading ones may be left out) followed by its
    ``core_ndims`` core axes, each core axis in one chunk.  ``kernel`` gets
    numpy blocks and returns one array per ``dtypes``, each of the block's
    loop shape followed by ``out_core``.  numpy inputs: one call.

    Unlike ``apply_ufunc(dask="parallelized")``, which concatenates every
    input's core (contracted) axes with a copy even when they are one chunk,
    the blocks reach ``kernel`` as they are: each core axis of an input is kept
    in the output as a length-1 axis and dropped afterwards by a view.

    ``into=True``: ``kernel`` also takes ``out=`` (None, or the block's place
    in the output, maybe not contiguous, to fill and return; with several
    outputs a tuple of those), and each output, computed whole, is written
    straight into one array (:func:`xfeldata.into.written_into`).

    >>> x = da.ones((4, 3), chunks=(2, 3))
    >>> map_frames(lambda b: b.sum(axis=-1, keepdims=True), x, core_ndims=[1], out_core=(1,),
    ...            dtypes=[float]).compute().ravel().tolist()
    [3.0, 3.0, 3.0, 3.0]
    """
    n_loop = max(a.ndim - n for a, n in zip(arrays, core_ndims, strict=True))
    if into and any(isinstance(a, da.Array) for a in arrays):
        return _written_into(partial(kernel, **kwargs), arrays, core_ndims, n_loop, out_core,
                             dtypes[0] if len(dtypes) == 1 else list(dtypes))
    # xarray leaves out leading broadcast axes: put them back (length 1)
    arrays = tuple(a if a.ndim == n_loop + n else a[(None,) * (n_loop + n - a.ndim)]
                   for a, n in zip(arrays, core_ndims, strict=True))
    if not any(isinstance(a, da.Array) for a in arrays):
        return kernel(*arrays, **kwargs)
    loop = tuple(range(n_loop))
    pairs, dropped = [], []
    letter = n_loop
    for a, n in zip(arrays, core_ndims, strict=True):
        core = tuple(range(letter, letter + n))
        letter += n
        dropped.extend(core)
        pairs += [a, loop + core]
    new = tuple(range(letter, letter + len(out_core)))
    n_dropped, n_out = len(dropped), len(dtypes)

    def run(*blocks: Any) -> Any:
        results = kernel(*blocks, **kwargs)
        results = results if n_out > 1 else (results,)
        shaped = tuple(r.reshape(r.shape[:n_loop] + (1,) * n_dropped + r.shape[n_loop:]) for r in results)
        return shaped if n_out > 1 else shaped[0]

    ndim = n_loop + n_dropped + len(out_core)
    # named by the kernel, not by ``run``: dask would pickle the closure, and a kernel object's
    # ``__dask_tokenize__`` (one made once for its large tables) would go unused
    name = f"{getattr(kernel, '__name__', type(kernel).__name__).strip('_')}-" \
           f"{tokenize(kernel, kwargs, out_core, list(map(str, dtypes)), *pairs)}"
    out = da.blockwise(run, loop + tuple(dropped) + new, *pairs, name=name,
                       new_axes=dict(zip(new, out_core, strict=True)),
                       adjust_chunks={d: 1 for d in dropped}, concatenate=False,
                       meta=np.empty((0,) * ndim, dtypes[0]))
    view = (slice(None),) * n_loop + (0,) * n_dropped
    if n_out == 1:
        return out[view]
    return tuple(da.map_blocks(operator.getitem, out, i, meta=np.empty((0,) * ndim, dt))[view]
                 for i, dt in enumerate(dtypes))


def _written_into(kernel: Callable[..., Any], arrays: Sequence[Any], core_ndims: Sequence[int], n_loop: int,
                  out_core: tuple[int, ...], dtype: Any) -> Any:
    """The output(s) of :func:`map_frames` (``into=True``; ``dtype`` a list: several):
    :func:`~xfeldata.into.written_into` blocks (the loop axes' blocks, the core axes whole),
    each output :func:`~xfeldata.arrays.handed_over`.

    Inputs without some leading loop axes get them (length 1) in the task, not as a graph layer.
    """
    pads = [n_loop + n - a.ndim for a, n in zip(arrays, core_ndims, strict=True)]
    loop, letter, pairs = tuple(range(n_loop)), n_loop, []
    for a, n, pad in zip(arrays, core_ndims, pads, strict=True):
        pairs += [a, loop[pad:] + tuple(range(letter, letter + n))]
        letter += n
    chunkss, inputs = da.core.unify_chunks(*pairs)
    chunks = tuple(chunkss[i] for i in range(n_loop)) + tuple((n,) for n in out_core)

    def blocks_of(index: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [tuple(i if a.numblocks[ax] > 1 else 0 for ax, i in enumerate(index[pad:n_loop])) + (0,) * n
                for a, n, pad in zip(inputs, core_ndims, pads, strict=True)]

    out = written_into(partial(_padded, kernel, tuple(pads)), inputs, chunks, dtype, blocks_of)
    return tuple(handed_over(o) for o in out) if isinstance(out, tuple) else handed_over(out)


def _padded(kernel: Callable[..., Any], pads: tuple[int, ...], *blocks: Any, out: Any = None) -> Any:
    """``kernel(*blocks, out=out)``, each block with ``pads`` new leading axes of length 1."""
    return kernel(*(b[(None,) * p] if p else b for b, p in zip(blocks, pads, strict=True)), out=out)
