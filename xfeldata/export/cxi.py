"""``xfeldata.write_cxi(det, path)``: detector frames as a CXI file, in EXtra-data's layout (issue 12).

The layout is the one EXtra-data's ``write_virtual_cxi`` writes (CXI 1.5),
which CrystFEL and Cheetah read::

    cxi_version                               [150]
    entry_1/experiment_identifier             (frame,) "trainId:pulseId"
    entry_1/trainId, entry_1/pulseId          (frame,) uint64 (memoryCell for JUNGFRAU)
    entry_1/cellId                            (frame, module) memory cell, -1 where missing
    entry_1/present                           (frame, module) 1 where the frame was recorded
    entry_1/instrument_1/detector_1/data      (frame, module, [gain,] slow_scan, fast_scan)
    entry_1/instrument_1/detector_1/{gain,mask}   where the Dataset has them
    entry_1/instrument_1/detector_1/module_identifier   the module numbers
    entry_1/data_1 -> entry_1/instrument_1/detector_1   (soft link)
    entry_1/data_gain                         ["data", "gain"] for raw AGIPD's 5-d data

A frame is a (train, pulse) where any module of the Dataset recorded one, in
train and pulse order; modules without that frame hold EXtra-data's fill
values (data NaN for floats, 0 for integers; gain 0; mask 0xffffffff) and
``present`` 0.  The input is any detector Dataset (``run.detector(...)`` with
any selection of trains, pulses and modules) or the ``frame``-dimension Dataset
of :func:`xfeldata.analysis.select_frames`.  Two differences from EXtra-data:
``module_identifier`` lists the Dataset's modules (EXtra-data always lists all
of the detector's, filled), ``cellId`` is -1, not 0, where a module has
no frame (``present`` is extra), and raw LPD/DSSC frames are
``(slow_scan, fast_scan)`` without the files' length-1 axis (EXtra-data keeps
it as a ``data_gain`` axis of length 1).

Copied (``virtual=False``) the frames are read and written a block of trains
at a time (memory stays at a few blocks, of about :data:`BLOCK_BYTES`); with
``virtual=True`` ``data``, ``gain`` and ``mask`` are HDF5 virtual datasets over
the run's files, which needs a selection of an XTDF detector (AGIPD, LPD,
DSSC) straight from the files: nothing computed on the values.

Examples
--------
>>> import tempfile, h5py, xfeldata as xd
>>> from xfeldata.testing import make_example
>>> tmp = tempfile.mkdtemp()
>>> run = xd.open_run(make_example(tmp + "/r0001", modules=[0, 1], n_trains=3, frames_per_train=2))
>>> out = write_cxi(run.detector(), tmp + "/frames.cxi")
>>> with h5py.File(out) as f:
...     f["entry_1/data_1/data"].shape, f["entry_1/experiment_identifier"].asstr()[0]
((6, 2, 2, 512, 128), '10000:0')
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from ..arrays import BlockRead, GridChunk, read_rows
from ..detectors.kinds import match_detector_source
from ..files.cache import cached_file_index
from ..files.progress import tqdm
from ..files.writer import RowWriter
from ..run import RunFiles, RunSelection, positions_within
from ..schema import CELL_DIM, PULSE_DIM
from .atomic import atomic_output

__all__ = ["write_cxi", "BLOCK_BYTES"]

#: Bytes of frames read and written at a time by a copying ``write_cxi``.
BLOCK_BYTES = 128 * 2**20
#: Dataset variables written, by their name in ``detector_1``.
PIXEL_VARIABLES = {"data": "image.data", "gain": "image.gain", "mask": "image.mask"}
#: EXtra-data's fill values of frames a module does not have (data: NaN or 0, by dtype).
FILL_VALUES = {"gain": 0, "mask": 0xFFFFFFFF}
#: Dask layers that only select or rearrange: data behind them is still the files' data.
SELECTING_LAYERS = ("getitem", "vindex", "transpose", "rechunk", "squeeze")


def _fill(name: str, dtype: np.dtype) -> Any:
    if name == "data":
        return np.nan if dtype.kind == "f" else 0
    return np.asarray(FILL_VALUES[name]).astype(dtype)[()]


class _Frames:
    """The frames of a detector Dataset: labels, the Dataset per frame, blocks to read."""

    def __init__(self, det: xr.Dataset):
        if "image.data" not in det:
            raise ValueError(f"write_cxi needs a detector Dataset with image.data (from run.detector() "
                             f"or analysis.select_frames); this one has {sorted(det.data_vars)}")
        if "module" not in det.dims:
            raise ValueError(f"write_cxi needs a module dimension; the Dataset has {tuple(det.dims)}")
        self.det = det
        self.by_frame = "frame" in det.dims
        self.pulse_dim = PULSE_DIM if PULSE_DIM in det.coords else CELL_DIM
        if self.by_frame:
            self.train_ids = np.asarray(det["trainId"].values, np.uint64)
            self.pulse_ids = np.asarray(det[self.pulse_dim].values, np.uint64)
            self.lead = ("frame", "module")
        else:
            if self.pulse_dim not in det.dims:
                raise ValueError(f"write_cxi needs trainId and pulseId (or cell) dims, or a frame dim; "
                                 f"the Dataset has {tuple(det.dims)}")
            present = self._present(det).any("module").transpose("trainId", self.pulse_dim).values
            self.t_pos, self.p_pos = np.nonzero(present)
            self.train_ids = np.asarray(det["trainId"].values, np.uint64)[self.t_pos]
            self.pulse_ids = np.asarray(det[self.pulse_dim].values, np.uint64)[self.p_pos]
            self.lead = ("trainId", self.pulse_dim, "module")
        self.modules = np.asarray(det["module"].values)
        self.names = [n for n, var in PIXEL_VARIABLES.items() if var in det]

    def _present(self, ds: xr.Dataset) -> xr.DataArray:
        """Which frames of each module were recorded; a ``present`` per pixel (calibrated data,
        False at bad pixels) counts a frame with any pixel present."""
        frame_dims = ("trainId", self.pulse_dim, "frame", "module")
        if "present" in ds:
            present = ds["present"]
            pixels = [d for d in present.dims if d not in frame_dims]
            return present.any(pixels) if pixels else present
        data = ds["image.data"]
        return xr.ones_like(data.isel({d: 0 for d in data.dims if d not in frame_dims}), dtype=bool)

    def __len__(self) -> int:
        return len(self.train_ids)

    def variable(self, name: str) -> xr.DataArray:
        var = self.det[PIXEL_VARIABLES[name]]
        return var.transpose(*self.lead, ...)

    def frame_shape(self, name: str) -> tuple[int, ...]:
        var = self.variable(name)
        return tuple(var.shape[len(self.lead):])

    def blocks(self) -> Iterator[tuple[slice, xr.Dataset, np.ndarray | None]]:
        """``(frames, part of the Dataset, positions of the frames in it)`` a block at a time."""
        frame_bytes = sum(int(np.prod(self.frame_shape(n))) * self.variable(n).dtype.itemsize
                          for n in self.names)
        if self.by_frame:
            step = max(1, BLOCK_BYTES // max(frame_bytes, 1))
            for f0 in range(0, len(self), step):
                f1 = min(len(self), f0 + step)
                yield slice(f0, f1), self.det.isel(frame=slice(f0, f1)), None
            return
        n_trains = self.det.sizes["trainId"]
        per_train = frame_bytes * max(1, self.det.sizes[self.pulse_dim])
        step = max(1, BLOCK_BYTES // max(per_train, 1))
        starts = np.searchsorted(self.t_pos, np.arange(0, n_trains + step, step))
        for i, t0 in enumerate(range(0, n_trains, step)):
            f0, f1 = int(starts[i]), int(starts[i + 1])
            if f0 == f1:
                continue
            picks = (self.t_pos[f0:f1] - t0, self.p_pos[f0:f1])
            yield slice(f0, f1), self.det.isel(trainId=slice(t0, t0 + step)), picks

    def block_values(self, part: xr.Dataset, picks: Any, name: str | None) -> np.ndarray:
        """One block's frames of a variable (``name``), of ``present`` (None) or of ``cellId``."""
        if name is None:
            var = self._present(part)
        elif name == "cellId":
            var = part["cellId"] if "cellId" in part else None
            if var is None:
                return np.full((len(picks[0]) if picks else part.sizes["frame"], len(self.modules)), -1)
        else:
            var = part[PIXEL_VARIABLES[name]]
        values = np.asarray(var.transpose(*self.lead, ...).values)
        if picks is None:
            return values
        if len(picks[0]) == values.shape[0] * values.shape[1]:  # every (train, pulse): no copy
            return values.reshape(-1, *values.shape[2:])
        return values[picks]


def write_cxi(det: xr.Dataset, path: str | os.PathLike, virtual: bool = False, *,
              overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write detector frames as a CXI file in the layout of EXtra-data's ``write_virtual_cxi``.

    Parameters
    ----------
    det
        A detector Dataset (``run.detector(...)``, any selection of trains, pulses
        and modules) or the ``frame``-dimension Dataset of
        :func:`xfeldata.analysis.select_frames`.
    path
        The output file.
    virtual
        Make ``data``, ``gain`` and ``mask`` virtual datasets over the run's files
        (nothing copied); needs an XTDF detector's data as read from the files.
    overwrite
        Replace an existing file (else :class:`FileExistsError`).
    progress
        Show a progress bar (one step per block of frames); default on a terminal.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If ``det`` is not a detector Dataset, or, with ``virtual=True``, its values
        are not straight from the files (the message says why).
    """
    frames = _Frames(det)
    layouts = _virtual_layouts(frames) if virtual else {}
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp, \
            h5py.File(tmp, "w", libver=("v110", "v110")) as f:
        _write_labels(f, frames)
        detector = f["entry_1/instrument_1/detector_1"]
        for name in frames.names:
            var = frames.variable(name)
            shape = (len(frames), len(frames.modules), *frames.frame_shape(name))
            fill = _fill(name, var.dtype)
            if name in layouts:
                dset = detector.create_virtual_dataset(name, layouts[name], fillvalue=fill)
            else:
                dset = detector.create_dataset(name, shape, var.dtype, fillvalue=fill,
                                               chunks=(1, *shape[1:]) if len(frames) else None)
            dset.attrs["axes"] = "experiment_identifier:module_identifier:" + (
                "data_gain:y:x" if len(shape) == 5 else "y:x")
            if len(shape) == 5 and "entry_1/data_gain" not in f:
                f.create_dataset("entry_1/data_gain", data=_data_gain(shape[2]), dtype=h5py.string_dtype())
                detector["data_gain"] = h5py.SoftLink("/entry_1/data_gain")
        _copy_frames(f, frames, [n for n in frames.names if n not in layouts], progress, path.name)
    return path


def _data_gain(n: int) -> list[str]:
    """What each index of the ``data_gain`` axis holds (raw AGIPD: data and gain; LPD: gain stages).

    >>> _data_gain(2), _data_gain(3)
    (['data', 'gain'], ['gain stage 0', 'gain stage 1', 'gain stage 2'])
    """
    if n <= 2:
        return ["data", "gain"][:n]
    return [f"gain stage {i}" for i in range(n)]


def _run_metadata(frames: _Frames) -> dict[str, Any]:
    """METADATA of the first run file the Dataset reads (empty if it reads none)."""
    reads = _block_reads(frames.variable("data"), "data", strict=False)
    path = next((r.path for b in reads for r in b.reads), None)
    return dict(cached_file_index(path).metadata) if path else {}


def _write_labels(f: h5py.File, frames: _Frames) -> None:
    f.create_dataset("cxi_version", data=[150])
    entry = f.create_group("entry_1")
    ids = np.char.add(np.char.add(frames.train_ids.astype(str), ":"), frames.pulse_ids.astype(str))
    entry.create_dataset("experiment_identifier", data=ids.astype(object), dtype=h5py.string_dtype())
    entry.create_dataset("pulseId" if frames.pulse_dim == "pulseId" else "memoryCell", data=frames.pulse_ids)
    entry.create_dataset("trainId", data=frames.train_ids)
    for name in ("cellId", "present"):
        dset = entry.create_dataset(name, (len(frames), len(frames.modules)),
                                    np.int64 if name == "cellId" else np.uint8)
        dset.attrs["axes"] = "experiment_identifier:module_identifier"
    meta = _run_metadata(frames)
    if "proposalNumber" in meta and "runNumber" in meta:  # as EXtra-data: not CXI, but allowed
        entry.attrs["name"] = f"EuXFEL proposal {meta['proposalNumber']} run {meta['runNumber']}"
        entry.attrs["euxfelProposalNumber"] = np.uint32(meta["proposalNumber"])
        entry.attrs["euxfelRunNumber"] = np.uint32(meta["runNumber"])
    detector = entry.create_group("instrument_1/detector_1")
    detector.attrs["name"] = str(frames.det.attrs.get("detector", ""))
    detector["experiment_identifier"] = h5py.SoftLink("/entry_1/experiment_identifier")
    detector.create_dataset("module_identifier", data=frames.modules)
    f["entry_1/data_1"] = h5py.SoftLink("/entry_1/instrument_1/detector_1")


def _copy_frames(f: h5py.File, frames: _Frames, names: list[str], progress: bool | None,
                 label: str) -> None:
    """Write ``cellId``, ``present`` and the variables not virtual, a block of frames at a time."""
    blocks = list(frames.blocks())
    detector = f["entry_1/instrument_1/detector_1"]
    writers = {name: RowWriter(detector[name]) for name in names}  # whole chunks, written directly
    with tqdm(total=len(blocks), unit="block", desc=f"writing {label}",
              disable=not progress if progress is not None else None) as bar:
        for where, part, picks in blocks:
            present = frames.block_values(part, picks, None).astype(bool)
            f["entry_1/present"][where] = present
            cells = frames.block_values(part, picks, "cellId")
            f["entry_1/cellId"][where] = np.where(present, cells, -1)
            for name, rows in writers.items():
                values = frames.block_values(part, picks, name)
                if not present.all():
                    missing = ~present.reshape(present.shape + (1,) * (values.ndim - 2))
                    values = np.where(missing, np.asarray(detector[name].fillvalue, values.dtype), values)
                rows.append(values)
            bar.update(1)
    for rows in writers.values():
        rows.close()


# ----- virtual datasets -------------------------------------------------------
def _reads_of(value: Any) -> list[BlockRead]:
    """The :class:`BlockRead` s a graph value stands for: itself, or the blocks of a :class:`GridChunk`."""
    if isinstance(value, BlockRead):
        return [value]
    if isinstance(value, GridChunk):
        return [b for b in value.grid.blocks.values() if isinstance(b, BlockRead)]
    return []


def _block_reads(var: xr.DataArray, name: str, strict: bool = True) -> list[BlockRead]:
    """The file reads behind a variable; with ``strict``, ValueError if its values are not the files' values."""
    from dask.array import Array

    from ..detectors.stacking import _GridArray

    data = var.variable._data
    why = None
    if isinstance(data, Array):
        layers = data.dask.layers
        detector_layers = [n for n in layers if n.startswith("xfeldata-detector-")]
        other = [n.split("-")[0] for n in layers if n not in detector_layers and not n.startswith(SELECTING_LAYERS)]
        if (other and strict) or not detector_layers:
            why = (f"{name} is computed ({', '.join(sorted(set(other)))} on the data)" if other
                   else f"{name} is not read from run files")
        else:
            return [read for n in detector_layers for v in layers[n].values() for read in _reads_of(v)]
    else:
        inner = data
        while not isinstance(inner, _GridArray) and hasattr(inner, "array"):
            inner = inner.array
        if isinstance(inner, _GridArray):
            return [b for b in inner.grid.blocks.values() if isinstance(b, BlockRead)]
        why = f"{name} is in memory ({type(inner).__name__}), not a lazy selection of run files"
    if not strict:
        return []
    raise ValueError(f"write_cxi(virtual=True): {why}, so it cannot be a virtual dataset over the "
                     "files; write it with virtual=False (copied)")


def _virtual_layouts(frames: _Frames) -> dict[str, h5py.VirtualLayout]:
    """``{name: layout}`` of the pixel variables, mapped frame by frame onto the files' rows."""
    if frames.pulse_dim != "pulseId":
        raise ValueError("write_cxi(virtual=True) maps frames by pulse ID: it needs an XTDF detector "
                         "(AGIPD, LPD, DSSC), not one with memory cells in a row; use virtual=False")
    det = frames.det
    if det.attrs.get("frames_per_pulse", 1) > 1 or (
            str(det.attrs.get("kind", "")).startswith("LPD") and "gain" in det["image.data"].dims):
        raise ValueError("write_cxi(virtual=True) maps a frame to one row of the files; LPD parallel gain "
                         "stores each pulse in several rows (one per gain stage); use virtual=False")
    reads = {name: [r for b in _block_reads(frames.variable(name), name) for r in b.reads]
             for name in frames.names}
    paths = sorted({r.path for rs in reads.values() for r in rs})
    run = RunSelection(RunFiles([cached_file_index(p) for p in paths]))
    sources = {match_detector_source(r.source)[1]: r.source for rs in reads.values() for r in rs}
    layouts = {}
    for name in frames.names:
        var = frames.variable(name)
        shape = (len(frames), len(frames.modules), *frames.frame_shape(name))
        layouts[name] = h5py.VirtualLayout(shape, dtype=var.dtype)
    present = np.concatenate([frames.block_values(part, picks, None).astype(bool)
                              for _, part, picks in frames.blocks()]) if len(frames) else \
        np.zeros((0, len(frames.modules)), bool)
    for j, module in enumerate(frames.modules.tolist()):
        if module not in sources or not present[:, j].any():
            continue
        frame_no = np.flatnonzero(present[:, j])
        file_no, rows = _rows_of(run, sources[module], frames.train_ids[frame_no], frames.pulse_ids[frame_no])
        cut = np.flatnonzero((np.diff(frame_no) != 1) | (np.diff(rows) != 1) | (np.diff(file_no) != 0)) + 1
        for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, len(frame_no)].tolist(), strict=True):
            fno, r0 = int(file_no[a]), int(rows[a])
            for name in frames.names:
                info = run.file_key_info(fno, sources[module], PIXEL_VARIABLES[name])
                vsrc = h5py.VirtualSource(run.file(fno).path, info.path, shape=info.shape, dtype=info.dtype)
                part = vsrc[r0:r0 + b - a]
                if len(info.entry_shape) == len(layouts[name].shape) - 1:  # raw LPD/DSSC: (rows, 1, ss, fs)
                    part = vsrc[r0:r0 + b - a, 0]
                layouts[name][int(frame_no[a]):int(frame_no[a]) + b - a, j] = part
    return layouts


def _rows_of(run: RunSelection, source: str, train_ids: np.ndarray, pulse_ids: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """File number and dataset row of each (train, pulse) frame of a module source."""
    pids, found = read_rows(run.select(source), source, "image.pulseId")
    pids = (pids.reshape(len(pids), -1)[:, 0] if pids.ndim > 1 else pids).astype(np.int64)
    counts = found.count.astype(np.int64)
    row_tid = np.repeat(found.train_ids, counts)
    row_file = np.repeat(found.file_no, counts)
    row_in_file = np.repeat(found.first.astype(np.int64), counts) + positions_within(counts)
    tids = np.unique(row_tid)
    width = int(max(pids.max(initial=0), int(pulse_ids.max(initial=0)))) + 1
    row_key = np.searchsorted(tids, row_tid) * width + pids
    order = np.argsort(row_key, kind="stable")
    if len(row_key) > 1 and (np.diff(row_key[order]) == 0).any():
        raise ValueError(f"write_cxi(virtual=True): {source} has several frames with one pulse ID in a "
                         "train (LPD parallel gain), which cannot be told apart; use virtual=False")
    t = np.searchsorted(tids, train_ids)
    ok = (t < len(tids)) & (tids[np.minimum(t, max(len(tids) - 1, 0))] == train_ids)
    want = np.where(ok, t, 0) * width + pulse_ids.astype(np.int64)
    pos = np.minimum(np.searchsorted(row_key[order], want), max(len(order) - 1, 0))
    ok &= row_key[order][pos] == want if len(order) else False
    if not ok.all():
        bad = np.flatnonzero(~ok)[0]
        raise ValueError(f"write_cxi(virtual=True): frame {train_ids[bad]}:{pulse_ids[bad]} of {source} "
                         "is not in the files the Dataset was read from")
    hit = order[pos]
    return row_file[hit], row_in_file[hit]
