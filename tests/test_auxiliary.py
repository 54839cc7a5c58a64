"""Auxiliary sources (``REDUCTION``, ``ERRATA``): ``run.auxiliary``, ``info -x``, ``ls -x``.

Newer files list them in ``METADATA/auxiliarySources`` apart from the data
sources.  xfeldata names and reads them as EXtra-data does (its own mock run
``reduced_spb``, and files of xfeldata's writer), keeps them out of
``run.sources``, and reads them with the calls of a run.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import xfeldata as xd
from xfeldata.cli import main
from xfeldata.errors import DataIndexError, SourceNameError
from xfeldata.files.writer import FileWriter, Key

ed = pytest.importorskip("extra_data")

LITFRM = "SPB_IRU_AGIPD1M1/REDU/LITFRM:daqFilter"
ERRATA = "DA01@TRAINS_OUTSIDE_BUFFER_RANGE"


@pytest.fixture(scope="module")
def reduced(extra_data_runs):
    """EXtra-data's mock run with auxiliary sources, opened by both libraries."""
    path = extra_data_runs["reduced_spb"]
    return xd.open_run(path), ed.RunDirectory(str(path))


def test_auxiliary_source_names_are_extra_datas(reduced):
    run, ed_run = reduced
    aux, theirs = run.auxiliary, ed_run.auxiliary
    assert set(aux.reduction_sources) == theirs.reduction_sources
    assert set(aux.errata_sources) == theirs.errata_sources == {ERRATA}
    assert set(aux.all_sources) == theirs.all_sources and len(aux) == 33
    # one aggregator, and its name ends with a detector module's: no prefix
    assert "PULSE_REDUCTION/SPB_DET_AGIPD1M-1/DET/3CH0:xtdf" in aux
    assert f"AGIPD11@{LITFRM}" in aux        # in every module's files: one per aggregator
    assert not set(aux.all_sources) & set(run.sources)   # not among the data sources
    info = aux.source_info(ERRATA)
    assert (info.section, info.source, info.aggregator, len(info.files)) == (
        "ERRATA", "TRAINS_OUTSIDE_BUFFER_RANGE", "DA01", 2)


def test_auxiliary_keys_values_and_counts_equal_extra_datas(reduced):
    run, ed_run = reduced
    run, ed_run = run.isel(trainId=slice(0, 3)), ed_run.select_trains(np.s_[:3])
    for name in [ERRATA, f"AGIPD11@{LITFRM}", "PULSE_REDUCTION/SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"]:
        theirs = ed_run.auxiliary[name]
        assert set(run.auxiliary.keys(name)) == theirs.keys(), name
        for key in run.auxiliary.keys(name):
            ours = run.auxiliary[name, key]
            assert ours.dims[0] == "trainId" and ours.dtype == theirs[key].dtype, (name, key)
            np.testing.assert_array_equal(ours.values, theirs[key].ndarray(), err_msg=f"{name} {key}")
            np.testing.assert_array_equal(ours.trainId, theirs[key].train_id_coordinates())
            counts = run.auxiliary.data_counts(name, key.split(".")[0], labelled=True)
            np.testing.assert_array_equal(counts.values, theirs[key].data_counts().values)
    pattern = run.auxiliary[f"AGIPD11@{LITFRM}", "data.dataFramePattern"]
    assert pattern.shape == (3, 352) and pattern.values.any()   # filled with values, not zeros


def test_a_source_of_several_aggregators_must_be_named_with_its_prefix(reduced):
    aux = reduced[0].auxiliary
    with pytest.raises(SourceNameError, match=r"in 16 aggregators' files.*AGIPD00@"):
        aux[LITFRM]
    with pytest.raises(SourceNameError, match="not an auxiliary source"):
        aux["ABC"]
    with pytest.raises(KeyError):
        reduced[0][ERRATA]  # auxiliary sources are not run sources


def test_auxiliary_follows_the_train_selection_and_the_cache(reduced, extra_data_runs):
    run = reduced[0].sel(trainId=[10001, 10040])
    assert run.auxiliary[ERRATA, "event.originalTrainIds"].trainId.values.tolist() == [10001, 10040]
    again = xd.open_run(extra_data_runs["reduced_spb"])  # from the index cache this time
    assert again.auxiliary.all_sources == reduced[0].auxiliary.all_sources
    np.testing.assert_array_equal(again.auxiliary[ERRATA, "event.originalTrainIds"].values,
                                  reduced[0].auxiliary[ERRATA, "event.originalTrainIds"].values)
    np.testing.assert_array_equal(xd.open_run(extra_data_runs["reduced_spb"], cache=False).auxiliary[
        ERRATA, "event.types"].values, again.auxiliary[ERRATA, "event.types"].values)


@pytest.fixture(scope="module")
def written_run(tmp_path_factory):
    """Two files of xfeldata's writer (format 1.3) with auxiliary sources.

    ``DA01``: a camera and an ERRATA source; ``DA02``: a REDUCTION source named
    like the camera of DA01 plus ``:reduced`` (prefixed: its aggregator has no such
    data source) and one whose name ends with its own data source's (not prefixed).
    """
    run_dir = tmp_path_factory.mktemp("auxiliary") / "r0007"
    run_dir.mkdir()
    tids = np.arange(10000, 10004)
    with FileWriter(run_dir / "RAW-R0007-DA01-S00000.h5", tids, proposal=700000, run=7) as f:
        cam = f.add_instrument("SPB_CAM/CAM/1:daqOutput", [Key("data.image.pixels", "u2", (2, 3))])
        cam["data.image.pixels"].append(np.arange(24, dtype="u2").reshape(4, 2, 3))
        err = f.add_auxiliary("ERRATA", "TRAINS_OUTSIDE_BUFFER_RANGE",
                              [Key("event.originalTrainIds", "u8", (2,)), Key("event.deviceIds", "str", (2,))],
                              counts=[0, 1, 0, 1])
        err["event.originalTrainIds"].append(np.array([[5, 6], [7, 8]], "u8"))
        err["event.deviceIds"].append(np.array([["a", "b"], ["c", "d"]], object))
    with FileWriter(run_dir / "RAW-R0007-DA02-S00000.h5", tids, proposal=700000, run=7) as f:
        xgm = f.add_instrument("SA1_XGM/XGM/DOOCS:output", [Key("data.intensityTD", "f4", (3,))])
        xgm["data.intensityTD"].append(np.ones((4, 3), "f4"))
        red = f.add_auxiliary("REDUCTION", "PULSE_REDUCTION/SA1_XGM/XGM/DOOCS:output",
                              [Key("data.wasReduced", "u1")])
        red["data.wasReduced"].append(np.array([1, 0, 1, 1], "u1"))
        pulses = f.add_auxiliary("REDUCTION", "SPB_CAM/CAM/1:reduced", [Key("image.reductionRatio", "f8")],
                                 counts=[2, 0, 1, 1])
        pulses["image.reductionRatio"].append(np.array([0.5, 0.25, 1.0, 0.75]))
    return run_dir


def test_written_auxiliary_sources_read_as_extra_data_reads_them(written_run):
    run, ed_run = xd.open_run(written_run), ed.RunDirectory(str(written_run))
    assert set(run.auxiliary.all_sources) == ed_run.auxiliary.all_sources == {
        "DA01@TRAINS_OUTSIDE_BUFFER_RANGE", "PULSE_REDUCTION/SA1_XGM/XGM/DOOCS:output",
        "DA02@SPB_CAM/CAM/1:reduced"}
    assert set(run.auxiliary.reduction_sources) == ed_run.auxiliary.reduction_sources
    assert run.sources == sorted(ed_run.all_sources) == ["SA1_XGM/XGM/DOOCS:output", "SPB_CAM/CAM/1:daqOutput"]
    assert run["SA1_XGM/XGM/DOOCS:output", "data.intensityTD"].shape == (4, 3)
    for name in run.auxiliary.all_sources:
        for key in run.auxiliary.keys(name):
            ours = run.auxiliary[name, key]
            flat = ours.values.ravel()
            if "pulse" in ours.dims:  # several rows a train: padded with NaN on xfeldata's labels
                flat = flat[~np.isnan(flat)]
            np.testing.assert_array_equal(flat, ed_run.auxiliary[name][key].ndarray().ravel(), err_msg=key)
    errata = run.auxiliary["DA01@TRAINS_OUTSIDE_BUFFER_RANGE"]
    assert errata.trainId.values.tolist() == [10001, 10003]
    assert errata["event.deviceIds"].values.tolist() == [["a", "b"], ["c", "d"]]
    ratio = run.auxiliary["DA02@SPB_CAM/CAM/1:reduced", "image.reductionRatio"]   # 2 rows in train 10000
    assert ratio.dims[:2] == ("trainId", "pulse") and ratio.sel(trainId=10000).values.tolist() == [0.5, 0.25]


def test_info_and_ls_list_auxiliary_sources_with_x(written_run, capsys):
    assert main(["info", str(written_run)]) == 0
    assert "reduction source" not in capsys.readouterr().out
    assert main(["info", str(written_run), "-x", "--counts"]) == 0
    out = capsys.readouterr().out
    assert "2 reduction sources:\n  - DA02@SPB_CAM/CAM/1:reduced (3 of 4 trains with data)" in out
    assert "1 errata source:\n  - DA01@TRAINS_OUTSIDE_BUFFER_RANGE (2 of 4 trains with data)" in out
    assert main(["ls", "--auxiliary", str(written_run / "RAW-R0007-DA01-S00000.h5")]) == 0
    assert "ERRATA     TRAINS_OUTSIDE_BUFFER_RANGE  (2 keys)" in capsys.readouterr().out
    xd.open_run(written_run).auxiliary.info(details=True)
    assert "event.originalTrainIds" in capsys.readouterr().out


def test_a_damaged_auxiliary_index_fails_only_that_source(written_run, tmp_path):
    damaged = tmp_path / "r0007"
    damaged.mkdir()
    for path in written_run.glob("*.h5"):
        (damaged / path.name).write_bytes(path.read_bytes())
    with h5py.File(damaged / "RAW-R0007-DA01-S00000.h5", "r+") as f:
        f["INDEX/TRAINS_OUTSIDE_BUFFER_RANGE/event/count"][3] = 50   # past the end of the data
    with pytest.warns(UserWarning, match="TRAINS_OUTSIDE_BUFFER_RANGE/event"):
        run = xd.open_run(damaged, cache=False)
    with pytest.raises(DataIndexError, match="10003"):
        run.auxiliary["DA01@TRAINS_OUTSIDE_BUFFER_RANGE", "event.originalTrainIds"]
    assert run.isel(trainId=[0, 1]).auxiliary[
        "DA01@TRAINS_OUTSIDE_BUFFER_RANGE", "event.originalTrainIds"].values.tolist() == [[5, 6]]
    assert run["SPB_CAM/CAM/1:daqOutput", "data.image.pixels"].shape == (4, 2, 3)
