"""xarray outputs: trees, run Datasets and detector Datasets as netCDF and zarr, read back identical.

``write_netcdf``/``write_zarr`` map the names and attrs the writers refuse
(``xfeldata.export.names``); ``xr.open_dataset(path, engine="xfeldata")`` and
``open_export`` map them back.  Runs are the small session fixtures.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import xfeldata as xd
from xfeldata.export import names
from xfeldata.export.xarray import open_export, write_netcdf, write_zarr

WRITERS = {"nc": write_netcdf, "zarr": write_zarr}


@pytest.fixture(scope="module")
def irregular(irregular_run):
    """Two modules of the irregular run (missing trains, varying frames, an empty source) and slow data."""
    run = xd.open_run(irregular_run)
    return run.deselect("SPB_DET_AGIPD1M-1/DET/[23]CH0:xtdf")


@pytest.mark.parametrize("store", ["nc", "zarr"])
@pytest.mark.parametrize("what", ["tree", "dataset", "detector"])
def test_round_trip_is_identical(irregular, tmp_path, store, what):
    obj = {"tree": irregular.to_datatree, "dataset": irregular.dataset,
           "detector": irregular.detector}[what]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no string variable loaded whole, no unstable zarr data type
        path = WRITERS[store](obj, tmp_path / f"out.{store}", progress=False)
    back = open_export(path, chunks={})
    assert isinstance(back, type(obj))
    xr.testing.assert_identical(back.compute(), obj.compute())
    if what == "dataset":
        assert "SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos" in back.data_vars
        assert back["SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos"].chunks is not None  # read lazily


def test_engine_reads_back_names_and_one_group(irregular, tmp_path):
    ds = irregular.select("SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.*").dataset()
    path = write_netcdf(ds, tmp_path / "xgm.nc", progress=False)
    back = xr.open_dataset(path, engine="xfeldata",
                           drop_variables=["SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.iyPos"])
    assert list(back.data_vars) == ["SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos"]
    assert back["SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos"].attrs["files"] == \
        ds["SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos"].attrs["files"]

    tree = irregular.select("SA1_XTD2_XGM/DOOCS/MAIN*").to_datatree()
    path = write_zarr(tree, tmp_path / "xgm.zarr", progress=False)
    node = xr.open_dataset(path, engine="xfeldata", group="SA1_XTD2_XGM/DOOCS/MAIN")
    xr.testing.assert_identical(node.compute(), tree["SA1_XTD2_XGM/DOOCS/MAIN"].to_dataset().compute())


@pytest.mark.filterwarnings("ignore:Consolidated metadata", "ignore:variable .* dtype=object")
def test_plain_xarray_writers_take_the_tree(irregular, tmp_path):
    """``run.to_datatree()`` needs no mapping: xarray's own to_zarr round-trips it."""
    tree = irregular.select("SA1_XTD2_XGM/DOOCS/MAIN*").to_datatree()
    tree.to_zarr(tmp_path / "plain.zarr")
    xr.testing.assert_identical(xr.open_datatree(tmp_path / "plain.zarr", engine="zarr").compute(),
                                tree.compute())
    tree.to_netcdf(tmp_path / "plain.nc")
    back = xr.open_datatree(tmp_path / "plain.nc", engine="xfeldata")  # no mapping: read as written
    assert set(back.groups) == set(tree.groups)


def test_zarr_gets_equal_chunks_from_chunks_that_follow_files(agipd_raw_run, tmp_path):
    """Sequence files split the train axis unevenly; zarr needs equal chunks, and gets them."""
    run = xd.open_run(agipd_raw_run).select("SA1_XTD2_XGM/DOOCS/MAIN:output", "data.intensityTD")
    ds = run.dataset().chunk({"trainId": (3, 5, 2)})
    path = write_zarr(ds, tmp_path / "uneven.zarr", progress=False)
    xr.testing.assert_identical(open_export(path).compute(), ds.compute())


def test_names_mapping_is_one_to_one():
    tricky = ["a/b", "a%2Fb", "a%b", "%", "/", "a%252F"]
    encoded = [names.encode_name(n) for n in tricky]
    assert len(set(encoded)) == len(tricky) and not any("/" in e for e in encoded)
    assert [names.decode_name(e) for e in encoded] == tricky
    attrs = {"files": ["x.h5"], "flag": True, "none": None, "n": np.uint64(2 ** 64 - 1),
             "big": 2 ** 64 - 1, "nested": {"a": [1, 2]}, "units": "J"}
    back = names.decode_attrs(names.encode_attrs(attrs))
    assert back == {**attrs, "n": np.uint64(2 ** 64 - 1)}


def test_existing_output_needs_overwrite_and_failure_keeps_old(irregular, tmp_path):
    ds = irregular.select("SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.*").dataset()
    path = tmp_path / "xgm.nc"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_netcdf(ds, path, progress=False)
    with pytest.raises(TypeError, match="Dataset, DataArray or DataTree, not ndarray"):
        write_netcdf(ds["SA1_XTD2_XGM/DOOCS/MAIN/beamPosition.ixPos"].values, path, overwrite=True)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["xgm.nc"]
    write_netcdf(ds, path, overwrite=True, progress=False)
    xr.testing.assert_identical(open_export(path).compute(), ds.compute())


@pytest.mark.parametrize("store", ["nc", "zarr"])
def test_scalar_and_non_index_coordinates_and_arrays_of_ones_own_are_written(irregular, tmp_path, store):
    """A selection keeps scalar coordinates (one module, one train) and a Dataset gets arrays of one's own
    (plain dask arrays beside the detector's): both are written and read back as they were."""
    det = irregular.detector()
    one = det.isel(trainId=0).sel(module=det.module.values[0])
    one = one.assign(doubled=one["image.data"] * 2).assign_coords(label=("pulseId", np.arange(one.sizes["pulseId"])))
    assert one["trainId"].ndim == 0 and one["module"].ndim == 0
    path = WRITERS[store](one, tmp_path / f"one.{store}", progress=False)
    back = open_export(path)
    xr.testing.assert_identical(back.compute(), xd.uniform_dask(one).compute())


@pytest.mark.parametrize("store", ["nc", "zarr"])
def test_a_dataarray_is_written_as_a_dataset_of_its_one_variable(tmp_path, store):
    profile = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("trainId", "q"),
                           coords={"trainId": [1, 2], "q": [0.5, 1.5, 2.5]}, name="profile")
    back = open_export(WRITERS[store](profile, tmp_path / f"p.{store}", progress=False))
    xr.testing.assert_identical(back.compute()["profile"], profile)
    unnamed = open_export(WRITERS[store](profile.rename(None), tmp_path / f"u.{store}", progress=False))
    assert list(unnamed.data_vars) == ["data"]
