"""Bad input gets a clear error naming what is wrong, and loses nothing.

Damaged runs are built from copies of fixture files in ``tmp_path``; the
fixture files themselves are checked to be unchanged by everything xfeldata does.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import xfeldata as xd
from xfeldata.cli import main
from xfeldata.detectors.kinds import DETECTORS
from xfeldata.errors import DataIndexError, FileFormatError, PropertyNameError, SourceNameError
from xfeldata.files.index import read_file_index
from xfeldata.files.layout import DATA_ROOT_ENV
from xfeldata.testing import synthetic as syn
from xfeldata.validate import validate_run

AGIPD = DETECTORS["AGIPD1M"]
XGM = syn.XGM_SOURCE


def copy_run(src: Path, dst: Path, pattern: str = "*.h5") -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob(pattern)):
        shutil.copyfile(path, dst / path.name)
    return dst


@pytest.fixture
def small_run(format_runs, tmp_path) -> Path:
    """A private copy of the 1.3 format run (modules 0-1, DA01, DA02; 6 trains)."""
    return copy_run(format_runs["1.3"], tmp_path / "r0001")


# ----- paths that hold no run -------------------------------------------------------

def test_open_run_on_a_missing_path_names_it(tmp_path):
    missing = tmp_path / "r9999"
    with pytest.raises(FileNotFoundError, match="r9999.*no such file"):
        xd.open_run(missing)


def test_open_file_on_a_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="RAW-R0001-DA01-S00000.h5"):
        xd.open_file(tmp_path / "RAW-R0001-DA01-S00000.h5")


def test_open_run_with_a_missing_file_in_a_list_names_it(small_run):
    files = [*sorted(small_run.glob("*.h5")), small_run / "RAW-R0001-DA09-S00000.h5"]
    with pytest.raises(FileNotFoundError, match="DA09"):
        xd.open_run(files)


def test_open_run_on_an_empty_list_of_files():
    with pytest.raises(FileNotFoundError, match="empty list"):
        xd.open_run([])


def test_open_run_on_an_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run files") as err:
        xd.open_run(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_open_run_on_a_directory_without_run_files(tmp_path):
    (tmp_path / "notes.txt").write_text("beamtime notes")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "RAW-R0001-DA01-S00000.h5").write_bytes(b"")  # not looked into
    with pytest.raises(FileNotFoundError, match="no run files"):
        xd.open_run(tmp_path)


def test_open_run_include_matching_no_file(small_run):
    with pytest.raises(FileNotFoundError, match=r"include='\*LPD\*'"):
        xd.open_run(small_run, include="*LPD*")


def test_overview_file_is_not_a_data_file(small_run):
    (small_run / "overview.h5").write_bytes(b"a virtual overview, not read")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = xd.open_run(small_run)
    assert not any(Path(f).name == "overview.h5" for f in run.files)


def test_open_run_by_proposal_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"p000042.*{DATA_ROOT_ENV}"):
        xd.open_run(proposal=42, run=1)


def test_validate_on_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        validate_run(tmp_path / "nowhere")


# ----- files that are not run files -------------------------------------------------

def test_non_hdf5_file_named_h5_is_a_file_format_error(tmp_path):
    bad = tmp_path / "RAW-R0001-DA01-S00000.h5"
    bad.write_text("this is a text file\n" * 100)
    with pytest.raises(FileFormatError, match="not HDF5") as err:
        xd.open_run(tmp_path)
    assert err.value.path == str(bad)
    with pytest.raises(FileFormatError, match=str(bad)):
        xd.open_file(bad)


def test_empty_file_named_h5_is_a_file_format_error(tmp_path):
    bad = tmp_path / "RAW-R0001-DA01-S00000.h5"
    bad.write_bytes(b"")
    with pytest.raises(FileFormatError, match="RAW-R0001-DA01-S00000.h5"):
        xd.open_file(bad)


def test_hdf5_file_not_in_the_format_is_a_file_format_error(tmp_path):
    other = tmp_path / "RAW-R0001-DA01-S00000.h5"
    with h5py.File(other, "w") as f:
        f["entry/data"] = np.arange(10)
    with pytest.raises(FileFormatError, match="not a European XFEL run file") as err:
        xd.open_file(other)
    assert err.value.path == str(other)


def test_hdf5_file_without_a_source_list_is_a_file_format_error(tmp_path):
    other = tmp_path / "RAW-R0001-DA01-S00000.h5"
    with h5py.File(other, "w") as f:
        f["INDEX/trainId"] = np.arange(1, 4, dtype=np.uint64)
        f.create_group("METADATA")
    with pytest.raises(FileFormatError, match="source list"):
        read_file_index(other)


def test_several_unreadable_files_are_all_named(tmp_path):
    for agg in ("DA01", "DA02"):
        (tmp_path / f"RAW-R0001-{agg}-S00000.h5").write_bytes(b"garbage")
    with pytest.raises(FileFormatError, match="DA01.*DA02"):
        xd.open_run(tmp_path)


# ----- a truncated file among good ones -----------------------------------------------

@pytest.fixture
def run_with_truncated_file(small_run) -> tuple[Path, Path]:
    victim = small_run / "RAW-R0001-AGIPD01-S00000.h5"
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    return small_run, victim


def test_truncated_file_is_skipped_with_a_warning_naming_it(run_with_truncated_file):
    run_dir, victim = run_with_truncated_file
    with pytest.warns(UserWarning, match=victim.name):
        run = xd.open_run(run_dir)
    assert AGIPD.source(1) not in run.sources
    assert AGIPD.source(0) in run.sources and XGM in run.sources
    assert str(victim) not in run.files
    assert len(run.train_ids) == 7  # 6 trains and the suspect one


def test_truncated_file_raises_with_strict(run_with_truncated_file):
    run_dir, victim = run_with_truncated_file
    with pytest.raises(FileFormatError, match=victim.name) as err:
        xd.open_run(run_dir, strict=True)
    assert err.value.path == str(victim)


def test_truncated_file_is_reported_by_validate(run_with_truncated_file):
    run_dir, victim = run_with_truncated_file
    problems = validate_run(run_dir)
    assert [p.file for p in problems] == [str(victim)]
    assert "truncated" in problems[0].message


def test_good_files_of_a_run_with_a_truncated_file_still_read(run_with_truncated_file):
    run_dir, _ = run_with_truncated_file
    with pytest.warns(UserWarning):
        run = xd.open_run(run_dir)
    values = run[XGM, "beamPosition.ixPos"].values
    assert values.shape == (7,)
    assert np.isfinite(values).all()


# ----- an index that points past the end of a dataset -----------------------------------

@pytest.fixture
def run_with_index_past_end(small_run) -> tuple[Path, Path]:
    victim = small_run / "RAW-R0001-DA02-S00000.h5"
    with h5py.File(victim, "r+") as f:
        f[f"INDEX/{syn.DIGITISER_SOURCE}/data/first"][-1] = 50
    return small_run, victim


def test_index_past_end_is_reported_with_file_source_and_key(run_with_index_past_end):
    run_dir, victim = run_with_index_past_end
    problems = [p for p in validate_run(run_dir) if "past the end" in p.message]
    assert {p.file for p in problems} == {str(victim)}
    messages = " ".join(p.message for p in problems)
    assert syn.DIGITISER_SOURCE in messages
    assert "data.rawData" in messages and "data.samplesTaken" in messages


def test_run_with_index_past_end_still_opens(run_with_index_past_end):
    run_dir, victim = run_with_index_past_end
    run = xd.open_run(run_dir)
    assert syn.DIGITISER_SOURCE in run.sources
    assert any(f == str(victim) and "past the end" in p for f, p in run.problems)


def test_reading_a_key_past_the_end_names_file_source_and_key(run_with_index_past_end):
    run_dir, victim = run_with_index_past_end
    run = xd.open_run(run_dir)
    with pytest.raises(DataIndexError) as err:
        np.asarray(run[syn.DIGITISER_SOURCE, "data.rawData"])
    message = str(err.value)
    assert str(victim) in message
    assert syn.DIGITISER_SOURCE in message and "data.rawData" in message


def test_other_keys_of_the_same_file_still_read(run_with_index_past_end):
    run = xd.open_run(run_with_index_past_end[0])
    pixels = run[syn.CAMERA_SOURCE, "data.image.pixels"].values
    assert pixels.shape[0] == 6
    assert pixels.any()


# ----- two files claiming the same trains --------------------------------------------

@pytest.fixture
def run_with_duplicated_file(small_run) -> tuple[Path, Path, Path]:
    original = small_run / "RAW-R0001-DA02-S00000.h5"
    duplicate = small_run / "RAW-R0001-DA02-S00001.h5"
    shutil.copyfile(original, duplicate)
    return small_run, original, duplicate


def test_two_files_claiming_the_same_trains_warn_naming_both(run_with_duplicated_file):
    run_dir, original, duplicate = run_with_duplicated_file
    with pytest.warns(UserWarning, match="claimed by several files") as record:
        run = xd.open_run(run_dir)
    messages = " ".join(str(w.message) for w in record)
    assert original.name in messages and duplicate.name in messages
    assert syn.CAMERA_SOURCE in messages
    assert run.train_ids.tolist()[:6] == list(range(10000, 10006))


def test_validate_names_both_files_claiming_the_same_trains(run_with_duplicated_file):
    run_dir, original, duplicate = run_with_duplicated_file
    conflicts = [p for p in validate_run(run_dir) if "several files" in p.message]
    assert conflicts
    assert all(original.name in p.message and duplicate.name in p.message for p in conflicts)
    assert main(["validate", str(run_dir)]) == 1


def test_files_claiming_the_same_trains_in_different_aggregators(small_run):
    shutil.copyfile(small_run / "RAW-R0001-DA02-S00000.h5", small_run / "RAW-R0001-DA03-S00000.h5")
    with pytest.warns(UserWarning, match="DA02.*DA03"):
        run = xd.open_run(small_run)
    assert run.data_counts(syn.CAMERA_SOURCE, "data").tolist()[:6] == [1] * 6


# ----- unknown names ---------------------------------------------------------

@pytest.fixture(scope="module")
def run(agipd_raw_run):
    return xd.open_run(agipd_raw_run)


def test_unknown_source_is_a_key_error_naming_close_matches(run):
    with pytest.raises(KeyError) as err:
        run.keys("SA1_XTD2_XGM/DOOCS/MAIM")
    assert isinstance(err.value, SourceNameError)
    assert "did you mean: SA1_XTD2_XGM/DOOCS/MAIN" in str(err.value)


def test_unknown_source_in_item_access(run):
    with pytest.raises(KeyError, match="did you mean: .*SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"):
        run["SPB_DET_AGIPD1M-1/DET/1CH0:xtfd", "image.data"]


def test_unknown_key_is_a_key_error_naming_close_matches(run):
    with pytest.raises(KeyError) as err:
        run[XGM, "pulseEnergy.photonFlx"]
    assert isinstance(err.value, PropertyNameError)
    assert "did you mean: pulseEnergy.photonFlux" in str(err.value)


def test_unknown_key_without_close_matches_still_names_source(run):
    with pytest.raises(PropertyNameError, match=f"not in source {XGM}"):
        run.key_info(XGM, "zzzzzz")


def test_unknown_source_glob_is_a_key_error(run):
    with pytest.raises(SourceNameError, match="NOTHING"):
        run.select("*NOTHING*")


# ----- input files are never modified -------------------------------------------

def _digest(paths: list[Path]) -> dict[str, tuple[str, float]]:
    out = {}
    for p in paths:
        out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mtime)
    return out


def test_input_files_are_never_modified(agipd_corr_run, irregular_run, format_runs, capsys):
    run_dirs = [agipd_corr_run, irregular_run, format_runs["0.5-old"], format_runs["1.1"]]
    paths = sorted(p for d in run_dirs for p in d.glob("*.h5"))
    before = _digest(paths)

    for run_dir in run_dirs:
        run = xd.open_run(run_dir)
        run.info(details=True, file=io.StringIO())
        run.select("*XGM*").sel(trainId=run.train_ids[:3])
        np.asarray(run[XGM, "beamPosition.ixPos"])
        np.asarray(run[syn.CAMERA_SOURCE, "data.image.pixels"].isel(trainId=slice(0, 2)))
        run_values = run.run_values(XGM)
        assert run_values
        detector_source = next(s for s in run.instrument_sources if "AGIPD" in s)
        np.asarray(run[detector_source, "image.data"][:1])
        validate_run(run_dir)
        main(["ls", str(run_dir)])
        main(["validate", str(run_dir)])
        xd.open_file(paths[0])
    capsys.readouterr()

    assert _digest(paths) == before


def test_open_file_on_a_directory_points_to_open_run(agipd_raw_run):
    with pytest.raises(IsADirectoryError, match="open_run"):
        xd.open_file(agipd_raw_run)


def test_open_run_refuses_a_path_and_a_proposal_together(agipd_raw_run):
    with pytest.raises(TypeError, match="not both"):
        xd.open_run(agipd_raw_run, proposal=700000, run=1)


def test_indexing_a_run_by_position_says_how_to_select_trains(agipd_raw_run):
    with pytest.raises(TypeError, match="isel"):
        xd.open_run(agipd_raw_run)[3]
