"""Hostile and damaged run files: nothing hangs, nothing lies, nothing is lost.

Each case corrupts a private copy of a fixture run with h5py (or plain file
writes) in ``tmp_path``, then checks the exact behaviour: a clear error naming
file, source and key (and rows or trains), or correct data.  The damaged input
files are hashed after they are made and again after xfeldata has read them:
they never change.  Hangs are bounded by ``pytest.mark.timeout``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import copy_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xfeldata as xd
from xfeldata.arrays import read_rows
from xfeldata.detectors.kinds import DETECTORS
from xfeldata.errors import DataIndexError, DataReadError, FileChangedError, FileFormatError
from xfeldata.files.cache import RUN_DIR_CACHE
from xfeldata.files.handles import handles
from xfeldata.testing import synthetic as syn
from xfeldata.validate import validate_run

AGIPD = DETECTORS["AGIPD1M"]
XGM = syn.XGM_SOURCE
XGM_OUT = f"{XGM}:output"
IXPOS = "beamPosition.ixPos"
DA01 = "RAW-R0001-DA01-S00000.h5"


def digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every run file of a directory (links that lead nowhere skipped)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.glob("*.h5"))
            if p.is_file()}


@pytest.fixture
def small_run(format_runs, tmp_path) -> Path:
    """A private copy of the 1.3 format run (modules 0-1, DA01, DA02; 7 trains)."""
    return copy_run(format_runs["1.3"], tmp_path / "r0001")


@pytest.fixture
def seq_run(slow_only_run, tmp_path) -> Path:
    """A private copy of the slow-only run (DA01/DA02, 2 sequence files each)."""
    return copy_run(slow_only_run, tmp_path / "r0001")


@pytest.fixture(autouse=True)
def _fresh_handles():
    """Damaged files must not stay open in the process-wide handle cache."""
    handles.clear()
    yield
    handles.clear()


def set_index(path: Path, index_path: str, **arrays: np.ndarray) -> None:
    """Replace INDEX datasets (``first=...``, ``count=...``) with the given arrays."""
    with h5py.File(path, "r+") as f:
        for name, values in arrays.items():
            del f[f"{index_path}/{name}"]
            f[f"{index_path}/{name}"] = values


def xgm_truth(run_dir: Path) -> np.ndarray:
    with h5py.File(run_dir / DA01, "r") as f:
        return f[f"CONTROL/{XGM}/beamPosition/ixPos/value"][:]


# ----- 1, 2: impossible INDEX entries ---------------------------------------------------

@pytest.mark.timeout(60)
def test_huge_count_on_a_control_source_is_reported_and_neither_hangs_nor_grows(small_run):
    victim = small_run / DA01
    with h5py.File(victim, "r+") as f:
        f[f"INDEX/{XGM}/count"][2] = 2**62
    before = digests(small_run)
    with pytest.warns(UserWarning, match=f"{DA01}.*INDEX/{XGM}.*train 10002: first=2, count={2**62}"):
        run = xd.open_run(small_run)
    with pytest.raises(DataIndexError, match=f"{victim}.*{XGM}.*{IXPOS}.*10002"):
        run[XGM, IXPOS]
    others = run.sel(trainId=[10000, 10001, 10003])
    np.testing.assert_array_equal(others[XGM, IXPOS].values, xgm_truth(small_run)[[0, 1, 3]])
    assert others.data_counts(XGM).max() == 1  # no count of 2**62 reaches any table
    assert digests(small_run) == before


@pytest.mark.timeout(60)
def test_huge_count_on_a_detector_is_an_index_error_not_a_memory_error(small_run):
    victim = small_run / "RAW-R0001-AGIPD00-S00000.h5"
    src = AGIPD.source(0)
    with h5py.File(victim, "r+") as f:
        f[f"INDEX/{src}/image/count"][1] = 2**40
    before = digests(small_run)
    with pytest.warns(UserWarning, match=f"{victim.name}.*INDEX/{src}/image"):
        run = xd.open_run(small_run)
    with pytest.raises(DataIndexError, match=f"{victim}.*{src}.*image.data.*10001"):
        run[src, "image.data"]
    with pytest.raises(DataIndexError, match=f"{victim}.*{src}.*10001"):
        run.train_from_id(10001, devices={src: {"image.data"}})
    _, data = run.train_from_id(10002, devices={src: {"image.data"}})
    with h5py.File(victim, "r") as f:
        first = int(f[f"INDEX/{src}/image/first"][2])
        np.testing.assert_array_equal(data[src]["image.data"], f[f"INSTRUMENT/{src}/image/data"][first:first + 2])
    assert digests(small_run) == before


BAD_ENTRIES = {
    "first uint64 max": (np.uint64, 2**64 - 1, 1),
    "first int64 -1": (np.int64, -1, 1),
    "first + count wraps past 2**64": (np.uint64, 2, 2**64 - 1),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", ["contiguous", "chunked"])
@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_negative_or_overflowing_index_never_reads_outside_the_dataset(small_run, case, layout):
    dtype, first, count = BAD_ENTRIES[case]
    victim = small_run / DA01
    truth = xgm_truth(small_run)
    with h5py.File(victim, "r+") as f:
        index = f"INDEX/{XGM}"
        firsts, counts = f[f"{index}/first"][:].astype(np.int64), f[f"{index}/count"][:].astype(np.int64)
        value = f"CONTROL/{XGM}/beamPosition/ixPos/value"
        del f[value]
        f.create_dataset(value, data=truth, chunks=(1,) if layout == "chunked" else None)
    firsts, counts = firsts.astype(object), counts.astype(object)
    firsts[3], counts[3] = first, count
    set_index(victim, index, first=np.array(firsts.tolist(), dtype), count=np.array(counts.tolist(), dtype))
    before = digests(small_run)
    with pytest.warns(UserWarning, match=f"{DA01}.*{index}.*train 10003"):
        run = xd.open_run(small_run)
    assert any("train 10003" in p.message for p in validate_run(small_run))
    with pytest.raises(DataIndexError, match=f"{victim}.*{XGM}.*{IXPOS}.*10003"):
        run[XGM, IXPOS]
    with pytest.raises(DataIndexError, match=f"{victim}.*{XGM}.*{IXPOS}.*10003"):
        run.train_from_id(10003, devices={XGM: {IXPOS}})
    rest = run.sel(trainId=[10000, 10001, 10002, 10004])
    np.testing.assert_array_equal(rest[XGM, IXPOS].values, truth[[0, 1, 2, 5]])  # 4: the suspect train
    assert digests(small_run) == before


def test_index_arrays_of_the_wrong_type_or_length_are_reported(small_run):
    victim = small_run / DA01
    with h5py.File(victim, "r+") as f:
        n = len(f[f"INDEX/{XGM}/first"])
    set_index(victim, f"INDEX/{XGM}", first=np.arange(n, dtype=np.float64))
    set_index(victim, f"INDEX/{XGM}:output/data", count=np.ones(n - 2, np.uint64))
    before = digests(small_run)
    messages = [p.message for p in validate_run(small_run) if p.file == str(victim)]
    assert any(f"INDEX/{XGM}/first is not a 1-d integer array (float64" in m for m in messages)
    assert any(f"INDEX/{XGM}:output/data: first and count differ in length ({n} and {n - 2})" in m
               for m in messages)
    with pytest.warns(UserWarning, match=f"INDEX/{XGM}"):
        run = xd.open_run(small_run)
    with pytest.raises(DataIndexError, match=f"{victim}.*{XGM}.*{IXPOS}"):
        run[XGM, IXPOS]
    assert digests(small_run) == before


def test_the_xarray_engine_raises_on_set_aside_index_entries(small_run):
    victim = small_run / DA01
    with h5py.File(victim, "r+") as f:
        f[f"INDEX/{XGM}/first"][3] = 2**64 - 1
    before = digests(small_run)
    with pytest.warns(UserWarning, match=f"INDEX/{XGM}"):
        with pytest.raises(DataIndexError, match=f"{victim}.*{XGM}.*{IXPOS}.*10003"):
            xr.open_dataset(small_run, engine="xfeldata", source=XGM)
    assert digests(small_run) == before


# ----- 3: a file changed while its run is open ------------------------------------------

def test_a_file_replaced_by_another_runs_file_is_not_read_under_the_old_index(small_run, slow_only_run):
    run = xd.open_run(small_run)
    truth = run[XGM, IXPOS].values  # the file is now open in the handle cache
    foreign = small_run / "foreign.tmp"
    shutil.copyfile(slow_only_run / DA01, foreign)
    os.replace(foreign, small_run / DA01)
    handles.clear()  # as after the cache closed it: the next read opens the new file
    with pytest.raises(FileChangedError, match=f"{small_run / DA01}: file changed since the run was opened"):
        np.asarray(run[XGM, IXPOS])
    with pytest.raises(FileChangedError, match=DA01):
        run.train_from_index(0, devices={XGM: {IXPOS}})
    reopened = xd.open_run(small_run)  # re-indexed: reads the new content
    assert not np.array_equal(reopened.train_ids, run.train_ids) or \
        not np.array_equal(reopened[XGM, IXPOS].values, truth)


@pytest.mark.parametrize("damage", ["truncated", "overwritten in place"])
def test_a_file_changed_in_place_while_open_raises_naming_it(small_run, damage):
    src = AGIPD.source(0)
    victim = small_run / "RAW-R0001-AGIPD00-S00000.h5"
    run = xd.open_run(small_run)
    np.asarray(run[src, "image.data"][:1])  # opens the file in the handle cache
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            f.write(b"\xff" * 4096)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    with pytest.raises(FileChangedError, match=str(victim)):
        np.asarray(run[src, "image.data"])
    with pytest.raises(FileChangedError, match=str(victim)):
        run.train_from_index(0, devices={src: {"image.data"}})
    with pytest.raises(FileChangedError, match=str(victim)):
        np.asarray(run.detector(dask=False)["image.data"])


def test_readers_kept_with_an_open_file_are_not_used_for_a_changed_file(small_run):
    # trains() keeps one reader per dataset with the open file (where its rows are):
    # a file replaced since must not be read through them
    run = xd.open_run(small_run)
    devices = {XGM: {IXPOS}}
    before = [d[XGM][f"{IXPOS}.value"] for _, d in run.trains(devices=devices)]  # files stay open
    victim, changed = small_run / DA01, small_run / "changed.tmp"
    shutil.copyfile(victim, changed)
    with h5py.File(changed, "r+") as f:
        f[f"CONTROL/{XGM}/{IXPOS.replace('.', '/')}/value"][...] *= -1
    os.replace(changed, victim)
    reopened = xd.open_run(small_run)
    try:
        after = [d[XGM][f"{IXPOS}.value"] for _, d in reopened.trains(devices=devices)]
    except FileChangedError:  # the handle cache still held the old file: it is dropped now
        after = [d[XGM][f"{IXPOS}.value"] for _, d in reopened.trains(devices=devices)]
    assert after == [-b for b in before] and any(before)


def test_the_xarray_engine_does_not_read_a_replaced_file(small_run, slow_only_run):
    ds = xr.open_dataset(small_run, engine="xfeldata", source=XGM)
    shutil.copyfile(slow_only_run / DA01, small_run / "foreign.tmp")
    os.replace(small_run / "foreign.tmp", small_run / DA01)
    with pytest.raises(FileChangedError, match=DA01):
        np.asarray(ds[IXPOS])


# ----- 4: a damaged index cache ------------------------------------------------------

def _deeply_nested_cache(path: Path) -> None:
    """A well-formed cache file (magic bytes, right checksum) whose JSON header nests 100000 deep."""
    header = ("[" * 100_000 + "]" * 100_000).encode()
    prefix = struct.Struct("<8sII")
    path.write_bytes(prefix.pack(path.read_bytes()[:8], zlib.crc32(header), len(header)) + header)


CACHE_DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied": lambda p: p.write_bytes(b""),
    "bit-flipped": lambda p: p.write_bytes(
        (lambda b: b[:len(b) // 3] + bytes([b[len(b) // 3] ^ 0x10]) + b[len(b) // 3 + 1:])(p.read_bytes())),
    "deeply nested JSON header": _deeply_nested_cache,
}


@pytest.mark.parametrize("which", [RUN_DIR_CACHE.name, "runs.bin"])  # the files' index, the run states
@pytest.mark.parametrize("damage", sorted(CACHE_DAMAGE))
def test_a_damaged_index_cache_is_ignored_with_a_warning_and_rebuilt(small_run, damage, which):
    good = xd.open_run(small_run)
    cache = small_run / RUN_DIR_CACHE.with_name(which)
    assert cache.exists()
    CACHE_DAMAGE[damage](cache)
    before = digests(small_run)
    with pytest.warns(UserWarning, match=f"{cache}: damaged index cache ignored"):
        run = xd.open_run(small_run)
        # opened from the run state, the files' index cache is read when a file's index is first needed
        np.testing.assert_array_equal(run[XGM, IXPOS].values, good[XGM, IXPOS].values)
    assert run.train_ids.tolist() == good.train_ids.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next open reads it without complaint
        again = xd.open_run(small_run)
        assert again.train_ids.tolist() == good.train_ids.tolist()
        np.testing.assert_array_equal(again[XGM, IXPOS].values, good[XGM, IXPOS].values)
    assert digests(small_run) == before


def test_cache_false_sees_a_file_rewritten_with_the_same_size_and_mtime(small_run):
    victim = small_run / DA01
    xd.open_run(small_run)  # writes the cache
    st = victim.stat()
    with h5py.File(victim, "r+") as f:  # same size: overwrite values in place
        f[f"INDEX/{XGM}/count"][0] = 0
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size
    # the stat-based cache key cannot tell (documented); cache=False reads the file
    fresh = xd.open_run(small_run, cache=False)
    assert fresh.data_counts(XGM)[0] == 0


# ----- 5: dtype and shape changes between sequence files ---------------------------------

def _replace_dataset(path: Path, name: str, data: np.ndarray) -> None:
    with h5py.File(path, "r+") as f:
        del f[name]
        f[name] = data


def test_a_dtype_change_between_sequence_files_is_promoted_not_truncated(seq_run):
    key_path = f"CONTROL/{XGM}/current/bottom/rangeCode/value"
    second = seq_run / "RAW-R0001-DA01-S00001.h5"
    with h5py.File(seq_run / DA01, "r") as f:
        assert f[key_path].dtype == np.int32
        head = f[key_path][:]
    with h5py.File(second, "r") as f:
        n = len(f[key_path])
    tail = np.arange(n) + 0.25
    _replace_dataset(second, key_path, tail)
    before = digests(seq_run)
    run = xd.open_run(seq_run)
    values = run[XGM, "current.bottom.rangeCode"]
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values.values, np.concatenate([head, tail])[:len(run.train_ids)])
    problems = [p for p in validate_run(seq_run) if "rangeCode" in p.message]
    assert problems and DA01 in problems[0].message and second.name in problems[0].message
    assert "read as float64" in problems[0].message
    assert digests(seq_run) == before


def test_a_dtype_change_without_common_type_raises_naming_both_files(seq_run):
    key_path = f"CONTROL/{XGM}/current/bottom/rangeCode/value"
    second = seq_run / "RAW-R0001-DA01-S00001.h5"
    with h5py.File(second, "r") as f:
        n = len(f[key_path])
    _replace_dataset(second, key_path, np.array([b"x"] * n, dtype=h5py.string_dtype()))
    before = digests(seq_run)
    run = xd.open_run(seq_run)
    with pytest.raises(FileFormatError, match=f"rangeCode.*{DA01}.*{second.name}"):
        run[XGM, "current.bottom.rangeCode"]
    assert np.isfinite(run[XGM, IXPOS].values).all()  # other keys still read
    assert any(second.name in p.message and "no common type" in p.message for p in validate_run(seq_run))
    assert digests(seq_run) == before


def test_an_entry_shape_change_raises_naming_both_files(seq_run):
    key_path = f"INSTRUMENT/{XGM_OUT}/data/intensityTD"
    second = seq_run / "RAW-R0001-DA01-S00001.h5"
    with h5py.File(second, "r") as f:
        n = f[key_path].shape[0]
    _replace_dataset(second, key_path, np.zeros((n, 500), np.float32))
    before = digests(seq_run)
    run = xd.open_run(seq_run)
    with pytest.raises(FileFormatError, match=f"entry shape \\(1000,\\) in .*{DA01}.*\\(500,\\) in .*{second.name}"):
        run[XGM_OUT, "data.intensityTD"]
    assert any("entry shape" in p.message for p in validate_run(seq_run))
    assert digests(seq_run) == before


# ----- 6, 7: symlink loops, files without trains -------------------------------------------

def test_a_symlink_loop_in_a_run_directory_is_skipped_with_a_warning(small_run):
    os.symlink("loop.h5", small_run / "loop.h5")
    before = digests(small_run)
    with pytest.warns(UserWarning, match="loop.h5: skipped"):
        run = xd.open_run(small_run)
    assert len(run.files) == 4
    assert np.isfinite(run[XGM, IXPOS].values).all()
    assert len(before) == 4 and digests(small_run) == before


@pytest.mark.parametrize("train_ids", ["all zero", "empty"])
def test_a_file_without_trains_is_reported(small_run, train_ids):
    victim = small_run / "RAW-R0001-AGIPD01-S00000.h5"
    with h5py.File(victim, "r+") as f:
        n = len(f["INDEX/trainId"])
    _replace_dataset(victim, "INDEX/trainId", np.zeros(n if train_ids == "all zero" else 0, np.uint64))
    before = digests(small_run)
    with pytest.warns(UserWarning, match=f"{victim.name}: no trains"):
        run = xd.open_run(small_run)
    assert run.data_counts(AGIPD.source(1), "image").sum() == 0
    problems = [p for p in validate_run(small_run) if p.file == str(victim)]
    assert any(f"INDEX/trainId is {train_ids}" in p.message for p in problems)
    assert digests(small_run) == before


# ----- 8: read errors name file, dataset and rows ---------------------------------------

@pytest.fixture
def corrupt_chunk_run(agipd_corr_run, tmp_path) -> tuple[Path, Path, str]:
    """A copy of the corrected run with garbage in the compressed chunk of frame 3 of module 0."""
    run_dir = copy_run(agipd_corr_run, tmp_path / "r0001")
    src = AGIPD.source(0, corrected=True)
    victim = run_dir / "CORR-R0001-AGIPD00-S00000.h5"
    with h5py.File(victim, "r") as f:
        info = f[f"INSTRUMENT/{src}/image/data"].id.get_chunk_info_by_coord((3, 0, 0))
    with open(victim, "r+b") as f:
        f.seek(info.byte_offset + 16)
        f.write(b"\x00\xff" * 64)
    return run_dir, victim, src


@pytest.mark.parametrize("how", ["dask", "dask=False", "run[src, key]", "train_from_id"])
def test_a_corrupt_compressed_chunk_names_file_dataset_and_rows(corrupt_chunk_run, how):
    run_dir, victim, src = corrupt_chunk_run
    before = digests(run_dir)
    run = xd.open_run(run_dir)
    dataset = f"/INSTRUMENT/{src}/image/data"
    with pytest.raises(DataReadError) as err:
        if how == "dask":
            np.asarray(run.detector()["image.data"])
        elif how == "dask=False":
            np.asarray(run.detector(dask=False)["image.data"])
        elif how == "run[src, key]":
            np.asarray(run[src, "image.data"])
        else:
            run.train_from_id(10001, devices={src: {"image.data"}})
    message = str(err.value)
    assert str(victim) in message and dataset in message and "image.data" in message
    start, stop = err.value.rows
    assert start <= 3 < stop and f"rows {start}:{stop}" in message
    assert digests(run_dir) == before


# ----- fuzzing INDEX arrays ---------------------------------------------------------

INDEX_VALUES = st.one_of(st.integers(0, 12), st.integers(0, 2**64 - 1),
                         st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**62, 2**40]))


@pytest.mark.timeout(120)
def test_fuzzed_index_arrays_give_an_error_naming_the_file_or_the_rows_on_disk(format_runs, tmp_path_factory):
    base = copy_run(format_runs["1.3"], tmp_path_factory.mktemp("fuzz_base"))
    key = "data.intensityTD"
    with h5py.File(base / DA01, "r") as f:
        n = len(f["INDEX/trainId"])
        data = f[f"INSTRUMENT/{XGM_OUT}/data/intensityTD"][:]
    examples = []

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(first=st.lists(INDEX_VALUES, min_size=n - 1, max_size=n + 1),
           count=st.lists(INDEX_VALUES, min_size=n - 1, max_size=n + 1),
           dtype=st.sampled_from([np.uint64, np.int64]))
    def check(first, count, dtype):
        examples.append(1)
        run_dir = tmp_path_factory.mktemp("fuzz")
        shutil.copyfile(base / DA01, run_dir / DA01)
        as_array = (lambda v: np.array([x if x < 2**63 else x - 2**64 for x in v], np.int64)) \
            if dtype is np.int64 else (lambda v: np.array(v, np.uint64))
        set_index(run_dir / DA01, f"INDEX/{XGM_OUT}/data", first=as_array(first), count=as_array(count))
        before = digests(run_dir)
        handles.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = xd.open_run(run_dir, cache=False)
            validate_run(run_dir)
        try:
            values, found = read_rows(run, XGM_OUT, key)
        except DataIndexError as exc:
            assert str(run_dir / DA01) in str(exc) and XGM_OUT in str(exc) and key in str(exc)
        else:  # what is read is exactly the rows the index gives, all inside the dataset
            first_, count_ = found.first.astype(np.int64), found.count.astype(np.int64)
            assert (first_ + count_ <= len(data))[count_ > 0].all()
            expected = [data[a:a + c] for a, c in zip(first_.tolist(), count_.tolist(), strict=True)]
            np.testing.assert_array_equal(values, np.concatenate(expected or [data[:0]]))
        assert digests(run_dir) == before

    check()
    assert len(examples) >= 40


def test_a_key_some_files_of_its_source_lack_is_an_error_naming_the_file_without_it(tmp_path):
    """keys() lists every key any file of the source has; reading one that a file lacks names that file
    (it said "key onlylater is not in source ...; did you mean: onlylater?")."""
    from xfeldata.testing import make_example

    run_dir = make_example(tmp_path / "r0001", detector=None, n_trains=4, trains_per_sequence=2)
    source = "SA1_XTD2_XGM/DOOCS/MAIN"
    later = run_dir / "RAW-R0001-DA01-S00001.h5"
    with h5py.File(later, "r+") as f:  # (this test's own run)
        n = len(f["INDEX/trainId"])
        f.create_dataset(f"CONTROL/{source}/onlylater/value", data=np.arange(n, dtype=np.float32))
        f.create_dataset(f"CONTROL/{source}/onlylater/timestamp", data=np.zeros(n, np.uint64))
    run = xd.open_run(run_dir)
    assert "onlylater" in run.keys(source)
    with pytest.raises(FileFormatError, match=r"S00000\.h5.*key onlylater is missing from this file, though other"):
        run[source, "onlylater"].compute()
    with pytest.raises(KeyError, match="not in source"):  # a key no file has: still the usual error
        run[source, "nowhere"]
