"""Smoke tests of the benchmark harness and its data sets (not timed tests): tiny size only."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

pytest.importorskip("extra_data")


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    """The tiny raw and corrected runs of both benchmark data sets, written once."""
    from benchmarks.data import DATASETS, SIZES, ensure_run

    root = tmp_path_factory.mktemp("bench-data")
    size = SIZES["tiny"]
    for dataset in DATASETS:
        for kind in ("raw", "corr"):
            ensure_run(root, "tiny", kind, getattr(size, kind), lambda msg: None, dataset)
    return root


def test_control_key_case_runs_on_both_data_sets(bench_data, tmp_path):
    from benchmarks.__main__ import main

    out = tmp_path / "results.json"
    results = main(["--size", "tiny", "--repeat", "1", "--only", "control_key",
                    "--data-dir", str(bench_data), "--json", str(out)])
    assert [(r.name, r.dataset) for r in results] == [("control_key", "ours"),
                                                      ("control_key", "extra-data")]
    for res in results:
        assert {t.role for t in res.timings} == {"xfeldata", "peer", "ceiling", "ref"}
        assert all(t.median > 0 for t in res.timings)
        assert not any(n.startswith("values differ") for n in res.notes)
    data = json.loads(out.read_text())
    assert data["meta"]["datasets"] == ["ours", "extra-data"]
    assert data["cases"][1]["dataset"] == "extra-data"


def test_analysis_cases_run_against_their_peers_and_ceilings(tmp_path):
    """Every analysis case times xfeldata, its peer or a ceiling it cannot beat, and checks a target."""
    pytest.importorskip("pyFAI")
    from benchmarks.__main__ import main

    results = main(["--size", "tiny", "--repeat", "1", "--only", "assemble", "--only", "radial_profile",
                    "--only", "photon_count", "--only", "calibrate", "--data-dir", str(tmp_path)])
    assert [r.name for r in results] == ["assemble", "radial_profile", "photon_count", "calibrate",
                                         "calibrate_gain", "calibrate_lpd"]
    for res in results:
        roles = {t.role for t in res.timings}
        assert {"xfeldata", "ceiling"} <= roles, res.name
        assert all(t.median > 0 for t in res.timings)
        assert res.checks and not res.ceiling_wrong(), res.name
    assert {"peer"} <= {t.role for t in results[0].timings} & {t.role for t in results[1].timings}


def _pixel_datasets(run_dir):
    """``(file, [its image/data datasets])`` for each module file of a run."""
    for path in sorted(run_dir.glob("*AGIPD*.h5")):
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f["INSTRUMENT"].visit(names.append)
            yield path, [f["INSTRUMENT"][n] for n in names if n.endswith("image/data")]


@pytest.mark.parametrize("dataset", ["ours", "extra-data"])
def test_detector_data_is_stored_as_the_facility_writes_it(bench_data, dataset):
    base = bench_data if dataset == "ours" else bench_data / dataset
    for kind, filters in (("raw", (None, False)), ("corr", ("gzip", True))):
        for path, datasets in _pixel_datasets(base / "tiny" / kind):
            for ds in datasets:
                assert ds.chunks[0] == 1, (path.name, ds.name)
                assert (ds.compression, ds.shuffle) == filters, (path.name, ds.name)
                assert ds.id.get_storage_size() > 0, (path.name, ds.name)


def test_extra_data_mock_runs_hold_values_not_fill(bench_data):
    """The mock writers leave datasets unwritten; the benchmark data set fills them in."""
    run_dir = bench_data / "extra-data" / "tiny" / "raw"
    with h5py.File(run_dir / "RAW-R0001-DA01-S00000.h5", "r") as f:
        flux = f["CONTROL/SA1_XTD2_XGM/DOOCS/MAIN/pulseEnergy/photonFlux/value"]
        assert flux.id.get_storage_size() > 0 and np.any(flux[()] != 0)
    with h5py.File(run_dir / "RAW-R0001-AGIPD03-S00000.h5", "r") as f:
        frames = f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/3CH0:xtdf/image/data"]
        assert frames[0].std() > 0


@pytest.mark.parametrize("dataset", ["ours", "extra-data"])
@pytest.mark.parametrize("inflater", ["libdeflate", "zlib_into"])
def test_the_decompression_ceiling_decodes_the_bytes_h5py_reads(bench_data, dataset, inflater):
    from benchmarks import ceilings
    from benchmarks.data import SIZES, ensure_run

    run_dir = ensure_run(bench_data, "tiny", "corr", SIZES["tiny"].corr, lambda msg: None, dataset)
    with h5py.File(next(run_dir.glob("*AGIPD00*.h5")), "r") as f:
        train_ids = f["INDEX/trainId"][:2]
    rows = ceilings.detector_rows(run_dir, train_ids)
    expected = []
    for r in rows:
        with h5py.File(r.path, "r") as f:
            ds = f[r.dataset]
            step = ds.chunks[0]
            lo, hi = r.start - r.start % step, -(-r.stop // step) * step  # whole chunks
            expected.append(ds[lo:hi].reshape(-1).view(np.uint8))
    out = np.zeros(sum(e.size for e in expected), np.uint8)
    read, close, _ = ceilings.threaded_decode_reader(rows, inflater=inflater, out=out)
    try:
        read()
    finally:
        close()
    np.testing.assert_array_equal(out, np.concatenate(expected))


def test_a_contender_faster_than_its_ceiling_is_flagged():
    from benchmarks.harness import CaseResult, Timing, format_case

    res = CaseResult("demo", "demo", [Timing("ours", "xfeldata", [1.0]),
                                      Timing("raw copy", "ceiling", [2.0]),
                                      Timing("memcpy, for context", "ref", [0.5])])
    assert [(t.label, c.label) for t, c in res.ceiling_wrong()] == [("ours", "raw copy")]
    text = format_case(res)
    assert "ceiling wrong: [xfeldata] ours" in text
    assert "memcpy, for context (" not in text  # a ref line is no contender


def test_a_check_can_name_another_form_of_xfeldata():
    from benchmarks.harness import CaseResult, Timing

    res = CaseResult("demo", "demo", [Timing("default", "xfeldata", [4.0]),
                                      Timing("numpy", "form", [2.0]),
                                      Timing("preadv", "ceiling", [1.0])])
    res.check("headline vs ceiling", "ceiling", 0.5)
    res.check("numpy form vs ceiling", "ceiling", 0.5, of="numpy")
    assert [(c.value, c.met) for c in res.checks] == [(0.25, False), (0.5, True)]


def test_memory_case_skipped_below_large(tmp_path):
    from benchmarks.data import SIZES
    from benchmarks.memory import case_memory
    from benchmarks.offline import Context

    (res,) = case_memory(Context(SIZES["tiny"], tmp_path, tmp_path, 1))
    assert res.skipped


def test_bridge_contenders_run_each_in_a_fresh_process():
    from benchmarks.bridge import run_worker

    for name in ("xfeldata", "raw", "raw_steady", "live_buffer"):
        out = run_worker(name, ntrains=2, mib=1)
        assert out["seconds"] > 0 and out["cpu"] > 0 and out["minflt"] >= 0, name


def test_raw_ceiling_wraps_every_array_and_nothing_else():
    import numpy as np

    from benchmarks.bench_bridge import array_payloads
    from xfeldata.bridge import Simulator, encode

    data, meta = next(iter(Simulator("AGIPD", modules=[0, 1], frames=2, ntrains=1, slow=False)))
    frames = encode(data, meta)
    arrays = [v for s in sorted(data) for v in data[s].values() if isinstance(v, np.ndarray)]
    got = [frames[i] for i in array_payloads(frames)]
    assert len(got) == len(arrays) > 2
    assert all(np.shares_memory(np.asarray(f), a) for f, a in zip(got, arrays, strict=True))


def test_scaling_live_times_the_steady_state(tmp_path):
    from benchmarks.data import SIZES
    from benchmarks.offline import Context
    from benchmarks.scaling import LIVE_MODULES, case_live

    results = case_live(Context(SIZES["tiny"], tmp_path, tmp_path, 1))
    assert [r.scale for r in results] == [("live", m) for m in LIVE_MODULES]
    for res in results:
        assert [t.role for t in res.timings] == ["xfeldata", "ceiling", "ref"]
        assert all(len(t.times) == 1 and t.times[0] > 0 for t in res.timings)
        assert "page faults" in res.notes[0]
