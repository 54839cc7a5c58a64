"""The synthetic-run writer produces the on-disk format of ``format.md``.

These tests read the written files with plain h5py, so they document what a
reader of real European XFEL files sees: file names, METADATA per format
version, INDEX consistency, CONTROL/RUN/INSTRUMENT layout, corrected-data
names and soft links, compression, and the irregularities of real runs.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import (
    AGIPD_RUN,
    DETECTOR_RUN,
    DETECTOR_RUN_MODULES,
    FIRST_TRAIN_ID,
    FORMAT_RUN,
    IRREGULAR_RUN,
)

from xfeldata.detectors.kinds import DETECTORS
from xfeldata.files.layout import file_name, parse_file_name
from xfeldata.testing import BOGUS_TRAIN_OFFSET, IRREGULAR_PADDING, make_example
from xfeldata.testing import synthetic as syn

AGIPD = DETECTORS["AGIPD1M"]


# --------------------------------------------------------------------------
# Helpers: what a minimal reader does
# --------------------------------------------------------------------------


def strings(ds: h5py.Dataset) -> list[str]:
    """Decode a vlen-bytes dataset, dropping empty padding entries."""
    return [s.decode("utf-8", "replace") for s in ds[:] if s]


def source_list(f: h5py.File) -> list[str]:
    grp = f["METADATA/dataSources"] if "METADATA/dataSources" in f else f["METADATA"]
    return strings(grp["dataSourceId"])


def index_groups(f: h5py.File) -> list[str]:
    """INDEX paths of every source / index group listed in METADATA."""
    out = []
    for entry in source_list(f):
        section, rest = entry.split("/", 1)
        if section in ("CONTROL", "INSTRUMENT"):
            out.append(rest)
    return out


def n_trains(f: h5py.File) -> int:
    """Number of real entries in INDEX/trainId (before zero padding)."""
    tids = f["INDEX/trainId"][:]
    nz = np.flatnonzero(tids)
    return int(nz[-1]) + 1 if len(nz) else 0


def first_count(f: h5py.File, path: str) -> tuple[np.ndarray, np.ndarray]:
    grp = f[f"INDEX/{path}"]
    n = n_trains(f)
    first = grp["first"][:n].astype(np.int64)
    if "count" in grp:
        count = grp["count"][:n].astype(np.int64)
    else:
        count = (grp["last"][:n].astype(np.int64) - first + 1) * grp["status"][:n]
    return first, count


def datasets_under(group: h5py.Group) -> dict[str, h5py.Dataset]:
    out = {}
    group.visititems(lambda name, obj: out.setdefault(name, obj)
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def run_files(run: Path, aggregator: str | None = None) -> list[Path]:
    files = sorted(p for p in run.iterdir() if parse_file_name(p.name))
    if aggregator:
        files = [p for p in files if parse_file_name(p.name).aggregator == aggregator]
    return files


def train_rows(f: h5py.File, source: str, group: str, train_id: int) -> slice:
    tids = f["INDEX/trainId"][:n_trains(f)]
    i = int(np.flatnonzero(tids == train_id)[0])
    first, count = first_count(f, f"{source}/{group}")
    return slice(first[i], first[i] + count[i])


def check_index(f: h5py.File) -> None:
    """Every index group is consistent with INDEX/trainId and its datasets."""
    n = n_trains(f)
    assert len(f["INDEX/trainId"]) >= n
    for path in index_groups(f):
        first, count = first_count(f, path)
        assert len(first) == len(count) == n, path
        assert first[0] == 0 if n else True
        np.testing.assert_array_equal(first[1:], (first + count)[:-1], err_msg=path)
        data_group = f[("CONTROL/" if ":" not in path else "INSTRUMENT/") + path]
        lengths = {name: len(ds) for name, ds in datasets_under(data_group).items()}
        assert lengths, path
        assert min(lengths.values()) >= count.sum(), (path, lengths)
        if ":" in path:  # instrument: all keys of a group share dimension 0
            assert set(lengths.values()) == {count.sum()}, (path, lengths)


# --------------------------------------------------------------------------
# File names and sequences
# --------------------------------------------------------------------------


def test_raw_run_has_one_file_per_module_and_sequence(agipd_raw_run):
    names = [p.name for p in run_files(agipd_raw_run)]
    expected = [file_name("RAW", 1, AGIPD.aggregator(m), s) for m in range(16) for s in (0, 1)]
    expected += [file_name("RAW", 1, agg, s) for agg in ("DA01", "DA02") for s in (0, 1)]
    assert sorted(names) == sorted(expected)


def test_sequences_continue_each_other_and_differ_between_aggregators(agipd_raw_run):
    first_trains = {}
    for agg in ("AGIPD00", "AGIPD15", "DA01", "DA02"):
        per_file = []
        for path in run_files(agipd_raw_run, agg):
            with h5py.File(path, "r") as f:
                per_file.append(f["INDEX/trainId"][:n_trains(f)])
        joined = np.concatenate(per_file)
        np.testing.assert_array_equal(joined, FIRST_TRAIN_ID + np.arange(AGIPD_RUN["n_trains"]))
        first_trains[agg] = int(per_file[1][0])
    # Module files split together; DA01 and DA02 split 1 and 2 trains later.
    assert first_trains == {"AGIPD00": 10005, "AGIPD15": 10005, "DA01": 10006, "DA02": 10007}


def test_refuses_to_write_into_a_directory_with_run_files(agipd_raw_run, tmp_path):
    with pytest.raises(FileExistsError, match="already holds run files"):
        make_example(agipd_raw_run, detector=None)
    (tmp_path / "notes.txt").write_text("not a run file")
    make_example(tmp_path, detector=None, n_trains=2)  # other files are fine
    assert len(run_files(tmp_path)) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"format_version": "2.0"}, "format_version"),
    ({"old_index": True}, "old_index"),
    ({"detector": "MYSTERY"}, "unknown detector"),
    ({"modules": [16]}, "no modules"),
    ({"detector": "JUNGFRAU", "frames_per_train": 17}, "memory cells"),
    ({"lpd_parallel_gain": True}, "LPD"),
    ({"detector": None, "slow_sources": False}, "nothing to write"),
    ({"compression": "zstd"}, "compression"),
])
def test_rejects_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_example(tmp_path / "r", **kwargs)


# --------------------------------------------------------------------------
# Layout of one file
# --------------------------------------------------------------------------


def test_top_level_groups_and_source_list(agipd_raw_run):
    for path in run_files(agipd_raw_run):
        with h5py.File(path, "r") as f:
            assert {"METADATA", "INDEX", "CONTROL", "RUN", "INSTRUMENT"} <= set(f)
            for entry in source_list(f):
                section, rest = entry.split("/", 1)
                assert f"{section}/{rest}" in f, entry
                assert f"INDEX/{rest}" in f, entry


def test_index_is_consistent_in_every_file(agipd_raw_run, irregular_run, slow_only_run):
    for run in (agipd_raw_run, irregular_run, slow_only_run):
        for path in run_files(run):
            with h5py.File(path, "r") as f:
                check_index(f)


def test_index_timestamps_are_10_trains_per_second(agipd_raw_run):
    with h5py.File(run_files(agipd_raw_run, "DA01")[0], "r") as f:
        ts = f["INDEX/timestamp"][:].astype(np.int64)
        tids = f["INDEX/trainId"][:].astype(np.int64)
    np.testing.assert_array_equal(np.diff(ts), np.diff(tids) * 100_000_000)
    np.testing.assert_array_equal(ts, syn.train_timestamp_ns(tids).astype(np.int64))


def test_xtdf_raw_module_layout(agipd_raw_run):
    source = AGIPD.source(3)
    with h5py.File(agipd_raw_run / "RAW-R0001-AGIPD03-S00001.h5", "r") as f:
        assert source_list(f) == [f"INSTRUMENT/{source}/{g}"
                                  for g in ("detector", "header", "image", "trailer")]
        img = f[f"INSTRUMENT/{source}/image"]
        n_frames = 5 * AGIPD_RUN["frames_per_train"]
        assert img["data"].shape == (n_frames, 2, 512, 128)
        assert img["data"].dtype == np.uint16
        for key, dtype in (("pulseId", "u8"), ("cellId", "u2"), ("trainId", "u8"),
                           ("length", "u4"), ("status", "u2")):
            assert img[key].shape == (n_frames, 1) and img[key].dtype == np.dtype(dtype), key
        for group in ("header", "trailer", "detector"):
            assert f[f"INSTRUMENT/{source}/{group}/trainId"].shape == (5,)
        assert f[f"INSTRUMENT/{source}/header/magicNumberBegin"][0].tobytes() == b"XTDF\0\0\0\0"
        first, count = first_count(f, f"{source}/image")
        np.testing.assert_array_equal(count, AGIPD_RUN["frames_per_train"])
        np.testing.assert_array_equal(img["trainId"][:, 0],
                                      np.repeat(f["INDEX/trainId"][:], count))


def test_pixel_data_is_one_frame_per_chunk_and_uncompressed_when_raw(agipd_raw_run):
    with h5py.File(agipd_raw_run / "RAW-R0001-AGIPD00-S00000.h5", "r") as f:
        ds = f[f"INSTRUMENT/{AGIPD.source(0)}/image/data"]
        assert ds.chunks == (1, 2, 512, 128)
        assert ds.compression is None
        assert ds.maxshape[0] is None


def test_corrected_pixel_data_by_default_is_one_frame_per_chunk_deflate_1_with_shuffle(tmp_path):
    run = make_example(tmp_path / "r", corrected=True, modules=[0], n_trains=2,
                       frames_per_train=3, slow_sources=False)
    with h5py.File(run / "CORR-R0001-AGIPD00-S00000.h5", "r") as f:
        img = f[f"INSTRUMENT/{AGIPD.source(0, corrected=True)}/image"]
        for key in ("data", "mask", "gain"):
            assert img[key].chunks == (1, 512, 128), key
            assert (img[key].compression, img[key].compression_opts, img[key].shuffle) \
                == ("gzip", 1, True), key
        assert img["cellId"].compression is None
        np.testing.assert_array_equal(
            img["data"][3:6], syn.detector_module_train("AGIPD1M", 0, 10001, 3,
                                                        corrected=True)["image.data"])


def test_other_pixel_layouts_are_options(tmp_path):
    run = make_example(tmp_path / "r", modules=[0], n_trains=3, frames_per_train=4,
                       slow_sources=False, compression="gzip", pixel_chunk_frames=8)
    with h5py.File(run / "RAW-R0001-AGIPD00-S00000.h5", "r") as f:
        ds = f[f"INSTRUMENT/{AGIPD.source(0)}/image/data"]
        assert ds.chunks == (8, 2, 512, 128) and ds.compression == "gzip" and ds.shuffle
        np.testing.assert_array_equal(
            ds[4:8], syn.detector_module_train("AGIPD1M", 0, 10001, 4)["image.data"])


def test_module_data_equals_synthetic_train(agipd_raw_run):
    train_id = FIRST_TRAIN_ID + 7  # in the second sequence file
    source = AGIPD.source(5)
    with h5py.File(agipd_raw_run / "RAW-R0001-AGIPD05-S00001.h5", "r") as f:
        expected = syn.detector_module_train("AGIPD1M", 5, train_id,
                                             AGIPD_RUN["frames_per_train"])
        for key, value in expected.items():
            group = key.split(".")[0]
            rows = train_rows(f, source, group, train_id)
            np.testing.assert_array_equal(f[f"INSTRUMENT/{source}/{key.replace('.', '/')}"][rows],
                                          value, err_msg=key)


def test_pixel_data_looks_like_a_detector(agipd_raw_run):
    with h5py.File(agipd_raw_run / "RAW-R0001-AGIPD02-S00000.h5", "r") as f:
        data = f[f"INSTRUMENT/{AGIPD.source(2)}/image/data"][:]
    signal = data[:, 0].astype(np.float64)
    assert 4000 < np.median(signal) < 6000  # pedestal
    assert signal.std() > 100  # pixel-to-pixel pedestal spread and noise
    hits = signal - np.median(signal, axis=0) > 30
    assert 0 < hits.mean() < 0.01  # sparse photon hits
    assert not np.array_equal(data[0], data[1])


def test_pulse_and_cell_ids():
    d = syn.detector_module_train("AGIPD1M", 0, FIRST_TRAIN_ID, 360)
    np.testing.assert_array_equal(d["image.pulseId"][:, 0], np.arange(360))
    np.testing.assert_array_equal(d["image.cellId"][:, 0], np.arange(360) % 352)


# --------------------------------------------------------------------------
# Corrected data
# --------------------------------------------------------------------------


def test_corrected_run_uses_new_names_with_legacy_soft_links(agipd_corr_run):
    names = [p.name for p in run_files(agipd_corr_run)]
    assert all(n.startswith("CORR-R0001-") for n in names)
    new, legacy = AGIPD.source(4, corrected=True), AGIPD.legacy_source(4)
    assert new == "SPB_DET_AGIPD1M-1/CORR/4CH0:output"
    with h5py.File(agipd_corr_run / "CORR-R0001-AGIPD04-S00000.h5", "r") as f:
        for top in ("INSTRUMENT", "INDEX"):
            link = f.get(f"{top}/{legacy}", getlink=True)
            assert isinstance(link, h5py.SoftLink)
            assert link.path == f"/{top}/{new}"
        listed = source_list(f)
        for group in ("image", "header", "trailer", "detector"):
            assert f"INSTRUMENT/{new}/{group}" in listed
            assert f"INSTRUMENT/{legacy}/{group}" in listed
        np.testing.assert_array_equal(f[f"INSTRUMENT/{legacy}/image/data"][:2],
                                      f[f"INSTRUMENT/{new}/image/data"][:2])


def test_corrected_layout_compression_and_values(agipd_corr_run):
    source = AGIPD.source(4, corrected=True)
    train_id = FIRST_TRAIN_ID + 2
    with h5py.File(agipd_corr_run / "CORR-R0001-AGIPD04-S00000.h5", "r") as f:
        img = f[f"INSTRUMENT/{source}/image"]
        n = len(img["data"])
        assert img["data"].shape == (n, 512, 128) and img["data"].dtype == np.float32
        assert img["mask"].dtype == np.uint32 and img["mask"].shape == (n, 512, 128)
        assert img["gain"].dtype == np.uint8 and img["gain"].shape == (n, 512, 128)
        for key in ("pulseId", "cellId", "trainId", "length", "status"):
            assert img[key].shape == (n,), key
        for key in ("data", "mask", "gain"):
            assert img[key].compression == "gzip" and img[key].shuffle, key
        assert img["pulseId"].compression is None
        expected = syn.detector_module_train("AGIPD1M", 4, train_id,
                                             AGIPD_RUN["frames_per_train"], corrected=True)
        rows = train_rows(f, source, "image", train_id)
        for key in ("data", "mask", "gain", "pulseId", "cellId"):
            np.testing.assert_array_equal(img[key][rows], expected[f"image.{key}"], err_msg=key)


def test_corrected_with_legacy_names_only(tmp_path):
    run = make_example(tmp_path / "r", corrected=True, new_corr_names=False, modules=[0],
                       n_trains=2, frames_per_train=1, slow_sources=False)
    with h5py.File(run / "CORR-R0001-AGIPD00-S00000.h5", "r") as f:
        assert "INSTRUMENT/SPB_DET_AGIPD1M-1/CORR" not in f
        assert f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data"].dtype == np.float32
        assert len(source_list(f)) == 4


# --------------------------------------------------------------------------
# CONTROL, RUN and slow instrument sources
# --------------------------------------------------------------------------


def test_control_and_run_sections(slow_only_run):
    xgm = syn.XGM_SOURCE
    with h5py.File(slow_only_run / "RAW-R0001-DA01-S00001.h5", "r") as f:
        tids = f["INDEX/trainId"][:]
        expected = syn.slow_trains(tids)
        grp = f[f"CONTROL/{xgm}"]
        keys = sorted(k.key for k in syn.SLOW_SOURCES[xgm].keys)
        assert len(keys) >= 30
        for key in keys:
            value = grp[f"{key.replace('.', '/')}/value"]
            assert len(value) == len(tids) == len(grp[f"{key.replace('.', '/')}/timestamp"])
            if key == "state":
                assert h5py.check_string_dtype(value.dtype).encoding == "ascii" or \
                    value.dtype.kind == "O"
                assert [v.decode() for v in value[:]] == list(expected[xgm][key])
            else:
                np.testing.assert_array_equal(value[:], expected[xgm][key], err_msg=key)
        # RUN: the same keys with length 1, the value at the start of the run ...
        run_grp = f[f"RUN/{xgm}"]
        start = syn.slow_train(FIRST_TRAIN_ID)[xgm]
        for key in keys:
            ds = run_grp[f"{key.replace('.', '/')}/value"]
            assert ds.shape == (1,)
            assert ds[0] == (start[key].encode() if key == "state" else start[key])
        # ... plus keys recorded only there, and a source that exists only there.
        for key, value in syn.RUN_ONLY_VALUES[xgm].items():
            assert f"{key.replace('.', '/')}/value" in run_grp
            assert key.replace(".", "/") not in grp
            stored = run_grp[f"{key.replace('.', '/')}/value"][0]
            assert stored == (value.encode() if isinstance(value, str) else value)
        for name in syn.RUN_ONLY_SOURCES:
            assert f"RUN/{name}" in f
            assert f"CONTROL/{name}" not in f and f"INDEX/{name}" not in f
            assert not any(name in s for s in source_list(f))


def test_control_timestamps_change_only_when_the_value_changes(slow_only_run):
    motor = syn.MOTOR_SOURCES[0]
    values, stamps, tids = [], [], []
    for path in run_files(slow_only_run, "DA01"):
        with h5py.File(path, "r") as f:
            values.append(f[f"CONTROL/{motor}/actualPosition/value"][:])
            stamps.append(f[f"CONTROL/{motor}/actualPosition/timestamp"][:])
            tids.append(f["INDEX/trainId"][:])
    values, stamps, tids = map(np.concatenate, (values, stamps, tids))
    changed = np.r_[False, values[1:] != values[:-1]]
    assert changed.any() and not changed.all()
    np.testing.assert_array_equal(stamps[changed], syn.train_timestamp_ns(tids[changed]))
    np.testing.assert_array_equal(stamps[1:][~changed[1:]], stamps[:-1][~changed[1:]])
    assert stamps[0] < syn.train_timestamp_ns(tids[0])[0]  # set before the run started


def test_slow_instrument_sources(slow_only_run):
    with h5py.File(slow_only_run / "RAW-R0001-DA02-S00000.h5", "r") as f:
        listed = source_list(f)
        assert f"INSTRUMENT/{syn.DIGITISER_SOURCE}/data" in listed  # dot in the channel name
        raw = f[f"INSTRUMENT/{syn.DIGITISER_SOURCE}/data/rawData"]
        assert raw.shape[1:] == (4096,) and raw.dtype == np.uint16
        pixels = f[f"INSTRUMENT/{syn.CAMERA_SOURCE}/data/image/pixels"]
        assert pixels.shape[1:] == syn.CAMERA_SHAPE and pixels.dtype == np.uint16
        assert f[f"INSTRUMENT/{syn.CAMERA_SOURCE}/data/image/dims"][0].tolist() == \
            list(syn.CAMERA_SHAPE)
        tids = f["INDEX/trainId"][:]
        np.testing.assert_array_equal(pixels[:], syn.slow_trains(tids)[syn.CAMERA_SOURCE][
            "data.image.pixels"])
    with h5py.File(slow_only_run / "RAW-R0001-DA01-S00000.h5", "r") as f:
        td = f[f"INSTRUMENT/{syn.XGM_OUTPUT}/data/intensityTD"]
        assert td.shape[1:] == (1000,) and td.dtype == np.float32
        hits = f[f"INSTRUMENT/{syn.REMI_SOURCE}/rec/hits"]
        assert hits.dtype.names == ("x", "y", "t", "m")
        assert hits.shape[1:] == (syn.REMI_MAX_HITS,)


# --------------------------------------------------------------------------
# Format versions
# --------------------------------------------------------------------------

VERSIONS = ["0.5", "0.5-old", "1.0", "1.1", "1.2", "1.3"]


@pytest.mark.parametrize("version", VERSIONS)
def test_metadata_per_format_version(format_runs, version):
    with h5py.File(format_runs[version] / "RAW-R0001-DA01-S00000.h5", "r") as f:
        meta = f["METADATA"]
        if version.startswith("0.5"):
            assert "dataFormatVersion" not in meta and "dataSources" not in meta
            lists = meta
            ids = meta["dataSourceId"][:]
            assert ids[-1] == b""  # padded with empty strings
            for key in ("timestamp", "flag", "origin"):
                assert f"INDEX/{key}" not in f
        else:
            lists = meta["dataSources"]
            assert meta["dataFormatVersion"][:].tolist() == [version.encode()]
            for key in ("creationDate", "updateDate", "daqLibrary", "karaboFramework",
                        "proposalNumber", "runNumber", "sequenceNumber", "runType", "sample"):
                assert meta[key].shape == (1,), key
            assert meta["proposalNumber"][0] == 700000 and meta["runNumber"][0] == 1
            assert meta["sequenceNumber"].dtype == np.uint32
            assert len(meta["creationDate"][0]) == len(b"YYYYMMDDTHHMMSSZ")
            assert f["INDEX/timestamp"].dtype == np.uint64 and f["INDEX/flag"].dtype == np.int32
            assert ("INDEX/origin" in f) == (version in ("1.2", "1.3"))
        ids, roots, devices = (strings(lists[k]) for k in ("dataSourceId", "root", "deviceId"))
        assert ids == [f"{r}/{d}" for r, d in zip(roots, devices, strict=True)]
        assert any(i.startswith("Karabo_TimerServer/") for i in ids) == (version == "1.1")


@pytest.mark.parametrize("version", VERSIONS)
def test_suspect_train_flag_per_format_version(format_runs, version):
    with h5py.File(format_runs[version] / "RAW-R0001-DA01-S00000.h5", "r") as f:
        tids = f["INDEX/trainId"][:]
        bogus = FIRST_TRAIN_ID + FORMAT_RUN["n_trains"] - 1 + BOGUS_TRAIN_OFFSET
        pos = int(np.flatnonzero(tids == bogus)[0])
        assert tids[pos + 1] < tids[pos]  # out of order: a reader can infer it
        if version.startswith("0.5"):
            return
        flag = f["INDEX/flag"][:]
        good = 0 if version == "1.1" else 1
        assert flag[pos] == 1 - good
        assert (np.delete(flag, pos) == good).all()
        assert f["INDEX/timestamp"][pos] == 0
        if "INDEX/origin" in f:
            origin = f["INDEX/origin"][:]
            assert source_list(f)[origin[pos]] == f"CONTROL/{syn.XGM_SOURCE}"
            assert (np.delete(origin, pos) == -1).all()


def test_old_index_format_gives_the_same_counts(format_runs):
    for name in ("RAW-R0001-DA01-S00000.h5", "RAW-R0001-AGIPD01-S00000.h5"):
        with h5py.File(format_runs["0.5-old"] / name, "r") as old, \
                h5py.File(format_runs["0.5"] / name, "r") as new:
            for path in index_groups(new):
                assert set(old[f"INDEX/{path}"]) == {"first", "last", "status"}
                assert set(new[f"INDEX/{path}"]) == {"first", "count"}
                for a, b in zip(first_count(old, path), first_count(new, path), strict=True):
                    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("version", VERSIONS)
def test_key_attributes_from_format_1_3(format_runs, version):
    with h5py.File(format_runs[version] / "RAW-R0001-DA01-S00000.h5", "r") as f:
        key = f[f"CONTROL/{syn.XGM_SOURCE}/beamPosition/ixPos"]
        td = f[f"INSTRUMENT/{syn.XGM_OUTPUT}/data/intensityTD"]
        if version != "1.3":
            assert not key.attrs and not key["value"].attrs and not td.attrs
            return
        assert key.attrs["unitSymbol"] == "m" and key.attrs["metricPrefixSymbol"] == "m"
        assert key.attrs["alias"] == "IX.POS" and key.attrs["displayedName"] == "X position"
        assert key["value"].attrs["description"] == "Calculated X position [mm]"
        assert td.attrs["unitSymbol"] == "J" and td.attrs["metricPrefixName"] == "micro"


# --------------------------------------------------------------------------
# Detector kinds
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*DETECTORS, "LPD1M-parallel"])
def test_each_detector_kind(detector_runs, kind):
    det = DETECTORS[kind.split("-")[0]]
    modules = DETECTOR_RUN_MODULES.get(det.name, [0, 1])
    names = sorted(p.name for p in run_files(detector_runs[kind]))
    assert names == [file_name("RAW", 1, det.aggregator(m), 0) for m in modules]
    m = modules[-1]
    source = det.source(m)
    frames = DETECTOR_RUN["frames_per_train"]
    train_id = FIRST_TRAIN_ID + 3
    with h5py.File(detector_runs[kind] / file_name("RAW", 1, det.aggregator(m), 0), "r") as f:
        check_index(f)
        data = f[f"INSTRUMENT/{source}/{det.data_key.replace('.', '/')}"]
        if det.xtdf:
            n = frames * (3 if kind.endswith("parallel") else 1)
            assert data.shape == (5 * n, *det.raw_entry_shape)
            group = "image"
        elif not det.cell_axis:  # a camera: one frame per train
            assert source == f"{det.default_device}/DET/RECEIVER:daqOutput"
            assert data.shape == (5, *det.raw_entry_shape)
            n = 1
            group = "data"
        else:
            assert source == f"{det.default_device}/DET/JNGFR{m:02d}:daqOutput"
            assert data.shape == (5, frames, *det.raw_entry_shape)  # one row per train
            assert f[f"INSTRUMENT/{source}/data/memoryCell"].shape == (5, frames)
            n = frames
            group = "data"
        assert data.dtype == np.uint16
        expected = syn.detector_module_train(det.name, m, train_id, n,
                                             parallel_gain=kind.endswith("parallel"))
        rows = train_rows(f, source, group, train_id)
        np.testing.assert_array_equal(data[rows], expected[det.data_key])


def test_lpd_parallel_gain_stores_three_stages_per_pulse(detector_runs):
    source = DETECTORS["LPD1M"].source(0)
    with h5py.File(detector_runs["LPD1M-parallel"] / "RAW-R0001-LPD00-S00000.h5", "r") as f:
        rows = train_rows(f, source, "image", FIRST_TRAIN_ID)
        pulse_ids = f[f"INSTRUMENT/{source}/image/pulseId"][rows][:, 0]
        data = f[f"INSTRUMENT/{source}/image/data"][rows]
    pulses = DETECTOR_RUN["frames_per_train"]
    np.testing.assert_array_equal(pulse_ids, np.tile(np.arange(pulses), 3))
    stage = data[:, 0] >> 12  # gain stage in bits 12-13
    np.testing.assert_array_equal(stage.reshape(len(stage), -1).max(axis=1),
                                  np.repeat([0, 1, 2], pulses))


def test_corrected_jungfrau(tmp_path):
    run = make_example(tmp_path / "r", detector="JUNGFRAU", corrected=True, modules=[3],
                       frames_per_train=2, n_trains=2, slow_sources=False, compression="gzip")
    with h5py.File(run / "CORR-R0001-JNGFR03-S00000.h5", "r") as f:
        grp = f["INSTRUMENT/SPB_IRDA_JF4M/DET/JNGFR03:daqOutput/data"]
        assert grp["adc"].shape == (2, 2, 512, 1024) and grp["adc"].dtype == np.float32
        assert grp["mask"].dtype == np.uint32 and grp["gain"].dtype == np.uint8
        assert grp["adc"].chunks == (1, 2, 512, 1024) and grp["adc"].compression == "gzip"


# --------------------------------------------------------------------------
# Irregularities
# --------------------------------------------------------------------------


def test_irregular_module_misses_trains(irregular_run):
    n = IRREGULAR_RUN["n_trains"]
    missing = FIRST_TRAIN_ID + np.array([2, 3, n - 2])
    listed = []
    for path in run_files(irregular_run, "AGIPD01"):
        with h5py.File(path, "r") as f:
            listed.append(f["INDEX/trainId"][:n_trains(f)])
    listed = np.concatenate(listed)
    assert not np.isin(missing, listed).any()
    assert len(listed) == n - len(missing)
    with h5py.File(run_files(irregular_run, "AGIPD00")[0], "r") as f:
        assert np.isin(missing[:2], f["INDEX/trainId"][:]).all()


def test_irregular_zero_padding(irregular_run):
    for path in run_files(irregular_run):
        with h5py.File(path, "r") as f:
            n = n_trains(f)
            tids = f["INDEX/trainId"][:]
            assert len(tids) == n + IRREGULAR_PADDING and not tids[n:].any()
            for key in ("timestamp", "flag", "origin"):
                assert len(f[f"INDEX/{key}"]) == len(tids)
            for group in index_groups(f):
                count = f[f"INDEX/{group}/count"][:]
                assert len(count) == len(tids) and not count[n:].any()


def test_irregular_varying_frames(irregular_run):
    source = AGIPD.source(0)
    with h5py.File(run_files(irregular_run, "AGIPD00")[0], "r") as f:
        tids = f["INDEX/trainId"][:n_trains(f)]
        _, count = first_count(f, f"{source}/image")
        _, headers = first_count(f, f"{source}/header")
    expected = syn.train_frame_counts(tids, IRREGULAR_RUN["frames_per_train"], varying=True)
    np.testing.assert_array_equal(count, expected)
    assert count[1] == 0 and headers[1] == 1  # a train recorded without images
    assert len(set(count.tolist())) > 1


def test_irregular_suspect_train_and_empty_sources(irregular_run):
    with h5py.File(run_files(irregular_run, "DA01")[0], "r") as f:
        tids = f["INDEX/trainId"][:n_trains(f)]
        bogus = FIRST_TRAIN_ID + IRREGULAR_RUN["n_trains"] - 1 + BOGUS_TRAIN_OFFSET
        assert bogus in tids
        assert f["INDEX/flag"][int(np.flatnonzero(tids == bogus)[0])] == 0
        listed = source_list(f)
        for name, src in syn.EMPTY_SOURCES.items():
            if src.section == "CONTROL":
                paths = [name]
                assert f"CONTROL/{name}" in listed and f"RUN/{name}" in f
            else:
                paths = [f"{name}/{g}" for g in src.index_groups]
            for path in paths:
                assert not f[f"INDEX/{path}/count"][:].any()
                section = "CONTROL" if src.section == "CONTROL" else "INSTRUMENT"
                for ds in datasets_under(f[f"{section}/{path}"]).values():
                    assert len(ds) == 0
    # Other aggregators have no suspect train.
    with h5py.File(run_files(irregular_run, "DA02")[0], "r") as f:
        assert (f["INDEX/trainId"][:] < BOGUS_TRAIN_OFFSET).all()


def test_repeated_train_id(tmp_path):
    run = make_example(tmp_path / "r", detector=None, n_trains=8, repeated_train=True)
    with h5py.File(run / "RAW-R0001-DA01-S00000.h5", "r") as f:
        tids = f["INDEX/trainId"][:]
        assert len(tids) == 9 and len(np.unique(tids)) == 8
        pos = int(np.flatnonzero(np.diff(tids.astype(np.int64)) == 0)[0]) + 1
        assert f[f"INDEX/{syn.XGM_SOURCE}/count"][pos] == 0
        assert (f["INDEX/flag"][:] == 1).all()
        check_index(f)


def test_suspect_train_without_slow_data_goes_into_a_module_file(tmp_path):
    run = make_example(tmp_path / "r", modules=[2, 5], n_trains=4, frames_per_train=1,
                       slow_sources=False, suspect_train=True, format_version="1.2")
    with h5py.File(run / "RAW-R0001-AGIPD02-S00000.h5", "r") as f:
        assert len(f["INDEX/trainId"]) == 5
        origin = f["INDEX/origin"][:]
        assert source_list(f)[origin.max()].startswith(f"INSTRUMENT/{AGIPD.source(2)}/")
    with h5py.File(run / "RAW-R0001-AGIPD05-S00000.h5", "r") as f:
        assert len(f["INDEX/trainId"]) == 4


# --------------------------------------------------------------------------
# Determinism, reading, speed
# --------------------------------------------------------------------------


def test_content_does_not_depend_on_the_split_into_files(tmp_path):
    kw = {"modules": [0], "n_trains": 6, "frames_per_train": 2, "slow_sources": False}
    one = make_example(tmp_path / "one", **kw)
    three = make_example(tmp_path / "three", trains_per_sequence=2, **kw)
    source = AGIPD.source(0)
    with h5py.File(one / "RAW-R0001-AGIPD00-S00000.h5", "r") as a, \
            h5py.File(three / "RAW-R0001-AGIPD00-S00002.h5", "r") as b:
        tid = FIRST_TRAIN_ID + 5
        np.testing.assert_array_equal(
            a[f"INSTRUMENT/{source}/image/data"][train_rows(a, source, "image", tid)],
            b[f"INSTRUMENT/{source}/image/data"][train_rows(b, source, "image", tid)])


def test_frames_do_not_depend_on_the_number_of_frames():
    short = syn.detector_module_train("DSSC1M", 7, 12345, 2, seed=3)
    long = syn.detector_module_train("DSSC1M", 7, 12345, 5, seed=3)
    np.testing.assert_array_equal(short["image.data"], long["image.data"][:2])
    other = syn.detector_module_train("DSSC1M", 7, 12345, 2, seed=4)
    assert not np.array_equal(short["image.data"], other["image.data"])


def test_slow_train_is_one_row_of_slow_trains():
    many = syn.slow_trains([10000, 10001, 10002], seed=1)
    one = syn.slow_train(10001, seed=1)
    assert set(one) == set(many) == set(syn.SLOW_SOURCES)
    for source, keys in one.items():
        for key, value in keys.items():
            value, row = np.asarray(value), many[source][key][1]
            for field in value.dtype.names or [None]:  # structured: NaN-aware per field
                np.testing.assert_array_equal(value[field] if field else value,
                                              row[field] if field else row)


def test_files_are_unchanged_by_read_only_readers(tmp_path):
    run = make_example(tmp_path / "r", modules=[0], n_trains=3, frames_per_train=1)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_files(run)}
    for path in digests:
        with h5py.File(path, "r") as f:
            for ds in datasets_under(f).values():
                ds[()]
    import xfeldata
    if hasattr(xfeldata, "open_run"):
        xfeldata.open_run(run)
    assert digests == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_files(run)}


def test_progress_bar(tmp_path, capsys):
    make_example(tmp_path / "r", detector=None, n_trains=3, progress=True)
    assert "train" in capsys.readouterr().err


def test_generation_is_fast():
    """Raw AGIPD generation reaches several hundred MB/s on one core (lenient bound here)."""
    syn.detector_module_train("AGIPD1M", 0, 1, 64)  # warm the caches
    start, nbytes = time.perf_counter(), 0
    for train_id in range(10000, 10005):
        nbytes += syn.detector_module_train("AGIPD1M", 1, train_id, 64)["image.data"].nbytes
    assert nbytes / (time.perf_counter() - start) > 100e6


@pytest.mark.parametrize("kind, version, extra", [
    ("AGIPD1M", "0.5", {"old_index": True}),
    ("AGIPD1M", "1.1", {"corrected": True, "repeated_train": True}),
    ("AGIPD500K", "1.2", {}),
    ("LPD1M", "1.3", {"lpd_parallel_gain": True}),
    ("DSSC1M", "1.0", {"compression": "gzip"}),
    ("JUNGFRAU", "1.3", {"corrected": True}),
])
def test_irregular_runs_keep_a_consistent_index(tmp_path, kind, version, extra):
    det = DETECTORS[kind]
    run = make_example(tmp_path / "r", detector=kind, modules=det.modules[:2], n_trains=6,
                       frames_per_train=2, trains_per_sequence=3, format_version=version,
                       slow_sources=False, irregular=True, **extra)
    files = run_files(run)
    bogus = 0
    for path in files:
        with h5py.File(path, "r") as f:
            check_index(f)
            tids = f["INDEX/trainId"][:]
            assert not tids[-IRREGULAR_PADDING:].any()
            bogus += int((tids > BOGUS_TRAIN_OFFSET).sum())
    assert bogus == 1  # in the first module's file, as there is no DA01
    assert any(parse_file_name(p.name).aggregator == det.aggregator(det.modules[1])
               for p in files)
