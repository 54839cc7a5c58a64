"""``python -m benchmarks``: run the suite (or ``scaling``) and print the table.

See :mod:`benchmarks` for the options; ``--help`` lists them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from . import analysis, bridge, export, live, memory, offline, scaling
from .data import DATASETS, SIZES, ensure_run
from .harness import CaseResult, format_case, to_json

#: The suite: what ``python -m benchmarks`` runs without ``--only``.
SUITE = {**offline.CASES, **bridge.CASES, **live.CASES, **memory.CASES, **analysis.CASES, **export.CASES}
CASES = {**SUITE, **scaling.CASES}
#: Cases that read the benchmark runs: run once per selected data set.
FILE_CASES = {*offline.CASES, *memory.CASES, *export.CASES, *scaling.FILE_CASES}
DEFAULT_DATA = Path(__file__).resolve().parent / "_data"


def machine() -> dict[str, str]:
    """Cores, RAM, CPU model and library versions (no paths)."""
    import dask
    import h5py
    import numpy
    import psutil
    import zmq

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "h5py": h5py.__version__,
                "hdf5": h5py.version.hdf5_version, "numpy": numpy.__version__,
                "dask": dask.__version__, "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    for mod in ("xfeldata", "extra_data", "karabo_bridge", "xarray"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except ImportError:
            versions[mod] = "not installed"
    return {"cores": str(os.cpu_count()), "ram_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
            "cpu": cpu, "os": platform.platform(terse=True),
            "loadavg_1min_at_start": f"{os.getloadavg()[0]:.2f}", **versions}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run xfeldata's benchmarks against its peers (EXtra-data, karabo-bridge) and the "
                    "hardware ceiling, and print medians, ratios and the fraction of the ceiling.")
    p.add_argument("what", nargs="?", choices=("suite", "scaling"), default="suite",
                   help="suite (default): every case but the scaling ones; scaling: the "
                        "scaling cases, their table and benchmarks/scaling.png")
    p.add_argument("--dataset", choices=(*DATASETS, "both"), default="both",
                   help="benchmark data set of the cases on files: written by xfeldata's "
                        "make_example (ours), by EXtra-data's mock writers (extra-data), or "
                        "both, one after the other (default: %(default)s)")
    p.add_argument("--size", choices=list(SIZES), default="default",
                   help="benchmark data size (default: %(default)s; large adds the "
                        "peak-memory case on a run larger than half of this machine's RAM)")
    p.add_argument("--repeat", type=int, default=5, help="measured repetitions (default 5)")
    p.add_argument("--only", action="append", choices=list(CASES), metavar="CASE",
                   help=f"run only this case (repeatable): {', '.join(CASES)}")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="where the benchmark runs are written and reused "
                        "(default: benchmarks/_data)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--plot", type=Path, default=scaling.PLOT,
                   help="where the scaling plot is written (default: benchmarks/scaling.png)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[CaseResult]:
    """Run the selected cases; print each as it finishes; return the results."""
    args = parse_args(argv)
    size = SIZES[args.size]
    default = scaling.CASES if args.what == "scaling" else SUITE
    names = args.only or list(default)
    datasets = DATASETS if args.dataset == "both" else (args.dataset,)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"size {size.name}, data sets {', '.join(datasets)}, {args.repeat} measured "
          "repetitions after 1 warm-up (warm OS page cache); times are medians [min, max]")
    results: list[CaseResult] = []
    t0 = time.perf_counter()
    on_files = [n for n in names if n in FILE_CASES]
    for dataset in datasets if on_files else ():
        ctx = _context(args, size, dataset, on_files, log)
        for name in on_files:
            results += _run_case(name, ctx, log)
    ctx = _context(args, size, datasets[0], [], log)
    for name in names:
        if name not in FILE_CASES:
            results += _run_case(name, ctx, log)
    met = [c for r in results for c in r.checks]
    wrong = sum(bool(r.ceiling_wrong()) for r in results)
    print(f"\n{sum(c.met for c in met)} of {len(met)} targets met; {wrong} case(s) with a "
          f"ceiling wrong; took {time.perf_counter() - t0:.0f} s")
    if any(n in scaling.CASES for n in names):
        print(scaling.format_table(results))
        if any(r.scale for r in results):
            log(f"plot written: {scaling.plot(results, args.plot)}")
    if args.json:
        args.json.write_text(to_json(results, {"size": size.name, "repeat": args.repeat,
                                               "datasets": list(datasets), "machine": info}))
    return results


def _context(args: argparse.Namespace, size, dataset: str, names: list[str],
             log) -> offline.Context:
    """The context of one data set, with the runs ``names`` need written (or reused)."""
    needs_raw = any(n in offline.CASES or n in memory.CASES or n in export.CASES or n in scaling.RAW_CASES
                    for n in names)
    raw = (ensure_run(args.data_dir, size.name, "raw", size.raw, log, dataset)
           if needs_raw else Path())
    corr = (ensure_run(args.data_dir, size.name, "corr", size.corr, log, dataset)
            if "stacked_corr" in names else Path())
    return offline.Context(size=size, raw=raw, corr=corr, repeat=args.repeat, log=log,
                           dataset=dataset, data_dir=args.data_dir)


def _run_case(name: str, ctx: offline.Context, log) -> list[CaseResult]:
    """Run one case, label its results with the data set (cases on files) and print them."""
    log(f"-- {name}" + (f" [{ctx.dataset}]" if name in FILE_CASES else ""))
    out = CASES[name](ctx)
    for res in out:
        if name in FILE_CASES:
            res.dataset = ctx.dataset
        print(format_case(res), flush=True)
    return out


if __name__ == "__main__":
    main()
