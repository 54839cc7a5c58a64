"""``run.write(path)``: a selection to one file of the facility's format.

The file opens with EXtra-data's ``H5File`` and with xfeldata with the same
trains, sources, keys and values as the selection of the original run.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import xfeldata as xd
from xfeldata.testing import synthetic as syn

extra_data = pytest.importorskip("extra_data")

AGIPD3 = "SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"


def assert_same_as_extra_data(run_dir, selection, out):
    """EXtra-data reads ``out`` as it reads the same selection of the original run."""
    theirs = extra_data.H5File(str(out))
    original = extra_data.RunDirectory(str(run_dir)).select(selection.sources, require_all=False) \
        .select_trains(extra_data.by_id[selection.train_ids])
    np.testing.assert_array_equal(theirs.train_ids, selection.train_ids)
    assert theirs.all_sources == set(selection.sources)
    for source in selection.sources:
        assert theirs[source].keys(inc_timestamps=False) == set(selection.keys(source)), source
        for key in selection.keys(source):
            a, b = theirs[source, key], original[source, key]
            np.testing.assert_array_equal(a.data_counts(labelled=False), b.data_counts(labelled=False))
            # the same rows for every train; the output is in train order, while a file
            # may hold a bogus train ID out of order (the irregular run's suspect train)
            xr_a, xr_b = a.xarray().sortby("trainId"), b.xarray().sortby("trainId")
            np.testing.assert_array_equal(xr_a.trainId, xr_b.trainId)
            np.testing.assert_array_equal(xr_a.values, xr_b.values, err_msg=f"{source} {key}")


def test_a_selection_written_opens_in_extra_data_with_the_same_values(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run)
    sel = run.select([syn.XGM_SOURCE, f"{syn.XGM_SOURCE}:output", syn.CAMERA_SOURCE, AGIPD3]) \
        .isel(trainId=slice(2, 8))
    out = sel.write(tmp_path / "sel.h5")
    assert_same_as_extra_data(agipd_raw_run, sel, out)
    back = xd.open_file(out)
    np.testing.assert_array_equal(back.train_ids, sel.train_ids)
    for source in sel.sources:
        for key in sel.keys(source):
            np.testing.assert_array_equal(back[source, key].values, sel[source, key].values,
                                          err_msg=f"{source} {key}")
    assert back.run_values(syn.XGM_SOURCE) == sel.run_values(syn.XGM_SOURCE)


def test_detector_frames_keep_the_facility_layout(agipd_raw_run, tmp_path):
    sel = xd.open_run(agipd_raw_run).select(AGIPD3, "image.*").isel(trainId=[1, 4, 5])
    out = sel.write(tmp_path / "det.h5")
    with h5py.File(out, "r") as f:
        data = f[f"INSTRUMENT/{AGIPD3}/image/data"]
        assert data.chunks == (1, 2, 512, 128) and data.compression is None
        assert f["METADATA/dataFormatVersion"][0] == b"1.3"
        np.testing.assert_array_equal(f[f"INDEX/{AGIPD3}/image/count"][:], 2)
    np.testing.assert_array_equal(
        extra_data.H5File(str(out))[AGIPD3, "image.data"].ndarray()[2:4],
        syn.detector_module_train("AGIPD1M", 3, 10004, 2)["image.data"])


def test_irregular_runs_keep_missing_trains_empty_sources_and_ragged_frames(irregular_run, tmp_path):
    run = xd.open_run(irregular_run)
    module1 = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    sel = run.select([module1, syn.XGM_SOURCE, *syn.EMPTY_SOURCES])
    out = sel.write(tmp_path / "irr.h5")
    back = xd.open_file(out)
    np.testing.assert_array_equal(back.train_ids, sel.train_ids)
    assert set(back.sources) == set(sel.sources)
    for source in sel.sources:
        np.testing.assert_array_equal(back.data_counts(source), sel.data_counts(source), err_msg=source)
    np.testing.assert_array_equal(back[module1, "image.data"].values, sel[module1, "image.data"].values)
    assert_same_as_extra_data(irregular_run, sel, out)


def test_an_existing_file_is_kept_unless_overwrite(agipd_raw_run, tmp_path):
    out = tmp_path / "x.h5"
    out.write_bytes(b"keep me")
    sel = xd.open_run(agipd_raw_run).select(syn.XGM_SOURCE)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sel.write(out)
    assert out.read_bytes() == b"keep me"
    sel.write(out, overwrite=True)
    assert xd.open_file(out).sources == [syn.XGM_SOURCE]
    assert not list(tmp_path.glob("*.part"))  # no temporary file left


def test_a_failed_write_leaves_no_partial_file_and_the_old_one_intact(agipd_raw_run, tmp_path,
                                                                       monkeypatch):
    from xfeldata.export import facility as write

    out = tmp_path / "x.h5"
    out.write_bytes(b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(write, "_copy_rows", fail)
    with pytest.raises(OSError, match="disk full"):
        xd.open_run(agipd_raw_run).select(syn.XGM_SOURCE).write(out, overwrite=True)
    assert out.read_bytes() == b"old"
    assert not list(tmp_path.glob("*.part"))
