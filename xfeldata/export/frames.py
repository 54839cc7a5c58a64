"""Which frames of a selection's detector modules a writer keeps (``run.write(path, pulses=...)``).

A frame selection is what ``run.detector(pulses=...)`` takes (pulse IDs, an
inclusive slice of them, ``by_id[...]``, ``by_index[...]``) or a boolean
DataArray with dims ``(trainId, pulseId)`` or ``(trainId, pulseId, module)``
(e.g. a hit finder's result): a frame is kept where it is True; frames it does
not label are dropped.  It applies to the row-per-frame (XTDF) detector
modules of the selection (their ``image`` index group); every other source
and index group is written whole.

Examples
--------
>>> import xarray as xr
>>> mask = xr.DataArray([[True, False]], dims=("trainId", "pulseId"),
...                     coords={"trainId": [10000], "pulseId": [0, 1]})
>>> _mask_rows(mask, 3, np.array([10000, 10000, 10001], np.uint64), np.array([0, 1, 0])).tolist()
[True, False, False]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..arrays import read_rows
from ..detectors.kinds import detector_kind_of_source, match_detector_source
from ..detectors.plan import (
    check_parallel_gain,
    check_pulse_selection,
    gain_stage_rows,
    positions_in_stage,
    select_pulses,
)
from ..run import RunSelection, positions_within

__all__ = ["FRAME_GROUP", "frame_sources", "check_frames", "kept_rows"]

#: The index group whose rows are frames.
FRAME_GROUP = "image"


def _is_mask(pulses: Any) -> bool:
    return hasattr(pulses, "dims") and hasattr(pulses, "coords")


def frame_sources(run: RunSelection) -> list[str]:
    """The selected sources whose ``image`` rows are frames labelled by ``image.pulseId``."""
    found = []
    for source in run.instrument_sources:
        match = match_detector_source(source)
        if match is None or FRAME_GROUP not in run.index_groups(source):
            continue
        if "image.pulseId" in run.select(source).keys(source):
            found.append(source)
    return found


def _module(source: str) -> int:
    return match_detector_source(source)[1]


def _frame_rows(run: RunSelection, source: str, parallel_gain: bool | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``image`` row of the source in the selected trains: train ID, pulse ID, position in its train.

    LPD's gain stages stored in sequence (``parallel_gain`` as for
    ``run.detector``): each row's pulse is that of the train's first stage,
    and its position counts within its stage, as the detector plan labels them.
    """
    pids, found = read_rows(run.select(source), source, "image.pulseId")
    pids = pids.reshape(len(pids), -1)[:, 0] if pids.ndim > 1 else pids
    counts = found.count.astype(np.int64)
    kind = detector_kind_of_source(source)
    n = kind.gain_stages if kind is not None else 1
    stage, pids = gain_stage_rows(counts, pids, n, parallel_gain, source, found.train_ids)
    positions = positions_in_stage(counts, n) if stage is not None and stage.any() else positions_within(counts)
    return np.repeat(found.train_ids, counts), pids, positions


def check_frames(run: RunSelection, pulses: Any, parallel_gain: bool | None = None) -> list[str]:
    """Check a frame selection against the selection; return the sources it applies to.

    Raises
    ------
    ValueError
        If the selection has no detector module with frames, a mask has other
        dims, or pulse IDs or positions asked for by value are in no module.
    TypeError
        For a mask that is not boolean, or a plain (unlabelled) boolean array.
    """
    sources = frame_sources(run)
    if not sources:
        raise ValueError("pulses= selects frames of detector modules (an 'image' index group with "
                         "image.pulseId); the selection has none: select a detector's sources")
    for source in sources:
        check_parallel_gain(detector_kind_of_source(source), parallel_gain)
    if isinstance(pulses, xr.Dataset):
        raise TypeError("pulses= takes a boolean DataArray (trainId, pulseId[, module]), by_id[...] or "
                        "by_index[...], not a Dataset (select_frames' result is written with xd.write_cxi)")
    if _is_mask(pulses):
        dims = tuple(pulses.dims)
        if pulses.dtype != bool:
            raise TypeError(f"a frame mask must be boolean, not {pulses.dtype}")
        if set(dims) not in ({"trainId", "pulseId"}, {"trainId", "pulseId", "module"}):
            raise ValueError(f"a frame mask needs dims (trainId, pulseId[, module]), not {dims}")
        return sources
    if isinstance(pulses, np.ndarray) and pulses.dtype == bool:
        raise TypeError("pass a boolean frame mask as a DataArray with dims (trainId, pulseId), "
                        "so that its frames are labelled")
    ids, positions = {}, {}
    for source in sources:
        _, ids[_module(source)], positions[_module(source)] = _frame_rows(run, source, parallel_gain)
    device = match_detector_source(sources[0])[0]
    check_pulse_selection(pulses, ids, positions, f"the modules of {device} selected")
    return sources


def _mask_rows(mask: Any, module: int, train_ids: np.ndarray, pulse_ids: np.ndarray) -> np.ndarray:
    """Per row, the mask's value at the row's (train, pulse[, module]); False where it has none."""
    if "module" in mask.dims:
        modules = mask["module"].values
        if module not in modules.tolist():
            return np.zeros(len(train_ids), bool)
        mask = mask.sel(module=module)
    mask = mask.transpose("trainId", "pulseId")
    values = np.asarray(mask.values, bool)
    keep = np.zeros(len(train_ids), bool)
    hits = []
    for coord, wanted in (("trainId", train_ids), ("pulseId", pulse_ids)):
        labels = np.asarray(mask[coord].values)
        order = np.argsort(labels, kind="stable")
        pos = np.searchsorted(labels[order], wanted)
        clipped = np.minimum(pos, max(len(labels) - 1, 0))
        ok = (pos < len(labels)) & (labels[order][clipped] == wanted) if len(labels) else \
            np.zeros(len(wanted), bool)
        hits.append((order[clipped] if len(labels) else clipped, ok))
    (t, t_ok), (p, p_ok) = hits
    found = t_ok & p_ok
    keep[found] = values[t[found], p[found]]
    return keep


def kept_rows(run: RunSelection, source: str, pulses: Any, parallel_gain: bool | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The frames of ``source`` that ``pulses`` keeps in the selected trains (every gain stage of a
    pulse kept, for LPD's stages stored in sequence: ``parallel_gain`` as for ``run.detector``).

    Returns
    -------
    keep
        Boolean per ``image`` row, in the order of the rows of the selected
        trains (as :func:`xfeldata.arrays.flat_rows_blocks` reads them).
    counts
        Kept rows per selected train (zeros included).
    """
    tids, pids, positions = _frame_rows(run, source, parallel_gain)
    if _is_mask(pulses):
        keep = _mask_rows(pulses, _module(source), tids, pids)
    else:
        keep = select_pulses(pids, positions, pulses)
    counts = np.zeros(len(run.train_ids), np.uint64)
    np.add.at(counts, np.searchsorted(run.train_ids, tids[keep]), 1)
    return keep, counts
