"""Per-key xarray views, source and run Datasets, DataTrees and control tables.

Every value read through xarray is compared with the same rows read straight
with h5py (:mod:`h5ref`), for each kind of key and every format version.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from h5ref import decode, h5_rows

import xfeldata as xd
from xfeldata import schema
from xfeldata.files.layout import FORMAT_VERSIONS
from xfeldata.testing.synthetic import (
    CAMERA_SOURCE,
    DIGITISER_SOURCE,
    MOTOR_SOURCES,
    REMI_HIT_DTYPE,
    REMI_SOURCE,
    XGM_OUTPUT,
    XGM_SOURCE,
)

AGIPD0 = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
AGIPD1 = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"

#: (source, key) of each kind of per-train key in the synthetic runs.
CONTROL_KEYS = [
    (XGM_SOURCE, "beamPosition.ixPos"),              # float32
    (XGM_SOURCE, "current.left.rangeCode"),          # int32
    (XGM_SOURCE, "pulseEnergy.conversion"),          # float64
    (XGM_SOURCE, "beamPosition.ixPos.timestamp"),    # uint64 change time
    (MOTOR_SOURCES[0], "actualPosition"),
    (MOTOR_SOURCES[0], "isOnTarget"),                # uint8
]
INSTRUMENT_KEYS = [
    (XGM_OUTPUT, "data.intensityTD"),                # (1000,) float32
    (CAMERA_SOURCE, "data.image.pixels"),            # (256, 320) uint16
    (CAMERA_SOURCE, "data.image.bitsPerPixel"),      # scalar
    (DIGITISER_SOURCE, "data.rawData"),              # (4096,) uint16
    (REMI_SOURCE, "rec.nHits"),
]


def assert_matches_h5(arr: xr.DataArray, run_dir, source: str, key: str, train_ids=None) -> None:
    """A per-train DataArray holds exactly the h5py rows, one per train with data."""
    expected = h5_rows(run_dir, source, key)
    if train_ids is not None:
        expected = {t: v for t, v in expected.items() if t in set(np.asarray(train_ids).tolist())}
    assert arr.dims[0] == "trainId"
    assert arr["trainId"].values.tolist() == list(expected)
    values = arr.values
    for i, rows in enumerate(expected.values()):
        assert len(rows) == 1
        expected_row = decode(rows[0])[0] if rows.dtype.kind == "O" else rows[0]
        np.testing.assert_array_equal(values[i], expected_row)


# ----- per-key arrays --------------------------------------------------------------
@pytest.mark.parametrize("version", [*FORMAT_VERSIONS, "0.5-old"])
def test_control_and_instrument_keys_equal_h5py_in_every_format_version(format_runs, version):
    run_dir = format_runs[version]
    run = xd.open_run(run_dir)
    for source, key in CONTROL_KEYS + INSTRUMENT_KEYS:
        arr = run[source, key]
        assert not arr.variable._in_memory, "lazy: dask, or for small keys lazily indexed numpy"
        assert arr.dtype == np.asarray(next(iter(h5_rows(run_dir, source, key).values()))).dtype
        assert_matches_h5(arr, run_dir, source, key)


def test_control_key_labels_and_attrs(agipd_raw_run):
    arr = xd.open_run(agipd_raw_run)[XGM_SOURCE, "beamPosition.ixPos"]
    assert arr.dims == ("trainId",)
    assert arr["trainId"].dtype == np.uint64
    assert arr.attrs["source"] == XGM_SOURCE
    assert arr.attrs["key"] == "beamPosition.ixPos"
    assert arr.attrs["units"] == "mm"          # metricPrefixSymbol "m" + unitSymbol "m"
    assert all(f.endswith(".h5") and "DA01" in f for f in arr.attrs["files"])
    # ".value" names the same key; the 1-D array converts to a pandas Series
    same = xd.open_run(agipd_raw_run)[XGM_SOURCE, "beamPosition.ixPos.value"]
    xr.testing.assert_identical(arr.compute(), same.compute())
    series = arr.to_series()
    assert series.index.name == "trainId" and len(series) == 10


def test_array_entries_keep_their_dimensions(agipd_raw_run):
    arr = xd.open_run(agipd_raw_run)[CAMERA_SOURCE, "data.image.pixels"]
    assert arr.dims == ("trainId", "dim_0", "dim_1")
    assert arr.shape == (10, 256, 320)


def test_string_keys_decode_to_str(format_runs):
    run_dir = format_runs["1.3"]
    arr = xd.open_run(run_dir)[XGM_SOURCE, "state"]
    values = arr.values
    assert values.dtype == object and all(isinstance(v, str) for v in values)
    assert values.tolist() == [decode(rows)[0] for rows in h5_rows(run_dir, XGM_SOURCE, "state").values()]


def test_structured_key_is_a_dataset_of_fields(agipd_raw_run):
    ds = xd.open_run(agipd_raw_run)[REMI_SOURCE, "rec.hits"]
    assert isinstance(ds, xr.Dataset)
    assert set(ds.data_vars) == set(REMI_HIT_DTYPE.names)
    expected = h5_rows(agipd_raw_run, REMI_SOURCE, "rec.hits")
    assert ds["trainId"].values.tolist() == list(expected)
    for name in REMI_HIT_DTYPE.names:
        assert ds[name].dtype == REMI_HIT_DTYPE[name]
        np.testing.assert_array_equal(ds[name].values, np.stack([r[0][name] for r in expected.values()]))
    assert ds.attrs["source"] == REMI_SOURCE


def test_pulse_resolved_key_is_labelled_by_pulse_id(irregular_run):
    """Varying frames per train: each train's frames sit at their pulse IDs, the rest is filled."""
    run = xd.open_run(irregular_run)
    for source in (AGIPD0, AGIPD1):        # module 1 misses trains 10002, 10003, 10010
        arr = run[source, "image.data"]
        assert arr.dims[:2] == ("trainId", "pulseId")
        assert arr.attrs["source"] == source
        frames = h5_rows(irregular_run, source, "image.data")
        pulse_ids = h5_rows(irregular_run, source, "image.pulseId")
        assert arr["trainId"].values.tolist() == list(frames)
        values = arr.values
        for i, (tid, rows) in enumerate(frames.items()):
            slots = np.searchsorted(arr["pulseId"].values, pulse_ids[tid][:, 0])
            np.testing.assert_array_equal(values[i, slots], rows)
            empty = np.setdiff1d(np.arange(arr.sizes["pulseId"]), slots)
            assert (values[i, empty] == 0).all(), "integer fill value is 0"


def test_repeated_pulse_ids_give_a_positional_dimension(detector_runs):
    """LPD parallel gain stores each pulse ID 3 times per train: no pulse labels then."""
    run_dir = detector_runs["LPD1M-parallel"]
    source = "FXE_DET_LPD1M-1/DET/0CH0:xtdf"
    arr = xd.open_run(run_dir)[source, "image.data"]
    assert arr.dims[:2] == ("trainId", schema.POSITION_DIM)
    assert "positional" in arr.attrs["pulse_dim"]
    values = arr.values
    for i, rows in enumerate(h5_rows(run_dir, source, "image.data").values()):
        np.testing.assert_array_equal(values[i, : len(rows)], rows)


def test_corrected_keys_by_new_and_legacy_name(agipd_corr_run):
    run = xd.open_run(agipd_corr_run)
    new, old = "SPB_DET_AGIPD1M-1/CORR/3CH0:output", "SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"
    assert new in run.sources and old not in run.sources      # an alias, not a second source
    for key in ("image.data", "image.mask", "image.gain"):
        arr = run[old, key]
        assert arr.attrs["source"] == new
        expected = h5_rows(agipd_corr_run, new, key)
        values = arr.values
        for i, rows in enumerate(expected.values()):
            np.testing.assert_array_equal(values[i, : len(rows)], rows)
    assert run[new, "image.data"].dtype == np.float32


# ----- selections compose ----------------------------------------------------------
def test_run_selections_compose_with_xarray_selections(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    whole = run[XGM_SOURCE, "beamPosition.ixPos"].compute()
    part = run.sel(trainId=slice(10002, 10005))[XGM_SOURCE, "beamPosition.ixPos"]
    xr.testing.assert_equal(part.compute(), whole.sel(trainId=slice(10002, 10005)))
    by_pos = run.isel(trainId=[0, 9])[XGM_SOURCE, "beamPosition.ixPos"]
    xr.testing.assert_equal(by_pos.compute(), whole.isel(trainId=[0, 9]))
    # and the xarray object selects further
    xr.testing.assert_equal(part.isel(trainId=1).compute(), whole.sel(trainId=10003))
    assert_matches_h5(part, agipd_raw_run, XGM_SOURCE, "beamPosition.ixPos", train_ids=range(10002, 10006))


def test_select_limits_run_dataset_to_chosen_keys(agipd_raw_run):
    run = xd.open_run(agipd_raw_run).select(XGM_SOURCE, "beamPosition.*")
    ds = run.dataset()
    assert sorted(ds.data_vars) == [f"{XGM_SOURCE}/beamPosition.ixPos", f"{XGM_SOURCE}/beamPosition.iyPos"]
    ds2 = xd.open_run(agipd_raw_run).dataset({MOTOR_SOURCES[1]: {"actualPosition"}})
    assert list(ds2.data_vars) == [f"{MOTOR_SOURCES[1]}/actualPosition"]
    assert_matches_h5(ds2[f"{MOTOR_SOURCES[1]}/actualPosition"], agipd_raw_run, MOTOR_SOURCES[1],
                      "actualPosition")


def test_empty_train_selection_gives_empty_arrays_with_their_dims(agipd_raw_run):
    run = xd.open_run(agipd_raw_run).sel(trainId=[])
    assert len(run.train_ids) == 0
    cases = {
        (XGM_SOURCE, "beamPosition.ixPos"): ("trainId",),
        (XGM_SOURCE, "state"): ("trainId",),
        (CAMERA_SOURCE, "data.image.pixels"): ("trainId", "dim_0", "dim_1"),
        (AGIPD0, "image.data"): ("trainId", "gain", "slow_scan", "fast_scan"),
    }
    for (source, key), dims in cases.items():
        arr = run[source, key]
        assert arr.dims == dims and arr.sizes["trainId"] == 0
        assert arr.values.shape[0] == 0
    assert len(run.control_frame()) == 0


# ----- Datasets and trees ----------------------------------------------------------
def test_source_dataset_holds_every_key_of_the_source(slow_only_run):
    run = xd.open_run(slow_only_run)
    ds = run[CAMERA_SOURCE]
    assert isinstance(ds, xr.Dataset)
    assert set(ds.data_vars) == set(run.keys(CAMERA_SOURCE))
    assert ds.attrs["source"] == CAMERA_SOURCE
    for key in ds.data_vars:
        assert_matches_h5(ds[key], slow_only_run, CAMERA_SOURCE, key)


def test_run_dataset_merges_keys_of_different_shapes(slow_only_run):
    run = xd.open_run(slow_only_run).select([(CAMERA_SOURCE, "*"), (XGM_OUTPUT, "*"), (XGM_SOURCE, "*")])
    ds = run.dataset()
    assert f"{CAMERA_SOURCE}/data.image.pixels" in ds and f"{XGM_OUTPUT}/data.intensityTD" in ds
    assert ds.sizes["trainId"] == 10
    for name in (f"{CAMERA_SOURCE}/data.image.dims", f"{XGM_OUTPUT}/data.xTD", f"{XGM_SOURCE}/state"):
        source, key = name.rsplit("/", 1)
        assert_matches_h5(ds[name], slow_only_run, source, key)


def test_datatree_has_one_node_per_source(slow_only_run):
    run = xd.open_run(slow_only_run)
    tree = run.to_datatree()
    for source in run.sources:
        node = tree[source]
        expected = {k for k in run.keys(source) if k != "rec.hits"}
        if source == REMI_SOURCE:      # a structured key gives one variable per field
            expected |= {f"rec.hits.{name}" for name in REMI_HIT_DTYPE.names}
        assert set(node.dataset.data_vars) == expected
    np.testing.assert_array_equal(tree[XGM_SOURCE]["beamPosition.ixPos"].values,
                                  run[XGM_SOURCE, "beamPosition.ixPos"].values)


# ----- control tables --------------------------------------------------------------
def test_control_frame_columns_equal_h5py(agipd_raw_run):
    frame = xd.open_run(agipd_raw_run).control_frame()
    assert frame.index.name == "trainId" and frame.index.dtype == np.uint64
    assert f"{XGM_SOURCE}/beamPosition.ixPos" in frame.columns
    assert all("/" in c for c in frame.columns)
    for source, key in [(XGM_SOURCE, "beamPosition.ixPos"), (MOTOR_SOURCES[0], "actualPosition")]:
        expected = h5_rows(agipd_raw_run, source, key)
        column = frame[f"{source}/{key}"]
        np.testing.assert_array_equal(column.loc[list(expected)].values,
                                      np.concatenate(list(expected.values())))
    state = frame[f"{XGM_SOURCE}/state"]
    assert all(isinstance(v, str) for v in state) and set(state) == {"ON"}


def test_control_frame_globs_and_timestamps(agipd_raw_run):
    frame = xd.open_run(agipd_raw_run).control_frame(sources="*MOTOR*", keys="actual*", timestamps=True)
    assert sorted(frame.columns) == sorted(
        f"{m}/actualPosition{suffix}" for m in MOTOR_SOURCES for suffix in ("", ".timestamp"))
    ts = h5_rows(agipd_raw_run, MOTOR_SOURCES[0], "actualPosition.timestamp")
    np.testing.assert_array_equal(frame[f"{MOTOR_SOURCES[0]}/actualPosition.timestamp"].values,
                                  np.concatenate(list(ts.values())))


def test_control_frame_outer_joins_sources_with_different_trains(irregular_run):
    """The irregular run has an empty gauge source and a suspect train; nothing is lost."""
    run = xd.open_run(irregular_run)
    frame = run.control_frame()
    xgm = h5_rows(irregular_run, XGM_SOURCE, "beamPosition.ixPos")
    assert frame.index.tolist() == sorted(xgm)
    assert f"{XGM_SOURCE}/state" in frame.columns
    # the outer join itself, on the schema function shared with the live buffer
    joined = schema.control_frame({"A/x": (np.array([1, 2], np.uint64), np.array([0.5, 1.5])),
                                   "B/y": (np.array([2, 3], np.uint64), np.array([b"a", b"b"], object))})
    assert joined.index.tolist() == [1, 2, 3]
    assert np.isnan(joined.loc[3, "A/x"]) and pd.isna(joined.loc[1, "B/y"])
    assert joined.loc[2, "B/y"] == "a"


# ----- bad input -------------------------------------------------------------------
def test_unknown_source_or_key_names_close_matches(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    with pytest.raises(KeyError, match="did you mean: SA1_XTD2_XGM/DOOCS/MAIN"):
        run["SA1_XTD2_XGM/DOOCS/MIAN", "beamPosition.ixPos"]
    with pytest.raises(KeyError, match="did you mean: beamPosition.ixPos"):
        run[XGM_SOURCE, "beamPosition.ixPoss"]
    with pytest.raises(KeyError, match="SA1_XTD2_XGM"):
        run["SA1_XTD2_XGM/DOOCS/MAIM"]


def test_merged_datasets_keep_each_variables_attrs(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    xgm = "SA1_XTD2_XGM/DOOCS/MAIN"
    ds = run[xgm]
    assert ds.attrs == {"source": xgm}
    assert ds["beamPosition.ixPos"].attrs["units"] == "mm"
    assert ds["beamPosition.ixPos"].attrs["key"] == "beamPosition.ixPos"
    merged = run.select(xgm, "beamPosition.*").dataset()
    assert merged[f"{xgm}/beamPosition.iyPos"].attrs["source"] == xgm


def test_control_frame_rejects_unknown_sources_keys_and_instrument_sources(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    with pytest.raises(KeyError, match="NOPE"):
        run.control_frame(sources="NOPE")
    with pytest.raises(KeyError, match="nokey"):
        run.control_frame(keys="nokey")
    with pytest.raises(KeyError, match="instrument source"):
        run.control_frame(sources="SA1_XTD2_XGM/DOOCS/MAIN:output")


def test_run_values_of_an_instrument_source_say_why_there_are_none(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    with pytest.raises(KeyError, match="instrument source"):
        run.run_values("SA1_XTD2_XGM/DOOCS/MAIN:output")


def test_detector_pixel_keys_are_labelled_as_in_the_stacked_detector(agipd_raw_run, detector_runs):
    run = xd.open_run(agipd_raw_run)
    per_key = run[AGIPD0, "image.data"]
    stacked = run.detector()["image.data"]
    assert per_key.dims[-3:] == stacked.dims[-3:] == ("gain", "slow_scan", "fast_scan")
    jf = xd.open_run(detector_runs["JUNGFRAU"])
    source = next(s for s in jf.instrument_sources if "JNGFR" in s)
    assert jf[source, "data.adc"].dims[-3:] == ("cell", "slow_scan", "fast_scan")


def test_a_source_dataset_keeps_dtypes_and_masks_what_alignment_fills(irregular_run):
    """Module 0's header group has every train, its image group only the trains with frames
    (and fewer frames in some): the image keys are filled with their dtype's fill value
    (0 for integers) and ``image.present`` is True exactly at the recorded frames."""
    run = xd.open_run(irregular_run)
    ds = run[AGIPD0]
    for key in ("image.data", "image.length", "image.cellId", "header.pulseCount"):
        per_key = run[AGIPD0, key]
        assert ds[key].dtype == per_key.dtype == run.key_info(AGIPD0, key).dtype, key
        assert ds[key].dims[:2] == per_key.dims[:2]
    assert ds.sizes["trainId"] > run[AGIPD0, "image.data"].sizes["trainId"]
    present = ds["image.present"]
    assert present.dims == ("trainId", "pulseId") and present.dtype == bool
    frames = h5_rows(irregular_run, AGIPD0, "image.data")
    pulse_ids = h5_rows(irregular_run, AGIPD0, "image.pulseId")
    assert int(present.sum()) == sum(len(rows) for rows in frames.values())
    for tid in ds["trainId"].values.tolist():
        recorded = pulse_ids[tid][:, 0].tolist() if tid in frames else []
        assert ds["pulseId"].values[present.sel(trainId=tid).values].tolist() == recorded
        cell = ds["image.data"].sel(trainId=tid)
        assert (cell.values[~present.sel(trainId=tid).values] == 0).all()
    assert "header.present" not in ds, "a group on every train of the Dataset needs no mask"
    # on the key's own trains, the aligned key equals the key's own array
    own = run[AGIPD0, "image.data"]
    np.testing.assert_array_equal(ds["image.data"].sel(trainId=own.trainId).values, own.values)
    # run.dataset() aligns the same way, with "source/group.present" masks
    merged = run.select([(AGIPD0, "image.length"), (XGM_SOURCE, "beamPosition.ixPos")]).dataset()
    name = f"{AGIPD0}/image.length"
    assert merged[name].dtype == np.uint32
    mask = merged[f"{AGIPD0}/image.present"]
    assert not mask.sel(trainId=10001).any(), "train 10001 has no frames"
    assert f"{XGM_SOURCE}/.present" not in merged, "the XGM has every train: nothing filled"
