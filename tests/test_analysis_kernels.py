"""The block kernels of photon_count and calibrate against straightforward numpy, on every path.

The fast paths (cache-sized steps, batches of evenly spaced frames, blocks written
straight into one output array) must give exactly what a plain whole-array numpy
expression gives: values, dtype, NaN and ``present`` where data are missing.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import xfeldata as xd
from xfeldata import analysis
from xfeldata.analysis import photons
from xfeldata.analysis.gain import INVALID
from xfeldata.testing import make_example

DIMS = ("trainId", "pulseId", "module", "slow_scan", "fast_scan")


@pytest.fixture
def no_concatenation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("dask concatenated the blocks")
    monkeypatch.setattr(dask.array.core, "concatenate3", refuse)


# -- photon_count ---------------------------------------------------------------


def _adu(shape=(3, 4, 5, 64, 32), seed=0):
    rng = np.random.default_rng(seed)
    values = (rng.random(shape, dtype=np.float32) * 400 - 50).astype(np.float32)
    values[rng.random(shape) < 0.01] = np.nan
    values.flat[:6] = [29.999998, 30.0, 30.000002, 89.99999, 90.0, -0.0]  # around the thresholds
    return xr.DataArray(values, dims=DIMS, coords={"module": [0, 3, 4, 8, 9]})


def _counts(adu: np.ndarray, adu_per_photon: float, threshold: float) -> np.ndarray:
    """The formula, in float32 as documented, NaN counting 0."""
    with np.errstate(invalid="ignore"):
        x = np.floor(adu / np.float32(adu_per_photon) + np.float32(1 - threshold))
        return np.where(x >= 1, x, 0).astype(np.int32)


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("chunks", [{"trainId": 1}, {"module": 2}, {"pulseId": 3, "module": 1, "slow_scan": 32}])
def test_photon_count_on_dask_equals_the_formula_and_writes_one_array(chunks, no_concatenation):
    adu = _adu()
    expected = _counts(adu.values, 60, 0.5)
    counts = analysis.photon_count(adu.chunk(chunks), 60)
    assert isinstance(counts.data, da.Array) and counts.dtype == np.int32 and counts.dims == adu.dims
    values = counts.values
    np.testing.assert_array_equal(values, expected)
    assert values.dtype == np.int32 and values.flags.c_contiguous
    assert [values.flat[i] for i in (1, 4, 5)] == [1, 2, 0]  # 30 and 90 ADU: 1 and 2 photons; -0: none


@pytest.mark.usefixtures("kernels")
def test_photon_count_of_numpy_in_any_layout_equals_the_formula():
    adu = _adu()
    expected = _counts(adu.values, 7.5, 0.3)
    np.testing.assert_array_equal(analysis.photon_count(adu, 7.5, 0.3).values, expected)
    turned = adu.transpose("fast_scan", "module", "slow_scan", "trainId", "pulseId")  # not contiguous
    np.testing.assert_array_equal(analysis.photon_count(turned, 7.5, 0.3).transpose(*DIMS).values, expected)
    strided = adu.isel(fast_scan=slice(None, None, 3))
    np.testing.assert_array_equal(analysis.photon_count(strided, 7.5, 0.3).values, expected[..., ::3])


@pytest.mark.usefixtures("kernels")
def test_photon_count_steps_through_long_arrays_exactly(monkeypatch):
    monkeypatch.setattr(photons, "STEP", 1000)  # many steps, the last one short
    adu = _adu()
    np.testing.assert_array_equal(analysis.photon_count(adu.chunk({"module": 2}), 60).values,
                                  _counts(adu.values, 60, 0.5))


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("value", [np.inf, 2.0**31, 3e9])
def test_photon_count_on_dask_refuses_an_overflow_in_any_block(value):
    adu = _adu()
    adu.values[2, 3, 4, 63, 31] = value  # the last pixel of the last block
    adu.values[2, 3, 4, 0, 0] = np.nan   # NaN in the same step does not hide it
    with pytest.raises(OverflowError, match="int32"):
        analysis.photon_count(adu.chunk({"trainId": 1}), 1).compute()
    adu.values[2, 3, 4, 63, 31] = 2.0**31 - 256  # the largest float32 count below the limit
    assert analysis.photon_count(adu.chunk({"trainId": 1}), 1).values[2, 3, 4, 63, 31] == 2**31 - 256


# -- calibrate ------------------------------------------------------------------


def _raw(kind: str, seed=1, n=(3, 5), modules=(0, 2, 3, 7)):
    """Raw frames with irregular cells (some missing, some the constants lack) and their constants."""
    rng = np.random.default_rng(seed)
    shape = (*n, len(modules), 16, 8)
    cells = rng.integers(0, 6, size=shape[:3])
    cells[0, 1] = -1          # missing frames
    cells[1, :, 2] = 2        # a module whose frames share one cell
    const_cells = np.array([0, 1, 3, 4, 5])  # cell 2 is not in the constants
    n_stages = 3 if kind != "AGIPD1M-1" else 1
    if kind.startswith("AGIPD"):
        gain = rng.integers(0, 3000, size=shape, dtype=np.uint16)
        word = rng.integers(4000, 6000, size=shape, dtype=np.uint16)
        data = np.stack([word, gain], axis=3)
        dims = ("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan")
    else:  # LPD: bits 12-13 the stage, 3 invalid
        data = (rng.integers(0, 4, size=shape).astype(np.uint16) << 12) | \
            rng.integers(0, 4096, size=shape).astype(np.uint16)
        dims = DIMS
    det = xr.Dataset({"image.data": (dims, data), "cellId": (DIMS[:3], cells),
                      "present": (DIMS[:3], cells >= 0)},
                     coords={"trainId": np.arange(n[0]) + 100, "pulseId": np.arange(n[1]), "module": list(modules)},
                     attrs={"kind": kind.split("-")[0]})
    cshape = (len(modules), len(const_cells), n_stages, 16, 8)
    cdims = ("module", "cell", "gain_stage", "slow_scan", "fast_scan")
    constants = xr.Dataset({"offset": (cdims, rng.normal(2000, 300, cshape).astype(np.float32)),
                            "bad_pixels": (cdims, rng.random(cshape) < 0.05)},
                           coords={"module": list(modules), "cell": const_cells, "gain_stage": np.arange(n_stages)},
                           attrs={"kind": kind.split("-")[0]})
    if kind == "AGIPD1M":
        levels = np.sort(rng.integers(500, 2500, size=(*cshape[:2], 2, 16, 8)), axis=2).astype(np.float32)
        constants["gain_threshold"] = (("module", "cell", "threshold", "slow_scan", "fast_scan"), levels)
    return det, constants


def _reference(det: xr.Dataset, constants: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Offset correction by whole-array fancy indexing: (float32 values, uint8 stage)."""
    raw = det["image.data"].values
    cells = det["cellId"].values[..., None, None]
    where = np.searchsorted(constants.cell.values, cells)
    known = (cells >= 0) & (where < constants.sizes["cell"])
    known &= constants.cell.values[np.minimum(where, constants.sizes["cell"] - 1)] == cells
    cell = np.where(known, where, 0)
    module = np.arange(det.sizes["module"])[:, None, None]
    n_stages = constants.sizes["gain_stage"]
    if det.attrs["kind"] == "LPD1M":
        signal, stage = raw & 0x0FFF, (raw >> 12).astype(np.int64)
    else:
        signal, stage = raw[:, :, :, 0], np.zeros(raw[:, :, :, 0].shape, np.int64)
        if "gain_threshold" in constants:
            # (..., threshold, ss, fs) per frame
            thresholds = constants["gain_threshold"].values[module[:, 0, 0], cell[..., 0, 0]]
            stage = sum((raw[:, :, :, 1] > thresholds[..., t, :, :]).astype(np.int64) for t in range(n_stages - 1))
    valid = known & (stage < n_stages)
    s = np.minimum(stage, n_stages - 1)
    ss, fs = np.indices(signal.shape[-2:])
    offset = constants["offset"].values[module, cell, s, ss, fs]
    bad = constants["bad_pixels"].values[module, cell, s, ss, fs]
    values = np.where(valid & ~bad, signal.astype(np.float32) - offset, np.float32(np.nan)).astype(np.float32)
    return values, np.where(valid, stage, INVALID).astype(np.uint8)


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("kind", ["AGIPD1M-1", "AGIPD1M", "LPD1M"])
@pytest.mark.parametrize("chunks", [None, {"module": 1}, {"trainId": 1, "module": 2}])
def test_calibrate_equals_whole_array_fancy_indexing(kind, chunks):
    det, constants = _raw(kind)
    values, stage = _reference(det, constants)
    out = analysis.calibrate(det if chunks is None else det.chunk(chunks), constants)
    assert out["image.data"].dims == DIMS and out["image.data"].dtype == np.float32
    got = out["image.data"].values
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(out["present"].values, det["present"].values[..., None, None] & np.isfinite(values))
    if kind == "AGIPD1M-1":
        assert "image.gain" not in out
    else:
        np.testing.assert_array_equal(out["image.gain"].values, stage)
    assert np.isnan(values).any() and np.isfinite(values).any()


@pytest.mark.usefixtures("kernels")
@pytest.mark.parametrize("kind", ["AGIPD1M-1", "AGIPD1M", "LPD1M"])
def test_calibrate_on_dask_writes_one_array(kind, no_concatenation):
    det, constants = _raw(kind)
    values, stage = _reference(det, constants)
    out = analysis.calibrate(det.chunk({"module": 1}), constants)
    got = out["image.data"].values
    np.testing.assert_array_equal(got, values)
    assert got.flags.c_contiguous
    if kind != "AGIPD1M-1":  # frames and stages: either alone, or both in one computation
        np.testing.assert_array_equal(out["image.gain"].values, stage)
        both = out[["image.data", "image.gain"]].compute()
        np.testing.assert_array_equal(both["image.data"].values, values)
        np.testing.assert_array_equal(both["image.gain"].values, stage)


@pytest.mark.usefixtures("kernels")
def test_calibrate_frames_in_odd_layouts_equal_the_reference():
    det, constants = _raw("AGIPD1M-1")
    values, _ = _reference(det, constants)
    turned = det.transpose("module", "pulseId", "trainId", ...)  # frames of a block not evenly spaced
    got = analysis.calibrate(turned.chunk({"module": 2}), constants)["image.data"].transpose(*DIMS).values
    np.testing.assert_array_equal(got, values)
    got = analysis.calibrate(turned, constants)["image.data"].transpose(*DIMS).values
    np.testing.assert_array_equal(got, values)


def _jungfrau(det: xr.Dataset, seed=2) -> xr.Dataset:
    """``det`` (LPD words) as JUNGFRAU raw data: 14-bit signal and a gain key of 0-3 (2 is invalid)."""
    rng = np.random.default_rng(seed)
    gain = rng.integers(0, 4, size=det["image.data"].shape).astype(np.uint8)
    return det.assign({"image.gain": (DIMS, gain)}).assign_attrs(kind="JUNGFRAU")


def _both_kernels(monkeypatch, fn):
    """``fn()`` with the compiled kernels and with their numpy twins."""
    from xfeldata.analysis import _jit

    results = []
    for mode in ("1", "0"):
        monkeypatch.setenv(_jit.ENV, mode)
        results.append(fn())
    return results


@pytest.mark.parametrize("kind", ["AGIPD1M-1", "AGIPD1M", "LPD1M", "JUNGFRAU"])
@pytest.mark.parametrize("chunks", [None, {"pulseId": 2, "module": 1}])
def test_compiled_calibrate_gives_the_numpy_twins_bits(kind, chunks, monkeypatch):
    """The same float32 bits (NaN included) and stages, on every stage path, also into output views that
    are not contiguous (blocks of a few pulses); thresholds that are NaN (no dark frames) give stage 0,
    thresholds out of order the number of them a pixel's gain signal is above."""
    pytest.importorskip("numba")
    det, constants = _raw("LPD1M" if kind == "JUNGFRAU" else kind)
    if kind == "JUNGFRAU":
        det, constants = _jungfrau(det), constants.assign_attrs(kind="JUNGFRAU")
    if kind == "AGIPD1M":
        constants["gain_threshold"][0, 1, :, :4] = np.nan
        swapped = constants["gain_threshold"].values[1, 0, ::-1].copy()  # a high threshold below the low one
        constants["gain_threshold"].values[1, 0] = swapped
    lazy = det if chunks is None else det.chunk(chunks)
    compiled, twin = _both_kernels(monkeypatch, lambda: analysis.calibrate(lazy, constants).compute())
    for name in ("image.data", "image.gain", "present"):
        if name in twin:
            assert compiled[name].dtype == twin[name].dtype
            np.testing.assert_array_equal(compiled[name].values.view(np.uint8), twin[name].values.view(np.uint8))
    assert np.isnan(twin["image.data"].values).any()


def test_compiled_photon_count_gives_the_numpy_twins_counts_and_errors(monkeypatch):
    pytest.importorskip("numba")
    adu = _adu()
    for arr in (adu, adu.astype(np.float64), adu.chunk({"pulseId": 2, "module": 2}), adu.isel(fast_scan=slice(3))):
        compiled, twin = _both_kernels(monkeypatch, lambda arr=arr: analysis.photon_count(arr, 7.5, 0.3).values)
        assert compiled.dtype == twin.dtype == np.int32
        np.testing.assert_array_equal(compiled, twin)
    adu.values[1, 2, 3, 4, 5] = 3e10
    adu.values[2, 2, 3, 4, 5] = np.inf
    errors = _both_kernels(monkeypatch, lambda: pytest.raises(OverflowError, analysis.photon_count, adu, 1).value)
    assert str(errors[0]) == str(errors[1]) and "3e+10" in str(errors[0])


def test_compiled_assemble_gives_position_modules_bits(agipd_geometry, monkeypatch):
    """The compiled tile kernel gives EXtra-geom's images bit for bit: integer and float64 frames,
    modules out of order, frames that are not contiguous, blocks of several frames, NaN pixels."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(6)
    values = rng.random((16, 3, 512, 128)) * 1000  # (module, pulse, ...): transposed, frames not contiguous
    values[2, 1, :5] = np.nan
    arr = xr.DataArray(values, dims=("module", "pulseId", "slow_scan", "fast_scan"),
                       coords={"module": np.arange(16)}).transpose("pulseId", "module", ...)
    for given in (arr, arr.isel(module=[9, 1, 4]), arr.fillna(0).astype(np.uint16), arr.astype(np.float32).chunk(
            {"pulseId": 2})):
        compiled, twin = _both_kernels(monkeypatch, lambda given=given: analysis.assemble(given, agipd_geometry).values)
        assert compiled.dtype == twin.dtype
        np.testing.assert_array_equal(compiled.view(np.uint8), twin.view(np.uint8))
        assert np.isnan(twin).any() and np.isfinite(twin).any()


@pytest.mark.parametrize("geometry", ["AGIPD_500K2GGeometry", "LPD_1MGeometry", "LPD_MiniGeometry", "DSSC_1MGeometry",
                                      "JUNGFRAUGeometry", "PNCCDGeometry", "Epix100Geometry"])
def test_compiled_assemble_of_every_detector_gives_position_modules_bits(geometry, monkeypatch):
    """Modules turned, mirrored or as they are (every tile kind), with one module missing."""
    pytest.importorskip("numba")
    extra_geom = pytest.importorskip("extra_geom")
    geom = getattr(extra_geom, geometry).example()
    shape = geom.expected_data_shape
    values = np.random.default_rng(1).random((2, *shape), np.float32)
    arr = xr.DataArray(values, dims=("pulseId", "module", "slow_scan", "fast_scan"))
    if shape[0] > 1:
        arr = arr.assign_coords(module=np.arange(shape[0])).drop_sel(module=1)
    compiled, twin = _both_kernels(monkeypatch, lambda: analysis.assemble(arr, geom).values)
    np.testing.assert_array_equal(compiled.view(np.uint8), twin.view(np.uint8))
    assert np.isfinite(twin).sum() == arr.size


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float64])
def test_tiles_assemble_any_index_map_as_a_gather(dtype):
    """Blocks cut by the module's edge, pixels given twice, shuffled pixels and gaps: the tile plan
    gives what gathering every image pixel from its frame pixel gives."""
    pytest.importorskip("numba")
    from xfeldata.analysis import _tiles

    rng = np.random.default_rng(3)
    frame_shape = (2, 13, 20)  # not multiples of 8
    index = np.arange(np.prod(frame_shape)).reshape(frame_shape)
    image = np.full((30, 50), -1)
    image[1:21, 2:15] = index[0].T[::-1]  # turned
    image[1:14, 20:40] = index[1][:, ::-1]  # mirrored
    image[25, :10] = index[1, 10, :10]  # given twice (rows 8-12 are in no block)
    image[27:29, 40:50] = rng.permutation(index[:, 8:].ravel())[:20].reshape(2, 10)  # shuffled
    source = image.ravel()
    tiles = _tiles.plan(source, frame_shape)
    assert {0, 1, 2} >= set(tiles.kind.tolist()) >= {1, 2} and len(tiles.stray_at) > 20
    frames = (rng.random((3, *frame_shape)) * 1000).astype(dtype)
    images = np.empty((3, *image.shape), np.float32)
    _tiles.assemble_frames(frames.ravel(), np.arange(3) * frames[0].size, tiles, images.ravel(),
                           np.arange(3) * image.size)
    gathered = np.where(source >= 0, frames.reshape(3, -1)[:, np.maximum(source, 0)], np.nan)
    expected = np.ascontiguousarray(gathered, np.float32)
    np.testing.assert_array_equal(images.reshape(3, -1).view(np.uint8), expected.view(np.uint8))


def test_compiled_radial_profile_gives_the_numpy_twins_bits(agipd_geometry, monkeypatch):
    """The histogram sums in pixel order in float32 as the twin's sparse matrix product: the same bits,
    with NaN and infinite pixels, a mask, integer frames and empty bins (NaN)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(5)
    values = rng.random((3, 2, 512, 128), np.float32) * 100
    values[0, 1, :7] = np.nan
    values[1, 0, 40:45] = np.inf
    arr = xr.DataArray(values, dims=("pulseId", "module", "slow_scan", "fast_scan"), coords={"module": [3, 8]})
    mask = np.zeros((2, 512, 128), bool)
    mask[1, 100:300] = True
    for given, kwargs in ((arr, {}), (arr, {"mask": mask}), (arr.chunk({"pulseId": 2}), {"q_range": (0, 40)}),
                          ((arr.fillna(0).clip(0, 1e4) * 10).astype(np.uint16), {})):
        compiled, twin = _both_kernels(monkeypatch, lambda given=given, kwargs=kwargs: analysis.radial_profile(
            given, agipd_geometry, 0.2, 1.3e-10, npt=400, **kwargs).values)
        assert compiled.dtype == twin.dtype == np.float32
        np.testing.assert_array_equal(compiled.view(np.uint32), twin.view(np.uint32))
        assert np.isfinite(twin).any()
        assert np.isnan(twin).any() == ("q_range" in kwargs)  # bins from q = 0: empty in the central hole


# -- dark_constants ---------------------------------------------------------------


def _dark_reference(det: xr.Dataset, cell_values: np.ndarray, n_stages: int) -> tuple[np.ndarray, np.ndarray]:
    """Offset and noise per (module, cell, stage) from all of a module's frames of a cell at once."""
    raw, cells = det["image.data"].values, det["cellId"].values
    lpd = det.attrs["kind"] == "LPD1M"
    pixel = raw.shape[-2:]
    mean = np.full((raw.shape[2], len(cell_values), n_stages, *pixel), np.nan)
    noise = mean.copy()
    for m in range(raw.shape[2]):
        for i, c in enumerate(cell_values):
            x = raw[:, :, m][cells[:, :, m] == c]
            signal = (x & 0x0FFF if lpd else x[:, 0]).astype(np.float64)
            stage = (x >> 12) if lpd else np.zeros(signal.shape, int)
            for s in range(n_stages):
                inside = stage == s
                xs = np.where(inside, signal, 0.0)
                n = inside.sum(axis=0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean[m, i, s] = xs.sum(axis=0) / n
                    noise[m, i, s] = np.sqrt(np.maximum((xs * xs).sum(axis=0) / n - mean[m, i, s] ** 2, 0))
    return mean.astype(np.float32), noise.astype(np.float32)


@pytest.mark.parametrize("kind", ["AGIPD1M-1", "LPD1M"])
def test_dark_constants_from_running_sums_equal_all_frames_at_once(kind):
    det, _ = _raw(kind, n=(6, 5))
    det["image.data"].values[..., :4] = 5000  # some pixels without noise
    cell_values = np.unique(det["cellId"].values[det["cellId"].values >= 0])
    mean, noise = _dark_reference(det, cell_values, 3 if kind == "LPD1M" else 1)
    for chunks in (None, {"trainId": 1, "module": 1}, {"trainId": 4, "module": 2}):
        got = analysis.dark_constants(det if chunks is None else det.chunk(chunks)).compute()
        np.testing.assert_array_equal(got.cell, cell_values)
        np.testing.assert_array_equal(got["offset"].values, mean)
        np.testing.assert_array_equal(got["noise"].values, noise)
        assert got["bad_pixels"].values[..., :4].all()  # noise 0


def test_dark_constants_of_numpy_frames_are_numpy_and_of_dask_frames_lazy():
    det, _ = _raw("LPD1M", n=(4, 3))
    eager, lazy = analysis.dark_constants(det), analysis.dark_constants(det.chunk({"trainId": 2}))
    assert all(isinstance(v.data, np.ndarray) for v in eager.data_vars.values())
    assert all(isinstance(v.data, da.Array) for v in lazy.data_vars.values())
    xr.testing.assert_identical(eager, lazy.compute())


def test_dark_constants_add_each_block_to_one_running_sum_per_module():
    """No task takes the sums of more than one block: memory holds one sums array per module being
    summed, not one per block."""
    det, _ = _raw("LPD1M", n=(6, 5))
    lazy = analysis.dark_constants(det.chunk({"trainId": 1, "module": 1}))
    graph = dict(lazy["offset"].data.__dask_graph__())
    sums = {k for k in graph if str(k).startswith("_cell_sums")}
    assert len(sums) == 6 * 4  # a task per block
    for key in graph:  # (summing the blocks' sums at the end would take all of a module's)
        assert len(dask.core.get_dependencies(graph, key) & sums) <= 1, key


@pytest.mark.usefixtures("kernels")
def test_outputs_mix_with_other_dask_arrays_in_a_dataset():
    """xarray refuses to compute Datasets mixing dask array types: the outputs are plain dask arrays."""
    adu = _adu().chunk({"trainId": 1})
    both = xr.Dataset({"counts": analysis.photon_count(adu, 60), "lit": analysis.lit_pixels(adu, 100)})
    assert type(both["counts"].data) is da.Array
    computed = both.compute()
    np.testing.assert_array_equal(computed["counts"].values, _counts(adu.values, 60, 0.5))
    det, constants = _raw("AGIPD1M-1")
    out = analysis.calibrate(det.chunk({"module": 1}), constants)
    np.testing.assert_array_equal(out.compute()["image.data"].values, _reference(det, constants)[0])


def test_a_detector_dataset_with_arrays_of_ones_own_computes_through_uniform_dask(tmp_path):
    """xarray refuses a Dataset mixing dask array types: uniform_dask makes the detector's variables
    plain dask arrays, with the same values, so that the whole Dataset computes."""
    run = xd.open_run(make_example(tmp_path / "run", n_trains=3, frames_per_train=4), progress=False)
    det = run.detector()
    photons = analysis.photon_count(det["image.data"].sel(gain=0).astype(np.float32), 1000)
    ds = xd.uniform_dask(det.assign(photons=photons, doubled=det["image.data"] * 2))
    assert {type(v.data) for v in ds.data_vars.values() if isinstance(v.data, da.Array)} == {da.Array}
    whole = ds.compute()
    np.testing.assert_array_equal(whole["image.data"].values, det["image.data"].values)
    np.testing.assert_array_equal(whole["photons"].values, photons.values)
    np.testing.assert_array_equal(whole["doubled"].values, 2 * det["image.data"].values)
    np.testing.assert_array_equal(whole["present"].values, det["present"].values)


@pytest.mark.usefixtures("kernels")
def test_calibrated_and_masked_datasets_compute_whole(tmp_path):
    """calibrate and masked keep the detector's lazy variables beside derived ones; the Dataset still computes."""
    from xfeldata.analysis import calibrate, dark_constants, masked

    run = xd.open_run(make_example(tmp_path / "run", n_trains=2, frames_per_train=4), progress=False)
    dark = xd.open_run(make_example(tmp_path / "dark", n_trains=2, frames_per_train=4, dark=True), progress=False)
    lazy = calibrate(run.detector(), dark_constants(dark.detector()))
    whole = lazy.compute()
    np.testing.assert_array_equal(whole["cellId"].values, run.detector()["cellId"].values)
    np.testing.assert_array_equal(whole["image.data"].values, lazy["image.data"].values)
    corr = xd.open_run(make_example(tmp_path / "corr", n_trains=2, frames_per_train=4, corrected=True), progress=False)
    assert masked(corr.detector()).compute()["image.data"].dtype == np.float32
