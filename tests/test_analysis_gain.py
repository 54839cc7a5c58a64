"""Gain stages of LPD (bits 12-13 of the raw word) and JUNGFRAU (the gain key) in dark constants and calibrate.

The synthetic writer gives every stage the same pedestal, so the tests shift
each stage's signal by its own amount (keeping the recorded stage): the
constants must pick up the shifts per stage, and calibrate must take them
out again, pixel by pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import FIRST_TRAIN_ID, with_junk_pulse_ids

import xfeldata as xd
from xfeldata import analysis
from xfeldata.testing import make_example
from xfeldata.testing import synthetic as syn

LPD_MODULES, LPD_PULSES = [0, 5], 4
JF_MODULES, JF_CELLS = [1, 2], 2
SHIFT = 100  # ADU per stage


def _path(factory, name, detector, **kwargs):
    return make_example(factory.mktemp(name) / "r0001", detector=detector, first_train_id=FIRST_TRAIN_ID,
                        slow_sources=False, **kwargs)


def _run(factory, name, detector, **kwargs):
    return xd.open_run(_path(factory, name, detector, **kwargs)).detector()


@pytest.fixture(scope="module")
def lpd_dirs(tmp_path_factory):
    """LPD-1M runs in parallel-gain mode (3 stages per pulse): ``{"dark": dir, "data": dir}``."""
    common = dict(modules=LPD_MODULES, frames_per_train=LPD_PULSES, lpd_parallel_gain=True)
    return {"dark": _path(tmp_path_factory, "lpd_dark", "LPD1M", n_trains=8, dark=True, **common),
            "data": _path(tmp_path_factory, "lpd_data", "LPD1M", n_trains=3, **common)}


@pytest.fixture(scope="module")
def lpd(lpd_dirs):
    """The detector Datasets of ``lpd_dirs``: ``{"dark": det, "data": det}``."""
    return {name: xd.open_run(path).detector() for name, path in lpd_dirs.items()}


@pytest.fixture(scope="module")
def jungfrau(tmp_path_factory):
    """JUNGFRAU, 2 modules of 2 memory cells: ``{"dark": det, "data": det}`` (gain key 0 throughout)."""
    common = dict(modules=JF_MODULES, frames_per_train=JF_CELLS)
    return {"dark": _run(tmp_path_factory, "jf_dark", "JUNGFRAU", n_trains=8, dark=True, **common),
            "data": _run(tmp_path_factory, "jf_data", "JUNGFRAU", n_trains=3, **common)}


def shift_lpd_stages(det):
    """The LPD Dataset with SHIFT ADU per stage added to each pixel's signal, its stage bits kept."""
    word = det["image.data"]
    stage, value = word >> 12, word & 0x0FFF
    out = det.copy()
    out["image.data"] = ((value + SHIFT * stage) | (stage << 12)).astype(np.uint16)
    return out


def as_jungfrau_stage(det, gain_value, shift):
    """The JUNGFRAU Dataset with every pixel's gain key set to ``gain_value`` and ``shift`` ADU added."""
    out = det.copy()
    out["image.data"] = (det["image.data"] + shift).astype(np.uint16)
    out["image.gain"] = xr.full_like(det["image.gain"], gain_value)
    return out


# -- LPD ----------------------------------------------------------------------


def test_lpd_dark_constants_take_the_stage_of_each_pixel_from_its_bits(lpd):
    plain = analysis.dark_constants(lpd["dark"]).compute()
    constants = analysis.dark_constants(shift_lpd_stages(lpd["dark"])).compute()
    assert constants.sizes["gain_stage"] == 3 and constants.attrs["kind"] == "LPD1M"
    np.testing.assert_array_equal(constants.cell, np.arange(LPD_PULSES))
    shift = (constants["offset"] - plain["offset"]).values
    for s in range(3):
        np.testing.assert_allclose(shift[:, :, s], SHIFT * s, atol=1e-2)
    np.testing.assert_allclose(constants["noise"].values, plain["noise"].values, atol=1e-3)
    assert 3 < float(np.median(constants["noise"].values)) < 7  # the writer's LPD noise: 5 ADU


@pytest.mark.usefixtures("kernels")
def test_lpd_calibrate_corrects_each_stage_and_recovers_the_photons(lpd):
    constants = analysis.dark_constants(shift_lpd_stages(lpd["dark"])).compute()
    out = analysis.calibrate(shift_lpd_stages(lpd["data"]), constants)
    assert out["image.data"].dims == ("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan")
    stage = out["image.gain"].values
    np.testing.assert_array_equal(stage, np.broadcast_to(np.arange(3)[:, None, None], stage.shape))
    unshifted = analysis.calibrate(lpd["data"], analysis.dark_constants(lpd["dark"]).compute())
    np.testing.assert_allclose(out["image.data"].values, unshifted["image.data"].values, atol=1e-2)
    counts = analysis.photon_count(out, syn.ADU_PER_PHOTON["LPD1M"]).values
    truth = np.stack([np.stack([syn.detector_photons("LPD1M", m, int(t), 3 * LPD_PULSES)
                                .reshape(3, LPD_PULSES, 256, 256).swapaxes(0, 1) for m in LPD_MODULES], axis=1)
                      for t in lpd["data"].trainId.values])  # (train, pulse, module, stage, ss, fs)
    good = out["present"].values
    recovered = np.minimum(counts, truth)[good].sum() / truth[good].sum()
    assert recovered > 0.99, recovered


@pytest.mark.usefixtures("kernels")
def test_lpd_invalid_stage_bits_are_nan_and_not_present(lpd):
    constants = analysis.dark_constants(lpd["dark"]).compute()
    data = lpd["data"].copy(deep=True).load()  # the fixture is shared: change a copy
    word = data["image.data"].values.copy()
    word[0, 1, 0, 2, :10] |= np.uint16(3 << 12)  # stage 3: no such stage
    data["image.data"].values[:] = word
    out = analysis.calibrate(data, constants)
    frame = out.isel(trainId=0, pulseId=1, module=0, gain=2)
    assert np.isnan(frame["image.data"].values[:10]).all()
    assert not frame["present"].values[:10].any() and (frame["image.gain"].values[:10] == 255).all()
    bad = constants["bad_pixels"].sel(module=LPD_MODULES[0], cell=1, gain_stage=2).values
    np.testing.assert_array_equal(frame["present"].values[10:], ~bad[10:])


def test_lpd_files_with_junk_ids_given_parallel_gain_give_the_same_constants_and_corrections(
        lpd, lpd_dirs, tmp_path):
    """Real LPD files record valid pulse and cell IDs only in each train's first third:
    read with ``parallel_gain=True`` they give the constants and corrected frames of
    files whose stages repeat the IDs."""
    trains = {"dark": slice(0, 3), "data": [0]}   # a few trains are enough to tell
    junk = {name: xd.open_run(with_junk_pulse_ids(path, tmp_path / name)).isel(trainId=trains[name])
            .detector(parallel_gain=True) for name, path in lpd_dirs.items()}
    clean = {name: lpd[name].isel(trainId=trains[name]) for name in lpd}
    constants = analysis.dark_constants(junk["dark"]).compute()
    xr.testing.assert_identical(constants, analysis.dark_constants(clean["dark"]).compute())
    xr.testing.assert_identical(analysis.calibrate(junk["data"], constants).compute(),
                                analysis.calibrate(clean["data"], constants).compute())


@pytest.mark.usefixtures("kernels")
def test_lpd_constants_of_one_stage_leave_the_other_stages_nan(lpd):
    high = lpd["dark"].isel(gain=[0])  # a dark run in forced high gain
    constants = analysis.dark_constants(high).compute()
    assert constants.sizes["gain_stage"] == 3
    assert np.isnan(constants["offset"].values[:, :, 1:]).all()
    out = analysis.calibrate(lpd["data"], constants)["image.data"]
    assert np.isnan(out.isel(gain=[1, 2]).values).all()
    assert np.isfinite(out.isel(gain=0).values).mean() > 0.99


# -- JUNGFRAU -----------------------------------------------------------------


def test_jungfrau_dark_constants_from_the_three_gain_runs(jungfrau):
    dark = jungfrau["dark"]
    darks = [dark, as_jungfrau_stage(dark, 1, 1000), as_jungfrau_stage(dark, 3, 2000)]
    constants = analysis.dark_constants(darks).compute()
    assert constants["offset"].dims == ("module", "cell", "gain_stage", "slow_scan", "fast_scan")
    np.testing.assert_array_equal(constants.module, JF_MODULES)
    np.testing.assert_array_equal(constants.cell, np.arange(JF_CELLS))
    offset = constants["offset"].values
    np.testing.assert_allclose(offset[:, :, 1] - offset[:, :, 0], 1000, atol=1e-2)
    np.testing.assert_allclose(offset[:, :, 2] - offset[:, :, 0], 2000, atol=1e-2)
    assert 8 < float(np.median(constants["noise"].values)) < 12  # the writer's JUNGFRAU noise: 10 ADU


@pytest.mark.usefixtures("kernels")
def test_jungfrau_calibrate_takes_the_stage_of_each_pixel_from_the_gain_key(jungfrau):
    dark, data = jungfrau["dark"], jungfrau["data"].load()
    darks = [dark, as_jungfrau_stage(dark, 1, 1000), as_jungfrau_stage(dark, 3, 2000)]
    constants = analysis.dark_constants(darks).compute()
    plain = analysis.calibrate(data, constants)
    mixed = data.copy(deep=True)
    gain, adc = mixed["image.gain"].values, mixed["image.data"].values
    gain[..., :100, :] = 1
    adc[..., :100, :] += 1000  # stage 1 rows
    gain[..., 100:200, :] = 3
    adc[..., 100:200, :] += 2000  # stage 2 rows
    gain[..., 200:210, :] = 2  # not a JUNGFRAU gain value
    out = analysis.calibrate(mixed, constants)
    assert out["image.data"].dims == ("trainId", "cell", "module", "slow_scan", "fast_scan")
    stage = out["image.gain"].values
    assert (stage[..., :100, :] == 1).all() and (stage[..., 100:200, :] == 2).all()
    assert (stage[..., 200:210, :] == 255).all() and (stage[..., 210:, :] == 0).all()
    np.testing.assert_allclose(out["image.data"].values[..., :200, :], plain["image.data"].values[..., :200, :],
                               atol=1e-2)
    assert np.isnan(out["image.data"].values[..., 200:210, :]).all()
    assert not out["present"].values[..., 200:210, :].any()
    truth = np.stack([np.stack([syn.detector_photons("JUNGFRAU", m, int(t), JF_CELLS) for m in JF_MODULES],
                               axis=1) for t in data.trainId.values])  # (train, cell, module, ss, fs)
    counts = analysis.photon_count(plain, syn.ADU_PER_PHOTON["JUNGFRAU"]).values
    good = plain["present"].values
    assert np.minimum(counts, truth)[good].sum() / truth[good].sum() > 0.99


def test_jungfrau_calibrate_needs_the_gain_key(jungfrau):
    constants = analysis.dark_constants(jungfrau["dark"]).compute()
    with pytest.raises(KeyError, match="image.gain"):
        analysis.calibrate(jungfrau["data"].drop_vars("image.gain"), constants)


def test_constants_of_another_detector_kind_are_refused(lpd, jungfrau):
    constants = analysis.dark_constants(lpd["dark"]).compute()
    with pytest.raises(ValueError, match="constants' detector is LPD1M, the data's is JUNGFRAU"):
        analysis.calibrate(jungfrau["data"], constants)
