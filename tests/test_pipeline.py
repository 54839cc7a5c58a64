"""One pipeline step, ``fn(inputs(d))``, run offline (blocks of trains on dask), in batch
(a cluster of worker processes, one results file per run) and live (bridge in, bridge out).

Every mode gives the values of ``fn(inputs(run))`` computed plainly, for every train it
reports; a failing block or worker is retried or reported, never a silent hole.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import xarray as xr

import xfeldata as xd
from xfeldata.bridge import serve
from xfeldata.cli import main
from xfeldata.pipeline import PipelineError, live, load_script, make_cluster, offline, run_batch, write_results

distributed = pytest.importorskip("distributed")
karabo_bridge = pytest.importorskip("karabo_bridge")

#: Seconds any wait on sockets or clusters may take before the test fails.
TIMEOUT = 60
THRESHOLD = 3000

SCRIPT = f'''
import xarray as xr

THRESHOLD = {THRESHOLD}

def inputs(d):
    return d.detector(modules=[0, 1, 2, 3])

def fn(ds):
    """Per train: the sum of all pixels and the pixels above a threshold (gain stage 0)."""
    img = ds["image.data"].isel(gain=0)
    dims = [d for d in img.dims if d != "trainId"]
    return xr.Dataset({{"total": img.astype("f8").sum(dims), "lit": (img > THRESHOLD).sum(dims)}})
'''


def per_frame(ds: xr.Dataset) -> xr.Dataset:
    """Per frame: the mean of the recorded pixels (NaN where no module has the frame)."""
    img = ds["image.data"].isel(gain=0).astype("f4")
    return xr.Dataset({"mean": img.where(ds["present"]).mean(["module", "slow_scan", "fast_scan"]),
                       "lit": (img > THRESHOLD).sum(["pulseId", "module", "slow_scan", "fast_scan"])})


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "reduce.py"
    path.write_text(SCRIPT)
    return load_script(path)


# -- offline --------------------------------------------------------------------


@pytest.mark.parametrize("trains_per_block", [1, 5, None])
def test_offline_equals_fn_of_inputs_on_an_irregular_run(irregular_run, trains_per_block):
    """Missing modules, varying frames, a train without frames: each block sees the whole run's axes."""
    run = xd.open_run(irregular_run)
    result = offline(per_frame, run, inputs=lambda d: d.detector(), trains_per_block=trains_per_block)
    assert result["mean"].chunks is not None  # lazy
    xr.testing.assert_identical(result.compute(), per_frame(run.detector()).compute())


def test_offline_makes_one_chunk_per_block_and_keeps_a_dataarray(agipd_raw_run, script):
    run = xd.open_run(agipd_raw_run)

    def total(ds):
        return script.fn(ds)["total"]

    result = offline(total, run, inputs=script.inputs, trains_per_block=4)
    assert isinstance(result, xr.DataArray) and result.name == "total"
    assert result.chunks == ((4, 4, 2),)
    expected = total(script.inputs(run)).compute()
    xr.testing.assert_identical(result.compute(scheduler="processes"), expected)


def test_offline_step_that_drops_trains_is_an_error_naming_them(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)

    def first_only(ds):
        return ds["image.data"].isel(trainId=[0]).sum(["pulseId", "module", "gain", "slow_scan", "fast_scan"])

    with pytest.raises(PipelineError, match=r"returned 1 trains for the 5 trains (10000-10004|10005-10009)"):
        offline(first_only, run, trains_per_block=5).compute()


def test_offline_failing_block_names_its_trains(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)

    def fails_late(ds):
        if int(ds.trainId[-1]) >= 10008:
            raise ValueError("bad calibration")
        return ds["present"].sum("module")

    with pytest.raises(PipelineError, match=r"fails_late failed on trains (10006-10008|10009): ValueError: bad"):
        offline(fails_late, run, trains_per_block=3).compute()


def test_step_without_train_dimension_is_refused(agipd_raw_run):
    with pytest.raises(PipelineError, match="trainId dimension"):
        offline(lambda ds: ds["present"].sum(), xd.open_run(agipd_raw_run))


# -- scripts and files -------------------------------------------------------------


def test_load_script_needs_fn(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(PipelineError, match="defines a function fn"):
        load_script(path)
    with pytest.raises(FileNotFoundError, match="no such pipeline script"):
        load_script(tmp_path / "missing.py")


def test_write_results_replaces_atomically_and_keeps_values(tmp_path):
    ds = xr.Dataset({"x": ("trainId", np.arange(3.0), {"flag": True, "none": None})},
                    coords={"trainId": np.arange(10, 13, dtype=np.uint64)}, attrs={"files": ["a", "b"]})
    out = write_results(ds, tmp_path / "r.nc", attrs={"run": "r0001"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.nc"]
    with xr.open_dataset(out, engine="h5netcdf") as back:
        np.testing.assert_array_equal(back["x"].values, ds["x"].values)
        assert back["trainId"].dtype == np.uint64
        assert back.attrs["run"] == "r0001" and back["x"].attrs["flag"] == 1
    with pytest.raises(PipelineError, match="cannot hold '/'"):
        write_results(ds.rename(x="SRC/key"), tmp_path / "bad.nc")


def test_write_results_replaces_an_existing_file_only_with_overwrite(tmp_path):
    ds = xr.Dataset({"x": ("trainId", np.arange(3.0))}, coords={"trainId": np.arange(10, 13, dtype=np.uint64)})
    out = write_results(ds, tmp_path / "r.nc")
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match=r"r\.nc exists; pass overwrite=True \(--overwrite\) to replace it"):
        write_results(ds * 2, out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.nc"]
    write_results(ds * 2, out, overwrite=True)
    with xr.open_dataset(out, engine="h5netcdf") as back:
        np.testing.assert_array_equal(back["x"].values, [0.0, 2.0, 4.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.nc"]


# -- batch ------------------------------------------------------------------------


def test_batch_on_a_local_cluster_writes_the_results_file(irregular_run, script, tmp_path, capsys):
    out = tmp_path / "out" / "{run}-{script}.nc"
    status = main(["batch", str(script.path), str(irregular_run), "--cluster", "local", "--workers", "2",
                   "--trains-per-block", "3", "--out", str(out), "--quiet"])
    assert status == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r0001-reduce.nc"]
    expected = script.fn(script.inputs(xd.open_run(irregular_run))).compute()
    with xr.open_dataset(tmp_path / "out" / "r0001-reduce.nc", engine="h5netcdf") as got:
        xr.testing.assert_equal(got[["total", "lit"]].load(), expected)
        assert got.attrs["trains"] == len(expected.trainId) == 10  # train 10001 has no frames


def test_batch_refuses_one_file_for_several_runs(agipd_raw_run, irregular_run, script, tmp_path, capsys):
    status = main(["batch", str(script.path), str(agipd_raw_run), str(irregular_run), "--cluster", "none",
                   "--out", str(tmp_path / "results.nc")])
    assert status == 2
    assert "gives the same file for several runs: put {run} in it" in capsys.readouterr().err
    assert list(tmp_path.glob("*.nc")) == []


def test_batch_refuses_an_existing_results_file_before_computing(agipd_raw_run, tmp_path, capsys):
    out = tmp_path / "r0001.nc"
    out.write_text("an hour of work")
    called = []

    def fn(ds):
        called.append(True)
        return ds["present"].sum("module")

    with pytest.raises(FileExistsError, match="r0001.nc exists; pass overwrite=True"):
        run_batch(fn, tmp_path / "no-such-run", out, progress=False)   # refused before the run is opened
    path = tmp_path / "reduce.py"
    path.write_text("def fn(ds):\n    return ds['present'].sum('module')\n")
    args = ["batch", str(path), str(agipd_raw_run), "--cluster", "none", "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "r0001.nc exists; pass overwrite=True (--overwrite) to replace it" in capsys.readouterr().err
    assert out.read_text() == "an hour of work" and not called
    assert main([*args, "--overwrite"]) == 0
    with xr.open_dataset(out, engine="h5netcdf") as got:
        assert got.attrs["trains"] == len(xd.open_run(agipd_raw_run).train_ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0001.nc", "reduce.py"]


DIES_ONCE = '''
import os
from pathlib import Path

def fn(ds):
    marker = Path({marker!r})
    if int(ds.trainId[0]) == 10004 and not marker.exists():
        marker.touch()
        os._exit(1)            # the worker process dies mid-run
    return ds["image.data"].isel(gain=0).astype("f8").sum(["pulseId", "module", "slow_scan", "fast_scan"])
'''


def test_worker_that_dies_is_replaced_and_its_block_retried(agipd_raw_run, tmp_path):
    path = tmp_path / "dies.py"
    marker = tmp_path / "died"
    path.write_text(DIES_ONCE.format(marker=str(marker)))
    script = load_script(path)
    run = xd.open_run(agipd_raw_run)
    with make_cluster("local", workers=2) as cluster:
        out = run_batch(script.fn, run, tmp_path / "r.nc", inputs=script.inputs, cluster=cluster,
                        trains_per_block=2, progress=False)
    assert marker.exists()
    with xr.open_dataset(out, engine="h5netcdf") as got:
        expected = script.fn(script.inputs(run)).compute()
        xr.testing.assert_equal(got["image.data"].load(), expected)


KEEPS_DYING = '''
import os
from distributed import get_worker

def fn(ds):
    try:
        get_worker()
    except ValueError:         # offline() tries fn on the first train here, not on a worker
        return ds["present"].sum("module")
    os._exit(1)                # every worker that runs a block dies
'''


def test_worker_that_keeps_dying_is_reported_and_no_file_written(agipd_raw_run, tmp_path):
    import dask

    path = tmp_path / "dies.py"
    path.write_text(KEEPS_DYING)
    script = load_script(path)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with make_cluster("local", workers=1) as cluster:
            with pytest.raises(distributed.scheduler.KilledWorker):
                run_batch(script.fn, xd.open_run(agipd_raw_run).isel(trainId=slice(0, 3)),
                          tmp_path / "r.nc", inputs=lambda d: d.detector(modules=[0]), cluster=cluster,
                          trains_per_block=1, progress=False)
    assert list(tmp_path.glob("*.nc")) == [] and not list(tmp_path.glob(".r.nc*"))


#: SLURMCluster settings of the tests: no dashboard port for test workers to share.
NO_DASHBOARD = {"dashboard_address": None}


def open_slurm_clusters() -> int:
    """How many SLURMClusters are alive in this process (each test closes those it starts)."""
    from dask_jobqueue import SLURMCluster
    from distributed.core import Status
    from distributed.deploy.spec import SpecCluster

    return sum(isinstance(c, SLURMCluster) and c.status != Status.closed for c in SpecCluster._instances)


def fake_slurm(directory, sbatch: str) -> None:
    """``sbatch`` (and ``scancel``) scripts in ``directory`` that log their arguments to ``calls``."""
    log = directory / "calls"
    for name, body in {"sbatch": sbatch, "scancel": "exit 0"}.items():
        path = directory / name
        path.write_text(f'#!/bin/sh\nprintf "{name} %s\\n" "$*" >> "{log}"\n{body}\n')
        path.chmod(0o755)


def test_slurm_without_sbatch_is_a_clear_error_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch here, as on a laptop
    with pytest.raises(PipelineError, match="submit command 'sbatch' is not found on PATH; SLURM jobs are "
                                            "submitted from a login node.*--cluster local.*--dry-run"):
        make_cluster("slurm", queue="upex", jobs=4, memory="256GB")
    with pytest.raises(PipelineError, match="'sbatch' is not found on PATH"):
        make_cluster("slurm", workers=2, jobs=0)
    assert open_slurm_clusters() == 0
    path = tmp_path / "photons.py"
    path.write_text("def fn(ds):\n    return ds\n")
    assert main(["batch", str(path), str(tmp_path / "r0001"), "--cluster", "slurm", "--queue", "upex",
                 "--jobs", "4", "--memory", "256GB", "--out", str(tmp_path / "{run}.nc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("xfeldata batch: error: cannot submit SLURM jobs: SLURM's submit command 'sbatch'")
    assert open_slurm_clusters() == 0 and not list(tmp_path.glob("*.nc"))


def test_slurm_refusing_the_job_script_is_a_clear_error_and_nothing_is_submitted(tmp_path, monkeypatch):
    fake_slurm(tmp_path, 'echo "sbatch: error: invalid partition specified: upexx" >&2\nexit 1')
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PipelineError, match=r"SLURM refused the job script \(sbatch --test-only exited with 1: "
                                            r"sbatch: error: invalid partition specified: upexx\); no job"):
        make_cluster("slurm", queue="upexx", jobs=4, scheduler_options=NO_DASHBOARD)
    assert open_slurm_clusters() == 0
    (call,) = (tmp_path / "calls").read_text().splitlines()
    assert call.startswith("sbatch --test-only ")


def test_slurm_that_does_not_answer_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    import sys

    from xfeldata.pipeline import batch

    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")   # killed at the timeout
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(batch, "SUBMIT_TEST_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"SLURM gave no answer in 0.5 s to sbatch --test-only"):
        make_cluster("slurm", jobs=1, scheduler_options=NO_DASHBOARD)
    assert time.monotonic() - started < 10 and open_slurm_clusters() == 0


def test_slurm_jobs_are_submitted_after_sbatch_accepts_the_script(tmp_path, monkeypatch):
    fake_slurm(tmp_path, 'case "$1" in --test-only) exit 0;; esac\necho "Submitted batch job 42"')
    monkeypatch.setenv("PATH", str(tmp_path))
    with make_cluster("slurm", queue="upex", cores=2, processes=2, memory="2GB", workers=4,
                      scheduler_options=NO_DASHBOARD) as cluster:
        deadline = time.monotonic() + TIMEOUT
        while len(cluster.workers) < 2 or any(w.job_id is None for w in cluster.workers.values()):
            assert time.monotonic() < deadline, cluster.workers
            time.sleep(0.05)
    assert open_slurm_clusters() == 0
    calls = (tmp_path / "calls").read_text().splitlines()   # asked first, then 2 jobs of 2 workers
    assert calls[0].startswith("sbatch --test-only ") and len(calls) == 5
    assert all(c.startswith("sbatch ") and "--test-only" not in c for c in calls[1:3])
    assert calls[3:] == ["scancel 42", "scancel 42"]


def test_slurm_job_script_holds_the_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))   # the job script is made without SLURM
    with make_cluster("slurm", queue="upex", cores=8, processes=4, memory="64GB", walltime="02:00:00",
                      jobs=0) as cluster:
        text = cluster.job_script()
    for line in ("#SBATCH -p upex", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00", "--nworkers 4",
                 "--local-directory /scratch"):
        assert line in text
    assert main(["batch", "reduce.py", "r0001", "--cluster", "slurm", "--queue", "exfel", "--memory", "128GB",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "#SBATCH -p exfel" in printed and "#SBATCH --cpus-per-task=16" in printed
    assert "#SBATCH --mem=" in printed and "--nworkers 16" in printed


# -- live -------------------------------------------------------------------------


def read_results(endpoint: str, n: int) -> dict[int, dict]:
    """``n`` trains from a results stream, read with the published karabo-bridge client."""
    client = karabo_bridge.Client(endpoint, sock="SUB", timeout=TIMEOUT)
    try:
        got = {}
        deadline = time.monotonic() + TIMEOUT
        while len(got) < n and time.monotonic() < deadline:
            data, meta = client.next()
            (source,) = data
            got[meta[source]["timestamp.tid"]] = (data[source], meta[source])
        return got
    finally:
        client._context.destroy(linger=0)


def test_live_results_read_by_karabo_bridge_equal_offline(agipd_raw_run, script):
    run = xd.open_run(agipd_raw_run)
    expected = offline(script.fn, run, inputs=script.inputs).compute()
    stream = serve(run, rate=20, loop=True, background=True)
    try:
        with live(script.fn, stream.endpoint, inputs=script.inputs, source="SPB_PIPELINE/REDUCE:output") as pipe:
            got = read_results(pipe.endpoint, 6)
            stats = pipe.stats
    finally:
        stream.stop()
    assert len(got) == 6
    for tid, (values, meta) in got.items():
        assert meta["source"] == "SPB_PIPELINE/REDUCE:output"
        assert sorted(values) == ["lit", "total"]
        assert values["total"] == expected["total"].sel(trainId=tid).item()
        assert values["lit"] == expected["lit"].sel(trainId=tid).item()
    assert stats.published >= 6 and stats.failed == 0 and stats.rate > 0


def test_a_module_missing_from_one_message_keeps_the_other_modules_in_their_places(agipd_raw_run):
    """Each train is its own one-train buffer: without the modules seen before, a per-module result
    of a train lacking module 1 was published one module short, module 2's value in module 1's place."""
    from xfeldata.analysis import masked_mean

    run = xd.open_run(agipd_raw_run).select("SPB_DET_AGIPD1M-1/DET/*", "image.*").isel(trainId=slice(0, 4))
    drop_tid, drop = int(run.train_ids[1]), "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    trains = [(int(tid), {s: v for s, v in data.items() if not (tid == drop_tid and s == drop)})
              for tid, data in run.trains(bridge_names=True)]

    def per_module(ds):
        return masked_mean(ds, ["pulseId", "gain", "slow_scan", "fast_scan"]).rename("mean")

    expected = offline(per_module, run).compute()
    stream = serve(trains, rate=10, loop=True, background=True)
    try:
        with live(per_module, stream.endpoint) as pipe:
            got = read_results(pipe.endpoint, 4)
    finally:
        stream.stop()
    assert set(got) == set(run.train_ids.tolist())
    for tid, (values, _) in got.items():
        want = expected.sel(trainId=tid).values.copy()
        if tid == drop_tid:
            want[1] = np.nan  # not in that message: not present, as a run without its data
        np.testing.assert_array_equal(values["mean"], want, err_msg=str(tid))


def test_live_skips_to_the_newest_train_when_fn_is_slow(agipd_raw_run):
    run = xd.open_run(agipd_raw_run).select("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.*")

    def slow(ds):
        time.sleep(0.3)
        return ds["image.data"].max(["pulseId", "module", "gain", "slow_scan", "fast_scan"])

    stream = serve(run, rate=50, loop=True, background=True)
    try:
        with live(slow, stream.endpoint) as pipe:
            pipe.wait(4, timeout=TIMEOUT)
            stats = pipe.stats
    finally:
        stream.stop()
    assert stats.skipped > 0
    assert stats.received >= stats.processed + stats.skipped - 1
    # one train at most waits while fn runs: lag stays within two calls of fn (and slack)
    assert stats.lag.max() < 2.0
    assert 0 < stats.rate < 5


def test_live_counts_failures_and_keeps_going(agipd_raw_run):
    run = xd.open_run(agipd_raw_run).select("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.*")

    def odd_trains_fail(ds):
        if int(ds.trainId[0]) % 2:
            raise ValueError("odd")
        return ds["present"].sum("module")

    stream = serve(run, rate=50, loop=True, background=True)
    try:
        with live(odd_trains_fail, stream.endpoint) as pipe:
            pipe.wait(6, timeout=TIMEOUT)
            stats = pipe.stats
            error = pipe.last_error
    finally:
        stream.stop()
    assert stats.failed > 0 and stats.published > 0
    assert isinstance(error, ValueError)


def test_live_command_publishes_and_stops_after_ntrains(agipd_raw_run, script, capsys):
    stream = serve(xd.open_run(agipd_raw_run), rate=50, loop=True, background=True)
    status = []
    try:
        thread = threading.Thread(target=lambda: status.append(
            main(["live", str(script.path), stream.endpoint, "--ntrains", "3", "--duration", str(TIMEOUT)])))
        thread.start()
        thread.join(TIMEOUT + 10)
    finally:
        stream.stop()
    assert status == [0]
    out = capsys.readouterr().out
    assert "publishing XFELDATA/PIPELINE:output on tcp://127.0.0.1:" in out
    assert "stopped: " in out and " 0 failed" in out


def test_benchmark_step_counts_photons_and_profiles_like_plain_numpy(agipd_raw_run):
    """The benchmark's example step (calibrate, photon count, radial profile), offline in blocks."""
    from benchmarks import pipeline as bench

    run = xd.open_run(agipd_raw_run)
    result = offline(bench.fn, run, inputs=bench.inputs, trains_per_block=3).compute()
    raw = run.detector()["image.data"].isel(gain=0).transpose("trainId", "pulseId", "module", ...).values
    photons = np.rint((raw.astype("f4") - bench.CONST["offset"]) * bench.CONST["gain"] / bench.PHOTON_ADU)
    photons = photons.clip(min=0)
    np.testing.assert_array_equal(result["photons"].values, photons.sum(axis=(2, 3, 4)))
    maps = photons.sum(axis=1)
    npix = np.bincount(bench.CONST["bins"].ravel())
    for i in (0, 9):
        profile = np.bincount(bench.CONST["bins"].ravel(), weights=maps[i].ravel()) / npix
        np.testing.assert_allclose(result["profile"].values[i], profile)
    assert result.sizes == {"trainId": 10, "pulseId": 2, "radius": bench.N_BINS}
