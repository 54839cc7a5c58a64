"""Benchmarks of xfeldata against its peers (EXtra-data, karabo-bridge) and the hardware ceiling.

Run with ``python -m benchmarks [scaling] [--dataset ours|extra-data|both]
[--size tiny|small|default|large] [--repeat N] [--only CASE] [--data-dir DIR]
[--json FILE] [--plot FILE]``.  The suite writes its own runs into ``--data-dir``
(default ``benchmarks/_data``, git-ignored), two data sets in the facility's
layout (:mod:`benchmarks.data`: one with :func:`xfeldata.testing.make_example`,
one with EXtra-data's mock writers), reuses them on later invocations, and runs
every case on files once per data set.  ``scaling`` runs the scaling cases
instead (table and ``benchmarks/scaling.png``).

All timings are warm-cache: each measured call runs once unmeasured (which also
fills the OS page cache; dropping it needs root), then ``--repeat`` times.  The
figures are the median, min and max of those repetitions.

Modules
-------
harness
    Timing, results, the table and JSON output.
data
    Sizes, the two data sets and their runs.
ceilings
    Hardware ceilings: ``preadv`` of exactly the selected bytes, threaded
    libdeflate of exactly the selected chunks, h5py INDEX reads, file listing,
    memcpy (raw pyzmq lives in ``bridge``).
offline
    Cases on files: open, control key and table, stacked detector reads,
    whole-run reduction, per-train iteration.
bridge
    Karabo bridge throughput (uses ``benchmarks/bench_bridge.py`` for the peer).
live
    Live buffer latency.
memory
    Peak memory of the whole-run reduction (``--size large`` only).
scaling
    How cost grows: open for 72/288/720 files, stacked read for 1/10/100 trains,
    whole-run mean on 1 and 2 distributed workers, live receive for 1/4/16 modules.
"""
