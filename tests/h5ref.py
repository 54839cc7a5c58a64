"""Reference reader for tests: what a run holds, read straight with h5py.

Independent of xfeldata's index and arrays on purpose: it walks every file of a
run directory, reads ``INDEX`` (``first``/``count``, or the old
``first``/``last``/``status``) and returns the rows of each train, so tests can
compare xarray views with the bytes on disk.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def _index(f: h5py.File, index_path: str) -> tuple[np.ndarray, np.ndarray]:
    grp = f[index_path]
    first = grp["first"][()].astype(np.int64)
    if "count" in grp:
        count = grp["count"][()].astype(np.int64)
    else:  # old index format: first, last, status
        count = (grp["last"][()].astype(np.int64) - first + 1) * grp["status"][()].astype(np.int64)
    return first, count


def _paths(f: h5py.File, source: str, key: str) -> tuple[str, str]:
    """(index group path, dataset path) of a key in one file."""
    if f"CONTROL/{source}" in f:
        if key.endswith(".timestamp"):
            return f"INDEX/{source}", f"CONTROL/{source}/{key[:-10].replace('.', '/')}/timestamp"
        return f"INDEX/{source}", f"CONTROL/{source}/{key.replace('.', '/')}/value"
    group = key.split(".", 1)[0]
    return f"INDEX/{source}/{group}", f"INSTRUMENT/{source}/{key.replace('.', '/')}"


def h5_rows(run_dir: str | Path, source: str, key: str) -> dict[int, np.ndarray]:
    """``{train ID: rows of the key in that train}`` for every train with rows, from all files.

    Zero (padding) train IDs are skipped; a train with rows in two files raises.
    """
    out: dict[int, np.ndarray] = {}
    for path in sorted(Path(run_dir).glob("*.h5")):
        with h5py.File(path, "r") as f:
            if f"CONTROL/{source}" not in f and f"INSTRUMENT/{source}" not in f:
                continue
            index_path, data_path = _paths(f, source, key)
            if data_path not in f:
                continue
            tids = f["INDEX/trainId"][()]
            first, count = _index(f, index_path)
            data = f[data_path][()]
            for i, tid in enumerate(tids[: len(first)].tolist()):
                if tid == 0 or count[i] == 0:
                    continue
                assert tid not in out, f"train {tid} of {source} {key} in two files"
                out[tid] = data[first[i]: first[i] + count[i]]
    return dict(sorted(out.items()))


def h5_train_ids(run_dir: str | Path) -> np.ndarray:
    """Sorted union of the non-zero train IDs of every file of a run."""
    tids = set()
    for path in Path(run_dir).glob("*.h5"):
        with h5py.File(path, "r") as f:
            tids.update(int(t) for t in f["INDEX/trainId"][()] if t != 0)
    return np.array(sorted(tids), np.uint64)


def decode(values: np.ndarray) -> list:
    """Variable-length byte strings as ``str`` (other values unchanged)."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in np.ravel(values).tolist()]
