"""Benchmarks of xfeldata against its peers (EXtra-data, karabo-bridge) and the hardware ceiling.

Run with ``python -m benchmarks [--size tiny|small|default|large] [--repeat N]
[--only CASE] [--data-dir DIR] [--json FILE]``.  The suite writes its own runs
with :func:`xfeldata.testing.make_example` into ``--data-dir`` (default
``benchmarks/_data``, git-ignored) and reuses them on later invocations.

All timings are warm-cache: each measured call runs once unmeasured (which also
fills the OS page cache; dropping it needs root), then ``--repeat`` times.  The
figures are the median, min and max of those repetitions.

Modules
-------
harness
    Timing, results, the table and JSON output.
data
    Sizes and the benchmark runs.
ceilings
    Hardware ceilings: h5py reads, ``read_direct_chunk``, memcpy, threaded
    decompression, raw pyzmq.
offline
    Cases on files: open, control key and table, stacked detector reads,
    whole-run reduction, per-train iteration.
bridge
    Karabo bridge throughput (uses ``benchmarks/bench_bridge.py`` for the peer).
live
    Live buffer latency.
memory
    Peak memory of the whole-run reduction (``--size large`` only).
"""
