"""One stacking behaviour for files and streams: ``run.detector()`` and ``LiveBuffer.detector()``.

Each case is written once and run against a Run and against a LiveBuffer fed
by ``serve(run)`` over real sockets: for every detector kind and every option
(``modules``, ``pulses``, ``require_all_modules``, ``fill_value``, ``dask``),
the two Datasets must be identical, values, labels, masks and attrs.  One
train stacked by ``stack_detector_data`` must hold the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xfeldata as xd
from xfeldata.detectors import DETECTORS

pytestmark = pytest.mark.timeout(120)

RUNS = ["AGIPD1M", "AGIPD500K", "LPD1M", "LPD1M-parallel", "LPDMINI", "DSSC1M", "JUNGFRAU", "EPIX100", "irregular"]

#: Options by name: a function of the modules found and the pulse coordinate.
OPTIONS = {
    "default": lambda mods, pulses: {},
    "one module": lambda mods, pulses: {"modules": mods[:1]},
    "a module not found": lambda mods, pulses: {"modules": [*mods, max(mods) + 1]},
    "pulses by_index": lambda mods, pulses: {"pulses": xd.by_index[1:]},
    "pulses by_id": lambda mods, pulses: {"pulses": xd.by_id[int(pulses[0]):int(pulses[0])]},
    "pulse ID list": lambda mods, pulses: {"pulses": [int(p) for p in pulses[::2]]},
    "require_all_modules": lambda mods, pulses: {"require_all_modules": True},
    "fill_value": lambda mods, pulses: {"fill_value": 7},
    "dask=False": lambda mods, pulses: {"dask": False},
}


def _run_dir(name, detector_runs, irregular_run):
    return irregular_run if name == "irregular" else detector_runs[name]


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", RUNS)
def test_run_and_live_buffer_stack_alike(name, option, detector_runs, irregular_run, live_buffer_of):
    run_dir = _run_dir(name, detector_runs, irregular_run)
    run = xd.open_run(run_dir)
    found = run.detector()
    kind = DETECTORS[found.attrs["kind"]]
    if option == "a module not found" and len(kind.modules) == 1:
        pytest.skip(f"{kind.name} has no module but the one found")
    pulse_dim = kind.pulse_dim
    options = OPTIONS[option](found["module"].values.tolist(), found[pulse_dim].values)
    offline = run.detector(**options).compute()
    live = live_buffer_of(run_dir).detector(**options)
    xr.testing.assert_identical(live.compute(), offline)
    assert live["present"].dims == offline["present"].dims == ("trainId", pulse_dim, "module")


@pytest.mark.parametrize("name", ["AGIPD1M", "LPD1M", "LPDMINI", "DSSC1M", "JUNGFRAU", "EPIX100", "irregular"])
def test_stack_detector_data_of_one_train_equals_the_detector(name, detector_runs, irregular_run):
    """The frames of one train, every module of the kind, stacked on axis 1 (a camera's
    one frame per train, on axis 0: the module axis before the pixels)."""
    run = xd.open_run(_run_dir(name, detector_runs, irregular_run))
    kind = DETECTORS[run.detector().attrs["kind"]]
    det = run.detector(modules=kind.modules)
    for tid in det["trainId"].values[[0, -1]].tolist():
        _, data = run.train_from_id(tid)
        camera = not kind.row_per_frame and not kind.cell_axis
        stacked = xd.stack_detector_data(data, kind.data_key, axis=0 if camera else 1)
        train = det.sel(trainId=tid)
        expected = train["image.data"].isel(cell=0) if camera else train["image.data"]
        if kind.row_per_frame:  # the pulse slots this train recorded
            expected = expected.isel({kind.pulse_dim: train["present"].any("module").values})
        if stacked.ndim == expected.ndim + 1:  # raw LPD/DSSC keep their length-1 axis
            stacked = stacked.squeeze(axis=2)
        np.testing.assert_array_equal(stacked, expected.values)
