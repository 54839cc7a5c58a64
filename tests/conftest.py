"""Shared test fixtures: synthetic runs written once per test session.

Every run fixture returns the run directory (a :class:`pathlib.Path`) written by
:func:`xfeldata.testing.make_example` into a session temporary directory.
Runs are small (a few frames per train, 5-12 trains) so that the whole set is
written in a few seconds.  Tests must treat them as read-only: they are shared.

Content is deterministic: any train can be recomputed with
:func:`xfeldata.testing.synthetic.detector_module_train` and
:func:`xfeldata.testing.synthetic.slow_trains`.  Trains start at
:data:`FIRST_TRAIN_ID`.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from xfeldata.detectors.kinds import DETECTORS
from xfeldata.files.layout import FORMAT_VERSIONS
from xfeldata.testing import make_example

#: First train ID of every fixture run.
FIRST_TRAIN_ID = 10000

# Parameters of the fixture runs, exposed so tests can refer to them.
AGIPD_RUN = {"n_trains": 10, "frames_per_train": 2, "trains_per_sequence": 5}
IRREGULAR_RUN = {"n_trains": 12, "frames_per_train": 3, "trains_per_sequence": 6,
                 "modules": [0, 1, 2, 3], "irregular": True}
FORMAT_RUN = {"modules": [0, 1], "n_trains": 6, "frames_per_train": 2, "suspect_train": True}
DETECTOR_RUN = {"n_trains": 5, "frames_per_train": 2, "slow_sources": False}
#: Modules written for each kind in ``detector_runs``.
DETECTOR_RUN_MODULES = {"JUNGFRAU": [1, 2], "LPDMINI": [1, 2], "EPIX100": [0]}
SLOW_RUN = {"detector": None, "n_trains": 10, "trains_per_sequence": 5}


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of the run files of ``src`` in ``dst`` (tests that damage files work on copies)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.h5")):
        shutil.copyfile(path, dst / path.name)
    return dst


def _make(factory: pytest.TempPathFactory, name: str, **kwargs) -> Path:
    return make_example(factory.mktemp(name) / "r0001", first_train_id=FIRST_TRAIN_ID, **kwargs)


@pytest.fixture(scope="session")
def agipd_raw_run(tmp_path_factory) -> Path:
    """Raw AGIPD-1M run, format 1.3: all 16 modules, 10 trains of 2 frames, slow sources.

    Every aggregator has 2 sequence files (5 trains per sequence; ``DA01``/``DA02``
    shift their boundary by 1/2 trains).  No irregularities.
    """
    return _make(tmp_path_factory, "agipd_raw", **AGIPD_RUN)


@pytest.fixture(scope="session")
def agipd_corr_run(tmp_path_factory) -> Path:
    """Corrected AGIPD-1M run (``CORR`` files), gzip-compressed, otherwise as ``agipd_raw_run``.

    Sources are named ``SPB_DET_AGIPD1M-1/CORR/<n>CH0:output``; the legacy
    ``.../DET/<n>CH0:xtdf`` names are soft links in INDEX and INSTRUMENT and are
    listed in METADATA.  Slow data is in ``CORR-R0001-DA01/DA02`` files.
    """
    return _make(tmp_path_factory, "agipd_corr", corrected=True, new_corr_names=True,
                 compression="gzip", **AGIPD_RUN)


@pytest.fixture(scope="session")
def irregular_run(tmp_path_factory) -> Path:
    """Raw AGIPD-1M run with ``irregular=True``: modules 0-3, 12 trains of up to 3 frames.

    Module 1 misses trains 10002, 10003 and 10010 (absent from its INDEX);
    frames vary per train and train 10001 has none; every INDEX array has 3
    zero-padded rows; ``DA01`` has a suspect train (ID 1000010011, flagged,
    timestamp 0) and the empty sources of ``xfeldata.testing.synthetic.EMPTY_SOURCES``.
    """
    return _make(tmp_path_factory, "irregular", **IRREGULAR_RUN)


@pytest.fixture(scope="session")
def format_runs(tmp_path_factory) -> dict[str, Path]:
    """One small run per format version: ``{"0.5", "0.5-old", "1.0", ..., "1.3"}`` -> run dir.

    AGIPD-1M modules 0 and 1, 6 trains of 2 frames, slow sources, and a suspect
    train in ``DA01`` (so ``INDEX/flag`` semantics differ: 1.1 inverts them, 0.5
    has no flag at all).  ``"0.5-old"`` uses the old first/last/status index.
    """
    runs = {v: _make(tmp_path_factory, f"format_{v}", format_version=v, **FORMAT_RUN)
            for v in FORMAT_VERSIONS}
    runs["0.5-old"] = _make(tmp_path_factory, "format_0.5_old", format_version="0.5",
                            old_index=True, **FORMAT_RUN)
    return runs


@pytest.fixture(scope="session")
def detector_runs(tmp_path_factory) -> dict[str, Path]:
    """One small raw run per detector kind, without slow sources: kind -> run dir.

    Keys are the names of ``xfeldata.detectors.kinds.DETECTORS`` plus
    ``"LPD1M-parallel"`` (LPD parallel gain: 3 gain stages x 2 pulses per train).
    Each has 2 modules (JUNGFRAU: modules 1 and 2 with 2 memory cells; LPDMINI: 1 and 2;
    EPIX100: its one module 0, one frame per train), 5 trains
    of 2 frames, format 1.3.
    """
    runs = {}
    for kind in DETECTORS:
        modules = DETECTOR_RUN_MODULES.get(kind, [0, 1])
        runs[kind] = _make(tmp_path_factory, f"det_{kind}", detector=kind, modules=modules,
                           **DETECTOR_RUN)
    runs["LPD1M-parallel"] = _make(tmp_path_factory, "det_LPD1M_parallel", detector="LPD1M",
                                   modules=[0, 1], lpd_parallel_gain=True, **DETECTOR_RUN)
    return runs


def with_junk_pulse_ids(run_dir: Path, dst: Path, junk: str = "shifted") -> Path:
    """A copy of an LPD parallel-gain run whose gain stages 1 and 2 record junk pulse and cell IDs.

    The synthetic writer gives every gain stage the pulse IDs of the first;
    real LPD files record them only in the first third of each train
    (EXtra-data: "the remaining 2/3 are junk").  ``junk="shifted"``: those
    rows' IDs become ``1000 + ID + 100 * stage`` (no ID repeats within a train);
    ``"zeros"``: 0 (IDs repeat).
    """
    copy_run(run_dir, dst)
    for path in sorted(dst.glob("*LPD*.h5")):
        with h5py.File(path, "r+") as f:
            for source in f["INSTRUMENT/FXE_DET_LPD1M-1/DET"]:
                base = f"FXE_DET_LPD1M-1/DET/{source}"
                counts = f[f"INDEX/{base}/image/count"][()].astype(np.int64)
                position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
                stage = position // np.repeat(counts // 3, counts)
                for key in ("pulseId", "cellId"):
                    ids = f[f"INSTRUMENT/{base}/image/{key}"]
                    values = ids[()]
                    shifted = 1000 + values[:, 0].astype(np.int64) + 100 * stage
                    values[stage > 0, 0] = 0 if junk == "zeros" else shifted[stage > 0]
                    ids[...] = values
    return dst


@pytest.fixture(scope="session")
def lpd_junk_ids(tmp_path_factory, detector_runs) -> dict[str, Path]:
    """``detector_runs["LPD1M-parallel"]`` with junk IDs in gain stages 1 and 2 (:func:`with_junk_pulse_ids`):
    ``{"shifted", "zeros"}`` -> run dir."""
    return {junk: with_junk_pulse_ids(detector_runs["LPD1M-parallel"], tmp_path_factory.mktemp(f"lpd_{junk}"), junk)
            for junk in ("shifted", "zeros")}


@pytest.fixture(scope="session")
def slow_only_run(tmp_path_factory) -> Path:
    """A run without detector: slow and instrument sources only (``DA01`` and ``DA02``).

    10 trains, 2 sequence files per aggregator, format 1.3.
    """
    return _make(tmp_path_factory, "slow_only", **SLOW_RUN)


@pytest.fixture(scope="session")
def live_buffer_of():
    """``live_buffer_of(run_dir)``: a stopped LiveBuffer holding every train of the run,
    received over ZMQ on 127.0.0.1 from ``serve(run)`` (served once per run and session)."""
    import threading

    import xfeldata as xd
    from xfeldata.bridge import LiveBuffer, serve

    buffers = {}

    def fed(run_dir: Path):
        if run_dir not in buffers:
            run = xd.open_run(run_dir)
            n = len(run.train_ids)
            with serve(run, background=True) as handle:
                with LiveBuffer(handle.endpoint, maxlen=n) as buf:
                    buf.wait(n, timeout=20)
                    assert handle.join(timeout=20)
                    for _ in range(50):  # the last messages may still be on their way
                        if buf.received >= n:
                            break
                        threading.Event().wait(0.1)
            assert not buf.running and buf.received == n and buf.errors == 0
            buffers[run_dir] = buf
        return buffers[run_dir]

    return fed


#: EXtra-data mock runs in ``extra_data_runs``: name -> (make_examples function, kwargs).
EXTRA_DATA_RUNS = {
    "spb": ("make_spb_run", {"format_version": "1.0"}),
    "reduced_spb": ("make_reduced_spb_run", {"format_version": "1.0"}),
    "modern_spb_proc": ("make_modern_spb_proc_run", {}),
    "lpd_missed_train": ("make_lpd_run_mini_missed_train", {}),
    "fxe_jungfrau": ("make_fxe_jungfrau_run", {}),
    "agipd1m_ctrl": ("make_agipd1m_run", {}),
}
#: ``INDEX/timestamp`` of train 0 in ``extra_data_runs`` (ns since the epoch: 2020-01-01 UTC).
EXTRA_DATA_EPOCH_NS = 1_577_836_800 * 10**9
#: ``extra_data_runs`` fills at most this many elements of each dataset with values.
EXTRA_DATA_FILLED_ELEMENTS = 2**19


def _datasets_below(group: h5py.Group) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    group.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _fill_with_values(run_dir: Path, max_elements: int) -> None:
    """Give the numeric datasets of EXtra-data's mock files deterministic random values.

    The mock writers leave most data at 0, which cannot tell two readers apart.
    Every numeric dataset under CONTROL, RUN, INSTRUMENT, REDUCTION and ERRATA except the train,
    pulse and cell IDs gets values from a generator seeded by its path; datasets
    with more than ``max_elements`` elements get them in their first rows only
    (at least one row).  ``INDEX/timestamp`` becomes one 10 Hz clock shared by all
    files (each mock file records its own time of writing).
    """
    skip = {"trainId", "pulseId", "cellId", "memoryCell", "frameNumber"}

    for path in sorted(run_dir.glob("*.h5")):
        with h5py.File(path, "r+") as f:
            if "INDEX/timestamp" in f:  # one clock for all files, 10 Hz, as the facility's files
                tids = f["INDEX/trainId"][:].astype(np.int64)
                f["INDEX/timestamp"][:] = np.where(tids > 0, EXTRA_DATA_EPOCH_NS + tids * 100_000_000, 0)
            datasets = [ds for top in ("CONTROL", "RUN", "INSTRUMENT", "REDUCTION", "ERRATA") if top in f
                        for ds in _datasets_below(f[top])]
            for ds in datasets:
                name = ds.name
                if name.rsplit("/", 1)[-1] in skip or ds.dtype.kind not in "iuf" or ds.size == 0:
                    continue
                rng = np.random.default_rng(zlib.crc32(name.encode()))
                row = int(np.prod(ds.shape[1:], dtype=np.int64))
                n = min(ds.shape[0], max(1, max_elements // max(row, 1)))
                shape = (n, *ds.shape[1:])
                if ds.dtype.kind == "f":
                    values = rng.normal(100, 30, size=shape).astype(ds.dtype)
                else:
                    hi = min(np.iinfo(ds.dtype).max, 1000)
                    values = rng.integers(0, hi, size=shape, endpoint=True).astype(ds.dtype)
                ds[:n] = values


@pytest.fixture(scope="session")
def extra_data_runs(tmp_path_factory) -> dict[str, Path]:
    """Runs written by EXtra-data's own mock writers, for comparing with EXtra-data: name -> run dir.

    Names and writers are in :data:`EXTRA_DATA_RUNS` (``extra_data.tests.make_examples``):
    ``"spb"`` (AGIPD-1M raw, 16 modules x 64 trains x 64 frames, XGMs, a camera),
    ``"reduced_spb"`` (AGIPD-1M raw with 0-19 frames per train, REDUCTION sources),
    ``"modern_spb_proc"`` (corrected AGIPD-1M with legacy source names),
    ``"lpd_missed_train"`` (LPD-1M modules 0 and 1, module 1 misses train 10002) and
    ``"fxe_jungfrau"`` (JUNGFRAU ``FXE_XAD_JF1M`` modules 1-2, ``FXE_XAD_JF500K`` module 3,
    and a ``JNGFRCTRL00`` control aggregator), ``"agipd1m_ctrl"`` (AGIPD-1M raw with
    the ``AGIPD1MCTRL00`` detector-control aggregator).  The mock writers leave data at 0;
    :func:`_fill_with_values` then gives every numeric dataset values in its first
    :data:`EXTRA_DATA_FILLED_ELEMENTS` elements (AGIPD: the first 4 raw frames of each module).
    """
    make_examples = pytest.importorskip("extra_data.tests.make_examples")
    root = tmp_path_factory.mktemp("extra_data_runs")
    runs = {}
    for name, (function, kwargs) in EXTRA_DATA_RUNS.items():
        run_dir = root / name
        run_dir.mkdir()
        if function == "make_reduced_spb_run":
            kwargs = {**kwargs, "rng": np.random.RandomState(7)}
        getattr(make_examples, function)(str(run_dir), **kwargs)
        _fill_with_values(run_dir, EXTRA_DATA_FILLED_ELEMENTS)
        runs[name] = run_dir
    return runs


#: Modules and trains of ``extra_data_lpd_parallel_gain`` that hold values (every frame of them).
LPD_PARALLEL_GAIN_MODULES, LPD_PARALLEL_GAIN_TRAINS = [0, 9], 2


def lpd_parallel_gain_frames(module: int, rows: np.ndarray) -> np.ndarray:
    """The frames ``(len(rows), 1, 256, 256)`` that ``extra_data_lpd_parallel_gain`` writes in
    ``rows`` of ``module``: a value of each row's own plus a pixel pattern."""
    ss, fs = np.ogrid[:256, :256]
    pattern = ((ss + 2 * fs) % 5 * 10000).astype(np.uint16)
    code = (1 + module * 1000 + np.asarray(rows)).astype(np.uint16)
    return (pattern + code[:, None, None])[:, None]


@pytest.fixture(scope="session")
def extra_data_lpd_parallel_gain(tmp_path_factory) -> Path:
    """EXtra-data's mock LPD-1M parallel-gain run (``make_lpd_parallelgain_run``): run dir.

    16 modules, 100 trains of 300 frames (100 pulses x 3 gain stages, stage by
    stage), pulse and cell IDs 0..299 in every train as in real files (only the
    first third is valid).  Every frame of the first
    :data:`LPD_PARALLEL_GAIN_TRAINS` trains of :data:`LPD_PARALLEL_GAIN_MODULES`
    holds :func:`lpd_parallel_gain_frames`; the rest stays 0.
    """
    make_examples = pytest.importorskip("extra_data.tests.make_examples")
    run_dir = tmp_path_factory.mktemp("extra_data_lpd_parallel_gain")
    make_examples.make_lpd_parallelgain_run(str(run_dir))
    rows = np.arange(300 * LPD_PARALLEL_GAIN_TRAINS)
    for module in LPD_PARALLEL_GAIN_MODULES:
        with h5py.File(run_dir / f"RAW-R0450-LPD{module:02d}-S00000.h5", "r+") as f:
            f[f"INSTRUMENT/FXE_DET_LPD1M-1/DET/{module}CH0:xtdf/image/data"][rows] = \
                lpd_parallel_gain_frames(module, rows)
    return run_dir


#: Parameters of the ``analysis_runs`` pair: AGIPD-1M modules with a gap in the numbering.
ANALYSIS_RUN = {"modules": [0, 3, 8, 15], "frames_per_train": 4, "slow_sources": False}


@pytest.fixture(scope="session")
def analysis_runs(tmp_path_factory) -> dict[str, Path]:
    """A raw AGIPD-1M dark run (8 trains, no photons) and a data run (4 trains, with photons).

    ``{"dark": dir, "data": dir}``; modules 0, 3, 8 and 15, 4 frames (memory
    cells 0-3) per train, no slow sources.  The data run's photons are
    :func:`xfeldata.testing.synthetic.detector_photons`.
    """
    return {
        "dark": _make(tmp_path_factory, "analysis_dark", n_trains=8, dark=True, **ANALYSIS_RUN),
        "data": _make(tmp_path_factory, "analysis_data", n_trains=4, **ANALYSIS_RUN),
    }


@pytest.fixture(scope="session")
def agipd_geometry():
    """An EXtra-geom AGIPD-1M geometry from quadrant positions (EXtra-geom's example)."""
    from extra_geom import AGIPD_1MGeometry

    return AGIPD_1MGeometry.from_quad_positions(
        quad_pos=[(-525, 625), (-550, -10), (520, -160), (542.5, 475)])


@pytest.fixture(params=["compiled", "numpy"])
def kernels(request, monkeypatch) -> str:
    """Runs a test with the compiled (numba) analysis kernels and again with their numpy twins."""
    from xfeldata.analysis import _jit

    if request.param == "compiled" and _jit._numba() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setenv(_jit.ENV, "1" if request.param == "compiled" else "0")
    return request.param
