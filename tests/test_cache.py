"""The persistent index cache: one bundle per run directory, refreshed when a file changes."""

import os
import shutil

import numpy as np
import pytest

import xfeldata as xd
from xfeldata.files import cache
from xfeldata.files.index import read_file_index


@pytest.fixture
def run_copy(tmp_path, irregular_run):
    """A private copy of the irregular run, so cache files land in tmp_path."""
    dest = tmp_path / "r0001"
    shutil.copytree(irregular_run, dest, ignore=shutil.ignore_patterns(".xfeldata"))
    return dest


@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    path = tmp_path / "user-cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(path))
    return path


def _same_index(a, b):
    assert a.path == b.path and a.format_version == b.format_version
    np.testing.assert_array_equal(a.train_ids, b.train_ids)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.suspect, b.suspect)
    assert a.sources.keys() == b.sources.keys() and a.aliases == b.aliases
    assert a.problems == b.problems and a.metadata == b.metadata
    for name, sa in a.sources.items():
        sb = b.sources[name]
        assert sa.keys == sb.keys
        for group, ga in sa.groups.items():
            np.testing.assert_array_equal(ga.first, sb.groups[group].first)
            np.testing.assert_array_equal(ga.count, sb.groups[group].count)


def test_cached_indexes_equal_fresh_ones(run_copy, user_cache):
    paths = [os.path.abspath(p) for p in sorted(run_copy.glob("*.h5"))]
    cache.index_files_cached(paths)  # fills the cache
    assert set(cache.read_bundle(str(run_copy))) == set(paths)
    for path, cached in zip(paths, cache.index_files_cached(paths), strict=True):
        _same_index(cached, read_file_index(path))


def test_opening_again_reads_no_file(run_copy, user_cache, monkeypatch):
    xd.open_run(run_copy)
    monkeypatch.setattr(cache, "read_file_index", lambda path: pytest.fail(f"indexed {path}"))
    assert len(xd.open_run(run_copy).train_ids)


def test_one_cache_file_goes_into_the_run_directory_when_writable(run_copy, user_cache):
    xd.open_run(run_copy)
    bundle = run_copy / ".xfeldata" / "index.npz"
    assert bundle.is_file() and bundle.stat().st_mode & 0o044  # readable by others too
    assert not user_cache.exists()


def test_read_only_run_directory_falls_back_to_the_user_cache(run_copy, user_cache):
    if os.geteuid() == 0:
        # root ignores permissions: make the run-directory cache path unusable instead
        (run_copy / ".xfeldata").write_text("not a directory")
    else:
        run_copy.chmod(0o555)
    try:
        run = xd.open_run(run_copy)
        assert len(list(user_cache.glob("*.npz"))) == 1
        again = xd.open_run(run_copy)
        np.testing.assert_array_equal(again.train_ids, run.train_ids)
    finally:
        run_copy.chmod(0o755)


def test_a_changed_file_is_indexed_again(run_copy, user_cache, monkeypatch):
    xd.open_run(run_copy)
    path = sorted(run_copy.glob("*DA01*.h5"))[0]
    os.utime(path, ns=(0, 10**18))  # a different mtime: the entry no longer matches
    indexed = []
    original = cache.read_file_index
    monkeypatch.setattr(cache, "read_file_index", lambda p: indexed.append(p) or original(p))
    run = xd.open_run(run_copy)
    assert indexed == [os.path.abspath(path)]
    assert any(fi.mtime == os.stat(path).st_mtime for fi in run.file_indexes)


def test_reading_through_the_cache_gives_the_same_data(run_copy, user_cache):
    uncached = xd.open_run(run_copy, cache=False)
    xd.open_run(run_copy)
    cached = xd.open_run(run_copy)
    xgm = "SA1_XTD2_XGM/DOOCS/MAIN"
    assert cached[xgm, "beamPosition.ixPos"].equals(uncached[xgm, "beamPosition.ixPos"])
    assert int(cached.detector()["image.data"].sum()) == int(uncached.detector()["image.data"].sum())


def test_a_corrupt_cache_is_ignored_and_replaced(run_copy, user_cache):
    xd.open_run(run_copy)
    bundle = run_copy / ".xfeldata" / "index.npz"
    bundle.write_bytes(b"garbage")
    assert cache.read_bundle(str(run_copy)) == {}
    xd.open_run(run_copy)
    assert len(cache.read_bundle(str(run_copy))) == len(list(run_copy.glob("*.h5")))


def test_cache_can_be_switched_off(run_copy, user_cache, monkeypatch):
    monkeypatch.setenv(cache.CACHE_SWITCH_ENV, "0")
    xd.open_run(run_copy)
    assert not (run_copy / ".xfeldata").exists()
