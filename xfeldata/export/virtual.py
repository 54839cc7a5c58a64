"""``run.write_virtual(path)``: one file of HDF5 virtual datasets over the run's files (issue 12).

Every selected key becomes a virtual dataset whose rows are the key's rows
for the selected trains, in train order, mapped onto the datasets of the run's
files: no data is copied, and the file is only usable where the run's files
are (at the paths they had when the run was opened).  INDEX (trains,
timestamps, flags, per-source first/count), METADATA and the RUN values of
control sources are real datasets, as the facility's format has them, so
EXtra-data's ``H5File`` and xfeldata open it as one run file.  ``pulses=``
keeps only some detector frames, as for :func:`~xfeldata.export.facility.write_run`.

A key without rows in the selection is an empty (real) dataset.

Examples
--------
>>> import tempfile, h5py, xfeldata as xd
>>> from xfeldata.testing import make_example
>>> tmp = tempfile.mkdtemp()
>>> run = xd.open_run(make_example(tmp + "/r0001", detector=None, n_trains=5))
>>> out = write_virtual(run.select("SA1_XTD2_XGM/*"), tmp + "/virtual.h5")
>>> with h5py.File(out) as f:
...     f["CONTROL/SA1_XTD2_XGM/DOOCS/MAIN/beamPosition/ixPos/value"].is_virtual
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..files.progress import tqdm
from ..files.writer import STRING_DTYPE, FileWriter, RowWriter, Storage
from ..run import RunSelection
from .atomic import atomic_output
from .facility import _add_source, kept_blocks, new_file
from .frames import FRAME_GROUP, check_frames, kept_rows

__all__ = ["write_virtual"]


class _VirtualFileWriter(FileWriter):
    """A :class:`FileWriter` whose key datasets are the virtual layouts in :attr:`layouts`."""

    #: ``{dataset path: h5py.VirtualLayout}`` of the datasets to make virtual.
    layouts: dict[str, h5py.VirtualLayout]

    def _create(self, group: h5py.Group, path: str, n_rows: int, dtype, entry_shape,
                storage: Storage) -> RowWriter:
        layout = self.layouts.get(f"{group.name}/{path}".lstrip("/"))
        if layout is None or n_rows == 0:
            return super()._create(group, path, n_rows, dtype, entry_shape, storage)
        dset = group.create_virtual_dataset(path, layout, fillvalue=None)
        return RowWriter(dset)


def _layout(run: RunSelection, source: str, key: str, keep: np.ndarray | None) -> tuple[str, h5py.VirtualLayout]:
    """The dataset path and the virtual layout of one key's (kept) rows in the selected trains."""
    info = run.key_info(source, key)
    blocks = kept_blocks(run, source, key, keep)
    n_rows = sum(b.shape[0] for b in blocks)
    on_disk: dict[tuple[str, str], tuple[tuple[int, ...], np.dtype]] = {}
    for block in blocks:
        for read in block.reads:
            if not isinstance(read.target, int | np.integer):
                raise TypeError(f"{source} {key}: rows scattered in a block cannot be mapped")
            if (read.path, read.dataset) not in on_disk:
                with h5py.File(read.path, "r") as f:
                    dset = f[read.dataset]
                    on_disk[read.path, read.dataset] = dset.shape, dset.dtype
    dtype = _string_dtype(source, key, [d for _, d in on_disk.values()]) if info.dtype.kind == "O" else info.dtype
    layout = h5py.VirtualLayout((n_rows, *info.entry_shape), dtype=dtype)
    sources = {where: h5py.VirtualSource(*where, shape=shape, dtype=dtype) for where, (shape, _) in on_disk.items()}
    offset = 0
    for block in blocks:
        for read in block.reads:
            start = offset + int(read.target)
            layout[start:start + read.stop - read.start] = sources[read.path, read.dataset][read.start:read.stop]
        offset += block.shape[0]
    return info.path.lstrip("/"), layout


def _string_dtype(source: str, key: str, dtypes: list[np.dtype]) -> np.dtype:
    """The string dtype of a virtual dataset: its files' own (HDF5 converts no string between
    ASCII and UTF-8, nor between fixed and variable length, in a virtual dataset's mapping).

    >>> _string_dtype("SRC", "state", [h5py.string_dtype()]) == h5py.string_dtype()
    True
    """
    kinds = {h5py.check_string_dtype(d): d for d in dtypes}  # (numpy's == ignores the encoding)
    if not kinds:
        return STRING_DTYPE
    if len(kinds) > 1:
        raise TypeError(f"{source} {key}: its files store strings in {len(kinds)} different ways "
                        f"({sorted(str(k) for k in kinds)}), which one virtual dataset cannot map; "
                        "write a copy instead (run.write)")
    return next(iter(kinds.values()))


def write_virtual(run: RunSelection, path: str | os.PathLike, *, pulses: Any = None,
                  overwrite: bool = False, progress: bool | None = None,
                  parallel_gain: bool | None = None) -> Path:
    """Write the selection of ``run`` as one file of virtual datasets over its files.

    Parameters
    ----------
    run
        A run or any selection of it (trains, sources, keys).
    path
        The output file.
    pulses
        Keep only these detector frames (as :func:`~xfeldata.export.facility.write_run`).
    overwrite
        Replace an existing file (else :class:`FileExistsError`).
    progress
        Show a progress bar (one step per source); default on a terminal.
    parallel_gain
        LPD's gain stages stored in sequence, for ``pulses`` (as for write_run).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    framed = check_frames(run, pulses, parallel_gain) if pulses is not None else []
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp, \
            new_file(run, tmp, run.train_ids, writer=_VirtualFileWriter) as f, \
            tqdm(total=len(run.sources), unit="source", desc=f"writing {path.name}",
                 disable=not progress if progress is not None else None) as bar:
        f.file.attrs["virtual"] = "HDF5 virtual datasets over the run's files"
        for source in run.sources:
            keep = kept_rows(run, source, pulses, parallel_gain) if source in framed else None
            f.layouts = dict(
                _layout(run, source, key, keep[0] if keep is not None and key.startswith(FRAME_GROUP + ".")
                        else None)
                for key in run.keys(source, timestamps=True))
            _add_source(f, run, source, keep)
            bar.update(1)
    return path
