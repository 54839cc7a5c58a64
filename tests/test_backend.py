"""The ``xfeldata`` xarray engine: labels, values, laziness, chunks, datatree, errors."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import xarray as xr

import xfeldata as xd
from xfeldata import backend, views
from xfeldata.backend import XfeldataBackendArray, XfeldataBackendEntrypoint

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
XGM_OUT = "SA1_XTD2_XGM/DOOCS/MAIN:output"
MOTOR = "SPB_IRU_MOTORS/MOTOR/SAMPLE_X"
AGIPD1 = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"


def _open(path, **kwargs) -> xr.Dataset:
    return xr.open_dataset(path, engine="xfeldata", **kwargs)


def _h5_rows(run, source: str, key: str, train_id: int) -> np.ndarray:
    """A train's rows of a key, read straight with h5py."""
    info = run.key_info(source, key)
    found = run.rows(source, info.group).lookup(np.array([train_id], np.uint64))
    if not len(found.train_ids):
        return np.zeros((0, *info.entry_shape), info.dtype)
    fno, first, count = int(found.file_no[0]), int(found.first[0]), int(found.count[0])
    with h5py.File(run.file(fno).path, "r") as f:
        return f[run.file_key_info(fno, source, key).path][first: first + count]


def _assert_matches_key_array(ds: xr.Dataset, run, source: str, name: str, key: str) -> None:
    """Values of ``ds[name]`` equal ``views.key_array`` on its labels; the fill value elsewhere."""
    ref = views.key_array(run, source, key)
    got = ds[name]
    sub = got.sel({d: ref[d] for d in ref.dims if d in ref.coords})
    np.testing.assert_array_equal(sub.values, ref.values.astype(got.dtype))
    extra = np.setdiff1d(got.trainId, ref.trainId)
    if len(extra):
        filled = got.sel(trainId=extra).values
        assert (np.isnan(filled).all() if got.dtype.kind == "f" else (filled == 0).all())


@pytest.mark.parametrize("source", [XGM_OUT, MOTOR])
def test_labels_match_source_dataset(irregular_run, source):
    run = xd.open_run(irregular_run)
    ds = _open(irregular_run, source=source)
    ref = views.source_dataset(run, source)
    assert list(ds.data_vars) == list(ref.data_vars)
    assert dict(ds.sizes) == dict(ref.sizes)
    assert ds.attrs == ref.attrs == {"source": source}
    for name, var in ref.data_vars.items():
        assert ds[name].dims == var.dims and ds[name].dtype == var.dtype, name
        np.testing.assert_array_equal(ds[name].values, var.values)
    for name, coord in ref.coords.items():
        np.testing.assert_array_equal(ds[name].values, coord.values)
        assert ds[name].dtype == coord.dtype
    # variable attrs are those of key_array (source, key, files)
    key = next(iter(ref.data_vars))
    assert ds[key].attrs == views.key_array(run, source, key).attrs


def test_control_values_equal_h5py(slow_only_run):
    run = xd.open_run(slow_only_run)
    ds = _open(slow_only_run, source=XGM)
    assert ds["beamPosition.ixPos"].dims == ("trainId",)
    np.testing.assert_array_equal(ds.trainId, run.train_ids)
    for key in ("beamPosition.ixPos", "pulseEnergy.photonFlux", "state"):
        values = ds[key].values
        for i, tid in enumerate(ds.trainId.values[[0, 4, -1]].tolist()):
            expected = _h5_rows(run, XGM, key, tid)[0]
            if isinstance(expected, bytes):
                expected = expected.decode()
            got = values[[0, 4, -1][i]]
            assert got == expected
    assert ds["state"].dtype == object and isinstance(ds["state"].values[0], str)
    _assert_matches_key_array(ds, run, XGM, "beamPosition.ixPos", "beamPosition.ixPos")


def test_instrument_values(irregular_run):
    run = xd.open_run(irregular_run)
    ds = _open(irregular_run, source=XGM_OUT, keys="data.intensityTD")
    assert list(ds.data_vars) == ["data.intensityTD"]
    var = ds["data.intensityTD"]
    assert var.dims == ("trainId", "data.intensityTD.dim_0")
    _assert_matches_key_array(ds, run, XGM_OUT, "data.intensityTD", "data.intensityTD")
    for tid in (10000, 10011):
        np.testing.assert_array_equal(var.sel(trainId=tid).values,
                                      _h5_rows(run, XGM_OUT, "data.intensityTD", tid)[0])
    # structured keys give one variable per field, as the views do
    remi = _open(irregular_run, source="SQS_REMI_DLD6/DET/TOP:output")
    ref = views.source_dataset(run, "SQS_REMI_DLD6/DET/TOP:output")
    assert list(remi.data_vars) == list(ref.data_vars)
    for name in ref.data_vars:
        np.testing.assert_array_equal(remi[name].values, ref[name].values)


def test_pulse_resolved_detector_padded(irregular_run):
    run = xd.open_run(irregular_run)
    ds = _open(irregular_run, source=AGIPD1, keys=["image.data", "image.pulseId", "header.*"])
    data = ds["image.data"]
    assert data.dims[:2] == ("trainId", "pulseId")
    assert data.dims[2:] == ("gain", "slow_scan", "fast_scan")  # as run.detector() names them
    # Trains with a header but no frames are on the axis (outer join), filled with 0:
    # the dtype is kept, and image.present says which frames were recorded.
    assert data.dtype == np.uint16
    present = ds["image.present"]
    assert present.dims == ("trainId", "pulseId")
    _assert_matches_key_array(ds, run, AGIPD1, "image.data", "image.data")
    ref = views.key_array(run, AGIPD1, "image.data")
    pulse_ids = ds["image.pulseId"]
    for tid in ds.trainId.values.tolist():
        raw = _h5_rows(run, AGIPD1, "image.data", tid)
        got = data.sel(trainId=tid).values
        if not len(raw):
            assert (got == 0).all() and not present.sel(trainId=tid).any()
            continue
        pids = _h5_rows(run, AGIPD1, "image.pulseId", tid)[:, 0]
        slots = np.searchsorted(ds.pulseId.values, pids)
        assert present.sel(trainId=tid).values.tolist() == np.isin(np.arange(ds.sizes["pulseId"]),
                                                                   slots).tolist()
        np.testing.assert_array_equal(got[slots], raw)
        missing = np.setdiff1d(np.arange(ds.sizes["pulseId"]), slots)
        if tid in ref.trainId:  # padded inside key_array with its fill (0 for integers)
            assert (got[missing] == 0).all()
        np.testing.assert_array_equal(pulse_ids.sel(trainId=tid).values[slots, 0], pids)


@pytest.mark.parametrize("kind", ["JUNGFRAU", "LPD1M-parallel", "DSSC1M"])
def test_detector_kinds(detector_runs, kind):
    path = detector_runs[kind]
    run = xd.open_run(path)
    source = next(s for s in run.instrument_sources if "DET" in s)
    key = "data.adc" if kind == "JUNGFRAU" else "image.data"
    ds = _open(path, source=source, keys=key)
    _assert_matches_key_array(ds, run, source, key, key)
    tid = int(ds.trainId[1])
    raw = _h5_rows(run, source, key, tid)
    got = ds[key].sel(trainId=tid).values
    np.testing.assert_array_equal(got.reshape(raw.shape) if kind == "JUNGFRAU" else got[: len(raw)],
                                  raw)


def test_corrected_legacy_name_and_compression(agipd_corr_run):
    run = xd.open_run(agipd_corr_run)
    ds = _open(agipd_corr_run, source="SPB_DET_AGIPD1M-1/DET/3CH0:xtdf", keys="image.data")
    assert ds.attrs["source"] == "SPB_DET_AGIPD1M-1/CORR/3CH0:output"
    _assert_matches_key_array(ds, run, ds.attrs["source"], "image.data", "image.data")


def _count_reads(monkeypatch) -> list[int]:
    rows: list[int] = []
    real = backend.execute_block

    def counting(block):
        rows.append(sum(r.stop - r.start for r in block.reads))
        return real(block)

    monkeypatch.setattr(backend, "execute_block", counting)
    return rows


def test_indexing_reads_only_requested_trains(agipd_raw_run, monkeypatch):
    source = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    ds = _open(agipd_raw_run, source=source, keys="image.data")
    rows = _count_reads(monkeypatch)
    assert rows == []  # opening reads no data
    part = ds["image.data"].isel(trainId=[2, 7])
    assert rows == []  # still lazy
    values = part.values
    assert rows == [4]  # 2 trains x 2 frames, in one block
    assert values.shape[:2] == (2, 2)
    rows.clear()
    one = ds["image.data"].isel(trainId=slice(3, 4), pulseId=0, slow_scan=slice(0, 8))
    assert one.values.shape == (1, 2, 8, 128)
    assert rows == [2]
    rows.clear()
    assert ds["image.data"].isel(trainId=[]).values.shape[0] == 0
    assert rows == []


def test_chunks_follow_files_and_hdf5_chunks(agipd_raw_run, monkeypatch):
    run = xd.open_run(agipd_raw_run)
    for source, key in [("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.data"), (XGM_OUT, "data.intensityTD")]:
        info = run.key_info(source, key)
        found = run.rows(source, info.group)
        # one dask chunk per file (the files are smaller than the target size)
        per_file = tuple(np.unique(found.file_no, return_counts=True)[1].tolist())
        ds = _open(agipd_raw_run, source=source, keys=key, chunks={})
        var = ds[key]
        assert var.chunks[0] == per_file
        assert var.encoding["preferred_chunks"]["trainId"] == per_file
        assert all(len(c) == 1 for c in var.chunks[1:])
        np.testing.assert_array_equal(var.values, _open(agipd_raw_run, source=source, keys=key)[key].values)
    # a small target: chunks hold whole HDF5 chunks (the writer chunks 8 rows of XGM data)
    monkeypatch.setattr(backend, "TARGET_CHUNK_BYTES", 1)
    info = run.key_info(XGM_OUT, "data.intensityTD")
    var = _open(agipd_raw_run, source=XGM_OUT, chunks={})["data.intensityTD"]
    found = run.rows(XGM_OUT, "data")
    hdf5_rows = info.chunks[0]
    edges = np.cumsum((0, *var.chunks[0]))[:-1]
    for e in edges[1:]:
        assert found.file_no[e] != found.file_no[e - 1] or found.first[e] % hdf5_rows == 0


def test_pickle_backend_arrays(irregular_run):
    ds = _open(irregular_run, source=AGIPD1, keys="image.data")
    array = ds["image.data"].variable._data
    while not isinstance(array, XfeldataBackendArray):  # unwrap xarray's adapters
        array = array.array
    clone = pickle.loads(pickle.dumps(array))
    assert clone.shape == array.shape
    restored = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(restored["image.data"].isel(trainId=[0, 3]).values,
                                  ds["image.data"].isel(trainId=[0, 3]).values)
    chunked = pickle.loads(pickle.dumps(_open(irregular_run, source=XGM, chunks={})))
    assert chunked["beamPosition.ixPos"].chunks is not None


def test_guess_can_open(agipd_raw_run, tmp_path):
    entry = XfeldataBackendEntrypoint()
    assert entry.guess_can_open(agipd_raw_run)
    assert entry.guess_can_open(str(agipd_raw_run))
    assert not entry.guess_can_open(next(agipd_raw_run.glob("*.h5")))
    assert not entry.guess_can_open(tmp_path)
    (tmp_path / "other.h5").write_bytes(b"")
    assert not entry.guess_can_open(tmp_path)
    assert not entry.guess_can_open(tmp_path / "missing")
    assert xr.backends.plugins.guess_engine(str(agipd_raw_run)) == "xfeldata"
    assert entry.description and entry.url
    assert "source" in entry.open_dataset_parameters


def test_open_datatree(slow_only_run):
    run = xd.open_run(slow_only_run)
    tree = xr.open_datatree(slow_only_run, engine="xfeldata")
    leaves = {node.path.lstrip("/") for node in tree.subtree if node.has_data}
    assert leaves == {s for s in run.sources if run.keys(s)}
    node = tree[XGM]
    assert node.attrs["source"] == XGM
    np.testing.assert_array_equal(node["beamPosition.ixPos"].values,
                                  _open(slow_only_run, source=XGM)["beamPosition.ixPos"].values)
    small = xr.open_datatree(slow_only_run, engine="xfeldata", source="*XGM*", keys="beamPosition.*",
                             chunks={})
    assert {n.path for n in small.subtree if n.has_data} == {f"/{XGM}"}
    assert set(small[XGM].data_vars) == {"beamPosition.ixPos", "beamPosition.iyPos"}
    groups = xr.open_groups(slow_only_run, engine="xfeldata", source=XGM)
    assert set(groups) == {"/", f"/{XGM}"}


def test_keys_and_drop_variables(slow_only_run):
    ds = _open(slow_only_run, source=XGM, keys=["beamPosition.*", "state"],
               drop_variables="beamPosition.iyPos")
    assert list(ds.data_vars) == ["beamPosition.ixPos", "state"]


def test_without_source_the_whole_run_as_run_dataset(slow_only_run):
    run = xd.open_run(slow_only_run)
    xr.testing.assert_identical(_open(slow_only_run), run.dataset())
    ds = _open(slow_only_run, keys="beamPosition.*", drop_variables=f"{XGM}/beamPosition.iyPos")
    assert f"{XGM}/beamPosition.ixPos" in ds and f"{XGM}/beamPosition.iyPos" not in ds
    assert all(name.endswith("beamPosition.ixPos") or name.endswith("beamPosition.iyPos") for name in ds.data_vars)


def test_bad_source_errors(slow_only_run):
    with pytest.raises(ValueError, match="did you mean: SA1_XTD2_XGM/DOOCS/MAIN"):
        _open(slow_only_run, source="SA1_XTD2_XGM/DOOCS/MIAN")
    with pytest.raises(ValueError, match="matches .* sources"):
        _open(slow_only_run, source="*")
    with pytest.raises(KeyError, match="nosuchkey"):
        _open(slow_only_run, source=XGM, keys=["nosuchkey"])


def test_source_without_data(irregular_run):
    source = "SA3_XTD10_MCP/ADC/1:channel_6.output"
    for chunks in (None, {}):
        ds = _open(irregular_run, source=source, chunks=chunks)
        assert ds.sizes["trainId"] == 0 and ds.trainId.dtype == np.uint64
        assert ds["data.rawData"].values.shape == (0, 4096)
