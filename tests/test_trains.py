"""The classic per-train API: iter_trains, train_from_id/index and stack_detector_data.

Values are checked against what plain h5py reads from the same files, found
through the files' own INDEX (not through xfeldata's index).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import FIRST_TRAIN_ID

import xfeldata as xd
from xfeldata import trains as trains_mod
from xfeldata.errors import DataIndexError, TrainIdError
from xfeldata.files.handles import handles
from xfeldata.trains import StackView, iter_trains, stack_detector_data, train_from_id, train_from_index

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
XGM_OUT = "SA1_XTD2_XGM/DOOCS/MAIN:output"
MOTOR = "SPB_IRU_MOTORS/MOTOR/SAMPLE_X"
GAUGE = "SA1_XTD2_VAC/GAUGE/G30470D_IN"  # listed, never has data
AGIPD = "SPB_DET_AGIPD1M-1"


def mod(n: int, corr: bool = False) -> str:
    return f"{AGIPD}/CORR/{n}CH0:output" if corr else f"{AGIPD}/DET/{n}CH0:xtdf"


def h5_rows(run_dir: Path, source: str, key: str, tid: int) -> np.ndarray | None:
    """The rows of ``source``/``key`` in train ``tid``, found with plain h5py (None if none)."""
    control = ":" not in source
    group, _, rest = key.partition(".")
    index = f"INDEX/{source}" if control else f"INDEX/{source}/{group}"
    data = (f"CONTROL/{source}/{key.replace('.', '/')}/value" if control
            else f"INSTRUMENT/{source}/{group}/{rest.replace('.', '/')}")
    for path in sorted(run_dir.glob("*.h5")):
        with h5py.File(path, "r") as f:
            if index not in f:
                continue
            hits = np.flatnonzero(f["INDEX/trainId"][()] == tid)
            if not len(hits):
                continue
            first, count = (int(f[f"{index}/{n}"][hits[0]]) for n in ("first", "count"))
            if count:
                return f[data][first: first + count]
    return None


# ----- iter_trains ------------------------------------------------------------
def test_control_keys_are_unwrapped_values_equal_to_h5py(slow_only_run):
    run = xd.open_run(slow_only_run)
    seen = 0
    for tid, data in iter_trains(run, devices=[(XGM, "*"), (MOTOR, "*")]):
        assert set(data) == {XGM, MOTOR}
        for source in (XGM, MOTOR):
            # EXtra-data's names: "<key>.value" and "<key>.timestamp"
            assert set(data[source]) == {f"{k}.value" for k in run.keys(source)} | {
                f"{k}.timestamp" for k in run.keys(source)} | {"metadata"}
            for key in run.keys(source):
                expected = h5_rows(slow_only_run, source, key, tid)[0]
                value = data[source][f"{key}.value"]
                if isinstance(expected, bytes):  # strings come decoded
                    assert value == expected.decode()
                elif np.ndim(expected) == 0:     # scalars come as Python numbers
                    assert type(value) in (int, float, bool) and value == expected.item()
                else:                            # arrays: the train's row
                    np.testing.assert_array_equal(value, expected)
        seen += 1
    assert seen == len(run.train_ids) == 10


def test_instrument_keys_give_the_trains_rows(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    source = mod(3)
    for tid, data in iter_trains(run, devices={source: set(), XGM_OUT: set()}):
        image = data[source]["image.data"]
        assert image.shape == (2, 2, 512, 128)  # (frames, *entry): raw AGIPD
        np.testing.assert_array_equal(image, h5_rows(agipd_raw_run, source, "image.data", tid))
        np.testing.assert_array_equal(data[source]["image.cellId"],
                                      h5_rows(agipd_raw_run, source, "image.cellId", tid))
        # One row per train (header, XGM output): the first dimension is dropped.
        assert data[source]["header.trainId"] == tid
        intensity = data[XGM_OUT]["data.intensityTD"]
        np.testing.assert_array_equal(intensity, h5_rows(agipd_raw_run, XGM_OUT, "data.intensityTD", tid)[0])


def test_keep_dims_keeps_single_rows(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    _, data = train_from_index(run, 0, devices={mod(0): {"header.trainId", "image.data"}},
                               keep_dims=True)
    assert data[mod(0)]["header.trainId"].shape == (1,)
    assert data[mod(0)]["image.data"].shape == (2, 2, 512, 128)


def test_metadata_follows_the_bridge_protocol(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    tid, data = train_from_index(run, 4, devices=XGM)
    meta = data[XGM]["metadata"]
    with h5py.File(sorted(agipd_raw_run.glob("*DA01*"))[0], "r") as f:
        ns = int(f["INDEX/timestamp"][np.flatnonzero(f["INDEX/trainId"][()] == tid)[0]])
    assert ns > 0
    assert meta == {"source": XGM, "timestamp": ns / 1e9, "timestamp.sec": str(ns // 10**9),
                    "timestamp.frac": f"{ns % 10**9 * 10**9:018d}", "timestamp.tid": tid}
    assert isinstance(meta["timestamp.tid"], int)


def test_block_reads_match_single_train_reads(agipd_raw_run, monkeypatch):
    """Trains read in blocks (across sequence files) equal trains read one by one."""
    run = xd.open_run(agipd_raw_run).select([(mod(5), "image.*"), (XGM, "beamPosition.*"),
                                             (XGM_OUT, "*")])
    single = [train_from_id(run, tid) for tid in run.train_ids.tolist()]
    for block_bytes in (1, 10**5, 10**9):
        monkeypatch.setattr(trains_mod, "BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(trains_mod, "MIN_KEY_BLOCK_BYTES", 1)
        assert [t for t, _ in iter_trains(run)] == [t for t, _ in single]
        for (_, got), (_, want) in zip(iter_trains(run), single, strict=True):
            assert got.keys() == want.keys()
            for source in want:
                assert got[source].keys() == want[source].keys()
                for key, value in want[source].items():
                    np.testing.assert_array_equal(got[source][key], value)


def test_devices_accepts_globs_pairs_and_dicts(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    _, by_glob = train_from_index(run, 0, devices=f"{AGIPD}/DET/1*CH0:xtdf")
    assert sorted(by_glob) == sorted([mod(1)] + [mod(n) for n in range(10, 16)])
    _, by_pairs = train_from_index(run, 0, devices=[(mod(2), "image.data"), (XGM, "beamPosition.*")])
    assert set(by_pairs[mod(2)]) == {"image.data", "metadata"}
    assert set(by_pairs[XGM]) == {f"beamPosition.i{xy}Pos.{part}" for xy in "xy"
                                  for part in ("value", "timestamp")} | {"metadata"}
    _, all_keys = train_from_index(run, 0, devices={MOTOR: set()})
    assert set(all_keys[MOTOR]) == {f"{k}.value" for k in run.keys(MOTOR)} | {
        f"{k}.timestamp" for k in run.keys(MOTOR)} | {"metadata"}


def test_compressed_and_legacy_names(agipd_corr_run):
    """gzip data reads through h5py; legacy DET names select the CORR sources."""
    run = xd.open_run(agipd_corr_run)
    tid, data = train_from_index(run, 2, devices={mod(0): {"image.data", "image.mask"}})
    assert list(data) == [mod(0, corr=True)]
    image = data[mod(0, corr=True)]["image.data"]
    assert image.dtype == np.float32 and image.shape == (2, 512, 128)
    np.testing.assert_array_equal(image, h5_rows(agipd_corr_run, mod(0, corr=True), "image.data", tid))


# ----- train_from_id / train_from_index ----------------------------------------
def test_the_talks_demo(agipd_raw_run):
    """RunHandler.trains(), train_from_id, train_from_index(devices=...) and stacking."""
    run = xd.open_run(agipd_raw_run)
    trains = iter_trains(run)
    train_id, data = next(trains)
    assert train_id == FIRST_TRAIN_ID and isinstance(train_id, int)
    assert data[mod(0)]["image.data"].shape == (2, 2, 512, 128)
    assert stack_detector_data(data, "image.data", axis=1).shape == (2, 16, 2, 512, 128)

    tid, data = train_from_id(run, FIRST_TRAIN_ID + 7)
    assert tid == FIRST_TRAIN_ID + 7 and len(data) == len(run.sources)
    devs = {mod(5): {"image.data", "image.cellId"}}
    tid, data = train_from_index(run, 8, devices=devs)
    assert tid == FIRST_TRAIN_ID + 8
    assert list(data) == [mod(5)] and set(data[mod(5)]) == {"image.data", "image.cellId", "metadata"}


def test_absent_trains_raise(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    with pytest.raises(TrainIdError):  # a KeyError
        train_from_id(run, 1)
    with pytest.raises(KeyError):
        train_from_id(run.isel(trainId=slice(0, 3)), FIRST_TRAIN_ID + 5)
    assert train_from_index(run, -1)[0] == FIRST_TRAIN_ID + 9
    with pytest.raises(IndexError):
        train_from_index(run, 10)


# ----- irregular runs ------------------------------------------------------------
def test_missing_module_trains_keep_only_metadata(irregular_run):
    run = xd.open_run(irregular_run)
    tid, data = train_from_id(run, FIRST_TRAIN_ID + 2)  # module 1 misses this train
    assert set(data[mod(1)]) == {"metadata"}
    assert "image.data" in data[mod(0)]
    assert set(data[GAUGE]) == {"metadata"}  # a source that never saved anything


def test_zero_padding_is_no_train_and_suspect_trains_are_kept(irregular_run):
    run = xd.open_run(irregular_run)
    tids = [t for t, _ in iter_trains(run, devices=XGM)]
    assert 0 not in tids and len(tids) == 13  # 12 trains and the suspect one
    suspect = FIRST_TRAIN_ID + 10**9 + 11
    assert tids[-1] == suspect
    _, data = train_from_id(run, suspect, devices=XGM)
    meta = data[XGM]["metadata"]  # its INDEX timestamp is 0: unknown
    assert (meta["timestamp"], meta["timestamp.sec"], meta["timestamp.tid"]) == (0.0, "0", suspect)
    strict = xd.open_run(irregular_run, inc_suspect_trains=False)
    assert suspect not in [t for t, _ in iter_trains(strict, devices=XGM)]


def test_frames_vary_and_trains_without_frames_leave_keys_out(irregular_run):
    run = xd.open_run(irregular_run)
    for tid, data in iter_trains(run, devices=[(mod(0), "image.*")]):
        expected = h5_rows(irregular_run, mod(0), "image.data", tid)
        if expected is None:  # train 10001 has no frames; the suspect train no module data
            assert "image.data" not in data[mod(0)]
        elif len(expected) == 1:
            np.testing.assert_array_equal(data[mod(0)]["image.data"], expected[0])
        else:
            np.testing.assert_array_equal(data[mod(0)]["image.data"], expected)


def test_require_all_skips_incomplete_trains(irregular_run):
    run = xd.open_run(irregular_run)
    every = [t for t, _ in iter_trains(run, devices=f"{AGIPD}/DET/*")]
    complete = [t for t, _ in iter_trains(run, devices=f"{AGIPD}/DET/*", require_all=True)]
    # Trains where a module has no frames (10001) or is absent (module 1: 10002, ...) go.
    expected = [t for t in every
                if all(h5_rows(irregular_run, mod(n), "image.data", t) is not None for n in range(4))]
    assert complete == expected
    assert not {FIRST_TRAIN_ID + n for n in (1, 2, 3, 10)} & set(complete)
    for _, data in iter_trains(run, devices=f"{AGIPD}/DET/*", require_all=True):
        assert all("image.data" in data[mod(n)] for n in range(4))


def test_index_past_the_end_of_the_data_names_file_source_key(slow_only_run, tmp_path):
    broken = tmp_path / "r0001"
    shutil.copytree(slow_only_run, broken)
    da01 = sorted(broken.glob("*DA01*"))[0]
    with h5py.File(da01, "r+") as f:
        f[f"INDEX/{XGM_OUT}/data/count"][-1] = 10**6
    run = xd.open_run(broken)
    with pytest.raises(DataIndexError, match=f"{da01.name}.*{XGM_OUT}.*data.intensity"):
        for _ in iter_trains(run, devices=XGM_OUT):
            pass
    assert train_from_index(run, 0, devices=XGM)[1][XGM]  # other sources still read


# ----- stack_detector_data -----------------------------------------------------------
def test_stack_corrected_modules_with_a_missing_module(agipd_corr_run):
    run = xd.open_run(agipd_corr_run)
    tid, data = train_from_index(run, 1, devices=f"{AGIPD}/CORR/*")
    del data[mod(7, corr=True)]
    stacked = stack_detector_data(data, "image.data")
    assert stacked.shape == (2, 16, 512, 128)  # (frames, modules, slow_scan, fast_scan)
    assert np.isnan(stacked[:, 7]).all()
    np.testing.assert_array_equal(stacked[:, 3], data[mod(3, corr=True)]["image.data"])
    assert (stack_detector_data(data, "image.data", fill_value=-1)[:, 7] == -1).all()


def test_stack_raw_modules_axis_and_integer_fill(irregular_run):
    run = xd.open_run(irregular_run)
    _, data = train_from_id(run, FIRST_TRAIN_ID + 2, devices=f"{AGIPD}/DET/*")
    frames = len(data[mod(0)]["image.data"])
    default = stack_detector_data(data, "image.data")  # as EXtra-data: new axis at -3
    assert default.shape == (frames, 2, 16, 512, 128) and default.dtype == np.uint16
    stacked = stack_detector_data(data, "image.data", axis=1)
    assert stacked.shape == (frames, 16, 2, 512, 128)
    assert (stacked[:, 1] == 0).all() and (stacked[:, 4:] == 0).all()  # missing: 0 for integers
    np.testing.assert_array_equal(stacked[:, 0], data[mod(0)]["image.data"])
    view = stack_detector_data(data, "image.data", axis=1, real_array=False)
    assert isinstance(view, StackView) and view.shape == stacked.shape
    np.testing.assert_array_equal(view[:, 2], stacked[:, 2])
    np.testing.assert_array_equal(view[:, 1], stacked[:, 1])
    np.testing.assert_array_equal(np.asarray(view), stacked)


@pytest.mark.parametrize(("kind", "n_modules"), [("AGIPD500K", 8), ("JUNGFRAU", 8), ("DSSC1M", 16)])
def test_stack_module_count_follows_the_detector(detector_runs, kind, n_modules):
    run = xd.open_run(detector_runs[kind])
    kind_info = xd.detectors.DETECTORS[kind]
    _, data = train_from_index(run, 0)
    stacked = stack_detector_data(data, kind_info.data_key, axis=1)
    assert stacked.shape[1] == n_modules
    first = kind_info.modules[0]  # JUNGFRAU numbers modules from 1: JNGFR01 is position 0
    source = kind_info.source(first)
    np.testing.assert_array_equal(stacked[:, 0], data[source][kind_info.data_key])


def _fake(*modules: tuple[str, np.ndarray]) -> dict:
    return {source: {"image.data": array, "metadata": {}} for source, array in modules}


def test_stack_rejects_bad_input():
    a = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no detector module sources"):
        stack_detector_data(_fake((XGM, a)), "image.data")
    with pytest.raises(ValueError, match="no module .* has key 'image.mask'"):
        stack_detector_data(_fake((mod(0), a)), "image.mask")
    with pytest.raises(ValueError, match="mismatched shapes"):
        stack_detector_data(_fake((mod(0), a), (mod(1), np.zeros((3, 8, 8), np.float32))), "image.data")
    with pytest.raises(ValueError, match="mismatched dtypes"):
        stack_detector_data(_fake((mod(0), a), (mod(1), a.astype(np.float64))), "image.data")
    with pytest.raises(ValueError, match="several detectors"):
        stack_detector_data(_fake((mod(0), a), ("FXE_DET_LPD1M-1/DET/0CH0:xtdf", a)), "image.data")
    with pytest.raises(ValueError, match="out of range"):
        stack_detector_data(_fake((mod(9), a)), "image.data", modules=8)
    with pytest.raises(ValueError, match="cannot be stored"):
        stack_detector_data(_fake((mod(0), a.astype(np.uint16))), "image.data", fill_value=np.nan)


def test_stack_ignores_other_sources_and_empty_modules():
    a = np.ones((4, 8, 8), np.float32)
    train = _fake((mod(0), a), (XGM, np.zeros(3)), (mod(1), np.zeros((0, 8, 8), np.float32)))
    stacked = stack_detector_data(train, "image.data")
    assert stacked.shape == (4, 16, 8, 8)
    assert (stacked[:, 0] == 1).all() and np.isnan(stacked[:, 1:]).all()
    lpd = _fake(("FXE_DET_LPD1M-1/DET/2CH0:xtdf", a), (mod(0), a))
    assert stack_detector_data(lpd, "image.data", device="FXE_DET_LPD1M-1")[:, 2].sum() == a.sum()


def test_stack_of_modules_that_all_have_no_frames_is_an_error():
    empty = np.zeros((0, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no module of SPB_DET_AGIPD1M-1 has frames of 'image.data'"):
        stack_detector_data(_fake((mod(0), empty), (mod(1), empty)), "image.data")


def _first_file_rows(run_dir: Path, source: str) -> trains_mod._Rows:
    """The reader of image.data in the run's first file of ``source``."""
    run = xd.open_run(run_dir)
    file_no = int(run.rows(source, "image").file_no[0])
    info = run.file_key_info(file_no, source, "image.data")
    path = run.file(file_no).path
    with handles.use(path) as entry:
        return trains_mod._Rows(entry, info, path)


def test_plain_datasets_are_read_without_hdf5(agipd_raw_run, agipd_corr_run):
    """Uncompressed rows are read with pread; compressed ones go through h5py."""
    raw = _first_file_rows(agipd_raw_run, mod(0))
    assert raw.layout is not None and raw.pieces(1, 4) is not None
    np.testing.assert_array_equal(raw.read(1, 4), h5py.Dataset(raw.dsid)[1:4])
    corr = _first_file_rows(agipd_corr_run, mod(0, corr=True))
    assert corr.layout is None and corr.pieces(1, 4) is None
    np.testing.assert_array_equal(corr.read(1, 4), h5py.Dataset(corr.dsid)[1:4])


def test_iteration_survives_the_handle_cache_closing_files(agipd_raw_run, monkeypatch):
    monkeypatch.setattr(trains_mod, "BLOCK_BYTES", 1)
    monkeypatch.setattr(trains_mod, "MIN_KEY_BLOCK_BYTES", 1)
    run = xd.open_run(agipd_raw_run).select(mod(2), "image.data")
    for tid, data in iter_trains(run):
        handles.clear()  # e.g. evicted because other code opened many files
        np.testing.assert_array_equal(data[mod(2)]["image.data"],
                                      h5_rows(agipd_raw_run, mod(2), "image.data", tid))


def test_iteration_survives_another_thread_closing_files_meanwhile(agipd_raw_run):
    """Files a block reads stay open (leased) until the block is handed out."""
    run = xd.open_run(agipd_raw_run).select("*/DET/*", "image.cellId")
    expected = {tid: data[mod(1)]["image.cellId"] for tid, data in run.trains()}
    stop = threading.Event()

    def closer() -> None:
        while not stop.is_set():
            handles.clear()

    thread = threading.Thread(target=closer)
    thread.start()
    try:
        for _ in range(30):
            for tid, data in run.trains():
                np.testing.assert_array_equal(data[mod(1)]["image.cellId"], expected[tid])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_devices_can_be_a_list_of_source_names(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    tid, data = run.train_from_index(0, devices=["SA1_XTD2_XGM/DOOCS/MAIN"])
    assert set(data) == {"SA1_XTD2_XGM/DOOCS/MAIN"}
    assert "beamPosition.ixPos.value" in data["SA1_XTD2_XGM/DOOCS/MAIN"]


@pytest.mark.parametrize("layout", ["as written", "compressed", "contiguous"])
def test_control_timestamps_read_with_pread_equal_hdf5_reads(slow_only_run, tmp_path, layout):
    # a control key's timestamps are not in the file index: their layout is asked of the
    # dataset, and a filtered one must go through HDF5
    run_dir = tmp_path / "r"
    shutil.copytree(slow_only_run, run_dir, ignore=shutil.ignore_patterns(".xfeldata"))
    if layout != "as written":
        for path in sorted(run_dir.glob("*DA01*.h5")):
            with h5py.File(path, "r+") as f:
                names: list[str] = []
                f[f"CONTROL/{XGM}"].visit(lambda n, names=names: names.append(n) if n.endswith("/timestamp") else None)
                for name in names:
                    _rewrite(f, f"CONTROL/{XGM}/{name}", layout)
    handles.clear()
    devices = {XGM: set()}

    def timestamps() -> list[dict]:
        return [{k: v for k, v in d[XGM].items() if k.endswith(".timestamp")}
                for _, d in xd.open_run(run_dir).trains(devices=devices)]

    fast = timestamps()
    original = trains_mod._Rows.pieces
    trains_mod._Rows.pieces = lambda self, lo, hi: None  # every read through HDF5
    try:
        handles.clear()
        through_hdf5 = timestamps()
    finally:
        trains_mod._Rows.pieces = original
    assert fast == through_hdf5 and len(fast) == 10 and len(fast[0]) == len(xd.open_run(run_dir).keys(XGM))
    assert all(type(v) is int and v > 0 for train in fast for v in train.values())


def _rewrite(f: h5py.File, name: str, layout: str) -> None:
    data = f[name][()]
    del f[name]
    if layout == "compressed":
        f.create_dataset(name, data=data, chunks=(max(1, len(data) // 2),), compression="gzip", shuffle=True)
    else:
        f.create_dataset(name, data=data, chunks=None)
