"""Dask arrays over HDF5 rows: what the task graphs hold, what they read, how they fail.

Reads are counted by wrapping :func:`xfeldata.arrays.execute_block` (the
function every chunk task calls) and adding up the rows of the
:class:`~xfeldata.arrays.RowRead` items it is given.
"""

from __future__ import annotations

import os
import pickle
import shutil

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import FIRST_TRAIN_ID
from dask.base import tokenize
from h5ref import h5_rows

import xfeldata as xd
from xfeldata import arrays
from xfeldata.arrays import BlockRead, GridChunk, flat_rows_array, plan_ranges
from xfeldata.detectors.plan import by_index
from xfeldata.detectors.stacking import CHUNK_BYTES
from xfeldata.errors import DataIndexError
from xfeldata.files.direct import read_rows_into
from xfeldata.testing import make_example
from xfeldata.testing.synthetic import CAMERA_SOURCE, XGM_SOURCE
from xfeldata.views import key_array

AGIPD0 = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
#: The "large" run: 60 trains of 4 frames, 20 trains per sequence file.
LARGE = {"n_trains": 60, "frames_per_train": 4, "trains_per_sequence": 20, "modules": [0, 1]}
#: Frames per HDF5 chunk of the large run's pixel data (the facility writes 1; 32 tests alignment).
FRAMES_PER_CHUNK = 32


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    """AGIPD modules 0 and 1 with slow data; 80 frames per module file (HDF5 chunks of 32 frames)."""
    return make_example(tmp_path_factory.mktemp("large") / "r0001", first_train_id=FIRST_TRAIN_ID,
                        pixel_chunk_frames=FRAMES_PER_CHUNK, **LARGE)


@pytest.fixture
def rows_read(monkeypatch):
    """Every RowRead executed from now on (arrays must be built after the fixture starts)."""
    reads = _Reads()
    real = arrays.execute_block

    def counting(block: BlockRead, out: np.ndarray | None = None) -> np.ndarray:
        reads.blocks.append(block)
        reads.extend(block.reads)
        return real(block, out)

    monkeypatch.setattr(arrays, "execute_block", counting)
    return reads


class _Reads(list):
    """RowReads executed, and the BlockReads they came in."""

    def __init__(self):
        super().__init__()
        self.blocks: list[BlockRead] = []


def n_rows(reads) -> int:
    return sum(r.stop - r.start for r in reads)


# ----- reading only what is selected ------------------------------------------------
def test_a_few_trains_of_a_large_run_read_only_their_rows(large_run, rows_read):
    picked = [10007, 10008, 10041]
    run = xd.open_run(large_run).sel(trainId=picked)
    frames = run[AGIPD0, "image.data"].values
    expected = h5_rows(large_run, AGIPD0, "image.data")
    pixel_reads = [r for r in rows_read if r.key == "image.data"]
    assert n_rows(pixel_reads) == sum(len(expected[t]) for t in picked) == 12
    assert frames.shape[:2] == (3, 4)
    # labelling the frames by pulse ID read the pulse IDs of those trains only, too
    assert n_rows([r for r in rows_read if r.key == "image.pulseId"]) == 12
    # only the two files holding those trains were touched
    assert {os.path.basename(r.path) for r in pixel_reads} == {
        "RAW-R0001-AGIPD00-S00000.h5", "RAW-R0001-AGIPD00-S00002.h5"}


def test_a_few_trains_of_a_detector_read_only_their_frames(large_run, rows_read):
    ds = xd.open_run(large_run).sel(trainId=slice(10010, 10012)).detector(keys=["image.data"])
    ds["image.data"].compute()
    pixel_reads = [r for r in rows_read if r.key == "image.data"]
    assert n_rows(pixel_reads) == 3 * 4 * 2          # 3 trains x 4 frames x 2 modules


def test_selecting_on_a_built_detector_reads_only_the_selected_frames(large_run, rows_read):
    run = xd.open_run(large_run)
    ds = run.detector(keys=["image.data"])                    # whole run, built first
    # one selection call: dask fuses one indexing step into the read tasks
    values = ds["image.data"].isel(trainId=slice(10, 13), module=1, pulseId=slice(1, 3)).values
    pixel_reads = [r for r in rows_read if r.key == "image.data"]
    assert n_rows(pixel_reads) == 3 * 2                       # 3 trains x 2 frames x 1 module
    expected = h5_rows(large_run, "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf", "image.data")
    np.testing.assert_array_equal(values[0], expected[10010][1:3])


def test_selecting_on_a_per_key_array_reads_only_the_selected_trains(large_run, rows_read):
    arr = xd.open_run(large_run)[AGIPD0, "image.data"]
    values = arr.isel(trainId=slice(39, 41)).values            # across two files
    assert values.shape[:2] == (2, 4)
    assert n_rows([r for r in rows_read if r.key == "image.data"]) == 2 * 4


def test_a_detector_selection_across_files_is_one_chunk_of_every_module(large_run, rows_read):
    run = xd.open_run(large_run)
    arr = run.detector(keys=["image.data"])["image.data"].isel(trainId=slice(18, 23))  # 2 files
    assert arr.data.npartitions == 1                           # one task: nothing to concatenate
    values = arr.values
    assert n_rows([r for r in rows_read if r.key == "image.data"]) == 5 * 4 * 2
    for j, source in enumerate([AGIPD0, "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"]):
        expected = h5_rows(large_run, source, "image.data")
        for i, tid in enumerate(range(10018, 10023)):
            np.testing.assert_array_equal(values[i, :, j], expected[tid])


def test_a_detector_array_hands_over_its_one_chunk_without_copying_it():
    whole = np.arange(24).reshape(2, 3, 4).copy()   # a chunk as a read task gives it
    assert arrays._finalize_fresh([[[whole]]]) is whole          # a chunk read for this result
    assert arrays._finalize_fresh([whole.reshape(6, 4)]).base is whole  # a view of all of it
    small = arrays._finalize_fresh([whole[0, :1]])
    assert small.base is None and small.tolist() == [[0, 1, 2, 3]]   # a part: copied, chunk let go
    joined = arrays._finalize_fresh([[[whole]], [[whole]]])       # two chunks: concatenated
    assert joined.shape == (4, 3, 4)


def test_a_built_detector_array_and_its_slices_are_handed_over_and_everything_derived_is_plain_dask(
        large_run):
    run = xd.open_run(large_run).isel(trainId=slice(18, 23))
    arr = run.detector(keys=["image.data"])["image.data"]
    assert isinstance(arr.data, arrays.FreshArray)
    for fresh in (arr.data, arr.data[1:3], arr.isel(trainId=[0, 2], module=1).data):
        assert fresh.__dask_postcompute__()[0] is arrays._finalize_fresh
    assert (arr.where(run.detector(keys=["image.data"])["present"]) >= 0).any()  # mixes with dask
    for derived in (arr.data + 1, arr.data.persist(), arr.data.persist()[1:3]):
        assert type(derived) is da.Array
    kept = arr.data.persist()                                    # chunks now held by the graph
    assert not np.shares_memory(kept.compute(), kept.compute())  # dask copies those, as always
    assert not np.shares_memory(kept[1:3].compute(), kept[1:3].compute())


def test_selecting_trains_across_chunks_reads_them_in_one_task_into_one_array(large_run):
    run = xd.open_run(large_run)
    whole = run.detector(keys=["image.data"], target_bytes=2**23)["image.data"]
    per_chunk = whole.data.chunks[0][0]
    assert 3 <= per_chunk < whole.sizes["trainId"] // 2           # a chunk every few trains
    trains = slice(per_chunk // 2, per_chunk // 2 + per_chunk)    # a chunk's size across two chunks
    picked = whole.isel(trainId=trains)
    assert picked.data.numblocks == (1,) * picked.ndim           # one chunk, one read task
    assert len(dict(picked.data.__dask_graph__())) == 2
    expected = run.isel(trainId=trains).detector(keys=["image.data"])["image.data"].values
    np.testing.assert_array_equal(picked.values, expected)
    np.testing.assert_array_equal(whole.isel(trainId=[trains.start, trains.stop - 1], pulseId=2).values,
                                  expected[[0, -1], 2])
    assert whole.isel(trainId=slice(None)).data.numblocks == whole.data.numblocks  # larger: dask's chunks


@pytest.mark.parametrize("key", [
    3, -1, slice(2, 9), slice(9, 1, -2), (slice(1, 12), 1), (np.array([0, 4, 11]), slice(None), 1),
    (np.arange(12) % 3 == 0,), (slice(3, 10), Ellipsis, slice(100, 140)), (np.array([4, 0]),),
    (slice(None), np.array([1, 3])), (None, 2), (np.array([1, 5, 6]), 2), (slice(2, 8), np.array([0, 2]), 1),
    (np.array([0, 3]), slice(None), slice(None), 1, slice(3, 9)),
])
def test_indexing_a_built_detector_array_gives_what_numpy_gives(large_run, key):
    arr = xd.open_run(large_run).isel(trainId=slice(0, 12)).detector(
        keys=["image.data"], target_bytes=2**23)["image.data"].data
    assert arr.numblocks[0] > 1                                  # selections cross chunk edges
    whole = arr.compute()
    np.testing.assert_array_equal(arr[key].compute(), whole[key])


def test_a_lazy_index_keeps_a_built_detector_array_lazy(large_run):
    arr = xd.open_run(large_run).isel(trainId=slice(0, 12)).detector(keys=["image.data"])["image.data"].data
    picked = arr[da.from_array(np.arange(12) % 2 == 0)]
    assert np.isnan(picked.shape[0])                             # not computed to build the graph
    np.testing.assert_array_equal(picked.compute(), arr.compute()[::2])


def test_compressed_rows_decode_straight_into_one_array_per_row(tmp_path):
    values = np.random.default_rng(0).random((7, 3, 5)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        for rows, filters in [(1, {"compression": "gzip", "shuffle": True}), (3, {"compression": "gzip"}),
                              (2, {"shuffle": True}), (1, {})]:
            ds = f.create_dataset(f"d{rows}{len(filters)}", data=values, chunks=(rows, 3, 5), **filters)
            out = np.zeros((7, 2, 3, 5), np.float32)             # each row into every other slot
            read_rows_into(ds, 1, 6, [out[i, 1] for i in range(5)], {})
            np.testing.assert_array_equal(out[:5, 1], values[1:6])
            assert not out[:, 0].any() and not out[5:].any()


@pytest.mark.parametrize("key", [
    (), (slice(None),), (3,), (slice(2, 7), 1), (slice(None, None, 3),), (np.array([0, 5, 9]),),
    (Ellipsis, 0), (slice(1, 4), Ellipsis, slice(0, 2)), (np.arange(10) % 2 == 0, slice(1, 3)),
    (np.array([5, 2]),), (None, 1), (-1, -1), (0, slice(None), np.array([0])),
    (slice(None), slice(1, 3), 0, np.array([1])), (slice(None, None, -1),),
    (slice(None), slice(None, None, -2)), (np.array([-1, 9]),), (np.array([-10, 2]),), (True,),
    (np.bool_(False),),
])
def test_a_block_indexed_like_numpy_reads_the_same_as_reading_it_all(large_run, key):
    run = xd.open_run(large_run).isel(trainId=slice(0, 10))
    chunk = next(v for v in dict(run.detector(keys=["image.data"])["image.data"].data
                                 .__dask_graph__()).values() if isinstance(v, GridChunk))
    block = next(iter(chunk.grid.blocks.values()))               # module 0's part of the chunk
    whole = arrays.execute_block(block)
    np.testing.assert_array_equal(block[key], whole[key])
    # the dask chunk of every module, indexed as dask's getter does, reads in place
    everything = chunk.grid[()]
    assert everything.shape == chunk.shape and chunk.shape[2] == 2  # both modules
    np.testing.assert_array_equal(chunk[key], everything[key])


def test_pulse_selection_reads_only_the_selected_frames(large_run, rows_read):
    ds = xd.open_run(large_run).sel(trainId=slice(10000, 10004)).detector(
        keys=["image.data"], pulses=by_index[1:3])
    assert ds.sizes["pulseId"] == 2
    ds["image.data"].compute()
    assert n_rows([r for r in rows_read if r.key == "image.data"]) == 5 * 2 * 2


def test_control_keys_read_only_the_selected_trains(large_run, rows_read):
    arr = xd.open_run(large_run).isel(trainId=slice(30, 33))[XGM_SOURCE, "beamPosition.ixPos"]
    arr.compute()
    assert n_rows(rows_read) == 3


# ----- chunks follow the HDF5 chunks and the files ----------------------------------
def test_dask_chunks_are_whole_hdf5_chunks_and_end_at_file_boundaries(large_run, rows_read):
    run = xd.open_run(large_run)
    frame_bytes = 2 * 512 * 128 * 2
    # aim at 2 HDF5 chunks (64 frames) per dask chunk; each file holds 80 frames
    arr, found = flat_rows_array(run, AGIPD0, "image.data", target_bytes=2 * FRAMES_PER_CHUNK * frame_bytes)
    assert arr.chunks[0] == (64, 16, 64, 16, 64, 16)
    arr.compute()
    for block in rows_read.blocks:
        assert len({r.path for r in block.reads}) == 1, "a chunk never spans two files"
        for r in block.reads:
            assert r.start % FRAMES_PER_CHUNK == 0, "chunks start on HDF5 chunk boundaries"
            assert (r.stop - r.start) % FRAMES_PER_CHUNK == 0 or r.stop == 80, \
                "and hold whole HDF5 chunks, except at the end of a file"
    with h5py.File(large_run / "RAW-R0001-AGIPD00-S00000.h5", "r") as f:
        assert f[f"INSTRUMENT/{AGIPD0}/image/data"].chunks[0] == FRAMES_PER_CHUNK


def test_default_chunks_are_large_and_stop_at_files(large_run):
    run = xd.open_run(large_run)
    assert run[AGIPD0, "image.data"].chunks[0] == (20, 20, 20)     # one chunk per file (20 trains)
    ds = run.detector(modules=[0, 1])
    # a detector chunk holds every module of a block of trains, across files
    chunks = ds["image.data"].chunks
    assert chunks[2] == (2,) and chunks[0] == (60,)
    train_bytes = ds["image.data"].isel(trainId=0).nbytes
    assert max(chunks[0]) * train_bytes <= CHUNK_BYTES
    small = run.detector(modules=[0, 1], target_bytes=25 * train_bytes)
    assert small["image.data"].chunks[0] == (25, 25, 10)             # whole trains, files or not
    # a small key is one block across its files (dask's overhead would cost more than the reads)
    assert run[XGM_SOURCE, "beamPosition.ixPos"].chunk().chunks[0] == (60,)
    assert run[XGM_SOURCE]["beamPosition.ixPos"].chunks[0] == (60,)


def test_small_keys_are_numpy_read_when_used_and_only_the_selected_rows(large_run, rows_read):
    run = xd.open_run(large_run)
    expected = h5_rows(large_run, XGM_SOURCE, "beamPosition.ixPos")
    arr = run[XGM_SOURCE, "beamPosition.ixPos"]
    assert arr.chunks is None and not rows_read, "no dask, and nothing read before the values are used"
    picked = arr.sel(trainId=arr.trainId[5:8])
    assert not rows_read, "selecting reads nothing either"
    np.testing.assert_array_equal(picked.values, np.concatenate([expected[t] for t in picked.trainId.values]))
    assert n_rows(rows_read) == 3, "a selection reads its rows only"
    rows_read.clear()
    np.testing.assert_array_equal(arr.values, np.concatenate([expected[t] for t in sorted(expected)]))
    assert n_rows(rows_read) == 60
    # labels, attrs and values as the dask-backed array (what larger keys are)
    dask_backed = key_array(run, XGM_SOURCE, "beamPosition.ixPos", small_in_memory=False)
    assert dask_backed.chunks is not None
    xr.testing.assert_identical(arr.load(), dask_backed.load())
    restored = pickle.loads(pickle.dumps(run[XGM_SOURCE, "beamPosition.ixPos"]))
    np.testing.assert_array_equal(restored.values, arr.values)


def test_keys_larger_than_the_small_key_limit_follow_their_files(large_run, monkeypatch):
    monkeypatch.setattr(arrays, "SMALL_KEY_BYTES", 64)
    run = xd.open_run(large_run)
    # DA01 has its sequence boundaries shifted by one train: chunks follow its files
    assert run[XGM_SOURCE, "beamPosition.ixPos"].chunks[0] == (21, 20, 19)


def test_graph_size_grows_with_chunks_not_trains(large_run):
    run = xd.open_run(large_run)
    for sel in (run, run.isel(trainId=slice(0, 20)), run.isel(trainId=slice(0, 3))):
        arr = sel[AGIPD0, "image.data"].data
        # per chunk: its BlockRead and one getter task, whatever the trains
        assert len(arr.__dask_graph__()) == 2 * arr.npartitions
    assert run[AGIPD0, "image.data"].data.npartitions == 3            # 60 trains, 3 files
    assert run.isel(trainId=slice(0, 20))[AGIPD0, "image.data"].data.npartitions == 1
    many, _ = flat_rows_array(run, AGIPD0, "image.data", target_bytes=1)
    assert many.npartitions == 3 * 3                                  # 32 + 32 + 16 frames per file
    assert len(many.__dask_graph__()) == 2 * many.npartitions


# ----- graphs that travel ----------------------------------------------------------
def test_chunk_tasks_pickle_and_hold_no_h5py_objects(large_run):
    run = xd.open_run(large_run).isel(trainId=slice(15, 25))
    arr = run.detector(modules=[0, 1], keys=["image.data"])["image.data"].data
    graph = dict(arr.__dask_graph__())
    payload = pickle.dumps(list(graph.values()))
    assert b"h5py" not in payload
    restored = pickle.loads(payload)
    assert len(restored) == len(graph)
    chunks = [v for v in graph.values() if isinstance(v, GridChunk)]
    assert len(chunks) == arr.npartitions
    for chunk in chunks:
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(chunk))[()], chunk[()])
        assert tokenize(pickle.loads(pickle.dumps(chunk))) == tokenize(chunk)


def test_chunk_tasks_tokenize_deterministically(large_run):
    run = xd.open_run(large_run)
    a = run[AGIPD0, "image.data"].data
    b = xd.open_run(large_run)[AGIPD0, "image.data"].data
    assert a.name == b.name, "the same selection gives the same graph keys in another session"
    assert tokenize(a) == tokenize(b)
    c = run.isel(trainId=slice(0, 10))[AGIPD0, "image.data"].data
    assert c.name != a.name
    block = next(v[1] for v in dict(a.__dask_graph__()).values() if isinstance(v, tuple))
    assert tokenize(block) == tokenize(pickle.loads(pickle.dumps(block)))
    assert tokenize(xd.open_run(large_run).detector(modules=[0])) == tokenize(run.detector(modules=[0]))


def test_threads_and_processes_compute_the_same(large_run):
    arr = xd.open_run(large_run).isel(trainId=slice(18, 23))[AGIPD0, "image.data"].data.sum(axis=(2, 3, 4))
    expected = arr.compute(scheduler="sync")
    np.testing.assert_array_equal(arr.compute(scheduler="threads"), expected)


# ----- planning --------------------------------------------------------------------
@pytest.mark.parametrize("ranges,per_chunk,align", [
    ([(0, 100)], 32, 32), ([(0, 100)], 40, 32), ([(5, 70), (80, 90)], 32, 32),
    ([(0, 3), (3, 9), (20, 21)], 4, 1), ([(10, 200)], 1000, 16),
])
def test_plan_ranges_covers_every_row_once_in_aligned_chunks(ranges, per_chunk, align):
    chunks = plan_ranges(ranges, per_chunk, align)
    covered = [i for chunk in chunks for start, stop in chunk for i in range(start, stop)]
    assert covered == [i for start, stop in ranges for i in range(start, stop)]
    for chunk in chunks:
        assert sum(stop - start for start, stop in chunk) <= max(per_chunk, align)
    range_ends = {stop for _, stop in ranges}
    for chunk in chunks[:-1]:
        end = chunk[-1][1]
        assert end % align == 0 or end in range_ends


# ----- bad input -------------------------------------------------------------------
def _damaged_copy(src, dst, file_name: str, dataset: str, keep_rows: int):
    shutil.copytree(src, dst)
    with h5py.File(dst / file_name, "r+") as f:
        data = f[dataset][:keep_rows]
        del f[dataset]
        f[dataset] = data
    return dst


def test_index_past_the_end_of_a_key_fails_when_read_naming_file_source_and_key(slow_only_run, tmp_path):
    name = "RAW-R0001-DA01-S00000.h5"
    run_dir = _damaged_copy(slow_only_run, tmp_path / "r0001", name,
                            f"CONTROL/{XGM_SOURCE}/beamPosition/ixPos/value", keep_rows=2)
    run = xd.open_run(run_dir)
    arr = run[XGM_SOURCE, "beamPosition.ixPos"]           # building the array reads nothing
    with pytest.raises(DataIndexError) as info:
        arr.compute()
    message = str(info.value)
    assert name in message and XGM_SOURCE in message and "beamPosition.ixPos" in message
    assert isinstance(info.value, IndexError)
    # the other keys of the same source and file still read, and the good trains of this key too
    iy = run[XGM_SOURCE, "beamPosition.iyPos"].values
    np.testing.assert_array_equal(iy, np.concatenate(list(h5_rows(slow_only_run, XGM_SOURCE,
                                                                  "beamPosition.iyPos").values())))
    assert run.isel(trainId=[0, 1])[XGM_SOURCE, "beamPosition.ixPos"].values.shape == (2,)


def test_index_past_the_end_of_an_instrument_key(slow_only_run, tmp_path):
    name = "RAW-R0001-DA02-S00001.h5"
    run_dir = _damaged_copy(slow_only_run, tmp_path / "r0001", name,
                            f"INSTRUMENT/{CAMERA_SOURCE}/data/image/pixels", keep_rows=1)
    run = xd.open_run(run_dir)
    with pytest.raises(DataIndexError, match=f"{name}.*{CAMERA_SOURCE}.*data.image.pixels"):
        run[CAMERA_SOURCE, "data.image.pixels"].compute()
    assert run[CAMERA_SOURCE, "data.image.dims"].values.shape == (10, 2)


def test_a_key_stored_with_another_byte_order_in_one_file_reads_its_values(tmp_path):
    run_dir = make_example(tmp_path / "r0001", modules=[0], n_trains=4, frames_per_train=3,
                           trains_per_sequence=2, slow_sources=False)
    path = f"INSTRUMENT/{AGIPD0}/image/cellId"
    with h5py.File(run_dir / "RAW-R0001-AGIPD00-S00001.h5", "r+") as f:
        values = f[path][()]
        del f[path]
        f.create_dataset(path, data=values.astype(">u2"))
    got = xd.open_run(run_dir)[AGIPD0, "image.cellId"].values
    np.testing.assert_array_equal(got.reshape(4, 3), [[0, 1, 2]] * 4)


def test_rows_in_a_chunk_hdf5_never_wrote_read_its_fill_value(tmp_path):
    run_dir = make_example(tmp_path / "r0001", modules=[0], n_trains=4, frames_per_train=3,
                           slow_sources=False)
    path = f"INSTRUMENT/{AGIPD0}/image/cellId"
    with h5py.File(run_dir / "RAW-R0001-AGIPD00-S00000.h5", "r+") as f:
        values = f[path][()]
        del f[path]
        ds = f.create_dataset(path, shape=values.shape, dtype=values.dtype, chunks=(4, 1), fillvalue=77)
        ds[:4], ds[8:] = values[:4], values[8:]          # rows 4:8: a chunk never written
    got = xd.open_run(run_dir)[AGIPD0, "image.cellId"].values.reshape(-1)
    np.testing.assert_array_equal(got[4:8], 77)
    np.testing.assert_array_equal(got[:4], values[:4, 0])


def test_a_file_deleted_after_opening_is_named_when_a_chunk_is_read(agipd_raw_run, tmp_path):
    run_dir = tmp_path / "r0001"
    shutil.copytree(agipd_raw_run, run_dir)
    run = xd.open_run(run_dir)
    arr = run[XGM_SOURCE, "beamPosition.ixPos"]
    for gone in ("RAW-R0001-DA01-S00001.h5", "RAW-R0001-AGIPD00-S00001.h5"):
        (run_dir / gone).unlink()
    with pytest.raises(FileNotFoundError, match="RAW-R0001-DA01-S00001.h5"):
        arr.compute()
    # a detector reads its pulse IDs when the Dataset is built: the error comes then
    with pytest.raises(FileNotFoundError, match="RAW-R0001-AGIPD00-S00001.h5"):
        run.detector(modules=[0])
    # trains in the remaining files still read
    assert arr.sel(trainId=slice(10000, 10004)).values.shape == (5,)


