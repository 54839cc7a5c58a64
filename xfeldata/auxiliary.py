"""Auxiliary sources of a run (``REDUCTION``, ``ERRATA``), as EXtra-data's ``run.auxiliary``.

Newer files list some sources apart from the data sources, in
``METADATA/auxiliarySources/<section>``: ``REDUCTION`` sources say how the DAQ
reduced data (which frames a pulse selection kept, a lit-frame finder's
pattern), ``ERRATA`` sources record what went wrong while writing (trains
outside the buffer range).  They are not in ``run.sources``; ``run.auxiliary``
reads them with the same calls as a run.

Names are EXtra-data's: a source that one aggregator holds and whose name ends
with a data source of that aggregator's files keeps its name
(``PULSE_REDUCTION/SPB_DET_AGIPD1M-1/DET/3CH0:xtdf``); any other is
``<aggregator>@<source>`` (``DA01@TRAINS_OUTSIDE_BUFFER_RANGE``,
``AGIPD11@SPB_IRU_AGIPD1M1/REDU/LITFRM:daqFilter``), as the same source in
several aggregators holds different data.

Examples
--------
>>> aux = run.auxiliary                                           # doctest: +SKIP
>>> aux.errata_sources                                            # doctest: +SKIP
['DA01@TRAINS_OUTSIDE_BUFFER_RANGE']
>>> aux["DA01@TRAINS_OUTSIDE_BUFFER_RANGE", "event.originalTrainIds"]   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from .errors import SourceNameError
from .files.index import FileIndex
from .run import RunFiles, RunSelection


@dataclass(frozen=True)
class AuxiliarySource:
    """One auxiliary source of a run, as ``run.auxiliary`` names it.

    Attributes
    ----------
    name
        The name in ``run.auxiliary`` (the source, or ``<aggregator>@<source>``).
    source
        The source's name in the files.
    section
        ``"REDUCTION"`` or ``"ERRATA"``.
    aggregator
        The aggregator of the files that hold it (``DA01``, ``AGIPD11``), or None.
    files
        Their paths.
    """

    name: str
    source: str
    section: str
    aggregator: str | None
    files: tuple[str, ...]


def auxiliary_catalogue(files: tuple[FileIndex, ...]) -> dict[str, AuxiliarySource]:
    """The auxiliary sources of a run's files by name (see the module's docstring for the names).

    >>> auxiliary_catalogue(())
    {}
    """
    by_source: dict[tuple[str, str], dict[str | None, list[FileIndex]]] = {}
    for fi in files:
        for si in fi.auxiliary:
            by_source.setdefault((si.name, si.category), {}).setdefault(fi.aggregator, []).append(fi)
    found: dict[str, AuxiliarySource] = {}
    for (source, section), by_aggregator in by_source.items():
        plain = len(by_aggregator) == 1 and any(
            source.endswith(real) for fi in next(iter(by_aggregator.values()))
            for real in (*fi.sources, *fi.aliases))
        for aggregator, holders in by_aggregator.items():
            name = source if plain else f"{aggregator}@{source}"
            found[name] = AuxiliarySource(name, source, section, aggregator, tuple(fi.path for fi in holders))
    return dict(sorted(found.items()))


def auxiliary_run_files(files: RunFiles) -> tuple[RunFiles, dict[str, AuxiliarySource]]:
    """The auxiliary sources of a run as a run of their own, its sources named as in the catalogue.

    Made once per :class:`~xfeldata.run.RunFiles` (kept on it).
    """
    made = files.__dict__.get("_auxiliary")
    if made is None:
        catalogue = auxiliary_catalogue(files.files)
        derived = []
        for fi in files.files:
            sources = {}
            damaged = []
            for aux in catalogue.values():
                if fi.path not in aux.files:
                    continue
                si = next(s for s in fi.auxiliary if s.name == aux.source and s.category == aux.section)
                sources[aux.name] = replace(si, name=aux.name)
                damaged += [replace(d, source=aux.name) for d in fi.damaged
                            if d.source == f"{aux.section}/{aux.source}"]
            if sources:
                derived.append(replace(fi, sources=sources, aliases={}, problems=(), damaged=tuple(damaged),
                                       auxiliary=()))
        with warnings.catch_warnings():  # damaged index entries were reported when the run opened
            warnings.simplefilter("ignore")
            aux_files = RunFiles(derived, files.inc_suspect_trains)
        for message in aux_files.conflicts:
            warnings.warn(f"auxiliary source {message}", stacklevel=3)
        made = files.__dict__["_auxiliary"] = (aux_files, catalogue)
    return made


class Auxiliary:
    """``run.auxiliary``: a run's auxiliary sources, read with the calls of a run.

    ``aux[name]`` is a source's Dataset and ``aux[name, key]`` one key's lazy
    DataArray, over the trains of the run's selection (as ``run[source]`` and
    ``run[source, key]``); :attr:`run` is a :class:`~xfeldata.Run` of the
    auxiliary sources for anything else (``trains()``, ``dataset()``, ``sel``).

    Examples
    --------
    >>> run.auxiliary.reduction_sources[:1]                      # doctest: +SKIP
    ['AGIPD00@SPB_IRU_AGIPD1M1/REDU/LITFRM:daqFilter']
    >>> run.auxiliary.keys("DA01@TRAINS_OUTSIDE_BUFFER_RANGE")   # doctest: +SKIP
    ['event.deviceIds', 'event.originalTrainIds', ...]
    """

    def __init__(self, run: RunSelection):
        files, self._catalogue = auxiliary_run_files(run._files)
        self.run = type(run)(files, run.train_ids)
        """The auxiliary sources as a run (over the parent selection's trains)."""

    @property
    def all_sources(self) -> list[str]:
        """Every auxiliary source's name, sorted."""
        return list(self._catalogue)

    sources = all_sources

    def _of_section(self, section: str) -> list[str]:
        return [name for name, aux in self._catalogue.items() if aux.section == section]

    @property
    def reduction_sources(self) -> list[str]:
        """The ``REDUCTION`` sources' names, sorted."""
        return self._of_section("REDUCTION")

    @property
    def errata_sources(self) -> list[str]:
        """The ``ERRATA`` sources' names, sorted."""
        return self._of_section("ERRATA")

    def source_info(self, name: str) -> AuxiliarySource:
        """Where an auxiliary source comes from (section, source name in the files, aggregator, files).

        Raises
        ------
        SourceNameError
            (a ``KeyError``) for a name not here; a source that several
            aggregators hold is named with its ``<aggregator>@`` prefixes.
        """
        if name in self._catalogue:
            return self._catalogue[name]
        prefixed = [n for n, aux in self._catalogue.items() if aux.source == name]
        error = SourceNameError(name, prefixed or self._catalogue)
        if prefixed:
            shown = ", ".join(prefixed[:3]) + (f" and {len(prefixed) - 3} more" if len(prefixed) > 3 else "")
            error.args = (f"auxiliary source {name} is in {len(prefixed)} aggregators' files, "
                          f"with different data: name one of them: {shown}",)
        else:
            error.args = (str(error).replace("is not in this data", "is not an auxiliary source of this data", 1),)
        raise error

    def keys(self, name: str) -> list[str]:
        """The keys of an auxiliary source, sorted."""
        self.source_info(name)
        return self.run.keys(name)

    def data_counts(self, name: str, group: str | None = None, labelled: bool = False) -> Any:
        """Rows per train of an auxiliary source, as :meth:`xfeldata.Run.data_counts`."""
        self.source_info(name)
        return self.run.data_counts(name, group, labelled=labelled)

    def __getitem__(self, item: str | tuple[str, str]) -> Any:
        if isinstance(item, tuple) and len(item) == 2 and all(isinstance(i, str) for i in item):
            self.source_info(item[0])
            return self.run[item]
        if isinstance(item, str):
            self.source_info(item)
            return self.run[item]
        raise TypeError(f"use run.auxiliary[source] or run.auxiliary[source, key], not {item!r}")

    def __contains__(self, item: object) -> bool:
        if isinstance(item, tuple) and len(item) == 2:
            return item[0] in self._catalogue and item[1] in self.run.keys(item[0])
        return isinstance(item, str) and item in self._catalogue

    def __iter__(self) -> Iterator[str]:
        return iter(self._catalogue)

    def __len__(self) -> int:
        return len(self._catalogue)

    def info(self, details: bool = False, file=None) -> None:
        """Print the auxiliary sources by section (with ``details``, their keys)."""
        import sys

        from .summary import format_auxiliary

        print(format_auxiliary(self, details=details), file=file or sys.stdout)

    def __repr__(self) -> str:
        return (f"<xfeldata.Auxiliary: {len(self.reduction_sources)} reduction and "
                f"{len(self.errata_sources)} errata sources, {len(self.run.train_ids)} trains>")

