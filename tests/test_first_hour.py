"""What a user coming from EXtra-data reaches for first (issue 15).

Where EXtra-data has the feature, the values are compared with EXtra-data's on
its own mock runs (fixture ``extra_data_runs``).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import xfeldata as xd
from xfeldata.cli import build_parser, main

ed = pytest.importorskip("extra_data")

pytestmark = pytest.mark.filterwarnings("ignore:Falling back to raw data:UserWarning")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version_option_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"xfeldata {xd.__version__}"
    assert not hasattr(xd, "version")  # no stray importlib function among the public names


@pytest.mark.parametrize("command", sorted(_subcommands(build_parser())))
def test_every_option_has_help_that_shows_its_default(command):
    parser = _subcommands(build_parser())[command]
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        takes_value = action.nargs != 0
        if takes_value:
            assert "default" in action.help, f"{command} {action.option_strings[0]}: {action.help!r}"
