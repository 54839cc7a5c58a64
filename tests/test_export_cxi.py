"""``xfeldata.write_cxi(det, path)``: detector frames as CXI, in EXtra-data's ``write_virtual_cxi`` layout.

The same selection written by EXtra-data and by xfeldata has the same
datasets, attributes and values (xfeldata adds ``entry_1/present``), copied or
virtual; selections EXtra-data cannot make (pulses, frames of a hit finder)
hold exactly the matching frames of EXtra-data's file.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import xfeldata as xd
from xfeldata.analysis import select_frames

extra_data = pytest.importorskip("extra_data")
from extra_data.components import AGIPD1M  # noqa: E402

#: What xfeldata writes beyond EXtra-data's layout.
EXTRA = {"entry_1/present"}


def contents(path) -> dict[str, tuple]:
    """Every object of a (small) HDF5 file: ``{name: (values or None for a group, attrs)}``."""
    found = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            value = obj[()] if isinstance(obj, h5py.Dataset) else None
            found[name] = (value, _attrs(obj))
        f.visititems(visit)
    return found


def _attrs(obj) -> dict:
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in obj.attrs.items()}


def theirs(run_dir, path, trains=None, **options):
    """EXtra-data's ``write_virtual_cxi`` of the AGIPD-1M in ``run_dir`` (a train selection)."""
    det = AGIPD1M(extra_data.RunDirectory(str(run_dir)), raw=options.pop("raw", None), **options)
    if trains is not None:
        det = det.select_trains(trains)
    det.write_virtual_cxi(str(path))
    return path


def assert_same_layout_and_values(mine_path, ref_path):
    """Same objects and attributes, and the same values for the frames and modules ``mine`` holds.

    Frames are matched by ``experiment_identifier``, modules by
    ``module_identifier``; only those frames of the reference are read.
    """
    mine = contents(mine_path)
    with h5py.File(ref_path, "r") as ref:
        names = []
        ref.visit(names.append)
        assert set(mine) - EXTRA == set(names)
        ref_ids = ref["entry_1/experiment_identifier"].asstr()[:].tolist()
        frames = [ref_ids.index(i) for i in mine["entry_1/experiment_identifier"][0].astype(str)]
        assert frames == sorted(frames)
        ref_modules = ref["entry_1/instrument_1/detector_1/module_identifier"][:].tolist()
        modules = [ref_modules.index(m) for m in mine["entry_1/instrument_1/detector_1/module_identifier"][0]]
        present = mine["entry_1/present"][0].astype(bool)
        for name in names:
            obj = ref[name]
            assert mine[name][1] == _attrs(obj), name
            if not isinstance(obj, h5py.Dataset):
                continue
            got = mine[name][0]
            if obj.ndim and obj.shape[0] == len(ref_ids):   # per frame
                value = obj[frames] if frames else obj[:0]
                if obj.ndim > 1:                              # and per module
                    value = value[:, modules]
            elif name.endswith("module_identifier"):
                value = np.asarray(ref_modules)[modules]
            else:
                value = obj[()]
            if name == "entry_1/cellId":  # int64, -1 where a module has no frame (EXtra-data: 0)
                got = np.where(present, got, 0)
            np.testing.assert_array_equal(got, value, err_msg=name)
    return mine


@pytest.mark.parametrize("virtual", [False, True])
def test_a_raw_agipd_run_is_written_as_extra_data_writes_it(agipd_raw_run, tmp_path, virtual):
    det = xd.open_run(agipd_raw_run).detector().isel(trainId=slice(3, 7))   # across sequence files
    out = xd.write_cxi(det, tmp_path / "run.cxi", virtual=virtual)
    mine = assert_same_layout_and_values(out, theirs(agipd_raw_run, tmp_path / "ref.cxi", np.s_[3:7], raw=True))
    assert mine["entry_1/instrument_1/detector_1/data"][0].shape == (8, 16, 2, 512, 128)
    with h5py.File(out) as f:
        assert f["entry_1/instrument_1/detector_1/data"].is_virtual == virtual
        assert f["entry_1/data_1/data"].shape == f["entry_1/instrument_1/detector_1/data"].shape
        assert f["entry_1/data_gain"].asstr()[:].tolist() == ["data", "gain"]


@pytest.mark.parametrize(("name", "trains"), [
    ("spb", np.s_[10:11]),            # raw, 64 frames a train
    ("reduced_spb", np.s_[:4]),       # raw, 0-19 frames a train
    ("modern_spb_proc", np.s_[3:4]),  # corrected: float data, mask and gain
])
def test_extra_data_mock_runs_give_the_same_files(extra_data_runs, tmp_path, name, trains):
    run_dir = extra_data_runs[name]
    with pytest.warns(UserWarning, match="raw") if name != "modern_spb_proc" else _no_warning():
        ref = theirs(run_dir, tmp_path / "ref.cxi", trains)
    det = xd.open_run(run_dir).detector(pulses=xd.by_index[:3]).isel(trainId=trains)
    for virtual in (False, True):
        assert_same_layout_and_values(xd.write_cxi(det, tmp_path / f"{virtual}.cxi", virtual=virtual), ref)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_pulse_module_and_hit_selections_hold_exactly_those_frames(irregular_run, tmp_path):
    run = xd.open_run(irregular_run)
    ref = theirs(irregular_run, tmp_path / "ref.cxi", raw=True)
    with h5py.File(ref) as f:
        n_frames = len(f["entry_1/trainId"])
    for virtual in (False, True):
        out = xd.write_cxi(run.detector(pulses=xd.by_index[1:]), tmp_path / f"p{virtual}.cxi", virtual=virtual)
        mine = assert_same_layout_and_values(out, ref)
        assert 0 < len(mine["entry_1/trainId"][0]) < n_frames

    two = xd.write_cxi(run.detector(modules=[1, 3]), tmp_path / "two.cxi", virtual=True)
    mine = assert_same_layout_and_values(two, ref)
    assert mine["entry_1/instrument_1/detector_1/module_identifier"][0].tolist() == [1, 3]
    # module 1 misses trains 10002, 10003 and 10010: not present there, data filled with 0
    present = mine["entry_1/present"][0]
    missing = np.isin(mine["entry_1/trainId"][0], [10002, 10003, 10010])
    assert missing.any() and not present[missing, 0].any() and present[~missing, 0].all()
    assert not mine["entry_1/instrument_1/detector_1/data"][0][missing, 0].any()

    data = run.detector()
    level = data["image.data"].isel(gain=0).astype("f8").mean(("slow_scan", "fast_scan")).max("module").compute()
    hits = select_frames(data, level > float(np.nanmedian(level.values)))
    mine = assert_same_layout_and_values(xd.write_cxi(hits, tmp_path / "hits.cxi"), ref)
    assert 0 < len(mine["entry_1/trainId"][0]) < n_frames
    np.testing.assert_array_equal(mine["entry_1/pulseId"][0], hits.pulseId.values)


def test_virtual_refuses_values_that_are_not_the_files(agipd_raw_run, tmp_path):
    det = xd.open_run(agipd_raw_run).detector().isel(trainId=slice(0, 2))
    with pytest.raises(ValueError, match="computed .* virtual=False"):
        xd.write_cxi(det.assign({"image.data": det["image.data"] * 2}), tmp_path / "x.cxi", virtual=True)
    with pytest.raises(ValueError, match="in memory"):
        xd.write_cxi(det.load(), tmp_path / "x.cxi", virtual=True)
    assert not list(tmp_path.iterdir())
    # copied, the same Datasets write (the doubled values as they are)
    out = xd.write_cxi(det.assign({"image.data": det["image.data"] * 2}), tmp_path / "x.cxi")
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["entry_1/instrument_1/detector_1/data"][:2],
                                      det["image.data"].values[0].astype("u2") * 2)


def test_an_existing_file_is_kept_unless_overwrite(agipd_raw_run, tmp_path):
    out = tmp_path / "x.cxi"
    out.write_bytes(b"keep")
    det = xd.open_run(agipd_raw_run).detector().isel(trainId=[0])
    with pytest.raises(FileExistsError):
        xd.write_cxi(det, out)
    assert out.read_bytes() == b"keep"
    xd.write_cxi(det, out, overwrite=True)
    assert h5py.is_hdf5(out)


def test_jungfrau_memory_cells_are_frames_as_in_extra_data(detector_runs, tmp_path):
    from extra_data.components import JUNGFRAU

    run_dir = detector_runs["JUNGFRAU"]
    det = xd.open_run(run_dir).detector()
    ref = tmp_path / "ref.cxi"
    JUNGFRAU(extra_data.RunDirectory(str(run_dir)), raw=True).write_virtual_cxi(str(ref))
    mine = assert_same_layout_and_values(xd.write_cxi(det, tmp_path / "jf.cxi"), ref)
    assert "entry_1/memoryCell" in mine   # EXtra-data's label of JUNGFRAU frames
    with pytest.raises(ValueError, match="XTDF detector"):
        xd.write_cxi(det, tmp_path / "v.cxi", virtual=True)


def test_jungfrau_hits_by_memory_cell_are_written_as_the_frames_they_are(detector_runs, tmp_path):
    """select_frames takes JUNGFRAU's (trainId, cell) masks; write_cxi labels each hit by its cell."""
    det = xd.open_run(detector_runs["JUNGFRAU"]).detector()
    mask = det["present"].any("module") & False
    mask[1, 1] = mask[3, 0] = True
    hits = select_frames(det, mask)
    assert hits.sizes["frame"] == 2 and hits["cell"].values.tolist() == det["cell"].values[[1, 0]].tolist()
    with h5py.File(xd.write_cxi(hits, tmp_path / "hits.cxi")) as f:
        assert f["entry_1/trainId"][()].tolist() == det["trainId"].values[[1, 3]].tolist()
        assert f["entry_1/memoryCell"][()].tolist() == hits["cell"].values.tolist()
        np.testing.assert_array_equal(f["entry_1/data_1/data"][()], hits["image.data"].values)


def test_a_lazily_indexed_dataset_maps_as_the_dask_one(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run)
    lazy = xd.write_cxi(run.detector(dask=False).isel(trainId=[1, 6], module=[0, 5]), tmp_path / "l.cxi",
                        virtual=True)
    dask = xd.write_cxi(run.detector().isel(trainId=[1, 6], module=[0, 5]), tmp_path / "d.cxi")
    a, b = contents(lazy), contents(dask)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0], err_msg=name)


@pytest.mark.parametrize("kind", ["LPD1M", "DSSC1M"])
def test_raw_lpd_and_dssc_frames_map_without_their_length_one_axis(detector_runs, tmp_path, kind):
    det = xd.open_run(detector_runs[kind]).detector()
    for virtual in (False, True):
        with h5py.File(xd.write_cxi(det, tmp_path / f"{virtual}.cxi", virtual=virtual)) as f:
            data = f["entry_1/data_1/data"]
            assert data.is_virtual == virtual and data.attrs["axes"] == "experiment_identifier:module_identifier:y:x"
            np.testing.assert_array_equal(data[:], det["image.data"].values.reshape(data.shape))


def test_lpd_parallel_gain_is_written_with_its_stages_but_not_as_virtual_rows(detector_runs, lpd_junk_ids, tmp_path):
    """Each pulse is 3 rows of the files (one per gain stage), which one virtual frame cannot map;
    real files' junk IDs in stages 1 and 2 (``parallel_gain=True``) make no difference."""
    junk = lpd_junk_ids["shifted"]
    for run_dir, options in ((detector_runs["LPD1M-parallel"], {}), (junk, {"parallel_gain": True})):
        det = xd.open_run(run_dir).detector(**options)
        with pytest.raises(ValueError, match="several rows .*use virtual=False"):
            xd.write_cxi(det, tmp_path / "v.cxi", virtual=True)
        with h5py.File(xd.write_cxi(det, tmp_path / "f.cxi", overwrite=True)) as f:
            frames = det["image.data"].values.reshape(-1, 2, 3, 256, 256)   # (train, pulse) frames
            np.testing.assert_array_equal(f["entry_1/data_1/data"][:], frames)


def test_what_is_not_a_detector_dataset_is_refused_by_name(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run)
    with pytest.raises(ValueError, match="image.data"):
        xd.write_cxi(run.select("SA1_XTD2_XGM/DOOCS/MAIN").dataset(), tmp_path / "x.cxi")
    with pytest.raises(ValueError, match="module dimension"):
        xd.write_cxi(run.detector().isel(module=0), tmp_path / "x.cxi")
    assert not list(tmp_path.iterdir())


def test_calibrated_hits_are_written_with_their_frames_present(analysis_runs, tmp_path):
    """calibrate makes ``present`` per pixel (False at bad pixels): select_frames of its hits and the whole
    calibrated Dataset are written, a frame present where any of its pixels is, values as computed."""
    from xfeldata import analysis

    constants = analysis.dark_constants(xd.open_run(analysis_runs["dark"], progress=False).detector())
    det = analysis.calibrate(xd.open_run(analysis_runs["data"], progress=False).detector(), constants)
    lit = analysis.lit_pixels(analysis.photon_count(det, 60), 0)  # per frame, over every module
    hits = analysis.select_frames(det, lit > float(np.median(lit.values)))
    path = xd.write_cxi(hits, tmp_path / "hits.cxi", progress=False)
    with h5py.File(path, "r") as f:
        data, present = f["entry_1/data_1/data"][()], f["entry_1/present"][()]
        np.testing.assert_array_equal(f["entry_1/trainId"][()], hits["trainId"].values)
    expected = hits["image.data"].transpose("frame", "module", ...).values
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(present.astype(bool), hits["present"].any(["slow_scan", "fast_scan"]).values)
    whole = xd.write_cxi(det, tmp_path / "all.cxi", progress=False)
    with h5py.File(whole, "r") as f:
        assert f["entry_1/data_1/data"].shape[0] == det.sizes["trainId"] * det.sizes["pulseId"]
