"""Simulated detector trains, shaped like the live stream of a facility detector.

The content comes from :mod:`xfeldata.testing.synthetic`, the same generator the
synthetic run writer uses, so a simulated stream and an example run hold the
same values for the same train IDs and seed.

Examples
--------
>>> from xfeldata.bridge import Simulator
>>> sim = Simulator("AGIPD", modules=[0, 1], frames=4, ntrains=2)
>>> trains = list(sim)
>>> [meta["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]["timestamp.tid"] for data, meta in trains]
[1000000000, 1000000001]
>>> trains[0][0]["SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"]["image.data"].shape
(4, 2, 512, 128)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..detectors.kinds import DETECTORS, DetectorKind
from ..testing import synthetic
from .protocol import make_metadata

__all__ = ["DETECTOR_ALIASES", "Simulator"]

#: Short detector names accepted by :class:`Simulator` -> kinds in ``detectors.DETECTORS``.
DETECTOR_ALIASES = {"AGIPD": "AGIPD1M", "LPD": "LPD1M", "DSSC": "DSSC1M", "LPD_MINI": "LPDMINI",
                     "EPIX": "EPIX100"}
#: First train ID of simulated streams (a realistic 10-digit ID).
FIRST_TRAIN_ID = 1_000_000_000


def detector_kind(name: str) -> DetectorKind:
    """The :class:`~xfeldata.files.layout.DetectorKind` for a simulator detector name.

    >>> detector_kind("LPD").name
    'LPD1M'
    """
    key = DETECTOR_ALIASES.get(name.upper(), name.upper())
    if key not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; use one of "
                         f"{sorted({*DETECTOR_ALIASES, *DETECTORS})}")
    return DETECTORS[key]


def _is_record(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.names is not None


class Simulator:
    """Iterable of simulated trains ``(data, metadata)`` from one detector.

    Each train has one source per detector module, named as at the facility
    (``SPB_DET_AGIPD1M-1/DET/3CH0:xtdf`` raw, ``.../CORR/3CH0:output``
    corrected, ``SPB_IRDA_JF4M/DET/JNGFR02:daqOutput``), with the keys,
    dtypes, pulse and cell IDs the file format has, plus the slow and
    instrument sources of :func:`xfeldata.testing.synthetic.slow_train` (an XGM, its
    pipeline output, motors, a camera, a digitiser).  Record (structured
    dtype) arrays such as the REMI hit list are left out: the published
    ``karabo_bridge`` client cannot decode them in protocol 2.2 (their dtype
    name is not a numpy dtype string); :func:`~xfeldata.bridge.decode` can.

    Parameters
    ----------
    detector
        ``"AGIPD"``, ``"AGIPD500K"``, ``"LPD"``, ``"LPD_MINI"``, ``"DSSC"``,
        ``"JUNGFRAU"`` or ``"EPIX"`` (or a kind name from ``detectors.DETECTORS``).
    raw
        Raw data (uint16) if true, else corrected (float32 with mask and gain).
    modules
        Module numbers to simulate; default: all of the detector's.
    frames
        Frames per train (memory cells for JUNGFRAU); default 64 (16 for JUNGFRAU,
        1 for ePix100, a camera with one frame per train).
    rate
        Trains per second to pace iteration at; None (default) as fast as possible.
    ntrains
        Number of trains; None (default) for an endless stream.
    first_train_id
        Train ID of the first train.
    seed
        Seed of the synthetic content.
    slow
        Include the slow and instrument sources (default True).

    Examples
    --------
    >>> sim = Simulator("JUNGFRAU", modules=[1], frames=2, ntrains=1, slow=False)
    >>> data, meta = next(iter(sim))
    >>> data["SPB_IRDA_JF4M/DET/JNGFR01:daqOutput"]["data.adc"].shape
    (2, 512, 1024)
    """

    def __init__(self, detector: str = "AGIPD", raw: bool = True,
                 modules: Sequence[int] | None = None, frames: int | None = None,
                 rate: float | None = None, ntrains: int | None = None,
                 first_train_id: int = FIRST_TRAIN_ID, seed: int = 0, slow: bool = True) -> None:
        self.kind = detector_kind(detector)
        self.raw = raw
        self.modules = tuple(self.kind.modules if modules is None else modules)
        unknown = set(self.modules) - set(self.kind.modules)
        if unknown:
            raise ValueError(f"{self.kind.name} has no module(s) {sorted(unknown)}; "
                             f"modules are {list(self.kind.modules)}")
        default_frames = 64 if self.kind.xtdf else self.kind.max_frames
        self.frames = default_frames if frames is None else int(frames)
        if not 0 <= self.frames <= self.kind.max_frames:
            raise ValueError(f"frames must be between 0 and {self.kind.max_frames}")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.ntrains = ntrains
        self.first_train_id = int(first_train_id)
        self.seed = seed
        self.slow = slow

    @property
    def sources(self) -> list[str]:
        """Names of the detector module sources."""
        return [self.kind.source(m, corrected=not self.raw) for m in self.modules]

    def module_data(self, module: int, train_id: int) -> dict[str, Any]:
        """One module's data for one train, as a client receives it.

        Keys with one entry per train (XTDF ``header.*``, ``trailer.*``,
        ``detector.*``; every JUNGFRAU key) lose the row axis, as in
        per-train dicts read from files; XTDF ``image.*`` keys keep one row
        per frame.
        """
        arrays = synthetic.detector_module_train(self.kind.name, module, train_id, self.frames,
                                                 corrected=not self.raw, seed=self.seed)
        out: dict[str, Any] = {}
        for key, value in arrays.items():
            per_frame = self.kind.xtdf and key.startswith("image.")
            out[key] = value if per_frame or len(value) != 1 else value[0]
        return out

    def train(self, train_id: int, timestamp: float | None = None) -> tuple[dict, dict]:
        """The ``(data, metadata)`` of one train."""
        timestamp = time.time() if timestamp is None else timestamp
        data: dict[str, dict[str, Any]] = {}
        for module, source in zip(self.modules, self.sources, strict=True):
            data[source] = self.module_data(module, train_id)
        if self.slow:
            for source, values in synthetic.slow_train(train_id, seed=self.seed).items():
                data[source] = {k: (v.item() if isinstance(v, np.generic) else v)
                                for k, v in values.items() if not _is_record(v)}
        metadata = {src: make_metadata(src, train_id, timestamp) for src in data}
        return data, metadata

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        due = time.monotonic()  # when the next train may go; a slow consumer gets no burst
        i = 0
        while self.ntrains is None or i < self.ntrains:
            if self.rate is not None:
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                due = max(due, time.monotonic()) + 1 / self.rate
            yield self.train(self.first_train_id + i)
            i += 1

    def __repr__(self) -> str:
        return (f"<Simulator {self.kind.name} {'raw' if self.raw else 'corrected'} "
                f"{len(self.modules)} modules x {self.frames} frames>")
