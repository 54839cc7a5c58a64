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


# ----- aliases -------------------------------------------------------------------
ALIAS_YAML = """\
sa1-xgm: SA1_XTD2_XGM/DOOCS/MAIN
SA1_Intensity: [SA1_XTD2_XGM/DOOCS/MAIN:output, data.intensityTD]
SPB_XTD9_XGM/DOOCS/MAIN:
  spb-x: beamPosition.ixPos
not-in-run: NOT_A/REAL/SOURCE
"""


@pytest.fixture
def alias_file(tmp_path):
    path = tmp_path / "aliases.yml"
    path.write_text(ALIAS_YAML)
    return path


def test_aliases_from_extra_datas_yaml_give_what_extra_data_gives(extra_data_runs, alias_file):
    path = extra_data_runs["spb"]
    run = xd.open_run(path).with_aliases(alias_file)
    ed_run = ed.RunDirectory(str(path)).with_aliases(alias_file)
    assert sorted(run.alias) == sorted(ed_run._aliases) == ["not-in-run", "sa1-intensity", "sa1-xgm", "spb-x"]
    # a source alias, with a key
    ours = run.alias["sa1-xgm", "beamPosition.ixPos"]
    np.testing.assert_array_equal(ours.values, ed_run.alias["sa1-xgm", "beamPosition.ixPos.value"].ndarray())
    assert set(run.alias["SA1-XGM"].data_vars) == set(run["SA1_XTD2_XGM/DOOCS/MAIN"].data_vars)  # any spelling
    # key aliases, in list form and nested under the source
    np.testing.assert_array_equal(run.alias["sa1_intensity"].values, ed_run.alias["sa1-intensity"].ndarray())
    np.testing.assert_array_equal(run.alias["spb-x"].values, ed_run.alias["spb-x"].ndarray())
    assert "spb-x" in run.alias and "nope" not in run.alias
    with pytest.raises(KeyError, match="no alias 'nope'; aliases: not-in-run, sa1-intensity"):
        run.alias["nope"]
    # aliases survive selections, and go with drop_aliases
    assert "sa1-xgm" in run.isel(trainId=slice(0, 3)).select("SA1*").alias
    assert len(run.drop_aliases().alias) == 0


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_alias_files_in_json_and_toml(tmp_path, extra_data_runs, suffix):
    path = tmp_path / f"aliases{suffix}"
    if suffix == ".json":
        path.write_text('{"sa1-xgm": "SA1_XTD2_XGM/DOOCS/MAIN",'
                        ' "spb-x": ["SPB_XTD9_XGM/DOOCS/MAIN", "beamPosition.ixPos"]}')
    else:
        path.write_text('sa1-xgm = "SA1_XTD2_XGM/DOOCS/MAIN"\n\n'
                        '["SPB_XTD9_XGM/DOOCS/MAIN"]\nspb-x = "beamPosition.ixPos"\n')
    run = xd.open_run(extra_data_runs["spb"]).with_aliases(path)
    ed_run = ed.RunDirectory(str(extra_data_runs["spb"])).with_aliases(path)
    assert dict(run._aliases) == ed_run._aliases


def test_conflicting_aliases_are_an_error(extra_data_runs):
    run = xd.open_run(extra_data_runs["spb"]).with_aliases({"xgm": "SA1_XTD2_XGM/DOOCS/MAIN"})
    with pytest.raises(ValueError, match="conflicting definitions of alias 'xgm'"):
        run.with_aliases({"XGM": "SPB_XTD9_XGM/DOOCS/MAIN"})


def test_only_aliases_selects_what_extra_data_selects(extra_data_runs, alias_file):
    path = extra_data_runs["spb"]
    run = xd.open_run(path).only_aliases(alias_file)
    ed_run = ed.RunDirectory(str(path)).only_aliases(alias_file)
    assert sorted(run.sources) == sorted(ed_run.all_sources)
    for source in run.sources:
        theirs = {k.removesuffix(".value") for k in ed_run.keys_for_source(source) if not k.endswith(".timestamp")}
        assert set(run.keys(source)) == theirs, source
    with pytest.raises(KeyError, match="NOT_A/REAL/SOURCE"):
        xd.open_run(path).only_aliases(alias_file, strict=True)


def test_open_run_by_proposal_reads_the_proposals_alias_file(tmp_path, monkeypatch, extra_data_runs):
    import shutil

    proposal_dir = tmp_path / "SPB" / "202401" / "p900001"
    shutil.copytree(extra_data_runs["lpd_missed_train"], proposal_dir / "raw" / "r0005")
    monkeypatch.setenv("XFELDATA_ROOT", str(tmp_path))
    assert len(xd.open_run(proposal=900001, run=5).alias) == 0  # no alias file: no aliases
    (proposal_dir / "usr").mkdir()
    (proposal_dir / "usr" / "extra-data-aliases.yml").write_text("lpd0: FXE_DET_LPD1M-1/DET/0CH0:xtdf\n")
    run = xd.open_run(proposal=900001, run=5)
    assert run.alias.resolve("LPD0") == "FXE_DET_LPD1M-1/DET/0CH0:xtdf"
    assert len(xd.open_run(proposal=900001, run=5, aliases=None).alias) == 0
    assert len(xd.open_run(proposal=900001, run=5, aliases={"x": "FXE_DET_LPD1M-1/DET/1CH0:xtdf"}).alias) == 1


def test_client_endpoint_without_transport_suggests_tcp():
    from xfeldata.bridge import Client

    with pytest.raises(ValueError, match=r"did you mean 'tcp://127\.0\.0\.1:4545'\?"):
        Client("127.0.0.1:4545")


# ----- suspect train IDs do not make ranges misleading -----------------------------
def test_repr_shows_the_good_range_and_names_suspect_trains_apart(irregular_run):
    run = xd.open_run(irregular_run)
    assert 1000010011 in run.train_ids
    assert "trains (10000-10011; suspect: 1000010011)" in repr(run)
    assert "suspect" not in repr(xd.open_run(irregular_run, inc_suspect_trains=False))


def test_train_id_error_names_the_good_range_and_the_suspect_trains(irregular_run):
    run = xd.open_run(irregular_run)
    with pytest.raises(xd.TrainIdError) as exc:
        run.sel(trainId=[5, 6, 7, 8, 9, 10, 11])
    message = str(exc.value)
    assert "train ID 5, 6, 7, 8, 9 and 2 more not in this data" in message
    assert "(the run has trains 10000 to 10011, and suspect train IDs 1000010011)" in message


# ----- info(counts=True) -------------------------------------------------------------
def test_info_counts_trains_with_data_as_extra_data_counts_them(extra_data_runs, capsys):
    path = extra_data_runs["reduced_spb"]
    ed_run = ed.RunDirectory(str(path))
    xd.open_run(path).info(counts=True)
    text = capsys.readouterr().out
    module_counts = [ed_run[f"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf", "image.data"].data_counts(labelled=False)
                     for m in range(16)]
    no_data = np.asarray(ed_run.train_ids)[np.all(np.stack(module_counts) == 0, axis=0)]
    assert len(no_data) > 0  # the mock run has trains without frames
    assert f"{len(no_data)} train(s) with no module's data: {', '.join(map(str, no_data[:5]))}" in text
    per_module = ", ".join(f"{m}: {np.count_nonzero(c)}" for m, c in enumerate(module_counts))
    assert f"trains with data per module: {per_module}" in text
    for source in ("SA1_XTD2_XGM/DOOCS/MAIN", "SPB_IRU_CAM/CAM/SIDEMIC:daqOutput"):
        key = "pulseEnergy.photonFlux.value" if ":" not in source else "data.image.pixels"
        n = np.count_nonzero(ed_run[source, key].data_counts(labelled=False))
        assert f"  - {source} ({n} of {len(ed_run.train_ids)} trains with data)" in text


def test_info_command_has_counts(extra_data_runs, capsys):
    assert main(["info", str(extra_data_runs["lpd_missed_train"]), "--counts"]) == 0
    assert "trains with data per module: 0: 5, 1: 4" in capsys.readouterr().out


# ----- plot_missing_data ------------------------------------------------------------
def test_missing_data_table_and_plot(extra_data_runs):
    """LPD module 1 misses train 10002: 80 % saved, shown; module 0 (100 %) is not."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xfeldata.plotting import missing_data

    path = extra_data_runs["lpd_missed_train"]
    run, ed_run = xd.open_run(path), ed.RunDirectory(str(path))
    table = missing_data(run)
    assert list(table.columns) == ["FXE_DET_LPD1M-1/DET/1CH0:xtdf"]
    theirs = ed_run["FXE_DET_LPD1M-1/DET/1CH0:xtdf"].data_counts(labelled=True) > 0
    np.testing.assert_array_equal(table.index, theirs.index)
    np.testing.assert_array_equal(table["FXE_DET_LPD1M-1/DET/1CH0:xtdf"], theirs.values)
    assert list(missing_data(run, min_saved_pct=100).columns) == [
        "FXE_DET_LPD1M-1/DET/1CH0:xtdf", "FXE_DET_LPD1M-1/DET/0CH0:xtdf"]
    ax = run.plot_missing_data()
    try:
        assert [t.get_text() for t in ax.get_yticklabels()] == ["FXE_DET_LPD1M-1/DET/1CH0:xtdf (80.00%)"]
        image = ax.get_images()[0].get_array()
        np.testing.assert_array_equal(image, [[1, 1, 0, 1, 1]])
    finally:
        plt.close(ax.figure)


def test_benchmarks_help_is_plain_text():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=root, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "peers" in out
    assert "``" not in out and ":mod:" not in out


def test_make_example_says_how_much_it_writes(tmp_path, capsys):
    assert main(["make-example", str(tmp_path / "r0001"), "--modules", "0-1", "--trains", "4",
                 "--frames", "3", "--no-slow"]) == 0
    out = capsys.readouterr().out
    pixel_bytes = 2 * 4 * 3 * 2 * 512 * 128 * 2  # modules x trains x frames x (2, 512, 128) uint16
    assert (f"writing AGIPD1M: 2 modules x 4 trains x 3 frames of (2, 512, 128): "
            f"{pixel_bytes / 1e6:.1f} MB of pixel data before compression") in out
    files = sorted((tmp_path / "r0001").glob("*.h5"))
    on_disk = sum(f.stat().st_size for f in files)
    assert on_disk >= pixel_bytes
    assert f"({len(files)} files, {on_disk / 1e6:.1f} MB)" in out


# ----- xfeldata monitor --------------------------------------------------------------
def _monitor_lines(source, wait: float = 0, **serve_kwargs) -> list[str]:
    """The per-train lines of ``monitor`` on 5 trains of ``serve(source, **serve_kwargs)``."""
    import io
    import time

    from xfeldata.bridge import serve
    from xfeldata.bridge.cli import monitor

    out = io.StringIO()
    with serve(source, background=True, **serve_kwargs) as handle:
        time.sleep(wait)
        assert monitor(handle.endpoint, ntrains=5, timeout=10, out=out) == 0
    return [line for line in out.getvalue().splitlines() if line.startswith("train ")]


def test_monitor_rate_does_not_count_the_train_that_waited_for_the_client():
    import re

    from xfeldata.bridge import Simulator

    # the server has the first train ready before the client asks
    lines = _monitor_lines(Simulator("AGIPD", modules=[0], frames=2), wait=0.5, ntrains=20, rate=10)
    assert "trains/s" not in lines[0] and "trains/s" not in lines[1]
    rates = [float(m.group(1)) for line in lines[2:] if (m := re.search(r"([\d.]+) trains/s", line))]
    assert len(rates) == 3 and all(r < 13 for r in rates)  # rate=10 caps it (the burst read > 100)


def test_monitor_shows_when_replayed_data_was_recorded(extra_data_runs):
    """Trains replayed from files carry their recording time: not an age of years."""
    run = xd.open_run(extra_data_runs["lpd_missed_train"])
    lines = _monitor_lines(run, ntrains=5)
    # the fixture's clock: train 10000 at 2020-01-01 00:16:40 UTC
    assert all("recorded 2020-01-01 00:16:40 UTC (replayed?)" in line for line in lines), lines
    assert all(" age " not in line for line in lines)


# ----- open_run(data="all") -----------------------------------------------------------
def test_open_run_data_all_reads_proc_sources_from_proc_as_extra_data(tmp_path, monkeypatch):
    """Raw and corrected AGIPD share source names; "all" takes them from proc, the XGMs from raw."""
    import warnings

    from extra_data.tests.make_examples import make_spb_run

    proposal_dir = tmp_path / "SPB" / "201901" / "p002012"
    for kind, raw in (("raw", True), ("proc", False)):
        (proposal_dir / kind / "r0238").mkdir(parents=True)
        make_spb_run(str(proposal_dir / kind / "r0238"), raw=raw, format_version="1.0")
    monkeypatch.setenv("XFELDATA_ROOT", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "claimed by several files"
        run = xd.open_run(proposal=2012, run=238, data="all")
    theirs = ed.open_run(proposal_dir, 238, data="all", aliases=None)
    assert sorted(run.sources) == sorted(theirs.all_sources)
    module = "SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"
    assert run.key_info(module, "image.data").dtype == np.float32  # corrected, from proc
    np.testing.assert_array_equal(run.train_ids, theirs.train_ids)
    xgm = run["SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.ixPos"]
    np.testing.assert_array_equal(xgm.values, theirs["SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.ixPos.value"].ndarray())
