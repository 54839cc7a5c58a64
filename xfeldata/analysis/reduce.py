"""Masked sums and means: reductions that count only the recorded values, in one pass per chunk.

``masked_mean(det, ["trainId", "pulseId"])`` is
``det["image.data"].where(det["present"]).mean(["trainId", "pulseId"])`` without
the float64 copy of every chunk that ``where()`` makes: each block of the data
is summed as it is read (integers in an integer accumulator, floats in
float64) over the frames that ``present`` marks, and the count comes from
``present``.

Dtype rules: :func:`masked_sum` of bool and integer data is int64 (uint64 for
unsigned data), exact; of floating data float64 (float32 summed in float64).
:func:`masked_mean` is float64, NaN where nothing was counted.  NaN values of
floating data are not counted (as xarray's ``mean`` skips them by default).

64-bit integers (timestamps in ns, counters) are summed as their high and
low 32-bit halves, each exactly in int64, so no sum wraps: the mean of
values near 2**63 is right, and a :func:`masked_sum` that does not fit its
dtype is an ``OverflowError`` naming the array, not a wrapped number.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import dask.array as da
import numpy as np
import xarray as xr

#: Elements an inner add of the frame loop should at least cover (else one masked ``np.add.reduce``).
_MIN_STEP = 4096


def _inputs(data: xr.DataArray | xr.Dataset, dims: str | Sequence[Hashable] | None,
            present: xr.DataArray | None) -> tuple[xr.DataArray, list[Hashable], xr.DataArray | None]:
    """The data, the reduced dims in the data's order and ``present`` aligned to the data."""
    if isinstance(data, xr.Dataset):
        if "image.data" not in data:
            raise KeyError(f"the Dataset has no 'image.data' variable; it has {sorted(data.data_vars)}")
        if present is None:
            present = next((data[k] for k in ("present", "image.present") if k in data), None)
        data = data["image.data"]
    name = data.name or "the array"
    if data.dtype.kind not in "biuf":
        raise TypeError(f"{name} is {data.dtype}: masked_sum/masked_mean reduce bool, integer and float data")
    wanted = list(data.dims) if dims is None else [dims] if isinstance(dims, str) else list(dims)
    missing = [d for d in wanted if d not in data.dims]
    if missing:
        raise ValueError(f"{name} has no {missing} dimension(s) to reduce over (it has {data.dims})")
    reduced = [d for d in data.dims if d in wanted]
    if present is not None:
        if present.dtype != bool:
            raise TypeError(f"present must be boolean, not {present.dtype}")
        extra = [d for d in present.dims if d not in data.dims]
        if extra:
            raise ValueError(f"present has dims {extra} that {name} lacks (it has {data.dims})")
        try:
            data, present = xr.align(data, present, join="exact")
        except ValueError as exc:
            raise ValueError(f"present and {name} have different coordinates: {exc}") from None
        present = present.transpose(*[d for d in data.dims if d in present.dims])
    return data, reduced, present


def _mask_array(data: xr.DataArray, present: xr.DataArray) -> np.ndarray | da.Array:
    """``present`` as an array of the data's ndim (length 1 on the dims it lacks), chunked like the data."""
    mask = present.data[tuple(slice(None) if d in present.dims else None for d in data.dims)]
    if data.chunks is None:
        return np.asarray(mask)
    chunks = tuple(c if n > 1 else (1,) for c, n in zip(data.chunks, mask.shape, strict=True))
    return mask.rechunk(chunks) if isinstance(mask, da.Array) else da.from_array(mask, chunks=chunks)


def _accumulator(dtype: np.dtype, n_summed: int) -> np.dtype:
    """Accumulator of one block: 32-bit for 8/16-bit integers while it cannot overflow, else 64-bit."""
    if dtype.kind == "f":
        return np.dtype(np.float64)
    unsigned = dtype.kind in "ub"
    if dtype.itemsize <= 2 and n_summed * 2 ** (8 * dtype.itemsize) < 2**31:
        return np.dtype(np.uint32 if unsigned else np.int32)
    return np.dtype(np.uint64 if unsigned else np.int64)


def _halves(dtype: np.dtype) -> bool:
    """Whether integers of ``dtype`` are summed as two 32-bit halves (64-bit integers)."""
    return dtype.kind in "iu" and dtype.itemsize == 8


def _block_sum(x: np.ndarray, mask: np.ndarray | None, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_summed`; for 64-bit integers, the int64 sums of their high and low 32-bit halves on a
    last axis of 2 (see :func:`_exact_sum`), which cannot wrap."""
    if not _halves(x.dtype):
        return _summed(x, mask, axes)
    high, count = _summed((x >> 32).astype(np.int64), mask, axes)
    low, _ = _summed((x & 0xFFFFFFFF).astype(np.int64), mask, axes)
    return np.stack([high, low], axis=-1), count


def _summed(x: np.ndarray, mask: np.ndarray | None, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the values of ``x`` over ``axes`` where ``mask`` (broadcast to ``x``) is True.

    Integer and bool data: exact integer sum (int64/uint64; wraps past 64 bits).  Float data:
    float64 sum and count of the non-NaN values.  Where the mask is
    constant over large pieces of ``x`` (one flag per frame), those pieces
    are added one at a time into an accumulator, so nothing of the size
    of ``x`` is allocated (sums that met a NaN are done again for those
    pixels only); otherwise one ``np.add.reduce(..., where=)``.
    """
    dtype = x.dtype
    if dtype.kind == "b":
        x = x.view(np.uint8)
    n_r = len(axes)
    xs = np.moveaxis(x, axes, range(n_r))
    rshape, kshape = xs.shape[:n_r], xs.shape[n_r:]
    n_summed = int(np.prod(rshape))
    acc_dtype = _accumulator(x.dtype, n_summed)
    ms = np.ones((1,) * x.ndim, bool) if mask is None else np.moveaxis(mask, axes, range(n_r))
    mr = np.broadcast_to(ms, rshape + ms.shape[n_r:])
    mk_shape = ms.shape[n_r:]
    counts = mr.sum(axis=tuple(range(n_r)), dtype=np.int64)
    pieces = int(np.prod(mk_shape)) * n_summed
    present_at = np.broadcast_to(ms, xs.shape)  # a view
    summed_axes = tuple(range(n_r))
    if not (pieces and x.size // pieces >= _MIN_STEP):  # a mask per pixel: one masked reduce
        if x.dtype.kind == "f":
            total, count = _skipping_nan(xs, present_at, summed_axes)
        else:
            total = np.add.reduce(xs, axis=summed_axes, dtype=acc_dtype, where=present_at)
            count = np.broadcast_to(counts, kshape)
        return _widen(total, dtype), count
    total = np.zeros(kshape, acc_dtype)
    for k in np.ndindex(*mk_shape):
        sel = tuple(i if s > 1 else slice(None) for i, s in zip(k, mk_shape, strict=True))
        into = total[sel]
        for r in zip(*np.nonzero(mr[(Ellipsis, *k)]), strict=True):
            np.add(into, xs[r][sel], out=into, casting="unsafe")
    count = np.broadcast_to(counts, kshape)
    if x.dtype.kind == "f":  # sums that met a NaN: again for those pixels, NaN values left out
        nan_at = np.nonzero(np.isnan(total))
        if nan_at[0].size:
            count = count.copy()
            total[nan_at], count[nan_at] = _skipping_nan(xs[(Ellipsis, *nan_at)],
                                                         present_at[(Ellipsis, *nan_at)], summed_axes)
    return _widen(total, dtype), count


def _skipping_nan(values: np.ndarray, present: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """float64 sum and count over ``axes`` of the non-NaN ``values`` where ``present``."""
    counted = present & ~np.isnan(values)
    return (np.add.reduce(values, axis=axes, dtype=np.float64, where=counted),
            counted.sum(axis=axes, dtype=np.int64))


def _widen(total: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A block's sum in the dtype of the cross-block sum (int64, uint64 or float64)."""
    return total.astype(_sum_dtype(dtype), copy=False)


def _carried(halves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(high, low)`` with the sum ``high * 2**32 + low`` and ``0 <= low < 2**32``."""
    high, low = halves[..., 0], halves[..., 1]
    return high + (low >> 32), low & 0xFFFFFFFF


def _exact_sum(halves: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """The sum of 64-bit integers from their halves' sums, in int64 (uint64 if unsigned), or an
    ``OverflowError`` where it does not fit."""
    high, low = _carried(halves)
    out = np.dtype(np.uint64 if dtype.kind == "u" else np.int64)
    lo, hi = (0, 2**32) if dtype.kind == "u" else (-(2**31), 2**31)
    outside = (high < lo) | (high >= hi)
    if outside.any():
        at = tuple(int(i) for i in np.argwhere(outside)[0])
        raise OverflowError(f"a sum of {name} ({dtype}) is {int(high[at]) * 2**32 + int(low[at])}, outside "
                            f"{out}: convert it to float64 (or subtract an offset) first")
    return (high.astype(out) << out.type(32)) | low.astype(out)


def _float_sum(halves: np.ndarray) -> np.ndarray:
    """The float64 sum of 64-bit integers from their halves' sums (rounded once, at the end)."""
    high, low = _carried(halves)
    return high.astype(np.float64) * 2.0**32 + low.astype(np.float64)


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "f":
        return np.dtype(np.float64)
    return np.dtype(np.uint64 if dtype.kind == "u" else np.int64)


def _sum_count(data: xr.DataArray, reduced: list[Hashable],
               present: xr.DataArray | None) -> tuple[np.ndarray | da.Array, np.ndarray | da.Array]:
    """Sum and count arrays over the kept dims (in the data's order)."""
    axes = tuple(data.get_axis_num(d) for d in reduced)
    mask = None if present is None else _mask_array(data, present)
    if data.chunks is None:
        return _block_sum(np.asarray(data.data), mask, axes)
    x = data.data
    ind = tuple(range(x.ndim))
    out_dtype = np.dtype(np.int64) if _halves(x.dtype) else _sum_dtype(x.dtype)

    def sums(block: np.ndarray, mblock: np.ndarray | None = None) -> np.ndarray:
        total, count = _block_sum(block, mblock, axes)
        both = np.stack(np.broadcast_arrays(total.astype(np.float64), count), axis=-1) \
            if x.dtype.kind == "f" else total
        return np.expand_dims(both, axes)

    args = [x, ind] + ([mask, ind] if mask is not None else [])
    new_axes = {x.ndim: 2} if x.dtype.kind == "f" or _halves(x.dtype) else {}
    per_block = da.blockwise(sums, ind + tuple(new_axes), *args, new_axes=new_axes,
                             adjust_chunks={a: 1 for a in axes}, dtype=out_dtype,
                             meta=np.empty((0,) * (x.ndim + len(new_axes)), out_dtype))
    summed = per_block.sum(axis=axes, dtype=out_dtype)
    if x.dtype.kind == "f":
        return summed[..., 0], summed[..., 1].astype(np.int64)
    # integer data has no NaN: the count is that of present, which is small
    if mask is None:
        count = np.int64(np.prod([x.shape[a] for a in axes]))
    else:
        count = mask.sum(axis=axes, dtype=np.int64) * np.int64(
            np.prod([x.shape[a] for a in axes if mask.shape[a] == 1]))
    kept = [i for i in ind if i not in axes]
    count = da.broadcast_to(count, tuple(x.shape[i] for i in kept)) if isinstance(count, da.Array) else count
    return summed, count


def _labelled(values: np.ndarray | da.Array, data: xr.DataArray, reduced: list[Hashable]) -> xr.DataArray:
    kept = [d for d in data.dims if d not in reduced]
    coords = {k: v for k, v in data.coords.items() if not set(v.dims) & set(reduced)}
    if not isinstance(values, da.Array):
        values = np.array(np.broadcast_to(values, tuple(data.sizes[d] for d in kept)))
    return xr.DataArray(values, dims=kept, coords=coords, attrs=dict(data.attrs), name=data.name)


def masked_sum(data: xr.DataArray | xr.Dataset, dims: str | Sequence[Hashable] | None = None,
               present: xr.DataArray | None = None) -> xr.DataArray:
    """Sum over ``dims`` of the values where ``present`` is True, in one pass per chunk.

    Parameters
    ----------
    data, dims, present
        As for :func:`masked_mean`.

    Returns
    -------
    xarray.DataArray
        The kept dims and their coords; int64 for bool and integer data (uint64
        for unsigned), exact; float64 for floats, NaN values left out.  0 where
        nothing was counted (:func:`masked_mean` gives NaN there).

    Examples
    --------
    >>> x = xr.DataArray(np.array([[1, 2], [30, 40]], np.uint16), dims=("trainId", "module"))
    >>> seen = xr.DataArray(np.array([[True, False], [True, False]]), dims=("trainId", "module"))
    >>> masked_sum(x, "trainId", seen).values.tolist()
    [31, 0]
    """
    data, reduced, present = _inputs(data, dims, present)
    total, _ = _sum_count(data, reduced, present)
    if _halves(data.dtype):
        name = repr(data.name) if data.name is not None else "the array"
        total = _finished(total, lambda h: _exact_sum(h, data.dtype, name),
                          np.uint64 if data.dtype.kind == "u" else np.int64)
    return _labelled(total, data, reduced)


def _finished(halves: np.ndarray | da.Array, finish, dtype) -> np.ndarray | da.Array:
    """``finish`` applied to the halves' sums (last axis of 2), lazily if they are."""
    if isinstance(halves, da.Array):
        return halves.map_blocks(finish, drop_axis=halves.ndim - 1, dtype=dtype)
    return finish(halves)


def masked_mean(data: xr.DataArray | xr.Dataset, dims: str | Sequence[Hashable] | None = None,
                present: xr.DataArray | None = None) -> xr.DataArray:
    """Mean over ``dims`` of the values where ``present`` is True, in one pass per chunk.

    The same value as ``data.where(present).mean(dims)`` (filled cells and NaN
    values left out), without a float64 copy of the data: integer data is
    summed exactly in integers, floats in float64, and the count comes from
    ``present`` (and, for floats, the NaN values).

    Parameters
    ----------
    data
        The values (numpy or dask), or a detector Dataset (``run.detector()``,
        ``LiveBuffer.detector()``): its ``image.data``, masked with its
        ``present`` (or ``image.present``) unless ``present`` is given.
    dims
        Dims to average over (default: all).
    present
        Boolean mask over some of the data's dims; None counts every value.

    Returns
    -------
    xarray.DataArray
        float64 over the kept dims, with their coords; NaN where nothing was counted.

    Examples
    --------
    >>> x = xr.DataArray(np.array([[1, 2], [30, 40]], np.uint16), dims=("trainId", "module"))
    >>> seen = xr.DataArray(np.array([[True, False], [True, False]]), dims=("trainId", "module"))
    >>> masked_mean(x, "trainId", seen).values.tolist()
    [15.5, nan]
    """
    data, reduced, present = _inputs(data, dims, present)
    total, count = _sum_count(data, reduced, present)
    if _halves(data.dtype):
        total = _finished(total, _float_sum, np.float64)
    where = da.where if isinstance(total, da.Array) or isinstance(count, da.Array) else np.where
    mean = where(count == 0, np.nan, total.astype(np.float64) / where(count == 0, 1, count))
    return _labelled(mean, data, reduced)
