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
