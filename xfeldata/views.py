"""xarray and pandas views of a run selection, built from lazy arrays through the schema.

Examples
--------
>>> arr = key_array(run, "SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.ixPos")   # doctest: +SKIP
>>> arr.dims                                                                # doctest: +SKIP
('trainId',)
"""

from __future__ import annotations

import fnmatch
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from . import schema
from .arrays import (
    BlockRead,
    FreshArray,
    flat_rows_array,
    flat_rows_blocks,
    handed_over,
    padded_array,
    read_rows,
    small_block,
)
from .errors import PropertyNameError, SourceNameError
from .files.strings import decode_strings
from .fill import default_fill_value
from .run import RunSelection, positions_within


def pulse_slots(run: RunSelection, source: str, group: str,
                counts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Pulse IDs (coordinate) and the slot of every row, or None if not recorded/unique."""
    full = run.select(source)
    key = f"{group}.pulseId"
    if key not in full.keys(source):
        return None
    pulse_ids, _ = read_rows(full, source, key)
    pulse_ids = pulse_ids.reshape(len(pulse_ids), -1)[:, 0] if pulse_ids.ndim > 1 else pulse_ids
    if len(pulse_ids) != int(counts.sum()):
        return None
    row_train = np.repeat(np.arange(len(counts)), counts)
    pairs = np.unique(np.stack([row_train, pulse_ids.astype(np.int64)]), axis=1)
    if pairs.shape[1] != len(pulse_ids):  # a pulse ID repeats within a train
        return None
    coord = np.unique(pulse_ids)
    return coord, np.searchsorted(coord, pulse_ids)


def _no_rows(info) -> da.Array:
    """An empty ``(0, *entry)`` dask array (dask's own constructors fail for 0 rows)."""
    return da.from_array(np.empty((0, *info.entry_shape), info.dtype), chunks=-1)


def group_presence(run: RunSelection, source: str, group: str) -> xr.DataArray:
    """Where an index group of a source has data: True for every recorded row.

    ``(trainId,)`` over the group's trains with data for per-train groups,
    ``(trainId, pulseId)`` (or positional ``pulse``) for groups with several
    rows per train, labelled as :func:`key_array` labels the group's keys.
    Merged Datasets carry it as ``<group>.present`` where the group's keys are
    filled (see :func:`merge_variables`).

    >>> group_presence(run, "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image").dims   # doctest: +SKIP
    ('trainId', 'pulseId')
    """
    found = run.rows(source, group)
    counts = found.count.astype(np.int64)
    has_data = counts > 0
    train_ids, counts = found.train_ids[has_data], counts[has_data]
    if counts.max(initial=0) <= 1:
        return schema.key_dataarray(np.ones(len(train_ids), bool), train_ids, source=source,
                                    key=f"{group}.present", dims=())
    slots = pulse_slots(run, source, group, counts)
    if slots is None:
        pulse_ids, slot_of_row, positional = np.arange(int(counts.max())), positions_within(counts), True
    else:
        (pulse_ids, slot_of_row), positional = slots, False
    mask = np.zeros((len(train_ids), len(pulse_ids)), bool)
    mask[np.repeat(np.arange(len(train_ids)), counts), slot_of_row] = True
    return schema.key_dataarray(mask, train_ids, source=source, key=f"{group}.present",
                                pulse_ids=pulse_ids, positional=positional, dims=())


class SmallKeyArray(BackendArray):
    """A small key's rows (one :class:`~xfeldata.arrays.BlockRead`) as a lazily
    indexed array for xarray: numpy, no dask; indexing reads only the selected rows.

    >>> run["SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.ixPos"].variable._data.array  # doctest: +SKIP
    <xfeldata.views.SmallKeyArray ...>
    """

    def __init__(self, block: BlockRead):
        self.block, self.shape, self.dtype = block, block.shape, block.dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC,
                                                  self.block.__getitem__)


def _flat_rows(run: RunSelection, source: str, key: str, small_in_memory: bool,
               found: Any) -> tuple[Any, Any]:
    """A key's rows (at most one a train) as dask, or, for a small numeric key, lazily
    indexed numpy (:class:`SmallKeyArray`), and the train map of its selected trains
    (``found``: ``run.rows`` of the key's group)."""
    planned = run.memo((flat_rows_blocks, source, key), lambda: flat_rows_blocks(run, source, key, found=found))
    block = small_block(planned[0]) if small_in_memory else None
    if block is None or block.dtype.kind not in "biufcmM" or block.dtype.names:
        return flat_rows_array(run, source, key, planned=planned)
    return indexing.LazilyIndexedArray(SmallKeyArray(block)), planned[1]


def key_array(run: RunSelection, source: str, key: str, *,
              small_in_memory: bool = True) -> xr.DataArray | xr.Dataset:
    """One key as a lazy, labelled array.

    Control keys and keys with at most one entry per train are ``(trainId, *entry)``;
    keys with several entries per train are ``(trainId, pulseId, *entry)`` when the
    index group records pulse IDs, ``(trainId, pulse, *entry)`` (positional) otherwise.
    Only trains with data are on the train axis.  Structured dtypes give a Dataset
    with one variable per field.

    Numeric keys with at most one entry a train and at most
    :data:`~xfeldata.arrays.SMALL_KEY_BYTES` in the selection (control data) are
    lazily indexed numpy (``small_in_memory``, the default), not dask: read when
    their values are used (``.values``, arithmetic, ``.load()``), only the selected
    rows for ``.sel``/``.isel``; ``.chunk()`` makes them dask.  Others are dask.

    Raises
    ------
    SourceNameError, PropertyNameError
        (``KeyError``) for an unknown source or key, naming close matches.
    """
    source = run.resolve_source(source)
    info = run.key_info(source, key)
    run.check_index(source, key)  # trains whose index entries were set aside raise here
    rows = run.rows(source, info.group)
    if rows.count.any():
        arr, found = (_flat_rows(run, source, key, small_in_memory, rows) if rows.count.max() <= 1
                      else flat_rows_array(run, source, key))
    else:  # no rows in the selected trains (or none at all): an empty array with its dims
        arr, found = _no_rows(info), run.rows(source, info.group)
    counts = found.count.astype(np.int64)
    files = sorted({run.file(int(f)).path for f in np.unique(found.file_no)})
    has_data = counts > 0
    train_ids = found.train_ids[has_data]
    if counts.max(initial=0) <= 1:
        result = arr
        pulse_ids, positional = None, False
    else:
        slots = pulse_slots(run, source, info.group, counts[has_data])
        if slots is None:
            n_slots, slot_of_row, positional = int(counts.max()), None, True
            pulse_ids = np.arange(n_slots)
        else:
            pulse_ids, slot_of_row = slots
            n_slots, positional = len(pulse_ids), False
        result = padded_array(run, source, key, train_ids, n_slots, slot_of_row=slot_of_row)
    if info.dtype.kind in "OS":
        result = result.map_blocks(decode_strings, dtype=object)
    if info.dtype.names:
        fields = {
            name: schema.key_dataarray(result[name], train_ids, source=source, key=f"{info.key}.{name}",
                                       pulse_ids=pulse_ids, positional=positional, files=files)
            for name in info.dtype.names
        }
        return xr.Dataset(fields, attrs=schema.key_attrs(source, info.key, info.attrs, files))
    return schema.key_dataarray(result, train_ids, source=source, key=info.key, pulse_ids=pulse_ids,
                                positional=positional, attrs=info.attrs, files=files)


def _variables(run: RunSelection, source: str, prefix: str
               ) -> tuple[dict[str, xr.DataArray], dict[str, xr.DataArray]]:
    """The keys' arrays and their groups' :func:`group_presence`; generic entry dims get
    the key's name (``"data.image.dims.dim_0"``) so that keys of different shapes merge
    into one Dataset."""
    out = {}
    groups = sorted({run.key_info(source, key).group for key in run.keys(source)})
    masks = {f"{prefix}{group}.present": group_presence(run, source, group) for group in groups}
    for key in run.keys(source):
        arr = key_array(run, source, key, small_in_memory=False)
        generic = {d: f"{key}.{d}" for d in arr.dims if d.startswith("dim_")}
        arr = arr.rename(generic) if generic else arr
        if isinstance(arr, xr.Dataset):
            out.update({f"{prefix}{key}.{name}": var for name, var in arr.data_vars.items()})
        else:
            out[f"{prefix}{key}"] = arr
    return out, masks


def merge_variables(variables: dict[str, xr.DataArray],
                    masks: dict[str, xr.DataArray] | None = None) -> xr.Dataset:
    """Merge named DataArrays on their labels (outer join), keeping each one's attrs and dtype.

    Cells a variable lacks on the merged labels (a train or pulse of another
    index group) hold :func:`xfeldata.fill.default_fill_value` of its dtype:
    NaN for floats, 0 for integers, False for bools, "" for strings, so an
    integer key stays integer.  ``masks`` are the index groups' presence
    (:func:`group_presence`, named ``"<group>.present"``); a mask is added,
    False where filled, exactly when its group's keys are filled somewhere.

    >>> a = xr.DataArray(np.array([1, 2], np.uint16), dims="trainId", coords={"trainId": [1, 2]})
    >>> b = xr.DataArray(np.array([0.5]), dims="trainId", coords={"trainId": [2]})
    >>> ds = merge_variables({"x.a": a, "y.b": b}, {"y.present": b.notnull()})
    >>> ds["x.a"].dtype, ds["y.present"].values.tolist()
    (dtype('uint16'), [False, True])
    """
    renamed = [v.rename(name) for name, v in variables.items()]
    if not renamed:
        return xr.Dataset(coords={schema.TRAIN_DIM: np.zeros(0, np.uint64)})
    fill = {name: default_fill_value(v.dtype) for name, v in variables.items()}
    # "drop_conflicts" keeps every variable's own attrs (source, key, units, files).
    merged = xr.merge(renamed, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts",
                      fill_value=fill)
    merged.attrs = {}
    return merged.assign(aligned_masks(masks or {}, merged.coords))


def aligned_masks(masks: dict[str, xr.DataArray], coords: Any) -> dict[str, xr.DataArray]:
    """The masks on a merged Dataset's labels (False where added), those with a False cell."""
    out = {}
    for name, mask in masks.items():
        labels = {d: coords[d] for d in mask.dims if d in coords}
        aligned = mask.reindex(labels, fill_value=False)
        if not bool(aligned.all()):
            out[name] = aligned.rename(name)
    return out


def source_dataset(run: RunSelection, source: str) -> xr.Dataset:
    """All selected keys of one source, merged on their labels (outer join on trains).

    Each key keeps its dtype: where a key lacks a train or pulse of the merged
    labels (its index group has other trains), the cell holds the dtype's fill
    value (NaN for floats, 0 for integers) and a boolean ``<group>.present``
    variable (e.g. ``image.present (trainId, pulseId)``) is True exactly where
    the group recorded a row; see :func:`merge_variables`.

    >>> ds = source_dataset(run, "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf")    # doctest: +SKIP
    >>> ds["image.data"].where(ds["image.present"]).mean()              # doctest: +SKIP
    """
    source = run.resolve_source(source)
    ds = merge_variables(*_variables(run, source, ""))
    ds.attrs["source"] = source
    return ds


def run_dataset(run: RunSelection) -> xr.Dataset:
    """Every selected key of every selected source, named ``"source/key"``, merged on labels.

    Dtypes are kept as in :func:`source_dataset`; the masks are named
    ``"source/<group>.present"`` (a control source's group is ``""``).
    """
    variables: dict[str, xr.DataArray] = {}
    masks: dict[str, xr.DataArray] = {}
    for source in run.sources:
        keys, groups = _variables(run, source, f"{source}/")
        variables.update(keys)
        masks.update(groups)
    return merge_variables(variables, masks)


def to_datatree(run: RunSelection) -> xr.DataTree:
    """One DataTree node per selected source (its Dataset); source names give the paths."""
    return xr.DataTree.from_dict({source: source_dataset(run, source) for source in run.sources})


def control_frame(run: RunSelection, sources: str = "*", keys: str = "*",
                  timestamps: bool = False) -> pd.DataFrame:
    """A table of scalar per-train values, indexed by ``trainId``, columns ``"source/key"``.

    Parameters
    ----------
    sources, keys
        Globs on the selected control sources and their keys.
    timestamps
        Add a ``"source/key.timestamp"`` column (ns since the epoch) next to each key.

    Keys with array values are left out (see ``frame.attrs["skipped"]``); strings
    are decoded to ``str``.
    """
    matched = [s for s in run.control_sources if fnmatch.fnmatchcase(s, sources)]
    if not matched:
        instrument = [s for s in run.instrument_sources if fnmatch.fnmatchcase(s, sources)]
        if instrument:
            raise KeyError(f"{instrument[0]} is an instrument source; control_frame tables the "
                           "per-train values of control sources (use run[source, key] instead)")
        raise SourceNameError(sources, run.control_sources)
    empty: dict[str, np.dtype] = {}
    pending: dict[str, tuple] = {}  # column -> (rows, trains that list the source)
    skipped = []
    for source in matched:
        for key in run.keys(source):
            if not fnmatch.fnmatchcase(key, keys):
                continue
            info = run.key_info(source, key)
            if info.entry_shape or info.dtype.names:
                skipped.append(f"{source}/{key}")
                continue
            has_rows = run.rows(source, info.group).count.any()
            for name in ([key, f"{key}.timestamp"] if timestamps else [key]):
                if has_rows:
                    pending[f"{source}/{name}"] = read_rows(run, source, name)
                else:
                    empty[f"{source}/{name}"] = info.dtype
    if not pending and not empty and not skipped:
        known = sorted({k for s in matched for k in run.keys(s)})
        where = matched[0] if len(matched) == 1 else f"any control source matching {sources!r}"
        raise PropertyNameError(keys, where, known)
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {
        name: (np.zeros(0, np.uint64), np.zeros(0, dtype)) for name, dtype in empty.items()}
    for name, (vals, found) in pending.items():
        train_ids = found.train_ids[found.count > 0]
        columns[name] = (train_ids, vals[: len(train_ids)])
    columns = {name: columns[name] for name in sorted(columns)}
    frame = schema.control_frame(columns)
    frame.attrs["skipped"] = skipped
    return frame


__all__ = ["control_frame", "key_array", "run_dataset", "source_dataset", "to_datatree"]


def uniform_dask(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every :class:`FreshArray` variable (data or coordinate) as a plain dask
    array computed the same way (:func:`handed_over`), so that a Dataset mixing the
    detector's variables with other dask arrays can be computed: xarray refuses to
    compute a Dataset that mixes dask array types, a subclass and its base included
    (pydata/xarray issue 11539), e.g. ``run.detector().assign(photons=...)``.  Only the
    one-task selections of :class:`FreshArray` are lost.  Available as
    ``xfeldata.uniform_dask``.

    >>> ds = xr.Dataset({"a": ("x", da.ones(4, chunks=2))})
    >>> uniform_dask(ds)["a"].data is ds["a"].data
    True
    """
    fresh = {k: v for k, v in ds.variables.items() if isinstance(v.data, FreshArray)}
    if not fresh:
        return ds
    out = ds.copy()
    for k, v in fresh.items():
        a = v.data
        plain = handed_over(da.Array(a.dask, a.name, a.chunks, meta=a._meta))
        out[k] = v.copy(deep=False, data=plain)
    return out
