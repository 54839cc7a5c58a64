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


def test_utf8_strings_are_mapped_in_their_own_encoding(tmp_path):
    """EXtra-data's mock writers (and h5py's default string dtype) store UTF-8 strings: HDF5 maps
    a virtual dataset only onto strings of its own encoding, so the virtual file keeps theirs."""
    from extra_data.tests import make_examples

    src = tmp_path / "RAW-R0450-DA01-S00000.h5"
    make_examples.make_fxe_da_file(str(src))
    out = xd.open_file(src).write_virtual(tmp_path / "virtual.h5")
    key = "CONTROL/SA1_XTD2_XGM/DOOCS/MAIN/state/value"
    with h5py.File(src, "r") as f, h5py.File(out, "r") as g:
        assert h5py.check_string_dtype(g[key].dtype).encoding == "utf-8"
        assert g[key][:].tolist() == f[key][:].tolist()
    expected = xd.open_file(src)["SA1_XTD2_XGM/DOOCS/MAIN", "state"].values
    np.testing.assert_array_equal(xd.open_file(out)["SA1_XTD2_XGM/DOOCS/MAIN", "state"].values, expected)
    np.testing.assert_array_equal(
        extra_data.H5File(str(out))["SA1_XTD2_XGM/DOOCS/MAIN", "state.value"].ndarray(), expected)


def test_strings_stored_two_ways_across_files_are_an_error_naming_the_key(tmp_path):
    from xfeldata.testing import make_example

    run_dir = make_example(tmp_path / "r0001", n_trains=4, trains_per_sequence=2, slow_sources=True)
    run = xd.open_run(run_dir)
    strings = [(s, k) for s in run.control_sources for k in run.keys(s) if run.key_info(s, k).dtype.kind == "O"]
    assert strings, "the example run has string control keys"
    source, key = strings[0]
    path = run.key_info(source, key).path
    later = next(p for p in run_dir.glob("*-DA*-S00001.h5") if path.lstrip("/") in _datasets(p))
    with h5py.File(later, "r+") as f:  # (this test's own run: its second file now stores UTF-8)
        values = f[path][:]
        del f[path]
        f.create_dataset(path, data=values, dtype=h5py.string_dtype("utf-8"))
    with pytest.raises(TypeError, match=f"{source} {key}: .*2 different ways.*run.write"):
        xd.open_run(run_dir).write_virtual(tmp_path / "v.h5")
