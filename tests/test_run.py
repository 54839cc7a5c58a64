"""Runs: the train axis, the source and key catalogue, metadata and selection.

Selections are immutable and share one :class:`~xfeldata.run.RunFiles`.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import AGIPD_RUN, DETECTOR_RUN_MODULES, FIRST_TRAIN_ID, FORMAT_RUN, IRREGULAR_RUN

import xfeldata as xd
from xfeldata.detectors.kinds import DETECTORS
from xfeldata.errors import PropertyNameError, SourceNameError, TrainIdError
from xfeldata.files.layout import FORMAT_VERSIONS
from xfeldata.testing import BOGUS_TRAIN_OFFSET
from xfeldata.testing import synthetic as syn

AGIPD = DETECTORS["AGIPD1M"]
XGM = syn.XGM_SOURCE
N_TRAINS = AGIPD_RUN["n_trains"]
ALL_TRAINS = list(range(FIRST_TRAIN_ID, FIRST_TRAIN_ID + N_TRAINS))
IRREGULAR_SUSPECT = FIRST_TRAIN_ID + IRREGULAR_RUN["n_trains"] - 1 + BOGUS_TRAIN_OFFSET


@pytest.fixture(scope="module")
def raw(agipd_raw_run):
    return xd.open_run(agipd_raw_run)


@pytest.fixture(scope="module")
def corr(agipd_corr_run):
    return xd.open_run(agipd_corr_run)


@pytest.fixture(scope="module")
def irregular(irregular_run):
    return xd.open_run(irregular_run)


@pytest.fixture(scope="module")
def slow(slow_only_run):
    return xd.open_run(slow_only_run)


# ----- what a run holds -------------------------------------------------------

def test_train_ids_are_sorted_uint64(raw):
    assert raw.train_ids.dtype == np.uint64
    assert raw.train_ids.tolist() == ALL_TRAINS
    assert len(raw) == N_TRAINS


def test_run_counts_every_sequence_file(raw, agipd_raw_run):
    # 16 modules and DA01, DA02, each in 2 sequence files
    assert len(raw.files) == (16 + 2) * 2 == len(list(agipd_raw_run.glob("*.h5")))


def test_sources_are_split_into_control_and_instrument(raw):
    assert raw.control_sources == sorted(syn.CONTROL_SOURCES)
    detector_sources = [AGIPD.source(m) for m in AGIPD.modules]
    assert raw.instrument_sources == sorted([*syn.INSTRUMENT_SOURCES, *detector_sources])
    assert raw.sources == sorted(raw.control_sources + raw.instrument_sources)


def test_run_only_sources_are_not_data_sources(raw):
    for name in syn.RUN_ONLY_SOURCES:
        assert name not in raw.sources


@pytest.mark.parametrize("version", [*FORMAT_VERSIONS, "0.5-old"])
def test_every_format_version_opens_as_the_same_run(format_runs, version):
    run = xd.open_run(format_runs[version])
    reference = xd.open_run(format_runs["1.3"])
    np.testing.assert_array_equal(run.train_ids, reference.train_ids)
    assert run.sources == reference.sources
    for source in run.sources:
        assert run.keys(source) == reference.keys(source)
        np.testing.assert_array_equal(run.data_counts(source), reference.data_counts(source))


@pytest.mark.parametrize("version", [*FORMAT_VERSIONS, "0.5-old"])
def test_every_format_version_finds_the_suspect_train(format_runs, version):
    run = xd.open_run(format_runs[version])
    suspect = FIRST_TRAIN_ID + FORMAT_RUN["n_trains"] - 1 + BOGUS_TRAIN_OFFSET
    assert run.suspect_train_ids.tolist() == [suspect]


@pytest.mark.parametrize("kind", [*sorted(DETECTORS), "LPD1M-parallel"])
def test_every_detector_kind_opens_with_its_module_sources(detector_runs, kind):
    det = DETECTORS[kind.split("-")[0]]
    modules = DETECTOR_RUN_MODULES.get(det.name, [0, 1])
    run = xd.open_run(detector_runs[kind])
    assert run.sources == sorted(det.source(m) for m in modules)
    assert run.control_sources == []
    assert run.train_ids.tolist() == ALL_TRAINS[:5]
    assert det.data_key in run.keys(det.source(modules[0]))


def test_control_keys_have_no_value_suffix(raw):
    keys = raw.keys(XGM)
    assert "beamPosition.ixPos" in keys and "state" in keys
    assert not any(k.endswith((".value", ".timestamp")) for k in keys)


def test_control_keys_can_list_their_timestamps(raw):
    keys = raw.keys(XGM, timestamps=True)
    assert "beamPosition.ixPos.timestamp" in keys
    assert "beamPosition.ixPos" in keys


def test_key_info_accepts_key_value_as_the_same_key(raw):
    assert raw.key_info(XGM, "beamPosition.ixPos.value") == raw.key_info(XGM, "beamPosition.ixPos")


def test_key_info_of_key_timestamp_is_the_timestamp_dataset(raw):
    info = raw.key_info(XGM, "beamPosition.ixPos.timestamp")
    assert info.path.endswith("/beamPosition/ixPos/timestamp")
    assert info.dtype == np.uint64


def test_instrument_keys_are_named_group_dot_key(raw):
    assert raw.keys(AGIPD.source(0))[:2] == ["detector.data", "detector.trainId"]
    assert "image.data" in raw.keys(AGIPD.source(0))
    assert raw.keys(syn.DIGITISER_SOURCE) == ["data.rawData", "data.samplesTaken"]


def test_legacy_corrected_names_resolve_to_the_current_source(corr):
    legacy, current = AGIPD.legacy_source(4), AGIPD.source(4, corrected=True)
    assert current in corr.sources
    assert legacy not in corr.sources  # not a second source
    assert len([s for s in corr.sources if "AGIPD" in s]) == 16
    assert legacy in corr
    assert corr.resolve_source(legacy) == current
    assert corr.keys(legacy) == corr.keys(current)
    assert corr.key_info(legacy, "image.data") == corr.key_info(current, "image.data")
    assert corr.select(legacy).sources == [current]


def test_legacy_name_globs_select_the_current_sources(corr):
    sel = corr.select(f"{AGIPD.default_device}/DET/*CH0:xtdf", "image.*")
    assert sel.sources == sorted(AGIPD.source(m, corrected=True) for m in AGIPD.modules)
    assert all(k.startswith("image.") for k in sel.keys(sel.sources[0]))


def test_metadata_of_the_run(raw):
    meta = raw.metadata
    assert meta["dataFormatVersion"] == "1.3"
    assert meta["proposalNumber"] == 700000
    assert meta["runNumber"] == 1
    assert "sequenceNumber" not in meta  # differs between files


def test_run_values_include_numbers_strings_and_run_only_keys(raw):
    values = raw.run_values(XGM)
    run_only = syn.RUN_ONLY_VALUES[XGM]
    assert values["classId"] == run_only["classId"] == "DoocsXGM"
    assert isinstance(values["state"], str)
    assert values["state"] == "ON"
    assert isinstance(values["beamPosition.ixPos"], float)
    assert values["pulseEnergy.calibrationFactor"] == pytest.approx(0.987)
    assert isinstance(values["beamPosition.ixPos.timestamp"], int)


def test_run_values_of_a_source_recorded_only_in_run(raw):
    (name, expected), = syn.RUN_ONLY_SOURCES.items()
    values = raw.run_values(name)
    for key, value in expected.items():
        assert values[key] == value


def test_run_values_of_an_unknown_source_is_a_key_error(raw):
    with pytest.raises(KeyError, match="did you mean"):
        raw.run_values(XGM[:-1] + "X")


# ----- irregular runs ---------------------------------------------------------

def test_suspect_train_is_kept_by_default(irregular):
    assert IRREGULAR_SUSPECT in irregular.train_ids.tolist()
    assert irregular.suspect_train_ids.tolist() == [IRREGULAR_SUSPECT]


def test_suspect_train_is_dropped_with_inc_suspect_trains_false(irregular_run):
    run = xd.open_run(irregular_run, inc_suspect_trains=False)
    assert run.train_ids.tolist() == list(range(FIRST_TRAIN_ID, FIRST_TRAIN_ID + 12))
    assert run.suspect_train_ids.tolist() == []
    assert run.data_counts(XGM).tolist() == [1] * 12


def test_zero_padding_gives_no_train_zero(irregular):
    assert 0 not in irregular.train_ids.tolist()
    assert irregular.train_ids.min() == FIRST_TRAIN_ID


def test_module_missing_trains_has_zero_counts_there(irregular):
    counts = dict(zip(irregular.train_ids.tolist(),
                      irregular.data_counts(AGIPD.source(1), "image").tolist(), strict=True))
    for missing in (10002, 10003, 10010):
        assert counts[missing] == 0
    assert counts[10000] > 0
    assert irregular.data_counts(AGIPD.source(0), "image")[2] > 0


def test_empty_source_is_a_source_without_data(irregular):
    for name in syn.EMPTY_SOURCES:
        assert name in irregular.sources
        assert irregular.keys(name)
        assert (irregular.data_counts(name) == 0).all()


def test_control_source_has_one_row_per_train_across_sequence_files(raw):
    rows = raw.rows(XGM)
    assert rows.train_ids.tolist() == ALL_TRAINS
    assert (rows.count == 1).all()
    assert len(np.unique(rows.file_no)) == 2  # two sequence files
    assert {raw.file(int(n)).aggregator for n in rows.file_no} == {"DA01"}


def test_repeated_train_is_one_train_of_the_run(tmp_path):
    from xfeldata.testing import make_example
    path = make_example(tmp_path / "r0001", detector=None, n_trains=6, repeated_train=True)
    run = xd.open_run(path)
    assert run.train_ids.tolist() == list(range(10000, 10006))
    assert (run.data_counts(XGM) == 1).all()


# ----- selecting trains ---------------------------------------------------------

def test_sel_a_scalar_train_id(raw):
    assert raw.sel(trainId=10003).train_ids.tolist() == [10003]


def test_sel_a_list_or_array_of_train_ids_sorts_them(raw):
    assert raw.sel(trainId=[10005, 10001]).train_ids.tolist() == [10001, 10005]
    assert raw.sel(trainId=np.array([10002, 10004], np.uint64)).train_ids.tolist() == [10002, 10004]


def test_sel_slice_is_label_inclusive(raw):
    assert raw.sel(trainId=slice(10002, 10005)).train_ids.tolist() == [10002, 10003, 10004, 10005]
    assert raw.sel(trainId=slice(None, 10001)).train_ids.tolist() == [10000, 10001]
    assert raw.sel(trainId=slice(10008, None)).train_ids.tolist() == [10008, 10009]


def test_sel_slice_outside_the_run_is_empty_not_an_error(raw):
    assert len(raw.sel(trainId=slice(20000, 30000))) == 0


def test_sel_a_missing_train_is_a_key_error_naming_it(raw):
    with pytest.raises(KeyError, match="99999") as err:
        raw.sel(trainId=99999)
    assert isinstance(err.value, TrainIdError)
    assert "10000 to 10009" in str(err.value)


def test_sel_a_list_with_one_missing_train_is_a_key_error(raw):
    with pytest.raises(TrainIdError, match="12345"):
        raw.sel(trainId=[10001, 12345])


def test_sel_a_negative_train_id_is_a_key_error(raw):
    with pytest.raises(TrainIdError, match="-1"):
        raw.sel(trainId=-1)


def test_sel_only_sees_the_trains_of_the_selection(raw):
    part = raw.sel(trainId=slice(10000, 10004))
    with pytest.raises(TrainIdError):
        part.sel(trainId=10007)


def test_isel_by_position(raw):
    assert raw.isel(trainId=0).train_ids.tolist() == [10000]
    assert raw.isel(trainId=-1).train_ids.tolist() == [10009]
    assert raw.isel(trainId=slice(2, 5)).train_ids.tolist() == [10002, 10003, 10004]
    assert raw.isel(trainId=[7, 1]).train_ids.tolist() == [10001, 10007]
    mask = np.arange(N_TRAINS) % 2 == 0
    assert raw.isel(trainId=mask).train_ids.tolist() == ALL_TRAINS[::2]


def test_isel_out_of_range_is_an_index_error(raw):
    with pytest.raises(IndexError):
        raw.isel(trainId=N_TRAINS)


def test_selected_trains_restrict_the_rows(raw):
    part = raw.sel(trainId=slice(10004, 10006))
    assert part.rows(XGM).train_ids.tolist() == [10004, 10005, 10006]
    assert part.data_counts(AGIPD.source(0), "image").tolist() == [2, 2, 2]


# ----- selecting sources and keys ---------------------------------------------------------

def test_select_with_a_source_glob(raw):
    sel = raw.select("*XGM*")
    assert sel.sources == [XGM, syn.XGM_OUTPUT]
    assert sel.keys(XGM) == raw.keys(XGM)


def test_select_with_source_and_key_globs(raw):
    sel = raw.select(f"{AGIPD.default_device}/DET/*CH0:xtdf", "image.*")
    assert len(sel.sources) == 16
    assert all(k.startswith("image.") for k in sel.keys(AGIPD.source(3)))
    assert sel.train_ids.tolist() == ALL_TRAINS


def test_select_with_a_key_glob_skips_sources_without_such_keys(raw):
    sel = raw.select("*", "beamPosition.*")
    assert sel.sources == [XGM]
    assert sel.keys(XGM) == ["beamPosition.ixPos", "beamPosition.iyPos"]


def test_select_an_exact_key_across_a_source_glob(raw):
    sel = raw.select("*", "data.rawData")
    assert sel.sources == [syn.DIGITISER_SOURCE]


def test_select_key_value_is_the_key(raw):
    assert raw.select(XGM, "beamPosition.ixPos.value").keys(XGM) == ["beamPosition.ixPos"]


def test_select_a_dict_of_sources_and_key_sets(raw):
    sel = raw.select({XGM: {"beamPosition.ixPos", "pulseEnergy.*"},
                      syn.CAMERA_SOURCE: {"data.image.pixels"}})
    assert sel.sources == [syn.CAMERA_SOURCE, XGM]
    assert sel.keys(syn.CAMERA_SOURCE) == ["data.image.pixels"]
    assert "beamPosition.ixPos" in sel.keys(XGM)
    assert "beamPosition.iyPos" not in sel.keys(XGM)
    assert "pulseEnergy.photonFlux" in sel.keys(XGM)


def test_select_a_dict_with_an_empty_set_means_all_keys(raw):
    sel = raw.select({XGM: set(), syn.DIGITISER_SOURCE: None})
    assert sel.keys(XGM) == raw.keys(XGM)
    assert sel.keys(syn.DIGITISER_SOURCE) == raw.keys(syn.DIGITISER_SOURCE)


def test_select_a_list_of_source_key_pairs(raw):
    sel = raw.select([(XGM, "beamPosition.*"), ("*CAM*", "*")])
    assert sel.sources == [syn.CAMERA_SOURCE, XGM]
    assert sel.keys(XGM) == ["beamPosition.ixPos", "beamPosition.iyPos"]
    assert sel.keys(syn.CAMERA_SOURCE) == raw.keys(syn.CAMERA_SOURCE)


def test_select_within_a_selection_cannot_widen_it(raw):
    sel = raw.select(XGM, "beamPosition.*")
    with pytest.raises(SourceNameError):
        sel.select(syn.CAMERA_SOURCE)
    with pytest.raises(PropertyNameError):
        sel.key_info(XGM, "state")


def test_select_require_all_keeps_trains_where_every_source_has_data(irregular):
    sel = irregular.select(f"{AGIPD.default_device}/DET/*CH0:xtdf", "image.*", require_all=True)
    tids = sel.train_ids.tolist()
    for missing in (10002, 10003, 10010):  # module 1 misses these
        assert missing not in tids
    assert IRREGULAR_SUSPECT not in tids  # only in DA01
    for source in sel.sources:
        assert (sel.data_counts(source, "image") > 0).all()
    assert 10000 in tids


def test_require_all_looks_at_the_index_group_of_the_selected_keys(irregular):
    """Train 10001 has a header row but no frames: no image data there."""
    assert irregular.data_counts(AGIPD.source(0), "header")[1] == 1
    sel = irregular.select(AGIPD.source(0), "image.data", require_all=True)
    assert 10001 not in sel.train_ids.tolist()


def test_select_unknown_source_names_close_matches(raw):
    with pytest.raises(KeyError, match="did you mean: SA1_XTD2_XGM/DOOCS/MAIN") as err:
        raw.select("SA1_XTD2_XGM/DOOCS/MIAN")
    assert isinstance(err.value, SourceNameError)


def test_unknown_key_names_close_matches(raw):
    with pytest.raises(KeyError, match="beamPosition.ixPos") as err:
        raw.key_info(XGM, "beamPosition.ixpos")
    assert isinstance(err.value, PropertyNameError)
    with pytest.raises(PropertyNameError, match="beamPosition.ixPos"):
        raw.select(XGM, "beamPosition.ixpos")


def test_select_a_key_glob_matching_nothing_is_a_key_error(raw):
    with pytest.raises(KeyError, match="nothing"):
        raw.select("*XGM*", "nothing*")


def test_deselect_sources(raw):
    sel = raw.deselect("*AGIPD*")
    assert not any("AGIPD" in s for s in sel.sources)
    assert XGM in sel.sources
    assert all("AGIPD" not in f for f in sel.files)


def test_deselect_keys(raw):
    sel = raw.deselect(XGM, "current.*")
    assert not any(k.startswith("current.") for k in sel.keys(XGM))
    assert "beamPosition.ixPos" in sel.keys(XGM)


def test_deselect_every_key_removes_the_source(raw):
    sel = raw.deselect(syn.DIGITISER_SOURCE, "data.*")
    assert syn.DIGITISER_SOURCE not in sel.sources


def test_files_of_a_selection_are_those_holding_its_sources(raw):
    assert {f.rsplit("-", 2)[1] for f in raw.select(XGM).files} == {"DA01"}
    assert len(raw.select(AGIPD.source(2)).files) == 2


# ----- splitting and combining ---------------------------------------------------------

def test_split_trains_into_parts(raw):
    parts = raw.split_trains(parts=3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert np.concatenate([p.train_ids for p in parts]).tolist() == ALL_TRAINS
    assert all(p.sources == raw.sources for p in parts)


def test_split_trains_by_trains_per_part(raw):
    parts = raw.split_trains(trains_per_part=4)
    assert len(parts) == 3
    assert max(len(p) for p in parts) <= 4
    assert np.concatenate([p.train_ids for p in parts]).tolist() == ALL_TRAINS


def test_split_trains_never_makes_empty_parts(raw):
    parts = raw.sel(trainId=slice(10000, 10002)).split_trains(parts=10)
    assert [len(p) for p in parts] == [1, 1, 1]


def test_split_trains_needs_parts_or_trains_per_part(raw):
    with pytest.raises(ValueError):
        raw.split_trains()
    with pytest.raises(ValueError):
        raw.split_trains(parts=0)


def test_union_of_two_train_selections(raw):
    a = raw.sel(trainId=slice(10000, 10002))
    b = raw.sel(trainId=[10007, 10001])
    both = a.union(b)
    assert both.train_ids.tolist() == [10000, 10001, 10002, 10007]
    assert both.sources == raw.sources


def test_union_of_two_source_selections_merges_their_keys(raw):
    a = raw.select(XGM, "beamPosition.ixPos")
    b = raw.select({XGM: {"state"}, syn.CAMERA_SOURCE: set()})
    both = a.union(b)
    assert both.sources == [syn.CAMERA_SOURCE, XGM]
    assert both.keys(XGM) == ["beamPosition.ixPos", "state"]
    assert both.keys(syn.CAMERA_SOURCE) == raw.keys(syn.CAMERA_SOURCE)


def test_union_of_all_keys_and_some_keys_is_all_keys(raw):
    both = raw.select(XGM, "state").union(raw.select(XGM))
    assert both.keys(XGM) == raw.keys(XGM)


def test_union_of_two_runs_opened_from_different_files(slow_only_run):
    da01 = xd.open_run(slow_only_run, include="*DA01*")
    da02 = xd.open_run(slow_only_run, include="*DA02*")
    assert syn.CAMERA_SOURCE not in da01.sources
    both = da01.union(da02)
    assert syn.CAMERA_SOURCE in both.sources and XGM in both.sources
    assert len(both.files) == 4
    assert both.train_ids.tolist() == ALL_TRAINS
    assert both.rows(syn.CAMERA_SOURCE, "data").train_ids.tolist() == ALL_TRAINS


# ----- immutability ---------------------------------------------------------

def test_selections_share_the_run_files(raw):
    for sel in (raw.sel(trainId=10001), raw.isel(trainId=slice(0, 2)), raw.select("*XGM*"),
                raw.deselect("*XGM*"), raw.split_trains(parts=2)[1],
                raw.select(XGM).union(raw.select(syn.CAMERA_SOURCE))):
        assert sel._files is raw._files
        assert type(sel) is type(raw)


def test_selecting_does_not_change_the_original(raw):
    before = (raw.train_ids.copy(), raw.sources, raw.keys(XGM))
    raw.sel(trainId=10001)
    raw.select(XGM, "state")
    raw.deselect("*AGIPD*")
    raw.isel(trainId=[0])
    assert raw.train_ids.tolist() == before[0].tolist()
    assert raw.sources == before[1]
    assert raw.keys(XGM) == before[2]


def test_train_ids_are_read_only(raw):
    with pytest.raises(ValueError):
        raw.train_ids[0] = 1
    with pytest.raises(ValueError):
        raw.sel(trainId=[10001, 10002]).train_ids[0] = 1


def test_sources_list_is_a_copy(raw):
    raw.sources.append("bogus")
    raw.keys(XGM).append("bogus")
    assert "bogus" not in raw.sources
    assert "bogus" not in raw.keys(XGM)


def test_sel_with_none_is_the_same_selection(raw):
    assert raw.sel() is raw
    assert raw.isel() is raw


def test_open_file_has_the_same_interface(agipd_raw_run):
    (path,) = agipd_raw_run.glob("*-DA02-S00001.h5")
    f = xd.open_file(path)
    assert isinstance(f, xd.Run)
    assert f.sources == [syn.CAMERA_SOURCE, syn.DIGITISER_SOURCE]
    assert f.train_ids.tolist() == ALL_TRAINS[7:]  # DA02 shifts its boundary by 2 trains
    assert f.files == [str(path)]


def test_open_run_by_proposal_and_run_number(tmp_path, monkeypatch):
    from xfeldata.files.layout import DATA_ROOT_ENV
    from xfeldata.testing import make_example
    run_dir = tmp_path / "SPB" / "202301" / "p700000" / "raw" / "r0007"
    make_example(run_dir, detector=None, n_trains=3, run=7)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    run = xd.open_run(proposal=700000, run=7)
    assert run.train_ids.tolist() == [10000, 10001, 10002]
    assert run.metadata["runNumber"] == 7
    assert xd.open_run(proposal="p700000", run="r7", data="all").sources == run.sources
    with pytest.raises(FileNotFoundError, match="r0008"):
        xd.open_run(proposal=700000, run=8)


def test_plans_a_selection_keeps_give_what_planning_anew_gives(irregular):
    # run.rows and the row plans of small keys are made once per selection (RunSelection.memo)
    key = "beamPosition.ixPos"
    first = irregular[XGM, key]
    again = irregular[XGM, key]
    fresh = xd.open_run(irregular.files[0].rsplit("/", 1)[0], cache=False)[XGM, key]
    for arr in (again, fresh):
        assert arr.identical(first) and arr.dtype == first.dtype
    some = irregular.train_ids[::3]
    picked = irregular.sel(trainId=some)  # its own selection: its own plans
    expected = first.sel(trainId=np.intersect1d(some, first.trainId)).values
    np.testing.assert_array_equal(picked[XGM, key].values, expected)
    assert irregular[XGM, key].equals(first)  # the wider selection's plans are untouched
    rows = irregular.rows(XGM)
    assert not rows.first.flags.writeable and not rows.count.flags.writeable  # shared: read-only
