"""Detector images from module stacks, through an EXtra-geom geometry."""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from ._frames import MODULE_DIM, PIXEL_DIMS, data_array, map_frames, whole_frames

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
    image, centre = snapped.position_modules(np.zeros(geom.expected_data_shape, np.float32))
    size = geom.pixel_size
    y = (np.arange(image.shape[0]) - centre[0] + 0.5) * size
    x = (np.arange(image.shape[1]) - centre[1] + 0.5) * size
    layout = _Layout(snapped, image.shape, y, x)
    try:
        _LAYOUTS[geom] = layout
    except TypeError:  # an object that cannot be weakly referenced: not cached
        pass
    return layout


def _module_positions(arr: xr.DataArray, geom: Any) -> np.ndarray:
    n_modules = geom.expected_data_shape[0]
    modules = np.asarray(arr[MODULE_DIM].values if MODULE_DIM in arr.coords
                         else np.arange(arr.sizes[MODULE_DIM]), np.int64)
    bad = modules[(modules < 0) | (modules >= n_modules)]
    if len(bad):
        raise ValueError(f"modules {bad.tolist()} are not in the geometry ({n_modules} modules, 0..{n_modules - 1})")
    if tuple(arr.sizes[d] for d in PIXEL_DIMS) != tuple(geom.expected_data_shape[1:]):
        raise ValueError(f"pixel dims {tuple(arr.sizes[d] for d in PIXEL_DIMS)} do not match the "
                         f"geometry's modules {tuple(geom.expected_data_shape[1:])}")
    return modules


def assemble(arr: xr.DataArray | xr.Dataset, geom: Any) -> xr.DataArray:
    """Module stacks ``(..., module, slow_scan, fast_scan)`` as images ``(..., y, x)``.

    Each frame equals ``geom.position_modules(frame)`` of EXtra-geom, whose
    pixel-grid-aligned (snapped) geometry, worked out once per geometry and
    cached, copies the tiles of a whole block of frames at once: NaN in the gaps and where a module is missing
    (not in the ``module`` coordinate, or NaN in the data).  Any subset of
    modules is placed by its ``module`` coordinate.

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
    arr = data_array(arr)
    modules = _module_positions(arr, geom)
    layout = _layout(geom)
    shape, y, x = layout.shape, layout.y, layout.x
    dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float32)
    n_modules = geom.expected_data_shape[0]
    full = bool(len(modules) == n_modules and (modules == np.arange(n_modules)).all())

    def kernel(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # frame by frame: an image's NaN fill is still in cache when its tiles overwrite it
        out = np.empty(block.shape[:-3] + shape, dtype) if out is None else out
        stack = None if full else np.empty(tuple(geom.expected_data_shape), dtype)
        for index in np.ndindex(block.shape[:-3]):
            frame, image = np.asarray(block[index], dtype), out[index]
            if stack is not None:
                stack.fill(np.nan)
                stack[modules] = frame
                frame = stack
            image.fill(np.nan)
            layout.snapped.position_modules(frame, out=image)
        return out

    core = [MODULE_DIM, *PIXEL_DIMS]
    arr = whole_frames(arr, core)
    image = xr.apply_ufunc(
        partial(map_frames, kernel), arr, input_core_dims=[core], output_core_dims=[list(IMAGE_DIMS)],
        kwargs={"core_ndims": [3], "out_core": shape, "dtypes": [dtype], "into": True}, dask="allowed",
        keep_attrs=True)
    image = image.assign_coords(y=("y", y, {"units": "m"}), x=("x", x, {"units": "m"}))
    image.attrs["geometry"] = type(geom).__name__
    return image
