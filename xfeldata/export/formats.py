"""Everyday formats: control tables as csv/json, arrays as npy and MATLAB files, detector frames as png.

Every writer goes through :func:`xfeldata.export.atomic.atomic_output` (an
existing output only replaced with ``overwrite=True``; a failure leaves no
partial output), shows a progress bar on a terminal, and keeps memory at a
few chunks: tables are written a block of trains at a time, arrays are
stored chunk by chunk by dask, frames a block of trains at a time.

- :func:`write_table`: the scalar per-train values of control sources
  (:meth:`xfeldata.Run.control_frame`) as csv (``trainId`` first) or json
  (a list of ``{"trainId": ..., "source/key": ...}`` records); cells a source
  lacks are empty (csv) or null (json).
- :func:`write_npy`: every variable and coordinate of a Dataset or DataTree
  as one ``.npy`` file, in directories named after the groups and keys
  (``SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos.npy``, ``.../trainId.npy``),
  with ``variables.json`` giving each file's dims and attrs.
- :func:`write_mat`: the same variables as a MATLAB v7.3 file (HDF5; no 2 GB
  limit), one MATLAB variable each (names by
  :func:`xfeldata.export.names.matlab_names`; ``xfeldata_names`` is JSON text
  listing MATLAB name, original name and dims); it reads in MATLAB with
  ``load`` and in Python with ``hdf5storage.loadmat``.
- :func:`write_png`: one 16-bit grayscale image per recorded frame of a
  detector Dataset, module tiles side by side, or assembled with a geometry.

npy, MATLAB and png hold numbers only: a string variable raises
:class:`ValueError` naming it and the formats that can hold it.

Examples
--------
>>> import tempfile, numpy as np, xfeldata as xd
>>> from xfeldata.testing import make_example
>>> tmp = tempfile.mkdtemp()
>>> run = xd.open_run(make_example(tmp + "/r0001", detector=None, n_trains=3))
>>> out = write_table(run.select("SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.*"), tmp + "/xgm.csv",
...                   progress=False)
>>> out.read_text().splitlines()[0]
'trainId,SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos,SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.iyPos'
>>> out = write_npy(run.select("SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.*").to_datatree(), tmp + "/npy",
...                 progress=False)
>>> np.load(out / "SA1_XTD2_XGM/DOOCS/MAIN/trainId.npy").tolist()
[10000, 10001, 10002]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr

from .. import schema
from ..files.progress import tqdm
from ..run import RunSelection
from . import names
from .atomic import atomic_output
from .xarray import dask_writes, hdf5_write_errors

__all__ = ["GEOMETRY_CLASSES", "load_geometry", "table_selection", "write_mat", "write_npy", "write_png",
           "write_table"]

#: Trains per block of a table.
TABLE_BLOCK_TRAINS = 10_000
#: Bytes of pixel data per block of frames for png.
PNG_BLOCK_BYTES = 256 * 2 ** 20
#: Which formats hold what the number-only formats cannot.
HOLD_STRINGS = "nc, zarr, h5 (and csv, json for one value per train of a control source)"
#: MATLAB classes of numpy dtypes (bool is stored as uint8 and decoded as logical).
MATLAB_CLASSES = {
    "b": "logical", "i1": "int8", "i2": "int16", "i4": "int32", "i8": "int64",
    "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "f4": "single", "f8": "double",
}
#: The EXtra-geom class of each detector kind (``xfeldata.detectors.kinds``), for ``load_geometry``.
GEOMETRY_CLASSES = {
    "AGIPD1M": "AGIPD_1MGeometry", "AGIPD500K": "AGIPD_500K2GGeometry", "LPD1M": "LPD_1MGeometry",
    "LPDMINI": "LPD_MiniGeometry", "DSSC1M": "DSSC_1MGeometry", "JUNGFRAU": "JUNGFRAUGeometry",
    "EPIX100": "Epix100Geometry",
}


def _bar(progress: bool | None, desc: str, **kwargs: Any) -> dict[str, Any]:
    return {"desc": desc, "disable": not progress if progress is not None else None, **kwargs}


# ---- tables -------------------------------------------------------------------------------------

def table_selection(run: RunSelection) -> RunSelection:
    """The selection's control sources and their keys of one scalar per train (what a table holds)."""
    picked = {s: [k for k in run.keys(s) if not run.key_info(s, k).entry_shape
                  and not run.key_info(s, k).dtype.names] for s in run.control_sources}
    picked = {s: ks for s, ks in picked.items() if ks}
    if not picked:
        raise ValueError("the selection has no control source with one value per train for a table "
                         "(csv, json); use nc, zarr, h5, npy or mat for instrument and array data")
    return run.select(picked)


def _check_table(run: RunSelection) -> None:
    """Raise naming keys a table cannot hold (instrument sources, arrays, structured)."""
    refused = [f"{s}/{k}" for s in run.sources for k in run.keys(s)
               if s not in run.control_sources or run.key_info(s, k).entry_shape
               or run.key_info(s, k).dtype.names]
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise ValueError(f"{', '.join(refused[:3])}{more}: csv and json hold one value per train of "
                         "control sources; formats that can hold these keys: nc, zarr, h5, npy, mat")


def _json_record(record: dict[str, Any]) -> str:
    """One table row as JSON: floats as Python writes them (exact), NaN (no value) as null."""
    def plain(value: Any) -> Any:
        value = value.item() if isinstance(value, np.generic) else value
        return None if isinstance(value, float) and value != value else value

    return json.dumps({k: plain(v) for k, v in record.items()}, allow_nan=False)


def write_table(run: Any, path: str | os.PathLike, fmt: Literal["csv", "json"] = "csv", *,
                overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write the scalar control values of a selection as a csv or json table, a block of trains at a time.

    Parameters
    ----------
    run
        A run selection of control sources (:func:`table_selection` picks them).
    path
        The output file.
    fmt
        ``"csv"`` (``trainId`` then one column per ``"source/key"``) or
        ``"json"`` (a list of records).
    overwrite, progress
        Replace an existing file; show a progress bar (default on a terminal).

    Raises
    ------
    ValueError
        For keys a table cannot hold (instrument sources, array or structured
        values), naming them and the formats that can.
    """
    _check_table(run)
    path = Path(path)
    parts = run.split_trains(trains_per_part=TABLE_BLOCK_TRAINS) if len(run.train_ids) else [run]
    columns = None
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f, \
            tqdm(total=len(parts), **_bar(progress, f"writing {path.name}", unit="block")) as bar:
        if fmt == "json":
            f.write("[")
        wrote = False
        for part in parts:
            frame = part.control_frame()
            columns = list(frame.columns) if columns is None else columns
            frame = frame.reindex(columns=columns).reset_index()
            if fmt == "csv":
                frame.to_csv(f, header=not wrote, index=False)
                wrote = True
            else:
                for record in frame.to_dict(orient="records"):
                    f.write(("," if wrote else "") + _json_record(record))
                    wrote = True
            bar.update(1)
        if fmt == "json":
            f.write("]\n")
    return path


# ---- arrays -------------------------------------------------------------------------------------

def flat_variables(obj: xr.Dataset | xr.DataTree) -> dict[str, xr.Variable]:
    """Every variable and coordinate of a Dataset, or of every node of a tree as ``"node/name"``."""
    if isinstance(obj, xr.Dataset):
        return dict(obj.variables)
    out = {}
    for node in obj.subtree:
        prefix = node.path.strip("/")
        for name, var in node.to_dataset(inherit=False).variables.items():
            out[f"{prefix}/{name}" if prefix else name] = var
    return out


def _check_numbers(variables: dict[str, xr.Variable], fmt: str) -> None:
    for name, var in variables.items():
        if var.dtype.kind not in "biuf":
            what = "strings" if var.dtype.kind in "OSU" else f"{var.dtype} values"
            raise ValueError(f"{name}: {fmt} cannot hold {what}; formats that can: {HOLD_STRINGS} "
                             "(or leave the key out with --select)")


def _describe(variables: dict[str, xr.Variable]) -> dict[str, Any]:
    return {name: {"dims": list(var.dims), "shape": list(var.shape), "dtype": str(var.dtype),
                   "attrs": var.attrs} for name, var in variables.items()}


def _dask(var: xr.Variable) -> da.Array:
    return var.data if isinstance(var.data, da.Array) else da.from_array(np.asarray(var.values))


def _store(sources: list[da.Array], targets: list[Any], progress: bool | None, desc: str,
           lock: Any = False) -> None:
    """Compute ``sources`` chunk by chunk into ``targets`` (arrays or h5py datasets)."""
    if not sources:
        return
    with dask_writes(progress, desc):
        da.store(sources, targets, lock=lock)


class _NpyFile:
    """A ``.npy`` file being filled: ``target[region] = block`` writes the block's rows with ``pwrite``.

    The file's space is allocated first, so a full disk raises here; the
    blocks are written where they belong, each contiguous run at once, so
    memory holds only the blocks in flight (a memory map would keep every
    page written).
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            self.offset = f.tell()
        self.fd = os.open(path, os.O_WRONLY)
        try:
            os.posix_fallocate(self.fd, 0, self.offset + math.prod(self.shape) * self.dtype.itemsize)
        except BaseException:
            os.close(self.fd)
            raise

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, self.dtype)
        starts = [s.start or 0 for s in region] + [0] * (len(self.shape) - len(region))
        if not block.size:
            return
        # the trailing axes a block covers whole are contiguous in the file, with the axis before them
        split = len(self.shape)
        while split > 0 and block.shape[split - 1] == self.shape[split - 1]:
            split -= 1
        outer = max(split - 1, 0)
        for index in np.ndindex(*block.shape[:outer]):
            where = [start + i for start, i in zip(starts, index, strict=False)] + starts[outer:]
            flat = np.ravel_multi_index(where, self.shape) if self.shape else 0
            os.pwrite(self.fd, block[index].tobytes(), self.offset + int(flat) * self.dtype.itemsize)

    def close(self) -> None:
        os.close(self.fd)


def write_npy(obj: xr.Dataset | xr.DataTree, path: str | os.PathLike, *, overwrite: bool = False,
              progress: bool | None = None) -> Path:
    """Write every variable of a Dataset or DataTree as ``.npy`` files in a directory, chunk by chunk.

    File names are the variable names (a tree's node paths give
    subdirectories) plus ``.npy``; ``variables.json`` gives dims, shape, dtype
    and attrs of each.  Each file's space is allocated before it is filled,
    so a full disk raises an error instead of a crash.

    Raises
    ------
    ValueError
        For a string variable, naming it and the formats that can hold it.
    """
    variables = flat_variables(obj)
    _check_numbers(variables, "npy")
    path = Path(path)
    with atomic_output(path, overwrite=overwrite, directory=True) as tmp:
        sources, targets = [], []
        for name, var in variables.items():
            file = tmp / f"{name}.npy"
            file.parent.mkdir(parents=True, exist_ok=True)
            if var.size == 0:
                np.save(file, np.empty(var.shape, var.dtype))
                continue
            targets.append(_NpyFile(file, var.shape, var.dtype))
            sources.append(_dask(var))
        try:
            _store(sources, targets, progress, f"writing {path.name}")
        finally:
            for target in targets:
                target.close()
        (tmp / "variables.json").write_text(
            json.dumps(_describe(variables), default=names.json_default, indent=1) + "\n")
    return path


def _matlab_layout(var: xr.Variable) -> tuple[da.Array, dict[str, Any]]:
    """The data as hdf5storage stores it for MATLAB (axes reversed; 1-D as a row) and its attrs."""
    data = _dask(var)
    if data.ndim == 0:
        data = data.reshape(1, 1)
    elif data.ndim == 1:
        data = data[np.newaxis, :]
    data = data.T
    dtype = var.dtype
    attrs = {
        "MATLAB_class": np.bytes_(MATLAB_CLASSES["b" if dtype.kind == "b" else dtype.str[1:]]),
        "Python.Shape": np.array(var.shape, np.uint64),
        "Python.Type": np.bytes_("numpy.ndarray"),
        "Python.numpy.Container": np.bytes_("ndarray"),
        "Python.numpy.UnderlyingType": np.bytes_(dtype.name),
    }
    if dtype.kind == "b":
        data = data.astype(np.uint8)
        attrs["MATLAB_int_decode"] = np.int64(1)
    return data, attrs


def write_mat(obj: xr.Dataset | xr.DataTree, path: str | os.PathLike, *, overwrite: bool = False,
              progress: bool | None = None) -> Path:
    """Write every variable of a Dataset or DataTree as a MATLAB v7.3 file, chunk by chunk.

    The file is made by ``hdf5storage`` (the MAT header and the names table
    ``xfeldata_names``: JSON text of ``{"matlab", "name", "dims"}`` records, for
    MATLAB's ``jsondecode``);
    the arrays are then added with h5py in the layout hdf5storage writes
    (MATLAB's column-major axes: an array of shape ``(a, b, c)`` is ``a x b x c``
    in MATLAB), a few chunks at a time.

    Raises
    ------
    ValueError
        For a string variable, naming it and the formats that can hold it.
    """
    import h5py
    import hdf5storage

    variables = flat_variables(obj)
    _check_numbers(variables, "mat")
    matlab = names.matlab_names(["xfeldata_names", *variables])
    table = json.dumps([{"matlab": matlab[n], "name": n, "dims": list(v.dims)} for n, v in variables.items()])
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        hdf5storage.savemat(str(tmp), {"xfeldata_names": table}, format="7.3", appendmat=False)
        with hdf5_write_errors(), h5py.File(tmp, "r+") as f:
            sources, targets = [], []
            for name, var in variables.items():
                data, attrs = _matlab_layout(var)
                chunks = tuple(max(1, c[0]) for c in data.chunks) if data.size else None
                dset = f.create_dataset(matlab[name], shape=data.shape, dtype=data.dtype, chunks=chunks)
                dset.attrs.update(attrs)
                if data.size:
                    sources.append(data)
                    targets.append(dset)
            _store(sources, targets, progress, f"writing {path.name}", lock=True)
    return path


# ---- detector frames ----------------------------------------------------------------------------

def load_geometry(path: str | os.PathLike, kind: str) -> Any:
    """An EXtra-geom geometry of a detector kind from a CrystFEL ``.geom`` file."""
    import extra_geom

    if kind not in GEOMETRY_CLASSES:
        raise ValueError(f"no geometry class for detector kind {kind!r}; known: {', '.join(GEOMETRY_CLASSES)}")
    return getattr(extra_geom, GEOMETRY_CLASSES[kind]).from_crystfel_geom(os.fspath(path))


def _tiles(frames: np.ndarray, module_axis: int) -> np.ndarray:
    """Module frames ``(..., module, slow, fast)`` side by side along the shorter frame axis."""
    frames = np.moveaxis(frames, module_axis, -3)
    slow, fast = frames.shape[-2:]
    return np.concatenate(np.moveaxis(frames, -3, 0), axis=-1 if slow >= fast else -2)


def _png_image(frame: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """16-bit pixels and the PNG text that says how they map to the values."""
    if frame.dtype.kind in "ub" and frame.dtype.itemsize <= 2:
        return frame.astype(np.uint16), {}
    values = frame.astype(np.float64)
    finite = np.isfinite(values)
    low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
    scale = (high - low) / 65534 if high > low else 1.0
    pixels = np.where(finite, np.round((values - low) / scale) + 1, 0).astype(np.uint16)
    return pixels, {"xfeldata.value": f"{low!r} + {scale!r} * (pixel - 1); pixel 0: no value",
                    "xfeldata.dtype": str(frame.dtype)}


def _frames(det: xr.Dataset, geometry: Any) -> tuple[xr.DataArray, xr.DataArray]:
    """The frames to draw (``(trainId, pulse-like, [gain,] rows, columns)``) and which were recorded."""
    data = det["image.data"]
    present = det["present"].any(schema.MODULE_DIM)
    data = data.transpose(..., schema.MODULE_DIM, *schema.PIXEL_DIMS)
    if geometry is not None:
        from ..analysis import assemble

        return assemble(data, geometry), present
    return data, present


def _frame_names(index: dict[str, Any]) -> str:
    return "_".join(f"{dim}{value}" for dim, value in index.items())


def _blocks(n: int, per_block: int) -> Iterator[slice]:
    for start in range(0, n, per_block):
        yield slice(start, min(n, start + per_block))


def write_png(det: xr.Dataset, path: str | os.PathLike, *, geometry: Any = None, overwrite: bool = False,
              progress: bool | None = None) -> Path:
    """Write one 16-bit grayscale png per recorded frame of a detector Dataset, into a directory.

    Files are named by the frame's labels (``trainId10000_pulseId0.png``,
    and ``_gain1`` for each gain plane of raw data).  Without ``geometry``
    the module tiles are laid side by side in module order; with an
    EXtra-geom geometry they are assembled by
    :func:`xfeldata.analysis.assemble`.  Unsigned 8/16-bit data are stored as
    they are; other data (floats, wider integers) are mapped linearly onto
    1..65535 per frame, 0 meaning no value (NaN, gaps), and the PNG text
    ``xfeldata.value`` says how to get the values back.

    Parameters
    ----------
    det
        ``run.detector()`` (any selection of trains, pulses and modules).
    geometry
        An EXtra-geom geometry (:func:`load_geometry` reads a ``.geom`` file).
    """
    from PIL import Image, PngImagePlugin

    if "image.data" not in det or det["image.data"].dtype.kind not in "biuf":
        raise ValueError("png needs the numeric image.data of a detector Dataset (run.detector()); "
                         f"formats that can hold other data: {HOLD_STRINGS}, npy, mat")
    frames, present = _frames(det, geometry)
    lead = [d for d in frames.dims if d in present.dims]
    extra = [d for d in frames.dims[len(lead):-2] if d != schema.MODULE_DIM]
    n_trains = frames.sizes[schema.TRAIN_DIM]
    per_train = frames.nbytes // max(n_trains, 1)
    per_block = max(1, PNG_BLOCK_BYTES // max(per_train, 1))
    path = Path(path)
    with atomic_output(path, overwrite=overwrite, directory=True) as tmp, \
            tqdm(total=int(present.sum()), **_bar(progress, f"writing {path.name}", unit="frame")) as bar:
        for block in _blocks(n_trains, per_block):
            values = frames.isel({schema.TRAIN_DIM: block}).values
            recorded = present.isel({schema.TRAIN_DIM: block}).transpose(*lead).values
            labels = {d: frames[d].values[block] if d == schema.TRAIN_DIM else
                      (frames[d].values if d in frames.coords else np.arange(frames.sizes[d]))
                      for d in [*lead, *extra]}
            for index in zip(*np.nonzero(recorded), strict=True):
                for inner in np.ndindex(*[frames.sizes[d] for d in extra]):
                    frame = values[(*index, *inner)]
                    if geometry is None:
                        frame = _tiles(frame, 0)
                    pixels, text = _png_image(frame)
                    info = PngImagePlugin.PngInfo()
                    for key, value in text.items():
                        info.add_text(key, value)
                    where = dict(zip([*lead, *extra], [*index, *inner], strict=True))
                    name = _frame_names({d: labels[d][i] for d, i in where.items()})
                    Image.fromarray(pixels).save(tmp / f"{name}.png", pnginfo=info)
                bar.update(1)
    return path

