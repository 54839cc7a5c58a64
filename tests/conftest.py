"""Shared test fixtures: synthetic runs written once per test session.

Every run fixture returns the run directory (a :class:`pathlib.Path`) written by
:func:`xfeldata.files.writer.make_example` into a session temporary directory.
Runs are small (a few frames per train, 5-12 trains) so that the whole set is
written in a few seconds.  Tests must treat them as read-only: they are shared.

Content is deterministic: any train can be recomputed with
:func:`xfeldata.synthetic.detector_module_train` and
:func:`xfeldata.synthetic.slow_trains`.  Trains start at
:data:`FIRST_TRAIN_ID`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xfeldata.files.layout import DETECTORS, FORMAT_VERSIONS
from xfeldata.files.writer import make_example

#: First train ID of every fixture run.
FIRST_TRAIN_ID = 10000

# Parameters of the fixture runs, exposed so tests can refer to them.
AGIPD_RUN = {"n_trains": 10, "frames_per_train": 2, "trains_per_sequence": 5}
IRREGULAR_RUN = {"n_trains": 12, "frames_per_train": 3, "trains_per_sequence": 6,
                 "modules": [0, 1, 2, 3], "irregular": True}
FORMAT_RUN = {"modules": [0, 1], "n_trains": 6, "frames_per_train": 2, "suspect_train": True}
DETECTOR_RUN = {"n_trains": 5, "frames_per_train": 2, "slow_sources": False}
#: Modules written for each kind in ``detector_runs``.
DETECTOR_RUN_MODULES = {"JUNGFRAU": [1, 2]}
SLOW_RUN = {"detector": None, "n_trains": 10, "trains_per_sequence": 5}


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
    timestamp 0) and the empty sources of ``xfeldata.synthetic.EMPTY_SOURCES``.
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

    Keys are the names of ``xfeldata.files.layout.DETECTORS`` plus
    ``"LPD1M-parallel"`` (LPD parallel gain: 3 gain stages x 2 pulses per train).
    Each has 2 modules (JUNGFRAU: modules 1 and 2 with 2 memory cells), 5 trains
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


@pytest.fixture(scope="session")
def slow_only_run(tmp_path_factory) -> Path:
    """A run without detector: slow and instrument sources only (``DA01`` and ``DA02``).

    10 trains, 2 sequence files per aggregator, format 1.3.
    """
    return _make(tmp_path_factory, "slow_only", **SLOW_RUN)


#: Parameters of the ``analysis_runs`` pair: AGIPD-1M modules with a gap in the numbering.
ANALYSIS_RUN = {"modules": [0, 3, 8, 15], "frames_per_train": 4, "slow_sources": False}


@pytest.fixture(scope="session")
def analysis_runs(tmp_path_factory) -> dict[str, Path]:
    """A raw AGIPD-1M dark run (8 trains, no photons) and a data run (4 trains, with photons).

    ``{"dark": dir, "data": dir}``; modules 0, 3, 8 and 15, 4 frames (memory
    cells 0-3) per train, no slow sources.  The data run's photons are
    :func:`xfeldata.synthetic.detector_photons`.
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
