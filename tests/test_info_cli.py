"""``run.info()`` and the ``xfeldata`` command (info, ls, validate, make-example).

The command is run in-process through :func:`xfeldata.cli.main`.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import h5py
import pytest
from conftest import DETECTOR_RUN_MODULES, FIRST_TRAIN_ID, IRREGULAR_RUN

import xfeldata as xd
from xfeldata.cli import main
from xfeldata.detectors.kinds import DETECTORS
from xfeldata.testing import BOGUS_TRAIN_OFFSET
from xfeldata.testing import synthetic as syn

AGIPD = DETECTORS["AGIPD1M"]
IRREGULAR_SUSPECT = FIRST_TRAIN_ID + IRREGULAR_RUN["n_trains"] - 1 + BOGUS_TRAIN_OFFSET


def info_text(run, details: bool = False) -> str:
    out = io.StringIO()
    run.info(details=details, file=out)
    return out.getvalue()


def field(text: str, name: str) -> str:
    """The value of a ``Name:   value`` line of the summary."""
    m = re.search(rf"^{re.escape(name)}:\s+(.*)$", text, re.MULTILINE)
    assert m, f"no {name!r} line in:\n{text}"
    return m.group(1).strip()


@pytest.fixture(scope="module")
def raw_info(agipd_raw_run) -> str:
    return info_text(xd.open_run(agipd_raw_run))


@pytest.fixture(scope="module")
def irregular_info(irregular_run) -> str:
    return info_text(xd.open_run(irregular_run))


# ----- run.info() -----------------------------------------------------------

def test_info_shows_trains_duration_and_first_and_last_train(raw_info):
    assert field(raw_info, "# of trains") == "10"
    assert field(raw_info, "First train ID") == "10000"
    assert field(raw_info, "Last train ID") == "10009"
    assert field(raw_info, "Duration") == "0:00:01"  # 10 trains at 10 Hz


def test_info_shows_format_and_proposal(raw_info):
    assert field(raw_info, "Format version") == "1.3"
    assert field(raw_info, "Proposal/run") == "p700000 r1"


def test_info_lists_detector_with_its_modules(raw_info):
    assert "SPB_DET_AGIPD1M-1: AGIPD1M with 16 modules (0-15)" in raw_info
    assert "frames per train: 2" in raw_info


def test_info_splits_instrument_and_control_sources(raw_info):
    n_instrument = len(syn.INSTRUMENT_SOURCES)
    assert f"{n_instrument} instrument sources (excluding detectors):" in raw_info
    assert f"{len(syn.CONTROL_SOURCES)} control sources:" in raw_info
    for source in (*syn.INSTRUMENT_SOURCES, *syn.CONTROL_SOURCES):
        assert f"  - {source}\n" in raw_info + "\n"
    assert "DET/0CH0:xtdf" not in raw_info  # modules are listed under their detector


def test_info_of_a_clean_run_reports_no_problems(raw_info):
    assert "problem" not in raw_info
    assert "Suspect" not in raw_info
    assert "missing" not in raw_info


def test_info_lists_trains_with_missing_modules(irregular_info):
    assert "AGIPD1M with 4 modules (0-3)" in irregular_info
    assert ("3 train(s) with modules missing: 10002 (modules 1); 10003 (modules 1); "
            "10010 (modules 1)") in irregular_info


def test_info_counts_suspect_trains(irregular_info):
    assert field(irregular_info, "Suspect trains").startswith("1 (kept;")
    assert str(IRREGULAR_SUSPECT) in field(irregular_info, "Suspect trains")
    assert field(irregular_info, "# of trains") == "13"  # the suspect train is kept


def test_bogus_suspect_train_does_not_make_first_last_or_duration_absurd(irregular_info):
    assert field(irregular_info, "First train ID") == "10000"
    assert field(irregular_info, "Last train ID") == "10011"
    assert field(irregular_info, "Duration") == "0:00:01.200000"


def test_info_shows_frames_that_vary_per_train(irregular_info):
    assert "frames per train: 2 to 3" in irregular_info


def test_info_after_dropping_suspect_trains(irregular_run):
    text = info_text(xd.open_run(irregular_run, inc_suspect_trains=False))
    assert field(text, "# of trains") == "12"
    assert "Suspect" not in text


def test_info_of_format_0_5_without_timestamps_uses_the_train_rate(format_runs):
    text = info_text(xd.open_run(format_runs["0.5"]))
    assert field(text, "Duration") == "0:00:00.600000"  # 6 good trains at 10 Hz
    assert field(text, "Last train ID") == "10005"
    assert "Suspect trains: 1" in text


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_info_names_every_detector_kind(detector_runs, kind):
    det = DETECTORS[kind]
    text = info_text(xd.open_run(detector_runs[kind]))
    found = DETECTOR_RUN_MODULES.get(kind, [0, 1])
    modules = f"{found[0]}-{found[-1]}" if len(found) > 1 else f"{found[0]}"
    plural = "module" if len(found) == 1 else "modules"
    assert f"{det.default_device}: {kind} with {len(found)} {plural} ({modules})" in text
    assert "0 control sources:" in text


def test_info_of_corrected_run_lists_current_names_once(agipd_corr_run):
    text = info_text(xd.open_run(agipd_corr_run))
    assert "AGIPD1M with 16 modules (0-15)" in text
    assert text.count("AGIPD1M with") == 1


def test_info_details_lists_keys_with_shape_and_dtype(agipd_raw_run):
    text = info_text(xd.open_run(agipd_raw_run).select("*XGM*").union(
        xd.open_run(agipd_raw_run).select(AGIPD.source(0))), details=True)
    assert re.search(r"beamPosition\.ixPos\s+scalar\s+float32", text)
    assert re.search(r"data\.intensityTD\s+1000\s+float32", text)
    assert re.search(r"image\.data\s+2x512x128\s+uint16", text)


def test_info_of_a_selection_describes_only_the_selection(agipd_raw_run):
    text = info_text(xd.open_run(agipd_raw_run).select("*XGM*").sel(trainId=slice(10002, 10004)))
    assert field(text, "# of trains") == "3"
    assert field(text, "First train ID") == "10002"
    assert "AGIPD" not in text
    assert "1 control sources:" in text


def _bogus_id_at_end_of_first_sequence(agipd_raw_run: Path, tmp_path: Path) -> tuple[Path, int]:
    """DA01 copies: the last train of S00000 gets a huge ID, good flag, and no timestamps."""
    run_dir = tmp_path / "r0001"
    run_dir.mkdir()
    for src in sorted(agipd_raw_run.glob("*-DA01-*.h5")):
        shutil.copyfile(src, run_dir / src.name)
    bogus = 10_000 * BOGUS_TRAIN_OFFSET
    for path in run_dir.iterdir():
        with h5py.File(path, "r+") as f:
            del f["INDEX/timestamp"]
            if path.name.endswith("S00000.h5"):
                f["INDEX/trainId"][-1] = bogus
    return run_dir, bogus


def test_bogus_train_id_at_the_end_of_a_sequence_file_is_suspect(agipd_raw_run, tmp_path):
    run_dir, bogus = _bogus_id_at_end_of_first_sequence(agipd_raw_run, tmp_path)
    run = xd.open_run(run_dir)
    assert run.suspect_train_ids.tolist() == [bogus]
    text = info_text(run)
    assert field(text, "Last train ID") == "10009"
    assert field(text, "First train ID") == "10000"
    assert field(text, "Duration") == "0:00:01"  # trains 10000-10009 at 10 Hz
    assert bogus not in xd.open_run(run_dir, inc_suspect_trains=False).train_ids.tolist()


def test_validate_reports_a_train_out_of_order_across_sequence_files(agipd_raw_run, tmp_path,
                                                                     capsys):
    run_dir, bogus = _bogus_id_at_end_of_first_sequence(agipd_raw_run, tmp_path)
    assert main(["validate", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "RAW-R0001-DA01-S00000.h5" in out
    assert f"train ID {bogus} out of order" in out


# ----- the command ---------------------------------------------------------

def test_cli_info_on_a_run_directory(agipd_raw_run, capsys):
    assert main(["info", str(agipd_raw_run)]) == 0
    out = capsys.readouterr().out
    assert field(out, "# of trains") == "10"
    assert "AGIPD1M with 16 modules" in out


def test_cli_info_include_restricts_the_files(agipd_raw_run, capsys):
    assert main(["info", str(agipd_raw_run), "--include", "*DA02*"]) == 0
    out = capsys.readouterr().out
    assert "AGIPD" not in out
    assert syn.CAMERA_SOURCE in out


def test_cli_info_on_one_file_with_details(agipd_raw_run, capsys):
    (path,) = agipd_raw_run.glob("*-AGIPD03-S00001.h5")
    assert main(["info", str(path), "--details"]) == 0
    out = capsys.readouterr().out
    assert field(out, "# of trains") == "5"
    assert field(out, "First train ID") == "10005"
    assert "AGIPD1M with 1 module (3)" in out
    assert re.search(r"image\.pulseId\s+1\s+uint64", out)


def test_cli_ls_describes_each_file(agipd_corr_run, capsys):
    (path,) = agipd_corr_run.glob("*-AGIPD00-S00000.h5")
    assert main(["ls", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path.name}  format 1.3  5 trains (10000-10004)" in out
    assert f"INSTRUMENT {AGIPD.source(0, corrected=True)}" in out
    assert f"alias      {AGIPD.legacy_source(0)} -> {AGIPD.source(0, corrected=True)}" in out


def test_cli_ls_on_a_directory_lists_every_file(slow_only_run, capsys):
    assert main(["ls", str(slow_only_run)]) == 0
    out = capsys.readouterr().out
    names = re.findall(r"^(\S+\.h5)  format", out, re.MULTILINE)
    assert names == sorted(p.name for p in slow_only_run.glob("*.h5"))
    assert f"CONTROL    {syn.XGM_SOURCE}" in out


def test_cli_ls_flags_an_unreadable_file_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "RAW-R0001-DA01-S00000.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert main(["ls", str(bad)]) == 1
    assert "ERROR" in capsys.readouterr().out


def test_cli_validate_a_clean_run_exits_0(agipd_raw_run, capsys):
    assert main(["validate", str(agipd_raw_run)]) == 0
    assert "no problems found" in capsys.readouterr().out


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2", "1.3"])
def test_cli_validate_notes_flagged_suspect_trains_without_failing(format_runs, version, capsys):
    assert main(["validate", str(format_runs[version])]) == 0
    out = capsys.readouterr().out
    assert "note: 1 suspect train(s)" in out


def test_cli_validate_reports_out_of_order_train_of_format_0_5(format_runs, capsys):
    assert main(["validate", str(format_runs["0.5"])]) == 1
    captured = capsys.readouterr()
    assert "RAW-R0001-DA01-S00000.h5: train ID(s) out of order" in captured.out
    assert "1 problem(s) found" in captured.err


def test_cli_validate_a_bad_run_lists_file_source_and_problem(agipd_raw_run, tmp_path, capsys):
    (src,) = agipd_raw_run.glob("*-DA02-S00001.h5")
    bad = tmp_path / src.name
    shutil.copyfile(src, bad)
    with h5py.File(bad, "r+") as f:
        f[f"INDEX/{syn.DIGITISER_SOURCE}/data/first"][-1] = 50
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "past the end" in line)
    assert str(bad) in line
    assert syn.DIGITISER_SOURCE in line
    assert "data.rawData" in line


def test_cli_make_example_writes_a_run_that_opens(tmp_path, capsys):
    target = tmp_path / "r0002"
    argv = ["make-example", str(target), "--detector", "JUNGFRAU", "--modules", "1-2",
            "--trains", "4", "--frames", "1", "--sequences", "2", "--format", "1.1",
            "--no-slow", "--first-train", "500", "--run", "2"]
    assert main(argv) == 0
    assert str(target) in capsys.readouterr().out
    names = sorted(p.name for p in target.glob("*.h5"))
    assert names == [f"RAW-R0002-JNGFR0{m}-S0000{s}.h5" for m in (1, 2) for s in (0, 1)]
    run = xd.open_run(target)
    assert run.train_ids.tolist() == [500, 501, 502, 503]
    assert run.metadata["dataFormatVersion"] == "1.1"
    assert run.metadata["runNumber"] == 2


def test_cli_make_example_with_irregularities(tmp_path, capsys):
    target = tmp_path / "r0001"
    assert main(["make-example", str(target), "--modules", "0-1", "--trains", "6",
                 "--frames", "2", "--irregular"]) == 0
    run = xd.open_run(target)
    assert len(run.suspect_train_ids) == 1
    assert main(["info", str(target)]) == 0
    assert "with modules missing" in capsys.readouterr().out


def test_cli_error_on_missing_path_is_one_line_with_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "Traceback" not in err
    assert main(["validate", str(missing)]) == 2


def test_the_command_line_starts_without_importing_xarray_dask_or_pandas():
    # `xfeldata info` must stay quick: the summary needs the index only
    import subprocess
    import sys

    code = ("import sys, xfeldata.cli; xfeldata.cli.build_parser(); "
            "print(sorted(m for m in ('xarray', 'dask', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
