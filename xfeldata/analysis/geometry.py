"""Detector images from module stacks, through an EXtra-geom geometry."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import xarray as xr
from dask.base import tokenize

from ..detectors.kinds import DETECTORS
from ._frames import MODULE_DIM, PIXEL_DIMS, data_array, map_frames, whole_frames
from ._jit import contiguous_frames, enabled, flat_frames

if TYPE_CHECKING:
    from . import _tiles

IMAGE_DIMS = ("y", "x")


def image_grid(geom: Any) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Shape of ``geom.position_modules`` images and their pixel centres in metres.

    Returns ``((ny, nx), y, x)``: the beam (the geometry's origin) is at
    ``x = y = 0``, as ``position_modules`` places it (its returned centre).

    Examples
    --------
    >>> from extra_geom import AGIPD_1MGeometry
    >>> geom = AGIPD_1MGeometry.from_quad_positions(
    ...     quad_pos=[(-525, 625), (-550, -10), (520, -160), (542.5, 475)])
    >>> shape, y, x = image_grid(geom)
    >>> shape, round(float(x[1] - x[0]), 6)
    ((1256, 1092), 0.0002)
    """
    layout = _layout(geom)
    return layout.shape, layout.y, layout.x


class _Layout(NamedTuple):
    """What assembling with one geometry needs, worked out once: see :func:`_layout`."""

    snapped: Any  # EXtra-geom's pixel-grid-aligned geometry, which copies the tiles
    shape: tuple[int, int]
    y: np.ndarray
    x: np.ndarray
    source: np.ndarray  # (ny * nx,) int32: each image pixel's index in the flat module stack, -1 in gaps
    token: str  # dask token of the layout (of ``source`` and ``shape``), made once


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layout(geom: Any) -> _Layout:
    """The snapped geometry and image grid of ``geom``, cached while ``geom`` lives.

    EXtra-geom geometries are immutable (``offset()`` and friends return new
    objects), so the cache never goes stale.
    """
    try:
        return _LAYOUTS[geom]
    except (KeyError, TypeError):
        pass
    snapped = geom._snapped()
    stack = np.arange(np.prod(geom.expected_data_shape), dtype=np.float64).reshape(geom.expected_data_shape)
    image, centre = snapped.position_modules(stack)  # where each pixel goes, tiles overlapping as they do
    # the snapped grid's pixel (x, y) size: square but DSSC's hexagons (236 x 204 um), as EXtra-geom plots it
    size_x, size_y = np.asarray(getattr(geom, "_pixel_shape", (geom.pixel_size, geom.pixel_size)), np.float64)
    y = (np.arange(image.shape[0]) - centre[0] + 0.5) * size_y
    x = (np.arange(image.shape[1]) - centre[1] + 0.5) * size_x
    source = np.where(np.isnan(image), -1, image).astype(np.int32).ravel()
    layout = _Layout(snapped, image.shape, y, x, source, tokenize(source, image.shape))
    try:
        _LAYOUTS[geom] = layout
    except TypeError:  # an object that cannot be weakly referenced: not cached
        pass
    return layout


#: What :class:`_Assembler` works out from a layout for a subset of modules (index maps, tile plans),
#: by (what, layout token, modules): kept in the process, not on the layout, because a layout pickled
#: into a ``dask.distributed`` task arrives in a worker without it.  The most recent few are kept.
_DERIVED: OrderedDict[tuple, Any] = OrderedDict()
_DERIVED_LOCK = threading.RLock()  # (a plan is made from an index map, itself derived)
_DERIVED_KEPT = 8


def _derived(what: str, layout: _Layout, modules: tuple[int, ...], make: Callable[[], Any]) -> Any:
    """``make()``, once per process for ``what``, ``layout`` and ``modules`` while it is among the most recent."""
    key = (what, layout.token, modules)
    with _DERIVED_LOCK:  # threads assembling blocks of one array wait for the first one's result
        if key in _DERIVED:
            _DERIVED.move_to_end(key)
            return _DERIVED[key]
        value = _DERIVED[key] = make()
        while len(_DERIVED) > _DERIVED_KEPT:
            _DERIVED.popitem(last=False)
        return value


#: EXtra-geom's geometry classes by name, and the detector kinds (:data:`~xfeldata.detectors.kinds.DETECTORS`)
#: they describe.
GEOMETRY_KINDS = {"AGIPD_1MGeometry": "AGIPD1M", "AGIPD_500K2GGeometry": "AGIPD500K", "LPD_1MGeometry": "LPD1M",
                  "LPD_MiniGeometry": "LPDMINI", "DSSC_1MGeometry": "DSSC1M", "JUNGFRAUGeometry": "JUNGFRAU",
                  "Epix100Geometry": "EPIX100"}


def _first_module(geom: Any) -> int:
    """The number of the first module of ``geom``'s detector (1 for JUNGFRAU and LPD Mini)."""
    kind = GEOMETRY_KINDS.get(type(geom).__name__)
    return DETECTORS[kind].modules[0] if kind in DETECTORS else 0


def module_numbers(arr: xr.DataArray, geom: Any) -> np.ndarray:
    """The detector's numbers of ``arr``'s modules: its ``module`` coordinate, or the geometry's first ones.

    >>> from extra_geom import JUNGFRAUGeometry
    >>> frames = xr.DataArray(np.zeros((2, 512, 1024)), dims=("module", "slow_scan", "fast_scan"))
    >>> module_numbers(frames, JUNGFRAUGeometry.example(n_modules=2)).tolist()
    [1, 2]
    """
    if MODULE_DIM in arr.coords:
        return np.asarray(arr[MODULE_DIM].values, np.int64)
    return _first_module(geom) + np.arange(arr.sizes[MODULE_DIM], dtype=np.int64)


def module_positions(arr: xr.DataArray | xr.Dataset, geom: Any) -> np.ndarray:
    """Each module of ``arr``: its index in ``geom``'s module stack.

    The ``module`` coordinate holds the detector's module numbers, as its
    sources are named; EXtra-geom counts a geometry's modules from 0, so for
    detectors whose numbers start at 1 (JUNGFRAU, LPD Mini) module ``n`` is
    the geometry's ``n - 1``.  Without a ``module`` coordinate, the modules
    are the geometry's first ones in order.  Data labelled as another kind of
    detector than the geometry's (the ``kind`` attribute of
    ``run.detector()``), and a module given twice, are refused.

    >>> from extra_geom import JUNGFRAUGeometry
    >>> frames = xr.DataArray(np.zeros((2, 512, 1024)), dims=("module", "slow_scan", "fast_scan"),
    ...                       coords={"module": [2, 1]})
    >>> module_positions(frames, JUNGFRAUGeometry.example(n_modules=2)).tolist()
    [1, 0]
    """
    if not (hasattr(geom, "expected_data_shape") and hasattr(geom, "position_modules")):
        raise TypeError(f"geom must be an EXtra-geom geometry (e.g. AGIPD_1MGeometry.from_crystfel_geom(path) "
                        f"for a CrystFEL .geom file), not {type(geom).__name__}")
    kind, geom_kind = arr.attrs.get("kind"), GEOMETRY_KINDS.get(type(geom).__name__)
    if kind is not None and geom_kind is not None and kind != geom_kind:
        raise ValueError(f"the data's detector is {kind}, the geometry ({type(geom).__name__}) is of {geom_kind}")
    arr = data_array(arr)
    n_modules = geom.expected_data_shape[0]
    first = _first_module(geom)
    labels = module_numbers(arr, geom)
    positions = labels - first
    values, counts = np.unique(labels, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"modules {values[counts > 1].tolist()} are given more than once: a module's pixels "
                         "have one place in the geometry")
    bad = labels[(positions < 0) | (positions >= n_modules)]
    if len(bad):
        raise ValueError(f"modules {bad.tolist()} are not in the geometry ({n_modules} modules, "
                         f"{first}..{first + n_modules - 1})")
    if tuple(arr.sizes[d] for d in PIXEL_DIMS) != tuple(geom.expected_data_shape[1:]):
        raise ValueError(f"pixel dims {tuple(arr.sizes[d] for d in PIXEL_DIMS)} do not match the "
                         f"geometry's modules {tuple(geom.expected_data_shape[1:])}")
    return positions


#: Image dtypes the compiled kernel writes (others, float16: the twin).
_COMPILED_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})


class _Assembler:
    """The block kernel of :func:`assemble`, with the dask token of its geometry's layout and modules."""

    def __init__(self, layout: _Layout, geom: Any, modules: np.ndarray, dtype: np.dtype) -> None:
        self.layout, self.geom, self.modules, self.dtype = layout, geom, modules, dtype
        self.n_modules = geom.expected_data_shape[0]
        self.full = bool(len(modules) == self.n_modules and (modules == np.arange(self.n_modules)).all())

    def __dask_tokenize__(self) -> tuple:
        return ("assemble", self.layout.token, self.modules.tolist(), str(self.dtype))

    def source(self) -> np.ndarray:
        """Each image pixel's index in a block's frame (its modules only), -1 in gaps and missing modules."""
        return self.layout.source if self.full else _derived(
            "source", self.layout, tuple(self.modules.tolist()), self._subset_source)

    def _subset_source(self) -> np.ndarray:
        full = self.layout.source
        per_module = int(np.prod(self.geom.expected_data_shape[1:]))
        position = np.full(self.n_modules, -1, np.int64)
        position[self.modules] = np.arange(len(self.modules))
        module = position[np.maximum(full, 0) // per_module]
        return np.where((full >= 0) & (module >= 0), module * per_module + full % per_module, -1).astype(np.int32)

    def tiles(self) -> _tiles.Tiles:
        """The compiled kernel's plan of :meth:`source` (:func:`~xfeldata.analysis._tiles.plan`)."""
        from . import _tiles  # here, not at the top: it imports numba (about half a second)

        frame_shape = (len(self.modules), *self.geom.expected_data_shape[1:])
        return _derived("tiles", self.layout, tuple(self.modules.tolist()),
                        lambda: _tiles.plan(self.source(), frame_shape))

    def __call__(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        lead, shape = block.shape[:-3], self.layout.shape
        out = np.empty(lead + shape, self.dtype) if out is None else out
        compiles = enabled() and self.dtype in _COMPILED_DTYPES and (
            block.dtype.kind in "ui" or block.dtype in _COMPILED_DTYPES)
        images = flat_frames(out, len(lead)) if compiles else None
        if images is not None:
            from . import _tiles  # (numba: imported on the compiled path only)

            frames = contiguous_frames(block, len(lead))
            _tiles.assemble_frames(frames[0], frames[1], self.tiles(), images[0], images[1])
            return out
        # the numpy twin: EXtra-geom, frame by frame (an image's NaN fill is still in cache when its tiles
        # overwrite it)
        stack = None if self.full else np.empty(tuple(self.geom.expected_data_shape), self.dtype)
        for index in np.ndindex(lead):
            frame, image = np.asarray(block[index], self.dtype), out[index]
            if stack is not None:
                stack.fill(np.nan)
                stack[self.modules] = frame
                frame = stack
            image.fill(np.nan)
            self.layout.snapped.position_modules(frame, out=image)
        return out


def assemble(arr: xr.DataArray | xr.Dataset, geom: Any) -> xr.DataArray:
    """Module stacks ``(..., module, slow_scan, fast_scan)`` as images ``(..., y, x)``.

    Each frame equals ``geom.position_modules(frame)`` of EXtra-geom (from
    the pixel-grid-aligned geometry's placement of every pixel, worked out
    once per geometry and cached; compiled, whole 8 x 8 blocks of pixels
    are moved at once): NaN in the gaps and where a module is missing
    (not in the ``module`` coordinate, or NaN in the data).  Any subset of
    modules is placed by its ``module`` coordinate (see :func:`module_positions`:
    JUNGFRAU's and LPD Mini's module numbers count from 1).

    Parameters
    ----------
    arr
        Pixel data with a ``module`` dimension (or a detector Dataset: its
        ``image.data``); other dims and coords are kept.  Integer data
        becomes float32.
    geom
        An EXtra-geom geometry of the detector (e.g. from a CrystFEL ``.geom``
        file, ``AGIPD_1MGeometry.from_crystfel_geom(path)``).

    Returns
    -------
    xarray.DataArray
        ``(..., y, x)`` with ``y``/``x`` the pixel centres in metres, the beam
        at 0; lazy if ``arr`` is.

    Examples
    --------
    >>> from extra_geom import AGIPD_1MGeometry
    >>> geom = AGIPD_1MGeometry.from_quad_positions(
    ...     quad_pos=[(-525, 625), (-550, -10), (520, -160), (542.5, 475)])
    >>> frames = xr.DataArray(np.ones((3, 2, 512, 128), np.float32),
    ...     dims=("pulseId", "module", "slow_scan", "fast_scan"), coords={"module": [0, 5]})
    >>> img = assemble(frames, geom)
    >>> img.dims, img.shape, int(np.isfinite(img[0]).sum()) == 2 * 512 * 128
    (('pulseId', 'y', 'x'), (3, 1256, 1092), True)
    """
    modules = module_positions(arr, geom)
    arr = data_array(arr)  # (raw AGIPD's gain axis is a dim like others: an image of each plane)
    layout = _layout(geom)
    shape, y, x = layout.shape, layout.y, layout.x
    dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float32)
    core = [MODULE_DIM, *PIXEL_DIMS]
    arr = whole_frames(arr, core)
    image = xr.apply_ufunc(
        partial(map_frames, _Assembler(layout, geom, modules, dtype)), arr, input_core_dims=[core],
        output_core_dims=[list(IMAGE_DIMS)],
        kwargs={"core_ndims": [3], "out_core": shape, "dtypes": [dtype], "into": True}, dask="allowed",
        keep_attrs=True)
    image = image.assign_coords(y=("y", y, {"units": "m"}), x=("x", x, {"units": "m"}))
    image.attrs["geometry"] = type(geom).__name__
    return image
