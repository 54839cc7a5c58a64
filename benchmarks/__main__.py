"""``python -m benchmarks``: run the suite and print the table (see :mod:`benchmarks`)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from . import analysis, bridge, export, live, memory, offline
from .data import SIZES, ensure_run
from .harness import CaseResult, format_case, to_json

CASES = {**offline.CASES, **bridge.CASES, **live.CASES, **memory.CASES, **analysis.CASES, **export.CASES}
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[CaseResult]:
    """Run the selected cases; print each as it finishes; return the results."""
    args = parse_args(argv)
    size = SIZES[args.size]
    names = args.only or list(CASES)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    needs_files = any(n in offline.CASES or n in ("memory", *export.CASES) for n in names)
    raw = ensure_run(args.data_dir, size.name, "raw", size.raw, log) if needs_files else Path()
    corr = (ensure_run(args.data_dir, size.name, "corr", size.corr, log)
            if "stacked_corr" in names else Path())
    ctx = offline.Context(size=size, raw=raw, corr=corr, repeat=args.repeat, log=log)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"size {size.name}, {args.repeat} measured repetitions after 1 warm-up "
          "(warm OS page cache); times are medians [min, max]")
    results: list[CaseResult] = []
    t0 = time.perf_counter()
    for name in names:
        log(f"-- {name}")
        for res in CASES[name](ctx):
            results.append(res)
            print(format_case(res), flush=True)
    met = [c for r in results for c in r.checks]
    print(f"\n{sum(c.met for c in met)} of {len(met)} targets met; "
          f"suite took {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(to_json(results, {"size": size.name, "repeat": args.repeat,
                                               "machine": info}))
    return results


if __name__ == "__main__":
    main()
