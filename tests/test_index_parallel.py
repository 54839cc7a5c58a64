"""Indexing in worker processes gives exactly what indexing one file after another gives."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import pytest
from conftest import copy_run

import xfeldata as xd
from xfeldata.errors import FileFormatError, IndexWorkerError
from xfeldata.files import parallel
from xfeldata.files.cache import entry_of
from xfeldata.files.collect import index_files
from xfeldata.files.index import read_file_index
from xfeldata.files.parallel import read_file_indexes, worker_count
from xfeldata.testing import synthetic as syn

XGM = syn.XGM_SOURCE
DA01 = "RAW-R0001-DA01-S00000.h5"


@pytest.fixture
def damaged_run(format_runs, tmp_path) -> list[str]:
    """The 1.3 format run with a bad INDEX entry, a file that is not HDF5 and a truncated
    one, its files listed several times over (so that there are chunks for workers)."""
    run = copy_run(format_runs["1.3"], tmp_path / "r0001")
    with h5py.File(run / DA01, "r+") as f:
        f[f"INDEX/{XGM}/count"][2] = 2**62
    (run / "RAW-R0001-DA09-S00000.h5").write_bytes(b"not HDF5 at all")
    whole = (run / "RAW-R0001-AGIPD00-S00000.h5").read_bytes()
    (run / "RAW-R0001-AGIPD05-S00000.h5").write_bytes(whole[: len(whole) // 3])
    return [str(p) for p in sorted(run.glob("*.h5"))] * 4


def _same(a, b) -> bool:
    if isinstance(a, FileFormatError) or isinstance(b, FileFormatError):
        return type(a) is type(b) and str(a) == str(b) and a.path == b.path
    return repr(entry_of(a)) == repr(entry_of(b)) and a.problems == b.problems and a.damaged.__repr__() == \
        b.damaged.__repr__()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_serial_indexes_problems_and_errors(damaged_run, workers):
    serial = [read_file_index(p) if not p.endswith(("DA09-S00000.h5", "AGIPD05-S00000.h5")) else None
              for p in damaged_run]
    with pytest.raises(FileFormatError):
        read_file_index(next(p for p in damaged_run if p.endswith("DA09-S00000.h5")))
    reference = read_file_indexes(damaged_run, workers=0)
    assert [s is None for s in serial] == [isinstance(r, FileFormatError) for r in reference]
    pooled = read_file_indexes(damaged_run, workers=workers)
    assert len(pooled) == len(reference)
    assert all(_same(a, b) for a, b in zip(reference, pooled, strict=True))
    bad = [r for r in pooled if not isinstance(r, FileFormatError) and r.path.endswith(DA01)]
    assert bad and all(any(f"count={2**62}" in p for p in r.problems) for r in bad)
    assert all(r.damaged for r in bad)


@pytest.mark.timeout(120)
def test_open_with_workers_reports_the_same_warnings(damaged_run, monkeypatch):
    paths = sorted(set(damaged_run))
    def warned(n: str) -> list[str]:
        monkeypatch.setenv(parallel.WORKERS_ENV, n)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            index_files(paths * 3, cache=False)
        return sorted(str(w.message) for w in caught)
    serial, pooled = warned("0"), warned("2")
    assert serial == pooled and any("not HDF5" in m or "DA09" in m for m in serial)


def test_worker_count_threshold_and_switch(monkeypatch):
    monkeypatch.delenv(parallel.WORKERS_ENV, raising=False)
    assert worker_count(parallel.MIN_FILES - 1) == 0
    assert worker_count(5, workers=4) == 1  # no more workers than chunks besides the caller's
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    assert worker_count(10_000) == 0


def _fake_worker(code: str):
    return lambda: subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code, match", [
    ("import sys; sys.exit(3)", "worker process indexing it ended"),
    ("import time; time.sleep(30)", "no index from the worker process"),
])
def test_a_dead_or_hung_worker_is_an_error_naming_the_file_and_is_shut_down(
        damaged_run, monkeypatch, code, match):
    started: list[subprocess.Popen] = []
    fake = _fake_worker(code)
    def start():
        started.append(fake())
        return started[-1]
    monkeypatch.setattr(parallel, "_start_worker", start)
    monkeypatch.setattr(parallel, "TIMEOUT", 1.0)
    with pytest.raises(IndexWorkerError, match=match) as info:
        read_file_indexes(damaged_run * 3, workers=1)
    assert Path(info.value.path).name.startswith("RAW-R0001-")
    assert started and all(p.poll() is not None for p in started)


@pytest.mark.timeout(120)
def test_open_run_with_workers_equals_serial(format_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("XFELDATA_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = copy_run(format_runs["1.3"], tmp_path / "r0001")
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    serial = xd.open_run(run_dir, cache=False)
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    pooled = xd.open_run(run_dir)
    assert list(serial.train_ids) == list(pooled.train_ids)
    assert serial.sources == pooled.sources


def test_a_worker_count_that_is_not_a_number_is_an_error_naming_the_variable(monkeypatch):
    from xfeldata.files import parallel

    monkeypatch.setenv("XFELDATA_INDEX_WORKERS", "two")
    with pytest.raises(ValueError, match="XFELDATA_INDEX_WORKERS.*'two'"):
        parallel.worker_count(1000)
