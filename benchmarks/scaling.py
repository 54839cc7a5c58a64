"""Scaling: how the cost grows with the work (``python -m benchmarks scaling``).

Four series, each a list of :class:`~benchmarks.harness.CaseResult` with
``scale = (series, x)``:

- ``open_first`` / ``open_again``: :func:`benchmarks.offline.case_open` on runs of
  about 72, 288 and 720 small files (16 AGIPD modules and the slow-data
  aggregators, 80 trains of 1 frame split into 4, 16 or 40 sequences; written
  once per data set into ``--data-dir``); x is 72, 288 or 720 (the extra-data
  data set has 68, 272 and 680 files: no ``DA02``);
- ``read``: stacked raw read of 1, 10 and 100 trains of the suite's raw run
  (the README's first form, ``run.detector()["image.data"].sel(trainId=...)``),
  with EXtra-data and the ``preadv`` ceiling; x is trains;
- ``reduction``: whole-run mean per module of the raw run on a
  ``dask.distributed`` ``LocalCluster`` of 1 and 2 worker processes (one
  thread each), xfeldata and EXtra-data on the same cluster; x is workers;
- ``live``: :class:`xfeldata.bridge.LiveBuffer` receiving trains of 1, 4 and 16
  AGIPD modules from :func:`xfeldata.bridge.serve` (REQ/REP on loopback), with
  raw pyzmq moving the same arrays as the ceiling, both in the steady state
  (their memory in use), and the buffer from empty as a ref; x is modules.

:func:`format_table` prints one line per point; :func:`plot` draws the series
(time per call, log-log) into ``benchmarks/scaling.png``.

Examples
--------
>>> [n for n, _ in OPEN_RUNS]
[72, 288, 720]
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import offline
from .data import RunSpec, ensure_run
from .harness import CaseResult, Timing, measure
from .offline import Context

PLOT = Path(__file__).resolve().parent / "scaling.png"
#: (files wanted, run) of the open series: 18 aggregators x 4, 16, 40 sequences.
OPEN_RUNS = [(72, RunSpec(80, 1, 20)), (288, RunSpec(80, 1, 5)), (720, RunSpec(80, 1, 2))]
READ_TRAINS = (1, 10, 100)
WORKERS = (1, 2)
LIVE_MODULES = (1, 4, 16)
LIVE_MAXLEN = 4


def _scaled(res: CaseResult, series: str, x: float) -> CaseResult:
    res.name = f"scaling_{series}"
    res.scale = (series, x)
    return res


def case_open(ctx: Context) -> list[CaseResult]:
    """Open first and again on runs of about 72, 288 and 720 files."""
    from .ceilings import run_files

    out = []
    for files, spec in OPEN_RUNS:
        run_dir = ensure_run(ctx.data_dir, "scaling", f"open{files}", spec, ctx.log, ctx.dataset)
        n = len(run_files(run_dir))
        first, again = offline.case_open(replace(ctx, raw=run_dir))
        for res in (first, again):
            res.notes.append(f"{n} files (the point of about {files} files: the extra-data "
                             "data set has no DA02 aggregator)")
        out += [_scaled(first, "open_first", files), _scaled(again, "open_again", files)]
    return out


def case_read(ctx: Context) -> list[CaseResult]:
    """Stacked raw read of 1, 10 and 100 trains: headline, EXtra-data, ``preadv`` ceiling."""
    import extra_data as ed

    import xfeldata as xd

    from . import ceilings

    run, peer = xd.open_run(ctx.raw, progress=False), ed.RunDirectory(ctx.raw)
    tids = run.train_ids
    out = []
    for n in sorted({min(n, len(tids)) for n in READ_TRAINS}):
        first, last = int(tids[0]), int(tids[n - 1])
        res = CaseResult("scaling_read", f"stacked raw read of {n} trains ({first}..{last})")

        def ours(first=first, last=last) -> np.ndarray:
            return run.detector()["image.data"].sel(trainId=slice(first, last)).values

        def theirs(first=first, last=last) -> np.ndarray:
            sel = peer.select_trains(ed.by_id[first:last + 1])
            return offline._peer_agipd(sel, raw=True)["image.data"].xarray().values

        nbytes = run.detector()["image.data"].sel(trainId=slice(first, last)).nbytes
        kw = dict(nbytes=nbytes, items=n)
        res.timings.append(measure("run.detector()['image.data'].sel(...).values", "xfeldata",
                                   ours, ctx.repeat, **kw))
        res.timings.append(measure("AGIPD1M(run.select_trains(...))['image.data'].xarray()",
                                   "peer", theirs, ctx.repeat, **kw))
        read, close, useful = ceilings.pread_reader(ceilings.detector_rows(ctx.raw, tids[:n]))
        try:
            res.timings.append(measure("preadv of just the rows, preallocated", "ceiling", read,
                                       ctx.repeat, nbytes=useful, items=n))
        finally:
            close()
        read, close, useful = ceilings.pread_reader(ceilings.detector_rows(ctx.raw, tids[:n]), fresh=True)
        try:
            res.timings.append(measure("preadv of just the rows into fresh memory (a new array "
                                       "each call)", "ref", read, ctx.repeat, nbytes=useful, items=n))
        finally:
            close()
        res.check("speed-up vs EXtra-data", "peer", 2.0)
        res.check("fraction of the preadv ceiling", "ceiling", 0.5)
        out.append(_scaled(res, "read", n))
    return out


def case_reduction(ctx: Context) -> list[CaseResult]:
    """Whole-run mean per module on a LocalCluster of 1 and 2 worker processes."""
    import extra_data as ed
    from dask.distributed import Client, LocalCluster

    import xfeldata as xd
    from xfeldata.analysis import masked_mean

    run, peer = xd.open_run(ctx.raw, progress=False), ed.RunDirectory(ctx.raw)
    nbytes = run.detector()["image.data"].nbytes
    out = []
    for workers in WORKERS:
        res = CaseResult("scaling_reduction", f"whole-run mean per module "
                         f"({nbytes / 2**30:.2f} GiB raw) on a LocalCluster of {workers} worker "
                         "process(es), 1 thread each")
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            def ours() -> np.ndarray:
                return client.compute(masked_mean(run.detector(), ["trainId", "pulseId"]).data
                                      ).result(timeout=600)

            def theirs() -> np.ndarray:
                arr = offline._peer_agipd(peer, raw=True).get_dask_array("image.data")
                return client.compute(arr.mean(axis=1).data).result(timeout=600)

            res.timings.append(measure("analysis.masked_mean(run.detector(), dims)", "xfeldata",
                                       ours, ctx.repeat, nbytes=nbytes))
            res.timings.append(measure("AGIPD1M(run).get_dask_array(...).mean(axis=1)", "peer",
                                       theirs, ctx.repeat, nbytes=nbytes))
        res.check("speed-up vs EXtra-data", "peer", 2.0)
        out.append(_scaled(res, "reduction", workers))
    return out


def _live_trains(modules: int, frames: int, n: int) -> list[tuple[dict, dict]]:
    """``n`` trains (distinct train IDs) of ``modules`` AGIPD modules, arrays shared."""
    from xfeldata.bridge import Simulator

    sim = Simulator("AGIPD", modules=range(modules), frames=frames, ntrains=1, slow=False)
    data, meta = next(iter(sim))
    tid = next(iter(meta.values()))["timestamp.tid"]
    return [(data, {s: {**m, "timestamp.tid": tid + i} for s, m in meta.items()})
            for i in range(n)]


def case_live(ctx: Context) -> list[CaseResult]:
    """LiveBuffer receive rate for trains of 1, 4 and 16 modules, in the steady state.

    The contender and the ceiling are timed once their memory is in use: the
    buffer full (``maxlen`` trains, each new one evicting the oldest) and the
    trains in flight received (:func:`benchmarks.bench_bridge.time_live_buffer`),
    the raw pyzmq ceiling after two trains.  A ref line times the buffer
    from empty (the first ``maxlen`` trains land in memory the process has
    not used, every page faulted in once).  The notes give the minor page
    faults per timed train of each (whole process).
    """
    from .bench_bridge import LIVE_IN_FLIGHT, run_raw, time_live_buffer

    n = ctx.size.bridge_trains
    frames = 2 if ctx.size.name == "tiny" else 32
    out = []
    for modules in LIVE_MODULES:
        trains = _live_trains(modules, frames, n + LIVE_MAXLEN + LIVE_IN_FLIGHT)
        arrays = [v for src in trains[0][0].values() for v in src.values()
                  if isinstance(v, np.ndarray)]
        nbytes = n * sum(a.nbytes for a in arrays)
        res = CaseResult("scaling_live", f"LiveBuffer(maxlen={LIVE_MAXLEN}) receiving {n} trains of "
                         f"{modules} AGIPD module(s) x {frames} frames from serve() (REQ/REP, "
                         f"loopback), steady state")
        kw = dict(nbytes=nbytes, items=n)
        faults: dict[str, list[float]] = {"live": [], "raw": [], "empty": []}
        contenders = [
            ("LiveBuffer(endpoint) fed by serve(trains), full", "xfeldata", "live",
             lambda f, t=trains: time_live_buffer(t, n, LIVE_MAXLEN, faults=f)),
            ("raw pyzmq REQ/REP of the same arrays, zero-copy", "ceiling", "raw",
             lambda f, t=trains: run_raw(t[0][0], n, warmup=2, faults=f)),
            ("LiveBuffer from empty (first trains into unused memory)", "ref", "empty",
             lambda f, t=trains: time_live_buffer(t, n, LIVE_MAXLEN, warmup=1, faults=f)),
        ]
        times: dict[str, list[float]] = {key: [] for _, _, key, _ in contenders}
        for i in range(1 + ctx.repeat):  # one warm-up round, then take turns
            for _, _, key, fn in contenders:
                gc.collect()
                seconds = fn(faults[key] if i else [])
                if i:
                    times[key].append(seconds)
        for label, role, key, _ in contenders:
            res.timings.append(Timing(label, role, times[key], **kw))
        res.notes.append("minor page faults per timed train (median, whole process): "
                         + ", ".join(f"{key} {statistics.median(v):.0f}" for key, v in faults.items()))
        res.check("fraction of raw pyzmq throughput", "ceiling", 0.8)
        out.append(_scaled(res, "live", modules))
        del trains, arrays
    return out


CASES: dict[str, Callable[[Context], list[CaseResult]]] = {
    "scaling_open": case_open,
    "scaling_read": case_read,
    "scaling_reduction": case_reduction,
    "scaling_live": case_live,
}
#: Scaling cases on files (run once per data set) and those that need the suite's raw run.
FILE_CASES = {"scaling_open", "scaling_read", "scaling_reduction"}
RAW_CASES = {"scaling_read", "scaling_reduction"}
_X = {"open_first": "files", "open_again": "files", "read": "trains", "reduction": "workers",
      "live": "modules"}


def _fmt(t: Timing | None) -> str:
    if t is None:
        return "-"
    return f"{t.median * 1e3:.1f} [{t.min * 1e3:.1f}, {t.max * 1e3:.1f}]"


def format_table(results: list[CaseResult]) -> str:
    """The scaling results as a Markdown table: one row per series, data set and x."""
    lines = ["| series | data set | x | xfeldata ms | peer ms | ceiling ms | speed-up | "
             "fraction of ceiling | xfeldata rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.scale:
            continue
        series, x = r.scale
        ours = r.get("xfeldata")
        rate = ""
        if ours is not None:
            rate = (f"{ours.per_s:.1f} trains/s" if ours.items else
                    f"{ours.gbps:.2f} GB/s" if ours.nbytes else
                    f"{ours.median / x * 1e3:.2f} ms/file")
        ratios = [r.ratio(role) for role in ("peer", "ceiling")]
        sp, frac = (f"{v:.2f}" if v is not None else "-" for v in ratios)
        lines.append(f"| {series} | {r.dataset or '-'} | {x:g} {_X[series]} | {_fmt(ours)} | "
                     f"{_fmt(r.get('peer'))} | {_fmt(r.get('ceiling'))} | {sp} | {frac} | "
                     f"{rate} |")
    return "\n".join(lines)


def plot(results: list[CaseResult], path: Path = PLOT) -> Path:
    """Plot every series (median time per call against x, log-log, min-max bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(r.scale[0] for r in results if r.scale))
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.6), squeeze=False)
    for ax, name in zip(axes[0], series, strict=True):
        points = [r for r in results if r.scale and r.scale[0] == name]
        lines: dict[tuple[str, str], list[tuple[float, Timing]]] = {}
        for r in points:
            for t in r.timings:
                who = {"xfeldata": "xfeldata", "peer": "peer", "ceiling": "ceiling"}.get(t.role)
                if who:
                    lines.setdefault((r.dataset or "-", who), []).append((r.scale[1], t))
        for (dataset, who), pts in lines.items():
            pts.sort(key=lambda p: p[0])
            xs = [p[0] for p in pts]
            med = np.array([p[1].median for p in pts])
            err = [med - [p[1].min for p in pts], [p[1].max for p in pts] - med]
            # colour: who; line style: data set
            marker = {"xfeldata": "o", "peer": "s", "ceiling": "^"}[who]
            color = {"xfeldata": "tab:blue", "peer": "tab:orange", "ceiling": "tab:green"}[who]
            line = ":" if dataset == "extra-data" else "-"
            where = f" ({dataset})" if dataset != "-" else ""
            ax.errorbar(xs, med, yerr=err, fmt=marker + line, color=color, capsize=2,
                        label=who + where)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({r.scale[1] for r in points})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
        ax.set_xlabel(_X[name])
        ax.set_ylabel("seconds per call (median)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
