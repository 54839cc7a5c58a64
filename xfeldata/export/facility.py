"""``run.write(path)``: a selection in the facility's format, as one file or as a run directory (issue 12).

The selected trains, sources and keys are written with
:class:`xfeldata.files.writer.FileWriter` as format 1.3: INDEX (the selection's
train IDs and timestamps, suspect trains flagged), METADATA, CONTROL with the
RUN values of each control source, INSTRUMENT with every index group of the
selected keys.  Each key keeps its dtype, attributes, chunk rows and
deflate/shuffle filters, and is copied block by block (the blocks of
:func:`xfeldata.arrays.flat_rows_blocks`), so memory stays at a few chunks
whatever the size of the run.

``pulses=`` keeps only some frames of the detector modules: what
``run.detector(pulses=...)`` takes, or a boolean ``(trainId, pulseId[, module])``
DataArray (see :mod:`xfeldata.export.frames`); their ``image`` rows are the
frames kept, ``INDEX/.../image/first,count`` count them, and only those rows
are read.

**One file or a run directory**: a path that ends with ``/`` or is an existing
directory gets a run directory as the DAQ writes it, one file per aggregator
and sequence, ``<CLASS>-R<run>-<AGGREGATOR>-S<seq>.h5``, each sequence file
holding ``trains_per_file`` trains (default :data:`TRAINS_PER_FILE`); a
:class:`pathlib.Path` drops a trailing ``/``, so pass a ``str`` or create the
directory first.  A
source keeps the aggregator and data class (RAW/CORR) of the files it comes
from; sources from files not named so go to their detector module's aggregator
(``AGIPD03``) or to ``DA01``.  Any other path gets one file.

Every output is written to a temporary name in the target's directory and
renamed when complete (:mod:`xfeldata.export.atomic`): a failure leaves no
partial output, and an existing one is only replaced with ``overwrite=True``.
Input files are never modified.

Examples
--------
>>> import tempfile, xfeldata as xd
>>> from xfeldata.testing import make_example
>>> tmp = tempfile.mkdtemp()
>>> run = xd.open_run(make_example(tmp + "/r0001", detector=None, n_trains=5))
>>> out = write_run(run.isel(trainId=slice(1, 4)).select("SA1_XTD2_XGM/*"), tmp + "/xgm.h5")
>>> xd.open_file(out).train_ids.tolist()
[10001, 10002, 10003]
>>> out = write_run(run, tmp + "/copy/", trains_per_file=2)
>>> sorted(p.name for p in out.iterdir())[:3]
['RAW-R0001-DA01-S00000.h5', 'RAW-R0001-DA01-S00001.h5', 'RAW-R0001-DA01-S00002.h5']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import BlockRead, execute_block, flat_rows_blocks
from ..detectors.kinds import detector_kind_of_source, match_detector_source
from ..files.index import KeyInfo
from ..files.layout import file_name, parse_file_name
from ..files.progress import tqdm
from ..files.writer import FileWriter, Key, RowWriter, Storage
from ..run import RunSelection
from .atomic import atomic_output
from .frames import FRAME_GROUP, check_frames, kept_rows

__all__ = ["write_run", "TRAINS_PER_FILE", "is_directory_target", "key_spec", "key_storage",
           "kept_blocks", "new_file"]

#: Trains per sequence file of a run directory written by :func:`write_run`.
TRAINS_PER_FILE = 256
#: Rows are read in batches of about this many bytes, each handed to the writer at once
#: (at least the size at which a RowWriter writes, so it never concatenates them).
BATCH_BYTES = 64 * 2**20


def key_spec(info: KeyInfo, name: str) -> Key:
    """The :class:`~xfeldata.files.writer.Key` of a key as stored in the input."""
    attrs = {k: v for k, v in info.attrs.items() if isinstance(v, str)}
    dtype = "str" if info.dtype.kind in "OS" else info.dtype
    return Key(name, dtype, tuple(info.entry_shape), attrs)


def key_storage(info: KeyInfo) -> Storage:
    """The chunk rows and filters of a key as stored in the input."""
    compression = info.compression if info.compression in ("gzip", "lzf") else None
    level = info.compression_opts if compression == "gzip" and info.compression_opts else 1
    return Storage(rows_per_chunk=info.chunks[0] if info.chunks else None,
                   compression=compression, level=level, shuffle=bool(info.shuffle))


def kept_blocks(run: RunSelection, source: str, key: str, keep: np.ndarray | None) -> list[BlockRead]:
    """The read blocks of a key's rows in the selected trains, restricted to the ``keep`` rows."""
    blocks, _ = flat_rows_blocks(run, source, key)
    if keep is None:
        return blocks
    out, offset = [], 0
    for block in blocks:
        n = block.shape[0]
        rows = np.flatnonzero(keep[offset:offset + n])
        offset += n
        if len(rows):
            out.append(block if len(rows) == n else block.restrict((rows,)))
    return out


def _copy_rows(run: RunSelection, source: str, key: str, rows: RowWriter,
               keep: np.ndarray | None = None) -> None:
    """Copy a key's (kept) rows, read straight into batches of about :data:`BATCH_BYTES`."""
    batch: list[BlockRead] = []
    size = 0
    for block in kept_blocks(run, source, key, keep):
        batch.append(block)
        size += int(np.prod(block.shape)) * block.dtype.itemsize
        if size >= BATCH_BYTES:
            rows.append(_read_batch(batch))
            batch, size = [], 0
    if batch:
        rows.append(_read_batch(batch))
    rows.close()  # write what is buffered now: a file's keys are not held until it closes


def _read_batch(blocks: list[BlockRead]) -> np.ndarray:
    """Blocks of rows read one after another into one new array (no concatenation)."""
    if len(blocks) == 1:
        return execute_block(blocks[0])
    first = blocks[0]
    out = np.empty((sum(b.shape[0] for b in blocks), *first.shape[1:]), first.dtype)
    offset = 0
    for block in blocks:
        execute_block(block, out=out[offset:offset + block.shape[0]])
        offset += block.shape[0]
    return out


def _metadata(run: RunSelection) -> dict[str, str]:
    names = ("runType", "sample", "daqLibrary", "karaboFramework", "creationDate", "updateDate")
    return {n: str(run.metadata[n]) for n in names if n in run.metadata}


def is_directory_target(path: str | os.PathLike) -> bool:
    """The rule for a run directory output: a path ending with ``/`` or an existing directory.

    >>> is_directory_target("out/"), is_directory_target("out.h5")
    (True, False)
    """
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def new_file(run: RunSelection, path: Path, train_ids: np.ndarray, sequence: int = 0,
             writer: type[FileWriter] = FileWriter) -> FileWriter:
    """A :class:`FileWriter` for some of the selection's trains, with the run's INDEX and METADATA facts."""
    sub = run.sel(trainId=train_ids) if len(train_ids) != len(run.train_ids) else run
    meta = run.metadata
    return writer(path, sub.train_ids, format_version="1.3",
                  timestamps=sub.train_timestamps_ns(),
                  good=~np.isin(sub.train_ids, run.suspect_train_ids),
                  proposal=int(meta.get("proposalNumber", 0)), run=int(meta.get("runNumber", 0)),
                  sequence=sequence, metadata=_metadata(run))


def write_run(run: RunSelection, path: str | os.PathLike, *, pulses: Any = None,
              trains_per_file: int = TRAINS_PER_FILE, overwrite: bool = False,
              progress: bool | None = None, parallel_gain: bool | None = None) -> Path:
    """Write the selection of ``run`` in the facility's format (1.3): one file, or a run directory.

    Parameters
    ----------
    run
        A run or any selection of it (trains, sources, keys).
    path
        The output file; a path ending with ``/`` or an existing directory gets a
        run directory, one file per aggregator and sequence (see the module's
        docstring).
    pulses
        Keep only these frames of the detector modules: pulse IDs, ``by_id[...]``,
        ``by_index[...]`` (as ``run.detector(pulses=...)``), or a boolean DataArray
        with dims ``(trainId, pulseId[, module])``, True for the frames to keep.
        Every gain stage of a kept LPD pulse is kept.
    trains_per_file
        Trains per sequence file of a run directory.
    overwrite
        Replace an existing output (else :class:`FileExistsError`).
    progress
        Show a progress bar (one step per key and file); default on a terminal.
    parallel_gain
        LPD's gain stages stored in sequence, for ``pulses``: as for
        ``run.detector(parallel_gain=...)`` (True for real parallel-gain files,
        whose later stages record junk pulse IDs).

    Returns
    -------
    pathlib.Path
        The file or directory written.

    Raises
    ------
    FileExistsError
        If the output exists and ``overwrite`` is False (nothing is written).
    ValueError
        For ``pulses`` without detector modules in the selection, or naming
        pulses no module has.
    """
    if trains_per_file < 1:
        raise ValueError(f"trains_per_file must be at least 1, not {trains_per_file}")
    framed = check_frames(run, pulses, parallel_gain) if pulses is not None else []
    directory = is_directory_target(path)
    path = Path(path)
    if directory and path.is_dir() and not any(path.iterdir()):
        overwrite = True  # an empty directory holds nothing to lose
    if directory:
        plan = _directory_plan(run, trains_per_file)
    else:
        plan = [(path.name, 0, run.sources, run.train_ids)]
    steps = sum(len(run.keys(s, timestamps=True)) for _, _, sources, _ in plan for s in sources)
    with atomic_output(path, overwrite=overwrite, directory=directory) as tmp, \
            tqdm(total=steps, unit="key", desc=f"writing {path.name}",
                 disable=not progress if progress is not None else None) as bar:
        for name, sequence, sources, train_ids in plan:
            target = tmp / name if directory else tmp
            sub = run.sel(trainId=train_ids) if directory else run
            with new_file(run, target, train_ids, sequence) as f:
                for source in sources:
                    keep = kept_rows(sub, source, pulses, parallel_gain) if source in framed else None
                    writers = _add_source(f, sub, source, keep)
                    for key, rows in writers.items():
                        group_keep = keep[0] if keep is not None and _group(key) == FRAME_GROUP else None
                        _copy_rows(sub, source, key, rows, group_keep)
                        bar.update(1)
    return path


def _group(key: str) -> str:
    return key.split(".", 1)[0]


def _aggregator(run: RunSelection, source: str) -> tuple[str, str]:
    """``(data class, aggregator)`` of a source: from the name of the first file holding it."""
    for fi in run.file_indexes:
        parsed = parse_file_name(fi.name)
        if source in fi.sources and parsed:
            return parsed.data_class, parsed.aggregator
    kind = detector_kind_of_source(source)
    return "RAW", kind.aggregator(match_detector_source(source)[1]) if kind else "DA01"


def _directory_plan(run: RunSelection, trains_per_file: int
                    ) -> list[tuple[str, int, list[str], np.ndarray]]:
    """``(file name, sequence, sources, train IDs)`` of every file of a run directory."""
    by_aggregator: dict[tuple[str, str], list[str]] = {}
    for source in run.sources:
        by_aggregator.setdefault(_aggregator(run, source), []).append(source)
    run_no = int(run.metadata.get("runNumber", 0))
    tids = run.train_ids
    parts: Sequence[np.ndarray] = [tids[i:i + trains_per_file] for i in range(0, len(tids), trains_per_file)] \
        or [tids]
    return [(file_name(cls, run_no, agg, seq), seq, sources, part)
            for (cls, agg), sources in sorted(by_aggregator.items(), key=lambda kv: kv[0][1])
            for seq, part in enumerate(parts)]


def _add_source(f: FileWriter, run: RunSelection, source: str,
                keep: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, RowWriter]:
    infos = {k: run.key_info(source, k) for k in run.keys(source)}
    keys = [key_spec(info, k) for k, info in infos.items()]
    storage = {k: key_storage(info) for k, info in infos.items()}
    if source in run.control_sources:
        values = run.run_values(source)
        run_values = {k: v for k, v in values.items() if not k.endswith(".timestamp")}
        stamps = [v for k, v in values.items() if k.endswith(".timestamp")]
        return f.add_control(source, keys, run.data_counts(source), run_values=run_values,
                             run_timestamp=int(stamps[0]) if stamps else 0, storage=storage)
    groups = {info.group for info in infos.values()}
    counts = {g: keep[1] if keep is not None and g == FRAME_GROUP else run.data_counts(source, g)
              for g in groups}
    return f.add_instrument(source, keys, counts, storage=storage)
