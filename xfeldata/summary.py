"""The text summary of a run (``run.info()`` and ``xfeldata info``).

Examples
--------
>>> print(format_info(run))      # doctest: +SKIP
# of trains:    20
...
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from .auxiliary import Auxiliary
from .detectors.kinds import detector_kind_of_device, group_detector_sources
from .run import RunSelection

#: Trains a second at European XFEL; used for the duration when timestamps are missing.
TRAIN_RATE = 10


@dataclass(frozen=True)
class DetectorSummary:
    """What a run holds of one multi-module detector."""

    device: str
    kind: str | None
    modules: dict[int, str]  # module number -> source
    trains_missing_modules: dict[int, list[int]]  # train ID -> missing module numbers
    frames_per_train: tuple[int, int] | None  # min, max over trains with data
    trains_without_data: list[int]  # selected train IDs in which no module has data
    trains_per_module: dict[int, int]  # module number -> trains in which it has data


def detector_main_group(run: RunSelection, source: str) -> str:
    """The index group that holds a detector module's pixel data."""
    groups = run.index_groups(source)
    for group in ("image", "data"):
        if group in groups:
            return group
    return groups[0]


def find_detectors(run: RunSelection) -> list[DetectorSummary]:
    """Group the run's detector module sources by detector."""
    summaries = []
    for device, modules in group_detector_sources(run.instrument_sources).items():
        kind = detector_kind_of_device(device)
        counts = {m: run.data_counts(src, detector_main_group(run, src)) for m, src in modules.items()}
        stacked = np.stack([counts[m] for m in sorted(modules)]) if counts else np.zeros((0, 0))
        missing: dict[int, list[int]] = {}
        without: list[int] = []
        if stacked.size:
            without = run.train_ids[(stacked == 0).all(axis=0)].tolist()
            any_data = (stacked > 0).any(axis=0)
            for t in np.flatnonzero(any_data & (stacked == 0).any(axis=0)):
                missing[int(run.train_ids[t])] = [m for i, m in enumerate(sorted(modules))
                                                  if stacked[i, t] == 0]
        frames = None
        if kind is not None and kind.row_per_frame and stacked.size and (stacked > 0).any():
            with_data = stacked[stacked > 0]
            frames = (int(with_data.min()), int(with_data.max()))
        per_module = {m: int(np.count_nonzero(counts[m])) for m in sorted(modules)}
        summaries.append(DetectorSummary(device, kind.name if kind else None, modules, missing, frames,
                                         without, per_module))
    return summaries


def _good_span(run: RunSelection) -> tuple[np.ndarray, datetime.timedelta | None]:
    """The non-suspect trains and the run's duration, sane even with bogus train IDs."""
    tids = run.train_ids
    good = tids[~np.isin(tids, run.suspect_train_ids)]
    if len(good) == 0:
        return good, None
    stamps = []
    for fi in run.file_indexes:
        if fi.timestamps is not None:
            keep = np.isin(fi.train_ids, good) & (fi.timestamps > 0)
            stamps.append(fi.timestamps[keep])
    stamps = np.concatenate(stamps) if stamps else np.zeros(0, np.uint64)
    if len(stamps):
        seconds = (int(stamps.max()) - int(stamps.min())) / 1e9 + 1 / TRAIN_RATE
    else:
        seconds = (int(good[-1]) - int(good[0]) + 1) / TRAIN_RATE
    return good, datetime.timedelta(seconds=seconds)


def _module_ranges(numbers: list[int]) -> str:
    """Compact module list: ``0-7, 9, 11-15``."""
    parts, start, prev = [], None, None
    for n in sorted(numbers) + [None]:
        if start is None:
            start = prev = n
        elif n is not None and n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    return ", ".join(parts)


def _key_lines(run: RunSelection, source: str) -> list[str]:
    lines = []
    for key in run.keys(source):
        info = run.key_info(source, key)
        shape = "x".join(map(str, info.entry_shape)) or "scalar"
        lines.append(f"      {key:<40} {shape:<16} {info.dtype}")
    return lines


def _with_data(run: RunSelection, source: str) -> str:
    group = detector_main_group(run, source) if run.index_groups(source) else ""
    n = int(np.count_nonzero(run.data_counts(source, group or None)))
    return f" ({n} of {len(run.train_ids)} trains with data)"


def format_info(run: RunSelection, details: bool = False, counts: bool = False,
                auxiliary: bool = False) -> str:
    """The summary of a run as text, like EXtra-data's ``info()`` and more.

    Parameters
    ----------
    run
        A run or selection.
    details
        List every key of every source with its entry shape and dtype.
    counts
        Say for every source (and detector module) in how many trains it has data.
    auxiliary
        Also list the auxiliary (``REDUCTION``, ``ERRATA``) sources, as EXtra-data's
        ``info()`` and ``lsxfel --auxiliary``.
    """
    good, duration = _good_span(run)
    lines = [
        f"# of trains:    {len(run.train_ids)}",
        f"Duration:       {duration if duration is not None else '-'}",
        f"First train ID: {good[0] if len(good) else '-'}",
        f"Last train ID:  {good[-1] if len(good) else '-'}",
    ]
    suspect = run.suspect_train_ids
    if len(suspect):
        shown = ", ".join(map(str, suspect[:5].tolist())) + (" ..." if len(suspect) > 5 else "")
        lines.append(f"Suspect trains: {len(suspect)} (kept; inc_suspect_trains=False drops them): {shown}")
    meta = run.metadata
    if "proposalNumber" in meta or "runNumber" in meta:
        lines.append(f"Proposal/run:   p{meta.get('proposalNumber', '?')} r{meta.get('runNumber', '?')}")
    lines.append(f"Format version: {meta.get('dataFormatVersion', '?')}")
    lines.append("")

    detectors = find_detectors(run)
    det_sources = {s for d in detectors for s in d.modules.values()}
    for det in detectors:
        lines.append(f"{det.device}: {det.kind or 'detector'} with {_plural(len(det.modules), 'module')} "
                     f"({_module_ranges(list(det.modules))})")
        if det.frames_per_train:
            lo, hi = det.frames_per_train
            lines.append(f"  frames per train: {lo}" + (f" to {hi}" if hi != lo else ""))
        if det.trains_missing_modules:
            items = list(det.trains_missing_modules.items())
            shown = "; ".join(f"{t} (modules {_module_ranges(m)})" for t, m in items[:4])
            lines.append(f"  {len(items)} train(s) with modules missing: {shown}"
                         + (" ..." if len(items) > 4 else ""))
        if det.trains_without_data:
            shown = ", ".join(map(str, det.trains_without_data[:5]))
            more = len(det.trains_without_data) - 5
            lines.append(f"  {len(det.trains_without_data)} train(s) with no module's data: {shown}"
                         + (f" and {more} more" if more > 0 else ""))
        if counts:
            lines.append("  trains with data per module: " + ", ".join(
                f"{m}: {n}" for m, n in det.trains_per_module.items()))
        if details:
            first = next(iter(sorted(det.modules.items())))[1]
            lines.append(f"    keys of each module ({first}):")
            lines += _key_lines(run, first)
        lines.append("")

    other = [s for s in run.instrument_sources if s not in det_sources]
    lines.append(f"{len(other)} instrument sources (excluding detectors):")
    for source in other:
        lines.append(f"  - {source}" + (_with_data(run, source) if counts else ""))
        if details:
            lines += _key_lines(run, source)
    lines.append("")
    lines.append(f"{len(run.control_sources)} control sources:")
    for source in run.control_sources:
        lines.append(f"  - {source}" + (_with_data(run, source) if counts else ""))
        if details:
            lines += _key_lines(run, source)
    if auxiliary:
        lines += ["", format_auxiliary(Auxiliary(run), details=details, counts=counts)]
    problems = run.problems
    if problems:
        lines.append("")
        lines.append(f"{len(problems)} index problem(s); run `xfeldata validate` for the list")
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    """``1 module``, ``2 modules``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_auxiliary(aux: Auxiliary, details: bool = False, counts: bool = False) -> str:
    """The auxiliary sources as text, by section (``run.auxiliary.info()``).

    Parameters
    ----------
    aux
        A run's :class:`~xfeldata.auxiliary.Auxiliary`.
    details
        List every key with its entry shape and dtype.
    counts
        Say for every source in how many trains it has data.

    Examples
    --------
    >>> print(format_auxiliary(run.auxiliary))      # doctest: +SKIP
    2 reduction sources:
      - AGIPD00@SPB_IRU_AGIPD1M1/REDU/LITFRM:daqFilter
    ...
    """
    lines: list[str] = []
    for label, names in (("reduction", aux.reduction_sources), ("errata", aux.errata_sources)):
        lines.append(f"{_plural(len(names), f'{label} source')}:")
        for name in names:
            lines.append(f"  - {name}" + (_with_data(aux.run, name) if counts else ""))
            if details:
                lines += _key_lines(aux.run, name)
    return "\n".join(lines)
