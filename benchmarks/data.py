"""Benchmark sizes and data sets, written once and reused.

Two data sets hold the same runs, in the facility's layout, written by two
different writers, so that no figure depends on one writer alone:

- ``ours``: :func:`xfeldata.testing.make_example` (facility storage: one frame
  per HDF5 chunk; raw pixels uncompressed, corrected pixels deflate level 1 +
  shuffle);
- ``extra-data``: EXtra-data's own mock writers
  (:mod:`extra_data.tests.mockdata`: ``write_file`` with ``AGIPDModule`` and
  ``XGM``, one frame per chunk as they write it).  The mock writers create the
  datasets but leave them empty (HDF5 returns fill values without reading
  anything), so the pixel, control and instrument values are then written into
  them with h5py, from the same synthetic content as ``ours``; corrected
  ``image.data`` is created deflate level 1 + shuffle (the mock writes it
  uncompressed), everything else keeps the mock's storage.

Each data set has two runs per size, both AGIPD-1M, 16 modules x N sequences:

- ``raw``: raw uint16 ``(frames, 2, 512, 128)`` per module;
- ``corr``: corrected float32 ``(frames, 512, 128)``.

``ours`` also writes the slow-data aggregators ``DA01`` and ``DA02`` in every
sequence; ``extra-data`` writes ``DA01`` (the XGM, with its control keys and
``:output`` channel) in every sequence.  The sources the cases read
(``SA1_XTD2_XGM/DOOCS/MAIN``, its ``:output``, ``SPB_DET_AGIPD1M-1/DET/<n>CH0:xtdf``)
have the same names in both.

A run is reused when its directory holds a ``.complete`` marker with the same
parameters; otherwise it is written again.

Examples
--------
>>> SIZES["default"].raw.nbytes() / 2**30
3.125
>>> DATASETS
('ours', 'extra-data')
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

#: The data sets, in the order the suite runs them.
DATASETS = ("ours", "extra-data")
#: Bumped when a writer changes what it writes (a marker mismatch rewrites the run).
WRITER_VERSION = 2
FIRST_TRAIN = 10000
DETECTOR = "SPB_DET_AGIPD1M-1"
XGM = "SA1_XTD2_XGM/DOOCS/MAIN"


@dataclass(frozen=True)
class RunSpec:
    """Parameters of one benchmark run."""

    n_trains: int
    frames_per_train: int
    trains_per_sequence: int
    corrected: bool = False

    def kwargs(self) -> dict:
        """Keyword arguments of ``make_example`` (facility storage, its default)."""
        return dict(n_trains=self.n_trains, frames_per_train=self.frames_per_train,
                    trains_per_sequence=self.trains_per_sequence, detector="AGIPD1M",
                    corrected=self.corrected, first_train_id=FIRST_TRAIN)

    def nbytes(self) -> int:
        """Pixel bytes of ``image.data`` over the whole run."""
        per_frame = 512 * 128 * (4 if self.corrected else 2 * 2)
        return 16 * self.n_trains * self.frames_per_train * per_frame

    def sequences(self) -> int:
        """Sequence files per aggregator."""
        return -(-self.n_trains // self.trains_per_sequence)


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
    "tiny": Size("tiny", RunSpec(8, 2, 4), RunSpec(8, 2, 4, True), 4, 8, 4, 1),
    "small": Size("small", RunSpec(24, 8, 6), RunSpec(12, 8, 3, True), 10, 24, 10, 4),
    "default": Size("default", RunSpec(100, 8, 25), RunSpec(40, 8, 10, True), 10, 100, 20, 8),
    # raw run of 100 x 16 x 48 frames x 256 KiB = 18.75 GiB: more than half of 24 GB RAM
    "large": Size("large", RunSpec(100, 48, 25), RunSpec(40, 32, 10, True), 10, 100, 40, 16,
                  memory_case=True),
}


def ensure_run(data_dir: Path, size: str, kind: str, spec: RunSpec,
               log: Callable[[str], None] = print, dataset: str = "ours") -> Path:
    """The run directory of ``kind`` (``raw``/``corr``/any name) at ``size`` in ``dataset``,
    written if needed.

    Runs of ``ours`` stay where earlier versions of the suite wrote them
    (``<data_dir>/<size>/<kind>``); other data sets go to
    ``<data_dir>/<dataset>/<size>/<kind>``.
    """
    if dataset not in WRITERS:
        raise ValueError(f"unknown benchmark data set {dataset!r}; choose from {DATASETS}")
    base = Path(data_dir) if dataset == "ours" else Path(data_dir) / dataset
    path = base / size / kind
    marker = path / ".complete"
    want = json.dumps({**asdict(spec), "dataset": dataset, "writer": WRITER_VERSION},
                      sort_keys=True)
    if marker.exists() and marker.read_text() == want:
        return path
    if path.exists():
        shutil.rmtree(path)
    log(f"writing the {kind} run of size {size} with the {dataset} writer "
        f"({spec.nbytes() / 2**30:.2f} GiB of pixels) ...")
    WRITERS[dataset](path, spec)
    marker.write_text(want)
    return path


def write_ours(path: Path, spec: RunSpec) -> None:
    """Write ``spec`` with :func:`xfeldata.testing.make_example` (facility storage)."""
    from xfeldata.testing import make_example

    make_example(path, **spec.kwargs())


# -- EXtra-data's mock writers ---------------------------------------------------------


def _mock_module_class():
    """``AGIPDModule`` with corrected ``image.data`` deflate level 1 + shuffle, as the
    calibration pipeline writes it (the mock writes it uncompressed)."""
    from extra_data.tests.mockdata.detectors import AGIPDModule

    class FacilityAGIPDModule(AGIPDModule):
        @property
        def image_keys(self):
            keys = super().image_keys
            if self.raw:
                return keys
            return [(k, t, d, {"compression": "gzip", "compression_opts": 1, "shuffle": True}
                     if k == "data" else kw) for k, t, d, kw in keys]
    return FacilityAGIPDModule


def _fill_module(path: Path, module: int, source: str, train_ids: range, spec: RunSpec) -> None:
    """Write the synthetic pixel values of ``module`` into a mock-written file."""
    from xfeldata.testing import synthetic as syn

    with h5py.File(path, "r+") as f:
        image = f[f"INSTRUMENT/{source}/image"]
        n = spec.frames_per_train
        for i, tid in enumerate(train_ids):
            values = syn.detector_module_train("AGIPD1M", module, tid, n,
                                               corrected=spec.corrected)
            rows = np.s_[i * n:(i + 1) * n]
            for key in ("data", "mask", "gain"):
                if key in image:
                    image[key][rows] = values[f"image.{key}"].reshape(image[key][rows].shape)


def _fill_unwritten(path: Path) -> None:
    """Give every CONTROL and INSTRUMENT dataset the mock left unwritten (no storage)
    deterministic numeric values, so reads read bytes instead of fill values."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))

    with h5py.File(path, "r+") as f:
        datasets = []

        def visit(name: str, obj) -> None:
            if (hasattr(obj, "dtype") and obj.dtype.kind in "iuf" and obj.size
                    and obj.id.get_storage_size() == 0):
                datasets.append(obj)
        for top in ("CONTROL", "INSTRUMENT"):
            if top in f:
                f[top].visititems(visit)
        for ds in datasets:
            if ds.dtype.kind == "f":
                ds[...] = rng.random(ds.shape, dtype=np.float64).astype(ds.dtype)
            else:
                hi = min(np.iinfo(ds.dtype).max, 1000)
                ds[...] = rng.integers(0, hi, ds.shape).astype(ds.dtype)


def write_extra_data(path: Path, spec: RunSpec) -> None:
    """Write ``spec`` with EXtra-data's mock writers, then fill in the values (see above)."""
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.xgm import XGM as MockXGM

    module_class = _mock_module_class()
    path.mkdir(parents=True, exist_ok=True)
    prefix = "CORR" if spec.corrected else "RAW"
    for seq in range(spec.sequences()):
        first = seq * spec.trains_per_sequence
        ntrains = min(spec.trains_per_sequence, spec.n_trains - first)
        first_train = FIRST_TRAIN + first
        for m in range(16):
            if spec.corrected:
                source = f"{DETECTOR}/CORR/{m}CH0:output"
                dev = module_class(f"{DETECTOR}/CORR/{m}CH0", channel_name="output", raw=False,
                                   frames_per_train=spec.frames_per_train,
                                   legacy_name=f"{DETECTOR}/DET/{m}CH0")
            else:
                source = f"{DETECTOR}/DET/{m}CH0:xtdf"
                dev = module_class(f"{DETECTOR}/DET/{m}CH0",
                                   frames_per_train=spec.frames_per_train)
            file = path / f"{prefix}-R0001-AGIPD{m:02}-S{seq:05}.h5"
            write_file(str(file), [dev], ntrains=ntrains, firsttrain=first_train,
                       chunksize=32, format_version="1.0")
            _fill_module(file, m, source, range(first_train, first_train + ntrains), spec)
            _fill_unwritten(file)
        file = path / f"{prefix}-R0001-DA01-S{seq:05}.h5"
        write_file(str(file), [MockXGM(XGM)], ntrains=ntrains, firsttrain=first_train,
                   chunksize=32, format_version="1.0")
        _fill_unwritten(file)


#: The writer of each data set.
WRITERS: dict[str, Callable[[Path, RunSpec], None]] = {
    "ours": write_ours,
    "extra-data": write_extra_data,
}
