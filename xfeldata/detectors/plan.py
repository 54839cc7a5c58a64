"""The stacking plan of a multi-module detector, from per-module facts only.

Files (:mod:`xfeldata.detectors.stacking`) and streams
(:mod:`xfeldata.bridge.live`) gather the same facts, each in its own way:
which module has data in which train, and, per module, the number of rows in
each kept train and the pulse ID of every row.  This module turns them into
the one layout both stack by: the train axis, the pulse axis, the slot, gain
stage and selection of every row, and the frame-level ``present`` mask.

One train's modules stacked side by side (``stack_detector_data`` and the
bridge server's stacked source) are placed by :func:`plan_train_modules`: the
module numbering, which modules count as present, the shape and dtype checks
and the fill value, the same rules as for the detector Dataset.

Examples
--------
>>> from xfeldata.detectors import DETECTORS
>>> plan = plan_frames(DETECTORS["AGIPD1M"], [0, 1], {0: np.array([2, 1]), 1: np.array([0, 2])},
...                    {0: np.array([4, 6, 4]), 1: np.array([4, 6])})
>>> plan.pulse_coord.tolist(), plan.present[:, :, 1].tolist()
([4, 6], [[False, False], [True, True]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..fill import fill_value_for
from ..run import positions_within
from .kinds import DetectorKind


@dataclass(frozen=True)
class _PulseSelector:
    by: str
    value: Any

    def __repr__(self) -> str:
        v = self.value
        if isinstance(v, slice):
            text = ":".join("" if x is None else str(x) for x in (v.start, v.stop, v.step)).rstrip(":")
            text = text if ":" in text else text + ":"
        else:
            text = repr(v.tolist() if isinstance(v, np.ndarray) else v)
        return f"by_{self.by}[{text}]"


class _SelectorFactory:
    """Pulse selection for ``detector(pulses=...)``.

    ``by_id[...]`` selects by pulse ID, with label slices that include both ends
    (like ``run.sel``): ``by_id[0:10]`` is pulse IDs 0 to 10. ``by_index[...]``
    selects by position within the train, with Python slices: ``by_index[0:3]``
    is the first three frames. A plain list, array or slice means pulse IDs.
    """

    def __init__(self, by: str):
        self.by = by

    def __repr__(self) -> str:
        return f"xfeldata.by_{self.by}"

    def __getitem__(self, value: Any) -> _PulseSelector:
        return _PulseSelector(self.by, value)


#: Select pulses by pulse ID: ``pulses=by_id[0:100:2]`` (slices are inclusive of labels).
by_id = _SelectorFactory("id")
#: Select pulses by position within the train: ``pulses=by_index[:10]``.
by_index = _SelectorFactory("index")


def _train_lengths(positions: np.ndarray) -> np.ndarray:
    """Per row, the number of rows of its train (a train's rows are 0, 1, ... in sequence)."""
    starts = np.flatnonzero(positions == 0)
    lengths = np.diff(np.append(starts, len(positions)))
    return np.repeat(lengths, lengths)


def select_pulses(pulse_ids: np.ndarray, positions: np.ndarray, pulses: Any) -> np.ndarray:
    """Boolean per row: is the row's pulse selected (``pulses`` as in :func:`detector_dataset`).

    ``positions`` are the rows' positions within their trains (0, 1, ... for
    each train in turn).  Positions of ``by_index`` count within each train, as
    Python indices do: ``by_index[-1]`` is the last frame of every train.

    >>> select_pulses(np.array([4, 6, 8]), np.arange(3), by_index[1:]).tolist()
    [False, True, True]
    >>> select_pulses(np.array([4, 6, 8]), np.arange(3), by_id[4:6]).tolist()
    [True, True, False]
    >>> select_pulses(np.array([4, 6, 8, 4, 6]), np.array([0, 1, 2, 0, 1]), by_index[-1]).tolist()
    [False, False, True, False, True]
    """
    if pulses is None:
        return np.ones(len(pulse_ids), bool)
    sel = pulses if isinstance(pulses, _PulseSelector) else _PulseSelector("id", pulses)
    v = sel.value
    if sel.by == "index":
        positions = np.asarray(positions, np.int64)
        lengths = _train_lengths(positions)
        keep = np.zeros(len(positions), bool)
        for n in np.unique(lengths).tolist():  # trains of equal length select the same positions
            rows = lengths == n
            chosen = np.arange(n)[v] if isinstance(v, slice) else _positions_of(v, n)
            keep[rows] = np.isin(positions[rows], chosen)
        return keep
    values = pulse_ids
    if isinstance(v, slice):
        keep = np.ones(len(values), bool)
        if v.start is not None:
            keep &= values >= v.start
        if v.stop is not None:
            keep &= values <= v.stop
        if v.step:
            keep &= (values - (v.start or 0)) % v.step == 0
        return keep
    return np.isin(values, _as_values(v))


def _as_values(v: Any) -> np.ndarray:
    """The integers of a selection given as one integer, a list or an array."""
    if isinstance(v, int | np.integer):
        return np.array([int(v)], np.int64)
    return np.asarray(list(v) if not isinstance(v, np.ndarray) else v, np.int64).ravel()


def _positions_of(v: Any, n: int) -> np.ndarray:
    """Positions (negative ones counted from the end) within a train of ``n`` rows."""
    wanted = _as_values(v)
    wanted = np.where(wanted < 0, wanted + n, wanted)
    return wanted[(wanted >= 0) & (wanted < n)]


def check_pulse_selection(pulses: Any, pulse_ids: Mapping[int, np.ndarray],
                          positions: Mapping[int, np.ndarray], what: str = "the detector",
                          label: str = "pulse ID") -> None:
    """Raise if ``pulses`` names pulse IDs (or positions) that no module has.

    ``pulse_ids`` and ``positions`` are per module: every row's pulse ID and
    position within its train; ``label`` names the labels (``"cell"`` for
    JUNGFRAU).  Slices may select nothing (as label slices of ``Dataset.sel``
    do); a pulse asked for by its ID or position must exist in some train.

    >>> ids = {0: np.arange(64)}
    >>> check_pulse_selection(by_id[[100]], ids, {0: np.arange(64)})
    Traceback (most recent call last):
    ...
    ValueError: pulses=by_id[[100]]: pulse ID 100 is not in the detector (pulse IDs there: 0 to 63, 64 of them)
    """
    if pulses is None:
        return
    sel = pulses if isinstance(pulses, _PulseSelector) else _PulseSelector("id", pulses)
    if isinstance(sel.value, slice):
        return
    found = np.unique(np.concatenate([np.asarray(p, np.int64) for p in pulse_ids.values()])) \
        if pulse_ids else np.zeros(0, np.int64)
    if not len(found):
        return  # no frames at all: nothing to select from
    wanted = _as_values(sel.value)
    if sel.by == "id":
        missing = np.setdiff1d(wanted, found)
        noun = label
    else:
        longest = max((int(p.max(initial=-1)) + 1 for p in positions.values()), default=0)
        missing = wanted[(wanted >= longest) | (wanted < -longest)]
        noun = "position"
    if len(missing):
        shown = ", ".join(map(str, missing[:5].tolist())) + (", ..." if len(missing) > 5 else "")
        verb = "is" if len(missing) == 1 else "are"
        if sel.by == "index":
            raise ValueError(f"pulses={pulses!r}: {noun}{'s' * (len(missing) > 1)} {shown} {verb} "
                             f"beyond every train of {what} (at most {longest} frames a train)")
        raise ValueError(f"pulses={pulses!r}: {noun}{'s' * (len(missing) > 1)} {shown} {verb} "
                         f"not in {what} ({label}s there: {_describe_ids(found)})")


def _describe_ids(ids: np.ndarray) -> str:
    """``0 to 63, 64 of them``, or the IDs themselves when there are few."""
    if len(ids) <= 5:
        return ", ".join(map(str, ids.tolist()))
    return f"{ids[0]} to {ids[-1]}, {len(ids)} of them"


def kept_trains(has: np.ndarray, require_all_modules: bool = False) -> np.ndarray:
    """Which candidate trains the detector's train axis keeps.

    ``has`` is boolean ``(module, train)``: the module has data in the train.
    A train is kept where any module has data or, with ``require_all_modules``,
    where every module that has data somewhere in the candidates has data (a
    module absent from the whole selection does not count).

    >>> kept_trains(np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]], bool), True).tolist()
    [True, False, False]
    """
    has = np.asarray(has, bool)
    keep = has.any(axis=0)
    if require_all_modules:
        keep &= has[has.any(axis=1)].all(axis=0)
    return keep


@dataclass
class FramePlan:
    """Where every row of every module goes in the stacked arrays.

    Attributes
    ----------
    pulse_coord
        The pulse-like axis: sorted selected pulse IDs (a row per frame), or
        the memory cells (a row per train).
    n_slots
        Slots a row is placed into: ``len(pulse_coord)``, or 1 when a row holds
        every memory cell of a train.
    selected, slots
        Per module: is each row selected, and its slot.
    stages
        Per module, the gain stage of each row (LPD parallel gain), else None.
    n_stages
        Gain stages stacked (1 unless ``stages``).
    present
        Boolean ``(train, pulse_coord, module)``: True exactly where a frame was recorded.
    cells_selected
        A row per train: which memory cells the pulse selection keeps (select
        them after stacking); None for a row per frame.
    pulse_ids
        Per module, the pulse ID that labels each row (a row per frame): the
        recorded one, or with ``parallel_gain=True`` that of the row's pulse
        in the train's first gain stage; empty for a row per train.
    """

    pulse_coord: np.ndarray
    n_slots: int
    selected: dict[int, np.ndarray]
    slots: dict[int, np.ndarray]
    stages: dict[int, np.ndarray] | None
    n_stages: int
    present: np.ndarray
    cells_selected: np.ndarray | None
    pulse_ids: dict[int, np.ndarray]


def repeated_gain_stages(counts: np.ndarray, pulse_ids: np.ndarray, stages: int) -> np.ndarray | None:
    """Gain stage per row if every train stores its pulses ``stages`` times in sequence.

    Recognised only where the parts of every train repeat the same pulse IDs
    (``parallel_gain=None``).

    >>> repeated_gain_stages(np.array([6, 0]), np.array([4, 6, 4, 6, 4, 6]), 3).tolist()
    [0, 0, 1, 1, 2, 2]
    >>> repeated_gain_stages(np.array([6]), np.arange(6), 3) is None
    True
    """
    stage = np.zeros(len(pulse_ids), np.int64)
    start = 0
    for n in counts.tolist():
        if n:
            if n % stages:
                return None
            ids = pulse_ids[start:start + n].reshape(stages, -1)
            if not (ids == ids[0]).all():
                return None
            stage[start:start + n] = np.repeat(np.arange(stages), n // stages)
        start += n
    return stage


def split_gain_stages(counts: np.ndarray, pulse_ids: np.ndarray, stages: int, what: str = "the module",
                      train_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gain stage and pulse ID of every row, each train's rows being ``stages`` equal parts.

    What ``parallel_gain=True`` means: part ``s`` of a train's rows holds gain
    stage ``s`` of every pulse, and the pulse IDs of the first part label all
    parts (LPD records junk pulse and cell IDs in the other parts).

    >>> stage, ids = split_gain_stages(np.array([6]), np.array([4, 6, 0, 0, 9, 9]), 3)
    >>> stage.tolist(), ids.tolist()
    ([0, 0, 1, 1, 2, 2], [4, 6, 4, 6, 4, 6])

    Raises
    ------
    ValueError
        If a train's row count is not a multiple of ``stages`` (the message
        names ``what`` and the train's ID, from ``train_ids`` where given).
    """
    counts = np.asarray(counts, np.int64)
    odd = np.flatnonzero(counts % stages)
    if len(odd):
        i = int(odd[0])
        train = f"train {int(train_ids[i])}" if train_ids is not None else f"train at position {i}"
        raise ValueError(f"{what}: {train} has {int(counts[i])} frames, not a multiple of {stages}; "
                         f"parallel_gain=True needs every train to store {stages} gain stages of each "
                         "pulse in sequence")
    per_stage = np.maximum(np.repeat(counts // stages, counts), 1)  # per row: pulses in its train
    stage = positions_within(counts) // per_stage
    first_row = np.repeat(np.cumsum(counts) - counts, counts)        # per row: its train's first row
    ids = np.asarray(pulse_ids, np.int64)[first_row + positions_in_stage(counts, stages)]
    return stage, ids


def positions_in_stage(counts: np.ndarray, stages: int) -> np.ndarray:
    """0, 1, ... within each gain stage of each train's rows (``stages`` equal parts of a train):
    what ``by_index`` counts with gain stages stored in sequence.

    >>> positions_in_stage(np.array([6, 3]), 3).tolist()
    [0, 1, 0, 1, 0, 1, 0, 0, 0]
    """
    counts = np.asarray(counts, np.int64)
    return positions_within(counts) % np.maximum(np.repeat(counts // stages, counts), 1)


def check_parallel_gain(kind: DetectorKind | None, parallel_gain: Any) -> None:
    """Refuse a ``parallel_gain`` that is not None/True/False, or True for a detector without gain
    stages stored in sequence (all but LPD)."""
    if parallel_gain is not None and not isinstance(parallel_gain, bool | np.bool_):
        raise TypeError(f"parallel_gain must be None, True or False, not {parallel_gain!r}")
    if parallel_gain and (kind is None or kind.gain_stages == 1):
        raise ValueError(f"parallel_gain=True is for LPD detectors, which can store 3 gain stages of "
                         f"each pulse in sequence; {kind.name if kind else 'this detector'} has no such "
                         "gain stages")


def gain_stage_rows(counts: np.ndarray, pulse_ids: np.ndarray, stages: int, parallel_gain: bool | None,
                    what: str = "the module", train_ids: np.ndarray | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray]:
    """One module's rows: the gain stage of each (None where its train's rows are not gain stages
    stored in sequence) and the pulse ID labelling each, as ``parallel_gain`` says (see
    :func:`plan_frames`): True splits (:func:`split_gain_stages`), None recognises repeated
    IDs (:func:`repeated_gain_stages`; may be all stage 0), False never splits.

    >>> stage, ids = gain_stage_rows(np.array([3]), np.array([5, 6, 7]), 3, None)
    >>> stage is None, ids.tolist()
    (True, [5, 6, 7])
    """
    ids = np.asarray(pulse_ids, np.int64)
    if parallel_gain:
        return split_gain_stages(counts, ids, stages, what, train_ids)
    if parallel_gain is None and stages > 1:
        return repeated_gain_stages(counts, ids, stages), ids
    return None, ids


def repeats_within_trains(counts: np.ndarray, pulse_ids: np.ndarray) -> bool:
    """True if a pulse ID appears twice among the rows of one train.

    >>> repeats_within_trains(np.array([2, 2]), np.array([0, 1, 1, 2]))
    False
    >>> repeats_within_trains(np.array([3]), np.array([0, 1, 0]))
    True
    >>> repeats_within_trains(np.array([2, 0, 0, 0, 1]), np.array([0, 2**62 - 1, 0]))
    False
    """
    if len(pulse_ids) < 2:
        return False
    train = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((pulse_ids, train))
    p, t = pulse_ids[order], train[order]
    return bool(((p[1:] == p[:-1]) & (t[1:] == t[:-1])).any())


def plan_frames(kind: DetectorKind, modules: Sequence[int], counts: Mapping[int, np.ndarray],
                pulse_ids: Mapping[int, np.ndarray], pulses: Any = None, n_cells: int = 1,
                sources: Mapping[int, str] | None = None, parallel_gain: bool | None = None,
                train_ids: np.ndarray | None = None) -> FramePlan:
    """The plan of the rows of the modules found, on the kept train axis.

    Parameters
    ----------
    kind
        The detector kind (row per frame or per train, gain stages).
    modules
        Every stacked module number, in order (those without data included).
    counts
        Per module with data: rows in each kept train.
    pulse_ids
        Per module with data: the pulse ID of every row (a row per frame; ignored
        for a row per train).
    pulses
        The pulse selection of ``detector(pulses=...)``.
    n_cells
        Memory cells in a row (a row per train).
    sources
        Module sources, for error messages.
    parallel_gain
        Gain stages stored in sequence (LPD's parallel-gain mode): None
        recognises them where each train's rows are ``kind.gain_stages`` parts
        repeating the same pulse IDs; True splits every train's rows into that
        many equal parts, gain stages 0, 1, 2, labelled by the first part's
        pulse IDs (see :func:`split_gain_stages`); False never splits.  With
        gain stages, ``by_index`` positions count within a stage and a pulse
        selected keeps all of its stages.
    train_ids
        The kept trains' IDs, for error messages.

    Raises
    ------
    ValueError
        If a pulse ID repeats within a train (within a gain stage), ``pulses``
        names pulse IDs or positions that no module has (see
        :func:`check_pulse_selection`), ``parallel_gain=True`` is given for a
        kind without gain stages stored in sequence, or a train's rows cannot
        be split into them.
    TypeError
        If ``parallel_gain`` is not None, True or False.
    """
    check_parallel_gain(kind, parallel_gain)
    n_trains = len(next(iter(counts.values()))) if counts else 0
    what = f"the {kind.name} modules"
    positions = {m: positions_within(c) for m, c in counts.items()}
    if not kind.row_per_frame:  # one row per train holding every cell; cells selected later
        pulse_coord = np.arange(n_cells)
        present = np.zeros((n_trains, n_cells, len(modules)), bool)
        for j, m in enumerate(modules):
            if m in counts:
                present[np.asarray(counts[m]) > 0, :, j] = True
        cells_selected = select_pulses(pulse_coord, pulse_coord, pulses)
        check_pulse_selection(pulses, {0: pulse_coord}, {0: pulse_coord}, what, "cell")
        return FramePlan(pulse_coord, 1, {m: np.ones(len(p), bool) for m, p in positions.items()},
                         {m: np.zeros(len(p), np.int64) for m, p in positions.items()}, None, 1,
                         present, cells_selected, {})

    def source(m: int) -> str:
        return sources[m] if sources else f"module {m}"

    n = kind.gain_stages
    rows = {m: gain_stage_rows(counts[m], pulse_ids[m], n, parallel_gain, source(m), train_ids) for m in counts}
    ids = {m: i for m, (_, i) in rows.items()}
    found = {m: st for m, (st, _) in rows.items()}
    stages = None
    if parallel_gain or (all(s is not None for s in found.values()) and any(c.any() for c in counts.values())
                         and not all((s == 0).all() for s in found.values())):
        stages = found  # (recognised all zero: each train's pulses stored once, not parallel gain)
    if stages is not None:  # positions count within a gain stage: by_index selects pulses
        positions = {m: positions_in_stage(counts[m], n) for m in counts}
    selected = {m: select_pulses(ids[m], positions[m], pulses) for m in counts}
    check_pulse_selection(pulses, ids, positions, what)
    for m in counts:
        first = stages[m] == 0 if stages is not None else slice(None)
        if repeats_within_trains(np.asarray(counts[m]) // (n if stages is not None else 1), ids[m][first]):
            where = "a gain stage of a train" if stages is not None else "a train"
            hint = ""
            if parallel_gain is None and n > 1 and stages is None:
                hint = (f" (if this is parallel-gain data, {n} gain stages of each pulse stored in "
                        "sequence, pass parallel_gain=True)")
            raise ValueError(f"{source(m)}: a pulse ID repeats within {where}; "
                             f"cannot label frames by pulse ID{hint}")
    chosen = [ids[m][selected[m]] for m in counts]
    pulse_coord = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    slots = {m: np.searchsorted(pulse_coord, ids[m]) for m in counts}
    present = np.zeros((n_trains, len(pulse_coord), len(modules)), bool)
    for j, m in enumerate(modules):
        if m in counts:
            row_train = np.repeat(np.arange(n_trains), counts[m])
            present[row_train[selected[m]], slots[m][selected[m]], j] = True
    return FramePlan(pulse_coord, len(pulse_coord), selected, slots, stages,
                     n if stages is not None else 1, present, None, ids)


# ----- one train's modules side by side --------------------------------------
# ``stack_detector_data`` (EXtra-data's per-train function) and the bridge
# server's stacked ``<device>/CAL/APPEND`` source (the facility's append
# devices) stack one key of one train: a position for every module of the
# detector, the modules without frames filled.
def train_module_numbers(kind: DetectorKind | None, n_modules: int | None = None) -> tuple[int, ...]:
    """The module number at each position of one train's stack.

    Every module of the kind (as EXtra-data's ``stack_detector_data`` and the
    facility's append devices stack them), or ``n_modules`` positions numbered
    from the kind's first module; a detector of unknown kind has 16 modules
    numbered from 0.

    >>> from xfeldata.detectors import DETECTORS
    >>> train_module_numbers(DETECTORS["JUNGFRAU"])
    (1, 2, 3, 4, 5, 6, 7, 8)
    >>> train_module_numbers(None, 4)
    (0, 1, 2, 3)
    """
    if n_modules is None:
        return tuple(kind.modules) if kind else tuple(range(16))
    start = kind.modules[0] if kind else 0
    return tuple(range(start, start + n_modules))


@dataclass(frozen=True)
class TrainModules:
    """One key of one train's modules, checked and placed (see :func:`plan_train_modules`).

    Attributes
    ----------
    device, key
        The detector and the key stacked.
    numbers
        The module number at each position.
    arrays
        ``{position: array}`` of the modules present (those with frames).
    shape, dtype
        Of one module's array.
    fill_value
        The value of the modules missing.
    """

    device: str
    key: str
    numbers: tuple[int, ...]
    arrays: dict[int, np.ndarray]
    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any

    @property
    def present(self) -> np.ndarray:
        """Boolean per position: the module has frames of the key in this train."""
        return np.isin(np.arange(len(self.numbers)), list(self.arrays))

    def stacked_shape(self, axis: int = 0) -> tuple[int, ...]:
        """The shape with the module axis at ``axis`` (counted as in the stacked array)."""
        axis = self.module_axis(axis)
        return self.shape[:axis] + (len(self.numbers),) + self.shape[axis:]

    def module_axis(self, axis: int) -> int:
        """``axis`` as a non-negative position in the stacked array.

        A negative axis counts from the end modulo the stacked array's dims, as
        EXtra-data's ``stack_detector_data`` counts the ones it takes: the
        default -3 puts the modules of a per-frame key (``image.cellId``, one
        value a frame) last, ``(frames, modules)``.  (EXtra-data refuses some
        negative axes far below the first; they wrap here.)

        Raises
        ------
        ValueError
            If ``axis`` is past the stacked array's last axis.
        """
        ndim = len(self.shape) + 1
        if axis >= ndim:
            raise ValueError(f"axis {axis} is out of range for {ndim}-d stacked data")
        return axis % ndim

    def stack(self, axis: int = 0) -> np.ndarray:
        """Copy the modules into one array, the module axis at ``axis``, missing modules filled."""
        out = np.empty(self.stacked_shape(axis), self.dtype)
        per_module = np.moveaxis(out, self.module_axis(axis), 0)
        for i in range(len(self.numbers)):
            per_module[i] = self.arrays[i] if i in self.arrays else self.fill_value
        return out


def plan_train_modules(device: str, kind: DetectorKind | None, values: Mapping[int, tuple[str, Any]],
                       key: str, n_modules: int | None = None, fill_value: Any = None) -> TrainModules:
    """Check and place one key of one train's modules.

    Parameters
    ----------
    device, kind
        The detector and its kind (None if unknown).
    values
        ``{module number: (source, value of key or None)}`` of the modules in the train.
    key
        The key stacked (for messages).
    n_modules
        Positions in the stack (see :func:`train_module_numbers`).
    fill_value
        Value of missing modules (default :func:`~xfeldata.fill.default_fill_value`).

    A module counts as present where it has the key with at least one frame: a
    zero-length first axis means no frames in this train, as a count of 0 does
    in the files (and as in EXtra-data).

    Raises
    ------
    ValueError
        If no module has ``key``, a module number is out of range, the modules
        present differ in shape or dtype, or the dtype cannot hold ``fill_value``.

    Examples
    --------
    >>> from xfeldata.detectors import DETECTORS
    >>> a = np.ones((2, 4), np.uint16)
    >>> tm = plan_train_modules("SPB_DET_AGIPD1M-1", DETECTORS["AGIPD1M"],
    ...                         {0: ("m0", a), 2: ("m2", a[:0])}, "image.data", n_modules=3)
    >>> tm.present.tolist(), tm.stack(axis=1).shape
    ([True, False, False], (2, 3, 4))
    """
    numbers = train_module_numbers(kind, n_modules)
    position = {m: i for i, m in enumerate(numbers)}
    with_key = {m: (s, np.asarray(v)) for m, (s, v) in values.items() if v is not None}
    if not with_key:
        raise ValueError(f"no module of {device} has key {key!r} in this train")
    arrays: dict[int, np.ndarray] = {}
    for m, (source, array) in sorted(with_key.items()):
        if array.ndim and array.shape[0] == 0:
            continue  # no frames in this train: missing
        if m not in position:
            raise ValueError(f"module {m} ({source}) is out of range for {device} with "
                             f"{len(numbers)} modules numbered from {numbers[0]}")
        arrays[position[m]] = array
    ref = next(iter(arrays.values()), None)
    if ref is None:  # every module without frames: the shape of the empty ones
        ref = next(iter(with_key.values()))[1]
    shapes = {a.shape for a in arrays.values()}
    dtypes = {a.dtype for a in arrays.values()}
    if len(shapes) > 1 or len(dtypes) > 1:
        detail = ", ".join(f"{numbers[i]}: {a.shape} {a.dtype}" for i, a in arrays.items())
        what = "shapes" if len(shapes) > 1 else "dtypes"
        raise ValueError(f"modules of {device} have mismatched {what} for {key!r} ({detail})")
    fill = np.asarray(fill_value_for(ref.dtype, fill_value), ref.dtype)[()]
    return TrainModules(device, key, numbers, arrays, ref.shape, ref.dtype, fill)
