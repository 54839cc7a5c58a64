"""Dark constants from dark runs, offset correction of raw data, and corrected data's mask bits."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._frames import MODULE_DIM, PIXEL_DIMS, data_array

CELL_DIM = "cell"
STAGE_DIM = "gain_stage"
THRESHOLD_DIM = "threshold"
GAIN_PLANE_DIM = "gain"  # AGIPD raw frames: plane 0 the signal, plane 1 the gain signal


def _as_blocks(arr: xr.DataArray) -> da.Array:
    """``arr`` as dask, chunked one module per block (as ``run.detector()`` is)."""
    data = arr.data if isinstance(arr.data, da.Array) else da.from_array(np.asarray(arr.data))
    axis = arr.dims.index(MODULE_DIM)
    chunks = {axis: 1, **{i: -1 for i in range(axis + 1, arr.ndim)}}
    return data.rechunk(chunks)


def _cell_sums(block: np.ndarray, cells: np.ndarray, cell_values: np.ndarray) -> np.ndarray:
    """Sum, sum of squares and count per memory cell of one module's block of frames.

    ``block`` is ``(train, pulse, 1, *pixel)``, ``cells`` ``(train, pulse, 1)``;
    returns ``(3, n_cells, *pixel)`` float64.
    """
    pixel = block.shape[3:]
    frames = block.reshape(-1, *pixel)
    index = np.searchsorted(cell_values, cells.ravel())
    out = np.zeros((3, len(cell_values), *pixel))
    for c in np.unique(index[(cells.ravel() >= 0)]):
        x = frames[index == c].astype(np.float64)
        out[0, c] = x.sum(axis=0)
        out[1, c] = (x * x).sum(axis=0)
        out[2, c] = len(x)
    return out


def _module_stats(data: da.Array, cells: da.Array, cell_values: np.ndarray,
                  noise_range: tuple[float, float]) -> list[da.Array]:
    """Per module, lazily: ``(3, n_cells, *pixel)`` mean, standard deviation and bad (1.0)."""
    data_blocks, cell_blocks = data.to_delayed(), cells.to_delayed()
    pixel = data.shape[3:]
    per_module = []
    for m in range(data.numblocks[2]):
        parts = [dask.delayed(_cell_sums)(data_blocks[(i, j, m) + (0,) * len(pixel)],
                                          cell_blocks[i, j, m], cell_values)
                 for i in range(data.numblocks[0]) for j in range(data.numblocks[1])]
        stats = dask.delayed(_finish)(dask.delayed(sum)(parts), noise_range)
        per_module.append(da.from_delayed(stats, (3, len(cell_values), *pixel), np.float32))
    return per_module


def _finish(sums: np.ndarray, noise_range: tuple[float, float]) -> np.ndarray:
    """Mean, noise and bad pixels of one module from its per-cell sums."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[0] / sums[2]
        noise = np.sqrt(np.maximum(sums[1] / sums[2] - mean * mean, 0))
    flat = noise.reshape(*noise.shape[:-2], -1)
    if np.isfinite(flat).any():
        with warnings.catch_warnings():  # cells without frames: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(flat, axis=-1)[..., None, None]
    else:  # a module without frames
        median = np.full(noise.shape[:-2] + (1, 1), np.nan)
    lo, hi = noise_range
    bad = ~((noise > 0) & (noise >= lo * median) & (noise <= hi * median))
    return np.stack([mean, noise, bad]).astype(np.float32)


def dark_constants(dark: xr.Dataset | Sequence[xr.Dataset], *,
                   noise_range: tuple[float, float] = (0.2, 5.0)) -> xr.Dataset:
    """Offset and noise per module, memory cell, gain stage and pixel, from dark runs.

    Parameters
    ----------
    dark
        The detector Dataset (``run.detector()``) of a dark run, or one per gain
        stage (AGIPD takes three: high, medium and low gain), with ``image.data``
        and ``cellId``.  Frames are grouped by their ``cellId``, so runs whose
        cells vary per train work; missing frames (``cellId`` -1) are left out.
    noise_range
        A pixel is bad where its noise is zero, NaN (no frame of that cell), or
        outside ``noise_range`` times its module's median noise (per cell and stage).

    Returns
    -------
    xarray.Dataset
        Lazy ``offset``, ``noise`` (float32, ADU) and ``bad_pixels`` (bool), dims
        ``(module, cell, gain_stage, slow_scan, fast_scan)``, with the ``cell``
        coordinate holding the cell IDs.  For AGIPD raw data (a ``gain`` plane):
        ``gain_level`` (the gain signal's dark level, same dims) and, with two or
        more stages, ``gain_threshold (module, cell, threshold, slow_scan,
        fast_scan)`` halfway between consecutive stages' levels.

    Examples
    --------
    >>> import xfeldata as xd                                              # doctest: +SKIP
    >>> dark = xd.open_run("r0001-dark").detector("AGIPD")                 # doctest: +SKIP
    >>> constants = dark_constants(dark).compute()                         # doctest: +SKIP
    >>> constants["offset"].dims                                           # doctest: +SKIP
    ('module', 'cell', 'gain_stage', 'slow_scan', 'fast_scan')
    """
    darks = [dark] if isinstance(dark, xr.Dataset) else list(dark)
    if not darks:
        raise ValueError("no dark run given")
    modules = darks[0][MODULE_DIM].values
    all_cells = [np.unique(np.asarray(d["cellId"].values)) for d in darks]
    cell_values = np.unique(np.concatenate(all_cells))
    cell_values = cell_values[cell_values >= 0]
    if not len(cell_values):
        raise ValueError("the dark run has no frames (every cellId is -1)")
    stages = []
    for d in darks:
        if "cellId" not in d:
            raise KeyError("the dark Dataset has no cellId variable (needed to group frames by memory cell)")
        if not np.array_equal(d[MODULE_DIM].values, modules):
            raise ValueError(f"dark runs stack different modules: {modules.tolist()} and "
                             f"{d[MODULE_DIM].values.tolist()}")
        arr = data_array(d)
        lead = [dim for dim in arr.dims if dim not in (MODULE_DIM, GAIN_PLANE_DIM, *PIXEL_DIMS)]
        arr = arr.transpose(*lead, MODULE_DIM, ...)
        if len(lead) == 1:  # (trainId, module, ...): a pulse axis of one
            arr = arr.expand_dims("pulse", axis=1)
        cells = d["cellId"].broadcast_like(arr.isel({k: 0 for k in arr.dims if k not in d["cellId"].dims
                                                     and k not in arr.dims[:3]})).transpose(*arr.dims[:3])
        data = _as_blocks(arr)
        cell_arr = (cells.data if isinstance(cells.data, da.Array) else da.from_array(np.asarray(cells.data)))
        cell_arr = cell_arr.rechunk(data.chunks[:3])
        stages.append(da.stack(_module_stats(data, cell_arr, cell_values, noise_range)))  # (module, 2, cell, *pixel)
    stats = da.stack(stages, axis=3)  # (module, 2, cell, stage, [gain plane,] ss, fs)
    has_plane = stats.ndim == 7
    mean, noise, bad = stats[:, 0], stats[:, 1], stats[:, 2] > 0
    offset = mean[:, :, :, 0] if has_plane else mean
    noise = noise[:, :, :, 0] if has_plane else noise
    bad = bad[:, :, :, 0] if has_plane else bad
    dims = (MODULE_DIM, CELL_DIM, STAGE_DIM, *PIXEL_DIMS)
    out = xr.Dataset(
        {"offset": (dims, offset, {"units": "ADU"}), "noise": (dims, noise, {"units": "ADU"}),
         "bad_pixels": (dims, bad)},
        coords={MODULE_DIM: modules, CELL_DIM: cell_values, STAGE_DIM: np.arange(len(darks))},
        attrs={"noise_range": list(noise_range)})
    if has_plane:
        level = mean[:, :, :, 1]
        out["gain_level"] = (dims, level, {"units": "ADU"})
        if len(darks) > 1:
            out["gain_threshold"] = ((MODULE_DIM, CELL_DIM, THRESHOLD_DIM, *PIXEL_DIMS),
                                     (level[:, :, 1:] + level[:, :, :-1]) / 2, {"units": "ADU"})
    return out


def _correct(data: np.ndarray, cells: np.ndarray, modules: np.ndarray, offset: np.ndarray,
             cell_lut: np.ndarray, thresholds: np.ndarray | None
             ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Offset-correct frames ``(..., [plane,] ss, fs)``: the kernel of :func:`calibrate`.

    Returns the float32 frames and, with ``thresholds``, the gain stage of
    every pixel.  Each frame is one subtraction (signal minus the offset of
    its module, cell and stage) written straight into the output, so the data
    are read and written once.
    """
    pixel = offset.shape[-2:]
    lead = cells.shape
    planes = data.reshape(-1, *data.shape[len(lead):])
    signal = planes[:, 0] if planes.ndim == 4 else planes  # plane 0 of AGIPD raw frames
    flat_cells = cells.ravel()
    inside = (flat_cells >= 0) & (flat_cells < len(cell_lut))
    cell_index = np.where(inside, cell_lut[np.clip(flat_cells, 0, len(cell_lut) - 1)], -1)
    mods = np.broadcast_to(modules, lead).ravel()
    out = np.empty((len(planes), *pixel), np.float32)
    out[cell_index < 0] = np.nan
    if thresholds is None:
        for f in np.flatnonzero(cell_index >= 0):
            np.subtract(signal[f], offset[mods[f], cell_index[f], 0], out=out[f], dtype=np.float32)
        return out.reshape(*lead, *pixel)
    stage_out = np.zeros((len(planes), *pixel), np.uint8)
    for f in np.flatnonzero(cell_index >= 0):
        m, c = mods[f], cell_index[f]
        gain, stage = planes[f, 1], stage_out[f]
        for t in range(thresholds.shape[2]):
            stage += gain > thresholds[m, c, t]
        off = np.take_along_axis(offset[m, c], stage[None].astype(np.intp), axis=0)[0]
        np.subtract(planes[f, 0], off, out=out[f], dtype=np.float32)
    return out.reshape(*lead, *pixel), stage_out.reshape(*lead, *pixel)


def calibrate(det: xr.Dataset, constants: xr.Dataset | None = None, *, mask_bits: int = 0xFFFFFFFF
              ) -> xr.Dataset:
    """Offset-corrected float32 frames (raw data), or corrected data with its mask applied.

    Raw data: each frame minus the offset of its module, memory cell (by
    ``cellId``) and gain stage; for AGIPD the stage of each pixel comes from the
    frame's gain plane (the ``gain`` axis) and the constants' ``gain_threshold``.
    Bad pixels of the constants, frames whose cell the constants lack, and
    missing frames are NaN.  Corrected data (``constants=None``): pixels whose
    ``image.mask`` has any of ``mask_bits`` set become NaN (EXtra-data's
    ``masked_data``), see :func:`masked`.

    Parameters
    ----------
    det
        A detector Dataset (``run.detector()``, ``LiveBuffer.detector()``), numpy or dask.
    constants
        From :func:`dark_constants` (computed or lazy); None for corrected data.
    mask_bits
        Bits of ``image.mask`` that mark a bad pixel (corrected data).

    Returns
    -------
    xarray.Dataset
        ``det`` with ``image.data`` float32 ``(trainId, pulseId, module,
        slow_scan, fast_scan)`` (the gain plane gone) and, with gain thresholds,
        ``image.gain`` (uint8 stage per pixel); ``present``, ``cellId`` and every
        coordinate kept.  Lazy if ``det`` is.

    Examples
    --------
    >>> constants = dark_constants(dark)                        # doctest: +SKIP
    >>> corrected = calibrate(run.detector("AGIPD"), constants) # doctest: +SKIP
    >>> corrected["image.data"].dtype                           # doctest: +SKIP
    dtype('float32')
    """
    if constants is None:
        return masked(det, mask_bits)
    arr = data_array(det)
    if "cellId" not in det:
        raise KeyError("the detector Dataset has no cellId variable (needed to pick each frame's constants)")
    missing = np.setdiff1d(det[MODULE_DIM].values, constants[MODULE_DIM].values)
    if len(missing):
        raise ValueError(f"the constants have no module(s) {missing.tolist()}")
    constants = constants.sel({MODULE_DIM: det[MODULE_DIM].values})
    offset = np.where(constants["bad_pixels"].values, np.nan, constants["offset"].values).astype(np.float32)
    thresholds = constants["gain_threshold"].values if "gain_threshold" in constants else None
    cell_values = constants[CELL_DIM].values
    cell_lut = np.full(int(cell_values.max()) + 1, -1, np.int64)
    cell_lut[cell_values] = np.arange(len(cell_values))
    has_plane = GAIN_PLANE_DIM in arr.dims
    core = [GAIN_PLANE_DIM, *PIXEL_DIMS] if has_plane else list(PIXEL_DIMS)
    if arr.chunks is not None and any(len(arr.chunksizes[d]) > 1 for d in core):
        arr = arr.chunk({d: -1 for d in core})
    positions = xr.DataArray(np.arange(arr.sizes[MODULE_DIM]), dims=MODULE_DIM)
    n_out = 1 if thresholds is None else 2  # the gain stages only where they were looked up
    results = xr.apply_ufunc(
        _correct, arr, det["cellId"], positions,
        kwargs={"offset": offset, "cell_lut": cell_lut, "thresholds": thresholds},
        input_core_dims=[core, [], []], output_core_dims=[list(PIXEL_DIMS)] * n_out,
        dask="parallelized", output_dtypes=[np.float32, np.uint8][:n_out])
    data, stage = (results, None) if thresholds is None else results
    dims = tuple(d for d in arr.dims if d != GAIN_PLANE_DIM)
    out = det.drop_vars([v for v in ("image.data", "image.gain", "image.mask") if v in det])
    out["image.data"] = data if data.dims == dims else data.transpose(*dims)
    out["image.data"].attrs.update(arr.attrs, units="ADU", calibration="offset")
    if stage is not None:
        out["image.gain"] = stage if stage.dims == dims else stage.transpose(*dims)
    return out


def masked(det: xr.Dataset, mask_bits: int = 0xFFFFFFFF) -> xr.Dataset:
    """Corrected data with NaN where ``image.mask`` has any of ``mask_bits`` set.

    Examples
    --------
    >>> ds = xr.Dataset({"image.data": (("module", "slow_scan", "fast_scan"), np.ones((1, 1, 3), np.float32)),
    ...                  "image.mask": (("module", "slow_scan", "fast_scan"), np.array([[[0, 1, 4]]], np.uint32))})
    >>> masked(ds, mask_bits=1)["image.data"].values.ravel().tolist()
    [1.0, nan, 1.0]
    """
    arr = data_array(det)
    if arr.dtype.kind != "f":
        raise TypeError(f"image.data is {arr.dtype}: raw data needs dark constants, "
                        "calibrate(det, dark_constants(dark))")
    if "image.mask" not in det:
        return det
    out = det.copy()
    out["image.data"] = arr.where((det["image.mask"] & np.uint32(mask_bits)) == 0)
    return out
