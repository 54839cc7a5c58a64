"""What a pipeline step is: ``fn(inputs(d))`` with ``d`` a Run or a LiveBuffer.

A step is a plain function ``fn(ds)`` from an xarray object with a ``trainId``
dimension to an xarray object with a ``trainId`` dimension, one result per
input train.  ``inputs(d)`` builds ``ds`` with calls that a
:class:`~xfeldata.Run` and a :class:`~xfeldata.bridge.LiveBuffer` share
(``d.detector(...)``, ``d.dataset(...)``), so one definition serves files and
streams.

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset({"x": ("trainId", np.arange(3.0))},
...                 coords={"trainId": np.array([5, 6, 7], dtype=np.uint64)})
>>> list(as_dataset(ds["x"]).data_vars)
['x']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import xarray as xr

from .errors import PipelineError

__all__ = ["Inputs", "Step", "apply_step", "as_dataset", "default_inputs"]

#: ``inputs(d)``: a Run or LiveBuffer to the xarray object a step takes.
Inputs = Callable[[Any], "xr.Dataset | xr.DataArray"]
#: ``fn(ds)``: the step itself.
Step = Callable[["xr.Dataset | xr.DataArray"], "xr.Dataset | xr.DataArray"]


def default_inputs(d: Any) -> xr.Dataset:
    """The inputs when none are given: the only detector, ``d.detector()``.

    Examples
    --------
    >>> default_inputs(run)["image.data"].dims[:3]     # doctest: +SKIP
    ('trainId', 'pulseId', 'module')
    """
    return d.detector()


def as_dataset(result: xr.Dataset | xr.DataArray, what: str = "fn") -> xr.Dataset:
    """A step's result as a Dataset with a ``trainId`` dimension (a DataArray becomes one variable).

    An unnamed DataArray becomes the variable ``result``.

    Raises
    ------
    PipelineError
        The result is no xarray object, or has no ``trainId`` dimension.
    """
    if isinstance(result, xr.DataArray):
        result = result.to_dataset(name=result.name if result.name is not None else "result")
    if not isinstance(result, xr.Dataset):
        raise PipelineError(f"{what} must return an xarray Dataset or DataArray, "
                            f"not {type(result).__name__}")
    if "trainId" not in result.dims:
        raise PipelineError(f"{what} must return an xarray object with a trainId dimension; "
                            f"its result has dimensions {tuple(result.dims)}")
    return result


def apply_step(fn: Step, inputs: Inputs, d: Any) -> xr.Dataset:
    """``fn(inputs(d))`` as a Dataset, checked (see :func:`as_dataset`)."""
    return as_dataset(fn(inputs(d)), getattr(fn, "__name__", "fn"))
