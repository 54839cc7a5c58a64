"""The ``xfeldata`` engine for :func:`xarray.open_dataset` and :func:`xarray.open_datatree`.

A run directory opens as one source's :class:`xarray.Dataset` (or a
:class:`xarray.DataTree` with one node per source).  Variables are lazily indexed
:class:`xarray.backends.BackendArray` objects: indexing reads only the HDF5 rows
of the requested trains, and ``chunks={}`` gives dask chunks that follow the
HDF5 chunks and the file boundaries (``preferred_chunks``).  ``open_run`` is
where dask-backed objects come from directly.

Labels follow :func:`xfeldata.views.source_dataset`: ``trainId`` (the union of
the trains with data of the source's keys), ``pulseId`` (or positional
``pulse``) for pulse-resolved keys, entry dims named after the key
(``"data.intensityTD.dim_0"``); keys missing a train or pulse are filled with
:func:`xfeldata.fill.default_fill_value` of their dtype (dtypes are kept) and
``<group>.present`` says where, as in :func:`xfeldata.views.merge_variables`.  Variables keep the attrs of
:func:`xfeldata.views.key_array` (source, key, units, files).

Examples
--------
>>> import xarray as xr
>>> ds = xr.open_dataset("r0001", engine="xfeldata",
...                      source="SA1_XTD2_XGM/DOOCS/MAIN")       # doctest: +SKIP
>>> ds["beamPosition.ixPos"].sel(trainId=10003).values         # doctest: +SKIP
>>> ds = xr.open_dataset("r0001", engine="xfeldata", chunks={},
...                      source="*/DET/0CH0:xtdf", keys="image.*")  # doctest: +SKIP
>>> tree = xr.open_datatree("r0001", engine="xfeldata")         # doctest: +SKIP

The engine also reads back what :mod:`xfeldata.export.xarray` wrote (a
netCDF file or a zarr store): it opens it with xarray's h5netcdf or zarr
engine and undoes the mapping of :mod:`xfeldata.export.names`, so variables,
dims and attrs have their original names (``"source/key"``) again; lazily.

>>> ds = xr.open_dataset("r0001.nc", engine="xfeldata", chunks={})   # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint, H5netcdfBackendEntrypoint, ZarrBackendEntrypoint
from xarray.core import indexing

from . import schema
from .api import open_run
from .arrays import (
    TARGET_CHUNK_BYTES,
    BlockRead,
    RowRead,
    chunk_rows,
    execute_block,
    file_stamp,
)
from .export import names as export_names
from .files.handles import FileStamp
from .files.layout import parse_file_name
from .files.strings import decode_strings
from .fill import default_fill_value
from .run import RunSelection, positions_within
from .views import aligned_masks, group_presence, pulse_slots, run_dataset

__all__ = ["XfeldataBackendEntrypoint", "XfeldataBackendArray", "open_source_dataset"]


@dataclass(frozen=True)
class _KeyRows:
    """Where one key's rows are: per train with data, and the slot of every row."""

    source: str
    key: str
    dtype: np.dtype               # as stored (structured dtypes included)
    entry_shape: tuple[int, ...]
    train_ids: np.ndarray         # trains with data, sorted
    file_no: np.ndarray
    first: np.ndarray
    count: np.ndarray
    row_offset: np.ndarray        # start of each train's rows in the concatenated rows
    slot_of_row: np.ndarray       # slot (pulse position) of every row
    n_slots: int
    datasets: dict[int, tuple[str, str, FileStamp]]   # file_no -> (file path, dataset path, stamp)


class XfeldataBackendArray(BackendArray):
    """One variable of a source Dataset, read lazily by train (and pulse).

    Holds only plain arrays and paths (no h5py objects), so it pickles.  Rows are
    read through :func:`xfeldata.arrays.execute_block` and the per-process file
    handle cache.

    Parameters
    ----------
    rows
        Where the key's rows are.
    train_map
        For every train of the Dataset's ``trainId`` axis, the key's train
        position, or -1 where the key has no data.
    slot_map
        For every position of the pulse axis, the key's slot (-1: not a pulse of
        this key); None for per-train keys.
    dtype, fill_value
        dtype of the variable and value of cells of trains or pulses the key lacks.
    field
        The field of a structured dtype this variable holds.

    Examples
    --------
    >>> ds = xr.open_dataset("r0001", engine="xfeldata", source="SA1_XTD2_XGM/DOOCS/MAIN")  # doctest: +SKIP
    >>> ds["beamPosition.ixPos"].variable._data.array     # doctest: +SKIP
    <xfeldata.backend.XfeldataBackendArray ...>
    """

    def __init__(self, rows: _KeyRows, train_map: np.ndarray, slot_map: np.ndarray | None,
                 dtype: np.dtype, fill_value: Any, field: str | None = None):
        self.rows = rows
        self.train_map = np.asarray(train_map, np.int64)
        self.slot_map = None if slot_map is None else np.asarray(slot_map, np.int64)
        self.field = field
        self.dtype = np.dtype(dtype)
        self.fill_value = fill_value
        stored = rows.dtype[field] if field else rows.dtype
        self._entry_shape = (*rows.entry_shape, *stored.shape)
        lead = (len(self.train_map),) if self.slot_map is None else (len(self.train_map), len(self.slot_map))
        self.shape = (*lead, *self._entry_shape)

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__name__} {self.rows.source} "
                f"{self.rows.key}{'.' + self.field if self.field else ''} shape={self.shape}>")

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw_indexing_method)

    def _read_trains(self, wanted: np.ndarray) -> np.ndarray:
        """Rows of the key's trains ``wanted`` (sorted positions), concatenated."""
        rows = self.rows
        reads: list[RowRead] = []
        offset = 0
        for j in wanted.tolist():
            count = int(rows.count[j])
            path, dataset, stamp = rows.datasets[int(rows.file_no[j])]
            start = int(rows.first[j])
            last = reads[-1] if reads else None
            if last is not None and last.path == path and last.dataset == dataset and last.stop == start:
                reads[-1] = RowRead(path, dataset, rows.source, rows.key, last.start, start + count,
                                    last.target, stamp)
            else:
                reads.append(RowRead(path, dataset, rows.source, rows.key, start, start + count, offset, stamp))
            offset += count
        if not offset:
            return np.zeros((0, *rows.entry_shape), rows.dtype)
        return execute_block(BlockRead((offset, *rows.entry_shape), rows.dtype, len(rows.entry_shape),
                                       None, tuple(reads)))

    def _raw_indexing_method(self, key: tuple) -> np.ndarray:
        rows = self.rows
        positions = [np.arange(n)[k] for n, k in zip(self.shape, key, strict=True)]
        scalar = [p.ndim == 0 for p in positions]
        positions = [np.atleast_1d(p) for p in positions]
        n_lead = 1 if self.slot_map is None else 2
        kt = self.train_map[positions[0]]
        slots = np.zeros(1, np.int64) if self.slot_map is None else self.slot_map[positions[1]]
        wanted = np.unique(kt[kt >= 0])

        flat = self._read_trains(wanted)
        counts = rows.count[wanted].astype(np.int64)
        row_ids = np.repeat(rows.row_offset[wanted] - np.cumsum(counts) + counts, counts) \
            + np.arange(int(counts.sum()))
        padded = np.full((len(wanted), rows.n_slots, *rows.entry_shape),
                         default_fill_value(rows.dtype), rows.dtype)
        padded[np.repeat(np.arange(len(wanted)), counts), rows.slot_of_row[row_ids]] = flat
        if self.field:
            padded = padded[self.field]
        if rows.dtype.kind in "OS":
            padded = decode_strings(padded)

        out = np.full((len(kt), len(slots), *self._entry_shape), self.fill_value, self.dtype)
        have_t, have_s = kt >= 0, slots >= 0
        picked = padded[np.searchsorted(wanted, kt[have_t])][:, slots[have_s]]
        out[np.ix_(have_t, have_s)] = picked
        if self.slot_map is None:
            out = out[:, 0]
        for axis in range(n_lead, out.ndim):
            out = np.take(out, positions[axis], axis=axis)
        drop = tuple(0 if s else slice(None) for s in scalar)
        return out[drop]


def _key_rows(run: RunSelection, source: str, key: str
              ) -> tuple[_KeyRows, np.ndarray | None, bool, list[str]]:
    """The rows of a key, its pulse coordinate (or None), whether it is positional, files."""
    info = run.key_info(source, key)
    run.check_index(source, key)  # trains whose index entries were set aside raise here
    found = run.rows(source, info.group)
    files = sorted({run.file(int(f)).path for f in np.unique(found.file_no)})
    has_data = found.count > 0
    counts = found.count[has_data].astype(np.int64)
    pulse_ids, positional, slot_of_row = None, False, None
    if counts.max(initial=0) <= 1:
        n_slots = 1
    else:
        slots = pulse_slots(run, source, info.group, counts)
        if slots is None:
            n_slots, positional = int(counts.max()), True
            pulse_ids = np.arange(n_slots)
        else:
            pulse_ids, slot_of_row = slots
            n_slots = len(pulse_ids)
    if slot_of_row is None:
        slot_of_row = positions_within(counts)
    file_no = found.file_no[has_data]
    datasets = {}
    for fno in np.unique(file_no).tolist():
        datasets[fno] = (run.file(fno).path, run.file_key_info(fno, source, key).path, file_stamp(run.file(fno)))
    rows = _KeyRows(
        source=source, key=info.key, dtype=info.dtype, entry_shape=info.entry_shape,
        train_ids=found.train_ids[has_data], file_no=file_no,
        first=found.first[has_data].astype(np.int64), count=counts,
        row_offset=np.cumsum(counts) - counts, slot_of_row=np.asarray(slot_of_row, np.int64),
        n_slots=n_slots, datasets=datasets,
    )
    return rows, pulse_ids, positional, files


def _train_chunks(run: RunSelection, rows: _KeyRows, train_ids: np.ndarray,
                  target_bytes: int) -> tuple[int, ...]:
    """Chunk sizes along the Dataset's train axis: HDF5-chunk-aligned row windows per file."""
    n = len(train_ids)
    if not n:
        return (0,)
    if not len(rows.train_ids):
        return (n,)
    per_file = {fno: chunk_rows(run.file_key_info(fno, rows.source, rows.key), target_bytes)
                for fno in rows.datasets}
    window = rows.first // np.array([per_file[int(f)] for f in rows.file_no], np.int64)
    change = np.flatnonzero((np.diff(rows.file_no) != 0) | (np.diff(window) != 0)) + 1
    starts = np.searchsorted(train_ids, rows.train_ids[change])
    edges = np.unique(np.concatenate([[0], starts, [n]]))
    return tuple(np.diff(edges).tolist())


def _var_name(key: str, field: str | None) -> str:
    """A key's variable name; fields of structured keys are ``"<key>.<field>"``."""
    return f"{key}.{field}" if field else key


def open_source_dataset(run: RunSelection, source: str,
                        drop_variables: Iterable[str] = (),
                        target_bytes: int | None = None) -> xr.Dataset:
    """One source's selected keys as a Dataset of lazily indexed backend arrays.

    Parameters
    ----------
    run
        A run selection (e.g. from :func:`xfeldata.open_run`).
    source
        The source (its name in the run).
    drop_variables
        Variable names to leave out.
    target_bytes
        Size dask chunks aim at with ``chunks={}`` (default
        :data:`xfeldata.arrays.TARGET_CHUNK_BYTES`).

    Examples
    --------
    >>> ds = open_source_dataset(xd.open_run("r0001"), "SA1_XTD2_XGM/DOOCS/MAIN")  # doctest: +SKIP
    """
    source = run.resolve_source(source)
    target_bytes = TARGET_CHUNK_BYTES if target_bytes is None else target_bytes
    dropped = set(drop_variables)
    # name -> (rows, field, pulse dim, pulse coord, attrs)
    plans: dict[str, tuple[_KeyRows, str | None, str | None, np.ndarray | None, dict]] = {}
    for key in run.keys(source):
        info = run.key_info(source, key)
        names = list(info.dtype.names or [None])
        if all(_var_name(key, name) in dropped for name in names):
            continue
        rows, pulse_ids, positional, files = _key_rows(run, source, key)
        pulse_dim = None if pulse_ids is None else (schema.POSITION_DIM if positional else schema.PULSE_DIM)
        for name in names:
            if _var_name(key, name) in dropped:
                continue
            if name is None:
                attrs = schema.key_attrs(source, info.key, info.attrs, files)
            else:
                attrs = schema.key_attrs(source, f"{info.key}.{name}", None, files)
            if positional:
                attrs["pulse_dim"] = "positional: the rows record no pulse IDs"
            plans[_var_name(key, name)] = (rows, name, pulse_dim, pulse_ids, attrs)

    all_tids = [p[0].train_ids for p in plans.values()]
    train_ids = np.unique(np.concatenate(all_tids)) if all_tids else np.zeros(0, np.uint64)
    train_ids = train_ids.astype(np.uint64)
    pulse_axes: dict[str, np.ndarray] = {}
    for _, _, pulse_dim, pulse_ids, _ in plans.values():
        if pulse_dim is not None:
            pulse_axes[pulse_dim] = np.union1d(pulse_axes.get(pulse_dim, pulse_ids), pulse_ids)

    # Detector pixel keys get the detector's dim names; generic entry dims carry the
    # key's name, so keys of any shape merge (as in the views).
    entry_dims: dict[str, tuple[str, ...]] = {}
    for name, (rows, field, *_) in plans.items():
        ndim = len(rows.entry_shape) + len(rows.dtype[field].shape if field else ())
        pixel = None if field else schema.detector_key_dims(rows.source, rows.key, rows.entry_shape)
        entry_dims[name] = pixel or tuple(f"{rows.key}.{d}" for d in schema.entry_dims(ndim))

    variables = {}
    for name, (rows, field, pulse_dim, pulse_ids, attrs) in plans.items():
        stored = rows.dtype[field].base if field else rows.dtype
        dtype = np.dtype(object) if stored.kind in "OS" else stored
        train_map = np.full(len(train_ids), -1, np.int64)
        train_map[np.searchsorted(train_ids, rows.train_ids)] = np.arange(len(rows.train_ids))
        dims: tuple[str, ...] = (schema.TRAIN_DIM,)
        slot_map = None
        if pulse_dim is not None:
            axis = pulse_axes[pulse_dim]
            slot_map = np.full(len(axis), -1, np.int64)
            slot_map[np.searchsorted(axis, pulse_ids)] = np.arange(len(pulse_ids))
            dims += (pulse_dim,)
        array = XfeldataBackendArray(rows, train_map, slot_map, dtype, default_fill_value(dtype), field)
        dims += entry_dims[name]
        preferred = dict(zip(dims, array.shape, strict=True))
        preferred[schema.TRAIN_DIM] = _train_chunks(run, rows, train_ids, target_bytes)
        variables[name] = xr.Variable(dims, indexing.LazilyIndexedArray(array), attrs=attrs,
                                      encoding={"preferred_chunks": preferred})

    coords = {schema.TRAIN_DIM: train_ids, **pulse_axes}
    ds = xr.Dataset(variables, coords=coords, attrs={"source": source})
    groups = sorted({run.key_info(source, rows.key).group for rows, *_ in plans.values()})
    masks = {f"{g}.present": group_presence(run, source, g) for g in groups}
    return ds.assign(aligned_masks(masks, ds.coords))


def _pick_source(run: RunSelection, source: str | None) -> str:
    """Resolve a source name or a glob matching exactly one source; ValueError otherwise."""
    available = run.sources
    if source is None:
        raise ValueError(
            "engine='xfeldata' needs source=<name or glob> (use xr.open_datatree for all "
            f"sources); this run has {len(available)} sources: {', '.join(available)}")
    if source in run:
        return run.resolve_source(source)
    matched = [s for s in available if fnmatch.fnmatchcase(s, source)]
    if len(matched) == 1:
        return matched[0]
    if matched:
        raise ValueError(f"source={source!r} matches {len(matched)} sources, give one of: "
                         + ", ".join(matched))
    close = difflib.get_close_matches(source, available, n=3, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else f"available: {', '.join(available)}"
    raise ValueError(f"source {source!r} is not in this run; {hint}")


def _select_keys(run: RunSelection, source: str, keys: str | Iterable[str] | None) -> RunSelection:
    if keys is None:
        return run.select({source: None})
    if isinstance(keys, str):
        return run.select(source, keys)
    return run.select({source: list(keys)})


def _matching_keys(run: RunSelection, source: str, keys: str | Iterable[str] | None) -> list[str]:
    """The keys of a source that match any of the globs (all keys for None)."""
    available = run.keys(source)
    if keys is None:
        return available
    globs = [keys] if isinstance(keys, str) else list(keys)
    globs = [g[:-6] if g.endswith(".value") else g for g in globs]
    return [k for k in available if any(fnmatch.fnmatchcase(k, g) for g in globs)]


def _drop_set(drop_variables: str | Iterable[str] | None) -> set[str]:
    if drop_variables is None:
        return set()
    return {drop_variables} if isinstance(drop_variables, str) else set(drop_variables)


def _export_backend(path: Any) -> BackendEntrypoint | None:
    """xarray's zarr or h5netcdf engine for a store that is no run (an export), else None.

    A zarr store is a directory with zarr metadata; a netCDF file is an HDF5
    file without the run files' ``INDEX`` and ``METADATA`` groups.
    """
    if not isinstance(path, str | os.PathLike):
        return None
    path = os.fspath(path)
    if os.path.isdir(path):
        marks = ("zarr.json", ".zgroup", ".zarray")
        return ZarrBackendEntrypoint() if any(os.path.exists(os.path.join(path, m)) for m in marks) else None
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            return None if "INDEX" in f or "METADATA" in f else H5netcdfBackendEntrypoint()
    except OSError:
        return None


def _stored_names(drop_variables: str | Iterable[str] | None) -> list[str]:
    return [export_names.encode_name(n) for n in _drop_set(drop_variables)]


class XfeldataBackendEntrypoint(BackendEntrypoint):
    """xarray engine ``"xfeldata"``: European XFEL run directories as lazily indexed Datasets.

    Examples
    --------
    >>> ds = xr.open_dataset("r0001", engine="xfeldata", source="SA1_XTD2_XGM/DOOCS/MAIN",
    ...                      keys="beamPosition.*", chunks={})      # doctest: +SKIP
    >>> tree = xr.open_datatree("r0001", engine="xfeldata", source="*XGM*")  # doctest: +SKIP
    """

    description = ("European XFEL run directories (one source per Dataset) via xfeldata, "
                   "and the netCDF/zarr exports of xfeldata")
    url = "https://github.com/European-XFEL/EXtra-data"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "source", "keys",
                               "include", "inc_suspect_trains", "group")
    supports_groups = True

    def open_dataset(  # type: ignore[override]
        self, filename_or_obj: str | os.PathLike, *,
        drop_variables: str | Iterable[str] | None = None,
        source: str | None = None, keys: str | Iterable[str] | None = None,
        include: str = "*", inc_suspect_trains: bool = True, group: str | None = None,
    ) -> xr.Dataset:
        """Open one source of a run as a Dataset of lazily indexed variables (or the whole run).

        Parameters
        ----------
        filename_or_obj
            A run directory (or one run file), or a netCDF file or zarr store
            written by :mod:`xfeldata.export.xarray` (then only
            ``drop_variables`` and ``group`` apply).
        drop_variables
            Variable names to leave out.
        source
            A source name (legacy names resolve) or a glob matching exactly one source.
            Without it, the whole run as :meth:`xfeldata.Run.dataset` gives it
            (variables ``"source/key"``, dask arrays).
        keys
            A key glob or a list of keys/globs (default: all keys).
        include
            Glob on file names, as for :func:`xfeldata.open_run`.
        inc_suspect_trains
            Keep trains flagged as suspect (default True).
        group
            A group of an export (e.g. a source of ``run.to_datatree()``).

        Raises
        ------
        ValueError
            If ``source`` matches no source or several, listing them.

        Examples
        --------
        >>> xr.open_dataset("r0001", engine="xfeldata", source="*XGM/DOOCS/MAIN")  # doctest: +SKIP
        """
        export = _export_backend(filename_or_obj)
        if export is not None:
            ds = export.open_dataset(filename_or_obj, drop_variables=_stored_names(drop_variables),
                                     group=group)
            if group in (None, "", "/"):
                return export_names.decode(ds)
            with export.open_dataset(filename_or_obj) as root:  # the root says if names are mapped
                return export_names.decode(ds, encoded=export_names.is_encoded(root.attrs))
        if group is not None:
            raise ValueError(f"group={group!r}: a run has no groups (use source=...)")
        run = open_run(filename_or_obj, include=include, inc_suspect_trains=inc_suspect_trains)
        if source is None:  # the whole run, as run.dataset(): variables "source/key" (dask)
            picked = {name: _matching_keys(run, name, keys) for name in run.sources}
            whole = run_dataset(run.select({name: ks for name, ks in picked.items() if ks}))
            return whole.drop_vars(_drop_set(drop_variables) & set(whole.data_vars))
        name = _pick_source(run, source)
        return open_source_dataset(_select_keys(run, name, keys), name, _drop_set(drop_variables))

    def open_groups_as_dict(  # type: ignore[override]
        self, filename_or_obj: str | os.PathLike, *,
        drop_variables: str | Iterable[str] | None = None,
        source: str = "*", keys: str | Iterable[str] | None = None,
        include: str = "*", inc_suspect_trains: bool = True,
    ) -> dict[str, xr.Dataset]:
        """``{"/<source>": Dataset}`` for every source matching the glob ``source``.

        Sources where no key matches ``keys`` are left out.  The root ``"/"`` is empty.
        An export (netCDF, zarr) gives its groups with the original names.
        """
        export = _export_backend(filename_or_obj)
        if export is not None:
            return export_names.decode_groups(export.open_groups_as_dict(
                filename_or_obj, drop_variables=_stored_names(drop_variables)))
        run = open_run(filename_or_obj, include=include, inc_suspect_trains=inc_suspect_trains)
        dropped = _drop_set(drop_variables)
        groups = {"/": xr.Dataset()}
        for name in run.sources:
            if not fnmatch.fnmatchcase(name, source):
                continue
            picked = _matching_keys(run, name, keys)
            if picked:
                groups[f"/{name}"] = open_source_dataset(run.select({name: picked}), name, dropped)
        return groups

    def open_datatree(  # type: ignore[override]
        self, filename_or_obj: str | os.PathLike, *,
        drop_variables: str | Iterable[str] | None = None,
        source: str = "*", keys: str | Iterable[str] | None = None,
        include: str = "*", inc_suspect_trains: bool = True,
    ) -> xr.DataTree:
        """A DataTree with one node per source (source names give the paths), or an export's tree.

        Examples
        --------
        >>> tree = xr.open_datatree("r0001", engine="xfeldata")        # doctest: +SKIP
        >>> tree["SA1_XTD2_XGM/DOOCS/MAIN"].dataset                     # doctest: +SKIP
        """
        groups = self.open_groups_as_dict(
            filename_or_obj, drop_variables=drop_variables, source=source, keys=keys,
            include=include, inc_suspect_trains=inc_suspect_trains)
        return xr.DataTree.from_dict(groups)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """True for a directory that holds run files (``RAW-R0001-DA01-S00000.h5`` ...).

        Exports are opened with ``engine="xfeldata"`` given (their files are netCDF or zarr).
        """
        if not isinstance(filename_or_obj, str | os.PathLike):
            return False
        try:
            if not os.path.isdir(filename_or_obj):
                return False
            with os.scandir(filename_or_obj) as entries:
                return any(parse_file_name(e.name) is not None and e.is_file() for e in entries)
        except OSError:
            return False
