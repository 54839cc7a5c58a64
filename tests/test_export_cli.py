"""``xfeldata export``: every format from the command line, existing outputs, a full disk and Ctrl-C.

Each format writes a small selection of the session fixture runs and the test
reads it back with the format's usual reader and compares it with the run.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import hdf5storage
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

import xfeldata as xd
from xfeldata.cli import main
from xfeldata.export.xarray import open_export

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
#: Numeric control keys and one module's pixel data, trains 10002-10005 of the irregular run.
SELECT = ["--select", f"{XGM}:beamPosition.*", "--select", "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf:image.data",
          "--trains", "10002:10005"]


@pytest.fixture(scope="module")
def picked(irregular_run):
    """What ``SELECT`` picks, opened with xfeldata."""
    run = xd.open_run(irregular_run).sel(trainId=slice(10002, 10005))
    return run.select([(XGM, "beamPosition.*"), ("SPB_DET_AGIPD1M-1/DET/1CH0:xtdf", "image.data")])


def export(run_dir, out, fmt, *extra) -> int:
    return main(["export", str(run_dir), str(out), "--format", fmt, *extra])


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
def test_xarray_stores_hold_one_group_per_source(irregular_run, picked, tmp_path, fmt):
    assert export(irregular_run, tmp_path / f"out.{fmt}", fmt, *SELECT) == 0
    xr.testing.assert_identical(open_export(tmp_path / f"out.{fmt}").compute(), picked.to_datatree().compute())


def test_detector_option_writes_the_stacked_dataset(irregular_run, tmp_path):
    assert export(irregular_run, tmp_path / "det.nc", "nc", "--detector", "SPB_DET_AGIPD1M-1",
                  "--trains", "10000:10003") == 0
    det = xd.open_run(irregular_run).sel(trainId=slice(10000, 10003)).detector("SPB_DET_AGIPD1M-1")
    xr.testing.assert_identical(open_export(tmp_path / "det.nc").compute(), det.compute())


def test_parallel_gain_option_stacks_lpd_stages_by_the_first_thirds_ids(lpd_junk_ids, tmp_path, capsys):
    run_dir = lpd_junk_ids["shifted"]
    assert export(run_dir, tmp_path / "det.nc", "nc", "--detector", "FXE_DET_LPD1M-1", "--parallel-gain") == 0
    det = xd.open_run(run_dir).detector("FXE_DET_LPD1M-1", parallel_gain=True)
    xr.testing.assert_identical(open_export(tmp_path / "det.nc").compute(), det.compute())
    assert export(run_dir, tmp_path / "x.csv", "csv", "--parallel-gain") == 2
    assert "--parallel-gain is for a detector's Dataset" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_tables_hold_the_control_values_exactly(irregular_run, picked, tmp_path, fmt):
    out = tmp_path / f"xgm.{fmt}"
    assert export(irregular_run, out, fmt, "--select", f"{XGM}:beamPosition.*", "--trains", "10002:10005") == 0
    expected = picked.select(XGM, "beamPosition.*").control_frame()
    table = pd.read_csv(out) if fmt == "csv" else pd.DataFrame(json.loads(out.read_text()))
    assert table["trainId"].tolist() == expected.index.tolist()
    for column in expected.columns:  # floats written as Python writes them: no digit lost
        np.testing.assert_array_equal(table[column].to_numpy(expected[column].dtype), expected[column].to_numpy())


def test_tables_default_to_control_sources_and_refuse_arrays(irregular_run, tmp_path, capsys):
    assert export(irregular_run, tmp_path / "all.csv", "csv") == 0
    columns = pd.read_csv(tmp_path / "all.csv", nrows=1).columns
    assert f"{XGM}/state" in columns and not any("AGIPD" in c for c in columns)
    assert export(irregular_run, tmp_path / "det.csv", "csv", *SELECT) == 2
    err = capsys.readouterr().err
    assert "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf/image.data" in err and "nc, zarr, h5, npy, mat" in err
    assert not (tmp_path / "det.csv").exists()


def test_npy_files_per_variable(irregular_run, picked, tmp_path):
    out = tmp_path / "npy"
    assert export(irregular_run, out, "npy", *SELECT) == 0
    tree = picked.to_datatree()
    source = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    np.testing.assert_array_equal(np.load(out / source / "image.data.npy"), tree[source]["image.data"].values)
    np.testing.assert_array_equal(np.load(out / source / "trainId.npy"), tree[source]["trainId"].values)
    described = json.loads((out / "variables.json").read_text())
    assert described[f"{source}/image.data"]["dims"] == list(tree[source]["image.data"].dims)


@pytest.mark.parametrize("fmt", ["npy", "mat"])
def test_detector_arrays_equal_the_stacked_dataset(irregular_run, tmp_path, fmt):
    """Dask blocks of one module each (and missing modules filled) land where they belong."""
    out = tmp_path / f"det.{fmt}"
    assert export(irregular_run, out, fmt, "--detector", "SPB_DET_AGIPD1M-1") == 0
    det = xd.open_run(irregular_run).detector("SPB_DET_AGIPD1M-1")
    if fmt == "npy":
        arrays = {name: np.load(out / f"{name}.npy") for name in det.variables}
    else:
        mat = hdf5storage.loadmat(str(out))
        arrays = {row["name"]: mat[row["matlab"]] for row in json.loads(mat["xfeldata_names"])}
    assert set(arrays) == set(det.variables)
    for name, values in arrays.items():
        np.testing.assert_array_equal(values, det[name].values)
        assert values.dtype == det[name].dtype


def test_select_takes_source_names_with_colons(irregular_run):
    from xfeldata.export.cli import parse_select

    run = xd.open_run(irregular_run)
    assert parse_select(run, f"{XGM}:output") == (f"{XGM}:output", "*")  # a source, not key "output"
    assert parse_select(run, f"{XGM}:output:data.*") == (f"{XGM}:output", "data.*")
    assert parse_select(run, "*XGM*:beamPosition.*") == ("*XGM*", "beamPosition.*")
    assert parse_select(run, "SA3_XTD10_MCP/ADC/1:channel_5.output") == ("SA3_XTD10_MCP/ADC/1:channel_5.output", "*")


def test_mat_file_reads_back_with_its_names_table(irregular_run, picked, tmp_path):
    out = tmp_path / "out.mat"
    assert export(irregular_run, out, "mat", *SELECT) == 0
    assert out.read_bytes()[:10] == b"MATLAB 7.3"
    mat = hdf5storage.loadmat(str(out))
    table = {row["name"]: row for row in json.loads(mat["xfeldata_names"])}
    tree = picked.to_datatree()
    for name in [f"{XGM}/beamPosition.ixPos", "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf/image.data"]:
        source, key = name.rsplit("/", 1)
        np.testing.assert_array_equal(mat[table[name]["matlab"]], tree[source][key].values)
        assert table[name]["dims"] == list(tree[source][key].dims)


@pytest.mark.parametrize("fmt", ["npy", "mat"])
def test_number_formats_refuse_strings_naming_the_key(irregular_run, tmp_path, capsys, fmt):
    assert export(irregular_run, tmp_path / "out", fmt, "--select", XGM) == 2
    err = capsys.readouterr().err
    assert f"{XGM}/state: {fmt} cannot hold strings; formats that can: nc, zarr, h5" in err
    assert list(tmp_path.iterdir()) == []


def test_png_one_image_per_recorded_frame(irregular_run, tmp_path):
    out = tmp_path / "png"
    assert export(irregular_run, out, "png", "--detector", "SPB_DET_AGIPD1M-1", "--trains", "10000:10002") == 0
    det = xd.open_run(irregular_run).sel(trainId=slice(10000, 10002)).detector()
    recorded = det["present"].any("module")
    assert len(list(out.iterdir())) == int(recorded.sum()) * det.sizes["gain"]  # train 10001 has no frames
    tid, pid = 10000, int(det["pulseId"][0])
    image = np.asarray(Image.open(out / f"trainId{tid}_pulseId{pid}_gain0.png"))
    frames = det["image.data"].sel(trainId=tid, pulseId=pid).isel(gain=0).values  # (module, 512, 128)
    np.testing.assert_array_equal(image, np.concatenate(list(frames), axis=1))  # 16-bit, exact


def test_png_assembled_with_a_geometry(analysis_runs, agipd_geometry, tmp_path):
    geom_file = tmp_path / "agipd.geom"
    agipd_geometry.write_crystfel_geom(str(geom_file))
    out = tmp_path / "png"
    assert export(analysis_runs["data"], out, "png", "--geometry", str(geom_file), "--trains", "10000:10000") == 0
    det = xd.open_run(analysis_runs["data"]).sel(trainId=10000).detector()
    names = sorted(out.iterdir())
    assert len(names) == det.sizes["pulseId"] * det.sizes.get("gain", 1)
    with Image.open(names[0]) as image:
        assert image.size == agipd_geometry.output_array_for_position_fast().shape[::-1]
        assert "xfeldata.value" in image.text  # assembled frames are floats: the mapping is stated


def test_h5_through_run_write(irregular_run, picked, tmp_path):
    out = tmp_path / "sel.h5"
    assert export(irregular_run, out, "h5", *SELECT) == 0
    back = xd.open_file(out)
    np.testing.assert_array_equal(back.train_ids, picked.train_ids)
    np.testing.assert_array_equal(back[XGM, "beamPosition.ixPos"].values, picked[XGM, "beamPosition.ixPos"].values)


@pytest.mark.parametrize("fmt", ["virtual", "cxi"])
def test_virtual_and_cxi_through_their_writers(detector_runs, tmp_path, fmt):
    if not hasattr(xd.Run, "write_virtual") if fmt == "virtual" else not hasattr(xd, "write_cxi"):
        pytest.skip(f"the {fmt} writer is not in this tree")
    out = tmp_path / f"out.{fmt}"
    assert export(detector_runs["AGIPD1M"], out, fmt) == 0
    assert out.is_file()


def test_existing_output_needs_overwrite(irregular_run, tmp_path, capsys):
    out = tmp_path / "xgm.csv"
    out.write_text("old\n")
    assert export(irregular_run, out, "csv", "--select", XGM) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert out.read_text() == "old\n"
    assert export(irregular_run, out, "csv", "--select", XGM, "--overwrite") == 0
    assert out.read_text().startswith("trainId,")


def test_bad_options_are_one_line_errors(irregular_run, tmp_path, capsys):
    assert export(irregular_run, tmp_path / "x.h5", "h5", "--detector", "SPB_DET_AGIPD1M-1") == 2
    assert "--detector is for cxi, png" in capsys.readouterr().err
    assert export(irregular_run, tmp_path / "x.nc", "nc", "--trains", "1:5") == 2
    assert "no train of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export(irregular_run, tmp_path / "x.nc", "nc", "--trains", "10000-10005")
    assert export(irregular_run, tmp_path / "x.nc", "nc", "--select", "NO_SUCH/SOURCE") == 2
    assert "NO_SUCH/SOURCE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- a full disk and Ctrl-C: the export runs in a subprocess -------------------------------------

#: Runs the command; with XFELDATA_TEST_SLOW set, each progress step waits, so that a signal arrives mid-export.
RUNNER = """
import os, sys, time
if os.environ.get("XFELDATA_TEST_SLOW"):
    from xfeldata.files import progress
    update = progress.tqdm.update
    def slow(self, n=1):
        print("step", flush=True)
        time.sleep(0.2)
        return update(self, n)
    progress.tqdm.update = slow
from xfeldata.cli import main
sys.exit(main())
"""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", RUNNER, *args]


def _env(**extra: str) -> dict[str, str]:
    root = str(Path(xd.__file__).parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), **extra}


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _fill_disk(run_dir: Path, out: Path, fmt: str) -> subprocess.CompletedProcess:
    """Export 5 MB of detector data over an old output with a file-size limit of 1 MB."""
    if fmt in ("npy", "zarr"):
        out.mkdir()
        (out / "old.npy").write_bytes(b"old")
    else:
        out.write_bytes(b"old")
    args = ["export", str(run_dir), str(out), "--format", fmt, "--overwrite",
            "--select", "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf:image.data"]  # 10 trains x 2 frames: 5 MB
    return subprocess.run(_command(*args), env=_env(), preexec_fn=_file_size_limit(1_000_000),
                          capture_output=True, text=True, timeout=120)


def _old_output_only(tmp_path: Path, out: Path) -> None:
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no partial output
    assert (out / "old.npy" if out.is_dir() else out).read_bytes() == b"old"


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_full_disk_is_a_clean_error_and_keeps_the_old_output(agipd_raw_run, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    done = _fill_disk(agipd_raw_run, out, fmt)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("xfeldata export: error:") and "File too large" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    _old_output_only(tmp_path, out)


@pytest.mark.parametrize("fmt", ["nc", "mat", "h5"])
def test_full_disk_in_hdf5_keeps_the_old_output(agipd_raw_run, tmp_path, fmt):
    """HDF5 outputs: the same error; the exit code is not always 2, as the HDF5 library, at exit,
    fails again to close the file it cannot extend under a file-size limit (a full disk lets it)."""
    out = tmp_path / f"out.{fmt}"
    done = _fill_disk(agipd_raw_run, out, fmt)
    assert done.returncode != 0
    assert done.stderr.startswith("xfeldata export: error:") and "File too large" in done.stderr
    _old_output_only(tmp_path, out)


@pytest.mark.parametrize("fmt", ["npy", "csv"])
def test_ctrl_c_leaves_no_partial_output(agipd_raw_run, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    select = XGM if fmt == "csv" else "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf:image.data"
    proc = subprocess.Popen(_command("export", str(agipd_raw_run), str(out), "--format", fmt,
                                     "--select", select), env=_env(XFELDATA_TEST_SLOW="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while proc.stdout.readline().strip() != "step":  # the export is under way
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        assert any(p.name.endswith(".part") for p in tmp_path.iterdir())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(tmp_path.iterdir()) == []
