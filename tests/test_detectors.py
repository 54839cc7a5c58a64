"""Multi-module detectors stacked into one labelled Dataset (``run.detector()``).

For every detector kind, raw and corrected, the stacked values are compared
cell by cell with the module files read straight with h5py: each frame must
sit at its train, pulse ID and module, and every other cell must hold the fill
value with ``present`` False: ``present (trainId, pulseId, module)`` is True
exactly where a frame was recorded.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import DETECTOR_RUN_MODULES, FIRST_TRAIN_ID
from h5ref import h5_rows

import xfeldata as xd
from xfeldata.detectors.kinds import DETECTORS
from xfeldata.detectors.plan import by_id, by_index
from xfeldata.detectors.stacking import detector_sources
from xfeldata.testing import make_example

AGIPD = "SPB_DET_AGIPD1M-1"


def expected_frames(run_dir, source: str, xtdf: bool, data_key: str):
    """{train: (pulse IDs, frames)} of one module, frames squeezed as the Dataset holds them."""
    frames = h5_rows(run_dir, source, data_key)
    if not xtdf:   # JUNGFRAU: one row per train holding all memory cells
        return {t: (np.arange(rows.shape[1]), rows[0]) for t, rows in frames.items()}
    pulse_ids = h5_rows(run_dir, source, "image.pulseId")
    out = {}
    for t, rows in frames.items():
        pids = pulse_ids[t].reshape(len(rows), -1)[:, 0]
        if rows.ndim == 4 and rows.shape[1] == 1:     # raw LPD/DSSC: (frames, 1, ss, fs)
            rows = rows[:, 0]
        out[t] = (pids, rows)
    return out


def assert_detector_matches_h5(ds, run_dir, var: str = "image.data", key: str | None = None,
                               fill=0) -> None:
    """Every cell of ``ds[var]`` is the module's frame (h5py) or ``fill`` where it has none,
    and ``present`` is True exactly at the frames."""
    kind = DETECTORS[ds.attrs["kind"]]
    key = key or (kind.data_key if var == "image.data" else var)
    pulse_dim = "pulseId" if kind.xtdf else "cell"
    sources = detector_sources(xd.open_run(run_dir))[ds.attrs["detector"]]
    values = ds[var].values
    present = ds["present"].values
    pulses = ds[pulse_dim].values
    for mi, module in enumerate(ds["module"].values.tolist()):
        frames = expected_frames(run_dir, sources[module], kind.xtdf, key) if module in sources else {}
        for ti, tid in enumerate(ds["trainId"].values.tolist()):
            cell = values[ti, :, mi]
            if tid not in frames:
                assert not present[ti, :, mi].any(), (tid, module)
                np.testing.assert_array_equal(cell, np.full_like(cell, fill))
                continue
            pids, rows = frames[tid]
            slots = np.searchsorted(pulses, pids)
            expected_present = np.zeros(len(pulses), bool)
            expected_present[slots] = True
            np.testing.assert_array_equal(present[ti, :, mi], expected_present, err_msg=str((tid, module)))
            np.testing.assert_array_equal(cell[slots], rows)
            others = np.setdiff1d(np.arange(len(pulses)), slots)
            np.testing.assert_array_equal(cell[others], np.full_like(cell[others], fill))


# ----- every kind ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["AGIPD1M", "AGIPD500K", "LPD1M", "DSSC1M", "LPDMINI"])
def test_xtdf_detectors_equal_h5py(detector_runs, kind):
    ds = xd.open_run(detector_runs[kind]).detector()
    det = DETECTORS[kind]
    assert ds.attrs["kind"] == kind and ds.attrs["detector"] == det.default_device
    assert ds["module"].values.tolist() == DETECTOR_RUN_MODULES.get(kind, [0, 1])  # the modules found
    pixel = ("gain", "slow_scan", "fast_scan") if det.raw_entry_shape[0] == 2 else ("slow_scan", "fast_scan")
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", *pixel)
    assert ds["image.data"].shape[-2:] == det.raw_entry_shape[-2:]
    assert ds["present"].dims == ("trainId", "pulseId", "module")
    assert ds["present"].any("pulseId").values.sum(axis=0).tolist() == [5, 5]
    everything = xd.open_run(detector_runs[kind]).detector(modules=det.modules)
    assert everything["module"].values.tolist() == list(det.modules)
    assert not everything["present"].sel(module=list(det.modules[2:])).any()
    assert ds["cellId"].dims == ("trainId", "pulseId", "module")
    assert_detector_matches_h5(ds, detector_runs[kind])


def test_jungfrau_memory_cells_are_the_pulse_like_dimension(detector_runs):
    run_dir = detector_runs["JUNGFRAU"]
    ds = xd.open_run(run_dir).detector()
    assert ds["image.data"].dims == ("trainId", "cell", "module", "slow_scan", "fast_scan")
    assert ds["module"].values.tolist() == [1, 2]   # the modules found, numbered from 1
    assert ds["present"].dims == ("trainId", "cell", "module")
    assert ds.sizes["cell"] == 2
    assert ds["present"].sel(module=DETECTOR_RUN_MODULES["JUNGFRAU"]).all()
    assert_detector_matches_h5(ds, run_dir)
    assert_detector_matches_h5(ds, run_dir, var="image.gain", key="data.gain")
    cells = h5_rows(run_dir, "SPB_IRDA_JF4M/DET/JNGFR01:daqOutput", "data.memoryCell")
    np.testing.assert_array_equal(ds["cellId"].sel(module=1).values, np.stack([r[0] for r in cells.values()]))
    one_cell = xd.open_run(run_dir).detector(pulses=by_index[1:])
    assert one_cell["cell"].values.tolist() == [1]
    np.testing.assert_array_equal(one_cell["image.data"].values, ds["image.data"].values[:, 1:])


def test_lpd_mini_modules_count_from_one_with_frames_of_two_tiles(detector_runs):
    run_dir = detector_runs["LPDMINI"]
    run = xd.open_run(run_dir)
    assert "FXE_DET_LPD_MINI/DET/1CH0:xtdf" in run.sources
    ds = run.detector()
    assert ds.attrs["kind"] == "LPDMINI" and ds.attrs["detector"] == "FXE_DET_LPD_MINI"
    assert ds["module"].values.tolist() == [1, 2]
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", "slow_scan", "fast_scan")
    assert ds["image.data"].shape[-2:] == (32, 256)     # 2 tiles of 16 x 256 pixels
    assert ds["image.data"].dtype == np.uint16
    assert_detector_matches_h5(ds, run_dir)


def test_epix100_is_one_module_with_one_frame_per_train(detector_runs):
    run_dir = detector_runs["EPIX100"]
    run = xd.open_run(run_dir)
    source = "MID_EXP_EPIX-1/DET/RECEIVER:daqOutput"
    assert source in run.sources
    ds = run.detector()
    assert ds.attrs["kind"] == "EPIX100" and ds.attrs["detector"] == "MID_EXP_EPIX-1"
    assert ds["image.data"].dims == ("trainId", "cell", "module", "slow_scan", "fast_scan")
    assert ds["image.data"].shape == (5, 1, 1, 704, 768)
    assert ds["image.data"].dtype == np.uint16
    assert ds["module"].values.tolist() == [0] and ds["present"].values.all()
    frames = h5_rows(run_dir, source, "data.image.pixels")
    np.testing.assert_array_equal(ds["image.data"].values[:, 0, 0], np.concatenate(list(frames.values())))
    with pytest.raises(KeyError, match="modules \\[1\\] are not modules of MID_EXP_EPIX-1"):
        run.detector(modules=[0, 1])


def test_corrected_epix100_names_its_source_corr_receiver(tmp_path):
    run = xd.open_run(make_example(tmp_path / "r0001", detector="EPIX100", corrected=True,
                                   n_trains=2, slow_sources=False))
    assert run.sources == ["MID_EXP_EPIX-1/CORR/RECEIVER:output"]
    ds = run.detector()
    assert ds["image.data"].dtype == np.float32 and ds["image.mask"].dtype == np.uint32
    assert ds["image.data"].shape == (2, 1, 1, 704, 768)


def test_lpd_parallel_gain_has_a_gain_dimension_of_three(detector_runs):
    run_dir = detector_runs["LPD1M-parallel"]
    ds = xd.open_run(run_dir).detector(modules=[0, 1])
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan")
    assert ds.sizes["gain"] == 3 and ds.sizes["pulseId"] == 2
    assert ds.attrs["frames_per_pulse"] == 3
    values = ds["image.data"].values
    for mi, module in enumerate((0, 1)):
        frames = expected_frames(run_dir, f"FXE_DET_LPD1M-1/DET/{module}CH0:xtdf", True, "image.data")
        for ti, (pids, rows) in enumerate(frames.values()):
            # stored stage by stage: the pulses of gain 0, then gain 1, then gain 2
            stages = rows.reshape(3, -1, *rows.shape[1:])
            order = np.argsort(pids[: len(pids) // 3])
            for stage in range(3):
                np.testing.assert_array_equal(values[ti, :, mi, stage], stages[stage][order])


# ----- LPD parallel gain: which frames are which gain stage -------------------------
# Real LPD files record valid pulse and cell IDs only in the first third of each
# train (``with_junk_pulse_ids``); ``parallel_gain=True`` says the thirds are the
# gain stages, None recognises them where the thirds repeat the same IDs.
LPD = "FXE_DET_LPD1M-1"


@pytest.mark.parametrize("dask", [True, False])
def test_parallel_gain_true_labels_all_three_stages_by_the_first_thirds_ids(detector_runs, lpd_junk_ids, dask):
    """With junk IDs, ``parallel_gain=True`` gives the Dataset the clean files give: values,
    ``present``, ``cellId`` and the ``gain`` axis; without it the junk IDs become pulses."""
    clean = xd.open_run(detector_runs["LPD1M-parallel"]).detector(dask=dask)
    assert clean.sizes["gain"] == 3 and clean["pulseId"].values.tolist() == [0, 1]
    junk = xd.open_run(lpd_junk_ids["shifted"])
    xr.testing.assert_identical(junk.detector(parallel_gain=True, dask=dask).compute(), clean.compute())
    xr.testing.assert_identical(
        xd.open_run(detector_runs["LPD1M-parallel"]).detector(parallel_gain=True, dask=dask).compute(),
        clean.compute())
    mixed = junk.detector(dask=dask)   # not recognised: 6 "pulses" mixing the stages
    assert "gain" not in mixed.dims and mixed.sizes["pulseId"] == 6
    assert junk.detector(parallel_gain=False, dask=dask).sizes == mixed.sizes


def test_a_repeated_lpd_pulse_id_suggests_parallel_gain(lpd_junk_ids, detector_runs):
    run = xd.open_run(lpd_junk_ids["zeros"])
    with pytest.raises(ValueError, match=r"0CH0:xtdf: a pulse ID repeats within a train; .*parallel_gain=True"):
        run.detector()
    assert run.detector(parallel_gain=True).sizes["gain"] == 3
    with pytest.raises(ValueError, match="repeats within a train; cannot label frames by pulse ID$"):
        xd.open_run(detector_runs["LPD1M-parallel"]).detector(parallel_gain=False)   # never split


def test_parallel_gain_needs_a_multiple_of_three_frames_in_every_train(detector_runs):
    """``detector_runs["LPD1M"]`` has 2 frames per train."""
    with pytest.raises(ValueError, match=f"{LPD}/DET/0CH0:xtdf: train {FIRST_TRAIN_ID} has 2 frames, "
                                         "not a multiple of 3"):
        xd.open_run(detector_runs["LPD1M"]).detector(parallel_gain=True)


@pytest.mark.parametrize("kind", ["AGIPD1M", "DSSC1M", "JUNGFRAU"])
def test_parallel_gain_is_only_for_lpd(detector_runs, kind):
    run = xd.open_run(detector_runs[kind])
    with pytest.raises(ValueError, match=f"parallel_gain=True is for LPD detectors.*{kind} has no such"):
        run.detector(parallel_gain=True)
    xr.testing.assert_identical(run.detector(parallel_gain=False), run.detector())
    with pytest.raises(TypeError, match="parallel_gain must be None, True or False"):
        run.detector(parallel_gain="yes")


def test_parallel_gain_pulse_selections_keep_every_stage_of_the_pulses_chosen(lpd_junk_ids, detector_runs):
    """By ID (the first third's IDs) and by position within a stage, as without junk IDs."""
    run = xd.open_run(lpd_junk_ids["shifted"])
    full = run.detector(parallel_gain=True).compute()
    for pulses, expected in [(by_id[[1]], [1]), (by_id[0:0], [0]), (by_index[-1], [1]), (by_index[:1], [0])]:
        part = run.detector(parallel_gain=True, pulses=pulses)
        xr.testing.assert_identical(part.compute(), full.sel(pulseId=expected))
        assert part["present"].values.all()
    with pytest.raises(ValueError, match="pulse ID 1000 is not in"):   # a junk ID labels nothing
        run.detector(parallel_gain=True, pulses=by_id[[1000]])
    with pytest.raises(ValueError, match="position 2 is beyond every train"):
        run.detector(parallel_gain=True, pulses=by_index[[2]])
    # recognised without the option, a position counts within a stage too
    clean = xd.open_run(detector_runs["LPD1M-parallel"])
    xr.testing.assert_identical(clean.detector(pulses=by_index[:1]).compute(), full.sel(pulseId=[0]))


# ----- raw and corrected, names and files ------------------------------------------
def test_raw_agipd_over_several_sequence_files(agipd_raw_run):
    ds = xd.open_run(agipd_raw_run).detector()
    assert ds.sizes == {"trainId": 10, "pulseId": 2, "module": 16, "gain": 2, "slow_scan": 512,
                        "fast_scan": 128}
    assert ds["present"].values.all()
    assert ds["image.data"].dtype == np.uint16
    assert_detector_matches_h5(ds, agipd_raw_run)


def test_corrected_agipd_with_new_names_has_mask_and_gain(agipd_corr_run):
    ds = xd.open_run(agipd_corr_run).detector("SPB_DET_AGIPD1M-1")
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", "slow_scan", "fast_scan")
    assert ds["image.data"].dtype == np.float32
    assert ds["image.mask"].dtype == np.uint32 and ds["image.gain"].dtype == np.uint8
    sub = ds.sel(module=[0, 7, 15])
    assert_detector_matches_h5(sub, agipd_corr_run)
    assert_detector_matches_h5(sub, agipd_corr_run, var="image.mask")
    assert_detector_matches_h5(sub, agipd_corr_run, var="image.gain")


@pytest.fixture(scope="module")
def legacy_corr_run(tmp_path_factory):
    """Corrected data under the old ``/DET/<n>CH0:xtdf`` names, module 1 missing trains,
    varying frames per train."""
    return make_example(tmp_path_factory.mktemp("legacy_corr") / "r0001", corrected=True,
                        new_corr_names=False, modules=[0, 1], n_trains=6, frames_per_train=2,
                        slow_sources=False, irregular=True, first_train_id=FIRST_TRAIN_ID)


def test_corrected_legacy_names_fill_nan_for_floats_and_zero_for_integers(legacy_corr_run):
    run = xd.open_run(legacy_corr_run)
    assert "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf" in run.sources
    ds = run.detector(modules=[0, 1])
    assert not ds["present"].values.all(), "module 1 misses trains"
    assert_detector_matches_h5(ds, legacy_corr_run, fill=np.nan)
    assert_detector_matches_h5(ds, legacy_corr_run, var="image.mask", fill=0)
    assert_detector_matches_h5(ds, legacy_corr_run, var="image.gain", fill=0)


# ----- missing modules and varying frame counts ------------------------------------
def test_missing_module_trains_and_varying_frames_are_filled_and_masked(irregular_run):
    run = xd.open_run(irregular_run)
    ds = run.detector(modules=[0, 1, 2, 3])
    present = ds["present"].any("pulseId").to_pandas()
    assert not present.loc[[10002, 10003, 10010], 1].any()
    assert present.loc[[10002, 10003, 10010], [0, 2, 3]].values.all()
    assert 10001 not in ds["trainId"].values, "a train without any frame is not on the axis"
    assert_detector_matches_h5(ds, irregular_run)
    # the frame count varies: fewer frames in a train leave pulse slots filled
    frames = h5_rows(irregular_run, "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.data")
    assert len({len(rows) for rows in frames.values()}) > 1
    # memory cell IDs where recorded, -1 where the module has no frame
    cells = ds["cellId"].values
    assert cells.dtype == np.int64
    for mi in range(4):
        source = f"{AGIPD}/DET/{mi}CH0:xtdf"
        expected = np.full(cells.shape[:2], -1)
        for tid, (pids, _) in expected_frames(irregular_run, source, True, "image.data").items():
            ti = ds["trainId"].values.tolist().index(tid)
            expected[ti, np.searchsorted(ds["pulseId"].values, pids)] = \
                h5_rows(irregular_run, source, "image.cellId")[tid][:, 0]
        np.testing.assert_array_equal(cells[:, :, mi], expected)


def test_a_masked_whole_run_mean_equals_the_mean_of_the_frames_on_disk(irregular_run):
    """Filled cells (missing trains, fewer frames) must not enter a reduction masked with
    ``present``; the frames are read from the files with plain h5py."""
    det = xd.open_run(irregular_run).detector()
    assert det["module"].values.tolist() == [0, 1, 2, 3]
    masked = det["image.data"].where(det["present"]).isel(gain=0).mean(["trainId", "pulseId", "module"])
    frames = np.concatenate([rows for m in range(4) for rows in
                             h5_rows(irregular_run, f"{AGIPD}/DET/{m}CH0:xtdf", "image.data").values()])
    truth = frames[:, 0].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(masked.values, truth, rtol=1e-6)
    assert det["present"].sum().item() == len(frames)
    plain = det["image.data"].isel(gain=0).mean(["trainId", "pulseId", "module"])
    assert not np.allclose(plain.values, truth, rtol=1e-6), "the fixture must have filled cells"


def test_fill_value_option(irregular_run):
    ds = xd.open_run(irregular_run).detector(modules=[1, 4], fill_value=7)
    assert ds.attrs["fill_value"] == 7
    assert_detector_matches_h5(ds, irregular_run, fill=7)
    assert (ds["image.data"].sel(module=4).values == 7).all()


def test_require_all_modules_keeps_trains_where_every_module_has_data(irregular_run):
    run = xd.open_run(irregular_run)
    ds = run.detector(modules=[0, 1, 2, 3], require_all_modules=True)
    assert not set(ds["trainId"].values.tolist()) & {10001, 10002, 10003, 10010}
    assert ds["present"].any("pulseId").all()
    assert_detector_matches_h5(ds, irregular_run)


def test_require_all_modules_ignores_a_module_without_data_in_the_selection(irregular_run):
    """Module 1 misses trains 10002 and 10003: it does not count on those two trains."""
    ds = xd.open_run(irregular_run).sel(trainId=[10002, 10003]).detector(require_all_modules=True)
    assert ds["trainId"].values.tolist() == [10002, 10003]
    assert not ds["present"].sel(module=1).any() and ds["present"].sel(module=[0, 2, 3]).any("pulseId").all()


# ----- options ---------------------------------------------------------------------
def test_modules_option_stacks_only_those(agipd_raw_run):
    ds = xd.open_run(agipd_raw_run).detector(modules=[3, 1])
    assert ds["module"].values.tolist() == [1, 3]
    assert_detector_matches_h5(ds, agipd_raw_run)
    with pytest.raises(KeyError, match="16"):
        xd.open_run(agipd_raw_run).detector(modules=[16])


def test_pulse_selection_by_id_by_index_and_list(irregular_run):
    run = xd.open_run(irregular_run)
    full = run.detector(modules=[0, 1]).compute()
    pulse_ids = full["pulseId"].values
    assert len(pulse_ids) == 3
    by_list = run.detector(modules=[0, 1], pulses=[pulse_ids[0], pulse_ids[2]])
    np.testing.assert_array_equal(by_list["image.data"].values,
                                  full["image.data"].sel(pulseId=[pulse_ids[0], pulse_ids[2]]).values)
    one = run.detector(modules=[0, 1], pulses=by_id[int(pulse_ids[1])])
    assert one["pulseId"].values.tolist() == [pulse_ids[1]]
    inclusive = run.detector(modules=[0, 1], pulses=by_id[int(pulse_ids[0]):int(pulse_ids[1])])
    assert inclusive["pulseId"].values.tolist() == pulse_ids[:2].tolist()
    first = run.detector(modules=[0, 1], pulses=by_index[:1]).compute()
    for m in (0, 1):   # position 0 of each train: its first frame, at that frame's pulse ID
        frames = expected_frames(irregular_run, f"{AGIPD}/DET/{m}CH0:xtdf", True, "image.data")
        for tid, (pids, rows) in frames.items():
            cell = first["image.data"].sel(trainId=tid, module=m)
            np.testing.assert_array_equal(cell.sel(pulseId=pids[0]).values, rows[0])
            others = cell.drop_sel(pulseId=pids[0]).values
            assert (others == 0).all()


def test_run_selections_compose_with_detector_datasets(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    part = run.sel(trainId=slice(10003, 10005)).detector(modules=[2])
    whole = run.detector(modules=[2])
    np.testing.assert_array_equal(part["image.data"].values,
                                  whole["image.data"].sel(trainId=slice(10003, 10005)).values)
    sub = run.select("*/DET/2CH0:xtdf").detector()
    assert sub["module"].values.tolist() == [2] and sub["present"].all()
    asked = run.select("*/DET/2CH0:xtdf").detector(modules=[2, 3])
    assert asked["present"].sel(module=2).all() and not asked["present"].sel(module=3).any()


def test_empty_train_selection_gives_an_empty_detector_dataset(agipd_raw_run):
    ds = xd.open_run(agipd_raw_run).sel(trainId=[]).detector()
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan")
    assert ds.sizes["trainId"] == 0 and ds.sizes["module"] == 16
    assert ds["image.data"].values.shape[0] == 0


def test_stack_detector_data_matches_the_dataset(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    ds = run.detector()
    tid, data = run.train_from_index(4, devices={"*/DET/*CH0:xtdf": {"image.data"}})
    stacked = xd.stack_detector_data(data, "image.data", axis=1)   # (frames, module, 2, ss, fs)
    np.testing.assert_array_equal(stacked, ds["image.data"].sel(trainId=tid).values)


def test_stack_detector_data_places_modules_of_per_frame_keys_as_extra_data_does():
    """The default axis -3 counts modulo the stacked dims: 1-d keys (one value a frame) get the
    modules last, as EXtra-data's function gives them."""
    extra_data = pytest.importorskip("extra_data")
    train = {f"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf": {"image.cellId": np.arange(5, dtype=np.uint16) + m,
                                                    "image.data": np.full((5, 2, 4, 3), m, np.uint16)}
             for m in (0, 2, 3)}
    for key in ("image.cellId", "image.data"):
        ours, theirs = xd.stack_detector_data(train, key), extra_data.stack_detector_data(train, key)
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs, err_msg=key)
    with pytest.raises(ValueError, match="axis 2 is out of range for 2-d"):
        xd.stack_detector_data(train, "image.cellId", axis=2)


# ----- choosing a detector, bad input ----------------------------------------------
def test_detector_name_picks_among_several(detector_runs):
    paths = sorted(detector_runs["AGIPD1M"].glob("*.h5")) + sorted(detector_runs["LPD1M"].glob("*.h5"))
    run = xd.open_run(paths)
    with pytest.raises(ValueError, match="SPB_DET_AGIPD1M-1.*FXE_DET_LPD1M-1|FXE_DET_LPD1M-1.*SPB_DET_AGIPD1M-1"):
        run.detector()
    assert run.detector("LPD").attrs["detector"] == "FXE_DET_LPD1M-1"
    assert run.detector("SPB_DET_AGIPD1M-1").attrs["kind"] == "AGIPD1M"
    with pytest.raises(KeyError, match="detectors here: FXE_DET_LPD1M-1, SPB_DET_AGIPD1M-1"):
        run.detector("DSSC")


def test_no_detector_is_a_clear_key_error(slow_only_run):
    with pytest.raises(KeyError, match="no multi-module detector"):
        xd.open_run(slow_only_run).detector()


def test_modules_with_different_dtypes_or_shapes_are_refused(detector_runs, tmp_path):
    """A damaged copy: module 1's image.data rewritten as float32 and with another frame shape."""
    for what, new in (("dtype", lambda d: d.astype(np.float32)), ("shape", lambda d: d[..., :64])):
        run_dir = tmp_path / what
        shutil.copytree(detector_runs["DSSC1M"], run_dir)
        path = run_dir / "RAW-R0001-DSSC01-S00000.h5"
        with h5py.File(path, "r+") as f:
            name = "INSTRUMENT/SCS_DET_DSSC1M-1/DET/1CH0:xtdf/image/data"
            data = new(f[name][()])
            del f[name]
            f[name] = data
        with pytest.raises(ValueError, match="modules differ in shape or dtype.*module 1"):
            xd.open_run(run_dir).detector()


@pytest.mark.parametrize("version", ["0.5", "0.5-old", "1.0", "1.1", "1.2", "1.3"])
def test_detector_in_every_format_version(format_runs, version):
    """Modules 0 and 1 in every format version (0.5-old: first/last/status index)."""
    ds = xd.open_run(format_runs[version]).detector(modules=[0, 1])
    assert ds.sizes["trainId"] == 6 and ds["present"].values.all()
    assert_detector_matches_h5(ds, format_runs[version])


def test_a_nan_fill_value_for_integer_data_is_refused(irregular_run):
    with pytest.raises(ValueError, match="cannot be stored in uint16"):
        xd.open_run(irregular_run).detector(fill_value=np.nan)


def test_pulse_ids_are_labelled_alike_by_key_arrays_and_detectors(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    det = run.detector()
    per_key = run["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.data"]
    assert det.pulseId.dtype == per_key.pulseId.dtype == np.uint64


def test_fill_value_applies_to_pixel_data_and_masks_keep_their_default(agipd_corr_run):
    run = xd.open_run(agipd_corr_run).deselect("SPB_DET_AGIPD1M-1/CORR/3CH0:output")
    det = run.detector(modules=range(16), fill_value=-1)
    assert not det["present"].sel(module=3).any()
    assert (det["image.data"].sel(module=3).values == -1).all()
    assert (det["image.mask"].sel(module=3).values == 0).all()  # uint32: no overflow
    assert (det["image.data"].sel(module=2).values != -1).any()


@pytest.mark.parametrize("fill", [-1, 70000])
def test_a_fill_value_outside_the_integer_range_is_refused_up_front(irregular_run, fill):
    with pytest.raises(ValueError, match="outside the range of uint16"):
        xd.open_run(irregular_run).detector(fill_value=fill)


@pytest.mark.parametrize("pulses", [by_id[500:600], by_index[100:200]])
def test_a_pulse_slice_matching_no_frame_gives_an_empty_pulse_axis(agipd_raw_run, pulses):
    data = xd.open_run(agipd_raw_run).detector(pulses=pulses)["image.data"]
    assert data.sizes["pulseId"] == 0 and data.values.size == 0


@pytest.mark.parametrize("pulses", [[999], by_id[[999]], by_id[[0, 999]], by_id[999]])
def test_a_pulse_id_that_does_not_exist_is_an_error_naming_those_that_do(agipd_raw_run, pulses):
    with pytest.raises(ValueError, match=r"pulse ID 999 is not in") as err:
        xd.open_run(agipd_raw_run).detector(pulses=pulses)
    assert "pulse IDs there:" in str(err.value)


def test_a_position_beyond_every_train_is_an_error(agipd_raw_run):
    with pytest.raises(ValueError, match=r"position 50 is beyond every train .*at most 2 frames a train"):
        xd.open_run(agipd_raw_run).detector(pulses=by_index[[0, 50]])


def test_by_index_minus_one_is_the_last_frame_of_each_train(irregular_run):
    run = xd.open_run(irregular_run)
    last = run.detector(pulses=by_index[-1])
    assert last.sizes["trainId"] > 1
    for tid in last.trainId.values.tolist():
        _, data = run.train_from_id(tid)
        for m in last.module.values.tolist():
            frames = data.get(f"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf", {}).get("image.data")
            present = last["present"].sel(trainId=tid, module=m).values
            if frames is None or len(frames) == 0:
                assert not present.any()
                continue
            assert present.sum() == 1
            got = last["image.data"].sel(trainId=tid, module=m)[int(present.argmax())]
            np.testing.assert_array_equal(got.values, frames[-1])


def test_jungfrau_keys_become_image_keys_and_the_attrs_say_so(detector_runs):
    det = xd.open_run(detector_runs["JUNGFRAU"]).detector()
    assert {"image.data", "image.gain"} <= set(det.data_vars)
    assert "data.adc" not in det and "data.gain" not in det
    renamed = det.attrs["renamed_keys"]
    assert "data.adc -> image.data" in renamed and "data.gain -> image.gain" in renamed


def test_agipd_keys_keep_their_names_and_no_rename_is_stated(agipd_raw_run):
    assert "renamed_keys" not in xd.open_run(agipd_raw_run).detector().attrs


def test_a_run_selected_to_the_pixel_key_still_stacks_with_its_cell_ids(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    det = run.select("SPB_DET_AGIPD1M-1/DET/*", "image.data").detector()
    whole = run.detector()
    assert [v for v in det.data_vars if v.startswith("image.")] == ["image.data"]
    np.testing.assert_array_equal(det.cellId.values, whole.cellId.values)
    np.testing.assert_array_equal(det["image.data"].values, whole["image.data"].values)


def test_an_unknown_detector_key_names_the_key(agipd_raw_run):
    with pytest.raises(KeyError, match="image.nokey"):
        xd.open_run(agipd_raw_run).detector(keys=["image.nokey"])


def test_an_empty_train_selection_of_jungfrau_gives_an_empty_dataset(detector_runs):
    det = xd.open_run(detector_runs["JUNGFRAU"]).sel(trainId=[]).detector()
    assert det.sizes["trainId"] == 0 and det["image.data"].dims[1] == "cell"
    assert det["image.data"].values.size == 0


# ----- dask=False: lazily indexed pixel data, read in one pass ---------------------
_SELECTIONS = [
    {},                                                    # everything
    {"trainId": slice(2, 4)},                              # a few trains
    {"trainId": [0, 3], "module": 1},                      # trains by list, one module
    {"pulseId": slice(1, 2), "module": slice(None, None, -1)},  # a pulse, modules reversed
    {"trainId": -1, "slow_scan": slice(10, 20), "fast_scan": 5},  # a region of pixels
    {"trainId": slice(0, 1, -1)},                          # nothing
    {"trainId": [3, 1, 1], "module": [1, 0]},              # out of order, repeated
]


@pytest.mark.parametrize("kind", ["AGIPD1M", "LPD1M", "LPD1M-parallel", "DSSC1M", "JUNGFRAU"])
@pytest.mark.parametrize("selection", _SELECTIONS)
def test_without_dask_every_selection_reads_what_the_dask_graph_computes(detector_runs, kind, selection):
    run = xd.open_run(detector_runs[kind])
    pulse_dim = "cell" if kind == "JUNGFRAU" else "pulseId"
    selection = {(pulse_dim if k == "pulseId" else k): v for k, v in selection.items()}
    lazy, graph = run.detector(dask=False), run.detector()
    assert not isinstance(lazy["image.data"].variable._data, np.ndarray)  # nothing read yet
    for var in graph.data_vars:
        expected = graph[var].isel(selection, missing_dims="ignore").values
        np.testing.assert_array_equal(lazy[var].isel(selection, missing_dims="ignore").values, expected)


def test_without_dask_missing_modules_and_frames_hold_the_fill_value(irregular_run):
    run = xd.open_run(irregular_run)
    for fill in (None, 7):
        lazy = run.detector(dask=False, fill_value=fill)
        np.testing.assert_array_equal(lazy["image.data"].values, run.detector(fill_value=fill)["image.data"].values)


def test_without_dask_a_selection_reads_only_its_frames(agipd_raw_run, monkeypatch):
    from xfeldata import arrays

    rows = []
    real = arrays.execute_block

    def counting(block, out=None):
        rows.extend(r.stop - r.start for r in block.reads if r.key == "image.data")
        return real(block, out)

    monkeypatch.setattr(arrays, "execute_block", counting)
    ds = xd.open_run(agipd_raw_run).detector(dask=False, keys=["image.data"])
    assert not rows                                          # building reads no pixels
    frames = ds["image.data"].isel(trainId=slice(1, 3), module=[0, 2], pulseId=0).values
    assert frames.shape[:2] == (2, 2)
    assert sum(rows) == 2 * 2                                # 2 trains x 2 modules x 1 frame
