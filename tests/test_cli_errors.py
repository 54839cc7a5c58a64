"""Errors, warnings and option checks of the ``xfeldata`` command.

Most tests run the command in-process through :func:`xfeldata.cli.main`;
argparse errors leave it with ``SystemExit(2)``.  A broken pipe needs a real
pipe, so those tests start the command as a subprocess.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from xfeldata.bridge.cli import endpoint_arg, module_list
from xfeldata.cli import build_parser, main


def usage_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``argv``, expect an argparse error (exit 2), return its message line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``argv``, expect a one-line error with exit code 2 and return it."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A one-module JUNGFRAU run of 2 trains, written by the command."""
    target = tmp_path_factory.mktemp("tiny") / "r0001"
    assert main(["make-example", str(target), "--detector", "jungfrau", "--modules", "1",
                 "--frames", "1", "--trains", "2", "--no-slow"]) == 0
    return target


# ----- one-line errors ---------------------------------------------------------

def test_make_example_into_an_existing_run_is_a_one_line_error(tiny_run, capsys):
    capsys.readouterr()
    line = one_line_error(capsys, ["make-example", str(tiny_run), "--detector", "JUNGFRAU",
                                   "--modules", "1", "--frames", "1", "--no-slow"])
    assert line.startswith("xfeldata make-example: error: ")
    assert "already holds run files" in line


def test_make_example_onto_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("")
    line = one_line_error(capsys, ["make-example", str(target)])
    assert "is not a directory" in line


def test_demo_keep_into_an_existing_run_is_a_one_line_error(tiny_run, capsys):
    capsys.readouterr()
    line = one_line_error(capsys, ["demo", "--keep", str(tiny_run)])
    assert line.startswith("xfeldata demo: error: ")
    assert "already holds run files" in line


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4999", "tcp://127.0.0.1", "tcp://:4545",
                                      "http://127.0.0.1:4545", "ipc://", "tcp://host:99999"])
def test_monitor_checks_the_endpoint_before_connecting(endpoint, capsys):
    line = usage_error(capsys, ["monitor", endpoint, "--timeout", "0.1"])
    assert "endpoint must look like tcp://host:port or ipc://path" in line


def test_monitor_suggests_tcp_for_host_and_port(capsys):
    line = usage_error(capsys, ["monitor", "127.0.0.1:4999"])
    assert "did you mean tcp://127.0.0.1:4999?" in line


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:4545", "tcp://*:1", "tcp://[::1]:4545",
                                      "tcp://some-host.example:80", "ipc://bridge.sock"])
def test_good_endpoints_pass(endpoint):
    assert endpoint_arg(endpoint) == endpoint


# ----- broken pipe -------------------------------------------------------------

@pytest.mark.parametrize("command", [["ls"], ["info", "--details"]])
def test_closed_stdout_pipe_ends_quietly(slow_only_run, command):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written, as with `| head`
    try:
        proc = subprocess.run([sys.executable, "-m", "xfeldata.cli", command[0], str(slow_only_run),
                               *command[1:]], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == ""


# ----- warnings ------------------------------------------------------------------

def test_warnings_are_one_readable_line(slow_only_run, tmp_path, capsys):
    run = tmp_path / "r0001"
    shutil.copytree(slow_only_run, run)
    bad = run / "RAW-R0001-DA09-S00000.h5"
    bad.write_bytes(b"not hdf5 at all")
    before = warnings.showwarning
    assert main(["info", str(run)]) == 0
    assert warnings.showwarning is before  # restored after the command
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"xfeldata info: warning: skipping unreadable file {bad}")
    assert "UserWarning" not in err and "cli.py" not in err


# ----- make-example options --------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--modules", "3-1"], "argument --modules: module range 3-1 runs backwards; write 1-3"),
    (["--modules", "abc"], "argument --modules: bad module list 'abc'"),
    (["--modules", "0,,2"], "argument --modules: bad module list"),
    (["--modules", "16"], "argument --modules: AGIPD1M has no module(s) 16; its modules are 0-15"),
    (["--detector", "JUNGFRAU", "--modules", "0-1"], "JUNGFRAU has no module(s) 0; its modules are 1-8"),
    (["--detector", "AGIPD500K", "--modules", "8"], "AGIPD500K has no module(s) 8"),
    (["--detector", "none", "--modules", "0"], "argument --modules: no detector"),
    (["--first-train", "0"], "argument --first-train: must be a positive integer, not 0"),
    (["--first-train", "-3"], "argument --first-train: must be a positive integer, not -3"),
    (["--frames", "0"], "argument --frames: must be a positive integer, not 0"),
    (["--detector", "JUNGFRAU", "--frames", "17"], "JUNGFRAU has at most 16 memory cells"),
    (["--trains", "0"], "argument --trains: must be a positive integer, not 0"),
    (["--trains", "x"], "argument --trains: must be a positive integer, not 'x'"),
    (["--trains", "3", "--sequences", "4"], "argument --sequences: 4 sequence files need"),
    (["--sequences", "0"], "argument --sequences: must be a positive integer"),
    (["--old-index"], "argument --old-index: the first/last/status index needs --format 0.5"),
    (["--detector", "EIGER"], "argument --detector: unknown detector 'EIGER'"),
])
def test_make_example_rejects_bad_options(tmp_path, capsys, options, message):
    target = tmp_path / "r0001"
    line = usage_error(capsys, ["make-example", str(target), *options])
    assert line.startswith("xfeldata make-example: error: ")
    assert message in line
    assert not target.exists()


@pytest.mark.parametrize("text, modules", [("0-3,8", [0, 1, 2, 3, 8]), ("5", [5]),
                                           ("2,0-2", [0, 1, 2]), (" 1 - 2 ", [1, 2])])
def test_module_list(text, modules):
    assert module_list(text) == modules


@pytest.mark.parametrize("text", ["", "-1", "1-", "a-b", "3-1", "1.5", "0;1"])
def test_module_list_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        module_list(text)


@pytest.mark.parametrize("given, kind", [("AGIPD1M", "AGIPD1M"), ("agipd", "AGIPD1M"),
                                         ("LPD", "LPD1M"), ("dssc1m", "DSSC1M"),
                                         ("Jungfrau", "JUNGFRAU"), ("agipd500k", "AGIPD500K"),
                                         ("lpd_mini", "LPDMINI"), ("lpdmini", "LPDMINI"),
                                         ("epix", "EPIX100"), ("ePix100", "EPIX100")])
@pytest.mark.parametrize("command", [["make-example", "somewhere"], ["simulate"]])
def test_detector_names_and_aliases_in_both_commands(command, given, kind):
    args = build_parser().parse_args([*command, "--detector", given])
    assert args.detector == kind


def test_make_example_with_a_detector_alias_writes_that_kind(tmp_path, capsys):
    target = tmp_path / "r0001"
    assert main(["make-example", str(target), "--detector", "lpd", "--modules", "2",
                 "--frames", "1", "--trains", "1", "--no-slow"]) == 0
    assert [p.name for p in target.iterdir()] == ["RAW-R0001-LPD02-S00000.h5"]


def test_make_example_of_epix100_writes_one_frame_per_train_and_refuses_more(tmp_path, capsys):
    target = tmp_path / "r0001"
    assert main(["make-example", str(target), "--detector", "epix", "--trains", "2", "--no-slow"]) == 0
    assert "1 modules x 2 trains x 1 frames of (704, 768)" in capsys.readouterr().out
    assert [p.name for p in target.iterdir()] == ["RAW-R0001-EPIX00-S00000.h5"]
    with pytest.raises(SystemExit):
        main(["make-example", str(tmp_path / "r0002"), "--detector", "EPIX100", "--frames", "2"])
    assert "EPIX100 has at most 1 frames per train" in capsys.readouterr().err


# ----- bridge commands ---------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["simulate", "--frames", "0"], "argument --frames: must be a positive integer, not 0"),
    (["simulate", "--frames", "-2"], "argument --frames: must be a positive integer, not -2"),
    (["simulate", "--detector", "LPD", "--frames", "513"], "LPD1M has at most 512 frames"),
    (["simulate", "--modules", "3-1"], "module range 3-1 runs backwards"),
    (["simulate", "--detector", "jungfrau", "--modules", "9"], "JUNGFRAU has no module(s) 9"),
    (["simulate", "--port", "70000"], "argument --port: port must be 0..65535"),
    (["simulate", "--rate", "-1"], "argument --rate: must be a non-negative number"),
    (["monitor", "tcp://127.0.0.1:4545", "--timeout", "-1"],
     "argument --timeout: must be a positive number, not -1"),
    (["monitor", "tcp://127.0.0.1:4545", "--timeout", "0"], "argument --timeout: must be a positive"),
    (["monitor", "tcp://127.0.0.1:4545", "--ntrains", "0"], "argument --ntrains: must be a positive"),
])
def test_bridge_commands_reject_bad_options(capsys, argv, message):
    line = usage_error(capsys, argv)
    assert line.startswith(f"xfeldata {argv[0]}: error: ")
    assert message in line


def test_serve_checks_the_source_before_announcing(slow_only_run, capsys):
    line = one_line_error(capsys, ["serve", str(slow_only_run), "--port", "0", "--source", "NOPE"])
    assert capsys.readouterr().out == ""
    assert "Serving" not in line and "source NOPE is not in this data" in line


def test_serve_unknown_key_names_the_sources_looked_in(slow_only_run, capsys):
    line = one_line_error(capsys, ["serve", str(slow_only_run), "--port", "0",
                                   "--source", "*XGM*", "--key", "NOPE"])
    assert capsys.readouterr().out == ""
    assert "no key matching 'NOPE' in sources matching '*XGM*'" in line
    assert "SA1_XTD2_XGM/DOOCS/MAIN" in line
    assert "source *" not in line


def test_serve_unknown_key_without_source_glob(slow_only_run, capsys):
    line = one_line_error(capsys, ["serve", str(slow_only_run), "--port", "0", "--key", "NOPE"])
    assert "no key matching 'NOPE' in the run (looked in " in line
