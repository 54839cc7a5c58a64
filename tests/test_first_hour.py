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


# ----- train timestamps, data counts, legacy names, require_any ------------------
@pytest.mark.parametrize("name", ["spb", "modern_spb_proc", "lpd_missed_train"])
def test_train_timestamps_equal_extra_datas(extra_data_runs, name):
    path = extra_data_runs[name]
    run, ed_run = xd.open_run(path), ed.RunDirectory(str(path))
    ours, theirs = run.train_timestamps(), ed_run.train_timestamps()
    assert ours.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(ours, theirs)
    series = run.train_timestamps(labelled=True)
    assert series.index.name == "trainId"
    np.testing.assert_array_equal(series.index, run.train_ids)
    assert series.equals(ed_run.train_timestamps(labelled=True).rename_axis("trainId"))
    local = run.train_timestamps(labelled=True, euxfel_local_time=True)
    assert str(local.dt.tz) == "Europe/Berlin" and (local == series).all()


def test_train_timestamps_are_nat_where_files_have_none(tmp_path):
    """Format 0.5 files have no ``INDEX/timestamp``: NaT, as in EXtra-data."""
    from extra_data.tests.make_examples import make_lpd_parallelgain_run

    make_lpd_parallelgain_run(str(tmp_path), format_version="0.5")
    ours = xd.open_run(tmp_path).train_timestamps()
    assert len(ours) == 100 and np.isnat(ours).all()
    np.testing.assert_array_equal(ours, ed.RunDirectory(str(tmp_path)).train_timestamps())


@pytest.mark.parametrize("name", ["reduced_spb", "lpd_missed_train"])
def test_labelled_data_counts_equal_extra_datas(extra_data_runs, name):
    path = extra_data_runs[name]
    run, ed_run = xd.open_run(path), ed.RunDirectory(str(path))
    for source in run.instrument_sources:
        ours = run.data_counts(source, "image" if "image" in run.index_groups(source) else None, labelled=True)
        key = "image.data" if "image" in run.index_groups(source) else run.keys(source)[0]
        theirs = ed_run[source, key].data_counts(labelled=True)
        assert ours.index.name == "trainId" and ours.name == source
        np.testing.assert_array_equal(ours.index, theirs.index)
        np.testing.assert_array_equal(ours.values, theirs.values)
    assert isinstance(run.data_counts(source), np.ndarray)  # unlabelled by default


def test_legacy_sources_map_old_names_to_current_ones(extra_data_runs):
    path = extra_data_runs["modern_spb_proc"]
    run, ed_run = xd.open_run(path), ed.RunDirectory(str(path))
    assert run.legacy_sources == ed_run.legacy_sources
    assert not set(run.legacy_sources) & set(run.sources)
    legacy = "SPB_DET_AGIPD1M-1/DET/4CH0:xtdf"
    assert run.select(legacy).legacy_sources == {legacy: "SPB_DET_AGIPD1M-1/CORR/4CH0:output"}
    assert xd.open_run(extra_data_runs["spb"]).legacy_sources == {}


def test_select_require_any_keeps_trains_where_some_source_has_data(extra_data_runs):
    """LPD module 1 misses train 10002; with require_any a train stays if either module has it."""
    path = extra_data_runs["lpd_missed_train"]
    run, ed_run = xd.open_run(path), ed.RunDirectory(str(path))
    glob = "FXE_DET_LPD1M-1/DET/*CH0:xtdf"
    for kwargs in ({"require_all": True}, {"require_any": True}):
        ours = run.select(glob, "image.data", **kwargs)
        theirs = ed_run.select(glob, "image.data", **kwargs)
        np.testing.assert_array_equal(ours.train_ids, theirs.train_ids)
    assert list(run.select("FXE_DET_LPD1M-1/DET/1CH0:xtdf", require_any=True).train_ids) == [
        10000, 10001, 10003, 10004]
    with pytest.raises(ValueError, match="not both"):
        run.select(glob, require_all=True, require_any=True)
