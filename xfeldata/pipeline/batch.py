"""Batch runs: a pipeline over whole runs on a local or SLURM cluster, one results file per run.

:func:`make_cluster` makes a ``dask.distributed`` cluster: ``"local"`` is a
``LocalCluster`` of worker processes, ``"slurm"`` dask-jobqueue's
``SLURMCluster`` with the settings the facility documents for its Maxwell
cluster (a partition, cores, processes, memory and a node-local directory per
job).  :func:`run_batch` computes :func:`~xfeldata.pipeline.offline` with a
progress bar and writes the result with :func:`write_results`.

Failures are never a silent hole: a block that raises stops the run with its
trains named; a worker that dies is replaced and its blocks retried by the
scheduler (``distributed.scheduler.allowed-failures`` times), then the run
stops with ``KilledWorker``.  No results file is left behind by a failed run.
An existing results file is only replaced with ``overwrite=True``, and
:func:`run_batch` refuses before it computes anything.

Examples
--------
>>> from xfeldata.pipeline import load_script, make_cluster, run_batch   # doctest: +SKIP
>>> script = load_script("reduce.py")                                     # doctest: +SKIP
>>> with make_cluster("local", workers=2) as cluster:                     # doctest: +SKIP
...     run_batch(script.fn, "r0001", "r0001_reduce.nc", inputs=script.inputs, cluster=cluster)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..export.atomic import atomic_output, check_writable
from .blocks import offline
from .errors import PipelineError
from .steps import Inputs, Step

__all__ = ["SLURM_DEFAULTS", "compute_with_progress", "make_cluster", "run_batch", "write_results"]

#: SLURMCluster settings when not given: one job is one Maxwell node of the
#: ``exfel`` partition, 16 single-core workers sharing its memory, spilling to
#: the node's local disk.
SLURM_DEFAULTS: dict[str, Any] = {
    "queue": "exfel",
    "cores": 16,
    "processes": 16,
    "memory": "256GB",
    "walltime": "01:00:00",
    "local_directory": "/scratch",
}

#: Seconds SLURM may take to say whether it accepts a job script.
SUBMIT_TEST_TIMEOUT = 60.0


def make_cluster(kind: str = "local", *, workers: int | None = None, jobs: int = 1,
                 **slurm: Any) -> Any:
    """A ``dask.distributed`` cluster for :func:`run_batch` (use it as a context manager).

    Parameters
    ----------
    kind
        ``"local"``: a ``LocalCluster`` of ``workers`` processes (default:
        one per core), one thread each.  ``"slurm"``: a ``SLURMCluster`` that
        submits ``jobs`` jobs (``workers``, if given, is the total number of
        worker processes instead).  With ``jobs=0`` and no ``workers``
        nothing is submitted: the cluster only makes its job script.
    slurm
        ``SLURMCluster`` settings (``queue``, ``cores``, ``processes``,
        ``memory``, ``walltime``, ``local_directory``, ``account``,
        ``job_extra_directives``, ...) over :data:`SLURM_DEFAULTS`.

    Raises
    ------
    PipelineError
        ``"slurm"`` with jobs to submit, before any is submitted: SLURM's
        submit command (dask-jobqueue's, ``sbatch``) is not on ``PATH`` (not a
        login node of a SLURM cluster), or SLURM refuses the job script
        (``sbatch --test-only``, e.g. an unknown partition; its message is
        quoted) or gives no answer within :data:`SUBMIT_TEST_TIMEOUT` seconds.
    ValueError
        An unknown ``kind``.

    Notes
    -----
    A job that SLURM accepts but that never starts its workers (it waits in
    the queue, or fails on its node) is not detected: the scheduler waits for
    its workers, as dask-jobqueue does.

    Examples
    --------
    >>> with make_cluster("slurm", queue="upex", memory="128GB", jobs=0) as cluster:   # doctest: +SKIP
    ...     print(cluster.job_script())
    """
    if kind == "local":
        from distributed import LocalCluster

        n = workers or os.cpu_count() or 1
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                            dashboard_address=None)
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster

        settings = {**SLURM_DEFAULTS, **{k: v for k, v in slurm.items() if v is not None}}
        submit = shlex.split(SLURMCluster.job_cls.submit_command)  # ["sbatch"]
        if (workers or jobs) and shutil.which(submit[0]) is None:
            raise PipelineError(
                f"cannot submit SLURM jobs: SLURM's submit command {submit[0]!r} is not found on PATH; "
                "SLURM jobs are submitted from a login node of the cluster. Here, run on this machine's "
                "cores (--cluster local, make_cluster('local')) or print the job script without "
                "submitting it (--dry-run, cluster.job_script())")
        cluster = SLURMCluster(**settings)
        if workers or jobs:
            try:
                _test_submission(cluster.job_script(), submit)
            except BaseException:
                cluster.close()
                raise
        if workers:
            cluster.scale(n=workers)
        elif jobs:
            cluster.scale(jobs=jobs)
        return cluster
    raise ValueError(f"unknown cluster {kind!r}; use 'local' or 'slurm'")


def _test_submission(job_script: str, submit: list[str]) -> None:
    """Ask SLURM whether it would accept ``job_script`` (``sbatch --test-only``; nothing is submitted).

    dask-jobqueue submits jobs in the background: a refused submission (a
    wrong partition, account or limit) is only logged there, and the cluster
    waits for workers that never come.  Asked first, SLURM's reason is an error.
    """
    timeout = SUBMIT_TEST_TIMEOUT
    with tempfile.TemporaryDirectory(prefix="xfeldata-slurm-") as tmp:
        script = Path(tmp) / "job.sh"
        script.write_text(job_script)
        command = [*submit, "--test-only", str(script)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"SLURM gave no answer in {timeout:g} s to {submit[0]} --test-only "
                                "(is its controller reachable from here?); no job was submitted") from None
    if done.returncode != 0:
        said = "; ".join(line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip())
        raise PipelineError(f"SLURM refused the job script ({submit[0]} --test-only exited with "
                            f"{done.returncode}: {said or 'no message'}); no job was submitted. Check the "
                            "partition (--queue), cores, memory and walltime; --dry-run prints the script")


def compute_with_progress(result: xr.Dataset | xr.DataArray, client: Any = None,
                          progress: bool = True, desc: str = "blocks") -> xr.Dataset | xr.DataArray:
    """Compute a lazy result, on ``client``'s cluster or dask's default scheduler, with a tqdm bar.

    Raises the first block's error (named by its trains) and cancels the rest.
    """
    from tqdm.auto import tqdm

    if client is None:
        from tqdm.dask import TqdmCallback

        if not progress:
            return result.compute()
        with TqdmCallback(desc=desc):
            return result.compute()
    from distributed import as_completed, futures_of, wait

    persisted = client.persist(result)
    futures = futures_of(persisted)
    try:
        with tqdm(total=len(futures), desc=desc, disable=not progress) as bar:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()  # raises the task's exception
                bar.update()
        wait(futures)
        return persisted.compute()
    except BaseException:
        client.cancel(futures)
        raise


def _netcdf_attr(value: Any) -> Any:
    if isinstance(value, (str, bytes, int, float, np.number, np.ndarray)) and not isinstance(value, bool):
        return value
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return str(value)


def write_results(result: xr.Dataset | xr.DataArray, path: str | os.PathLike,
                  attrs: dict[str, Any] | None = None, *, overwrite: bool = False) -> Path:
    """Write a computed result as one netCDF-4 file (h5netcdf), atomically.

    The file is written under a temporary name in the same directory and
    renamed when complete, so a file at ``path`` is always whole, as every
    xfeldata writer does (:func:`xfeldata.export.atomic.atomic_output`).
    Attributes netCDF cannot hold (None, booleans, mappings) are written as
    text or integers; ``attrs`` are added to the file's global attributes.

    Parameters
    ----------
    result
        A computed Dataset, or a DataArray (written as one variable named
        after it, else ``result``).
    path
        The results file; missing parent directories are made.
    attrs
        Extra global attributes.
    overwrite
        Replace an existing file (else :class:`FileExistsError`, and
        nothing is written).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    PipelineError
        A variable name holds ``/`` (netCDF would make it a group).

    Examples
    --------
    >>> ds = xr.Dataset({"sum": ("trainId", [1.0, 2.0])},
    ...                 coords={"trainId": np.array([5, 6], dtype=np.uint64)})
    >>> import tempfile, pathlib
    >>> out = write_results(ds, pathlib.Path(tempfile.mkdtemp()) / "r.nc")
    >>> xr.open_dataset(out, engine="h5netcdf")["sum"].values
    array([1., 2.])
    """
    check_writable(path, overwrite)
    ds = result.to_dataset(name=result.name or "result") if isinstance(result, xr.DataArray) else result
    bad = [str(name) for name in ds.variables if "/" in str(name)]
    if bad:
        raise PipelineError(f"variable names cannot hold '/' in a netCDF file: {bad}; rename them "
                            "(e.g. ds.rename({name: name.replace('/', '.')}))")
    ds = ds.copy()
    ds.attrs = {k: _netcdf_attr(v) for k, v in {**ds.attrs, **(attrs or {})}.items() if v is not None}
    for var in ds.variables.values():
        var.attrs = {k: _netcdf_attr(v) for k, v in var.attrs.items() if v is not None}
        var.encoding = {}
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=True)
    return path


def run_batch(fn: Step, run: Any, out: str | os.PathLike, *, inputs: Inputs | None = None,
              cluster: Any = None, trains_per_block: int | None = None, progress: bool = True,
              attrs: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """``offline(fn, run)`` computed on ``cluster`` (or dask's default scheduler) and written to ``out``.

    Parameters
    ----------
    fn, inputs, trains_per_block
        As for :func:`~xfeldata.pipeline.offline`.
    run
        A Run, or a run directory to open.
    out
        The results file (:func:`write_results`).
    cluster
        A ``dask.distributed`` cluster (:func:`make_cluster`), or None.
    progress
        Show a progress bar of the blocks.
    attrs
        Extra global attributes; ``run``, ``trains``, ``created`` and the
        xfeldata version are always recorded.
    overwrite
        Replace an existing ``out``.  Without it an existing file is a
        :class:`FileExistsError` before the run is opened or anything is
        computed.

    Returns
    -------
    pathlib.Path
        The results file.

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    from .. import __version__, open_run

    check_writable(out, overwrite)  # before the hour of computing, not after
    if isinstance(run, (str, os.PathLike)):
        run_path = str(run)
        run = open_run(run)
    else:
        run_path = str(getattr(run, "path", "") or "")
    lazy = offline(fn, run, inputs=inputs, trains_per_block=trains_per_block)
    client = None
    if cluster is not None:
        from distributed import Client

        client = Client(cluster)
    try:
        computed = compute_with_progress(lazy, client, progress=progress, desc=Path(out).name)
    finally:
        if client is not None:
            client.close()
    info = {"xfeldata_version": __version__, "run": run_path, "trains": int(computed.sizes["trainId"]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return write_results(computed, out, {**info, **(attrs or {})}, overwrite=overwrite)
