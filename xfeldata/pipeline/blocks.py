"""A pipeline step over a whole run, block by block of trains, as one lazy xarray object.

:func:`offline` cuts the trains of ``inputs(run)`` into blocks and makes one
dask task per block, ``fn(inputs(run).isel(trainId=block))`` computed in
that task.  The result is one Dataset (or DataArray, as ``fn`` returns) over
all trains whose variables are dask arrays with one chunk per block, so it
computes on threads, processes or a ``dask.distributed`` cluster, and a
block's memory is all a worker holds at a time.

Because each block is ``inputs(run)`` sliced (not ``inputs`` of a smaller
run), its coordinates are those of the whole run (the union of pulse IDs,
the modules found), and the result equals ``fn(inputs(run))`` computed in
one piece.  The structure of the result (variables, dimensions, dtypes,
coordinates other than ``trainId``) is learned from ``fn`` applied to the
first train; a block whose result differs from it raises
:class:`~xfeldata.pipeline.PipelineError`, as does a step that drops
trains: results are never silently missing.

Examples
--------
>>> import xfeldata as xd
>>> from xfeldata.pipeline import offline
>>> run = xd.open_run("r0001")                                     # doctest: +SKIP
>>> def fn(ds):
...     return ds["image.data"].isel(gain=0).astype("f4").mean(["slow_scan", "fast_scan"])
>>> per_frame = offline(fn, run, trains_per_block=4)                # doctest: +SKIP
>>> per_frame.compute()                                             # doctest: +SKIP
"""

from __future__ import annotations

import operator
import uuid
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .errors import PipelineError
from .steps import Inputs, Step, as_dataset, default_inputs

__all__ = ["block_bounds", "offline"]

#: Input bytes per block when ``trains_per_block`` is not given.
TARGET_BLOCK_BYTES = 256 * 2**20


def block_bounds(n_trains: int, trains_per_block: int) -> list[tuple[int, int]]:
    """Positions ``(start, stop)`` of the train blocks.

    Examples
    --------
    >>> block_bounds(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    if trains_per_block < 1:
        raise ValueError(f"trains_per_block must be at least 1, not {trains_per_block}")
    return [(i, min(i + trains_per_block, n_trains)) for i in range(0, n_trains, trains_per_block)]


def _default_block(ds: xr.Dataset | xr.DataArray, n_trains: int) -> int:
    per_train = max(1, ds.nbytes // max(1, n_trains))
    return max(1, int(TARGET_BLOCK_BYTES // per_train))


def _name(fn: Step) -> str:
    return getattr(fn, "__name__", "fn")


def _train_span(tids: np.ndarray) -> str:
    return f"{tids[0]}-{tids[-1]}" if len(tids) > 1 else f"{tids[0]}"


def _layout(probe: xr.Dataset) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], np.dtype]]:
    """The variables along ``trainId`` of a probe result: dims, shape, dtype."""
    return {name: (var.dims, var.shape, var.dtype) for name, var in probe.variables.items()
            if "trainId" in var.dims and name != "trainId"}


def _run_block(fn: Step, inputs: Inputs, run: Any, start: int, stop: int,
               layout: dict[str, tuple[tuple[str, ...], tuple[int, ...], np.dtype]],
               indexes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One block's result: ``fn(inputs(run).isel(trainId=slice(start, stop)))``, checked.

    Runs where the task runs (a thread, a process, a cluster worker); the
    block is computed there on one thread.
    """
    block = inputs(run).isel(trainId=slice(start, stop))
    tids = np.asarray(block["trainId"].values)
    where = f"trains {_train_span(tids)}" if len(tids) else f"train positions {start}-{stop - 1}"
    try:
        result = as_dataset(fn(block), _name(fn))
        result = result.compute(scheduler="synchronous")
    except PipelineError as exc:
        raise PipelineError(f"{exc} (on {where})") from exc
    except Exception as exc:
        raise PipelineError(f"{_name(fn)} failed on {where}: {type(exc).__name__}: {exc}") from exc
    got = np.asarray(result["trainId"].values)
    if not np.array_equal(got, tids):
        raise PipelineError(
            f"{_name(fn)} returned {len(got)} trains for the {len(tids)} trains {_train_span(tids)}; "
            "a pipeline step keeps every input train (mask values with NaN instead of dropping trains)")
    for name, values in indexes.items():
        if name in result.indexes and not np.array_equal(result[name].values, values):
            raise PipelineError(f"{_name(fn)} on {where} gave coordinate {name!r} {result[name].values!r}, "
                                f"not {values!r} as on the first train")
    out = {}
    for name, (dims, shape, dtype) in layout.items():
        if name not in result.variables:
            raise PipelineError(f"{_name(fn)} on {where} gave no variable {name!r} (the first train did)")
        var = result.variables[name]
        if set(var.dims) != set(dims):
            raise PipelineError(f"{_name(fn)} on {where}: {name!r} has dimensions {var.dims}, "
                                f"not {dims} as on the first train")
        values = np.asarray(var.transpose(*dims).values)
        want = tuple(len(tids) if d == "trainId" else n for d, n in zip(dims, shape, strict=True))
        if values.shape != want:
            raise PipelineError(f"{_name(fn)} on {where}: {name!r} has shape {values.shape}, not {want}")
        out[name] = values.astype(dtype, copy=False)
    return out


def offline(fn: Step, run: Any, inputs: Inputs | None = None,
            trains_per_block: int | None = None) -> xr.Dataset | xr.DataArray:
    """``fn`` over every train of ``run``, block by block of trains, lazily.

    Parameters
    ----------
    fn
        The step: ``fn(ds)`` takes what ``inputs`` builds (with some of its
        trains) and returns a Dataset or DataArray with the same trains along
        ``trainId``.  It must pickle to run on processes or a cluster (a
        function defined at module level, or in a script loaded with
        :func:`~xfeldata.pipeline.load_script`).
    run
        A :class:`~xfeldata.Run` (any selection of one).
    inputs
        ``inputs(d)`` builds ``fn``'s input from a Run or LiveBuffer, e.g.
        ``lambda d: d.detector(modules=[0, 1])``; default: ``d.detector()``.
        It only builds lazy objects (no data is read when it is called).
    trains_per_block
        Trains per task; default: blocks of about 256 MiB of input.

    Returns
    -------
    xarray.Dataset or xarray.DataArray
        Lazy (dask, one chunk per block along ``trainId``); ``.compute()``
        it, or write it with :func:`~xfeldata.pipeline.write_results`.
        Variables without a ``trainId`` dimension are taken from the first
        train's result.

    Raises
    ------
    PipelineError
        ``fn`` fails on the first train or breaks the contract there (when
        called); a block fails or breaks it (when computed), named by its
        trains.

    Examples
    --------
    >>> total = offline(lambda ds: ds["image.data"].sum(["slow_scan", "fast_scan"]),
    ...                 run, trains_per_block=8)                   # doctest: +SKIP
    >>> total.sel(trainId=10005).values                            # doctest: +SKIP
    """
    inputs = default_inputs if inputs is None else inputs
    full = inputs(run)
    if "trainId" not in full.dims:
        raise PipelineError(f"inputs must give an xarray object with a trainId dimension, "
                            f"not dimensions {tuple(full.dims)}")
    tids = np.asarray(full["trainId"].values)
    if not len(tids):
        raise PipelineError("the inputs hold no trains")
    raw = fn(full.isel(trainId=slice(0, 1)))
    probe = as_dataset(raw, _name(fn))
    layout = _layout(probe)
    indexes = {name: np.asarray(idx) for name, idx in probe.indexes.items() if name != "trainId"}
    n = trains_per_block or _default_block(full, len(tids))

    token = uuid.uuid4().hex[:12]
    # The run, fn and inputs (with whatever fn's globals hold, e.g. calibration constants)
    # enter the graph once, not once per block.
    run_key = dask.delayed(run, name=f"xfeldata-run-{token}")
    fn_key = dask.delayed(fn, name=f"xfeldata-fn-{token}")
    inputs_key = dask.delayed(inputs, name=f"xfeldata-inputs-{token}")
    pieces: dict[str, list] = {name: [] for name in layout}
    for i, (start, stop) in enumerate(block_bounds(len(tids), n)):
        block = dask.delayed(_run_block, pure=False)(
            fn_key, inputs_key, run_key, start, stop, layout, indexes,
            dask_key_name=f"{_name(fn)}-block-{token}-{i}")
        for name, (dims, shape, dtype) in layout.items():
            axis = dims.index("trainId")
            part_shape = shape[:axis] + (stop - start,) + shape[axis + 1:]
            values = dask.delayed(operator.getitem)(block, name, dask_key_name=f"{name}-{token}-{i}")
            pieces[name].append(da.from_delayed(values, part_shape, dtype=dtype))

    variables = {}
    for name, var in probe.variables.items():
        if name == "trainId":
            continue
        if name in layout:
            axis = var.dims.index("trainId")
            variables[name] = xr.Variable(var.dims, da.concatenate(pieces[name], axis=axis), var.attrs)
        else:
            variables[name] = var.compute()
    coords = {name: variables.pop(name) for name in list(variables) if name in probe.coords}
    coords["trainId"] = xr.Variable("trainId", tids, probe["trainId"].attrs)
    result = xr.Dataset({name: variables[name] for name in probe.data_vars}, coords=coords,
                        attrs=probe.attrs)
    if isinstance(raw, xr.DataArray):
        name = raw.name if raw.name is not None else "result"
        out = result[name]
        return out if raw.name is not None else out.rename(None)
    return result
