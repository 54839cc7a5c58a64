"""The fill rule: what missing cells hold where data is aligned, stacked or padded.

One place for the rule that design.md states (NaN for floats, a documented value for
integers): run views, detectors, ``trains()``, the live buffer and the xarray backend
all fill with :func:`default_fill_value`, or a caller's value checked by
:func:`fill_value_for`.  A leaf module (numpy only), so the command line and the
detector plan use it without importing dask.

>>> default_fill_value(np.dtype("int32"))
0
"""

from __future__ import annotations

from typing import Any

import numpy as np


def default_fill_value(dtype: np.dtype) -> Any:
    """The fill value of missing cells (design.md): NaN for floats, 0 for integers,
    False for bools, ``""`` for strings (``b""`` for bytes), zeros for structured data.

    The one fill rule of the package: run views, detectors, ``trains()``, the live
    buffer and the xarray backend all fill with it (or a caller's value checked by
    :func:`fill_value_for`).

    >>> default_fill_value(np.dtype("float32")), default_fill_value(np.dtype("uint16"))
    (nan, 0)
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return np.nan
    if dtype.kind == "b":
        return False
    if dtype.kind in "OSU":
        return b"" if dtype.kind == "S" else ""
    if dtype.kind == "V":
        return np.zeros((), dtype)
    return 0


def fill_value_for(dtype: np.dtype, fill_value: Any = None) -> Any:
    """The fill value of missing cells: the caller's, else :func:`default_fill_value`.

    A caller's value that ``dtype`` cannot hold exactly (a fraction or NaN for
    integer data, a value out of range) is an error: it would be silently cast.

    >>> fill_value_for(np.dtype("uint16")), fill_value_for(np.dtype("int8"), -1)
    (0, -1)
    >>> fill_value_for(np.dtype("uint16"), 0.5)
    Traceback (most recent call last):
    ...
    ValueError: fill_value 0.5 cannot be stored in uint16 data; give an integer, or convert the data to float first
    """
    dtype = np.dtype(dtype)
    if fill_value is None:
        return default_fill_value(dtype)
    if dtype.kind in "iu":
        if isinstance(fill_value, float) and not float(fill_value).is_integer():
            raise ValueError(f"fill_value {fill_value} cannot be stored in {dtype} data; "
                             "give an integer, or convert the data to float first")
        limits = np.iinfo(dtype)
        if not limits.min <= fill_value <= limits.max:
            raise ValueError(f"fill_value {fill_value} is outside the range of {dtype} data "
                             f"({limits.min} to {limits.max})")
    if dtype.kind in "biufc":
        try:
            with np.errstate(all="raise"):
                typed = np.array(fill_value).astype(dtype, casting="unsafe")[()]
            fits = bool(typed == fill_value) or (dtype.kind in "fc" and np.isnan(typed)
                                                 and np.isnan(fill_value))
        except (TypeError, ValueError, OverflowError, FloatingPointError):
            fits = False
        if not fits:
            raise ValueError(f"fill value {fill_value!r} cannot be stored as {dtype}")
    return fill_value
