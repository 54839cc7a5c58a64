"""``run.write(path)``: a selection to one file of the facility's format.

The file opens with EXtra-data's ``H5File`` and with xfeldata with the same
trains, sources, keys and values as the selection of the original run.
"""

from __future__ import annotations

import os
import stat

import h5py
import numpy as np
import pytest
import xarray as xr

import xfeldata as xd
from xfeldata.testing import synthetic as syn

extra_data = pytest.importorskip("extra_data")

AGIPD3 = "SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"


def assert_same_as_extra_data(run_dir, selection, out):
    """EXtra-data reads ``out`` (a file, or a run directory) as it reads the same selection of the original run."""
    theirs = extra_data.RunDirectory(str(out)) if out.is_dir() else extra_data.H5File(str(out))
    original = extra_data.RunDirectory(str(run_dir)).select(selection.sources, require_all=False) \
        .select_trains(extra_data.by_id[selection.train_ids])
    np.testing.assert_array_equal(theirs.train_ids, selection.train_ids)
    assert theirs.all_sources == set(selection.sources)
    for source in selection.sources:
        assert theirs[source].keys(inc_timestamps=False) == set(selection.keys(source)), source
        for key in selection.keys(source):
            a, b = theirs[source, key], original[source, key]
            np.testing.assert_array_equal(a.data_counts(labelled=False), b.data_counts(labelled=False))
            # the same rows for every train; the output is in train order, while a file
            # may hold a bogus train ID out of order (the irregular run's suspect train)
            xr_a, xr_b = a.xarray().sortby("trainId"), b.xarray().sortby("trainId")
            np.testing.assert_array_equal(xr_a.trainId, xr_b.trainId)
            np.testing.assert_array_equal(xr_a.values, xr_b.values, err_msg=f"{source} {key}")


def test_a_selection_written_opens_in_extra_data_with_the_same_values(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run)
    sel = run.select([syn.XGM_SOURCE, f"{syn.XGM_SOURCE}:output", syn.CAMERA_SOURCE, AGIPD3]) \
        .isel(trainId=slice(2, 8))
    out = sel.write(tmp_path / "sel.h5")
    assert_same_as_extra_data(agipd_raw_run, sel, out)
    back = xd.open_file(out)
    np.testing.assert_array_equal(back.train_ids, sel.train_ids)
    for source in sel.sources:
        for key in sel.keys(source):
            np.testing.assert_array_equal(back[source, key].values, sel[source, key].values,
                                          err_msg=f"{source} {key}")
    assert back.run_values(syn.XGM_SOURCE) == sel.run_values(syn.XGM_SOURCE)


def test_detector_frames_keep_the_facility_layout(agipd_raw_run, tmp_path):
    sel = xd.open_run(agipd_raw_run).select(AGIPD3, "image.*").isel(trainId=[1, 4, 5])
    out = sel.write(tmp_path / "det.h5")
    with h5py.File(out, "r") as f:
        data = f[f"INSTRUMENT/{AGIPD3}/image/data"]
        assert data.chunks == (1, 2, 512, 128) and data.compression is None
        assert f["METADATA/dataFormatVersion"][0] == b"1.3"
        np.testing.assert_array_equal(f[f"INDEX/{AGIPD3}/image/count"][:], 2)
    np.testing.assert_array_equal(
        extra_data.H5File(str(out))[AGIPD3, "image.data"].ndarray()[2:4],
        syn.detector_module_train("AGIPD1M", 3, 10004, 2)["image.data"])


def test_irregular_runs_keep_missing_trains_empty_sources_and_ragged_frames(irregular_run, tmp_path):
    run = xd.open_run(irregular_run)
    module1 = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    sel = run.select([module1, syn.XGM_SOURCE, *syn.EMPTY_SOURCES])
    out = sel.write(tmp_path / "irr.h5")
    back = xd.open_file(out)
    np.testing.assert_array_equal(back.train_ids, sel.train_ids)
    assert set(back.sources) == set(sel.sources)
    for source in sel.sources:
        np.testing.assert_array_equal(back.data_counts(source), sel.data_counts(source), err_msg=source)
    np.testing.assert_array_equal(back[module1, "image.data"].values, sel[module1, "image.data"].values)
    assert_same_as_extra_data(irregular_run, sel, out)


def test_an_existing_file_is_kept_unless_overwrite(agipd_raw_run, tmp_path):
    out = tmp_path / "x.h5"
    out.write_bytes(b"keep me")
    sel = xd.open_run(agipd_raw_run).select(syn.XGM_SOURCE)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sel.write(out)
    assert out.read_bytes() == b"keep me"
    sel.write(out, overwrite=True)
    assert xd.open_file(out).sources == [syn.XGM_SOURCE]
    assert not list(tmp_path.glob("*.part"))  # no temporary file left


def test_a_failed_write_leaves_no_partial_file_and_the_old_one_intact(agipd_raw_run, tmp_path,
                                                                       monkeypatch):
    from xfeldata.export import facility as write

    out = tmp_path / "x.h5"
    out.write_bytes(b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(write, "_copy_rows", fail)
    with pytest.raises(OSError, match="disk full"):
        xd.open_run(agipd_raw_run).select(syn.XGM_SOURCE).write(out, overwrite=True)
    assert out.read_bytes() == b"old"
    assert not list(tmp_path.glob("*.part"))


def test_a_pulse_selection_keeps_those_frames_as_extra_data_write_frames_does(agipd_raw_run, tmp_path):
    from extra_data.components import AGIPD1M

    run = xd.open_run(agipd_raw_run).select([AGIPD3, syn.XGM_SOURCE]).isel(trainId=slice(1, 7))
    out = run.write(tmp_path / "second.h5", pulses=xd.by_index[1:])
    back = xd.open_file(out)
    np.testing.assert_array_equal(back.train_ids, run.train_ids)
    np.testing.assert_array_equal(back.data_counts(AGIPD3, "image"), 1)  # 1 of 2 frames a train
    np.testing.assert_array_equal(back.data_counts(AGIPD3, "header"), 1)  # other groups whole
    kept = run.detector(pulses=xd.by_index[1:])
    np.testing.assert_array_equal(back.detector()["image.data"].values, kept["image.data"].values)

    frames = kept["present"].isel(module=0).to_series()
    tids, pids = (np.array(frames.index.get_level_values(n), np.uint64) for n in ("trainId", "pulseId"))
    ref = tmp_path / "ref.h5"
    AGIPD1M(extra_data.RunDirectory(str(agipd_raw_run)), modules=[3], raw=True).write_frames(str(ref), tids, pids)
    theirs = extra_data.H5File(str(ref)).select_trains(extra_data.by_id[run.train_ids])
    mine = extra_data.H5File(str(out))
    for key in ("image.data", "image.pulseId", "image.cellId", "image.trainId"):
        np.testing.assert_array_equal(mine[AGIPD3, key].ndarray(), theirs[AGIPD3, key].ndarray(), err_msg=key)
        np.testing.assert_array_equal(mine[AGIPD3, key].data_counts(labelled=False),
                                      theirs[AGIPD3, key].data_counts(labelled=False))


def test_a_frame_mask_keeps_the_frames_where_it_is_true(irregular_run, tmp_path):
    run = xd.open_run(irregular_run).select("SPB_DET_AGIPD1M-1/DET/*")
    det = run.detector()
    per_frame = det["image.data"].astype("f8").mean(("gain", "slow_scan", "fast_scan")).max("module").compute()
    hits = per_frame > float(np.nanmedian(per_frame.values))   # a hit finder's (trainId, pulseId) mask
    out = run.write(tmp_path / "hits.h5", pulses=hits)
    got = xd.open_file(out).detector()
    wanted = det["present"] & hits
    np.testing.assert_array_equal(got["present"].reindex_like(wanted, fill_value=False).values, wanted.values)
    np.testing.assert_array_equal(   # every frame kept holds the original's values
        got["image.data"].values[got["present"].values],
        det["image.data"].sel(trainId=got.trainId, pulseId=got.pulseId).values[got["present"].values])


def test_a_mask_with_a_module_dim_selects_frames_per_module(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run).select(["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", AGIPD3]).isel(trainId=[0, 1])
    present = run.detector()["present"]
    mask = present & (present.module == 3) & (present.pulseId == present.pulseId[0])  # module 3's first frames
    back = xd.open_file(run.write(tmp_path / "m.h5", pulses=mask))
    np.testing.assert_array_equal(back.data_counts(AGIPD3, "image"), [1, 1])
    np.testing.assert_array_equal(back.data_counts("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image"), [0, 0])


def test_frame_selections_that_cannot_apply_are_refused_before_writing(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run)
    with pytest.raises(ValueError, match="detector modules"):
        run.select(syn.XGM_SOURCE).write(tmp_path / "x.h5", pulses=xd.by_index[:1])
    with pytest.raises(ValueError, match="pulse ID 999 is not in"):
        run.select(AGIPD3).write(tmp_path / "x.h5", pulses=[999])
    with pytest.raises(TypeError, match="DataArray"):
        run.select(AGIPD3).write(tmp_path / "x.h5", pulses=np.ones(20, bool))
    with pytest.raises(TypeError, match="not a Dataset.*write_cxi"):
        run.select(AGIPD3).write(tmp_path / "x.h5", pulses=run.select(AGIPD3).detector())
    assert not list(tmp_path.iterdir())


def test_a_directory_path_gets_a_run_directory_split_per_aggregator_and_sequence(agipd_raw_run, tmp_path):
    run = xd.open_run(agipd_raw_run)
    sel = run.select([syn.XGM_SOURCE, syn.CAMERA_SOURCE, AGIPD3, "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]) \
        .isel(trainId=slice(1, 9))
    out = sel.write(str(tmp_path / "r0001") + "/", trains_per_file=3)
    assert sorted(p.name for p in out.iterdir()) == [
        f"RAW-R0001-{agg}-S{seq:05d}.h5" for agg in ("AGIPD00", "AGIPD03", "DA01", "DA02") for seq in range(3)]
    with h5py.File(out / "RAW-R0001-AGIPD03-S00001.h5", "r") as f:
        np.testing.assert_array_equal(f["INDEX/trainId"][:], sel.train_ids[3:6])
        assert f["METADATA/sequenceNumber"][0] == 1
        assert list(f["INSTRUMENT"]) == ["SPB_DET_AGIPD1M-1"] and "CONTROL/SA1_XTD2_XGM" not in f
    assert_same_as_extra_data(agipd_raw_run, sel, out)
    back = xd.open_run(out)
    np.testing.assert_array_equal(back.train_ids, sel.train_ids)
    np.testing.assert_array_equal(back.train_timestamps(), sel.train_timestamps())
    for source in sel.sources:
        for key in sel.keys(source):
            np.testing.assert_array_equal(back[source, key].values, sel[source, key].values,
                                          err_msg=f"{source} {key}")


def test_a_run_directory_is_as_readable_as_its_files(agipd_raw_run, tmp_path):
    """Its mode follows the umask, as the files' does (a temporary directory's 0700 kept colleagues out)."""
    old = os.umask(0o022)
    try:
        out = xd.open_run(agipd_raw_run).select(syn.XGM_SOURCE).write(str(tmp_path / "r0001") + "/")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_an_existing_run_directory_is_kept_unless_overwrite(agipd_raw_run, tmp_path):
    sel = xd.open_run(agipd_raw_run).select(syn.XGM_SOURCE)
    (tmp_path / "empty").mkdir()
    assert [p.name for p in sel.write(tmp_path / "empty").iterdir()] == ["RAW-R0001-DA01-S00000.h5"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sel.isel(trainId=[0]).write(tmp_path / "empty")
    sel.isel(trainId=[0]).write(tmp_path / "empty", overwrite=True)
    assert len(xd.open_run(tmp_path / "empty").train_ids) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing temporary left


@pytest.mark.parametrize("target", ["one.h5", "dir/"])
def test_a_full_disk_leaves_no_partial_output_and_the_old_one_intact(agipd_raw_run, tmp_path, target):
    import subprocess
    import sys

    out = tmp_path / target
    if target.endswith("/"):
        out.mkdir()
        (out / "old.h5").write_bytes(b"old")
    else:
        out.write_bytes(b"old")
    code = (  # a 2 MiB file-size limit, as a full disk: writing past it fails with EFBIG
        "import resource, signal, sys, xfeldata as xd\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))\n"
        f"xd.open_run(sys.argv[1]).select({AGIPD3!r}).write(sys.argv[2], overwrite=True, progress=False)\n")
    done = subprocess.run([sys.executable, "-c", code, str(agipd_raw_run), str(out) + "/" * target.endswith("/")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "File too large" in done.stderr or "errno = 27" in done.stderr, done.stderr[-2000:]
    if target.endswith("/"):
        assert [p.name for p in out.iterdir()] == ["old.h5"]
    else:
        assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.rstrip("/")]


def test_a_run_directory_keeps_a_pulse_selection_in_every_sequence_file(agipd_raw_run, tmp_path):
    sel = xd.open_run(agipd_raw_run).select([AGIPD3, syn.XGM_SOURCE])
    out = sel.write(f"{tmp_path}/first/", pulses=xd.by_index[0], trains_per_file=4)
    assert len(list(out.glob("RAW-R0001-AGIPD03-S*.h5"))) == 3
    back = xd.open_run(out)
    np.testing.assert_array_equal(back.data_counts(AGIPD3, "image"), 1)
    np.testing.assert_array_equal(back.detector()["image.data"].values,
                                  sel.detector(pulses=xd.by_index[0])["image.data"].values)
    theirs = extra_data.RunDirectory(str(out))
    np.testing.assert_array_equal(theirs[AGIPD3, "image.data"].ndarray(),
                                  back[AGIPD3, "image.data"].values.reshape(-1, 2, 512, 128))


@pytest.mark.parametrize("virtual", [False, True])
def test_lpd_parallel_gain_frames_are_selected_by_pulse_with_all_their_stages(detector_runs, lpd_junk_ids, tmp_path,
                                                                              virtual):
    """Real parallel-gain files record junk pulse IDs in gain stages 1 and 2: with parallel_gain=True
    pulses= picks by the first stage's IDs (and positions within a stage) and keeps every stage."""
    run = xd.open_run(lpd_junk_ids["shifted"])
    full = run.detector(parallel_gain=True).compute()
    for name, pulses, expected in [("id", xd.by_id[[1]], [1]), ("index", xd.by_index[:1], [0])]:
        out = tmp_path / f"{name}.h5"
        if virtual:
            run.write_virtual(out, pulses=pulses, parallel_gain=True)
        else:
            run.write(out, pulses=pulses, parallel_gain=True)
        back = xd.open_file(out).detector(parallel_gain=True).compute()
        xr.testing.assert_equal(back["image.data"], full["image.data"].sel(pulseId=expected))
    clean = xd.open_run(detector_runs["LPD1M-parallel"])  # stages recognised: a position counts within one
    clean.write(tmp_path / "clean.h5", pulses=xd.by_index[:1])
    xr.testing.assert_equal(xd.open_file(tmp_path / "clean.h5").detector()["image.data"].compute(),
                            clean.detector(pulses=xd.by_index[:1])["image.data"].compute())
    with pytest.raises(ValueError, match="parallel_gain=True is for LPD"):
        xd.open_run(detector_runs["AGIPD1M"]).write(tmp_path / "a.h5", pulses=xd.by_index[:1], parallel_gain=True)
