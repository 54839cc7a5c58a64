"""The persistent index cache: same index from the cache, refreshed when a file changes."""

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


def test_cached_index_equals_a_fresh_one(run_copy, user_cache):
    for path in sorted(run_copy.glob("*.h5")):
        fresh = read_file_index(os.path.abspath(path))
        cache.cached_file_index(path)  # fills the cache
        assert cache.load_cached(fresh.path, os.stat(path)) is not None
        _same_index(cache.cached_file_index(path), fresh)


def test_cache_goes_into_the_run_directory_when_writable(run_copy, user_cache):
    xd.open_run(run_copy)
    assert len(list((run_copy / ".xfeldata" / "index").glob("*.npz"))) == len(list(run_copy.glob("*.h5")))
    assert not user_cache.exists()


def test_read_only_run_directory_falls_back_to_the_user_cache(run_copy, user_cache):
    if os.geteuid() == 0:
        # root ignores permissions: make the run-directory cache path unusable instead
        (run_copy / ".xfeldata").write_text("not a directory")
    else:
        run_copy.chmod(0o555)
    try:
        run = xd.open_run(run_copy)
        assert len(list(user_cache.glob("*.npz"))) == len(run.file_indexes)
        again = xd.open_run(run_copy)
        np.testing.assert_array_equal(again.train_ids, run.train_ids)
    finally:
        run_copy.chmod(0o755)


def test_a_changed_file_is_indexed_again(run_copy, user_cache):
    path = sorted(run_copy.glob("*DA01*.h5"))[0]
    first = cache.cached_file_index(path)
    os.utime(path, ns=(0, 10**18))  # a different mtime: the entry no longer matches
    assert cache.load_cached(first.path, os.stat(path)) is None
    assert cache.cached_file_index(path).mtime == os.stat(path).st_mtime


def test_reading_through_the_cache_gives_the_same_data(run_copy, user_cache):
    uncached = xd.open_run(run_copy, cache=False)
    xd.open_run(run_copy)
    cached = xd.open_run(run_copy)
    xgm = "SA1_XTD2_XGM/DOOCS/MAIN"
    assert cached[xgm, "beamPosition.ixPos"].equals(uncached[xgm, "beamPosition.ixPos"])
    assert int(cached.detector()["image.data"].sum()) == int(uncached.detector()["image.data"].sum())


def test_a_corrupt_cache_entry_is_ignored(run_copy, user_cache):
    path = sorted(run_copy.glob("*.h5"))[0]
    where = cache.save_cached(read_file_index(os.path.abspath(path)))
    where.write_bytes(b"garbage")
    assert cache.load_cached(os.path.abspath(path), os.stat(path)) is None
    assert cache.cached_file_index(path).path == os.path.abspath(path)


def test_cache_can_be_switched_off(run_copy, user_cache, monkeypatch):
    monkeypatch.setenv(cache.CACHE_SWITCH_ENV, "0")
    xd.open_run(run_copy)
    assert not (run_copy / ".xfeldata").exists()
