"""Smoke test of the benchmark harness (not a timed test): one quick case at the tiny size."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("extra_data")


def test_control_key_case_runs(tmp_path):
    from benchmarks.__main__ import main

    out = tmp_path / "results.json"
    results = main(["--size", "tiny", "--repeat", "1", "--only", "control_key",
                    "--data-dir", str(tmp_path / "data"), "--json", str(out)])
    assert [r.name for r in results] == ["control_key"]
    roles = {t.role for t in results[0].timings}
    assert roles == {"xfeldata", "peer", "ceiling"}
    assert all(t.median > 0 for t in results[0].timings)
    data = json.loads(out.read_text())
    assert data["cases"][0]["timings"][0]["median"] > 0


def test_memory_case_skipped_below_large(tmp_path):
    from benchmarks.data import SIZES
    from benchmarks.memory import case_memory
    from benchmarks.offline import Context

    (res,) = case_memory(Context(SIZES["tiny"], tmp_path, tmp_path, 1))
    assert res.skipped


def test_bridge_contenders_run_each_in_a_fresh_process():
    from benchmarks.bridge import run_worker

    for name in ("xfeldata", "raw", "live_buffer"):
        out = run_worker(name, ntrains=2, mib=1)
        assert out["seconds"] > 0 and out["cpu"] > 0 and out["minflt"] >= 0, name
