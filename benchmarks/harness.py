"""Timing, results and their output (table on stdout, optional JSON).

A case returns a :class:`CaseResult`: one :class:`Timing` per contender
(``xfeldata``, the ``peer``, the hardware ``ceiling``, other ``ref`` figures)
and the :class:`Check` of each target of the issue.  Ratios are time ratios of
medians, oriented so that larger is better for xfeldata:

- speed-up = peer time / xfeldata time (> 1: xfeldata is faster);
- fraction of ceiling = ceiling time / xfeldata time (1 = at the ceiling).

The ``xfeldata`` timing of a case is its headline: the path the README shows
first (the dask-backed default); other forms of xfeldata (``dask=False``,
selecting first) are ``form`` lines beside it, and a :class:`Check` may name
one of them with ``of=``.  ``ref`` lines are other figures for context (h5py,
memcpy).  A ceiling is the fastest plain way to get the same bytes, so any
contender (:data:`CONTENDERS`) faster than a ceiling of its case means the
ceiling is wrong: :meth:`CaseResult.ceiling_wrong` lists them and the table
flags them.

Examples
--------
>>> res = CaseResult("demo", "a demo case", [Timing("ours", "xfeldata", [2.0]),
...                                           Timing("copy", "ceiling", [1.0])])
>>> res.check("fraction of the ceiling", "ceiling", 0.5)
>>> res.checks[0].met, res.ceiling_wrong()
(True, [])
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Roles whose time a ceiling must not beat: xfeldata's headline, its other forms, the peers.
CONTENDERS = ("xfeldata", "form", "peer")


@dataclass
class Timing:
    """Repeated wall-clock times of one contender in one case.

    ``nbytes`` (bytes delivered per call) and ``items`` (trains per call) give
    the throughput columns.
    """

    label: str
    role: str  # "xfeldata" (the headline), "form", "peer", "ceiling" or "ref" (see CONTENDERS)
    times: list[float]
    nbytes: int | None = None
    items: int | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def gbps(self) -> float | None:
        return self.nbytes / self.median / 1e9 if self.nbytes else None

    @property
    def per_s(self) -> float | None:
        return self.items / self.median if self.items else None


@dataclass
class Check:
    """One target: ``value >= threshold`` is met."""

    what: str
    value: float
    threshold: float

    @property
    def met(self) -> bool:
        return self.value >= self.threshold


@dataclass
class CaseResult:
    """The outcome of one benchmark case."""

    name: str
    title: str
    timings: list[Timing] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    dataset: str = ""  # the benchmark data set (see benchmarks.data.DATASETS), if any
    scale: tuple[str, float] | None = None  # (series, x) of a scaling point (benchmarks.scaling)

    def get(self, role: str, label: str | None = None) -> Timing | None:
        """The first timing of ``role`` (and ``label``, if given)."""
        for t in self.timings:
            if t.role == role and (label is None or t.label == label):
                return t
        return None

    def ratio(self, role: str, label: str | None = None, of: str | None = None) -> float | None:
        """``role`` median / the headline's median (speed-up, or fraction of a ceiling).

        ``of`` names another contender (by label) to compare instead of the headline.
        """
        ours = self.get("xfeldata") if of is None else \
            next((t for t in self.timings if t.label == of), None)
        other = self.get(role, label)
        if ours is None or other is None:
            return None
        return other.median / ours.median

    def check(self, what: str, role: str, threshold: float, label: str | None = None,
              of: str | None = None) -> None:
        """Add a target check on :meth:`ratio` (skipped if a side is missing)."""
        value = self.ratio(role, label, of)
        if value is not None:
            self.checks.append(Check(what, value, threshold))

    def ceiling_wrong(self) -> list[tuple[Timing, Timing]]:
        """``(contender, ceiling)`` pairs where a contender's median beats a ceiling's."""
        ceilings = [t for t in self.timings if t.role == "ceiling"]
        return [(t, c) for c in ceilings for t in self.timings
                if t.role in CONTENDERS and t.median < c.median]


def measure(label: str, role: str, fn: Callable[[], Any], repeat: int, *,
            setup: Callable[[], Any] | None = None, warmup: int = 1,
            nbytes: int | None = None, items: int | None = None, note: str = "",
            timer: Callable[[], float] | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times unmeasured, then ``repeat`` times measured.

    ``setup`` runs (unmeasured) before every call.  If ``fn`` returns a
    :class:`SelfTimed` (it timed itself, e.g. in a subprocess), that time is
    taken instead of the wall-clock time of the call.
    """
    clock = timer or time.perf_counter
    times = []
    # Garbage is collected before every call, so that no call pays for another's; the objects alive
    # before the first are frozen (left out of collections), so that each collection is short and does
    # not walk the whole heap (37 ms with xarray, dask and pandas loaded, slowing the call after it).
    gc.collect()
    gc.freeze()
    try:
        for i in range(warmup + repeat):
            if setup is not None:
                setup()
            gc.collect()
            t0 = clock()
            out = fn()
            elapsed = clock() - t0
            if isinstance(out, SelfTimed):
                elapsed = out.seconds
            del out
            if i >= warmup:
                times.append(elapsed)
    finally:
        gc.unfreeze()
    return Timing(label, role, times, nbytes=nbytes, items=items, note=note)


@dataclass
class SelfTimed:
    """Returned by a measured function that timed itself (e.g. in a subprocess)."""

    seconds: float


# -- output ---------------------------------------------------------------------


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:7.1f} us"
    if s < 1:
        return f"{s * 1e3:7.1f} ms"
    return f"{s:7.2f} s "


def format_case(res: CaseResult) -> str:
    """One case as a block of text lines."""
    where = f" [{res.dataset}]" if res.dataset else ""
    lines = [f"== {res.name}{where}: {res.title}"]
    if res.skipped:
        lines.append(f"   skipped: {res.skipped}")
        return "\n".join(lines)
    lines.append(f"   {'contender':46s} {'median':>10s} {'min':>10s} {'max':>10s} "
                 f"{'GB/s':>7s} {'trains/s':>9s}")
    wrong = res.ceiling_wrong()
    beats = {id(t) for t, _ in wrong}
    for t in res.timings:
        gb = f"{t.gbps:7.2f}" if t.gbps is not None else " " * 7
        ps = f"{t.per_s:9.1f}" if t.per_s is not None else " " * 9
        label = f"[{t.role}] {t.label}"
        flag = "  <- ceiling wrong" if id(t) in beats else ""
        lines.append(f"   {label[:46]:46s} {_fmt_time(t.median):>10s} {_fmt_time(t.min):>10s} "
                     f"{_fmt_time(t.max):>10s} {gb} {ps}{flag}")
    ours = res.get("xfeldata")
    if ours is not None:
        for t in res.timings:
            if t is ours:
                continue
            r = t.median / ours.median
            kind = "speed-up (peer/xfeldata time)" if t.role == "peer" else \
                "fraction of ceiling (ceiling/xfeldata time)" if t.role == "ceiling" else \
                "other form (this/headline time)" if t.role == "form" else \
                "ratio (this/xfeldata time)"
            lines.append(f"   {kind} vs {t.label}: {r:.2f}")
    for t, c in wrong:
        lines.append(f"   ceiling wrong: [{t.role}] {t.label} ({_fmt_time(t.median).strip()}) "
                     f"is faster than the ceiling {c.label} ({_fmt_time(c.median).strip()})")
    for c in res.checks:
        lines.append(f"   target {c.what}: {c.value:.2f} >= {c.threshold:g} -> "
                     f"{'MET' if c.met else 'NOT MET'}")
    for n in res.notes:
        lines.append(f"   note: {n}")
    return "\n".join(lines)


def to_json(results: list[CaseResult], meta: dict[str, Any]) -> str:
    """All results (with medians and ratios) as JSON."""
    out = []
    for r in results:
        d = asdict(r)
        for td, t in zip(d["timings"], r.timings, strict=True):
            td.update(median=t.median, min=t.min, max=t.max, gbps=t.gbps, per_s=t.per_s)
        for cd, c in zip(d["checks"], r.checks, strict=True):
            cd["met"] = c.met
        d["ceiling_wrong"] = [[t.label, c.label] for t, c in r.ceiling_wrong()]
        out.append(d)
    return json.dumps({"meta": meta, "cases": out}, indent=1)
