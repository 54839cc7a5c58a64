"""Benchmark sizes and the runs they use, written once with ``make_example`` and reused.

Two runs per size, both AGIPD-1M, 16 modules x 4 sequences, with the slow-data
aggregators ``DA01`` and ``DA02`` (``make_example`` writes each aggregator in
sequence files too, so there are 8 slow files, not 2):

- ``raw``: raw uint16 ``(frames, 2, 512, 128)`` per module, uncompressed;
- ``corr``: corrected float32 ``(frames, 512, 128)``, deflate level 1 + shuffle.

A run is reused when its directory holds a ``.complete`` marker with the same
parameters; otherwise it is written again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunSpec:
    """Parameters of one benchmark run (passed to ``make_example``)."""

    n_trains: int
    frames_per_train: int
    trains_per_sequence: int
    corrected: bool = False

    def kwargs(self) -> dict:
        kw = dict(n_trains=self.n_trains, frames_per_train=self.frames_per_train,
                  trains_per_sequence=self.trains_per_sequence, detector="AGIPD1M")
        if self.corrected:
            kw.update(corrected=True, compression="gzip")
        return kw

    def nbytes(self) -> int:
        """Pixel bytes of ``image.data`` over the whole run."""
        per_frame = 512 * 128 * (4 if self.corrected else 2 * 2)
        return 16 * self.n_trains * self.frames_per_train * per_frame


@dataclass(frozen=True)
class Size:
    """A benchmark size: the two runs and the loop counts that go with them."""

    name: str
    raw: RunSpec
    corr: RunSpec
    read_trains: int  # trains of the stacked detector reads
    iter_trains: int  # trains of the per-train iteration
    bridge_trains: int  # trains per bridge measurement
    bridge_mib: int  # MiB per module array on the bridge
    memory_case: bool = False  # run the peak-memory case


SIZES = {
    "tiny": Size("tiny", RunSpec(8, 2, 2), RunSpec(8, 2, 2, True), 4, 8, 4, 1),
    "small": Size("small", RunSpec(24, 8, 6), RunSpec(12, 8, 3, True), 10, 24, 10, 4),
    "default": Size("default", RunSpec(100, 8, 25), RunSpec(40, 8, 10, True), 10, 100, 20, 8),
    # raw run of 100 x 16 x 48 frames x 256 KiB = 18.75 GiB: more than half of 24 GB RAM
    "large": Size("large", RunSpec(100, 48, 25), RunSpec(40, 32, 10, True), 10, 100, 40, 16,
                  memory_case=True),
}


def ensure_run(data_dir: Path, size: str, kind: str, spec: RunSpec, log=print) -> Path:
    """The run directory of ``kind`` (``raw``/``corr``) at ``size``, written if needed."""
    from xfeldata.testing import make_example

    path = Path(data_dir) / size / kind
    marker = path / ".complete"
    want = json.dumps(asdict(spec), sort_keys=True)
    if marker.exists() and marker.read_text() == want:
        return path
    if path.exists():
        shutil.rmtree(path)
    log(f"writing the {kind} run of size {size} ({spec.nbytes() / 2**30:.2f} GiB of pixels) ...")
    make_example(path, **spec.kwargs())
    marker.write_text(want)
    return path
