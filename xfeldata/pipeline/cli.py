"""The ``xfeldata batch`` and ``xfeldata live`` commands (registered by :mod:`xfeldata.cli`).

Examples
--------
.. code-block:: console

    $ xfeldata batch reduce.py r0001 r0002 --cluster local --workers 2
    $ xfeldata batch reduce.py r0001 --cluster slurm --queue upex --jobs 4 --dry-run
    $ xfeldata batch reduce.py r0001 --cluster local --overwrite
    $ xfeldata live reduce.py tcp://127.0.0.1:4545 --publish tcp://127.0.0.1:4600
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_commands", "results_path"]

DEFAULT_OUT = "{run}_{script}.nc"


def results_path(template: str, run: str, script: str) -> Path:
    """The results file of one run: ``template`` with ``{run}`` (the run directory's name)
    and ``{script}`` (the script's name) filled in.

    Examples
    --------
    >>> results_path("{run}_{script}.nc", "data/r0001/", "reduce").name
    'r0001_reduce.nc'
    """
    return Path(template.format(run=Path(run).name or Path(run).resolve().name, script=script))


def _cmd_batch(args: argparse.Namespace) -> int:
    from ..export.atomic import check_writable
    from .batch import make_cluster, run_batch
    from .script import load_script

    slurm = {"queue": args.queue, "cores": args.cores, "processes": args.processes,
             "memory": args.memory, "walltime": args.walltime, "local_directory": args.local_directory}
    if args.dry_run:
        if args.cluster != "slurm":
            raise ValueError("--dry-run prints the SLURM job script: it needs --cluster slurm")
        with make_cluster("slurm", jobs=0, **slurm) as cluster:
            print(cluster.job_script())
        return 0
    script = load_script(args.script)
    outs = [results_path(args.out, run, script.name) for run in args.runs]
    if len(set(outs)) < len(outs):
        raise ValueError(f"--out {args.out!r} gives the same file for several runs: put {{run}} in it")
    for out in outs:  # every run's, before any job is submitted or run computed
        check_writable(out, args.overwrite)
    cluster = None if args.cluster == "none" else make_cluster(
        args.cluster, workers=args.workers, jobs=args.jobs, **slurm)
    try:
        for run, out in zip(args.runs, outs, strict=True):
            started = time.perf_counter()
            path = run_batch(script.fn, run, out, inputs=script.inputs, cluster=cluster,
                             trains_per_block=args.trains_per_block, progress=not args.quiet,
                             attrs={"script": str(script.path)}, overwrite=args.overwrite)
            print(f"{run}: wrote {path} in {time.perf_counter() - started:.1f} s")
    finally:
        if cluster is not None:
            cluster.close()
    return 0


def _cmd_live(args: argparse.Namespace) -> int:
    from .online import live
    from .script import load_script

    script = load_script(args.script)
    started = time.monotonic()
    with live(script.fn, args.endpoint, inputs=script.inputs, publish=args.publish,
              source=args.source, sock=args.sock) as pipe:
        print(f"publishing {args.source} on {pipe.endpoint}", flush=True)
        try:
            next_report = time.monotonic() + args.report
            while args.ntrains is None or pipe.stats.published + pipe.stats.failed < args.ntrains:
                if args.duration is not None and time.monotonic() - started > args.duration:
                    break
                time.sleep(0.05)
                if time.monotonic() >= next_report:
                    print(pipe.stats, flush=True)
                    next_report += args.report
        except KeyboardInterrupt:
            pass
        stats = pipe.stats
        error = pipe.last_error
    print(f"stopped: {stats}")
    if error is not None:
        print(f"xfeldata live: warning: {stats.failed} trains failed; last error: {error!r}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``batch`` and ``live`` to the ``xfeldata`` command's subparsers."""
    p = sub.add_parser("batch", help="run a pipeline script over whole runs, one results file per run")
    p.add_argument("script", help="Python file defining fn(ds) and optionally inputs(d)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--cluster", choices=["local", "slurm", "none"], default="local",
                   help="local worker processes (default), SLURM jobs, or none (threads here)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (local: default one per core; slurm: total, instead of --jobs)")
    p.add_argument("--queue", default=None, help="SLURM partition (default exfel)")
    p.add_argument("--cores", type=int, default=None, help="cores per SLURM job (default 16)")
    p.add_argument("--processes", type=int, default=None, help="worker processes per job (default 16)")
    p.add_argument("--memory", default=None, help="memory per SLURM job (default 256GB)")
    p.add_argument("--walltime", default=None, help="SLURM time limit (default 01:00:00)")
    p.add_argument("--local-directory", default=None, help="node-local spill directory (default /scratch)")
    p.add_argument("--jobs", type=int, default=1, help="SLURM jobs to submit (default 1)")
    p.add_argument("--trains-per-block", type=int, default=None, help="trains per task (default ~256 MiB)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="results file, {run} and {script} filled in (default %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results files (default: refuse before computing)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the SLURM job script and exit, submitting nothing (default: run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: a bar on a terminal)")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("live", help="run a pipeline script on a live bridge stream, publishing results")
    p.add_argument("script", help="Python file defining fn(ds) and optionally inputs(d)")
    p.add_argument("endpoint", help="Karabo bridge to read, e.g. tcp://127.0.0.1:4545")
    p.add_argument("--sock", choices=["REQ", "SUB", "PULL"], default="REQ",
                   help="input socket type (default %(default)s)")
    p.add_argument("--publish", default="tcp://127.0.0.1:0",
                   help="where to publish results, PUB (default %(default)s: a free port)")
    p.add_argument("--source", default="XFELDATA/PIPELINE:output",
                   help="source name of the results (default %(default)s)")
    p.add_argument("--ntrains", type=int, default=None, help="stop after this many trains (default: no limit)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: no limit)")
    p.add_argument("--report", type=float, default=5.0, help="seconds between statistics lines (default %(default)s)")
    p.set_defaults(func=_cmd_live)
