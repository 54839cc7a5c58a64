"""xfeldata.analysis against EXtra-geom, pyFAI and the synthetic truth, on numpy, dask and live data."""

from __future__ import annotations

import threading
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import ANALYSIS_RUN, FIRST_TRAIN_ID

import xfeldata as xd
from xfeldata import analysis
from xfeldata.analysis.integration import pixel_radial
from xfeldata.bridge import LiveBuffer, serve
from xfeldata.testing import make_example
from xfeldata.testing import synthetic as syn

DISTANCE, WAVELENGTH = 0.25, 1.3e-10  # m
MODULES = ANALYSIS_RUN["modules"]
ADU = syn.ADU_PER_PHOTON["AGIPD1M"]


@pytest.fixture(scope="module")
def dark(analysis_runs):
    return xd.open_run(analysis_runs["dark"]).detector("AGIPD", modules=MODULES)


@pytest.fixture(scope="module")
def data(analysis_runs):
    return xd.open_run(analysis_runs["data"]).detector("AGIPD", modules=MODULES)


@pytest.fixture(scope="module")
def constants(dark):
    return analysis.dark_constants(dark).compute()


@pytest.fixture(scope="module")
def live(analysis_runs):
    """The data run through a real Karabo bridge socket into a LiveBuffer: its detector Dataset."""
    run = xd.open_run(analysis_runs["data"])
    with serve(run, background=True) as handle:
        with LiveBuffer(handle.endpoint, maxlen=10) as buf:
            buf.wait(len(run.train_ids), timeout=30)
            assert handle.join(timeout=30)
            for _ in range(50):  # the last message may still be on its way
                if buf.received >= len(run.train_ids):
                    break
                threading.Event().wait(0.1)
    assert buf.received == len(run.train_ids)
    return buf.detector("AGIPD", modules=MODULES)


def frames(n=3, modules=range(16), seed=0, chunks=None):
    rng = np.random.default_rng(seed)
    values = rng.random((n, len(modules), 512, 128), dtype=np.float32)
    arr = xr.DataArray(values, dims=("pulseId", "module", "slow_scan", "fast_scan"),
                       coords={"pulseId": np.arange(n), "module": list(modules)})
    return arr.chunk({"pulseId": 1, "module": 1}) if chunks else arr


# -- assemble -----------------------------------------------------------------


@pytest.mark.parametrize("modules", [[1, 4, 9], [9, 4, 1], [3]])
def test_assemble_equals_position_modules_with_nan_for_missing_modules(agipd_geometry, modules):
    # one geometry for every subset: each subset's index map is its own (cached per layout and modules)
    arr = frames(2, modules=modules)
    img = analysis.assemble(arr, agipd_geometry)
    full = np.full((2, 16, 512, 128), np.nan, np.float32)
    full[:, modules] = arr.values
    expected, _ = agipd_geometry.position_modules(full)
    np.testing.assert_array_equal(img.values, expected)
    assert img.dims == ("pulseId", "y", "x") and list(img.pulseId.values) == [0, 1]
    assert np.isnan(img.values).mean() > 0.8  # gaps and the missing modules


def test_assemble_x_y_are_pixel_centres_in_metres(agipd_geometry):
    index = xr.DataArray(np.arange(16 * 512 * 128, dtype=np.float64).reshape(16, 512, 128),
                         dims=("module", "slow_scan", "fast_scan"))
    img = analysis.assemble(index, agipd_geometry)
    iy, ix = np.nonzero(np.isfinite(img.values))
    source = img.values[iy, ix].astype(np.int64)
    pos = agipd_geometry.get_pixel_positions().reshape(-1, 3)[source]
    size = agipd_geometry.pixel_size
    # position_modules snaps each tile to whole pixels: a pixel lands within one pixel of its position
    assert np.abs(img.x.values[ix] - pos[:, 0]).max() <= size
    assert np.abs(img.y.values[iy] - pos[:, 1]).max() <= size
    assert img.x.attrs["units"] == "m"


def test_assemble_on_dask_is_lazy_and_equals_numpy(agipd_geometry):
    arr = frames(4, chunks=True)
    img = analysis.assemble(arr, agipd_geometry)
    assert isinstance(img.data, da.Array)
    np.testing.assert_array_equal(img.values, analysis.assemble(arr.compute(), agipd_geometry).values)


@pytest.mark.usefixtures("kernels")
def test_assemble_on_dask_blocks_written_into_one_image_stack_equals_position_modules(agipd_geometry):
    """Several frame blocks, a module subset: .values (blocks written into one array),
    .compute() and a slice all equal EXtra-geom's position_modules frame by frame."""
    arr = frames(5, modules=[0, 3, 15]).chunk({"pulseId": 2})
    img = analysis.assemble(arr, agipd_geometry)
    full = np.full((5, 16, 512, 128), np.nan, np.float32)
    full[:, [0, 3, 15]] = arr.values
    expected = np.stack([agipd_geometry.position_modules(f)[0] for f in full])
    np.testing.assert_array_equal(img.values, expected)
    np.testing.assert_array_equal(img.compute().values, expected)
    np.testing.assert_array_equal(img[1:4].values, expected[1:4])


def test_assemble_run_and_live_detector_keeps_train_and_pulse_labels(data, live, constants, agipd_geometry):
    offline = analysis.assemble(analysis.calibrate(data, constants), agipd_geometry)
    online = analysis.assemble(analysis.calibrate(live, constants), agipd_geometry)
    assert offline.dims == ("trainId", "pulseId", "y", "x")
    np.testing.assert_array_equal(offline.trainId, data.trainId)
    np.testing.assert_array_equal(offline.values, online.values)
    frame = analysis.calibrate(data, constants)["image.data"].isel(trainId=1, pulseId=2)
    full = np.full((16, 512, 128), np.nan, np.float32)
    full[MODULES] = frame.values
    np.testing.assert_array_equal(offline.isel(trainId=1, pulseId=2).values,
                                  agipd_geometry.position_modules(full)[0])


def test_assemble_refuses_modules_outside_the_geometry(agipd_geometry):
    with pytest.raises(ValueError, match=r"modules \[16\] are not in the geometry"):
        analysis.assemble(frames(1, modules=[0, 16]), agipd_geometry)
    with pytest.raises(ValueError, match=r"modules \[3\] are given more than once"):
        analysis.assemble(frames(1, modules=[3, 0, 3]), agipd_geometry)
    with pytest.raises(ValueError, match="more than once"):
        analysis.radial_profile(frames(1, modules=[3, 3]), agipd_geometry, 0.25, 1.3e-10, 10)


def test_jungfrau_modules_numbered_from_1_are_the_geometrys_from_0(tmp_path):
    """JUNGFRAU's sources (and module labels) count from JNGFR01; EXtra-geom's modules from 0: module n
    is the geometry's n - 1, also for a subset of modules; a geometry of another detector is refused."""
    from extra_geom import AGIPD_1MGeometry, JUNGFRAUGeometry

    run = xd.open_run(make_example(tmp_path / "jf", detector="JUNGFRAU", n_trains=1, frames_per_train=1),
                      progress=False)
    det = run.detector().isel(trainId=0, cell=0)
    assert det.module.values.tolist() == list(range(1, 9))
    geom = JUNGFRAUGeometry.example(n_modules=8)
    stack = det["image.data"].values.astype(np.float32)
    np.testing.assert_array_equal(analysis.assemble(det, geom).values, geom.position_modules(stack)[0])
    subset = np.full_like(stack, np.nan)
    subset[[1, 4]] = stack[[1, 4]]
    np.testing.assert_array_equal(analysis.assemble(det.sel(module=[2, 5]), geom).values,
                                  geom.position_modules(subset)[0])
    with pytest.raises(ValueError, match=r"detector is JUNGFRAU, the geometry \(AGIPD_1MGeometry\) is of AGIPD1M"):
        analysis.assemble(det, AGIPD_1MGeometry.from_quad_positions(quad_pos=[(0, 0)] * 4))


# -- radial profiles ----------------------------------------------------------


def pyfai_integrator(geom):
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    return AzimuthalIntegrator(dist=DISTANCE, poni1=0, poni2=0, detector=geom.to_pyfai_detector(),
                               wavelength=WAVELENGTH)


def test_pixel_q_and_chi_equal_pyfai(agipd_geometry):
    ai = pyfai_integrator(agipd_geometry)
    q, chi = pixel_radial(agipd_geometry, DISTANCE, WAVELENGTH)
    np.testing.assert_allclose(q, ai.qArray().reshape(q.shape), rtol=1e-6)  # pyFAI: float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chi_pyfai = np.degrees(ai.chiArray()).reshape(q.shape)
    assert np.abs((chi - chi_pyfai + 180) % 360 - 180).max() < 1e-4


def test_radial_profile_equals_pyfai_integrate1d_without_splitting(agipd_geometry):
    """Tolerance: 2e-3 absolute on uniform [0, 1) pixels; pyFAI bins float32 q, so a pixel
    within float32 rounding of a bin edge may fall into the neighbour bin."""
    arr = frames(2)
    q, _ = pixel_radial(agipd_geometry, DISTANCE, WAVELENGTH)
    q_range = (float(q.min()), float(q.max()))
    prof = analysis.radial_profile(arr, agipd_geometry, DISTANCE, WAVELENGTH, npt=300, q_range=q_range)
    ai = pyfai_integrator(agipd_geometry)
    for i in range(2):
        ref = ai.integrate1d(arr.values[i].reshape(-1, 128), 300, unit="q_nm^-1", radial_range=q_range,
                             method=("no", "histogram", "cython"), correctSolidAngle=False,
                             polarization_factor=None)
        np.testing.assert_allclose(prof.q.values, ref.radial, rtol=1e-5)
        filled = ref.count > 0 if hasattr(ref, "count") and ref.count is not None else np.isfinite(prof[i])
        np.testing.assert_allclose(prof[i].values[filled], ref.intensity[filled], atol=2e-3)
    assert prof.dims == ("pulseId", "q") and prof.q.attrs["units"] == "nm^-1"


def test_radial_profile_leaves_out_nan_and_masked_pixels(agipd_geometry):
    arr = xr.ones_like(frames(1, modules=[0, 1]))
    arr[0, 1] = np.nan
    mask = np.zeros((2, 512, 128), bool)
    mask[0, :100] = True
    bright = arr.copy()
    bright[0, 0, :100] = 1000.0  # masked: must not count
    prof = analysis.radial_profile(bright, agipd_geometry, DISTANCE, WAVELENGTH, npt=50, mask=mask)
    assert np.nanmax(prof.values) == 1.0 and np.nanmin(prof.values) == 1.0


@pytest.mark.usefixtures("kernels")
def test_radial_profile_without_a_mask_leaves_out_nan_and_infinite_pixels(agipd_geometry):
    arr = xr.ones_like(frames(3, modules=[0, 1]))
    arr[0, 1] = np.nan
    arr[1, 0, :50] = np.inf
    arr[2] = 2.0  # a clean frame in the same block: its bins are right too
    prof = analysis.radial_profile(arr, agipd_geometry, DISTANCE, WAVELENGTH, npt=50)
    assert np.nanmax(prof.values[:2]) == 1.0 and np.nanmin(prof.values[:2]) == 1.0
    assert np.isfinite(prof.values[1]).sum() >= np.isfinite(prof.values[0]).sum()
    np.testing.assert_array_equal(prof.values[2][np.isfinite(prof.values[1])], 2.0)


def test_radial_profile_on_dask_and_live_equals_numpy(live, constants, agipd_geometry):
    arr = frames(3, chunks=True)
    lazy = analysis.radial_profile(arr, agipd_geometry, DISTANCE, WAVELENGTH, npt=64)
    assert isinstance(lazy.data, da.Array)
    eager = analysis.radial_profile(arr.compute(), agipd_geometry, DISTANCE, WAVELENGTH, npt=64)
    np.testing.assert_array_equal(lazy.values, eager.values)
    calibrated = analysis.calibrate(live, constants)
    prof = analysis.radial_profile(calibrated, agipd_geometry, DISTANCE, WAVELENGTH, npt=64)
    assert prof.dims == ("trainId", "pulseId", "q") and prof.sizes["trainId"] == live.sizes["trainId"]


def test_radial_profile_2d_bins_chi_and_sums_to_the_1d_profile(agipd_geometry):
    q, chi = pixel_radial(agipd_geometry, DISTANCE, WAVELENGTH)
    arr = xr.DataArray(chi[None].astype(np.float32), dims=("pulseId", "module", "slow_scan", "fast_scan"))
    q_range = (float(q.min()), float(q.max()))
    two = analysis.radial_profile_2d(arr, agipd_geometry, DISTANCE, WAVELENGTH, npt=20, npt_azim=12,
                                     q_range=q_range)
    assert two.dims == ("pulseId", "q", "chi")
    width = 360 / 12
    assert np.nanmax(np.abs(two.values[0] - two.chi.values[None, :])) <= width / 2 + 1e-3
    ones = xr.ones_like(arr)
    assert np.nanmax(analysis.radial_profile_2d(ones, agipd_geometry, DISTANCE, WAVELENGTH, 20).values) == 1


def test_radial_profile_of_a_synthetic_ring_peaks_at_its_radius(data, constants, agipd_geometry):
    q, _ = pixel_radial(agipd_geometry, DISTANCE, WAVELENGTH, modules=MODULES)
    ring_q = 12.0  # nm^-1
    ring = (np.abs(q - ring_q) < 0.3) * np.float32(5 * ADU)  # 5 photons on a ring
    calibrated = analysis.calibrate(data, constants)["image.data"] + ring
    prof = analysis.radial_profile(calibrated, agipd_geometry, DISTANCE, WAVELENGTH, npt=100,
                                   q_range=(2, 30))
    peaks = prof.q.values[np.nanargmax(prof.values, axis=-1)]
    assert np.abs(peaks - ring_q).max() <= 0.28 / 2 + 1e-9  # within half a bin


# -- photons ------------------------------------------------------------------


@pytest.mark.usefixtures("kernels")
def test_photon_count_formula_and_threshold():
    adu = xr.DataArray(np.array([-10, 0, 29, 31, 60, 89, 91, np.nan], np.float32), dims="x")
    assert analysis.photon_count(adu, 60).values.tolist() == [0, 0, 0, 1, 1, 1, 2, 0]
    assert analysis.photon_count(adu, 60, threshold=0.9).values.tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert analysis.photon_count(adu, 60).dtype == np.int32
    with pytest.raises(ValueError, match="adu_per_photon must be positive"):
        analysis.photon_count(adu, 0)


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("value", [np.inf, 3e9])
def test_photon_count_refuses_counts_int32_cannot_hold_rather_than_giving_0(value):
    adu = xr.DataArray(np.array([60, value, 120], np.float32), dims="x")
    with pytest.raises(OverflowError, match="int32"):
        analysis.photon_count(adu, 1).compute()
    assert analysis.photon_count(adu.where(adu < 1e9), 60).values.tolist() == [1, 0, 2]


@pytest.mark.usefixtures("kernels")
def test_photon_count_and_lit_pixels_keep_labels_on_dask():
    arr = frames(3, modules=[2, 5], chunks=True) * 100
    counts = analysis.photon_count(arr, 30)
    assert isinstance(counts.data, da.Array) and counts.dims == arr.dims
    np.testing.assert_array_equal(counts.module, [2, 5])
    np.testing.assert_array_equal(counts.values, analysis.photon_count(arr.compute(), 30).values)
    lit = analysis.lit_pixels(arr, 50)
    assert lit.dims == ("pulseId",)
    np.testing.assert_array_equal(lit.values, (arr.values > 50).sum(axis=(1, 2, 3)))


@pytest.mark.usefixtures("kernels")
def test_dark_calibrate_photon_count_recovers_the_photons_written(data, constants, analysis_runs):
    counts = analysis.photon_count(analysis.calibrate(data, constants), ADU).values
    truth = np.stack([
        np.stack([syn.detector_photons("AGIPD1M", m, int(t), 4) for m in MODULES], axis=1)
        for t in data.trainId.values])  # (train, pulse, module, ss, fs)
    bad = constants["bad_pixels"].values[:, :, 0]  # (module, cell, ss, fs); cells 0-3 = pulses
    good = ~np.broadcast_to(bad.transpose(1, 0, 2, 3)[None], truth.shape)
    recovered = np.minimum(counts, truth)[good].sum() / truth[good].sum()
    false = np.maximum(counts - truth, 0)[good].sum() / truth[good].sum()
    print(f"photons recovered: {recovered:.4f}, extra counts from noise: {false:.4f}")
    assert recovered > 0.99, recovered
    # Noise of 8 ADU against a threshold of 30 ADU (half a photon): a Gaussian tail of about
    # 1e-4 per pixel, some 6 counts per 65536-pixel frame against about 128 photons written.
    assert false < 0.05, false
    assert bad.mean() < 0.01


@pytest.mark.usefixtures("kernels")
def test_calibrate_subtracts_the_dark_offset_per_cell_and_masks_bad_pixels(data, constants):
    out = analysis.calibrate(data, constants)
    assert isinstance(out["image.data"].data, da.Array)
    assert out["image.data"].dims == ("trainId", "pulseId", "module", "slow_scan", "fast_scan")
    assert out["image.data"].dtype == np.float32 and "present" in out and "cellId" in out
    frame = out["image.data"].isel(trainId=0, pulseId=1, module=2).values
    raw = data["image.data"].isel(trainId=0, pulseId=1, module=2, gain=0).values.astype(np.float32)
    cell = int(data["cellId"].isel(trainId=0, pulseId=1, module=2))
    c = constants.sel(module=MODULES[2], cell=cell, gain_stage=0)
    expected = np.where(c["bad_pixels"].values, np.nan, raw - c["offset"].values)
    np.testing.assert_array_equal(frame, expected)
    assert np.isnan(frame).sum() == c["bad_pixels"].values.sum()


@pytest.mark.usefixtures("kernels")
def test_calibrate_masks_bad_pixels_and_missing_frames_in_present(data, constants):
    """present becomes per pixel: the frame was recorded and the pixel is not bad for its cell."""
    gappy = data.copy(deep=True).load()  # the fixture is shared: change a copy
    gappy["present"].values[1, 2, 0] = False  # a frame that was not recorded
    gappy["cellId"].values[1, 2, 0] = -1
    out = analysis.calibrate(gappy, constants)
    present = out["present"]
    assert present.dims == ("trainId", "pulseId", "module", "slow_scan", "fast_scan")
    assert not present.values[1, 2, 0].any() and np.isnan(out["image.data"].values[1, 2, 0]).all()
    bad = constants["bad_pixels"].values[:, :, 0]  # (module, cell, ss, fs)
    cells = gappy["cellId"].values
    for t, p, m in [(0, 0, 0), (2, 3, 1), (3, 1, 3)]:
        np.testing.assert_array_equal(present.values[t, p, m], ~bad[m, cells[t, p, m]])
    assert bad.any()
    np.testing.assert_array_equal(present.values, np.isfinite(out["image.data"].values))


def test_masked_corrected_data_are_not_present_where_masked(agipd_corr_run):
    det = xd.open_run(agipd_corr_run).detector("AGIPD", modules=[0, 1])
    present = analysis.calibrate(det, mask_bits=1)["present"].values
    mask = det["image.mask"].values
    frames = np.broadcast_to(det["present"].values[..., None, None], mask.shape)
    np.testing.assert_array_equal(present, frames & ((mask & 1) == 0))
    assert ((mask & 1) != 0).any()


def test_dark_constants_noise_and_offset_match_the_writers_model(constants):
    assert constants["offset"].dims == ("module", "cell", "gain_stage", "slow_scan", "fast_scan")
    np.testing.assert_array_equal(constants.cell, [0, 1, 2, 3])
    noise = float(np.median(constants["noise"].values))
    assert 6 < noise < 10  # the writer's noise: 8 ADU, plus the per-train drift
    pedestal = syn._pedestal("AGIPD1M", MODULES[0], 0)[0].astype(np.float32) + 64 + 3  # + mean drift
    assert np.median(np.abs(constants["offset"].values[0, 0, 0] - pedestal)) < 5


@pytest.mark.usefixtures("kernels")
def test_calibrate_takes_agipd_gain_stages_from_the_gain_plane(dark, data, constants):
    """Two dark 'stages' (the second shifted by 100 ADU and its gain plane by 1000 ADU): a frame
    whose gain plane is in the second stage is corrected with the second stage's offset."""
    shift = xr.DataArray([100, 1000], dims="gain")
    medium = dark.copy()
    medium["image.data"] = (dark["image.data"] + shift).astype(np.uint16)
    two = analysis.dark_constants([dark, medium]).compute()
    assert two["gain_threshold"].dims == ("module", "cell", "threshold", "slow_scan", "fast_scan")
    shifted = data.copy()
    shifted["image.data"] = (data["image.data"] + shift).astype(np.uint16)
    high = analysis.calibrate(data, two)
    med = analysis.calibrate(shifted, two)
    assert (high["image.gain"].values == 0).mean() > 0.999
    assert (med["image.gain"].values == 1).mean() > 0.999
    same = (high["image.gain"].values == 0) & (med["image.gain"].values == 1)
    np.testing.assert_allclose(med["image.data"].values[same], high["image.data"].values[same], atol=1e-3)


def test_calibrate_corrected_data_applies_its_mask_bits(agipd_corr_run):
    det = xd.open_run(agipd_corr_run).detector("AGIPD", modules=[0, 1])
    out = analysis.calibrate(det)
    mask = det["image.mask"].values
    values = out["image.data"].values
    assert np.isnan(values[mask != 0]).all() and np.isfinite(values[mask == 0]).all()
    only = analysis.calibrate(det, mask_bits=1)["image.data"].values
    assert np.isnan(only[(mask & 1) != 0]).all() and np.isfinite(only[mask == 2]).all()


@pytest.mark.usefixtures("kernels")
def test_calibrate_on_numpy_and_live_equals_dask(data, live, constants):
    lazy = analysis.calibrate(data, constants)["image.data"].values
    eager = analysis.calibrate(data.compute(), constants)["image.data"]
    assert isinstance(eager.data, np.ndarray)
    np.testing.assert_array_equal(lazy, eager.values)
    np.testing.assert_array_equal(lazy, analysis.calibrate(live, constants)["image.data"].values)


@pytest.mark.usefixtures("kernels")
def test_calibrate_takes_lazy_constants_and_a_subset_of_their_modules(dark, data, constants):
    some = data.sel(module=[MODULES[2], MODULES[0]])
    lazy = analysis.calibrate(some, analysis.dark_constants(dark))["image.data"]
    full = analysis.calibrate(data, constants)["image.data"].sel(module=[MODULES[2], MODULES[0]])
    np.testing.assert_array_equal(lazy.values, full.values)


# -- filters ------------------------------------------------------------------


def test_select_frames_keeps_hits_as_a_frame_dim(data, constants):
    calibrated = analysis.calibrate(data, constants)
    lit = analysis.lit_pixels(analysis.photon_count(calibrated, ADU), 0)
    hits = lit > int(lit.compute().median())  # (dask has no median over all dims)
    picked = analysis.select_frames(calibrated, hits)
    n = int(hits.sum())
    assert picked["image.data"].dims == ("frame", "module", "slow_scan", "fast_scan")
    assert picked.sizes["frame"] == n and picked["cellId"].dims == ("frame", "module")
    t, p = np.nonzero(hits.values)
    np.testing.assert_array_equal(picked.trainId.values, data.trainId.values[t])
    np.testing.assert_array_equal(picked.pulseId.values, data.pulseId.values[p])
    np.testing.assert_array_equal(
        picked["image.data"].isel(frame=0).values,
        calibrated["image.data"].isel(trainId=t[0], pulseId=p[0]).values)


def test_select_frames_takes_a_train_mask_over_some_trains():
    ds = xr.Dataset({"v": (("trainId", "pulseId"), np.arange(6).reshape(3, 2))},
                    coords={"trainId": [10, 11, 12], "pulseId": [0, 1]})
    mask = xr.DataArray([True], dims="trainId", coords={"trainId": [11]})
    assert analysis.select_frames(ds, mask)["v"].values.tolist() == [2, 3]
    with pytest.raises(TypeError, match="boolean"):
        analysis.select_frames(ds, ds["v"])


def test_run_sel_takes_a_boolean_dataarray_over_trains(analysis_runs):
    run = xd.open_run(analysis_runs["data"])
    tids = run.train_ids
    keep = xr.DataArray(np.array([True, False, True, False]), dims="trainId", coords={"trainId": tids})
    np.testing.assert_array_equal(run.sel(trainId=keep).train_ids, tids[[0, 2]])
    assert len(run.sel(trainId=keep & False).train_ids) == 0
    with pytest.raises(TypeError, match="isel"):
        run.sel(trainId=np.array([True, False, True, False]))
    np.testing.assert_array_equal(run.isel(trainId=keep.values).train_ids, tids[[0, 2]])
    with pytest.raises(IndexError, match="length 3 for 4 trains"):
        run.isel(trainId=np.array([True, False, True]))
    with pytest.raises(ValueError, match="needs its trainId coordinate.*isel"):
        run.sel(trainId=xr.DataArray(np.array([True, False, True, False]), dims="trainId"))
    assert int(tids[0]) == FIRST_TRAIN_ID


# -- bad arguments --------------------------------------------------------------


def test_radial_profile_masks_of_the_data_the_geometry_or_labelled_give_the_same_profile(agipd_geometry):
    """A mask of the data's modules, of every module of the geometry (picked by module number) or a
    labelled DataArray (picked by its module coordinate) leaves out the same pixels; any other shape,
    a transposed one too, is refused by name."""
    arr = frames(2, modules=[9, 4, 1])
    full = np.zeros((16, 512, 128), bool)
    full[4, :100] = full[9, :, :30] = True
    args = (agipd_geometry, 0.25, 1.3e-10, 200)
    of_data = analysis.radial_profile(arr, *args, mask=full[[9, 4, 1]])
    labelled = xr.DataArray(full, dims=("module", "slow_scan", "fast_scan"), coords={"module": np.arange(16)})
    for mask in (full, labelled):
        xr.testing.assert_identical(analysis.radial_profile(arr, *args, mask=mask), of_data)
    assert not np.array_equal(of_data.values, analysis.radial_profile(arr, *args).values, equal_nan=True)
    with pytest.raises(ValueError, match=r"the mask is \(3, 128, 512\).*\(3, 512, 128\)"):
        analysis.radial_profile(arr, *args, mask=full[[9, 4, 1]].transpose(0, 2, 1))
    with pytest.raises(ValueError, match="cell"):
        analysis.radial_profile(arr, *args, mask=labelled.expand_dims(cell=2))


def test_image_coordinates_are_where_the_placed_pixels_are_on_dssc_hexagons():
    """DSSC's pixels are 236 um wide and 204 um high: the image's y steps by 204 um, not 236."""
    from extra_geom import DSSC_1MGeometry

    geom = DSSC_1MGeometry.from_quad_positions([(-124.100, 3.112), (-133.068, -110.604), (0.988, -125.236),
                                                (4.528, -4.912)])
    shape = geom.expected_data_shape
    index = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    image = analysis.assemble(xr.DataArray(index, dims=("module", "slow_scan", "fast_scan")), geom)
    placed = np.isfinite(image.values)
    source = image.values[placed].astype(np.int64)
    positions = geom.get_pixel_positions().reshape(-1, 3)[source]
    y = np.broadcast_to(image.y.values[:, None], image.shape)[placed]
    x = np.broadcast_to(image.x.values[None, :], image.shape)[placed]
    assert np.abs(y - positions[:, 1]).max() < 204e-6  # (was 82 pixels off at the edges)
    assert np.abs(x - positions[:, 0]).max() < 236e-6  # (hexagon rows are offset by half a pixel)


def test_wide_bins_of_large_values_are_the_float64_mean(agipd_geometry):
    """Sums in float64: one bin of a whole AGIPD-1M frame of about 5000 ADU is its mean to float32's precision."""
    values = np.random.default_rng(3).normal(5000, 30, (1, 16, 512, 128)).astype(np.float32)
    arr = xr.DataArray(values, dims=("pulseId", "module", "slow_scan", "fast_scan"),
                       coords={"module": np.arange(16)})
    profile = analysis.radial_profile(arr, agipd_geometry, 0.25, 1.3e-10, npt=1)
    assert float(profile[0, 0]) == pytest.approx(values.astype(np.float64).mean(), rel=1e-7)


def test_a_labelled_mask_is_picked_by_module_number_on_detectors_counting_from_one():
    """JUNGFRAU's modules are numbered from 1, its geometry's from 0: module 3's mask masks module 3."""
    from extra_geom import JUNGFRAUGeometry

    geom = JUNGFRAUGeometry.example(n_modules=4)
    dims = ("module", "slow_scan", "fast_scan")
    data = xr.DataArray(np.ones((2, 512, 1024), np.float32), dims=dims, coords={"module": [2, 3]},
                        attrs={"kind": "JUNGFRAU"})
    data[1] = 1000.0  # module 3 bright
    mask = xr.DataArray(np.zeros((4, 512, 1024), bool), dims=dims, coords={"module": [1, 2, 3, 4]})
    mask.loc[{"module": 3}] = True
    for given in (mask, mask.values, mask.sel(module=[2, 3]).values):
        profile = analysis.radial_profile(data, geom, 0.2, 1.3e-10, npt=50, mask=given)
        assert float(profile.max()) == 1.0
    with pytest.raises(ValueError, match=r"no module\(s\) \[3\]"):
        analysis.radial_profile(data, geom, 0.2, 1.3e-10, npt=50, mask=mask.sel(module=[1, 2]))
    # without a module coordinate the data's modules are the geometry's first ones: numbers 1 and 2
    unlabelled = data.drop_vars("module")
    profile = analysis.radial_profile(unlabelled, geom, 0.2, 1.3e-10, npt=50, mask=mask)
    assert float(profile.max()) == 1000.0  # module 2 (unlabelled[1]) bright and not masked
    # every module, in another order than the geometry's: a numpy mask could be in either order
    every = xr.concat([data, data], "module").assign_coords(module=[4, 3, 2, 1])
    with pytest.raises(ValueError, match="ambiguous"):
        analysis.radial_profile(every, geom, 0.2, 1.3e-10, npt=50, mask=mask.values)
    profile = analysis.radial_profile(every, geom, 0.2, 1.3e-10, npt=50, mask=mask)
    assert float(profile.max()) == 1000.0  # module 3 masked; module 1 (data[1]) is bright


@pytest.mark.parametrize("bad", [{"npt": 0}, {"npt": -5}, {"npt": 10.5}, {"npt": True}, {"distance": 0},
                                 {"wavelength": -1e-10}])
def test_radial_profile_refuses_bins_and_lengths_that_cannot_be(agipd_geometry, bad):
    kwargs = {"distance": 0.25, "wavelength": 1.3e-10, "npt": 100, **bad}
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        analysis.radial_profile(frames(1), agipd_geometry, **kwargs)
    with pytest.raises(ValueError, match=name):
        analysis.radial_profile_2d(frames(1), agipd_geometry, **kwargs)
    with pytest.raises(ValueError, match="npt_azim"):
        analysis.radial_profile_2d(frames(1), agipd_geometry, 0.25, 1.3e-10, 100, npt_azim=0)


@pytest.mark.parametrize("bad, unit", [({"distance": 250}, "metres"), ({"wavelength": 1.3}, "Angstrom"),
                                       ({"wavelength": 0.13}, "metres")])  # (in nm)
def test_radial_profile_refuses_lengths_given_in_other_units(agipd_geometry, bad, unit):
    kwargs = {"distance": 0.25, "wavelength": 1.3e-10, "npt": 100, **bad}
    with pytest.raises(ValueError, match=f"{next(iter(bad))}.*{unit}"):
        analysis.radial_profile(frames(1), agipd_geometry, **kwargs)
    # the longest flight tubes and soft X-rays still pass
    analysis.radial_profile(frames(1), agipd_geometry, 30.0, 4.5e-9, 10)


def test_photon_count_refuses_thresholds_that_are_not_a_fraction_of_a_photon():
    adu = xr.DataArray(np.array([0.0, 5, 60]), dims="x")
    assert analysis.photon_count(adu, 60, threshold=1).values.tolist() == [0, 0, 1]
    for threshold in (0, -1, 1.5, np.nan):
        with pytest.raises(ValueError, match="threshold"):
            analysis.photon_count(adu, 60, threshold=threshold)


def test_raw_agipd_frames_with_their_gain_plane_are_refused_until_calibrated(analysis_runs, agipd_geometry):
    det = xd.open_run(analysis_runs["data"], progress=False).detector()
    assert det["image.data"].sizes["gain"] == 2
    for fn in (lambda: analysis.photon_count(det, 60), lambda: analysis.lit_pixels(det, 100),
               lambda: analysis.radial_profile(det, agipd_geometry, 0.25, 1.3e-10, 100)):
        with pytest.raises(ValueError, match=r"'gain' axis.*calibrate.*sel\(gain=0\)"):
            fn()
    assert analysis.photon_count(det["image.data"].sel(gain=0).astype(np.float32), 60).dims[-2:] == (
        "slow_scan", "fast_scan")
    constants = analysis.dark_constants(xd.open_run(analysis_runs["dark"], progress=False).detector())
    calibrated = analysis.calibrate(det, constants)
    with pytest.raises(TypeError, match="float32, corrected data"):
        analysis.calibrate(calibrated, constants)


def test_arguments_of_the_wrong_kind_are_refused_saying_what_is_needed(agipd_geometry):
    arr = frames(1)
    with pytest.raises(TypeError, match="EXtra-geom geometry.*from_crystfel_geom.*not str"):
        analysis.assemble(arr, "agipd.geom")
    with pytest.raises(TypeError, match="EXtra-geom geometry.*not NoneType"):
        analysis.radial_profile(arr, None, 0.25, 1.3e-10, 100)
    with pytest.raises(TypeError, match="boolean DataArray over trainId"):
        analysis.select_frames(arr.expand_dims(trainId=[1]), np.array([True]))
    det = xr.Dataset({"image.data": arr.astype(np.uint16), "cellId": ("pulseId", [0])})
    with pytest.raises(TypeError, match="dark_constants"):
        analysis.calibrate(det, {"offset": 0})
