"""Opening runs and files: :func:`open_run`, :func:`open_file` and the :class:`Run` they return.

:class:`Run` is the user-facing object: the selection layer of
:class:`xfeldata.run.RunSelection` plus the labelled views built on it.

Examples
--------
>>> import xfeldata as xd
>>> run = xd.open_run("r0001")                      # doctest: +SKIP
>>> run.info()                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import trains, views
from .aliases import DEFAULT_ALIASES_FILE, Alias, load_aliases, normalise_alias
from .auxiliary import Auxiliary
from .detectors.stacking import detector_dataset
from .files.cache import cached_file_index
from .files.collect import index_files, paused_gc
from .files.index import FileIndex
from .files.listing import list_run_files, proposal_run_dir
from .run import RunFiles, RunSelection
from .snapshot import run_files
from .summary import format_info

PathLike = str | os.PathLike


class Run(RunSelection):
    """A run (or any set of run files) with its labelled views.

    Obtain one with :func:`open_run` or :func:`open_file`. Selection methods
    (:meth:`sel`, :meth:`isel`, :meth:`select`, :meth:`deselect`,
    :meth:`split_trains`, :meth:`union`) return new :class:`Run` objects sharing
    the same file indexes.

    Examples
    --------
    >>> run = open_run("r0001").select("*XGM*")           # doctest: +SKIP
    >>> run.sel(trainId=slice(10000, 10009)).train_ids    # doctest: +SKIP
    """

    #: Aliases of this run, ``{normalised alias: source or (source, key)}`` (see :mod:`xfeldata.aliases`).
    _aliases: dict[str, Alias] = {}

    def _new(self, train_ids: Any = None, selection: Any = None) -> Run:
        new = super()._new(train_ids, selection)
        new._aliases = self._aliases
        return new

    # ----- aliases (as EXtra-data's) -------------------------------------------
    def with_aliases(self, *definitions: Mapping[str, Alias] | PathLike) -> Run:
        """This run with aliases for sources and keys, usable through :attr:`alias`.

        Parameters
        ----------
        definitions
            Dicts ``{alias: source}`` / ``{alias: (source, key)}``, or EXtra-data
            alias files (YAML, JSON or TOML: ``alias: source``,
            ``alias: [source, key]``, ``source: {alias: key}``).

        Examples
        --------
        >>> run = run.with_aliases({"sa1-xgm": "SA1_XTD2_XGM/DOOCS/MAIN"})   # doctest: +SKIP
        >>> run.alias["sa1-xgm", "beamPosition.ixPos"]                        # doctest: +SKIP
        """
        new = self._new()
        new._aliases = load_aliases(*definitions, existing=self._aliases)
        return new

    def only_aliases(self, *definitions: Mapping[str, Alias] | PathLike, strict: bool = False,
                     require_all: bool = False) -> Run:
        """Add aliases and select only the aliased sources and keys (as EXtra-data).

        Aliases naming sources or keys not in the run are ignored unless ``strict``
        (then :meth:`select` raises); ``require_all`` keeps only trains where every
        selected source has data.
        """
        run = self.with_aliases(*definitions)
        sources = {t for t in run._aliases.values() if isinstance(t, str)}
        selection = [(s, "*") for s in sorted(sources)] + sorted(
            t for t in run._aliases.values() if isinstance(t, tuple) and t[0] not in sources)
        if not strict:
            selection = [(s, k) for s, k in selection
                         if s in run and (k == "*" or k.removesuffix(".value") in run.keys(s))]
        return run.select(selection, require_all=require_all)

    def drop_aliases(self) -> Run:
        """This run without aliases."""
        new = self._new()
        new._aliases = {}
        return new

    @property
    def alias(self) -> AliasView:
        """Sources and keys by alias: ``run.alias["name"]`` is ``run[source]`` or ``run[source, key]``.

        ``run.alias["source-alias", key]`` gives a key of an aliased source.
        """
        return AliasView(self)

    @property
    def auxiliary(self) -> Auxiliary:
        """The auxiliary (``REDUCTION``, ``ERRATA``) sources, apart from :attr:`sources`, as EXtra-data's.

        ``run.auxiliary[name]`` and ``run.auxiliary[name, key]`` read them as
        ``run[source]`` and ``run[source, key]`` do, over this selection's
        trains; see :mod:`xfeldata.auxiliary` for their names.

        Examples
        --------
        >>> run.auxiliary.errata_sources                                    # doctest: +SKIP
        ['DA01@TRAINS_OUTSIDE_BUFFER_RANGE']
        """
        return Auxiliary(self)

    def __getitem__(self, item: tuple[str, str] | str) -> xr.DataArray | xr.Dataset:
        """``run[source, key]``: one key as a lazy DataArray; ``run[source]``: a source's Dataset.

        Examples
        --------
        >>> run["SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.ixPos"].to_series()  # doctest: +SKIP
        """
        if isinstance(item, tuple) and len(item) == 2:
            source, key = item
            return views.key_array(self, source, key)
        if isinstance(item, str):
            return views.source_dataset(self, item)
        raise TypeError(f"use run[source, key] or run[source] (names as str), not run[{item!r}]; "
                        "select trains with run.sel(trainId=...) or run.isel(trainId=...)")

    def dataset(self, *select_args: Any, **select_kwargs: Any) -> xr.Dataset:
        """The selected keys as one Dataset, variables named ``"source/key"``, merged on labels.

        Arguments, if any, are passed to :meth:`select` first.
        """
        run = self.select(*select_args, **select_kwargs) if select_args else self
        return views.run_dataset(run)

    def to_datatree(self) -> xr.DataTree:
        """One DataTree node per selected source (source names give the paths)."""
        return views.to_datatree(self)

    def write(self, path: PathLike, *, pulses: Any = None, trains_per_file: int | None = None,
              overwrite: bool = False, progress: bool | None = None,
              parallel_gain: bool | None = None) -> Path:
        """Write the selection in the facility's format (1.3), which EXtra-data and
        xfeldata open with the same trains and values: one file, or with a path
        ending in ``/`` (or an existing directory) a run directory split per
        aggregator and sequence.

        ``pulses`` keeps only some detector frames (as ``detector(pulses=...)``, or a
        boolean ``(trainId, pulseId)`` DataArray; ``parallel_gain`` as for
        :meth:`detector`).  See :func:`xfeldata.export.facility.write_run`.

        >>> run.select("SA1_XTD2_XGM/*").isel(trainId=slice(0, 10)).write("xgm.h5")  # doctest: +SKIP
        >>> run.write("r0001-hits/", pulses=hits)                                    # doctest: +SKIP
        """
        from .export.facility import TRAINS_PER_FILE, write_run

        return write_run(self, path, pulses=pulses, trains_per_file=trains_per_file or TRAINS_PER_FILE,
                         overwrite=overwrite, progress=progress, parallel_gain=parallel_gain)

    def write_virtual(self, path: PathLike, *, pulses: Any = None, overwrite: bool = False,
                      progress: bool | None = None, parallel_gain: bool | None = None) -> Path:
        """Write one file of HDF5 virtual datasets over the run's files (no data copied),
        with real INDEX, METADATA and RUN sections; h5py and EXtra-data read it.

        See :func:`xfeldata.export.virtual.write_virtual`.

        >>> run.write_virtual("r0001-virtual.h5")     # doctest: +SKIP
        """
        from .export.virtual import write_virtual

        return write_virtual(self, path, pulses=pulses, overwrite=overwrite, progress=progress,
                             parallel_gain=parallel_gain)

    def detector(self, name: str | None = None, **options: Any) -> xr.Dataset:
        """A multi-module detector as one stacked, lazy Dataset.

        See :func:`xfeldata.detectors.stacking.detector_dataset` for the options
        and what they mean.

        Parameters
        ----------
        name
            The detector's device name, a glob or a part of it; None picks the only one.
        **options
            ``modules``, ``fill_value``, ``require_all_modules``, ``pulses``,
            ``keys``, ``target_bytes``, ``dask`` and ``parallel_gain``: LPD's
            parallel-gain mode, 3 gain stages of each pulse stored in sequence
            in each train (a ``gain`` dimension of 3).  None (default)
            recognises it where the three parts of each train repeat the same
            pulse IDs; True splits every train's frames into 3 equal parts,
            labelled by the first part's pulse and cell IDs (real LPD files
            record junk IDs in the other two, as EXtra-data's
            ``LPD1M(run, parallel_gain=True)`` reads them); False never splits.

        Returns
        -------
        xarray.Dataset
            ``image.data`` (and ``image.mask``, ``image.gain``) with dims
            ``(trainId, pulseId, module, [gain,] slow_scan, fast_scan)``,
            ``present (trainId, pulseId, module)`` and ``cellId``.

        Raises
        ------
        KeyError
            If the detector is not in the run.
        ValueError
            For inconsistent modules, pulses that no module has, a pulse ID
            repeated within a train (for LPD the message suggests
            ``parallel_gain=True``), ``parallel_gain=True`` for a detector
            other than LPD or with a train whose frames are not a multiple of 3.

        Examples
        --------
        >>> ds = run.detector()                                   # doctest: +SKIP
        >>> ds["image.data"].sel(trainId=10000, module=3)         # doctest: +SKIP
        >>> lpd = run.detector("FXE_DET_LPD1M-1", parallel_gain=True)   # doctest: +SKIP
        >>> lpd["image.data"].isel(gain=0)                        # doctest: +SKIP
        """
        return detector_dataset(self, name, **options)

    def control_frame(self, sources: str = "*", keys: str = "*",
                      timestamps: bool = False) -> pd.DataFrame:
        """Scalar control values as a DataFrame indexed by ``trainId``, columns ``"source/key"``.

        See :func:`xfeldata.views.control_frame`.
        """
        return views.control_frame(self, sources, keys, timestamps)

    def trains(self, devices: Any = None, train_range: Any = None, *, require_all: bool = False,
               keep_dims: bool = False, bridge_names: bool = False) -> trains.TrainIterator:
        """Iterate over trains as ``(train_id, {source: {key: value, "metadata": ...}})``.

        The classic per-train API, with EXtra-data's names and arguments (see
        :func:`xfeldata.trains.iter_trains`); ``len(run.trains())`` is the number of trains.
        """
        return trains.iter_trains(self, devices=devices, train_range=train_range, require_all=require_all,
                                  keep_dims=keep_dims, bridge_names=bridge_names)

    def train_from_id(self, train_id: int, devices: Any = None,
                      keep_dims: bool = False) -> tuple[int, dict]:
        """One train's data dicts, by train ID."""
        return trains.train_from_id(self, train_id, devices=devices, keep_dims=keep_dims)

    def train_from_index(self, index: int, devices: Any = None,
                         keep_dims: bool = False) -> tuple[int, dict]:
        """One train's data dicts, by position in the selection."""
        return trains.train_from_index(self, index, devices=devices, keep_dims=keep_dims)

    def train_timestamps(self, labelled: bool = False, *,
                         euxfel_local_time: bool = False) -> np.ndarray | pd.Series:
        """When each selected train happened, from the files' ``INDEX/timestamp`` (as EXtra-data).

        Parameters
        ----------
        labelled
            False (default): a ``datetime64[ns]`` array (UTC, no time zone attached).
            True: a pandas Series of time-zone aware timestamps indexed by ``trainId``.
        euxfel_local_time
            With ``labelled=True``, in the facility's time zone (Europe/Berlin) instead of UTC.

        Trains without a timestamp (files before format 1.0) are ``NaT``.

        Examples
        --------
        >>> run.train_timestamps(labelled=True).diff().median()   # doctest: +SKIP
        Timedelta('0 days 00:00:00.100000')
        """
        ns = self.train_timestamps_ns()
        stamps = ns.astype("datetime64[ns]")
        stamps[ns == 0] = np.datetime64("NaT")
        if not labelled:
            if euxfel_local_time:
                raise ValueError("euxfel_local_time needs labelled=True")
            return stamps
        series = pd.Series(stamps, index=pd.Index(self.train_ids, name="trainId")).dt.tz_localize("UTC")
        return series.dt.tz_convert("Europe/Berlin") if euxfel_local_time else series

    def data_counts(self, source: str, group: str | None = None,
                    labelled: bool = False) -> np.ndarray | pd.Series:
        """Rows of data per selected train (0 where the source has none).

        ``group`` is an index group of the source (``"image"``) or one of its
        keys (``"image.data"``: that key's group, as EXtra-data's
        ``run[source, key].data_counts()``); it defaults to the source's first
        index group (``""`` for control data; for a detector module
        ``"detector"``, one row a train, not its frames).  ``labelled=True``
        gives a pandas Series indexed by ``trainId``.

        Examples
        --------
        >>> run.data_counts("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.data", labelled=True)  # doctest: +SKIP
        """
        counts = super().data_counts(source, group)
        if not labelled:
            return counts
        return pd.Series(counts, index=pd.Index(self.train_ids, name="trainId"),
                         name=self.resolve_source(source))

    def plot_missing_data(self, min_saved_pct: float = 95, ax: Any = None) -> Any:
        """Plot which sources and detector modules miss which trains (needs matplotlib: ``xfeldata[plot]``).

        See :func:`xfeldata.plotting.plot_missing_data`; the table behind it is
        :func:`xfeldata.plotting.missing_data`.
        """
        from .plotting import plot_missing_data

        return plot_missing_data(self, min_saved_pct, ax)

    def info(self, details: bool = False, file=None, counts: bool = False,
             auxiliary: bool = False) -> None:
        """Print a summary: trains, duration, detectors and their modules, sources.

        Parameters
        ----------
        details
            Also list every key of every source with its shape and dtype.
        file
            Where to print (default: standard output).
        counts
            Also say, for every source and detector module, in how many trains it has data.
        auxiliary
            Also list the auxiliary (``REDUCTION``, ``ERRATA``) sources (:attr:`auxiliary`).
        """
        print(format_info(self, details=details, counts=counts, auxiliary=auxiliary), file=file or sys.stdout)


class AliasView:
    """``run.alias[...]``: sources and keys by their aliases (see :meth:`Run.with_aliases`).

    Examples
    --------
    >>> "sa1-xgm" in run.alias, sorted(run.alias)                  # doctest: +SKIP
    (True, ['sa1-xgm'])
    """

    def __init__(self, run: Run):
        self._run = run

    def resolve(self, name: str) -> Alias:
        """What an alias stands for; :class:`KeyError` naming the known aliases if unknown."""
        try:
            return self._run._aliases[normalise_alias(name)]
        except KeyError:
            known = ", ".join(sorted(self._run._aliases)) or "none (see Run.with_aliases)"
            raise KeyError(f"no alias {name!r}; aliases: {known}") from None

    def __getitem__(self, item: str | tuple[str, str]) -> xr.DataArray | xr.Dataset:
        if isinstance(item, tuple) and len(item) == 2:
            source = self.resolve(item[0])
            if not isinstance(source, str):
                raise ValueError(f"alias {item[0]!r} stands for a key, not a source: {source!r}")
            return self._run[source, item[1]]
        if isinstance(item, str):
            return self._run[self.resolve(item)]
        raise TypeError(f"use run.alias[alias] or run.alias[source alias, key], not {item!r}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise_alias(name) in self._run._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._run._aliases))

    def __len__(self) -> int:
        return len(self._run._aliases)

    def __repr__(self) -> str:
        lines = [f"  {name}: {target!r}" for name, target in sorted(self._run._aliases.items())]
        return "\n".join(["<aliases>", *lines]) if lines else "<no aliases>"


def open_run(
    path: PathLike | Iterable[PathLike] | None = None, include: str = "*",
    inc_suspect_trains: bool = True, strict: bool = False, *,
    proposal: int | str | None = None, run: int | str | None = None, data: str = "raw",
    progress: bool | None = None, cache: bool = True, aliases: Any = DEFAULT_ALIASES_FILE,
) -> Run:
    """Open a run directory, a list of run files, or a run of a proposal.

    Parameters
    ----------
    path
        A run directory, one file, or a list of files.
    include
        Glob on file names, e.g. ``"*DA*"`` for slow data only.
    inc_suspect_trains
        Keep trains the DAQ flagged as suspect (or that are out of order). The
        default keeps them, so no real data goes missing.
    strict
        Raise on an unreadable file instead of skipping it with a warning.
    proposal, run, data
        Instead of ``path``: the proposal number, run number and ``"raw"``,
        ``"proc"`` or ``"all"``, found under the facility's data root
        (``$XFELDATA_ROOT``, default ``/gpfs/exfel/exp``).  ``"all"`` combines them
        as EXtra-data does: sources that proc data has (corrected detectors, also
        under their legacy names) come from proc, the others from raw.
    progress
        Show a progress bar while indexing (default: on a terminal, for many files).
    cache
        Use the persistent index cache, so a run opens again without reading its
        files (``XFELDATA_INDEX_CACHE=0`` turns it off everywhere).
    aliases
        With ``proposal=``: alias definitions applied with :meth:`Run.with_aliases`;
        the default, the proposal's ``usr/extra-data-aliases.yml`` (as EXtra-data),
        is used if it exists.  A path with ``{}`` has it replaced by the proposal
        directory; None applies no aliases.  Runs opened by ``path`` have none.

    Returns
    -------
    Run

    Raises
    ------
    FileNotFoundError
        If the path does not exist or holds no run files.
    FileFormatError
        If no file (or, with ``strict``, any file) can be read as a run file.

    Examples
    --------
    >>> import xfeldata as xd
    >>> run = xd.open_run("r0001")                          # doctest: +SKIP
    >>> run = xd.open_run(proposal=700000, run=1)           # doctest: +SKIP
    """
    if path is not None and (proposal is not None or run is not None):
        raise TypeError("open_run takes a path, or proposal= and run=, not both")
    if path is None:
        if proposal is None or run is None:
            raise TypeError("open_run needs a path, or both proposal= and run=")
        if data not in ("raw", "proc", "all"):
            raise ValueError(f"data must be 'raw', 'proc' or 'all', not {data!r}")
        kinds = ("raw", "proc") if data == "all" else (data,)
        paths_by_kind: dict[str, list[str]] = {}
        for kind in kinds:
            run_dir = proposal_run_dir(proposal, run, kind)
            if kind == "proc" and data == "all" and not run_dir.exists():
                continue
            paths_by_kind[kind] = list_run_files(run_dir, include)
        paths = [p for kind_paths in paths_by_kind.values() for p in kind_paths]
    elif isinstance(path, str | os.PathLike):
        paths = list_run_files(path, include)
    else:
        paths = [os.fspath(p) for p in path]
        if not paths:
            raise FileNotFoundError("open_run was given an empty list of files")
        for p in paths:
            if not os.path.exists(p):
                raise FileNotFoundError(f"{p}: no such file")
    with paused_gc():
        if path is None and data == "all" and "proc" in paths_by_kind:
            raw, proc = (index_files(paths_by_kind[k], strict=strict, progress=progress, cache=cache)
                         for k in ("raw", "proc"))
            files = _proc_over_raw(raw, proc)
            opened = Run(RunFiles(files, inc_suspect_trains=inc_suspect_trains))
        else:
            opened = Run(run_files(paths, inc_suspect_trains=inc_suspect_trains, strict=strict,
                                   progress=progress, cache=cache))
    if path is None and aliases is not None:
        if isinstance(aliases, str):
            aliases = Path(aliases.format(proposal_run_dir(proposal, run).parents[1]))
        if aliases != Path(DEFAULT_ALIASES_FILE.format(proposal_run_dir(proposal, run).parents[1])) or (
                aliases.is_file()):
            opened = opened.with_aliases(aliases)
    return opened


def _proc_over_raw(raw: list[FileIndex], proc: list[FileIndex]) -> list[FileIndex]:
    """Raw and proc files of one run, as EXtra-data's ``data="all"``: a source both have is read from proc.

    Proc sources count under their legacy names too, so corrected data saved under
    new names replaces the raw ``.../DET/<n>CH0:xtdf`` sources.  Raw files left with
    no source are dropped.
    """
    in_proc = {name for fi in proc for name in (*fi.sources, *fi.aliases)}
    kept = []
    for fi in raw:
        sources = {name: info for name, info in fi.sources.items() if name not in in_proc}
        if sources:
            kept.append(dataclasses.replace(fi, sources=sources))
    return kept + list(proc)


def open_file(path: PathLike, inc_suspect_trains: bool = True, cache: bool = True) -> Run:
    """Open one run file with the same interface as a run.

    Raises
    ------
    FileNotFoundError, FileFormatError
        If the file is missing or is not a readable run file.

    Examples
    --------
    >>> f = open_file("RAW-R0450-DA01-S00001.h5")   # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; open_file opens one file, "
                                "open_run opens a run directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return Run(RunFiles([cached_file_index(path, use_cache=cache)], inc_suspect_trains=inc_suspect_trains))
