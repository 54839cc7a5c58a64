"""How data becomes labelled arrays: dimension names, coordinates, stacking and fill rules.

Both the offline views (files) and the live buffer (bridge) build their xarray
objects through these functions, so a Dataset from a run and one from the
bridge have the same dims, coordinates, variables and attrs.

Examples
--------
>>> import numpy as np
>>> arr = key_dataarray(np.zeros((3, 2)), np.array([10, 11, 12], np.uint64),
...                     source="SRC", key="data.x")
>>> arr.dims
('trainId', 'dim_0')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from xarray.core.indexes import PandasIndex

from .detectors.kinds import DETECTORS, detector_kind_of_device, match_detector_source
from .files.strings import decode_strings
from .fill import fill_value_for

TRAIN_DIM = "trainId"
PULSE_DIM = "pulseId"
#: Positional pulse dimension for rows that carry no pulse IDs.
POSITION_DIM = "pulse"
MODULE_DIM = "module"
#: JUNGFRAU memory cells: the pulse-like dimension of one-row-per-train detectors.
CELL_DIM = "cell"
#: The dims of a detector's frames within a train: pulses, or JUNGFRAU's memory cells.
PULSE_LIKE_DIMS = (PULSE_DIM, CELL_DIM)
GAIN_DIM = "gain"
PIXEL_DIMS = ("slow_scan", "fast_scan")

#: Variables of a detector Dataset, by the key they come from.
DETECTOR_VARIABLES = {
    "image.data": "image.data", "image.mask": "image.mask", "image.gain": "image.gain",
    "data.adc": "image.data", "data.mask": "image.mask", "data.gain": "image.gain",
    # every kind's pixel data key (ePix100: data.image.pixels) is image.data
    **{kind.data_key: "image.data" for kind in DETECTORS.values()},
}

def renamed_keys(keys: Iterable[str]) -> dict[str, str]:
    """Dataset attrs saying which keys a detector Dataset names otherwise.

    JUNGFRAU's ``data.adc``/``data.mask``/``data.gain`` become ``image.data``/
    ``image.mask``/``image.gain``, so that every detector has the same variables;
    the attr ``renamed_keys`` says so (absent where nothing is renamed).

    >>> renamed_keys(["data.adc", "data.gain"])
    {'renamed_keys': 'data.adc -> image.data, data.gain -> image.gain'}
    >>> renamed_keys(["image.data"])
    {}
    """
    pairs = [f"{k} -> {DETECTOR_VARIABLES[k]}" for k in keys if DETECTOR_VARIABLES.get(k, k) != k]
    return {"renamed_keys": ", ".join(pairs)} if pairs else {}


def detector_fill_value(key: str, dtype: np.dtype, fill_value: Any = None) -> Any:
    """Fill value of one detector variable: the caller's applies to the pixel data
    (``image.data``/``data.adc``); masks and gains keep their defaults.

    >>> detector_fill_value("image.mask", np.dtype("uint32"), -1)
    0
    """
    is_data = DETECTOR_VARIABLES.get(key, key) == "image.data"
    return fill_value_for(dtype, fill_value if is_data else None)


def entry_dims(entry_ndim: int) -> tuple[str, ...]:
    """Generic names of the dimensions of one entry: ``dim_0``, ``dim_1``, ..."""
    return tuple(f"dim_{i}" for i in range(entry_ndim))


def units_of(attrs: Mapping[str, Any]) -> str | None:
    """Units from Karabo key attributes (``metricPrefixSymbol`` + ``unitSymbol``).

    >>> units_of({"unitSymbol": "J", "metricPrefixSymbol": "u"})
    'uJ'
    """
    symbol = attrs.get("unitSymbol")
    if not symbol or symbol in ("N_A", "#", "NUMBER"):
        return None
    prefix = attrs.get("metricPrefixSymbol") or ""
    return f"{prefix}{symbol}"


def key_attrs(source: str, key: str, attrs: Mapping[str, Any] | None = None,
              files: Sequence[str] = ()) -> dict[str, Any]:
    """The attrs of a key's DataArray: source, key, units, file attributes, files read."""
    out: dict[str, Any] = {"source": source, "key": key}
    attrs = dict(attrs or {})
    units = units_of(attrs)
    if units:
        out["units"] = units
    for name in ("alias", "displayedName", "description"):
        if attrs.get(name):
            out[name] = attrs[name]
    if files:
        out["files"] = list(files)
    return out


def key_dataarray(data: Any, train_ids: np.ndarray, *, source: str, key: str,
                  pulse_ids: np.ndarray | None = None, positional: bool = False,
                  dims: Sequence[str] | None = None, attrs: Mapping[str, Any] | None = None,
                  files: Sequence[str] = ()) -> xr.DataArray:
    """A key's values as a DataArray labelled by train (and pulse).

    Parameters
    ----------
    data
        numpy or dask array ``(trains, *entry)`` or ``(trains, pulses, *entry)``.
    train_ids
        The train of each first-axis entry.
    pulse_ids
        Pulse IDs of the second axis, or None for per-train data.
    positional
        The second axis is a position within the train (no pulse IDs recorded).
    dims
        Names of the entry dimensions (default: a detector module's pixel keys
        as :func:`detector_key_dims` names them, else ``dim_0``, ...).
    """
    lead = [TRAIN_DIM]
    coords: dict[str, Any] = {TRAIN_DIM: np.asarray(train_ids, np.uint64)}
    extra = {}
    if pulse_ids is not None:
        pulse_dim = POSITION_DIM if positional else PULSE_DIM
        lead.append(pulse_dim)
        coords[pulse_dim] = np.asarray(pulse_ids, np.int64 if positional else np.uint64)
        if positional:
            extra["pulse_dim"] = "positional: the rows record no pulse IDs"
    n_entry = data.ndim - len(lead)
    if dims is None:
        dims = detector_key_dims(source, key, data.shape[data.ndim - n_entry:]) or entry_dims(n_entry)
    names = tuple(dims)
    all_attrs = {**key_attrs(source, key, attrs, files), **extra}
    return labelled(xr.Variable((*lead, *names), data, attrs=all_attrs), coords,
                    name=f"{source}/{key}" if source else key)


def labelled(variable: xr.Variable, coords: Mapping[str, np.ndarray], name: str) -> xr.DataArray:
    """A DataArray of ``variable`` with one indexed coordinate per entry of ``coords``
    (dimension name -> labels), as ``xr.DataArray(data, dims=..., coords=coords)`` makes it.

    Built directly from the variable and its indexes: xarray's general
    constructor infers and checks what is known here, and took 0.1 ms of the
    0.3 ms of ``run[source, key].values`` for a control key.

    >>> labelled(xr.Variable(("trainId",), [1.5, 2.5]), {"trainId": np.array([10, 11], np.uint64)}, "x").trainId.values
    array([10, 11], dtype=uint64)
    """
    indexes, variables = {}, {}
    for dim, values in coords.items():
        index = PandasIndex(pd.Index(np.asarray(values)), dim)
        indexes[dim] = index
        variables.update(index.create_variables())
    return xr.DataArray(variable, variables, name=name, indexes=indexes, fastpath=True)


def detector_key_dims(source: str, key: str, entry_shape: Sequence[int]) -> tuple[str, ...] | None:
    """Entry dimension names of a detector module's pixel keys, as ``detector()`` names them.

    ``image.data``/``image.mask``/``image.gain`` (XTDF) are ``[gain,] slow_scan,
    fast_scan``; JUNGFRAU's ``data.adc``/``data.mask``/``data.gain`` are ``cell,
    slow_scan, fast_scan``.  None for every other key (generic names apply).

    >>> detector_key_dims("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.data", (2, 512, 128))
    ('gain', 'slow_scan', 'fast_scan')
    >>> detector_key_dims("SA1_XTD2_XGM/DOOCS/MAIN:output", "data.intensityTD", (1000,)) is None
    True
    """
    match = match_detector_source(source)
    if match is None or key not in DETECTOR_VARIABLES or len(entry_shape) not in (2, 3):
        return None
    kind = detector_kind_of_device(match[0])
    if kind is not None and not kind.row_per_frame:
        return (CELL_DIM, *PIXEL_DIMS) if len(entry_shape) == 3 else PIXEL_DIMS
    return detector_pixel_dims(entry_shape)


def detector_pixel_dims(entry_shape: Sequence[int]) -> tuple[str, ...]:
    """Names of a detector frame's dimensions: ``[gain,] slow_scan, fast_scan``.

    >>> detector_pixel_dims((2, 512, 128))
    ('gain', 'slow_scan', 'fast_scan')
    """
    if len(entry_shape) == 2:
        return PIXEL_DIMS
    if len(entry_shape) == 3:
        return (GAIN_DIM, *PIXEL_DIMS)
    return entry_dims(len(entry_shape))


def detector_dataset(
    variables: Mapping[str, Any], *, train_ids: np.ndarray, pulse_ids: np.ndarray,
    modules: Sequence[int], present: np.ndarray, pixel_dims: Mapping[str, Sequence[str]],
    cell_ids: Any = None, pulse_dim: str = PULSE_DIM, attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble a stacked multi-module detector Dataset.

    Parameters
    ----------
    variables
        ``{"image.data": array (trainId, pulse, module, *pixel), ...}`` (numpy or dask).
    train_ids, pulse_ids, modules
        Coordinates of the first three dimensions.
    present
        Boolean ``(trainId, pulse, module)``: True exactly where that frame was
        recorded (JUNGFRAU: every memory cell of a recorded train).  A module's
        presence in a train is ``present.any(pulse_dim)``.
    pixel_dims
        Names of each variable's pixel dimensions.
    cell_ids
        Optional ``(trainId, pulse, module)`` memory cell IDs.
    pulse_dim
        ``"pulseId"`` (XTDF detectors) or ``"cell"`` (JUNGFRAU).
    """
    lead = (TRAIN_DIM, pulse_dim, MODULE_DIM)
    data_vars: dict[str, Any] = {
        name: ((*lead, *pixel_dims[name]), arr) for name, arr in variables.items()
    }
    data_vars["present"] = (lead, np.asarray(present, bool))
    if cell_ids is not None:
        data_vars["cellId"] = (lead, cell_ids)
    coords = {
        TRAIN_DIM: np.asarray(train_ids, np.uint64),
        pulse_dim: np.asarray(pulse_ids, np.uint64 if pulse_dim == PULSE_DIM else np.int64),
        MODULE_DIM: np.asarray(modules, np.int64),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))


def control_frame(columns: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """A table indexed by ``trainId`` with one column per ``"source/key"``, outer-joined.

    Parameters
    ----------
    columns
        ``{"source/key": (train_ids, values)}`` with one value per train.

    Examples
    --------
    >>> df = control_frame({"A/x": (np.array([1, 2], np.uint64), np.array([0.5, 1.5]))})
    >>> df.index.name, list(df.columns)
    ('trainId', ['A/x'])
    """
    series = []
    for name, (train_ids, values) in columns.items():
        values = np.asarray(values)
        if values.dtype.kind in "SO":
            values = decode_strings(values)
        if values.ndim > 1:
            values = list(values)
        series.append(pd.Series(values, index=pd.Index(np.asarray(train_ids, np.uint64),
                                                       name=TRAIN_DIM), name=name))
    if not series:
        return pd.DataFrame(index=pd.Index(np.zeros(0, np.uint64), name=TRAIN_DIM))
    frame = pd.concat(series, axis=1, join="outer").sort_index()
    frame.index.name = TRAIN_DIM
    return frame
