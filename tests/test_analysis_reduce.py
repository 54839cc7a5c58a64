"""masked_mean / masked_sum: only recorded values count, on numpy, dask and live data.

The reference is the pixel data on disk read with plain h5py (``h5ref``), and
xarray's own ``data.where(present).mean(dims)``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from conftest import IRREGULAR_RUN
from h5ref import h5_rows

import xfeldata as xd
from xfeldata.analysis import masked_mean, masked_sum
from xfeldata.testing import synthetic as syn

FRAMES = ["trainId", "pulseId"]
MODULES = IRREGULAR_RUN["modules"]


def on_disk(run_dir, module: int) -> np.ndarray:
    """Every frame of one module's raw ``image.data``, in train order, as h5py reads it."""
    rows = h5_rows(run_dir, f"SPB_DET_AGIPD1M-1/DET/{module}CH0:xtdf", "image.data")
    return np.concatenate(list(rows.values()))


@pytest.fixture(scope="module")
def det(irregular_run):
    return xd.open_run(irregular_run).detector()


def test_the_mean_per_module_is_that_of_the_frames_on_disk(irregular_run, det):
    mean = masked_mean(det, FRAMES)
    assert mean.dims == ("module", "gain", "slow_scan", "fast_scan") and mean.dtype == np.float64
    assert mean.module.values.tolist() == MODULES
    for m in MODULES:
        frames = on_disk(irregular_run, m)  # module 1 misses 3 trains: fewer frames
        expected = frames.sum(axis=0, dtype=np.int64) / len(frames)
        np.testing.assert_array_equal(mean.sel(module=m).values, expected)


def test_the_sum_is_exact_in_integers(irregular_run, det):
    total = masked_sum(det, FRAMES)
    assert total.dtype == np.uint64  # uint16 data: unsigned, as numpy sums it
    for m in MODULES:
        np.testing.assert_array_equal(total.sel(module=m).values,
                                      on_disk(irregular_run, m).sum(axis=0, dtype=np.uint64))


@pytest.mark.parametrize("dims", [FRAMES, ["module"], ["pulseId", "fast_scan"], None, "trainId"])
def test_equals_where_present_mean_over_any_dims(det, dims):
    got = masked_mean(det, dims)
    expected = det["image.data"].where(det["present"]).mean(dims)  # xarray computes it in float32
    assert got.dims == expected.dims
    xr.testing.assert_allclose(got, expected.astype(np.float64).rename(got.name), rtol=1e-6)


def test_numpy_dask_and_several_chunks_agree(irregular_run, det):
    run = xd.open_run(irregular_run)
    lazy = masked_mean(det, FRAMES)
    assert lazy.chunks is not None  # dask stays lazy
    eager = masked_mean(run.detector(dask=False), FRAMES)
    assert eager.chunks is None
    small = run.detector(target_bytes=2**20)  # one train a chunk: partial sums combined
    assert small["image.data"].data.numblocks[0] > 1
    np.testing.assert_array_equal(eager.values, lazy.values)
    np.testing.assert_array_equal(masked_mean(small, FRAMES).values, lazy.values)


def test_nothing_recorded_is_nan_in_the_mean_and_0_in_the_sum(irregular_run):
    det = xd.open_run(irregular_run).detector(modules=[0, 5])  # module 5 has no data
    mean, total = masked_mean(det, FRAMES), masked_sum(det, FRAMES)
    assert np.isnan(mean.sel(module=5)).all() and not np.isnan(mean.sel(module=0)).any()
    assert (total.sel(module=5) == 0).all()


def test_live_buffer_detector_gives_the_run_s_mean(irregular_run, live_buffer_of, det):
    live = live_buffer_of(irregular_run).detector()
    np.testing.assert_array_equal(masked_mean(live, FRAMES).values, masked_mean(det, FRAMES).values)


def test_float_nan_values_are_left_out_as_xarray_skips_them(det):
    data = det["image.data"].isel(gain=0).astype(np.float32)
    bad = (data.module == 2) & (data.slow_scan < 3)
    data = data.where(~bad)  # "bad pixels" of module 2: NaN in every frame
    got = masked_mean(data, FRAMES, det["present"])
    xr.testing.assert_allclose(got, data.where(det["present"]).mean(FRAMES).rename(got.name))
    assert np.isnan(got.sel(module=2).isel(slow_scan=0)).all()
    assert masked_sum(data, FRAMES, det["present"]).dtype == np.float64


@pytest.mark.parametrize("chunks", [None, {"pulseId": 1}])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_a_mask_per_pixel_counts_pixel_by_pixel(chunks, dtype):
    rng = np.random.default_rng(1)
    dims = ("pulseId", "module", "slow_scan", "fast_scan")
    values = rng.integers(-1000, 1000, (5, 2, 8, 4)).astype(dtype)
    if dtype == np.float32:
        values[rng.random(values.shape) > 0.8] = np.nan
    data = xr.DataArray(values, dims=dims, coords={"module": [0, 1]})
    present = xr.DataArray(rng.random((5, 2, 8, 4)) > 0.5, dims=dims, coords={"module": [0, 1]})
    if chunks:
        data, present = data.chunk(chunks), present.chunk(chunks)
    got = masked_mean(data, "pulseId", present)
    expected = data.astype(np.float64).where(present).mean("pulseId")
    xr.testing.assert_allclose(got, expected.rename(got.name))
    assert masked_sum(data, "pulseId", present).dtype == (np.int64 if dtype == np.int16 else np.float64)


@pytest.mark.parametrize("chunks", [None, {"trainId": 5}])
@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integers_near_their_limit_sum_exactly_or_raise_not_wrap(chunks, dtype):
    """Timestamps in ns (about 1.7e18): six of them pass 2**63; numpy's own sum would wrap."""
    stamps = [[1_700_000_000_000_000_000 + 100_000_000 * t + 7 * m for m in range(3)] for t in range(12)]
    seen = np.ones((12, 3), bool)
    seen[3, 1] = seen[7, 2] = False
    data = xr.DataArray(np.array(stamps, dtype), dims=("trainId", "module"), name="timestamp")
    present = xr.DataArray(seen, dims=("trainId", "module"))
    if chunks:
        data, present = data.chunk(chunks), present.chunk(chunks)
    counted = [[stamps[t][m] for t in range(12) if seen[t, m]] for m in range(3)]
    np.testing.assert_allclose(masked_mean(data, "trainId", present).values,
                               [sum(c) / len(c) for c in counted], rtol=1e-15, atol=0)
    with pytest.raises(OverflowError, match=r"'timestamp' \((u)?int64\).*float64"):
        masked_sum(data, "trainId", present).compute()
    offsets = data - np.array(1_700_000_000_000_000_000, dtype)
    total = masked_sum(offsets, "trainId", present)
    assert total.dtype == dtype
    assert total.values.tolist() == [sum(c) - len(c) * 1_700_000_000_000_000_000 for c in counted]


def test_the_mean_of_uint64_timestamps_on_disk_is_exact(irregular_run):
    """A control key's ``.timestamp`` (uint64 ns since 1970, about 1.7e18): its mean over the
    trains the files record, against the rows read with h5py and summed in Python integers."""
    key = "pulseEnergy.photonFlux.timestamp"
    on_disk = [int(v) for rows in h5_rows(irregular_run, syn.XGM_SOURCE, key).values() for v in rows]
    stamps = xd.open_run(irregular_run)[syn.XGM_SOURCE, key]
    assert stamps.dtype == np.uint64 and sum(on_disk) >= 2**64  # numpy's sum would wrap
    for data in (stamps, stamps.compute()):
        assert float(masked_mean(data).values) == pytest.approx(sum(on_disk) / len(on_disk), rel=1e-15)
        with pytest.raises(OverflowError, match="uint64"):
            masked_sum(data).compute()


def test_64_bit_sums_that_fit_are_exact_though_their_parts_pass_the_limit():
    values = np.array([-2**62, -2**62, -2**62, 2**62, 5], np.int64)
    for data in (xr.DataArray(values, dims="t"), xr.DataArray(values, dims="t").chunk(2)):
        assert int(masked_sum(data, "t").values) == -2**63 + 5
    big = np.array([2**63 + 5, 2**62, 3], np.uint64)
    assert int(masked_sum(xr.DataArray(big, dims="t").chunk(1), "t").values) == 2**63 + 2**62 + 8


def test_bool_data_sums_to_int64_counts_as_numpy_does(det):
    frames = masked_sum(det["present"], "pulseId")
    assert frames.dtype == np.int64 and frames.name == "present"
    xr.testing.assert_identical(frames, det["present"].sum("pulseId"))


def test_bad_arguments_raise_naming_what_is_wrong(det):
    with pytest.raises(ValueError, match=r"no \['frame'\] dimension"):
        masked_mean(det, ["frame"])
    with pytest.raises(ValueError, match="different coordinates"):
        masked_mean(det["image.data"], FRAMES, det["present"].isel(trainId=slice(0, 2)))
    with pytest.raises(TypeError, match="boolean"):
        masked_mean(det["image.data"], FRAMES, det["cellId"])
    with pytest.raises(TypeError, match="<U1"):
        masked_mean(xr.DataArray(np.array(["a"]), dims="x"))


def test_masked_mean_needs_no_analysis_extra():
    code = ("import sys; sys.modules['scipy'] = sys.modules['extra_geom'] = None\n"
            "from xfeldata.analysis import masked_mean; print(masked_mean.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "masked_mean"
