"""Multi-module detectors (AGIPD, LPD, DSSC, JUNGFRAU) as one stacked, labelled Dataset.

Modules are stacked on a ``module`` dimension over the union of their trains
(or the intersection) and the union of their pulse IDs.  Cells a module does
not have (missing trains, fewer frames) hold the fill value, and ``present``
``(trainId, pulseId, module)`` says which frames were recorded.

Examples
--------
>>> ds = detector_dataset(run, "SPB_DET_AGIPD1M-1")      # doctest: +SKIP
>>> ds["image.data"].dims                                # doctest: +SKIP
('trainId', 'pulseId', 'module', 'gain', 'slow_scan', 'fast_scan')
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from xarray.backends import BackendArray
from xarray.core import indexing

from .. import schema
from ..arrays import BlockGrid, BlockRead, grid_array, padded_blocks, read_rows
from ..errors import PropertyNameError
from ..run import RunSelection, TrainMap, positions_within
from .kinds import DetectorKind, detector_kind_of_device, generic_kind, group_detector_sources
from .plan import kept_trains, plan_frames

#: Size a dask chunk aims at; a chunk holds every module of a block of whole
#: trains.  A selection that falls in one chunk is read straight into one array
#: (dask folds it into the read task), and a whole-run reduction has several
#: chunks in flight per core; a train of 352 AGIPD frames (1.4 GiB of 16 modules)
#: is one chunk.
CHUNK_BYTES = 512 * 2**20


def detector_sources(run: RunSelection) -> dict[str, dict[int, str]]:
    """Detector module sources of the selection: ``{device: {module number: source}}``.

    >>> detector_sources(run)        # doctest: +SKIP
    {'SPB_DET_AGIPD1M-1': {0: 'SPB_DET_AGIPD1M-1/DET/0CH0:xtdf', ...}}
    """
    return group_detector_sources(run.instrument_sources)


def choose_detector(found: dict[str, dict[int, str]], name: str | None,
                    where: str = "this data") -> tuple[str, dict[int, str]]:
    """Pick one detector from ``{device: {module: source}}`` by name, glob or part of a name.

    ``name=None`` picks the only one.

    Raises
    ------
    KeyError
        No detector, or none matching (the message names those present).
    ValueError
        Several detectors and no name.
    """
    if not found:
        raise KeyError(f"no multi-module detector in {where}")
    if name is None:
        if len(found) > 1:
            raise ValueError(f"several detectors in {where}, pick one by name: {', '.join(found)}")
        return next(iter(found.items()))
    if name in found:
        return name, found[name]
    matches = [d for d in found if fnmatch.fnmatchcase(d, name) or name.upper() in d.upper()]
    if len(matches) == 1:
        return matches[0], found[matches[0]]
    hint = f"several match: {', '.join(matches)}" if matches else f"detectors here: {', '.join(found)}"
    raise KeyError(f"detector {name!r} is not in {where} ({hint})")


def stacked_modules(device: str, kind: DetectorKind | None, sources: dict[int, str],
                    modules: Sequence[int] | None, where: str = "this data"
                    ) -> tuple[list[int], dict[int, str]]:
    """The module numbers to stack and the sources of those present.

    The modules found (those with a source in the selection) by default, as
    EXtra-data's components stack them, or the ``modules`` asked for (modules
    of the kind without a source are filled, with ``present`` False).

    Raises
    ------
    KeyError
        For module numbers the detector does not have, or none present.
    """
    all_modules = sorted(sources)
    if modules is not None:
        known = set(kind.modules) if kind else set()
        unknown = sorted(set(modules) - known - set(sources))
        if unknown:
            raise KeyError(f"modules {unknown} are not modules of {device} ({kind.name if kind else ''})")
        all_modules = sorted(set(modules))
    present_sources = {m: s for m, s in sources.items() if m in all_modules}
    if not present_sources:
        raise KeyError(f"none of modules {all_modules} of {device} is in {where}")
    return all_modules, present_sources


def detector_kind(device: str, modules: Sequence[int]) -> DetectorKind | None:
    """The kind of a detector from its device name (see :func:`~.kinds.detector_kind_of_device`)."""
    return detector_kind_of_device(device)


@dataclass
class _ModuleRows:
    source: str
    counts: np.ndarray        # rows per train on the common axis
    pulse_ids: np.ndarray     # per row
    positions: np.ndarray     # per row: position within its train


def _read_pulse_ids(run: RunSelection, sources: dict[int, str], group: str
                    ) -> dict[int, tuple[np.ndarray, TrainMap]]:
    """Every module's pulse IDs (flat rows) and the trains they belong to."""
    return {m: read_rows(run.select(s), s, f"{group}.pulseId") for m, s in sources.items()}


def _module_rows(run: RunSelection, source: str, group: str, train_ids: np.ndarray,
                 pulse_rows: tuple[np.ndarray, TrainMap] | None) -> _ModuleRows:
    found = run.rows(source, group).lookup(train_ids)
    pos = np.searchsorted(train_ids, found.train_ids)
    counts = np.zeros(len(train_ids), np.int64)
    counts[pos] = found.count.astype(np.int64)
    positions = positions_within(counts)
    if pulse_rows is not None:
        pids, pid_found = pulse_rows
        pids = pids.reshape(pids.shape[0], int(np.prod(pids.shape[1:])))[:, 0] if pids.ndim > 1 else pids
        # rows of trains outside the common axis come out of the flat read: drop them
        keep_rows = np.repeat(np.isin(pid_found.train_ids, train_ids), pid_found.count.astype(np.int64))
        pulse_ids = pids[keep_rows].astype(np.int64)
    else:
        pulse_ids = positions.copy()
    return _ModuleRows(source, counts, pulse_ids, positions)


def detector_dataset(
    run: RunSelection, name: str | None = None, *, modules: Sequence[int] | None = None,
    fill_value: Any = None, require_all_modules: bool = False, pulses: Any = None,
    keys: Sequence[str] | None = None, target_bytes: int = CHUNK_BYTES,
    dask: bool = True, parallel_gain: bool | None = None,
) -> xr.Dataset:
    """A multi-module detector as one lazy Dataset.

    Parameters
    ----------
    run
        A run or selection.
    name
        The detector's device name (``"SPB_DET_AGIPD1M-1"``), a glob, or a part of
        it (``"AGIPD"``); None picks the only detector.
    modules
        Module numbers to stack (default: the modules found in the selection);
        modules of the kind that are not found are filled, ``present`` False.
    fill_value
        Value of missing cells (default NaN for floats, 0 for integers).
    require_all_modules
        Keep only trains where every stacked module that has any data in the
        selection has data (a module absent from the whole selection does not count).
    pulses
        Pulses to read: pulse IDs (list, array or inclusive slice), ``by_id[...]``
        or ``by_index[...]`` (positions within each train; ``by_index[-1]`` is
        the last frame of every train). Applied before reading. A pulse ID or
        position asked for by value that no module has raises ``ValueError``.
    keys
        Pixel keys to include (default: data, mask and gain where present).
    target_bytes
        Size a dask chunk aims at (default :data:`CHUNK_BYTES`, 512 MiB); a
        chunk holds whole trains of every module (its reads may span files).
    dask
        True (default): pixel variables are dask arrays, for reductions over
        any amount of data.  False: they are lazily indexed arrays (as
        ``xarray.open_dataset`` gives without ``chunks``): selecting stays lazy
        and ``.values`` / ``.load()`` read the selection straight into one array,
        the fastest way to get a selection that fits in memory (``cellId`` too).
    parallel_gain
        LPD's parallel-gain mode, where each train stores every pulse 3 times
        in sequence (high, medium, low gain) and a ``gain`` dimension of 3
        holds the stages.  None (default): recognised where the three parts of
        every train repeat the same pulse IDs.  True: each train's frames are
        3 equal parts, gain stages 0, 1 and 2, labelled by the pulse and cell
        IDs of the first part (real LPD files record junk IDs in the other
        two, as EXtra-data's ``LPD1M(..., parallel_gain=True)`` reads them).
        False: never split.  With gain stages, ``pulses`` selects pulses (by
        ID, or ``by_index`` by position within a stage) and keeps all three
        stages of each.

    Returns
    -------
    xarray.Dataset
        ``image.data`` (and ``image.mask``, ``image.gain``) with dims
        ``(trainId, pulseId, module, [gain,] slow_scan, fast_scan)`` (JUNGFRAU:
        ``cell`` instead of ``pulseId``), ``present (trainId, pulseId, module)``
        (True exactly where that frame was recorded; a module's presence in a
        train is ``present.any("pulseId")``), and
        ``cellId`` where recorded.  JUNGFRAU's ``data.adc``/``data.gain`` (and
        ``data.mask``) become ``image.data``/``image.gain`` (``image.mask``), as
        the attr ``renamed_keys`` says.  The attr ``frames_per_pulse`` is 3
        with LPD gain stages, else 1.

    Raises
    ------
    KeyError
        If the detector is not in the data (the message names those that are).
    ValueError
        If the modules' data differ in dtype or shape, ``pulses`` names pulse
        IDs or positions that no module has, a pulse ID repeats within a train
        (within a gain stage), ``parallel_gain=True`` is given for a detector
        other than LPD, or a train's frames are not a multiple of 3 with it
        (the message names the source and train ID).
    """
    device, sources = choose_detector(detector_sources(run), name)
    kind = detector_kind(device, list(sources)) or generic_kind(
        device, "image" in run.index_groups(next(iter(sources.values()))))
    xtdf, group, data_key = kind.row_per_frame, kind.index_group, kind.data_key
    all_modules, present_sources = stacked_modules(device, kind, sources, modules)

    # Variables and their consistency across modules
    first_source = next(iter(present_sources.values()))
    module_keys = run.select(first_source).keys(first_source)
    if keys is not None:
        unknown = [k for k in keys if k not in module_keys]
        if unknown:
            raise PropertyNameError(unknown[0], first_source, module_keys)
    candidates = keys or kind.pixel_keys
    var_keys = [k for k in candidates if k in module_keys]
    if not var_keys:
        raise PropertyNameError(data_key, first_source, module_keys)
    infos = {}
    for key in var_keys:
        per_module = {m: run.key_info(s, key) for m, s in present_sources.items()
                      if key in run.keys(s)}
        shapes = {(i.entry_shape, str(i.dtype)) for i in per_module.values()}
        if len(shapes) > 1:
            detail = ", ".join(f"module {m}: {i.entry_shape} {i.dtype}" for m, i in per_module.items())
            raise ValueError(f"{device} {key}: modules differ in shape or dtype ({detail})")
        infos[key] = next(iter(per_module.values()))

    # Common train axis
    counts = {m: run.data_counts(s, group) for m, s in present_sources.items()}
    train_ids = run.train_ids[kept_trains(np.stack([counts[m] > 0 for m in present_sources]),
                                          require_all_modules)]

    pulse_rows = _read_pulse_ids(run, present_sources, group) if xtdf else {}
    rows = {m: _module_rows(run, s, group, train_ids, pulse_rows.get(m))
            for m, s in present_sources.items()}
    first_info = infos[data_key] if data_key in infos else next(iter(infos.values()))
    n_cells = kind.cells_in_row(first_info.entry_shape)
    plan = plan_frames(kind, all_modules, {m: r.counts for m, r in rows.items()},
                       {m: r.pulse_ids for m, r in rows.items()}, pulses, n_cells, present_sources,
                       parallel_gain, train_ids)
    selected, slots, stages = plan.selected, plan.slots, plan.stages
    n_slots = plan.n_slots

    frame_bytes = max(1, int(np.prod(first_info.entry_shape)) * first_info.dtype.itemsize)
    trains_per_block = max(1, int(target_bytes // max(1, frame_bytes * max(n_slots, 1)
                                                    * len(all_modules) * plan.n_stages)))

    def module_blocks(m: int, key: str, stage: int | None, fill: Any) -> list[BlockRead] | None:
        """One module's blocks of ``(train, slot, *entry)``, None if it lacks the key."""
        if m not in present_sources or key not in run.keys(present_sources[m]):
            return None
        row_sel = selected[m] if stage is None else selected[m] & (stages[m] == stage)
        blocks = padded_blocks(run, present_sources[m], key, train_ids, n_slots, slot_of_row=slots[m],
                               row_selected=row_sel, fill_value=fill, trains_per_block=trains_per_block,
                               target_bytes=target_bytes, at_files=False)
        return blocks

    def stacked(key: str) -> tuple[da.Array, tuple[str, ...]]:
        """The key of every module (and gain stage) in one array: each chunk holds
        every module of a block of trains; slicing the array later reads only the
        selected rows, straight into place."""
        info = infos[key]
        fill = schema.detector_fill_value(key, info.dtype, fill_value)
        entry = kind.stacked_entry(info.entry_shape)
        # (train, pulse, module, [stage,] *pixels): a frame per row, or
        # (train, cell, module, *pixels): a row per train holding every cell
        slots_here = n_slots if xtdf else kind.cells_in_row(info.entry_shape)
        per_part = {(j, g): module_blocks(m, key, g if stages else None, fill)
                    for j, m in enumerate(all_modules) for g in range(plan.n_stages)}
        arr = stack_module_blocks(per_part, slots_here, entry, kind.row_holds_cells, fill, info.dtype,
                                  f"{device} {key}", as_dask=dask)
        pixel = schema.detector_pixel_dims(entry)
        if stages:
            pixel = (schema.GAIN_DIM, *pixel)
        return arr, pixel

    variables, pixel_dims = {}, {}
    for key in infos:
        var = schema.DETECTOR_VARIABLES.get(key, key)
        variables[var], pixel_dims[var] = stacked(key)

    cell_ids = None
    cell_key = kind.cell_key
    if cell_key in module_keys:
        cell_ids = _cell_ids(run, present_sources, all_modules, cell_key, train_ids, n_slots, slots,
                             selected, xtdf, stages, dask)

    pulse_dim = kind.pulse_dim
    attrs = {
        "detector": device, "kind": kind.name,
        "fill_value": schema.fill_value_for(first_info.dtype, fill_value),
        "frames_per_pulse": plan.n_stages,
        **schema.renamed_keys(infos),
    }
    ds = schema.detector_dataset(
        variables, train_ids=train_ids, pulse_ids=plan.pulse_coord, modules=all_modules,
        present=plan.present, pixel_dims=pixel_dims, cell_ids=cell_ids, pulse_dim=pulse_dim, attrs=attrs,
    )
    if plan.cells_selected is not None and not plan.cells_selected.all():
        ds = ds.isel({pulse_dim: np.flatnonzero(plan.cells_selected)})
    return ds


def stack_module_blocks(per_part: dict[tuple[int, int], list[BlockRead] | None], n_slots: int,
                        entry: tuple[int, ...], row_holds_slots: bool, fill: Any, dtype: np.dtype,
                        what: str, as_dask: bool = True) -> Any:
    """One array ``(train, slot, module, [stage,] *entry)`` of every module's blocks.

    ``per_part[(j, g)]`` are the ``(train, slot, ...)`` blocks of module position
    ``j`` and gain stage ``g`` (None: the module is missing, its cells hold
    ``fill``); they are read as ``dtype`` (e.g. unsigned cell IDs into int64),
    and cells no row fills hold ``fill``.  A dataset row fills one ``entry`` of one slot, or with
    ``row_holds_slots`` all slots of a train (JUNGFRAU's memory cells).  Each
    dask chunk holds every module's block of a block of trains (a
    :class:`~xfeldata.arrays.GridChunk`): slicing the array later reads only the
    selected rows, straight into one array.  ``as_dask=False`` gives a lazily indexed
    :class:`~xfeldata.arrays.BlockGrid` instead (see ``detector_dataset(dask=False)``).
    """
    n_stages = 1 + max(g for _, g in per_part)
    n_modules = 1 + max(j for j, _ in per_part)
    lead = (n_slots, 1, 1) if n_stages > 1 else (n_slots, 1)
    entry_ndim = len(lead) + len(entry) if row_holds_slots else len(entry)
    template = next(b for b in per_part.values() if b is not None)
    train_chunks = tuple(b.shape[0] for b in template)
    blocks = {}
    for (j, g), parts in per_part.items():
        if parts is not None and tuple(b.shape[0] for b in parts) != train_chunks:
            raise RuntimeError(f"{what}: module position {j} is cut into other train blocks "
                               "than the others")  # a bug, not bad data
        for i, t in enumerate(train_chunks):
            shape = (t, *lead, *entry)
            part = None if parts is None else parts[i]
            block = BlockRead(shape, dtype, entry_ndim, fill, ()) if part is None else replace(
                part, shape=shape, entry_ndim=entry_ndim, dtype=dtype,
                fill_value=None if part.fill_value is None else fill)
            index = (i, 0, j, g)[: 1 + len(lead)]
            blocks[index + (0,) * len(entry)] = block
    chunks = (train_chunks, (n_slots,), (1,) * n_modules,
              *([(1,) * n_stages] if n_stages > 1 else []), *((d,) for d in entry))
    if not as_dask:
        return indexing.LazilyIndexedArray(_GridArray(BlockGrid(blocks, chunks, dtype)))
    # dask: a chunk per block of trains holding every module (and stage), read straight into place
    grid = BlockGrid(blocks, chunks, dtype)
    return grid_array("xfeldata-detector-" + tokenize(what, chunks, *blocks.values()), grid)


class _GridArray(BackendArray):
    """A :class:`~xfeldata.arrays.BlockGrid` as an xarray backend array (outer indexing)."""

    def __init__(self, grid: BlockGrid):
        self.grid, self.shape, self.dtype = grid, grid.shape, grid.dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        if isinstance(key, indexing.BasicIndexer | indexing.OuterIndexer):
            return self.grid[key.tuple]  # any ints, slices and index arrays, as numpy's outer indexing
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self.grid.__getitem__)


def _cell_ids(run: RunSelection, sources: dict[int, str], modules: list[int], key: str,
              train_ids: np.ndarray, n_slots: int, slots: dict[int, np.ndarray],
              selected: dict[int, np.ndarray], xtdf: bool, stages: Any,
              as_dask: bool) -> Any:
    """Memory cell IDs ``(trainId, pulse, module)`` as int64, -1 where missing.

    The IDs are unsigned on disk; the blocks read them into int64 cells that
    start at -1, so cells without a frame keep -1.
    """
    first = next(iter(sources.values()))
    info = run.select(first).key_info(first, key)  # cell IDs are read even when keys= leaves them out
    width = n_slots if xtdf else info.entry_shape[0]
    per_part: dict[tuple[int, int], list[BlockRead] | None] = {}
    for j, m in enumerate(modules):
        if m not in sources:
            per_part[j, 0] = None
            continue
        row_sel = selected[m] if stages is None else selected[m] & (stages[m] == 0)
        per_part[j, 0] = padded_blocks(
            run.select(sources[m]), sources[m], key, train_ids, n_slots,
            slot_of_row=slots[m] if xtdf else None, row_selected=row_sel if xtdf else None,
            fill_value=0, trains_per_block=max(1, len(train_ids)), at_files=False)
    return stack_module_blocks(per_part, width, (), not xtdf, -1, np.dtype(np.int64),
                               f"{key} of {modules}", as_dask=as_dask)
