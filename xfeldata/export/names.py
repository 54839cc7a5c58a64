"""The one place where names and attrs that writers refuse are mapped, reversibly.

xarray's netCDF and zarr writers refuse ``/`` in variable and dimension
names (``run.dataset()`` names its variables ``"source/key"``), and netCDF
attributes cannot hold booleans, ``None`` or dicts, and read a list of one
string back as a string.  :func:`encode` maps a Dataset or DataTree to names
and attrs every writer takes:

- names: ``%`` becomes ``%25`` and ``/`` becomes ``%2F`` (percent-encoding,
  so the mapping is one-to-one and :func:`decode_name` undoes it exactly);
- attrs: values other than strings and numbers are stored as JSON text, and
  the names of those attrs are listed (JSON) in the attr ``xfeldata_json_attrs``;
- the root's attrs record the rule in ``xfeldata_encoding``, which is how
  :func:`decode` (and the ``xfeldata`` xarray engine) know a store is ours.

MATLAB names (identifiers of at most 63 characters) are mapped here too,
by :func:`matlab_names`; that mapping is not one-to-one, so MAT files carry a
table of the original names.

This module imports nothing of xfeldata, so the xarray engine reads exports
back without importing the export layer's writers.

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset({"SA1_XTD2_XGM/DOOCS/MAIN/pulseEnergy.photonFlux":
...                  ("trainId", np.array([1.5, 2.5]), {"files": ["RAW-R0001-DA01-S00000.h5"]})})
>>> stored = encode(ds)
>>> list(stored.data_vars)
['SA1_XTD2_XGM%2FDOOCS%2FMAIN%2FpulseEnergy.photonFlux']
>>> xr.testing.assert_identical(decode(stored), ds)
>>> matlab_names(["SA1_XTD2_XGM/DOOCS/MAIN/pulseEnergy.photonFlux"])
{'SA1_XTD2_XGM/DOOCS/MAIN/pulseEnergy.photonFlux': 'SA1_XTD2_XGM_DOOCS_MAIN_pulseEnergy_photonFlux'}
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import xarray as xr

__all__ = ["ENCODING_ATTR", "JSON_ATTRS", "decode", "decode_attrs", "decode_groups", "decode_name", "encode",
           "encode_attrs", "encode_name", "is_encoded", "json_default", "matlab_names"]

#: Root attr that marks a store written through :func:`encode`, and states the rule.
ENCODING_ATTR = "xfeldata_encoding"
ENCODING = "xfeldata names 1: '%' is '%25' and '/' is '%2F' in names; attrs in xfeldata_json_attrs are JSON"
#: Attr listing (as JSON) the attrs stored as JSON text.
JSON_ATTRS = "xfeldata_json_attrs"

_ESCAPES = {"%": "%25", "/": "%2F"}
_UNESCAPE = re.compile("%25|%2F")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
#: MATLAB's namelengthmax.
MATLAB_NAME_MAX = 63

T = TypeVar("T", xr.Dataset, xr.DataTree)


def encode_name(name: str) -> str:
    """A name without ``/``: ``%`` and ``/`` percent-encoded.

    >>> encode_name("SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos")
    'SA1_XTD2_XGM%2FDOOCS%2FMAIN%2FbeamPosition.ixPos'
    """
    return "".join(_ESCAPES.get(c, c) for c in name)


def decode_name(name: str) -> str:
    """The inverse of :func:`encode_name`.

    >>> decode_name("SA1_XTD2_XGM%2FDOOCS%2FMAIN%2FbeamPosition.ixPos")
    'SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos'
    """
    return _UNESCAPE.sub(lambda m: "%" if m.group(0) == "%25" else "/", name)


def _plain(value: Any) -> bool:
    """Whether an attr value reads back unchanged from netCDF and zarr as it is."""
    if isinstance(value, str):
        return True
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Number | np.number):
        return False
    if isinstance(value, numbers.Integral) and not isinstance(value, np.integer):
        return _INT64[0] <= value <= _INT64[1]
    return not isinstance(value, complex | np.complexfloating)


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy arrays and scalars as lists and numbers."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"attr value {value!r} of type {type(value).__name__} cannot be stored")


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attrs every writer takes: values other than strings and numbers as JSON text.

    Raises
    ------
    TypeError
        For a value JSON cannot hold (naming it).

    >>> encode_attrs({"units": "J", "files": ["a.h5"], "ok": True})
    {'units': 'J', 'files': '["a.h5"]', 'ok': 'true', 'xfeldata_json_attrs': '["files", "ok"]'}
    """
    out: dict[str, Any] = {}
    as_json = []
    for name, value in attrs.items():
        if _plain(value):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=json_default)
            as_json.append(name)
    if as_json:
        out[JSON_ATTRS] = json.dumps(as_json)
    return out


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode_attrs`.

    >>> decode_attrs({'files': '["a.h5"]', 'xfeldata_json_attrs': '["files"]'})
    {'files': ['a.h5']}
    """
    out = dict(attrs)
    listed = out.pop(JSON_ATTRS, None)
    for name in json.loads(listed) if listed else ():
        if name in out:
            out[name] = json.loads(out[name])
    return out


def _map_dataset(ds: xr.Dataset, name: Any, attrs: Any) -> xr.Dataset:
    """``ds`` with every variable and dim renamed by ``name`` and every attrs dict mapped by ``attrs``."""
    renames = {n: name(n) for n in [*ds.variables, *ds.dims] if name(n) != n}
    variables = {}
    for var_name, var in ds.variables.items():
        var = var.copy(deep=False)
        var.attrs = attrs(var.attrs)
        variables[var_name] = var
    out = xr.Dataset({n: v for n, v in variables.items() if n not in ds.coords},
                     coords={n: v for n, v in variables.items() if n in ds.coords},
                     attrs=attrs(ds.attrs))
    return out.rename(renames) if renames else out


def _map(obj: T, name: Any, attrs: Any) -> T:
    if isinstance(obj, xr.Dataset):
        return _map_dataset(obj, name, attrs)
    return obj.map_over_datasets(lambda ds: _map_dataset(ds, name, attrs))


def encode(obj: T) -> T:
    """A Dataset or DataTree with names and attrs mapped for netCDF and zarr (lazy data stays lazy).

    Node names of a DataTree are kept (source names give its groups); the
    root's attrs get :data:`ENCODING_ATTR`.
    """
    out = _map(obj, encode_name, encode_attrs)
    if isinstance(out, xr.DataTree):
        out.attrs = {**out.attrs, ENCODING_ATTR: ENCODING}
    else:
        out.attrs[ENCODING_ATTR] = ENCODING
    return out


def is_encoded(attrs: Mapping[str, Any]) -> bool:
    """Whether root attrs say the store was written through :func:`encode`."""
    return attrs.get(ENCODING_ATTR) == ENCODING


def decode(obj: T, *, encoded: bool | None = None) -> T:
    """The inverse of :func:`encode`.

    Parameters
    ----------
    obj
        What was read back.
    encoded
        Whether ``obj`` was encoded (default: whether its attrs have
        :data:`ENCODING_ATTR`; give it for a group, whose root says).
    """
    if not (is_encoded(obj.attrs) if encoded is None else encoded):
        return obj
    out = _map(obj, decode_name, decode_attrs)
    out.attrs = {k: v for k, v in out.attrs.items() if k != ENCODING_ATTR}
    return out


def decode_groups(groups: Mapping[str, xr.Dataset]) -> dict[str, xr.Dataset]:
    """:func:`decode` for ``{"/path": Dataset}`` as xarray's ``open_groups`` gives (the root says)."""
    encoded = "/" in groups and is_encoded(groups["/"].attrs)
    return {path: decode(ds, encoded=encoded) for path, ds in groups.items()}


def _matlab_identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name, flags=re.ASCII)
    return ident if re.match(r"[A-Za-z]", ident) else f"x{ident}"


def matlab_names(names: Iterable[str]) -> dict[str, str]:
    """MATLAB variable names (letters, digits, ``_``; a letter first; at most 63) for ``names``.

    Other characters become ``_``; a name that is too long or already taken
    keeps its start and ends in 8 hex digits of its hash, so every name gets
    its own identifier.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        ident = _matlab_identifier(name)
        if len(ident) > MATLAB_NAME_MAX or ident in taken:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            ident = f"{ident[:MATLAB_NAME_MAX - 9]}_{digest}"
        out[name] = ident
        taken.add(ident)
    return out
