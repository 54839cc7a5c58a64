"""Photon counting and lit-pixel counts of calibrated (photon-energy scaled) frames."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import numpy as np
import xarray as xr

from ._frames import MODULE_DIM, PIXEL_DIMS, data_array, map_frames, no_gain_plane
from ._jit import jitted

#: Elements per step of :func:`_count_kernel`: a step's input, float32 scratch and output (1 MiB each)
#: stay in a core's L2 cache.
STEP = 1 << 18
#: Counts at or above this (2**31, exact in float32) do not fit the int32 output.
_INT32_LIMIT = np.float32(2**31)


#: Shortest contiguous run worth a step of its own; inputs of shorter runs are copied first.
_MIN_RUN = 1 << 12


def _contiguous_from(a: np.ndarray, b: np.ndarray) -> int:
    """The fewest leading axes of ``a`` and ``b`` (same shape) after which both are contiguous.

    >>> _contiguous_from(np.zeros((3, 4)), np.zeros((4, 3)).T), _contiguous_from(np.zeros((3, 4)), np.zeros((3, 4)))
    (2, 0)
    """
    return next(k for k in range(a.ndim + 1) if a[(0,) * k].flags.c_contiguous and b[(0,) * k].flags.c_contiguous)


def _steps(a: np.ndarray, b: np.ndarray, lead: int, step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """1-d views of ``a`` and ``b`` (same shape), at most ``step`` long, that cover both in the same
    order: a loop over the ``lead`` leading axes, then steps through what remains (contiguous)."""
    for index in np.ndindex(*a.shape[:lead]):
        x, y = a[index].reshape(-1), b[index].reshape(-1)
        for start in range(0, x.size, step):
            yield x[start:start + step], y[start:start + step]


@jitted
def _count_compiled(adu: np.ndarray, scale: np.float32, shift: np.float32, out: np.ndarray) -> int:
    """The counts of the 1-d ``adu`` into ``out`` in one pass; how many values are 2**31 photons
    or more (or +inf): where that is not 0, ``out`` is not to be used.

    Each count is the numpy twin's: ``adu`` as float32, divided by ``scale``,
    plus ``shift``, in float32; truncated to int32 where it is 1 or more, else
    0 (negative values, NaN), which is what the twin's cast and clip give.
    The loop has no exit, so that it is vectorised (an early return for the
    first overflow made it four times slower).
    """
    limit = np.float32(2.0**31)
    one = np.float32(1.0)
    over = 0
    for i in range(adu.shape[0]):
        x = np.float32(adu[i]) / scale + shift
        over += x >= limit
        out[i] = np.int32(x) if x >= one else np.int32(0)
    return over


#: Input dtypes whose float32 conversion numba does exactly as numpy (others: the numpy twin).
_COMPILED_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.uint8, np.int8, np.uint16, np.int16))


def _overflow(value: float, scale: np.float32) -> OverflowError:
    return OverflowError(f"photon_count: a pixel value of {value} ADU is {value / scale:.3g} photons, "
                         "more than the int32 counts hold (values must be finite)")


def _count_kernel(adu: np.ndarray, adu_per_photon: float, threshold: float,
                  out: np.ndarray | None = None) -> np.ndarray:
    """One pass over ``adu``: scale and shift in float32, truncate to int32, clip at 0.

    With compiled kernels (:mod:`~xfeldata.analysis._jit`), each contiguous
    run of ``adu`` and ``out`` in one compiled call.  The numpy twin goes in
    cache-sized steps; truncation is ``floor`` wherever the result is kept
    (values of 1 and more), and the clip at 0 takes everything else to 0:
    negative values, and NaN (a missing frame or masked pixel), which the cast
    turns into the most negative int32 (or 0).  The clip is an integer
    ``maximum`` against an array of zeros: numpy's scalar-operand path of it
    is not vectorised.  A count of 2**31 or more (or +inf) raises
    :class:`OverflowError` naming the first such value.
    The counts go to ``out`` (int32, ``adu``'s shape, maybe a view) or a new array.

    >>> _count_kernel(np.array([[-5.0, 35.0], [95.0, np.nan]], np.float32), 60, 0.5).tolist()
    [[0, 1], [2, 0]]
    """
    adu = np.asarray(adu)
    out = np.empty(adu.shape, np.int32) if out is None else out
    if not adu.size:
        return out
    lead = _contiguous_from(adu, out)
    if lead and int(np.prod(adu.shape[lead:])) < _MIN_RUN:  # short runs: count a contiguous copy
        np.copyto(out, _count_kernel(np.ascontiguousarray(adu), adu_per_photon, threshold))
        return out
    scale, shift = np.float32(adu_per_photon), np.float32(1.0 - threshold)
    compiled = _count_compiled.compiled() if adu.dtype in _COMPILED_DTYPES else None
    if compiled is not None:
        whole = int(np.prod(adu.shape[lead:]))
        for piece, counts in _steps(adu, out, lead, whole):
            if compiled(piece, scale, shift, counts):
                x = np.divide(piece, scale, dtype=np.float32) + shift
                raise _overflow(piece[x >= _INT32_LIMIT][0], scale)
        return out
    size = min(STEP, adu.size)
    scratch, zeros = np.empty(size, np.float32), np.zeros(size, np.int32)
    with np.errstate(invalid="ignore"):  # NaN and out-of-range values in the cast: clipped just after
        for piece, counts in _steps(adu, out, lead, STEP):
            x = scratch[:len(piece)]
            np.divide(piece, scale, out=x, dtype=np.float32)
            x += shift
            if np.fmax.reduce(x) >= _INT32_LIMIT:  # +inf or more photons than int32 holds: never a silent 0
                raise _overflow(piece[x >= _INT32_LIMIT][0], scale)  # (fmax skips NaN)
            np.copyto(counts, x, casting="unsafe")
            np.maximum(counts, zeros[:len(piece)], out=counts)
    return out


def photon_count(arr: xr.DataArray | xr.Dataset, adu_per_photon: float,
                 threshold: float = 0.5) -> xr.DataArray:
    """Photons per pixel: ``max(0, floor(adu / adu_per_photon + 1 - threshold))``.

    With the default ``threshold`` of 0.5 a pixel holding 0.5 to 1.5 photons'
    worth of signal counts 1, 1.5 to 2.5 counts 2, and so on.  NaN (missing
    frames, masked pixels) counts 0; ``present`` tells which frames exist.
    A value of ``+inf`` or of 2**31 photons or more raises :class:`OverflowError`
    rather than wrapping to a wrong count.

    Parameters
    ----------
    arr
        Offset-corrected data (e.g. from :func:`~xfeldata.analysis.calibrate`), or
        a Dataset (its ``image.data``); numpy or dask, any dims.
    adu_per_photon
        Signal of one photon in the data's units (1 for data already in photons).
    threshold
        Fraction of a photon above which the next photon counts.

    Returns
    -------
    xarray.DataArray
        int32, same dims and coords.

    Examples
    --------
    >>> adu = xr.DataArray(np.array([-5.0, 20, 35, 95, 125, np.nan]), dims="x")
    >>> photon_count(adu, 60).values.tolist()
    [0, 0, 1, 2, 2, 0]
    """
    if isinstance(arr, xr.Dataset):
        arr = data_array(arr)
    if not adu_per_photon > 0:
        raise ValueError(f"adu_per_photon must be positive, not {adu_per_photon}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a fraction of a photon, above 0 and at most 1, not {threshold}")
    no_gain_plane(arr, "photon_count")
    out = xr.apply_ufunc(partial(map_frames, _count_kernel), arr, dask="allowed", keep_attrs=True,
                         kwargs={"core_ndims": [0], "out_core": (), "dtypes": [np.int32], "into": True,
                                 "adu_per_photon": float(adu_per_photon), "threshold": float(threshold)})
    out.attrs.update(units="photons", adu_per_photon=float(adu_per_photon), threshold=float(threshold))
    return out.rename(f"{arr.name}.photons" if arr.name else "photons")


def lit_pixels(arr: xr.DataArray | xr.Dataset, threshold: float,
               dims: Sequence[str] | None = None) -> xr.DataArray:
    """Number of pixels above ``threshold`` per frame.

    Parameters
    ----------
    arr
        Pixel data (calibrated data, photon counts, ...) or a Dataset (its
        ``image.data``).
    threshold
        Pixels with a value greater than this count; NaN never counts.
    dims
        Dims of one frame (default: those of ``module``, ``slow_scan``,
        ``fast_scan``, ``y``, ``x`` that ``arr`` has).

    Returns
    -------
    xarray.DataArray
        int64 counts over the remaining (frame) dims, e.g. ``(trainId, pulseId)``.

    Examples
    --------
    >>> frames = xr.DataArray(np.array([[[0, 3], [5, 1]], [[0, 0], [0, 9]]]),
    ...                       dims=("pulseId", "slow_scan", "fast_scan"))
    >>> lit_pixels(frames, 2).values.tolist()
    [2, 1]
    """
    if isinstance(arr, xr.Dataset):
        arr = data_array(arr)
    no_gain_plane(arr, "lit_pixels")
    if dims is None:
        dims = [d for d in (MODULE_DIM, *PIXEL_DIMS, "y", "x") if d in arr.dims]
    out = (arr > threshold).sum(dim=list(dims)).astype(np.int64)
    out.attrs.update(threshold=float(threshold))
    return out.rename("lit_pixels")
