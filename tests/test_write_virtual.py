"""``run.write_virtual(path)``: one file of virtual datasets over the run's files.

Nothing is copied: every key is an HDF5 virtual dataset mapped onto the run's
files, while INDEX, METADATA and RUN are real.  h5py, EXtra-data's ``H5File``
and xfeldata read it with the same trains and values as the selection.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_write import AGIPD3, assert_same_as_extra_data

import xfeldata as xd
from xfeldata.testing import synthetic as syn

extra_data = pytest.importorskip("extra_data")


def _datasets(path):
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj.is_virtual)
                     if isinstance(obj, h5py.Dataset) else None)
    return found


def test_every_key_is_virtual_and_reads_as_the_selection(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run)
    sel = run.select([syn.XGM_SOURCE, f"{syn.XGM_SOURCE}:output", syn.CAMERA_SOURCE, AGIPD3]) \
        .isel(trainId=slice(2, 9))   # across the sequence files of every aggregator
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in agipd_raw_run.glob("*.h5")}
    out = sel.write_virtual(tmp_path / "virtual.h5")
    datasets = _datasets(out)
    data_sets = {n: v for n, v in datasets.items() if n.startswith(("CONTROL/", "INSTRUMENT/"))}
    assert data_sets and all(data_sets.values())   # no data copied
    assert not any(v for n, v in datasets.items() if n.startswith(("INDEX/", "METADATA/", "RUN/")))
    assert out.stat().st_size < 1e6 < sum(size for _, size in before.values())
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f[f"INSTRUMENT/{AGIPD3}/image/data"][:],
                                      sel[AGIPD3, "image.data"].values.reshape(-1, 2, 512, 128))
    assert_same_as_extra_data(agipd_raw_run, sel, out)
    back = xd.open_file(out)
    for source in sel.sources:
        for key in sel.keys(source):
            np.testing.assert_array_equal(back[source, key].values, sel[source, key].values,
                                          err_msg=f"{source} {key}")
    assert back.run_values(syn.XGM_SOURCE) == sel.run_values(syn.XGM_SOURCE)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in agipd_raw_run.glob("*.h5")} == before


def test_irregular_runs_map_missing_trains_ragged_frames_and_empty_sources(irregular_run, tmp_path):
    sel = xd.open_run(irregular_run).select(["SPB_DET_AGIPD1M-1/DET/1CH0:xtdf", syn.XGM_SOURCE,
                                             *syn.EMPTY_SOURCES])
    out = sel.write_virtual(tmp_path / "irr.h5")
    back = xd.open_file(out)
    for source in sel.sources:
        np.testing.assert_array_equal(back.data_counts(source), sel.data_counts(source), err_msg=source)
    assert_same_as_extra_data(irregular_run, sel, out)


def test_a_pulse_selection_maps_only_the_frames_kept(agipd_raw_run, tmp_path):
    sel = xd.open_run(agipd_raw_run).select(AGIPD3)
    out = sel.write_virtual(tmp_path / "first.h5", pulses=xd.by_index[0])
    np.testing.assert_array_equal(xd.open_file(out).detector()["image.data"].values,
                                  sel.detector(pulses=xd.by_index[0])["image.data"].values)
