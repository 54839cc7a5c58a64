"""The same lazy arrays compute on a real ``dask.distributed`` cluster of worker processes.

Chunk tasks are plain descriptions that open their files in the worker, so the
results on two worker processes equal those of the synchronous, threaded and
multiprocessing schedulers.
"""

from __future__ import annotations

import numpy as np
import pytest

import xfeldata as xd
from xfeldata.testing.synthetic import XGM_SOURCE

distributed = pytest.importorskip("distributed")

#: Seconds any cluster operation may take before the test fails (not a timing assertion).
TIMEOUT = 60


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes, started once for this module."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    c = distributed.Client(cluster, timeout=TIMEOUT)
    try:
        c.wait_for_workers(2, timeout=TIMEOUT)
        yield c
    finally:
        c.close(timeout=TIMEOUT)
        cluster.close(timeout=TIMEOUT)


def compute_everywhere(arr, client) -> list[np.ndarray]:
    """The array computed on the cluster, then with the sync, threads and processes schedulers."""
    on_cluster = client.compute(arr).result(timeout=TIMEOUT)
    return [np.asarray(on_cluster)] + [np.asarray(arr.compute(scheduler=s))
                                       for s in ("sync", "threads", "processes")]


def test_detector_reduction_on_a_cluster_equals_local_schedulers(agipd_corr_run, client):
    """Mean of every corrected (gzip-compressed) frame of three modules, per train, pulse and module."""
    ds = xd.open_run(agipd_corr_run).detector(modules=[0, 5, 9], keys=["image.data"])
    reduction = ds["image.data"].mean(dim=("slow_scan", "fast_scan")).data
    cluster, sync, threads, processes = compute_everywhere(reduction, client)
    assert cluster.shape == (10, 2, 3)
    np.testing.assert_array_equal(cluster, sync)
    np.testing.assert_array_equal(threads, sync)
    np.testing.assert_array_equal(processes, sync)
    assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2


def test_masked_mean_on_a_cluster_equals_numpy(irregular_run, client):
    """The README's whole-run reduction, one train a chunk (partial sums combined on the cluster)."""
    from xfeldata.analysis import masked_mean

    run = xd.open_run(irregular_run)
    lazy = masked_mean(run.detector(target_bytes=2**20), ["trainId", "pulseId"]).data
    assert lazy.numblocks == (1, 1, 1, 1) and run.detector(target_bytes=2**20)["image.data"].data.numblocks[0] > 1
    on_cluster = client.compute(lazy).result(timeout=TIMEOUT)
    np.testing.assert_array_equal(on_cluster, masked_mean(run.detector(dask=False), ["trainId", "pulseId"]).values)


def test_control_key_array_on_a_cluster(agipd_raw_run, client):
    arr = xd.open_run(agipd_raw_run)[XGM_SOURCE, "beamPosition.ixPos"]
    assert arr.chunks is None  # a small key is numpy; .chunk() makes it dask, its reads travel
    results = compute_everywhere(arr.chunk().data, client)
    for result in results[1:]:
        np.testing.assert_array_equal(results[0], result)
    np.testing.assert_array_equal(results[0], arr.values)


def test_raw_pixels_of_a_train_selection_on_a_cluster(agipd_raw_run, client):
    run = xd.open_run(agipd_raw_run).sel(trainId=slice(10003, 10006))
    arr = run[("SPB_DET_AGIPD1M-1/DET/2CH0:xtdf", "image.data")].data.sum(axis=(-2, -1))
    cluster, sync, *_ = compute_everywhere(arr, client)
    assert cluster.shape == (4, 2, 2)
    np.testing.assert_array_equal(cluster, sync)


def test_assemble_on_a_cluster_equals_position_modules_and_plans_once_per_worker(agipd_geometry, client):
    """The tile plan is made once in each worker process, not in every task of every compute
    (a layout pickled into a task arrives without what was worked out from it)."""
    pytest.importorskip("numba")
    xr = pytest.importorskip("xarray")
    from xfeldata import analysis

    def count_plans():
        from xfeldata.analysis import _tiles

        made = []
        plan = _tiles.plan
        _tiles.plan = lambda *args: made.append(1) or plan(*args)
        _tiles.plan.made, _tiles.plan.original = made, plan

    def plans_made():
        from xfeldata.analysis import _tiles

        made, _tiles.plan = len(_tiles.plan.made), _tiles.plan.original
        return made

    values = np.random.default_rng(4).random((8, 2, 512, 128), np.float32)
    arr = xr.DataArray(values, dims=("pulseId", "module", "slow_scan", "fast_scan"), coords={"module": [5, 0]})
    images = analysis.assemble(arr.chunk({"pulseId": 1}), agipd_geometry).data
    client.run(count_plans)
    try:
        results = [client.compute(images).result(timeout=TIMEOUT) for _ in range(2)]
    finally:
        made = client.run(plans_made)
    full = np.full((8, 16, 512, 128), np.nan, np.float32)
    full[:, [5, 0]] = values
    expected = np.stack([agipd_geometry.position_modules(f)[0] for f in full])
    for result in results:
        np.testing.assert_array_equal(result, expected)
    assert sum(made.values()) <= len(made) and sum(made.values()) >= 1  # 8 tasks twice: once per worker at most
