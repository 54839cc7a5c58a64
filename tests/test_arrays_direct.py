"""Detector arrays computed by themselves are read straight into one array.

A built detector array, or a selection of it larger than one chunk, computed
with dask's local schedulers (``.values``, ``.compute()``) is read by one
:class:`~xfeldata.arrays.BlockGrid` read into one new array instead of a task
per chunk and a concatenation.  These tests compare it with dask's chunked path
(``dask.compute``, which keeps the chunks), with ``dask=False``, with h5py and
with EXtra-data, missing frames included, and check its memory.
"""

from __future__ import annotations

import threading
import tracemalloc

import dask
import numpy as np
import pytest
from conftest import FIRST_TRAIN_ID
from h5ref import h5_rows

import xfeldata as xd
from xfeldata import arrays
from xfeldata.files import pool
from xfeldata.testing import make_example

#: Chunks of a few trains, so that selections span several.
SMALL_CHUNKS = 2**21


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    """AGIPD modules 0 and 1, 60 trains of 4 frames in sequence files of 20 trains."""
    return make_example(tmp_path_factory.mktemp("large") / "r0001", first_train_id=FIRST_TRAIN_ID,
                        n_trains=60, frames_per_train=4, trains_per_sequence=20, modules=[0, 1])


def _chunked(arr) -> np.ndarray:
    """dask's own path: a task per chunk, concatenated."""
    return dask.compute(arr.data)[0]


def test_a_selection_larger_than_a_chunk_reads_into_one_array_what_the_chunked_path_reads(
        irregular_run, monkeypatch):
    run = xd.open_run(irregular_run)
    ds = run.detector(target_bytes=SMALL_CHUNKS)
    whole = ds["image.data"]
    assert whole.data.numblocks[0] > 2
    for picked in (whole, whole.isel(trainId=slice(1, 9)), whole.isel(trainId=[0, 3, 4, 8, 9], pulseId=1),
                   whole.isel(module=[1, 2], trainId=slice(2, None))):
        assert picked.data.numblocks[0] > 1                    # dask's graph keeps its chunks
        expected = _chunked(picked)
        with monkeypatch.context() as m:
            m.setattr(arrays, "finalize", lambda r: pytest.fail("chunks were concatenated"))
            direct = picked.values
            computed = picked.data.compute(scheduler="synchronous")
        assert direct.dtype == expected.dtype == whole.dtype
        np.testing.assert_array_equal(direct, expected)
        np.testing.assert_array_equal(computed, expected)
    # what dask=False reads, and the files: module 1 misses trains, frames vary per train
    values = whole.values
    np.testing.assert_array_equal(values, run.detector(dask=False)["image.data"].values)
    present = ds["present"].values
    assert not present.all()
    assert (values[~present] == 0).all()                       # missing frames hold the fill value
    for j, module in enumerate(ds.module.values):
        source = f"SPB_DET_AGIPD1M-1/DET/{module}CH0:xtdf"
        frames = h5_rows(irregular_run, source, "image.data")
        for i, tid in enumerate(ds.trainId.values):
            n = len(frames.get(int(tid), ()))
            assert present[i, :, j].sum() == n
            np.testing.assert_array_equal(values[i, :n, j], frames[int(tid)][:n]) if n else None


def test_the_direct_read_holds_about_the_result_in_memory(large_run):
    arr = xd.open_run(large_run).detector(keys=["image.data"], target_bytes=2**23)["image.data"]
    picked = arr.isel(trainId=slice(5, 55))
    assert picked.data.numblocks[0] > 3
    peaks = {}
    for name, read in (("direct", lambda: picked.values), ("chunked", lambda: _chunked(picked))):
        tracemalloc.start()
        out = read()
        peaks[name] = tracemalloc.get_traced_memory()[1] / out.nbytes
        tracemalloc.stop()
        del out
    assert peaks["direct"] < 1.2 < 1.8 < peaks["chunked"], peaks


def test_the_direct_read_is_only_for_schedulers_sharing_this_process(large_run, monkeypatch):
    arr = xd.open_run(large_run).detector(keys=["image.data"], target_bytes=2**23)["image.data"].data
    picked = arr[5:55]
    calls = []
    real = arrays.BlockGrid.__getitem__
    monkeypatch.setattr(arrays.BlockGrid, "__getitem__", lambda self, key: calls.append(key) or real(self, key))
    expected = picked.compute(scheduler="threads")
    assert len(calls) == 1                                     # one read of the whole selection
    calls.clear()
    with dask.config.set(scheduler="processes"):
        np.testing.assert_array_equal(picked.compute(), expected)
    assert not calls                                           # chunk tasks ran elsewhere
    (arr[5:55] + 0).compute()
    assert len(calls) > 1                                      # derived arrays: a read per chunk


@pytest.mark.parametrize("case", ["lpd_missed_train", "spb"])
def test_a_direct_read_of_many_chunks_agrees_with_extra_data(extra_data_runs, case):
    ed = pytest.importorskip("extra_data")
    from extra_data import components

    path = extra_data_runs[case]
    component, name = {"lpd_missed_train": ("LPD1M", "FXE_DET_LPD1M-1"),
                       "spb": ("AGIPD1M", "SPB_DET_AGIPD1M-1")}[case]
    ed_run = ed.RunDirectory(str(path)).select_trains(np.s_[:5])
    det = getattr(components, component)(ed_run, detector_name=name)
    modules = sorted(det.modno_to_source)
    theirs = det.get_array("image.data", pulses=ed.by_index[:4])
    ds = xd.open_run(path).detector(name, modules=modules, pulses=xd.by_index[:4],
                                    target_bytes=2**20)
    picked = ds["image.data"].sel(trainId=theirs.train.values)
    assert picked.data.numblocks[0] > 1
    ours = picked.transpose("module", "trainId", "pulseId", ...).values
    present = ds["present"].sel(trainId=theirs.train.values).any("pulseId").transpose("module", "trainId").values
    expected = theirs.values
    assert ours.shape == expected.shape
    assert present.any() and (case == "spb") == present.all()  # LPD module 1 misses a train
    for m in range(len(modules)):
        for t in range(len(theirs.train)):
            if present[m, t]:
                np.testing.assert_array_equal(ours[m, t], expected[m, t])
            else:
                assert (ours[m, t] == 0).all()                 # masked: the fill value


def test_reads_of_many_tasks_share_one_pool_of_readers(large_run):
    arr = xd.open_run(large_run).detector(keys=["image.data"], target_bytes=2**23)["image.data"].data
    seen = set()
    real = arrays._read_part

    def noting(*args):
        seen.add(threading.current_thread().name)
        return real(*args)

    arrays._read_part, saved = noting, real
    try:
        with dask.config.set(scheduler="threads", num_workers=4):
            dask.compute((arr[:, :2] + 0).sum(), (arr[:, 2:] + 0).sum())
    finally:
        arrays._read_part = saved
    readers = {n for n in seen if n.startswith("xfeldata-reader")}
    assert readers and len(readers) <= pool.READERS


def test_the_reader_pool_raises_a_jobs_error_and_runs_nested_calls_in_place():
    def fail_on_two(x):
        if x == 2:
            raise ValueError("two")
        return x

    with pytest.raises(ValueError, match="two"):
        pool.run_all(fail_on_two, [1, 2, 3])
    nested = pool.run_all(lambda x: pool.run_all(lambda y: x * y, [1, 2]), [1, 2, 3])
    assert nested == [[1, 2], [2, 4], [3, 6]]
