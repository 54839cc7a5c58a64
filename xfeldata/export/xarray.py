"""xarray outputs: any Dataset or DataTree of xfeldata as netCDF or zarr, lazily, and read back.

``run.to_datatree()`` (one group per source) writes with xarray's own
``to_zarr``/``to_netcdf`` too; :func:`write_netcdf` and :func:`write_zarr`
also take ``run.dataset()`` and detector Datasets, whose names xarray's
writers refuse (``"source/key"``), through the one mapping of
:mod:`xfeldata.export.names`, and write atomically (a temporary name beside
the target, renamed when complete) with a progress bar on a terminal.  The
data are computed chunk by chunk by dask, so memory stays at a few chunks.
:func:`open_export` (or ``xr.open_dataset(path, engine="xfeldata")``) reads an
export back with the original names and attrs, lazily.

Examples
--------
>>> import tempfile, xarray as xr, xfeldata as xd
>>> from xfeldata.testing import make_example
>>> tmp = tempfile.mkdtemp()
>>> run = xd.open_run(make_example(tmp + "/r0001", detector=None, n_trains=3))
>>> ds = run.select("SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.*").dataset()
>>> path = write_netcdf(ds, tmp + "/xgm.nc", progress=False)
>>> back = open_export(path)
>>> xr.testing.assert_identical(back.compute(), ds.compute())
>>> list(back.data_vars)[0]
'SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos'
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from tqdm.dask import TqdmCallback
from xarray.coding.strings import create_vlen_dtype

from ..files.progress import tqdm
from ..views import uniform_dask
from . import names
from .atomic import atomic_output

__all__ = ["dask_writes", "hdf5_write_errors", "open_export", "write_netcdf", "write_zarr"]

Obj = xr.Dataset | xr.DataArray | xr.DataTree


@contextmanager
def dask_writes(progress: bool | None, desc: str) -> Iterator[None]:
    """Run the dask computations of the block on threads of its own, with a progress bar.

    When the block fails (a full disk, Ctrl-C), it waits for the tasks already
    running and drops the others before the error goes on, so that no task
    writes (or makes anew) the output after it has been removed.
    """
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        with dask.config.set(scheduler="threads", pool=pool), \
                TqdmCallback(tqdm_class=tqdm, desc=desc, unit="task",
                             disable=not progress if progress is not None else None):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def hdf5_write_errors() -> Iterator[None]:
    """HDF5's failures to write or close a file it could not extend (a full disk) as :class:`OSError`.

    h5py raises ``RuntimeError`` when closing such a file; the write's own
    error, or the system error HDF5 names (``errno = 28``), is what a user needs.
    """
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc.__context__, OSError):
            raise exc.__context__ from None
        found = re.search(r"errno = (\d+)", str(exc))
        if found:
            raise OSError(int(found.group(1)), str(exc)) from None
        raise


def _vlen_strings(var: xr.Variable) -> xr.Variable:
    """String data marked as variable-length str: xarray need not load lazy data to find out, and
    zarr stores it in the data type its specification has."""
    vlen = create_vlen_dtype(str)
    if var.dtype.kind == "O" and isinstance(var.data, da.Array):
        return var.copy(deep=False, data=var.data.map_blocks(np.asarray, meta=np.empty((0,) * var.ndim, vlen)))
    if var.dtype.kind == "U":
        return var.copy(deep=False, data=np.asarray(var.values, dtype=vlen))
    return var


def _uniform(var: xr.Variable) -> xr.Variable:
    """Dask chunks zarr can hold: equal along each dim but the last one (the largest chunk)."""
    if not isinstance(var.data, da.Array):
        return var
    chunks = var.data.chunks
    if all(len(c) <= 1 or (len(set(c[:-1])) == 1 and c[-1] <= c[0]) for c in chunks):
        return var
    return var.chunk(dict(zip(var.dims, [max(c) for c in chunks], strict=True)))


def _prepare_dataset(ds: xr.Dataset, store: str) -> xr.Dataset:
    ds = uniform_dask(ds)  # the detector's arrays beside dask arrays of one's own: xarray writes them together
    variables = {}
    for name, var in ds.variables.items():
        var = _vlen_strings(var)
        variables[name] = _uniform(var) if store == "zarr" else var
    coords = {n: v for n, v in variables.items() if n in ds.coords and n not in ds.indexes}  # scalar ones too
    return ds.copy(data={n: variables[n] for n in ds.data_vars}).assign_coords(coords)


def _prepare(obj: Obj, store: str) -> Obj:
    encoded = names.encode(obj)
    if isinstance(encoded, xr.Dataset):
        return _prepare_dataset(encoded, store)
    return encoded.map_over_datasets(lambda ds: _prepare_dataset(ds, store))


def _write(obj: Obj, path: str | os.PathLike, store: Literal["netcdf", "zarr"], overwrite: bool,
           progress: bool | None) -> Path:
    if isinstance(obj, xr.DataArray):  # (a profile, an image stack): as a Dataset of that one variable
        obj = obj.to_dataset(name=obj.name if obj.name is not None else "data")
    if not isinstance(obj, xr.Dataset | xr.DataTree):
        raise TypeError(f"write_{store} takes an xarray Dataset, DataArray or DataTree, not {type(obj).__name__}")
    prepared = _prepare(obj, store)
    path = Path(path)
    with atomic_output(path, overwrite=overwrite, directory=store == "zarr") as tmp, \
            warnings.catch_warnings():
        # zarr 3 warns that consolidated metadata is not in its format's specification yet;
        # xarray reads it first, and falls back to the plain metadata without it.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        # compute=True: xarray closes the file also when a write fails
        with hdf5_write_errors(), dask_writes(progress, f"writing {path.name}"):
            if store == "netcdf":
                prepared.to_netcdf(tmp, engine="h5netcdf")
            else:
                prepared.to_zarr(tmp, mode="w")
    return path


def write_netcdf(obj: Obj, path: str | os.PathLike, *, overwrite: bool = False,
                 progress: bool | None = None) -> Path:
    """Write a Dataset or DataTree of xfeldata as one netCDF-4 file (h5netcdf), chunk by chunk.

    Names and attrs netCDF refuses are mapped by :func:`xfeldata.export.names.encode`;
    :func:`open_export` maps them back.

    Parameters
    ----------
    obj
        ``run.dataset()``, ``run.to_datatree()``, ``run.detector()``, or any
        Dataset/DataTree (lazy or not); a DataArray is written as a Dataset
        of its one variable (named as the DataArray, else ``data``).
    path
        The output file.
    overwrite
        Replace an existing file (else :class:`FileExistsError` before anything is written).
    progress
        Show a progress bar (one step per dask task); default on a terminal.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    return _write(obj, path, "netcdf", overwrite, progress)


def write_zarr(obj: Obj, path: str | os.PathLike, *, overwrite: bool = False,
               progress: bool | None = None) -> Path:
    """Write a Dataset or DataTree of xfeldata as a zarr store (a directory), chunk by chunk.

    Like :func:`write_netcdf`; dask chunks that differ in size along a
    dimension (they follow the HDF5 files) are made equal first, as zarr needs.
    """
    return _write(obj, path, "zarr", overwrite, progress)


def open_export(path: str | os.PathLike, *, chunks: Any = None, **kwargs: Any) -> Obj:
    """Open a netCDF file or zarr store written by xfeldata, with the original names and attrs.

    A store with groups (``run.to_datatree()``) opens as a DataTree, one
    without as a Dataset.  Data are read lazily (dask with ``chunks={}``).

    Parameters
    ----------
    path
        A ``.nc`` file or a zarr directory.
    chunks, **kwargs
        Passed to :func:`xarray.open_datatree` / :func:`xarray.open_dataset`.

    Examples
    --------
    >>> ds = open_export("r0001.nc", chunks={})      # doctest: +SKIP
    """
    ds = xr.open_dataset(path, engine="xfeldata", chunks=chunks, **kwargs)
    if ds.variables:
        return ds
    ds.close()  # a tree's root holds only attrs
    return xr.open_datatree(path, engine="xfeldata", chunks=chunks, **kwargs)
