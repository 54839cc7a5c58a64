"""The persistent index cache: one bundle per run directory, refreshed when a file changes."""

import contextlib
import os
import shutil

import h5py
import numpy as np
import pytest

import xfeldata as xd
from xfeldata import snapshot
from xfeldata.files import cache, parallel
from xfeldata.files.index import read_file_index
from xfeldata.run import RunFiles


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
    bundle = run_copy / cache.RUN_DIR_CACHE
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
        assert len(list(user_cache.glob("*.bin"))) == 2  # the files' index cache and the run states
        again = xd.open_run(run_copy)
        np.testing.assert_array_equal(again.train_ids, run.train_ids)
    finally:
        run_copy.chmod(0o755)


def test_a_changed_file_is_indexed_again(run_copy, user_cache, monkeypatch):
    xd.open_run(run_copy)
    path = sorted(run_copy.glob("*DA01*.h5"))[0]
    os.utime(path, ns=(0, 10**18))  # a different mtime: the entry no longer matches
    indexed = []
    original = parallel.read_file_index  # files to index go through files.parallel
    monkeypatch.setattr(parallel, "read_file_index", lambda p: indexed.append(p) or original(p))
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
    bundle = run_copy / cache.RUN_DIR_CACHE
    bundle.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged index cache ignored"):
        assert cache.read_bundle(str(run_copy)) == {}
        run = xd.open_run(run_copy)
        run.keys(run.sources[0])  # opened from the run state: the files' index cache is read when first used
    assert len(cache.read_bundle(str(run_copy))) == len(list(run_copy.glob("*.h5")))


def test_cache_can_be_switched_off(run_copy, user_cache, monkeypatch):
    monkeypatch.setenv(cache.CACHE_SWITCH_ENV, "0")
    xd.open_run(run_copy)
    assert not (run_copy / ".xfeldata").exists()


# ----- the run's combined index (xfeldata.snapshot) ------------------------------------
def _same_run(a, b):
    np.testing.assert_array_equal(a.train_ids, b.train_ids)
    np.testing.assert_array_equal(a.suspect_train_ids, b.suspect_train_ids)
    assert a.sources == b.sources and a.problems == b.problems and a.metadata == b.metadata
    for source in a.sources:
        assert a.keys(source) == b.keys(source)
        for group in a.index_groups(source):
            ma, mb = a.rows(source, group), b.rows(source, group)
            for field in ("train_ids", "file_no", "first", "count"):
                np.testing.assert_array_equal(getattr(ma, field), getattr(mb, field))
                assert getattr(ma, field).dtype == getattr(mb, field).dtype  # stored narrow, widened back


def test_opening_again_neither_indexes_nor_combines_the_files(run_copy, user_cache, monkeypatch):
    first, uncached = xd.open_run(run_copy), xd.open_run(run_copy, cache=False)
    monkeypatch.setattr(cache, "read_file_index", lambda path: pytest.fail(f"indexed {path}"))
    monkeypatch.setattr(RunFiles, "_build_train_maps", lambda self: pytest.fail("combined the files again"))
    again = xd.open_run(run_copy)
    _same_run(again, first)
    _same_run(again, uncached)
    xgm = "SA1_XTD2_XGM/DOOCS/MAIN"
    np.testing.assert_array_equal(again[xgm, "beamPosition.ixPos"].values,
                                  first[xgm, "beamPosition.ixPos"].values)


def test_a_changed_file_makes_the_run_combine_its_files_again(run_copy, user_cache):
    xd.open_run(run_copy)
    path = sorted(run_copy.glob("*DA01*.h5"))[0]
    os.utime(path, ns=(0, 10**18))
    run = xd.open_run(run_copy)
    assert [fi.mtime for fi in run.file_indexes if fi.path == os.path.abspath(path)] == [os.stat(path).st_mtime]
    _same_run(xd.open_run(run_copy), xd.open_run(run_copy, cache=False))


def test_each_set_of_files_and_suspect_choice_has_its_own_state(run_copy, user_cache):
    for kwargs in ({}, {"include": "*DA*"}, {"inc_suspect_trains": False}):
        xd.open_run(run_copy, **kwargs)
        _same_run(xd.open_run(run_copy, **kwargs), xd.open_run(run_copy, cache=False, **kwargs))
    states = [name for name in cache.read_bundle(str(run_copy), snapshot.STATES).extras
              if name.startswith("run-state.")]
    assert len(states) == 3


def test_a_damaged_run_state_is_ignored_with_a_warning(run_copy, user_cache, monkeypatch):
    xd.open_run(run_copy)
    bundle = cache.read_bundle(str(run_copy), snapshot.STATES)
    (name, (header, arrays)), = bundle.extras.items()
    arrays = {**arrays, "map_bounds": arrays["map_bounds"][:-1]}  # the train maps no longer add up
    cache.write_bundle(str(run_copy), {}, {name: (header, arrays)}, snapshot.STATES)
    with pytest.warns(UserWarning, match="damaged run state in the index cache ignored"):
        run = xd.open_run(run_copy)
    _same_run(run, xd.open_run(run_copy, cache=False))


def test_opening_again_reads_only_the_run_state_until_a_file_index_is_needed(run_copy, user_cache,
                                                                            monkeypatch):
    xd.open_run(run_copy)
    read = []
    real = cache.read_bundle
    monkeypatch.setattr(snapshot, "read_bundle", lambda d, kind="index": read.append(kind) or real(d, kind))
    again = xd.open_run(run_copy)
    assert read == [snapshot.STATES]
    _same_run(again, xd.open_run(run_copy, cache=False))
    assert read[:2] == [snapshot.STATES, "index"]


@pytest.mark.parametrize("damage", ["removed", "emptied"])
def test_a_run_state_without_its_index_cache_indexes_the_files_when_used(run_copy, user_cache, damage):
    xd.open_run(run_copy)
    index = run_copy / cache.RUN_DIR_CACHE
    if damage == "removed":
        index.unlink()
    else:
        index.write_bytes(b"")
    with pytest.warns(UserWarning) if damage == "emptied" else contextlib.nullcontext():
        again = xd.open_run(run_copy)
        _same_run(again, xd.open_run(run_copy, cache=False))


def test_a_file_changed_after_opening_from_the_run_state_is_an_error_when_used(run_copy, user_cache):
    xd.open_run(run_copy)
    again = xd.open_run(run_copy)
    path = sorted(run_copy.glob("*DA01*.h5"))[0]
    os.utime(path, ns=(0, 10**18))
    reopened = xd.open_run(run_copy)  # sees the change; its index cache entry is replaced
    with pytest.raises(xd.FileFormatError, match="changed since the run was opened"):
        [fi.sources for fi in again.file_indexes]
    _same_run(reopened, xd.open_run(run_copy, cache=False))


def test_metadata_scalars_are_read_when_first_asked_for_and_cached_then(run_copy, user_cache):
    path = os.path.abspath(sorted(run_copy.glob("*.h5"))[0])
    fi = cache.index_files_cached([path])[0]
    assert not fi.metadata.loaded  # indexing read only dataFormatVersion
    cached = cache.index_files_cached([path])[0]
    assert cached.metadata == read_file_index(path).metadata  # read from the file now
    assert cached.metadata["runNumber"] == 1 and cached.metadata["dataFormatVersion"] == "1.3"
    assert cache.entry_of(cached).header["metadata"]["runNumber"] == 1  # kept once read


def test_metadata_of_a_file_gone_since_indexing_is_an_error_naming_it(run_copy, user_cache):
    path = os.path.abspath(sorted(run_copy.glob("*.h5"))[0])
    fi = read_file_index(path)
    os.unlink(path)
    with pytest.raises(xd.FileFormatError, match=os.path.basename(path)):
        dict(fi.metadata)


def test_a_key_attribute_with_a_null_dataspace_is_cached_and_comes_back(run_copy, user_cache):
    path = os.path.abspath(sorted(run_copy.glob("*DA01*.h5"))[0])
    with h5py.File(path, "r+") as f:
        value_paths = []
        f["CONTROL"].visit(lambda n: value_paths.append(n) if n.endswith("/value") else None)
        f["CONTROL"][value_paths[0]].attrs["empty"] = h5py.Empty("f4")
    fresh = read_file_index(path)
    cache.index_files_cached([path])  # was: TypeError, not JSON serializable
    cached = cache.index_files_cached([path])[0]
    (key,) = [k for si in fresh.sources.values() for k in si.keys.values() if "empty" in k.attrs]
    assert cached.sources[key.source].keys[key.key].attrs["empty"] == h5py.Empty("f4")
