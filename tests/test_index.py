"""The file index: what :func:`read_file_index` knows about one file without reading data.

Every format version and every detector kind, on files from the synthetic writer.
Damaged variants are built from copies in ``tmp_path``; fixture files are never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import DETECTOR_RUN_MODULES, FIRST_TRAIN_ID, FORMAT_RUN

from xfeldata.detectors.kinds import DETECTORS
from xfeldata.files.index import read_file_index, split_source_entry, train_validity
from xfeldata.files.layout import FORMAT_VERSIONS
from xfeldata.testing import BOGUS_TRAIN_OFFSET, IRREGULAR_PADDING, make_example
from xfeldata.testing import synthetic as syn

XGM = syn.XGM_SOURCE
FORMAT_KEYS = [*FORMAT_VERSIONS, "0.5-old"]
N_FORMAT_TRAINS = FORMAT_RUN["n_trains"]
SUSPECT_ID = FIRST_TRAIN_ID + N_FORMAT_TRAINS - 1 + BOGUS_TRAIN_OFFSET


def one_file(run_dir: Path, aggregator: str, seq: int = 0) -> Path:
    """The single file of one aggregator and sequence in a run directory."""
    (path,) = run_dir.glob(f"*-{aggregator}-S{seq:05d}.h5")
    return path


def copy_file(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    return dst


# ----- format versions ------------------------------------------------------

@pytest.mark.parametrize("version", FORMAT_KEYS)
def test_format_version_is_read_from_metadata(format_runs, version):
    fi = read_file_index(one_file(format_runs[version], "DA01"))
    assert fi.format_version == version.split("-")[0]


@pytest.mark.parametrize("version", FORMAT_KEYS)
def test_every_format_version_gives_the_same_trains_and_sources(format_runs, version):
    fi = read_file_index(one_file(format_runs[version], "DA01"))
    reference = read_file_index(one_file(format_runs["1.3"], "DA01"))
    assert fi.train_ids.dtype == np.uint64
    np.testing.assert_array_equal(fi.train_ids, reference.train_ids)
    np.testing.assert_array_equal(fi.valid, reference.valid)
    assert set(fi.sources) == set(reference.sources)
    for name, si in fi.sources.items():
        assert si.category == reference.sources[name].category
        assert set(si.keys) == set(reference.sources[name].keys)
        for group, ig in si.groups.items():
            np.testing.assert_array_equal(ig.first, reference.sources[name].groups[group].first)
            np.testing.assert_array_equal(ig.count, reference.sources[name].groups[group].count)


@pytest.mark.parametrize("version", FORMAT_KEYS)
def test_module_file_of_every_format_version_has_its_detector_source(format_runs, version):
    fi = read_file_index(one_file(format_runs[version], "AGIPD01"))
    source = DETECTORS["AGIPD1M"].source(1)
    assert list(fi.sources) == [source]
    assert set(fi.sources[source].groups) == {"image", "header", "trailer", "detector"}
    assert fi.sources[source].groups["image"].count.tolist() == [2] * N_FORMAT_TRAINS


def test_old_first_last_status_index_is_converted_to_first_count(format_runs):
    old_path = one_file(format_runs["0.5-old"], "AGIPD00")
    with h5py.File(old_path, "r") as f:
        assert set(f[f"INDEX/{DETECTORS['AGIPD1M'].source(0)}/image"]) == {"first", "last", "status"}
    old = read_file_index(old_path)
    new = read_file_index(one_file(format_runs["0.5"], "AGIPD00"))
    for group, ig in new.sources[DETECTORS["AGIPD1M"].source(0)].groups.items():
        old_ig = old.sources[DETECTORS["AGIPD1M"].source(0)].groups[group]
        assert old_ig.first.dtype == old_ig.count.dtype == np.uint64
        np.testing.assert_array_equal(old_ig.first, ig.first)
        np.testing.assert_array_equal(old_ig.count, ig.count)


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2", "1.3"])
def test_flagged_train_is_suspect_whatever_the_flag_convention(format_runs, version):
    """Format 1.1 inverts INDEX/flag (0 = good); the same train is suspect in every version."""
    fi = read_file_index(one_file(format_runs[version], "DA01"))
    assert fi.train_ids[fi.suspect].tolist() == [SUSPECT_ID]
    assert fi.valid.all()
    assert fi.problems == ()  # flagged by the DAQ: expected, not an inconsistency


@pytest.mark.parametrize("version", ["0.5", "0.5-old"])
def test_without_flags_an_out_of_order_train_is_inferred_suspect(format_runs, version):
    fi = read_file_index(one_file(format_runs[version], "DA01"))
    assert fi.timestamps is None
    assert fi.train_ids[fi.suspect].tolist() == [SUSPECT_ID]
    assert any("out of order" in p and str(SUSPECT_ID) in p for p in fi.problems)


def test_suspect_trains_can_be_left_out_of_a_files_trains(format_runs):
    fi = read_file_index(one_file(format_runs["1.2"], "DA01"))
    assert SUSPECT_ID in fi.good_train_ids().tolist()
    assert SUSPECT_ID not in fi.good_train_ids(inc_suspect_trains=False).tolist()


@pytest.mark.parametrize("version", FORMAT_KEYS)
def test_metadata_has_the_datasets_of_its_version(format_runs, version):
    meta = read_file_index(one_file(format_runs[version], "DA01")).metadata
    if version.startswith("0.5"):
        assert meta == {"dataFormatVersion": "0.5"}
    else:
        assert meta["dataFormatVersion"] == version
        assert meta["proposalNumber"] == 700000
        assert meta["runNumber"] == 1
        assert meta["sequenceNumber"] == 0
        assert isinstance(meta["creationDate"], str) and meta["creationDate"].endswith("Z")


def test_timerserver_entry_of_format_1_1_source_list_is_ignored(format_runs):
    path = one_file(format_runs["1.1"], "DA01")
    with h5py.File(path, "r") as f:
        entries = [e.decode() for e in f["METADATA/dataSources/dataSourceId"][()]]
    assert any(e.startswith("Karabo_TimerServer/") for e in entries)
    fi = read_file_index(path)
    assert not any("TIMESERVER" in s for s in fi.sources)
    assert fi.problems == ()


def test_key_attributes_of_format_1_3_are_merged_from_group_and_value(format_runs):
    info = read_file_index(one_file(format_runs["1.3"], "DA01")).sources[XGM].keys["beamPosition.ixPos"]
    assert info.attrs["unitSymbol"] == "m"
    assert info.attrs["metricPrefixSymbol"] == "m"
    assert info.attrs["alias"] == "IX.POS"
    assert info.attrs["displayedName"] == "X position"


def test_key_attributes_of_every_kind_read_as_h5py_gives_them_strings_decoded(format_runs, tmp_path):
    path = copy_file(one_file(format_runs["1.3"], "DA01"), tmp_path)
    kinds = {"count": np.int64(3), "gain": np.float32(2.5), "flags": np.array([1, 2, 3]), "on": True,
             "fixed": np.bytes_(b"fix"), "names": np.array(["a", "bc"], dtype=h5py.string_dtype()),
             "pair": np.array((1, 2.0), dtype=[("a", "i4"), ("b", "f8")]), "none": h5py.Empty("f4"),
             "bad": b"bad \xff"}
    with h5py.File(path, "r+") as f:
        f[f"CONTROL/{XGM}/beamPosition/ixPos/value"].attrs.update(kinds)
    attrs = read_file_index(path).sources[XGM].keys["beamPosition.ixPos"].attrs
    assert attrs["displayedName"] == "X position"  # the group's, merged
    assert (attrs["count"], attrs["gain"], attrs["on"], attrs["fixed"]) == (3, 2.5, True, "fix")
    assert attrs["flags"].tolist() == [1, 2, 3] and attrs["names"] == ["a", "bc"]
    assert attrs["pair"] == (1, 2.0) and attrs["none"] == h5py.Empty("f4")
    assert attrs["bad"] == "bad \ufffd"


@pytest.mark.parametrize("version", ["0.5", "1.0", "1.2"])
def test_key_attributes_are_absent_before_format_1_3(format_runs, version):
    info = read_file_index(one_file(format_runs[version], "DA01")).sources[XGM].keys["beamPosition.ixPos"]
    assert "unitSymbol" not in info.attrs


# ----- keys ---------------------------------------------------------------

def test_control_keys_are_dotted_and_without_value(agipd_raw_run):
    keys = read_file_index(one_file(agipd_raw_run, "DA01")).sources[XGM].keys
    assert "beamPosition.ixPos" in keys
    assert "state" in keys
    assert not any(k.endswith((".value", ".timestamp")) for k in keys)
    info = keys["beamPosition.ixPos"]
    assert info.path == f"/CONTROL/{XGM}/beamPosition/ixPos/value"
    assert info.group == ""
    assert info.dtype == np.float32
    assert info.entry_shape == ()


def test_control_keys_match_the_synthetic_source(agipd_raw_run):
    keys = read_file_index(one_file(agipd_raw_run, "DA01")).sources[XGM].keys
    assert set(keys) == {k.key for k in syn.SLOW_SOURCES[XGM].keys}


def test_instrument_keys_are_prefixed_by_their_index_group(agipd_raw_run):
    si = read_file_index(one_file(agipd_raw_run, "DA01")).sources[syn.XGM_OUTPUT]
    assert si.category == "INSTRUMENT"
    assert set(si.groups) == {"data"}
    info = si.keys["data.intensityTD"]
    assert info.group == "data"
    assert info.entry_shape == (1000,)
    assert info.nrows == info.shape[0]


def test_links_and_empty_groups_below_a_source_add_no_keys(agipd_raw_run, tmp_path):
    path = copy_file(one_file(agipd_raw_run, "DA01"), tmp_path)
    before = read_file_index(path).sources
    with h5py.File(path, "r+") as f:
        data = f[f"INSTRUMENT/{syn.XGM_OUTPUT}/data"]
        data["zAgain"] = data["intensityTD"]  # a second hard link: the dataset keeps its first name
        data["soft"] = h5py.SoftLink(data["intensityTD"].name)
        data.create_group("empty")
        key = f[f"CONTROL/{XGM}/beamPosition/ixPos"]
        key["zCopy"] = key["value"]  # a second hard link to a value dataset
    after = read_file_index(path).sources
    assert set(after[syn.XGM_OUTPUT].keys) == set(before[syn.XGM_OUTPUT].keys)
    assert set(after[XGM].keys) == set(before[XGM].keys)


def test_channel_names_with_dots_are_split_correctly():
    assert split_source_entry(f"INSTRUMENT/{syn.DIGITISER_SOURCE}/data") == (
        "INSTRUMENT", syn.DIGITISER_SOURCE, "data")


def test_structured_dtype_keys_are_indexed(agipd_raw_run):
    info = read_file_index(one_file(agipd_raw_run, "DA01")).sources[syn.REMI_SOURCE].keys["rec.hits"]
    assert info.dtype.names == ("x", "y", "t", "m")
    assert info.entry_shape == (syn.REMI_MAX_HITS,)


# ----- detectors ----------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_every_detector_kind_has_one_source_per_module_file(detector_runs, kind):
    det = DETECTORS[kind]
    module = DETECTOR_RUN_MODULES.get(kind, [0, 1])[-1]
    fi = read_file_index(one_file(detector_runs[kind], det.aggregator(module)))
    assert list(fi.sources) == [det.source(module)]
    keys = fi.sources[det.source(module)].keys
    info = keys[det.data_key]
    assert info.dtype == np.dtype(det.raw_dtype)
    if det.xtdf:
        assert info.entry_shape == det.raw_entry_shape
        assert info.group == "image"
        assert {"image.pulseId", "image.cellId", "image.trainId"} <= set(keys)
    elif det.cell_axis:
        assert info.entry_shape == (2, *det.raw_entry_shape)  # 2 memory cells per train
        assert info.group == "data"
        assert {"data.gain", "data.memoryCell"} <= set(keys)
    else:  # a camera: one frame per train
        assert info.entry_shape == det.raw_entry_shape
        assert info.group == "data"
    assert info.chunks is not None


def test_lpd_parallel_gain_stores_three_gain_stages_per_pulse(detector_runs):
    det = DETECTORS["LPD1M"]
    fi = read_file_index(one_file(detector_runs["LPD1M-parallel"], det.aggregator(0)))
    counts = fi.sources[det.source(0)].groups["image"].count
    assert counts.tolist() == [3 * 2] * 5


def test_corrected_data_is_float_and_compressed(agipd_corr_run):
    det = DETECTORS["AGIPD1M"]
    fi = read_file_index(one_file(agipd_corr_run, "AGIPD03"))
    keys = fi.sources[det.source(3, corrected=True)].keys
    data = keys["image.data"]
    assert data.dtype == np.float32
    assert data.entry_shape == det.corrected_entry_shape
    assert data.compression == "gzip"
    assert data.shuffle
    assert keys["image.mask"].dtype == np.uint32
    assert keys["image.gain"].dtype == np.uint8


def test_legacy_corrected_name_is_an_alias_not_a_second_source(agipd_corr_run):
    det = DETECTORS["AGIPD1M"]
    fi = read_file_index(one_file(agipd_corr_run, "AGIPD05"))
    assert list(fi.sources) == [det.source(5, corrected=True)]
    assert fi.aliases == {det.legacy_source(5): det.source(5, corrected=True)}


# ----- irregularities -------------------------------------------------------

def test_zero_padding_at_the_end_of_train_ids_is_not_trains(irregular_run):
    path = one_file(irregular_run, "DA01")
    with h5py.File(path, "r") as f:
        raw = f["INDEX/trainId"][()]
    fi = read_file_index(path)
    assert len(raw) == len(fi.train_ids) + IRREGULAR_PADDING
    assert (raw[len(fi.train_ids):] == 0).all()
    assert (fi.train_ids != 0).all()
    for si in fi.sources.values():
        for ig in si.groups.values():
            assert len(ig.first) == len(ig.count) == len(fi.train_ids)
    assert fi.problems == ()  # padding is normal


def test_module_missing_trains_does_not_list_them(irregular_run):
    ids = np.concatenate([read_file_index(p).train_ids
                          for p in sorted(irregular_run.glob("*AGIPD01*"))])
    for missing in (10002, 10003, 10010):
        assert missing not in ids.tolist()


def test_empty_source_is_listed_with_zero_counts(irregular_run):
    fi = read_file_index(one_file(irregular_run, "DA01"))
    for name in syn.EMPTY_SOURCES:
        si = fi.sources[name]
        assert all((ig.count == 0).all() for ig in si.groups.values())
        assert si.keys, "an empty source still has its keys"
        assert all(k.nrows == 0 for k in si.keys.values())


def test_zero_train_id_inside_the_index_is_not_a_train(agipd_raw_run, tmp_path):
    path = copy_file(one_file(agipd_raw_run, "DA02"), tmp_path)
    with h5py.File(path, "r+") as f:
        f["INDEX/trainId"][2] = 0
    fi = read_file_index(path)
    assert 0 not in fi.good_train_ids().tolist()
    assert not fi.valid[2] and fi.valid[3:].all()
    assert any("zero train ID" in p for p in fi.problems)


@pytest.fixture(scope="module")
def repeated_train_run(tmp_path_factory) -> Path:
    return make_example(tmp_path_factory.mktemp("repeated") / "r0001", detector=None,
                        n_trains=8, repeated_train=True, first_train_id=FIRST_TRAIN_ID)


def test_repeated_train_id_is_kept_once(repeated_train_run):
    fi = read_file_index(one_file(repeated_train_run, "DA01"))
    assert len(fi.train_ids) == 9
    good = fi.good_train_ids()
    assert len(np.unique(good)) == len(good) == 8
    assert any("repeated train ID" in p for p in fi.problems)


def test_index_shorter_than_train_ids_is_reported(agipd_raw_run, tmp_path):
    path = copy_file(one_file(agipd_raw_run, "DA02"), tmp_path)
    with h5py.File(path, "r+") as f:
        grp = f[f"INDEX/{syn.CAMERA_SOURCE}/data"]
        for name in ("first", "count"):
            short = grp[name][:-2]
            del grp[name]
            grp[name] = short
    fi = read_file_index(path)
    ig = fi.sources[syn.CAMERA_SOURCE].groups["data"]
    assert len(ig.count) == len(fi.train_ids)
    assert ig.count[-2:].tolist() == [0, 0]
    assert any("index shorter" in p and syn.CAMERA_SOURCE in p for p in fi.problems)


def test_train_validity_keeps_the_longest_increasing_run():
    ids = np.array([10, 11, 999, 12, 13, 0], np.uint64)
    valid, suspect, problems = train_validity(ids, None, "0.5")
    assert valid.tolist() == [True, True, True, True, True, False]
    assert ids[suspect].tolist() == [999]
    assert len(problems) == 2  # a zero ID and an out-of-order ID


def test_train_validity_drops_a_too_small_id():
    ids = np.array([10, 11, 3, 12, 13], np.uint64)
    _, suspect, _ = train_validity(ids, None, "0.5")
    assert ids[suspect].tolist() == [3]


def test_train_validity_uses_inverted_flags_in_1_1():
    ids = np.array([10, 11, 12], np.uint64)
    flags = np.array([0, 1, 0], np.int32)
    assert train_validity(ids, flags, "1.1")[1].tolist() == [False, True, False]
    assert train_validity(ids, flags, "1.2")[1].tolist() == [True, False, True]


# ----- the index reads only and closes the file --------------------------------------

def test_file_is_closed_after_indexing(agipd_raw_run, tmp_path):
    # A private copy: other tests' readers may keep fixture files open in their cache.
    path = copy_file(one_file(agipd_raw_run, "AGIPD07"), tmp_path)
    read_file_index(path)
    open_files = h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)
    assert str(path) not in {fid.name.decode() for fid in open_files}


def test_index_records_file_size_and_name(agipd_raw_run):
    path = one_file(agipd_raw_run, "DA01", 1)
    fi = read_file_index(path)
    assert fi.size == path.stat().st_size
    assert fi.name == path.name
    assert fi.aggregator == "DA01"
