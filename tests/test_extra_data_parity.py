"""xfeldata and EXtra-data read the same runs the same way.

The runs are written by EXtra-data's own mock writers (fixture ``extra_data_runs``,
filled with deterministic values), and each test reads them with both libraries:
train IDs, sources, keys, control and instrument values, and stacked detectors
against EXtra-data's components (``AGIPD1M``, ``LPD1M``, ``JUNGFRAU``).  Where the
two differ by design, the test says how: control keys are named without
``.value`` in xfeldata, and a detector is one Dataset with ``trainId``/``pulseId``
dimensions where a component gives ``train``/``pulse``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import LPD_PARALLEL_GAIN_MODULES, LPD_PARALLEL_GAIN_TRAINS, lpd_parallel_gain_frames

import xfeldata as xd

ed = pytest.importorskip("extra_data")
components = pytest.importorskip("extra_data.components")

pytestmark = [
    pytest.mark.filterwarnings("ignore:Falling back to raw data:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*is a legacy name for:DeprecationWarning"),
]

RUN_NAMES = ["spb", "reduced_spb", "modern_spb_proc", "lpd_missed_train", "fxe_jungfrau", "agipd1m_ctrl"]
#: Trains whose values are compared key by key (the fixture fills the first rows of big datasets).
COMPARED_TRAINS = slice(0, 3)


@pytest.fixture(params=RUN_NAMES)
def both(request, extra_data_runs):
    """``(xfeldata run, EXtra-data run)`` of one mock run."""
    path = extra_data_runs[request.param]
    return xd.open_run(path), ed.RunDirectory(str(path))


def _current_sources(ed_run) -> set[str]:
    """EXtra-data's ``all_sources`` without the legacy names of corrected data."""
    return set(ed_run.all_sources) - set(ed_run.legacy_sources)


def test_train_ids_agree(both):
    run, ed_run = both
    np.testing.assert_array_equal(run.train_ids, ed_run.train_ids)
    assert run.train_ids.dtype == np.uint64


def test_sources_agree(both):
    run, ed_run = both
    assert set(run.sources) == _current_sources(ed_run)
    assert set(run.control_sources) == set(ed_run.control_sources)
    assert set(run.instrument_sources) == set(ed_run.instrument_sources) - set(ed_run.legacy_sources)


def test_keys_agree(both):
    """Instrument keys are the same; control keys are EXtra-data's without ``.value``."""
    run, ed_run = both
    for source in _current_sources(ed_run):
        ed_keys = ed_run.keys_for_source(source)
        if source in ed_run.control_sources:
            expected = {k.removesuffix(".value") for k in ed_keys if k.endswith(".value")}
            assert set(run.keys(source, timestamps=True)) == (
                expected | {k for k in ed_keys if k.endswith(".timestamp")}), source
        else:
            expected = set(ed_keys)
        assert set(run.keys(source)) == expected, source


def _readable_by_extra_data(run, source: str) -> list[str]:
    """Keys of ``source`` except those whose HDF5 group names hold a dot.

    EXtra-data's mock writer names some groups with a dot (``dataStorage.enable``),
    which EXtra-data lists as a key but then looks up as ``dataStorage/enable``;
    the facility's files never do this.
    """
    return [k for k in run.keys(source)
            if "." not in run.key_info(source, k).path.split(source, 1)[1].rsplit("/", 1)[0]]


def test_control_values_agree(both):
    run, ed_run = both
    for source in sorted(ed_run.control_sources):
        for key in _readable_by_extra_data(run, source):
            ours = run[source, key]
            theirs = ed_run[source, f"{key}.value"].xarray()
            np.testing.assert_array_equal(ours.trainId, theirs.trainId, err_msg=f"{source} {key}")
            np.testing.assert_array_equal(ours.values, theirs.values, err_msg=f"{source} {key}")
            assert ours.dtype == theirs.dtype, (source, key)


def test_run_values_agree(both):
    run, ed_run = both
    for source in sorted(ed_run.control_sources):
        ours, theirs = run.run_values(source), ed_run.get_run_values(source)
        assert set(ours) == {k.removesuffix(".value") for k in theirs}  # "key" and "key.timestamp"
        for key in _readable_by_extra_data(run, source):
            np.testing.assert_array_equal(ours[key], theirs[f"{key}.value"], err_msg=f"{source} {key}")
            np.testing.assert_array_equal(ours[f"{key}.timestamp"], theirs[f"{key}.timestamp"])


def test_instrument_values_agree(both):
    """Every instrument key of the non-detector sources, on the first trains."""
    run, ed_run = both
    run, ed_run = run.isel(trainId=COMPARED_TRAINS), ed_run.select_trains(COMPARED_TRAINS)
    detector_sources = {s for s in run.instrument_sources
                        if {"image.data", "data.adc"} & set(run.keys(s))}
    for source in sorted(set(run.instrument_sources) - detector_sources):
        for key in run.keys(source):
            ours, theirs = run[source, key], ed_run[source, key]
            np.testing.assert_array_equal(ours.values, theirs.ndarray(), err_msg=f"{source} {key}")
            np.testing.assert_array_equal(ours.trainId, theirs.train_id_coordinates(),
                                          err_msg=f"{source} {key}")


def test_data_counts_agree(both):
    run, ed_run = both
    for source in sorted(_current_sources(ed_run)):
        key = next(iter(run.keys(source)))
        theirs = ed_run[source, key if source in run.instrument_sources else f"{key}.value"].data_counts()
        group = run.key_info(source, key).group
        np.testing.assert_array_equal(run.data_counts(source, group), theirs.values, err_msg=source)
        np.testing.assert_array_equal(run.data_counts(source, key), theirs.values, err_msg=source)
        if "image.data" in run.keys(source):  # a module's frames, not its first group's one row a train
            np.testing.assert_array_equal(run.data_counts(source, "image.data", labelled=True),
                                          ed_run[source, "image.data"].data_counts(), err_msg=source)


def test_data_counts_of_a_group_or_key_the_source_lacks_name_its_groups(extra_data_runs):
    run = xd.open_run(extra_data_runs["spb"])
    source = next(s for s in run.instrument_sources if "image.data" in run.keys(s))
    with pytest.raises(KeyError, match=r"no index group or key 'image\.nothing'; its index groups: .*image"):
        run.data_counts(source, "image.nothing")


def test_legacy_source_names_read_the_current_source(extra_data_runs):
    path = extra_data_runs["modern_spb_proc"]
    run, ed_run = xd.open_run(path), ed.RunDirectory(str(path))
    legacy, current = sorted(ed_run.legacy_sources.items())[0]
    ours = run[legacy, "image.data"].isel(trainId=0)
    np.testing.assert_array_equal(ours.values, run[current, "image.data"].isel(trainId=0).values)
    theirs = ed_run.select_trains(np.s_[:1])[legacy, "image.data"].ndarray()
    np.testing.assert_array_equal(ours.values, theirs)


# ----- stacked detectors against EXtra-data's components ---------------------------
#: run name -> (component, detector name, xfeldata key, EXtra-data key, pulse-like dim of the component)
DETECTOR_CASES = {
    "spb": ("AGIPD1M", "SPB_DET_AGIPD1M-1", "image.data", "image.data", "pulse"),
    "reduced_spb": ("AGIPD1M", "SPB_DET_AGIPD1M-1", "image.data", "image.data", "pulse"),
    "modern_spb_proc": ("AGIPD1M", "SPB_DET_AGIPD1M-1", "image.data", "image.data", "pulse"),
    "modern_spb_proc-mask": ("AGIPD1M", "SPB_DET_AGIPD1M-1", "image.mask", "image.mask", "pulse"),
    "lpd_missed_train": ("LPD1M", "FXE_DET_LPD1M-1", "image.data", "image.data", "pulse"),
    "fxe_jungfrau": ("JUNGFRAU", "FXE_XAD_JF1M", "image.data", "data.adc", "cell"),
    "fxe_jungfrau-gain": ("JUNGFRAU", "FXE_XAD_JF1M", "image.gain", "data.gain", "cell"),
    "fxe_jungfrau-500k": ("JUNGFRAU", "FXE_XAD_JF500K", "image.mask", "data.mask", "cell"),
}
#: Cases where EXtra-data turns integer pixels into floats, NaN for the pulses a train lacks
#: (xfeldata keeps the dtype on disk and says where frames are missing in ``present``).
DTYPE_CHANGED = {"reduced_spb"}
#: Frames of each train compared (AGIPD and LPD; JUNGFRAU compares all 16 cells of one train).
COMPARED_PULSES = 4


def _module_present(ds) -> np.ndarray:
    """``present`` per (trainId, module), whether ``present`` is frame-level or module-level."""
    present = ds["present"]
    frame_dims = [d for d in present.dims if d not in ("trainId", "module")]  # pulseId, or JUNGFRAU's cell
    if frame_dims:
        present = present.any(frame_dims)
    return present.transpose("trainId", "module").values


@pytest.mark.parametrize("case", sorted(DETECTOR_CASES))
def test_detector_frames_agree_with_components(extra_data_runs, case):
    """The frames both libraries stack have the same values, on the modules the component finds."""
    component, name, key, ed_key, pulse_dim = DETECTOR_CASES[case]
    path = extra_data_runs[case.partition("-")[0]]
    n_trains = 1 if pulse_dim == "cell" else 3
    ed_run = ed.RunDirectory(str(path)).select_trains(np.s_[:n_trains])
    det = getattr(components, component)(ed_run, detector_name=name)
    modules = sorted(det.modno_to_source)
    if pulse_dim == "pulse":
        theirs = det.get_array(ed_key, pulses=ed.by_index[:COMPARED_PULSES])
        pulses = xd.by_index[:COMPARED_PULSES]
    else:
        theirs = det.get_array(ed_key)
        pulses = None

    ds = xd.open_run(path).isel(trainId=slice(0, n_trains)).detector(name, modules=modules, pulses=pulses)
    ours = ds[key]
    assert list(ours.module.values) == modules
    their_pulses = theirs[pulse_dim].values
    ours = ours.sel(trainId=theirs.train.values, module=theirs.module.values)
    if pulse_dim == "pulse":
        ours = ours.sel(pulseId=their_pulses)
    ours = ours.transpose("module", "trainId", ours.dims[1], ...)
    if case not in DTYPE_CHANGED:
        assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    present = _module_present(ds.sel(trainId=theirs.train.values, module=theirs.module.values))
    values, expected = ours.values, theirs.values
    for m in range(len(modules)):
        for t in range(len(theirs.train)):
            if not present[t, m]:
                continue
            recorded = ~np.isnan(expected[m, t]) if expected.dtype.kind == "f" else np.ones_like(expected[m, t], bool)
            if case in DTYPE_CHANGED:  # frames EXtra-data has (no NaN), compared as numbers
                recorded = recorded.reshape(len(their_pulses), -1).all(axis=1)
                assert recorded.any()
            np.testing.assert_array_equal(values[m, t][recorded], expected[m, t][recorded],
                                          err_msg=f"{case} module {modules[m]} train {t}")
    assert np.count_nonzero(values) > 0  # the compared frames hold the fixture's values


@pytest.mark.parametrize("case", ["spb", "reduced_spb", "lpd_missed_train", "fxe_jungfrau"])
def test_detector_trains_and_module_presence_agree(extra_data_runs, case):
    """Trains of a detector and which modules have data in them, as EXtra-data counts them."""
    component, name, _, ed_key, _ = DETECTOR_CASES[case]
    path = extra_data_runs[case]
    ed_run = ed.RunDirectory(str(path))
    det = getattr(components, component)(ed_run, detector_name=name)
    modules = sorted(det.modno_to_source)
    ds = xd.open_run(path).detector(name, modules=modules)

    counts = {m: ed_run[det.modno_to_source[m], ed_key].data_counts(labelled=True) for m in modules}
    with_data = sorted(set().union(*(c.index[c.values > 0] for c in counts.values())))
    np.testing.assert_array_equal(ds.trainId.values, with_data)
    expected = np.stack([counts[m].reindex(with_data).values > 0 for m in modules], axis=1)
    np.testing.assert_array_equal(_module_present(ds), expected)



# ----- the classic API: trains() ---------------------------------------------------
#: run name -> selection passed to both libraries' ``select`` (control, instrument, detector keys)
TRAINS_SELECTIONS = {
    "spb": [("SA1_XTD2_XGM/DOOCS/MAIN", "*"), ("SA1_XTD2_XGM/DOOCS/MAIN:output", "*"),
            ("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.*")],
    "reduced_spb": [("SPB_XTD9_XGM/DOOCS/MAIN", "beamPosition.*"), ("SPB_DET_AGIPD1M-1/DET/3CH0:xtdf", "*")],
    "lpd_missed_train": [("FXE_DET_LPD1M-1/DET/*CH0:xtdf", "image.*")],
    "fxe_jungfrau": [("FXE_XAD_JF1M/DET/CONTROL", "exposure*"), ("FXE_XAD_JF1M/DET/JNGFR02:daqOutput", "*")],
}


@pytest.mark.parametrize("name", sorted(TRAINS_SELECTIONS))
@pytest.mark.parametrize("require_all", [False, True])
def test_trains_dicts_equal_extra_datas(extra_data_runs, name, require_all):
    """Same trains, sources, key names (``"<key>.value"``, ``"<key>.timestamp"``) and values.

    xfeldata's ``metadata`` holds EXtra-data's ``source`` and ``timestamp.tid`` and,
    in addition, the train's timestamp; strings come decoded (``str``, not ``bytes``).
    """
    path = extra_data_runs[name]
    selection = TRAINS_SELECTIONS[name]
    ours = xd.open_run(path).select(selection).trains(train_range=xd.by_index[:4], require_all=require_all)
    theirs = ed.RunDirectory(str(path)).select(selection).trains(train_range=ed.by_index[:4],
                                                                 require_all=require_all)
    ours, theirs = list(ours), list(theirs)
    assert [tid for tid, _ in ours] == [tid for tid, _ in theirs]
    assert ours  # the comparison is not vacuous
    for (tid, our_data), (_, their_data) in zip(ours, theirs, strict=True):
        assert set(our_data) == set(their_data), tid
        for source, their_keys in their_data.items():
            assert set(our_data[source]) == set(their_keys), (tid, source)
            for key, value in their_keys.items():
                if key == "metadata":
                    assert value.items() <= our_data[source]["metadata"].items()
                elif isinstance(value, bytes):  # xfeldata decodes strings
                    assert our_data[source][key] == value.decode(), (tid, source, key)
                else:
                    np.testing.assert_array_equal(our_data[source][key], value, err_msg=f"{tid} {source} {key}")


def test_trains_has_a_length_for_progress_bars(extra_data_runs):
    run = xd.open_run(extra_data_runs["lpd_missed_train"])
    assert len(run.trains()) == 5
    assert len(run.trains(train_range=xd.by_id[10001:10003])) == 3
    trains = run.select("FXE_DET_LPD1M-1/DET/1CH0:xtdf").trains(require_all=True)
    assert len(trains) == 4 == len(list(trains))  # module 1 misses train 10002


# ----- LPD parallel gain: 3 gain stages per pulse, junk IDs after the first third ----
#: Rows of pixels compared (the frames are large; the fixture's pixel pattern varies within them).
LPD_ROI = slice(0, 16)


def test_lpd_parallel_gain_agrees_with_the_component_and_the_rows_on_disk(extra_data_lpd_parallel_gain):
    """``parallel_gain=True`` reads real LPD parallel-gain files as ``LPD1M(..., parallel_gain=True)``.

    Each train stores 300 frames: pulses 0..99 in high, then medium, then low
    gain, with pulse and cell IDs 0..299 (only the first 100 are valid).  Both
    libraries give a gain axis of 3 and pulses 0..99, the same frames in the
    same places, and those are the rows on disk: row ``stage * 100 + i`` of a
    train is pulse ``i`` in gain stage ``stage``.
    """
    path, modules, n_trains = extra_data_lpd_parallel_gain, LPD_PARALLEL_GAIN_MODULES, LPD_PARALLEL_GAIN_TRAINS
    ed_run = ed.RunDirectory(str(path), include="*LPD0[09]*").select_trains(np.s_[:n_trains])
    theirs = components.LPD1M(ed_run, modules=modules, parallel_gain=True).get_array(
        "image.data", roi=np.s_[LPD_ROI])
    run = xd.open_run(path).isel(trainId=slice(0, n_trains))
    ds = run.detector("FXE_DET_LPD1M-1", modules=modules, parallel_gain=True)
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan")
    assert ds["image.data"].shape == (n_trains, 100, len(modules), 3, 256, 256)
    assert ds.attrs["frames_per_pulse"] == 3
    np.testing.assert_array_equal(ds.pulseId, theirs.pulse)
    np.testing.assert_array_equal(ds.pulseId, np.arange(100))
    np.testing.assert_array_equal(ds.trainId, theirs.train)
    ours = ds["image.data"].isel(slow_scan=LPD_ROI).transpose("module", "trainId", "gain", "pulseId", ...)
    values = ours.values
    assert values.dtype == theirs.dtype and values.shape == theirs.shape
    assert np.array_equal(values, theirs.values)
    assert ds["present"].values.all()

    for j, module in enumerate(modules):
        group = f"FXE_DET_LPD1M-1/DET/{module}CH0:xtdf/image"
        with h5py.File(path / f"RAW-R0450-LPD{module:02d}-S00000.h5", "r") as f:
            first, count = f[f"INDEX/{group}/first"][:n_trains], f[f"INDEX/{group}/count"][:n_trains]
            for t in range(n_trains):
                lo, hi = int(first[t]), int(first[t] + count[t])
                pulse_ids = f[f"INSTRUMENT/{group}/pulseId"][lo:hi, 0]
                cell_ids = f[f"INSTRUMENT/{group}/cellId"][lo:hi, 0]
                assert len(np.unique(pulse_ids)) == 300   # junk IDs after the first third
                np.testing.assert_array_equal(ds.pulseId, pulse_ids[:100])
                np.testing.assert_array_equal(ds["cellId"].values[t, :, j], cell_ids[:100])
                frames = f[f"INSTRUMENT/{group}/data"][lo:hi, 0, LPD_ROI]
                assert np.array_equal(values[j, t], frames.reshape(3, 100, *frames.shape[1:]))
                assert np.array_equal(frames, lpd_parallel_gain_frames(module, np.arange(lo, hi))[:, 0, LPD_ROI])

    numpy = run.detector("FXE_DET_LPD1M-1", modules=modules, parallel_gain=True, dask=False)
    picked = {"pulseId": [0, 57, 99], "slow_scan": LPD_ROI}
    xr.testing.assert_identical(numpy.isel(picked).load(), ds.isel(picked).compute())


def test_lpd_parallel_gain_pulse_selections_agree_with_the_component(extra_data_lpd_parallel_gain):
    """A pulse selection picks pulses by the first third's IDs (or positions) and keeps all 3 stages."""
    path, modules = extra_data_lpd_parallel_gain, LPD_PARALLEL_GAIN_MODULES[:1]
    ed_run = ed.RunDirectory(str(path), include="*LPD00*").select_trains(np.s_[:1])
    run = xd.open_run(path).isel(trainId=slice(0, 1))
    for ours_sel, their_sel in [(xd.by_id[[3, 98]], ed.by_id[[3, 98]]), (xd.by_index[10:13], ed.by_index[10:13])]:
        theirs = components.LPD1M(ed_run, modules=modules, parallel_gain=True).get_array(
            "image.data", pulses=their_sel, roi=np.s_[:4, :4])
        ds = run.detector("FXE_DET_LPD1M-1", modules=modules, parallel_gain=True, pulses=ours_sel)
        np.testing.assert_array_equal(ds.pulseId, theirs.pulse)
        ours = ds["image.data"].isel(slow_scan=slice(0, 4), fast_scan=slice(0, 4))
        np.testing.assert_array_equal(ours.transpose("module", "trainId", "gain", "pulseId", ...), theirs)
        assert ds["present"].values.all() and ds.sizes["gain"] == 3
