"""Dark constants from dark runs, offset correction of raw data, and corrected data's mask bits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import partial

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..views import uniform_dask
from ._frames import GAIN_PLANE_DIM, MODULE_DIM, PIXEL_DIMS, data_array, map_frames
from ._jit import contiguous_frames, flat_frames, jitted
from .gain import _JUNGFRAU_STAGE, _LPD_STAGE, INVALID, STAGES, encoding, split

CELL_DIM = "cell"
STAGE_DIM = "gain_stage"
THRESHOLD_DIM = "threshold"


def _as_blocks(arr: xr.DataArray) -> da.Array:
    """``arr`` as dask, chunked one module per block (as ``run.detector()`` is)."""
    data = arr.data if isinstance(arr.data, da.Array) else da.from_array(np.asarray(arr.data), name=False)
    axis = arr.dims.index(MODULE_DIM)
    chunks = {axis: 1, **{i: -1 for i in range(axis + 1, arr.ndim)}}
    return data.rechunk(chunks)


def _cell_sums(block: np.ndarray, cells: np.ndarray, gain: np.ndarray | None, cell_values: np.ndarray,
               enc: str, into: np.ndarray | None = None) -> np.ndarray:
    """Sum, sum of squares and count per memory cell (and gain stage) of one module's block of frames,
    added to ``into`` (the running sums of the module's blocks before it; None: none yet).

    ``block`` is ``(*frame dims, 1, *pixel)``, ``cells`` ``(*frame dims, 1)``,
    ``gain`` (JUNGFRAU's gain key) like ``block`` or None.  Returns ``into``
    (or new zeros), ``(3, n_cells, n_stages, *pixel)`` float64: for LPD and
    JUNGFRAU the stage of every pixel comes from its raw data
    (:mod:`~xfeldata.analysis.gain`), so the counts are per pixel; otherwise
    the block is one stage.  Frames whose cell is -1 (missing) are left out.
    Each cell's sums over the block are added to the running ones as a whole,
    so the result does not depend on how many blocks the frames came in
    (integer data: float64 sums are exact).
    """
    pixel = block.shape[cells.ndim:]
    frames = block.reshape(-1, *pixel)
    gains = None if gain is None else gain.reshape(-1, *pixel)
    flat = cells.ravel()
    index = np.searchsorted(cell_values, flat)
    valid = (flat >= 0) & (index < len(cell_values))
    valid[valid] = cell_values[index[valid]] == flat[valid]
    n_stages = STAGES.get(enc, 1)
    out = np.zeros((3, len(cell_values), n_stages, *pixel)) if into is None else into
    for c in np.unique(index[valid]):
        rows = valid & (index == c)
        signal, stage = split(enc, frames[rows], None if gains is None else gains[rows])
        x = signal.astype(np.float64)
        if stage is None:
            out[0, c, 0] += x.sum(axis=0)
            out[1, c, 0] += (x * x).sum(axis=0)
            out[2, c, 0] += len(x)
            continue
        for s in range(n_stages):
            inside = stage == s
            xs = np.where(inside, x, 0.0)
            out[0, c, s] += xs.sum(axis=0)
            out[1, c, s] += (xs * xs).sum(axis=0)
            out[2, c, s] += inside.sum(axis=0)
    return out


def _module_sums(data: da.Array, cells: da.Array, gain: da.Array | None, cell_values: np.ndarray,
                 enc: str, start: Sequence | None = None) -> list:
    """Per module (one block column of ``data``), the delayed running sums of :func:`_cell_sums`
    over its blocks, one block after the other into one array (continuing ``start[m]``, if given).

    Only the running sums and the blocks being added are in memory, not one
    sums array per block.
    """
    k = cells.ndim - 1  # the module axis
    data_blocks, cell_blocks = data.to_delayed(), cells.to_delayed()
    gain_blocks = None if gain is None else gain.to_delayed()
    tail = (0,) * (data.ndim - k - 1)
    per_module = []
    for m in range(data.numblocks[k]):
        sums = None if start is None else start[m]
        for idx in np.ndindex(*data.numblocks[:k]):
            here = (*idx, m)
            sums = dask.delayed(_cell_sums)(
                data_blocks[here + tail], cell_blocks[here],
                None if gain_blocks is None else gain_blocks[here + tail], cell_values, enc, sums)
        per_module.append(sums)
    return per_module


def _finish(sums: np.ndarray, noise_range: tuple[float, float]) -> np.ndarray:
    """Mean, noise and bad pixels (1.0) of one module from its sums: ``(3, cell, stage, *pixel)`` float32."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[0] / sums[2]
        noise = np.sqrt(np.maximum(sums[1] / sums[2] - mean * mean, 0))
    flat = noise.reshape(-1, noise.shape[-2] * noise.shape[-1])
    filled = np.isfinite(flat).any(axis=-1)  # (cell, stage[, plane]) with frames: no all-NaN median warning
    median = np.full(len(flat), np.nan)
    if filled.any():
        median[filled] = np.nanmedian(flat[filled], axis=-1)
    median = median.reshape(*noise.shape[:-2], 1, 1)
    lo, hi = noise_range
    bad = ~((noise > 0) & (noise >= lo * median) & (noise <= hi * median))
    return np.stack([mean, noise, bad]).astype(np.float32)


def dark_constants(dark: xr.Dataset | Sequence[xr.Dataset], *,
                   noise_range: tuple[float, float] = (0.2, 5.0)) -> xr.Dataset:
    """Offset and noise per module, memory cell, gain stage and pixel, from dark runs.

    The offset is the mean of a pixel's dark frames of that cell and stage,
    the noise their standard deviation (population: divided by the number of
    frames, ``ddof=0``, as one pass over the frames computes it).

    Parameters
    ----------
    dark
        The detector Dataset (``run.detector()``) of a dark run, or several,
        with ``image.data`` and ``cellId``.  Frames are grouped by their
        ``cellId``, so runs whose cells vary per train work; missing frames
        (``cellId`` -1) are left out.  The gain stage of a frame's pixels:

        - AGIPD (and detectors without stages): one dark run per stage, in
          order (AGIPD: high, medium, low gain);
        - LPD: bits 12-13 of each raw pixel (stages 0-2), so one run in
          parallel-gain mode, or one run per forced gain, or both, give all three;
        - JUNGFRAU: the gain key (``image.gain``: 0, 1, 3 for stages 0-2), so the
          runs of the three forced or adaptive gains are given together.
    noise_range
        A pixel is bad where its noise is zero, NaN (no frame of that cell and
        stage), or outside ``noise_range`` times its module's median noise (per
        cell and stage).

    Returns
    -------
    xarray.Dataset
        ``offset``, ``noise`` (float32, ADU) and ``bad_pixels`` (bool), lazy if
        ``dark`` is (numpy arrays if it is numpy), dims
        ``(module, cell, gain_stage, slow_scan, fast_scan)``, with the ``cell``
        coordinate holding the cell IDs; attrs ``kind`` (the detector kind) and
        ``noise_range``.  For AGIPD raw data (a ``gain`` plane):
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
    for d in darks:
        if "cellId" not in d:
            raise KeyError("the dark Dataset has no cellId variable (needed to group frames by memory cell)")
    kind = darks[0].attrs.get("kind")
    enc = _encoding(darks[0], kind)
    modules = darks[0][MODULE_DIM].values
    cell_values = np.unique(np.concatenate([np.unique(np.asarray(d["cellId"].values)) for d in darks]))
    cell_values = cell_values[cell_values >= 0]
    if not len(cell_values):
        raise ValueError("the dark run has no frames (every cellId is -1)")
    runs = []  # per dark run, per module: delayed (3, cell, stage, *pixel) sums
    for d in darks:
        if not np.array_equal(d[MODULE_DIM].values, modules):
            raise ValueError(f"dark runs stack different modules: {modules.tolist()} and "
                             f"{d[MODULE_DIM].values.tolist()}")
        if d.attrs.get("kind") != kind:
            raise ValueError(f"dark runs of different detector kinds: {kind} and {d.attrs.get('kind')}")
        # the stages come from the data (LPD, JUNGFRAU): every run adds to the same running sums
        runs.append(_run_sums(d, enc, cell_values, runs[-1] if runs and enc in STAGES else None))
    if enc in STAGES:
        per_module = runs[-1]
        n_stages = STAGES[enc]
    else:  # one stage per run
        per_module = [dask.delayed(np.concatenate)(list(parts), axis=2) for parts in zip(*runs, strict=True)]
        n_stages = len(darks)
    pixel = _pixel_shape(data_array(darks[0]), enc)
    stats = da.stack([da.from_delayed(dask.delayed(_finish)(sums, noise_range),
                                      (3, len(cell_values), n_stages, *pixel), np.float32)
                      for sums in per_module])  # (module, 3, cell, stage, [gain plane,] ss, fs)
    has_plane = len(pixel) == 3
    mean, noise, bad = stats[:, 0], stats[:, 1], stats[:, 2] > 0
    offset = mean[:, :, :, 0] if has_plane else mean
    noise = noise[:, :, :, 0] if has_plane else noise
    bad = bad[:, :, :, 0] if has_plane else bad
    dims = (MODULE_DIM, CELL_DIM, STAGE_DIM, *PIXEL_DIMS)
    out = xr.Dataset(
        {"offset": (dims, offset, {"units": "ADU"}), "noise": (dims, noise, {"units": "ADU"}),
         "bad_pixels": (dims, bad)},
        coords={MODULE_DIM: modules, CELL_DIM: cell_values, STAGE_DIM: np.arange(n_stages)},
        attrs={"noise_range": list(noise_range), **({"kind": kind} if kind else {})})
    if has_plane:
        level = mean[:, :, :, 1]
        out["gain_level"] = (dims, level, {"units": "ADU"})
        if n_stages > 1:
            out["gain_threshold"] = ((MODULE_DIM, CELL_DIM, THRESHOLD_DIM, *PIXEL_DIMS),
                                     (level[:, :, 1:] + level[:, :, :-1]) / 2, {"units": "ADU"})
    if not any(isinstance(d[v].data, da.Array) for d in darks for v in ("image.data", "cellId", "image.gain")
               if v in d):
        return out.compute()  # numpy in, numpy out (a live buffer's frames, a hand-made Dataset)
    return out


def _encoding(det: xr.Dataset, kind: str | None) -> str:
    """The gain encoding of ``kind``; without a kind (a hand-made Dataset), AGIPD if it has a 2-plane ``gain`` axis."""
    if kind is None and data_array(det).sizes.get(GAIN_PLANE_DIM) == 2:
        return "agipd"
    return encoding(kind)


def _pixel_shape(arr: xr.DataArray, enc: str) -> tuple[int, ...]:
    """Shape of one module's frame: ``(slow_scan, fast_scan)``, AGIPD raw ``(2, ss, fs)``."""
    planes = (GAIN_PLANE_DIM,) if enc == "agipd" and GAIN_PLANE_DIM in arr.dims else ()
    return tuple(arr.sizes[d] for d in (*planes, *PIXEL_DIMS))


def _run_sums(d: xr.Dataset, enc: str, cell_values: np.ndarray, start: Sequence | None = None) -> list:
    """Delayed per-cell sums of each module of one dark run (see :func:`_cell_sums`), added to
    ``start`` (per module: the delayed sums of earlier runs), if given."""
    arr = data_array(d)
    planes = [GAIN_PLANE_DIM] if enc == "agipd" and GAIN_PLANE_DIM in arr.dims else []
    core = [*planes, *PIXEL_DIMS]
    lead = [dim for dim in arr.dims if dim != MODULE_DIM and dim not in core]  # frame dims (LPD: also gain)
    arr = arr.transpose(*lead, MODULE_DIM, *core)
    template = arr.isel({dim: 0 for dim in core}, drop=True)
    cells = d["cellId"].broadcast_like(template).transpose(*lead, MODULE_DIM)
    data = _as_blocks(arr)
    gain = None
    if enc == "jungfrau":
        if "image.gain" not in d:
            raise KeyError("the JUNGFRAU dark Dataset has no image.gain variable (its gain key, data.gain)")
        gain = _as_blocks(d["image.gain"].transpose(*arr.dims)).rechunk(data.chunks)
    cell_arr = cells.data if isinstance(cells.data, da.Array) else da.from_array(np.asarray(cells.data))
    return _module_sums(data, cell_arr.rechunk(data.chunks[:len(lead) + 1]), gain, cell_values, enc, start)


#: Frames corrected by one numpy call: calls long enough that a second thread seldom waits for the GIL,
#: short enough that a batch's float32 output (256 KiB a frame) is still in cache for the subtraction.
BATCH = 8


def _merged(a: np.ndarray, k: int) -> np.ndarray | None:
    """``a`` with its ``k`` leading axes as one, as a view of the same memory; None where that needs a copy.

    >>> _merged(np.zeros((2, 3, 4))[:, :, :2], 2).shape
    (6, 2)
    >>> _merged(np.zeros((2, 3, 4))[:, :2], 2) is None, _merged(np.zeros((2, 3, 4)).transpose(1, 0, 2), 2) is None
    (True, True)
    """
    sized = [(n, st) for n, st in zip(a.shape[:k], a.strides[:k], strict=True) if n != 1]
    if any(outer != inner * n for (_, outer), (n, inner) in zip(sized, sized[1:], strict=False)):
        return None
    stride = sized[-1][1] if sized else a.itemsize
    return np.lib.stride_tricks.as_strided(a, (int(np.prod(a.shape[:k])), *a.shape[k:]), (stride, *a.strides[k:]))


def _batches(frames: np.ndarray, most: int) -> list[slice]:
    """``frames`` (increasing indices) as slices of evenly spaced frames, at most ``most`` each.

    >>> _batches(np.array([0, 4, 8, 12, 13, 20]), 3)
    [slice(0, 9, 4), slice(12, 14, 1), slice(20, 21, 1)]
    """
    out, i, n = [], 0, len(frames)
    values = frames.tolist()
    while i < n:
        j = i
        if i + 1 < n:
            step = values[i + 1] - values[i]
            j = i + 1
            while j + 1 < n and j + 1 - i < most and values[j + 1] - values[j] == step:
                j += 1
        step = values[j] - values[i] if j > i else 1
        out.append(slice(values[i], values[j] + 1, step // (j - i) if j > i else 1))
        i = j + 1
    return out


#: How the compiled kernel finds a pixel's stage: one stage, AGIPD's gain plane against thresholds,
#: LPD's bits 12-13, JUNGFRAU's gain key.
_SINGLE, _THRESHOLDS, _LPD, _JUNGFRAU = 0, 1, 2, 3


@jitted
def _three_stages(signal: np.ndarray, bits: np.int32, code: np.ndarray, third: np.uint8, offset: np.ndarray,
                  bad: np.ndarray, corrected: np.ndarray, stage: np.ndarray) -> None:
    """One frame of LPD or JUNGFRAU: ``signal & bits`` minus the offset (``(stage, pixel)``) of the
    stage whose ``code`` is 0, 1 or ``third``, NaN where bad or another code; the stage into ``stage``
    (255: invalid).  A kernel of its own, called by :func:`_correct_compiled`: inlined there, the
    same loop ran three times slower."""
    nan = np.float32(np.nan)
    invalid = np.uint8(255)
    off0, off1, off2, skip0, skip1, skip2 = offset[0], offset[1], offset[2], bad[0], bad[1], bad[2]
    for p in range(signal.shape[0]):
        here = code[p]
        first, second = here == np.uint8(0), here == np.uint8(1)
        valid = first | second | (here == third)
        x = np.float32(np.int32(signal[p]) & bits)  # (int32: a conversion that vectorises)
        d0, d1, d2 = x - off0[p], x - off1[p], x - off2[p]  # loaded unconditionally: plain vector loads
        x0 = nan if skip0[p] else d0
        x1 = nan if skip1[p] else d1
        x2 = nan if skip2[p] else d2
        x12 = x1 if second else x2
        x012 = x0 if first else x12
        corrected[p] = x012 if valid else nan
        s12 = np.uint8(1) if second else np.uint8(2)
        s012 = np.uint8(0) if first else s12
        stage[p] = s012 if valid else invalid


@jitted
def _correct_compiled(frames: np.ndarray, at: np.ndarray, gains: np.ndarray, gains_at: np.ndarray,
                      order: np.ndarray, mods: np.ndarray, cells: np.ndarray, offset: np.ndarray,
                      bad: np.ndarray, threshold: np.ndarray, lut: np.ndarray, mode: int,
                      out: np.ndarray, out_at: np.ndarray, stages: np.ndarray, stages_at: np.ndarray) -> None:
    """One pass over a block's frames, in ``order`` (by module and cell, so that their constants stay
    in cache): the float32 frames minus their offsets into ``out``, NaN where bad, invalid or
    missing, and (``mode`` other than ``_SINGLE``) the uint8 stage into ``stages``.

    Every array of frames is 1-d, with its frames' offsets beside it
    (:func:`~xfeldata.analysis._jit.flat_frames`): ``frames`` and ``at``
    ``(frame, plane)`` (plane 0 the signal, AGIPD's plane 1 its gain signal),
    ``gains`` JUNGFRAU's uint8 gain key, ``out``, ``stages``.  ``mods`` and
    ``cells`` are each frame's index in ``offset``/``bad`` ``(module, cell,
    stage, pixel)`` (cell -1: none), ``threshold`` AGIPD's ``(module, cell,
    stage - 1, pixel)``, ``lut`` LPD's or JUNGFRAU's recorded value -> stage.
    The numbers are those of the numpy twin in :func:`_correct`: the same
    float32 cast and subtraction, the same stage.
    """
    nan = np.float32(np.nan)
    invalid = np.uint8(255)
    n_stages, n_pix = offset.shape[2], offset.shape[3]
    codes = np.empty(n_pix if mode == _LPD else 0, np.uint8)  # LPD's stage codes of a frame
    for k in range(order.shape[0]):
        f = order[k]
        m, c = mods[f], cells[f]
        o = out_at[f]
        if c < 0:  # missing frame, or a cell the constants lack
            out[o:o + n_pix] = nan
            if mode != _SINGLE:
                stages[stages_at[f]:stages_at[f] + n_pix] = invalid
            continue
        signal = frames[at[f, 0]:at[f, 0] + n_pix]
        corrected = out[o:o + n_pix]
        if mode == _SINGLE:
            off, skip = offset[m, c, 0], bad[m, c, 0]
            for p in range(n_pix):
                x = np.float32(signal[p]) - off[p]
                corrected[p] = nan if skip[p] else x
            continue
        stage = stages[stages_at[f]:stages_at[f] + n_pix]
        off, skip = offset[m, c], bad[m, c]
        if mode == _THRESHOLDS:
            gain_signal, limits = frames[at[f, 1]:at[f, 1] + n_pix], threshold[m, c]
            if n_stages == 3:  # AGIPD's three stages: all three corrected, then a select, so that the loop vectorises
                low, high = limits[0], limits[1]
                off0, off1, off2, skip0, skip1, skip2 = off[0], off[1], off[2], skip[0], skip[1], skip[2]
                for p in range(n_pix):
                    g = np.float32(gain_signal[p])
                    above_low, above_high = g > low[p], g > high[p]
                    x = np.float32(signal[p])
                    d0, d1, d2 = x - off0[p], x - off1[p], x - off2[p]  # loaded unconditionally: plain vector loads
                    x0 = nan if skip0[p] else d0
                    x1 = nan if skip1[p] else d1
                    x2 = nan if skip2[p] else d2
                    both, either = above_low & above_high, above_low | above_high  # stage 2; stage 1 or 2
                    x12 = x2 if both else x1
                    corrected[p] = x12 if either else x0
                    stage[p] = np.uint8(above_low) + np.uint8(above_high)
                continue
            for p in range(n_pix):
                g = np.float32(gain_signal[p])
                s = 0
                for t in range(n_stages - 1):
                    s += g > limits[t, p]
                x = np.float32(signal[p]) - off[s, p]
                corrected[p] = nan if skip[s, p] else x
                stage[p] = s
            continue
        key = gains[gains_at[f]:gains_at[f] + n_pix]
        if n_stages == 3:  # LPD's and JUNGFRAU's three stages, as AGIPD's: all three corrected, then selects
            if mode == _LPD:  # bits 12-13: stages 0, 1, 2 (3 invalid)
                for p in range(n_pix):
                    codes[p] = np.uint8(signal[p] >> 12)
                _three_stages(signal, np.int32(0x0FFF), codes, np.uint8(2), off, skip, corrected, stage)
            else:  # the gain key: 0, 1, 3 (anything else invalid)
                _three_stages(signal, np.int32(0x3FFF), key, np.uint8(3), off, skip, corrected, stage)
            continue
        for p in range(n_pix):
            word = signal[p]
            if mode == _LPD:
                s = lut[word >> 12]
                word = word & 0x0FFF
            else:
                s = lut[key[p]]
                word = word & 0x3FFF
            if s >= n_stages:
                corrected[p] = nan
                stage[p] = invalid
            else:
                x = np.float32(word) - off[s, p]
                corrected[p] = nan if skip[s, p] else x
                stage[p] = s


#: Raw dtypes whose float32 cast (and bit fields) the compiled kernel does as numpy; others: the twin.
_COMPILED_DTYPES = frozenset(np.dtype(t) for t in (np.uint16, np.int16, np.uint8, np.int8))


def _correct_fast(frames: np.ndarray, gains: np.ndarray | None, mods: np.ndarray, cell_index: np.ndarray,
                  offset: np.ndarray, bad: np.ndarray, threshold: np.ndarray | None, enc: str,
                  corrected: np.ndarray, stages: np.ndarray | None) -> bool:
    """:func:`_correct`'s block by the compiled kernel, where there is one for it; False where not
    (no numba, ``XFELDATA_JIT=0``, or a raw dtype it does not take): then the numpy twin runs."""
    kernel = _correct_compiled.compiled()
    if kernel is None or frames.dtype not in _COMPILED_DTYPES or offset.dtype != np.float32 \
            or bad.dtype != np.bool_ or (threshold is not None and threshold.dtype != np.float32):
        return False  # (float64 constants: the twin's mixed-precision subtraction)
    if enc in ("lpd", "jungfrau") and frames.dtype != np.uint16:
        return False
    mode = _THRESHOLDS if threshold is not None else {"lpd": _LPD, "jungfrau": _JUNGFRAU}.get(enc, _SINGLE)
    lut = {_LPD: _LPD_STAGE, _JUNGFRAU: _JUNGFRAU_STAGE}.get(mode, _LPD_STAGE)
    if gains is None:
        gains = np.zeros((len(frames), 0), np.uint8)
    elif gains.dtype != np.uint8:
        gains = np.clip(gains, 0, 255).astype(np.uint8)  # as gain.split does
    if frames.ndim == 3:
        frames = frames[:, None]
    if threshold is None:
        threshold = np.zeros((0,) * 5, np.float32)
    if stages is None:
        stages = np.zeros((len(frames), 0), np.uint8)
    outputs = flat_frames(corrected, 1), flat_frames(stages, 1)
    if outputs[0] is None or outputs[1] is None:
        return False  # outputs whose frames are not contiguous: the twin writes them
    inputs = contiguous_frames(frames, 2), contiguous_frames(gains, 1)
    pixels = int(np.prod(offset.shape[3:]))
    # (bad pixels as bytes: numba's loads of booleans keep its loops from vectorising)
    constants = [np.ascontiguousarray(c).reshape(*c.shape[:3], pixels) for c in (offset, bad.view(np.uint8), threshold)]
    order = np.lexsort((cell_index, mods))
    kernel(*inputs[0], *inputs[1], order, mods, cell_index, *constants, lut, mode, *outputs[0], *outputs[1])
    return True


def _correct(data: np.ndarray, cells: np.ndarray, offset: np.ndarray,
             bad: np.ndarray, *more: np.ndarray, enc: str, cell_lut: np.ndarray, thresholds: bool,
             n_core: int, out: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Offset-correct a block of frames: the kernel of :func:`calibrate`.

    ``data`` is ``(*loop dims, [plane,] ss, fs)``; ``cells`` broadcasts
    against the loop dims; ``offset`` and ``bad`` hold the block's modules, in
    the block's order, ``(..., module, ..., cell, stage, ss, fs)`` (length 1 on
    the other loop dims); ``more`` the AGIPD gain thresholds and/or JUNGFRAU's
    gain key.  Returns the float32 frames and, where the gain stage was looked
    up (AGIPD with thresholds, LPD, JUNGFRAU), the uint8 stage of every pixel
    (:data:`~xfeldata.analysis.gain.INVALID` where it is not one of the constants').
    The frames go to ``out`` (float32 ``(*loop dims, ss, fs)``, maybe a view) or a new array;
    where stages are looked up, ``out`` is a pair: (frames or None, stages or None).

    With compiled kernels (:mod:`~xfeldata.analysis._jit`), one pass of
    :func:`_correct_compiled` over the block.  The numpy twin merges the offset of
    each (module, cell) the block uses with its bad pixels (NaN) once, and the
    frames of one (module, cell) are corrected together while it is in cache, up to :data:`BATCH` evenly spaced frames
    by one numpy call, written straight into the output, in float32.
    """
    lead = data.shape[:data.ndim - n_core]
    pixel = offset.shape[-2:]
    n_cells, n_stages = offset.shape[-4:-2]
    loop = offset.shape[:-4]  # the block's modules on their axis, 1 elsewhere
    mods = np.broadcast_to(np.arange(int(np.prod(loop))).reshape(loop), lead).ravel()  # in the block's constants
    offset = offset.reshape(-1, n_cells, n_stages, *pixel)
    bad = bad.reshape(-1, n_cells, n_stages, *pixel)
    more = list(more)
    threshold = more.pop(0).reshape(-1, n_cells, n_stages - 1, *pixel) if thresholds else None
    gains = _frames(np.broadcast_to(more.pop(0), (*lead, *pixel)), len(lead)) if more else None
    flat_cells = np.broadcast_to(cells, lead).ravel()
    inside = (flat_cells >= 0) & (flat_cells < len(cell_lut))
    cell_index = np.where(inside, cell_lut[np.clip(flat_cells, 0, len(cell_lut) - 1)], -1)
    staged = threshold is not None or enc in STAGES
    given, given_stages = out if isinstance(out, tuple) else (out, None)
    out = np.empty((*lead, *pixel), np.float32) if given is None else given
    frames, corrected = _frames(data, len(lead)), _merged(out, len(lead))
    if corrected is None:  # an output view whose frames do not line up: a new array, copied to it at the end
        corrected = np.empty((len(frames), *pixel), np.float32)
    stages = None
    if staged:
        stages = None if given_stages is None else _merged(given_stages, len(lead))
        stages = np.empty((len(frames), *pixel), np.uint8) if stages is None else stages
    nan = np.float32(np.nan)
    if _correct_fast(frames, gains, mods, cell_index, offset, bad, threshold, enc, corrected, stages):
        return _delivered(out, given, corrected, stages, given_stages, staged, lead, pixel)
    order = np.lexsort((cell_index, mods))  # by (module, cell), frames in order within each
    group = mods[order] * (n_cells + 1) + cell_index[order] + 1
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    for first, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(order)], strict=True):
        m, c = int(mods[order[first]]), int(cell_index[order[first]])
        batches = _batches(order[first:stop], BATCH)
        if c < 0:  # missing frames, or cells the constants lack
            for sl in batches:
                corrected[sl] = nan
                if staged:
                    stages[sl] = INVALID
            continue
        off = np.where(bad[m, c], nan, offset[m, c])  # (stage [+ a NaN stage for invalid ones], ss, fs)
        if staged:
            off = np.concatenate([off, np.full((1, *pixel), nan)])
        for sl in batches:
            batch, target = frames[sl], corrected[sl]
            if threshold is not None:  # AGIPD: plane 1 against the thresholds between stages
                signal, gain_signal = batch[:, 0], batch[:, 1]
                stage = stages[sl]
                np.greater(gain_signal, threshold[m, c, 0], out=stage)
                for t in range(1, n_stages - 1):
                    stage += gain_signal > threshold[m, c, t]
            elif staged:  # LPD, JUNGFRAU: recorded with the pixel
                signal, stage = split(enc, batch, None if gains is None else gains[sl])
                np.minimum(stage, n_stages, out=stage)
                stages[sl] = stage
            else:
                np.copyto(target, batch[:, 0] if n_core == 3 else batch)  # cast, then subtract: faster
                target -= off[0]                                            # than one mixed-type ufunc
                continue
            np.copyto(target, signal)
            target -= np.take_along_axis(off[None], stage[:, None].astype(np.intp), axis=1)[:, 0]
    if staged:
        stages[stages >= n_stages] = INVALID
    return _delivered(out, given, corrected, stages, given_stages, staged, lead, pixel)


def _delivered(out: np.ndarray, given: np.ndarray | None, corrected: np.ndarray, stages: np.ndarray | None,
               given_stages: np.ndarray | None, staged: bool, lead: tuple[int, ...], pixel: tuple[int, ...]
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """:func:`_correct`'s result: the frames (and stages) copied to the given outputs where they were
    worked on elsewhere."""
    if given is not None and not np.shares_memory(corrected, given):
        np.copyto(out, corrected.reshape(out.shape))
    elif given is None:
        out = corrected.reshape(out.shape)
    if not staged:
        return out
    if given_stages is None:
        return out, stages.reshape(*lead, *pixel)
    if not np.shares_memory(stages, given_stages):
        np.copyto(given_stages, stages.reshape(given_stages.shape))
    return out, given_stages


def _frames(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` with its ``k`` leading axes as one: a view if it can be, else a copy."""
    merged = _merged(a, k)
    return merged if merged is not None else np.ascontiguousarray(a).reshape(-1, *a.shape[k:])


def _constant(values: xr.DataArray, dims: tuple[str, ...], module_chunks: tuple[int, ...] | None) -> xr.Variable:
    """A constant (its modules those of the data, in order) as a Variable with ``dims``, chunked
    ``module_chunks`` (the data's blocks of modules) if the data is lazy (not None).

    numpy constants become dask arrays without hashing or copying their bytes
    (they can be large), one block (a view) per block of modules of the data.
    A Variable, not a DataArray: its modules are the data's already, so
    ``apply_ufunc`` need not align it.
    """
    data = values.data
    if module_chunks is not None and not isinstance(data, da.Array):
        data = np.asarray(data)
        edges = np.cumsum((0, *module_chunks))
        chunks = (module_chunks, *((n,) for n in data.shape[1:]))
        name = f"xfeldata-constant-{uuid.uuid4().hex}"
        blocks = {(name, i, *(0,) * (data.ndim - 1)): data[a:b]  # views, held by the graph as data
                  for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))}
        data = da.Array(blocks, name, chunks, dtype=data.dtype, meta=np.empty((0,) * data.ndim, data.dtype))
    elif isinstance(data, da.Array) and module_chunks is not None:
        data = data.rechunk((module_chunks, *(-1 for _ in dims[1:])))
    return xr.Variable(dims, data)


def calibrate(det: xr.Dataset, constants: xr.Dataset | None = None, *, mask_bits: int = 0xFFFFFFFF
              ) -> xr.Dataset:
    """Offset-corrected float32 frames (raw data), or corrected data with its mask applied.

    Raw data: each frame minus the offset of its module, memory cell (by
    ``cellId``) and gain stage.  The stage of each pixel: AGIPD from the
    frame's gain plane (the ``gain`` axis) and the constants'
    ``gain_threshold``; LPD from bits 12-13 of the pixel; JUNGFRAU from its
    gain key (``image.gain``); other detectors have one.  Bad pixels of the
    constants, invalid gain stages, stages or cells the constants lack, and
    missing frames are NaN, and ``present`` becomes per pixel: False there too.
    Corrected data (``constants=None``): pixels whose ``image.mask`` has any of
    ``mask_bits`` set become NaN and not present (EXtra-data's
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
        slow_scan, fast_scan)`` (AGIPD's gain plane gone), ``present`` per pixel
        (``present (trainId, pulseId, module)`` and a finite value), and where
        the stage was looked up, ``image.gain`` (uint8 stage per pixel, 255 where
        invalid); ``cellId`` and every coordinate kept.  Lazy if ``det`` is.

    Examples
    --------
    >>> constants = dark_constants(dark)                        # doctest: +SKIP
    >>> corrected = calibrate(run.detector("AGIPD"), constants) # doctest: +SKIP
    >>> corrected["image.data"].dtype                           # doctest: +SKIP
    dtype('float32')
    """
    if constants is None:
        return masked(det, mask_bits)
    if not isinstance(constants, xr.Dataset):
        raise TypeError(f"constants must be the Dataset of dark_constants(dark_det), not {type(constants).__name__}")
    arr = data_array(det)
    if arr.dtype.kind == "f":
        raise TypeError(f"image.data is {arr.dtype}, corrected data: offsets are subtracted from raw (integer) "
                        "frames; calibrate(det) without constants applies corrected data's own mask")
    if "cellId" not in det:
        raise KeyError("the detector Dataset has no cellId variable (needed to pick each frame's constants)")
    kind = det.attrs.get("kind", constants.attrs.get("kind"))
    if "kind" in constants.attrs and kind != constants.attrs["kind"]:
        raise ValueError(f"the constants' detector is {constants.attrs['kind']}, the data's is {kind}")
    enc = _encoding(det, kind)
    missing = np.setdiff1d(det[MODULE_DIM].values, constants[MODULE_DIM].values)
    if len(missing):
        raise ValueError(f"the constants have no module(s) {missing.tolist()}")
    has_plane = enc == "agipd" and GAIN_PLANE_DIM in arr.dims
    core = [GAIN_PLANE_DIM, *PIXEL_DIMS] if has_plane else list(PIXEL_DIMS)
    if arr.chunks is not None and any(len(arr.chunksizes[d]) > 1 for d in core):
        arr = arr.chunk({d: -1 for d in core})
    if not np.array_equal(constants[MODULE_DIM].values, det[MODULE_DIM].values):
        constants = constants.sel({MODULE_DIM: det[MODULE_DIM].values})  # a copy: only when needed
    module_chunks = None if arr.chunks is None else arr.data.chunks[arr.dims.index(MODULE_DIM)]
    cdims = (MODULE_DIM, "_cell", "_stage", *PIXEL_DIMS)
    args = [arr, det["cellId"], _constant(constants["offset"], cdims, module_chunks),
            _constant(constants["bad_pixels"], cdims, module_chunks)]
    core_dims = [core, [], list(cdims[1:]), list(cdims[1:])]
    thresholds = has_plane and "gain_threshold" in constants
    if thresholds:
        args.append(_constant(constants["gain_threshold"], (MODULE_DIM, "_cell", "_threshold", *PIXEL_DIMS),
                              module_chunks))
        core_dims.append(["_cell", "_threshold", *PIXEL_DIMS])
    if enc == "jungfrau":
        if "image.gain" not in det:
            raise KeyError("the JUNGFRAU Dataset has no image.gain variable (its gain key, data.gain): "
                           "needed to tell each pixel's gain stage")
        gain = det["image.gain"]
        if gain.chunks is not None and arr.chunks is not None:
            gain = gain.chunk(arr.chunksizes)
        args.append(gain)
        core_dims.append(list(PIXEL_DIMS))
    cell_values = constants[CELL_DIM].values
    cell_lut = np.full(int(cell_values.max()) + 1, -1, np.int64)
    cell_lut[cell_values] = np.arange(len(cell_values))
    staged = thresholds or enc in STAGES
    n_out = 2 if staged else 1
    pixel = tuple(arr.sizes[d] for d in PIXEL_DIMS)
    results = xr.apply_ufunc(
        partial(map_frames, _correct), *args,
        kwargs={"core_ndims": [len(c) for c in core_dims], "out_core": pixel,
                "dtypes": [np.float32, np.uint8][:n_out], "into": True,
                "enc": enc, "cell_lut": cell_lut, "thresholds": thresholds, "n_core": len(core)},
        input_core_dims=core_dims, output_core_dims=[list(PIXEL_DIMS)] * n_out, dask="allowed")
    data, stage = results if staged else (results, None)
    dims = tuple(d for d in arr.dims if d not in core or d in PIXEL_DIMS)
    # Variables, not DataArrays: they share det's coordinates, so the Dataset need not align them
    data = data.variable.transpose(*dims)
    data.attrs.update(arr.attrs, units="ADU", calibration="offset")
    new = {"image.data": data}
    if stage is not None:
        new["image.gain"] = stage.variable.transpose(*dims)
    if "present" in det:
        new["present"] = det["present"].variable & np.isfinite(data)
    out = det.drop_vars([v for v in ("image.data", "image.gain", "image.mask") if v in det])
    return uniform_dask(out.assign(new))


def masked(det: xr.Dataset, mask_bits: int = 0xFFFFFFFF) -> xr.Dataset:
    """Corrected data with NaN where ``image.mask`` has any of ``mask_bits`` set, and not ``present`` there.

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
    good = (det["image.mask"] & np.uint32(mask_bits)) == 0
    out["image.data"] = arr.where(good)
    if "present" in det:
        out["present"] = det["present"] & good
    return uniform_dask(out)
