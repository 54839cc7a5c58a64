"""Azimuthal integration of many frames at once: radial profiles ``(..., q)`` and ``(..., q, chi)``.

Each pixel falls into one bin (no pixel splitting) by its centre.  The bin of
every pixel, worked out once per geometry and parameters and cached, turns each
frame into the sums of every bin in one pass over the frame as it lies in
memory: a compiled histogram (:mod:`~xfeldata.analysis._jit`), or, as its numpy
twin, the product with a sparse bins-by-pixels matrix (CSC), which sums in the
same (pixel) order in float64 and so gives the same bits.  The sums are float64:
in float32, a bin of 10^5 pixels of about 5000 ADU was 0.6 % off.
"""

from __future__ import annotations

import functools
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from dask.base import tokenize

from ._frames import MODULE_DIM, PIXEL_DIMS, data_array, map_frames, no_gain_plane, whole_frames
from ._jit import jitted
from .geometry import module_numbers, module_positions

if TYPE_CHECKING:  # scipy (the analysis extra) is imported where binning needs it
    import scipy.sparse

#: Radial units: name -> (coordinate name, units attr).
UNITS = {"q_nm^-1": ("q", "nm^-1"), "q_A^-1": ("q", "A^-1"), "2th_deg": ("2theta", "deg"),
         "r_mm": ("r", "mm")}


def pixel_radial(geom: Any, distance: float, wavelength: float, unit: str = "q_nm^-1",
                 modules: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radial value (in ``unit``) and azimuth chi (degrees) of every pixel centre.

    The beam is at the geometry's origin (EXtra-geom's and CrystFEL's
    convention), ``distance`` (m) from the sample along z; ``wavelength`` in m.
    Arrays are ``(module, slow_scan, fast_scan)``.  chi is ``atan2(y, x)``.

    Examples
    --------
    >>> from extra_geom import AGIPD_1MGeometry
    >>> geom = AGIPD_1MGeometry.from_quad_positions(
    ...     quad_pos=[(-525, 625), (-550, -10), (520, -160), (542.5, 475)])
    >>> q, chi = pixel_radial(geom, 0.2, 1.3e-10)
    >>> q.shape, bool(q.min() > 0)
    ((16, 512, 128), True)
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {sorted(UNITS)}, not {unit!r}")
    pos = geom.get_pixel_positions()
    if modules is not None:
        pos = pos[modules]
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2] + distance
    r = np.hypot(x, y)
    two_theta = np.arctan2(r, z)
    chi = np.degrees(np.arctan2(y, x))
    if unit == "r_mm":
        return r * 1e3, chi
    if unit == "2th_deg":
        return np.degrees(two_theta), chi
    scale = 1e9 if unit == "q_nm^-1" else 1e10
    return 4 * np.pi / (wavelength * scale) * np.sin(two_theta / 2), chi


def _bins(values: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """Bin index of each value among ``n`` equal bins over [lo, hi]; -1 outside."""
    index = np.floor((values - lo) * (n / (hi - lo))).astype(np.int64)
    index[values == hi] = n - 1
    index[~((values >= lo) & (values <= hi))] = -1
    return index


def _matrix(bins: np.ndarray, n_bins: int) -> scipy.sparse.csc_matrix:
    """The bins-by-pixels matrix (CSC: one entry per binned pixel's column) of 1s."""
    import scipy.sparse

    pixels = np.flatnonzero(bins >= 0)
    ones = np.ones(len(pixels), np.float64)
    return scipy.sparse.csc_matrix((ones, (bins[pixels], pixels)), shape=(n_bins, bins.size))


class _Binning:
    """The bin of every pixel for one call's parameters, as an index and as a matrix, and the bin edges.

    Its dask token is made once, from the bins: a graph names its blocks
    without hashing the matrix again on every call.
    """

    def __init__(self, bins: np.ndarray, n_bins: int, edges: tuple[float, ...]) -> None:
        self.bins = bins.astype(np.int32).ravel()  # (pixels,): bin index, -1 none
        self.n_bins = n_bins
        self.edges = edges  # (lo, hi) of the radial bins, then (lo, hi) of chi for 2-D
        self.token = tokenize(self.bins, n_bins)

    def __dask_tokenize__(self) -> str:
        return self.token

    @functools.cached_property
    def matrix(self) -> scipy.sparse.csc_matrix:
        """(bins, pixels): its product with a frame sums the bins (the numpy twin's; built when it first runs)."""
        return _matrix(self.bins, self.n_bins)

    @functools.cached_property
    def pixels_per_bin(self) -> np.ndarray:
        """(bins,) float64: the counts when no pixel is left out."""
        return np.bincount(self.bins[self.bins >= 0], minlength=self.n_bins).astype(np.float64)

    def without(self, leave_out: np.ndarray) -> _Binning:
        """This binning with the pixels where ``leave_out`` is True in no bin."""
        return _Binning(np.where(np.asarray(leave_out, bool).ravel(), -1, self.bins), self.n_bins, self.edges)


#: Sample-detector distances (m) and wavelengths (m) beyond these are refused as given in other units
#: (mm, Angstrom, nm): the longest SAXS flight tubes are tens of metres; soft X-rays reach a few nm.
MAX_DISTANCE, MAX_WAVELENGTH = 100.0, 1e-7

#: Binnings per geometry (dropped with it), keyed by all the other parameters.
_BINNINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_CACHED = 8  # binnings kept per geometry


def _binning(geom: Any, modules: np.ndarray, distance: float, wavelength: float, unit: str, npt: int,
             q_range: tuple[float, float] | None, npt_azim: int | None = None,
             azimuth_range: tuple[float, float] | None = None) -> _Binning:
    """The cached :class:`_Binning` of these parameters (built on first use)."""
    for name, n in (("npt", npt), ("npt_azim", npt_azim)):
        if n is not None and (not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1):
            raise ValueError(f"{name} must be a whole number of bins, 1 or more, not {n!r}")
    for name, value in (("distance", distance), ("wavelength", wavelength)):
        if not value > 0:
            raise ValueError(f"{name} must be positive (in metres), not {value!r}")
    if distance > MAX_DISTANCE:
        raise ValueError(f"distance {distance!r} m is beyond any detector ({MAX_DISTANCE:g} m): the distance is "
                         f"in metres (250 mm is 0.25)")
    if wavelength > MAX_WAVELENGTH:
        raise ValueError(f"wavelength {wavelength!r} m is no X-ray wavelength (at most {MAX_WAVELENGTH:g} m): the "
                         f"wavelength is in metres (1.3 Angstrom is 1.3e-10)")
    key = (tuple(modules.tolist()), float(distance), float(wavelength), unit, int(npt),
           None if q_range is None else tuple(map(float, q_range)), npt_azim,
           None if azimuth_range is None else tuple(map(float, azimuth_range)))
    try:
        cached = _BINNINGS.setdefault(geom, {})
    except TypeError:  # an object that cannot be weakly referenced: not cached
        cached = {}
    if key in cached:
        return cached[key]
    radial, chi = pixel_radial(geom, distance, wavelength, unit, modules)
    lo, hi = _range(radial, q_range)
    index = _bins(radial, npt, lo, hi)
    edges: tuple[float, ...] = (lo, hi)
    n_bins = npt
    if npt_azim is not None:
        c_lo, c_hi = _range(chi, azimuth_range)
        c_bin = _bins(chi, npt_azim, c_lo, c_hi)
        index = np.where((index >= 0) & (c_bin >= 0), index * npt_azim + c_bin, -1)
        edges, n_bins = (lo, hi, c_lo, c_hi), npt * npt_azim
    binning = _Binning(index, n_bins, edges)
    if len(cached) >= _MAX_CACHED:
        cached.pop(next(iter(cached)))
    cached[key] = binning
    return binning


@jitted
def _histogram_compiled(frames: np.ndarray, bins: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
    """Each frame's finite pixels summed into their bins (``bins`` -1: none), in pixel order and in
    float64 as the twin's matrix product, with the number of them; ``sums``, ``counts`` zeroed
    float64 ``(frame, bin)``."""
    for f in range(frames.shape[0]):
        frame, total, count = frames[f], sums[f], counts[f]
        for p in range(frame.shape[0]):
            b = bins[p]
            x = np.float64(frame[p])
            if b >= 0 and np.isfinite(x):
                total[b] += x
                count[b] += 1.0


def _histogram(frames: np.ndarray, binning: _Binning) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the finite pixels in each bin, ``(frame, bin)`` float64, of ``(frame, pixel)``."""
    compiled = _histogram_compiled.compiled()
    if compiled is not None:
        sums = np.zeros((len(frames), binning.n_bins), np.float64)
        counts = np.zeros_like(sums)
        compiled(frames, binning.bins, sums, counts)
        return sums, counts
    matrix = binning.matrix
    sums = np.empty((len(frames), binning.n_bins), np.float64)
    counts = np.empty_like(sums)
    for i, frame in enumerate(frames):
        frame = frame if frame.dtype.kind == "f" else frame.astype(np.float64)
        sums[i] = matrix @ frame  # one pass over the frame as it lies in memory
        counts[i] = binning.pixels_per_bin
        # A NaN or infinite pixel makes its bin's sum NaN or infinite, so finite
        # sums mean that no binned pixel is to be left out.
        if not np.isfinite(sums[i]).all():
            valid = np.isfinite(frame)
            sums[i] = matrix @ np.where(valid, frame, 0)
            counts[i] = matrix @ valid.astype(np.float64)
    return sums, counts


class _Integrator:
    """The block kernel of :func:`_integrate`: mean of each bin of every frame, NaN where a bin is empty.

    An object, not a closure, so that dask names its blocks by the binning's token.
    """

    def __init__(self, binning: _Binning, out_shape: tuple[int, ...]) -> None:
        self.binning, self.out_shape = binning, out_shape

    def __dask_tokenize__(self) -> tuple:
        return ("radial-profile", self.binning.token, self.out_shape)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        lead = block.shape[:-3]
        sums, counts = _histogram(block.reshape(-1, self.binning.bins.size), self.binning)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.divide(sums, counts, out=sums)
        out[counts == 0] = np.nan
        return out.astype(np.float32).reshape(lead + self.out_shape)


def _left_out(mask: np.ndarray | xr.DataArray, arr: xr.DataArray, geom: Any, modules: np.ndarray) -> np.ndarray:
    """``mask`` as a boolean ``(module, slow_scan, fast_scan)`` of ``arr``'s modules, in their order.

    A DataArray is selected by its ``module`` coordinate (the data's module numbers); a numpy
    array holds either ``arr``'s modules or every module of the geometry (then indexed by
    ``modules``, the geometry's indices of ``arr``'s modules).
    """
    pixels = tuple(arr.sizes[d] for d in PIXEL_DIMS)
    if isinstance(mask, xr.DataArray):
        other = [d for d in mask.dims if d not in (MODULE_DIM, *PIXEL_DIMS)]
        if other or set(PIXEL_DIMS) - set(mask.dims):
            raise ValueError(f"the mask has dims {mask.dims}: it needs ({MODULE_DIM}, slow_scan, fast_scan) only "
                             f"(reduce the others, e.g. bad_pixels.any({other[0] if other else 'cell'!r}))")
        if MODULE_DIM in mask.coords:
            labels = module_numbers(arr, geom)
            missing = np.setdiff1d(labels, mask[MODULE_DIM].values)
            if len(missing):
                raise ValueError(f"the mask has no module(s) {missing.tolist()} of the data")
            mask = mask.sel({MODULE_DIM: labels})
        return np.asarray(mask.transpose(MODULE_DIM, *PIXEL_DIMS).values, bool)
    mask = np.asarray(mask)
    if mask.shape == (len(modules), *pixels):
        if mask.shape == tuple(geom.expected_data_shape) and not np.array_equal(modules, np.arange(len(modules))):
            raise ValueError(f"a numpy mask of every module is ambiguous for data holding them in another order "
                             f"(geometry indices {modules.tolist()}): give it as a DataArray with a module "
                             f"coordinate, or the data in the geometry's order")
        return mask.astype(bool, copy=False)
    if mask.shape == tuple(geom.expected_data_shape):
        return mask[modules].astype(bool, copy=False)
    raise ValueError(f"the mask is {mask.shape}: it needs the data's modules {(len(modules), *pixels)} "
                     f"(modules {modules.tolist()} in that order) or every module of the geometry "
                     f"{tuple(geom.expected_data_shape)}")


def _integrate(arr: xr.DataArray, binning: _Binning, out_dims: list[str],
               out_shape: tuple[int, ...], mask: np.ndarray | None) -> xr.DataArray:
    if mask is not None:  # masked pixels out of every bin, once per call
        binning = binning.without(mask)
    core = [MODULE_DIM, *PIXEL_DIMS]
    arr = whole_frames(arr, core)
    return xr.apply_ufunc(
        partial(map_frames, _Integrator(binning, out_shape)), arr, input_core_dims=[core],
        output_core_dims=[out_dims], kwargs={"core_ndims": [3], "out_core": out_shape, "dtypes": [np.float32]},
        dask="allowed", keep_attrs=True)


def _range(values: np.ndarray, given: tuple[float, float] | None) -> tuple[float, float]:
    lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if given is None else map(float, given)
    if not hi > lo:
        raise ValueError(f"empty range ({lo}, {hi})")
    return lo, hi


def radial_profile(arr: xr.DataArray | xr.Dataset, geom: Any, distance: float, wavelength: float,
                   npt: int, q_range: tuple[float, float] | None = None, unit: str = "q_nm^-1",
                   mask: np.ndarray | None = None) -> xr.DataArray:
    """Azimuthally integrated intensity of every frame: ``(..., module, ss, fs)`` -> ``(..., q)``.

    The mean of the pixels whose centre falls in each of ``npt`` equal bins
    over ``q_range`` (no pixel splitting, no solid-angle or polarisation
    correction: pyFAI's ``integrate1d`` with ``method=("no", "histogram",
    "cython")`` and ``correctSolidAngle=False`` gives the same).  NaN pixels
    (missing modules or frames, masked pixels) and ``mask`` are left out; a
    bin without pixels is NaN.

    Parameters
    ----------
    arr
        Pixel data or a detector Dataset (its ``image.data``); numpy or dask.
    geom
        EXtra-geom geometry; the beam is at its origin.
    distance
        Sample to detector distance in metres (over 100 refused: in mm?).
    wavelength
        Photon wavelength in metres (over 1e-7 refused: in Angstrom or nm?).
    npt
        Number of bins.
    q_range
        ``(low, high)`` edges of the bins in ``unit`` (default: the range of the
        pixels of the modules in ``arr``, so a subset of modules has its own;
        give it to compare profiles of different modules).
    unit
        ``"q_nm^-1"`` (default), ``"q_A^-1"``, ``"2th_deg"`` or ``"r_mm"``.
    mask
        Optional boolean ``(module, slow_scan, fast_scan)``: True leaves a pixel
        out.  numpy: of the modules in ``arr``, in their order, or of every
        module of the geometry, in its order (refused as ambiguous where ``arr``
        holds every module in another order); a DataArray (e.g.
        ``constants["bad_pixels"].any(["cell", "gain_stage"])``) is selected by
        its ``module`` coordinate, the data's module numbers.

    Returns
    -------
    xarray.DataArray
        float32 ``(..., q)`` (``2theta``/``r`` for those units) with the bin
        centres as coordinate.

    Examples
    --------
    >>> from extra_geom import AGIPD_1MGeometry
    >>> geom = AGIPD_1MGeometry.from_quad_positions(
    ...     quad_pos=[(-525, 625), (-550, -10), (520, -160), (542.5, 475)])
    >>> frames = xr.DataArray(np.ones((4, 16, 512, 128), np.float32),
    ...     dims=("pulseId", "module", "slow_scan", "fast_scan"), coords={"module": range(16)})
    >>> prof = radial_profile(frames, geom, 0.2, 1.3e-10, npt=100)
    >>> prof.dims, float(prof.max())
    (('pulseId', 'q'), 1.0)
    """
    modules = module_positions(arr, geom)
    arr = no_gain_plane(data_array(arr), "radial_profile")
    binning = _binning(geom, modules, distance, wavelength, unit, npt, q_range)
    lo, hi = binning.edges
    name, units = UNITS[unit]
    left_out = None if mask is None else _left_out(mask, arr, geom, modules)
    out = _integrate(arr, binning, [name], (npt,), left_out)
    centres = lo + (np.arange(npt) + 0.5) * (hi - lo) / npt
    out = out.assign_coords({name: (name, centres, {"units": units})})
    out.attrs.update(distance=float(distance), wavelength=float(wavelength))
    return out


def radial_profile_2d(arr: xr.DataArray | xr.Dataset, geom: Any, distance: float, wavelength: float,
                      npt: int, npt_azim: int = 36, q_range: tuple[float, float] | None = None,
                      azimuth_range: tuple[float, float] = (-180.0, 180.0), unit: str = "q_nm^-1",
                      mask: np.ndarray | None = None) -> xr.DataArray:
    """Mean intensity in ``(q, chi)`` bins of every frame: ``(..., q, chi)``.

    As :func:`radial_profile`, with the azimuth ``chi = atan2(y, x)`` in degrees
    (geometry axes) cut into ``npt_azim`` equal bins over ``azimuth_range``.

    Examples
    --------
    >>> from extra_geom import AGIPD_1MGeometry
    >>> geom = AGIPD_1MGeometry.from_quad_positions(
    ...     quad_pos=[(-525, 625), (-550, -10), (520, -160), (542.5, 475)])
    >>> frames = xr.DataArray(np.ones((2, 16, 512, 128), np.float32),
    ...     dims=("pulseId", "module", "slow_scan", "fast_scan"))
    >>> radial_profile_2d(frames, geom, 0.2, 1.3e-10, npt=50, npt_azim=8).shape
    (2, 50, 8)
    """
    modules = module_positions(arr, geom)
    arr = no_gain_plane(data_array(arr), "radial_profile_2d")
    binning = _binning(geom, modules, distance, wavelength, unit, npt, q_range, npt_azim, azimuth_range)
    lo, hi, c_lo, c_hi = binning.edges
    name, units = UNITS[unit]
    left_out = None if mask is None else _left_out(mask, arr, geom, modules)
    out = _integrate(arr, binning, [name, "chi"], (npt, npt_azim), left_out)
    out = out.assign_coords({
        name: (name, lo + (np.arange(npt) + 0.5) * (hi - lo) / npt, {"units": units}),
        "chi": ("chi", c_lo + (np.arange(npt_azim) + 0.5) * (c_hi - c_lo) / npt_azim, {"units": "deg"}),
    })
    out.attrs.update(distance=float(distance), wavelength=float(wavelength))
    return out
