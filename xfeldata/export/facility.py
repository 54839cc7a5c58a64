"""``run.write(path)``: a selection as one file of the facility's format (issue 12).

The selected trains, sources and keys are written with
:class:`xfeldata.files.writer.FileWriter` as format 1.3: INDEX (the selection's
train IDs, suspect trains flagged), METADATA, CONTROL with the RUN values of
each control source, INSTRUMENT with every index group of the selected keys.
Each key keeps its dtype, attributes, chunk rows and deflate/shuffle filters,
and is copied block by block (the blocks of :func:`xfeldata.arrays.flat_rows_blocks`),
so memory stays at a few chunks whatever the size of the run.

The file is written to a temporary name in the target's directory and renamed
when complete: a failure leaves no partial file, and an existing file is only
replaced with ``overwrite=True``.  Input files are never modified.

Not yet: pulse selections within detector trains, and run directories split per
aggregator and sequence.

Examples
--------
>>> import tempfile, xfeldata as xd
>>> from xfeldata.testing import make_example
>>> tmp = tempfile.mkdtemp()
>>> run = xd.open_run(make_example(tmp + "/r0001", detector=None, n_trains=5))
>>> out = write_run(run.isel(trainId=slice(1, 4)).select("SA1_XTD2_XGM/*"), tmp + "/xgm.h5")
>>> xd.open_file(out).train_ids.tolist()
[10001, 10002, 10003]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..arrays import execute_block, flat_rows_blocks
from ..files.index import KeyInfo
from ..files.progress import tqdm
from ..files.writer import FileWriter, Key, RowWriter, Storage
from ..run import RunSelection
from .atomic import atomic_output

__all__ = ["write_run"]


def _key(info: KeyInfo, name: str) -> Key:
    attrs = {k: v for k, v in info.attrs.items() if isinstance(v, str)}
    dtype = "str" if info.dtype.kind in "OS" else info.dtype
    return Key(name, dtype, tuple(info.entry_shape), attrs)


def _storage(info: KeyInfo) -> Storage:
    compression = info.compression if info.compression in ("gzip", "lzf") else None
    level = info.compression_opts if compression == "gzip" and info.compression_opts else 1
    return Storage(rows_per_chunk=info.chunks[0] if info.chunks else None,
                   compression=compression, level=level, shuffle=bool(info.shuffle))


def _copy_rows(run: RunSelection, source: str, key: str, rows: RowWriter) -> None:
    blocks, _ = flat_rows_blocks(run, source, key)
    for block in blocks:
        rows.append(execute_block(block))


def _metadata(run: RunSelection) -> dict[str, str]:
    names = ("runType", "sample", "daqLibrary", "karaboFramework", "creationDate", "updateDate")
    return {n: str(run.metadata[n]) for n in names if n in run.metadata}


def write_run(run: RunSelection, path: str | os.PathLike, *, overwrite: bool = False,
              progress: bool | None = None) -> Path:
    """Write the selection of ``run`` as one file of the facility's format (1.3).

    Parameters
    ----------
    run
        A run or any selection of it (trains, sources, keys).
    path
        The output file.
    overwrite
        Replace an existing file (else :class:`FileExistsError`).
    progress
        Show a progress bar (one step per key); default on a terminal.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = Path(path)
    train_ids = run.train_ids
    meta = run.metadata
    keys = [(s, k) for s in run.sources for k in run.keys(s, timestamps=True)]
    with atomic_output(path, overwrite=overwrite) as tmp, \
            FileWriter(tmp, train_ids, format_version="1.3",
                       good=~np.isin(train_ids, run.suspect_train_ids),
                       proposal=int(meta.get("proposalNumber", 0)),
                       run=int(meta.get("runNumber", 0)), metadata=_metadata(run)) as f, \
            tqdm(total=len(keys), unit="key", desc=f"writing {path.name}",
                 disable=not progress if progress is not None else None) as bar:
        for source in run.sources:
            writers = _add_source(f, run, source)
            for key, rows in writers.items():
                _copy_rows(run, source, key, rows)
                bar.update(1)
    return path


def _add_source(f: FileWriter, run: RunSelection, source: str) -> dict[str, RowWriter]:
    infos = {k: run.key_info(source, k) for k in run.keys(source)}
    keys = [_key(info, k) for k, info in infos.items()]
    storage = {k: _storage(info) for k, info in infos.items()}
    if source in run.control_sources:
        values = run.run_values(source)
        run_values = {k: v for k, v in values.items() if not k.endswith(".timestamp")}
        stamps = [v for k, v in values.items() if k.endswith(".timestamp")]
        return f.add_control(source, keys, run.data_counts(source), run_values=run_values,
                             run_timestamp=int(stamps[0]) if stamps else 0, storage=storage)
    groups = {info.group for info in infos.values()}
    counts = {g: run.data_counts(source, g) for g in groups}
    return f.add_instrument(source, keys, counts, storage=storage)

