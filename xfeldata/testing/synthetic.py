"""Realistic synthetic content for European XFEL runs, shared by the file writer
(:mod:`xfeldata.testing.example`) and the live-bridge simulator.

Everything here is pure numpy and deterministic: a value depends only on the
``seed``, the source (detector kind and module, or slow source and key), the
train ID and, for detector data, the frame index within the train.  A test
can therefore recompute what any train of a written run must contain, however
the run was split into files, and the simulator streams the same content.

Detector pixel data is a per-module pedestal plus noise plus sparse photon
hits.  To be fast (several hundred MB/s on one core) the noise comes from a
cached block of noise frames per detector kind; each frame picks one of them
by a hash of ``(seed, kind, module, train_id, frame)`` and adds the module's
pedestal with a small per-train drift, then a few hits at hashed positions.

Examples
--------
>>> d = detector_module_train("AGIPD1M", 3, 10000, 4)
>>> d["image.data"].shape, d["image.data"].dtype.name
((4, 2, 512, 128), 'uint16')
>>> d["image.cellId"].ravel().tolist()
[0, 1, 2, 3]
>>> slow = slow_train(10000)
>>> slow[XGM_SOURCE]["beamPosition.ixPos"].dtype.name
'float32'
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..detectors.kinds import DETECTORS, DetectorKind

__all__ = [
    "CAMERA_SOURCE", "CONTROL_SOURCES", "DIGITISER_SOURCE", "EMPTY_SOURCES",
    "INSTRUMENT_SOURCES", "KeySpec", "MOTOR_SOURCES", "REMI_SOURCE", "RUN_ONLY_SOURCES",
    "RUN_ONLY_VALUES", "SLOW_SOURCES", "SlowSource", "XGM_OUTPUT", "XGM_SOURCE",
    "ADU_PER_PHOTON", "detector_module_train", "detector_keys", "detector_photons", "slow_train", "slow_trains",
    "train_frame_counts", "train_timestamp_ns",
]

# --------------------------------------------------------------------------
# Deterministic hashing (counter-based randomness, vectorised)
# --------------------------------------------------------------------------

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_C1 = _U64(0xBF58476D1CE4E5B9)
_C2 = _U64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> _U64(30))) * _C1
    x = (x ^ (x >> _U64(27))) * _C2
    return x ^ (x >> _U64(31))


def _tag(text: str) -> int:
    return zlib.crc32(text.encode())


def _hash(*parts) -> np.ndarray:
    """Hash integers / integer arrays (broadcast together) to uint64 arrays."""
    h = np.zeros(1, dtype=np.uint64)
    for part in parts:
        p = np.atleast_1d(np.asarray(part)).astype(np.uint64)
        h = _mix(h ^ p)
    return h


def _uniform(*parts) -> np.ndarray:
    """Uniform floats in [0, 1) from hashed parts."""
    return (_hash(*parts) >> _U64(11)).astype(np.float64) * 2.0**-53


def _normal(*parts) -> np.ndarray:
    """Standard normal floats from hashed parts (Box-Muller)."""
    u1 = _uniform(*parts, 1)
    u2 = _uniform(*parts, 2)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------

#: Time (ns since the epoch, UTC) of train 0 in synthetic runs: train IDs count
#: 10 per second, so train 10000 is at 2023-03-14T10:00:00Z.
TRAIN_EPOCH_NS = 1678788000 * 10**9 - 10000 * 10**8
#: Nanoseconds between trains (10 Hz).
TRAIN_PERIOD_NS = 10**8


def train_timestamp_ns(train_ids) -> np.ndarray:
    """Nominal start time of trains, uint64 ns since the epoch (10 trains/s).

    Examples
    --------
    >>> int(train_timestamp_ns(10001)[0] - train_timestamp_ns(10000)[0])
    100000000
    """
    tids = np.atleast_1d(np.asarray(train_ids, dtype=np.uint64)).astype(np.int64)
    return (TRAIN_EPOCH_NS + tids * TRAIN_PERIOD_NS).astype(np.uint64)


def train_frame_counts(train_ids, frames_per_train: int, *, varying: bool = False,
                       seed: int = 0) -> np.ndarray:
    """Number of frames (pulses) per train.

    Constant ``frames_per_train`` unless ``varying``: then each train has between
    about half and all of ``frames_per_train`` frames, chosen by a hash of the
    train ID, and the second train of the array has none (a train that the
    detector recorded without images).

    Examples
    --------
    >>> train_frame_counts([1, 2, 3], 4).tolist()
    [4, 4, 4]
    >>> train_frame_counts(range(10000, 10004), 4, varying=True).tolist()[1]
    0
    """
    tids = np.atleast_1d(np.asarray(train_ids, dtype=np.uint64))
    counts = np.full(len(tids), frames_per_train, dtype=np.int64)
    if varying and frames_per_train > 0:
        span = frames_per_train // 2 + 1
        counts -= (_hash(seed, _tag("frames"), tids) % _U64(span)).astype(np.int64)
        if len(counts) >= 3:
            counts[1] = 0
    return counts


# --------------------------------------------------------------------------
# Detector modules
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    """Raw signal model of one detector family (ADU)."""

    pedestal: float  # mean pedestal
    pedestal_sigma: float  # pixel-to-pixel pedestal spread
    noise: float  # per-frame noise sigma
    adu_per_photon: float
    hits_per_frame: int
    max_adu: int
    gain_pedestal: float = 0.0  # AGIPD: the digital gain plane


_PROFILES = {
    "AGIPD": _Profile(5000, 300, 8, 60, 64, 16383, gain_pedestal=4800),
    "LPD": _Profile(1000, 80, 5, 40, 64, 4095),
    "DSSC": _Profile(40, 5, 1.2, 12, 64, 511),
    "JNGFR": _Profile(3000, 200, 10, 45, 512, 16383),
    "EPIX": _Profile(1500, 100, 4, 60, 256, 16383),
}

#: Noise frames cached per detector kind (the per-frame noise is one of these).
NOISE_BLOCK_FRAMES = {"xtdf": 64, "jungfrau": 16}

#: Per-train bookkeeping keys of XTDF modules: key -> (dtype, entry shape).
_XTDF_TRAIN_KEYS = {
    "header.dataId": ("u8", ()),
    "header.linkId": ("u8", ()),
    "header.magicNumberBegin": ("i1", (8,)),
    "header.majorTrainFormatVersion": ("u4", ()),
    "header.minorTrainFormatVersion": ("u4", ()),
    "header.pulseCount": ("u8", ()),
    "header.reserved": ("u1", (16,)),
    "header.trainId": ("u8", ()),
    "trailer.checksum": ("i1", (16,)),
    "trailer.magicNumberEnd": ("i1", (8,)),
    "trailer.status": ("u8", ()),
    "trailer.trainId": ("u8", ()),
    "detector.data": ("u1", None),  # size per kind, see _DETECTOR_DATA_SIZE
    "detector.trainId": ("u8", ()),
}
_DETECTOR_DATA_SIZE = {"AGIPD": 5408, "LPD": 416, "DSSC": 416}
_XTDF_MAGIC = np.frombuffer(b"XTDF\0\0\0\0", dtype=np.int8)


def _kind(kind: str) -> DetectorKind:
    try:
        return DETECTORS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known: {sorted(DETECTORS)}") from None


def _profile(det: DetectorKind) -> _Profile:
    return _PROFILES[det.aggregator_prefix]


def _frame_shape(det: DetectorKind, corrected: bool) -> tuple[int, ...]:
    return det.corrected_entry_shape if corrected else det.raw_entry_shape


def detector_keys(kind: str, *, corrected: bool = False,
                  n_cells: int | None = None) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Keys of one module's source: ``{key: (dtype, entry shape)}``.

    The entry shape is the shape of one row (without the leading row axis), as
    in :func:`detector_module_train`.  ``n_cells`` is the number of memory
    cells of JUNGFRAU rows (default: the kind's maximum, 16).

    Examples
    --------
    >>> detector_keys("LPD1M")["image.data"]
    (dtype('uint16'), (1, 256, 256))
    >>> detector_keys("JUNGFRAU", n_cells=1)["data.adc"][1]
    (1, 512, 1024)
    """
    det = _kind(kind)
    if not det.xtdf and not det.cell_axis:  # a camera: one frame per train (ePix100)
        keys = {
            det.data_key: (np.dtype("f4" if corrected else "u2"), _frame_shape(det, corrected)),
            "data.frameNumber": (np.dtype("u8"), ()),
            "data.trainId": (np.dtype("u8"), ()),
            "data.timestamp": (np.dtype("f8"), ()),
        }
        if corrected:
            keys["data.mask"] = (np.dtype("u4"), det.corrected_entry_shape)
        return keys
    if not det.xtdf:
        cells = det.max_frames if n_cells is None else n_cells
        pix = (cells, *det.raw_entry_shape)
        keys = {
            "data.adc": (np.dtype("f4" if corrected else "u2"), pix),
            "data.gain": (np.dtype("u1"), pix),
            "data.memoryCell": (np.dtype("u1"), (cells,)),
            "data.frameNumber": (np.dtype("u8"), (cells,)),
            "data.trainId": (np.dtype("u8"), ()),
            "data.timestamp": (np.dtype("f8"), (cells,)),
        }
        if corrected:
            keys["data.mask"] = (np.dtype("u4"), pix)
        return keys
    one = () if corrected else (1,)
    keys = {
        "image.data": (np.dtype("f4" if corrected else "u2"), _frame_shape(det, corrected)),
        "image.pulseId": (np.dtype("u8"), one),
        "image.cellId": (np.dtype("u2"), one),
        "image.trainId": (np.dtype("u8"), one),
        "image.length": (np.dtype("u4"), one),
        "image.status": (np.dtype("u2"), one),
    }
    if corrected:
        keys["image.mask"] = (np.dtype("u4"), det.corrected_entry_shape)
        keys["image.gain"] = (np.dtype("u1"), det.corrected_entry_shape)
    for key, (dt, shape) in _XTDF_TRAIN_KEYS.items():
        if shape is None:
            shape = (_DETECTOR_DATA_SIZE[det.aggregator_prefix],)
        keys[key] = (np.dtype(dt), shape)
    return keys


@lru_cache(maxsize=16)
def _noise_block(kind: str, seed: int, corrected: bool) -> np.ndarray:
    """Cached noise frames of one kind (shared by all its modules)."""
    det = _kind(kind)
    prof = _profile(det)
    n = NOISE_BLOCK_FRAMES["xtdf" if det.xtdf else "jungfrau"]
    rng = np.random.default_rng([seed, _tag(kind), int(corrected), 1])
    shape = (n, *_frame_shape(det, corrected))
    if corrected:
        # Quantised to 1/32 photon, as corrected data often is after rounding,
        # so that compressed corrected files are realistically small.
        return (np.round(rng.normal(0.0, 0.08, size=shape) * 32) / 32).astype(np.float32)
    # Raw noise is stored with an offset of 64 ADU so it fits uint16; the
    # pedestal is stored 64 ADU lower to compensate.
    noise = rng.normal(64.0, prof.noise, size=shape)
    return np.clip(noise, 0, 127).astype(np.uint16)


@lru_cache(maxsize=64)
def _pedestal(kind: str, module: int, seed: int) -> np.ndarray:
    """Cached raw pedestal of one module (minus the noise offset)."""
    det = _kind(kind)
    prof = _profile(det)
    rng = np.random.default_rng([seed, _tag(kind), module, 2])
    ped = rng.normal(prof.pedestal, prof.pedestal_sigma, size=det.raw_entry_shape)
    if prof.gain_pedestal and det.xtdf:  # AGIPD: second plane is the gain signal
        ped[1] = rng.normal(prof.gain_pedestal, prof.pedestal_sigma / 2,
                            size=det.raw_entry_shape[1:])
    return np.clip(ped - 64, 0, prof.max_adu - 200).astype(np.uint16)


@lru_cache(maxsize=64)
def _bad_pixels(kind: str, module: int, seed: int) -> np.ndarray:
    """Cached corrected-data bad pixel mask (uint32 bit flags) of one module."""
    det = _kind(kind)
    shape = det.corrected_entry_shape
    rng = np.random.default_rng([seed, _tag(kind), module, 3])
    mask = np.zeros(shape, dtype=np.uint32)
    bad = rng.random(shape) < 0.005
    mask[bad] = rng.choice(np.array([1, 2, 4, 8, 32, 256], dtype=np.uint32), size=int(bad.sum()))
    return mask


def _hits(kind: str, module: int, train_id: int, frames: np.ndarray, seed: int):
    """Photon hits of frames: ``(rows, flat pixel positions, photons)``, each ``(n, hits_per_frame)``."""
    det = _kind(kind)
    key = _hash(seed, _tag(kind), module, train_id)
    h = _hash(key, frames)
    n_pix = int(np.prod(det.raw_entry_shape[-2:]))
    j = np.arange(_profile(det).hits_per_frame, dtype=np.uint64)
    hh = _hash(h[:, None], j[None, :])
    pos = (hh % _U64(n_pix)).astype(np.intp)
    photons = (1 + (hh >> _U64(40)) % _U64(3)).astype(np.float64)
    rows = np.broadcast_to(np.arange(len(frames))[:, None], pos.shape)
    return rows, pos, photons


def detector_photons(kind: str, module: int, train_id: int, n_frames: int, *,
                     seed: int = 0) -> np.ndarray:
    """The photons the writer put in each pixel of one module's frames (the truth).

    ``(n_frames, slow_scan, fast_scan)`` int64 for the signal plane of raw and
    corrected XTDF data (raw: ``adu_per_photon`` ADU per photon, clipped at the
    kind's maximum; ``dark=True`` runs have none).  Where two hits of a frame
    land on one pixel the last one counts, as in the data.

    Examples
    --------
    >>> truth = detector_photons("AGIPD1M", 0, 10000, 2)
    >>> truth.shape, int(truth.max()) <= 3, int((truth > 0).sum(axis=(1, 2))[0]) <= 64
    ((2, 512, 128), True, True)
    """
    det = _kind(kind)
    n = int(n_frames)
    frames = np.arange(n, dtype=np.uint64)
    out = np.zeros((n, int(np.prod(det.raw_entry_shape[-2:]))), np.int64)
    if n and _profile(det).hits_per_frame:
        rows, pos, photons = _hits(kind, module, train_id, frames, seed)
        out[rows, pos] = photons.astype(np.int64)
    return out.reshape(n, *det.raw_entry_shape[-2:])


#: Signal of one photon in raw data (ADU) of each detector family, by kind name.
ADU_PER_PHOTON = {name: _PROFILES[k.aggregator_prefix].adu_per_photon for name, k in DETECTORS.items()}


def _pixels(kind: str, module: int, train_id: int, frames: np.ndarray, *,
            corrected: bool, seed: int, gain_stage: np.ndarray | None = None, photons: bool = True):
    """Pixel frames (n, *frame shape) and, if corrected, the per-pixel gain stage."""
    det = _kind(kind)
    prof = _profile(det)
    block = _noise_block(kind, seed, corrected)
    key = _hash(seed, _tag(kind), module, train_id)
    h = _hash(key, frames)
    out = block.take((h % _U64(len(block))).astype(np.intp), axis=0)
    n = len(frames)
    if corrected:
        out += np.float32((int(key[0] % _U64(11)) - 5) * 0.01)  # common-mode residual
    else:
        drift = int(key[0] % _U64(7))  # per-train pedestal drift
        out += _pedestal(kind, module, seed) + np.uint16(drift)
    # Sparse photon hits on the data plane (plane 0 of raw XTDF frames).
    # Frame rows of a C-contiguous array: the data plane (plane 0 of raw XTDF
    # frames, else the whole frame) is the first slow_scan * fast_scan elements of each row.
    plane = out.reshape(n, int(np.prod(out.shape[1:])))
    n_hits = prof.hits_per_frame if photons else 0
    if n_hits and n:
        rows, pos, photons = _hits(kind, module, train_id, frames, seed)
        if corrected:
            plane[rows, pos] += photons.astype(np.float32)
        else:
            vals = plane[rows, pos].astype(np.float64) + photons * prof.adu_per_photon
            plane[rows, pos] = np.minimum(vals, prof.max_adu).astype(np.uint16)
    if not corrected and gain_stage is not None:
        # LPD parallel gain: medium and low gain stages see a scaled-down signal
        # and carry the gain stage in bits 12-13.
        out &= np.uint16(0x0FFF)
        out |= (gain_stage.astype(np.uint16) << np.uint16(12)).reshape(
            (n,) + (1,) * (out.ndim - 1))
    if corrected:
        gain = np.zeros(out.shape, dtype=np.uint8)
        flat_gain = gain.reshape(plane.shape)
        if n_hits and n:
            flat_gain[rows, pos] = (photons >= 3).astype(np.uint8)
        return out, gain
    return out, None


def detector_module_train(kind: str, module: int, train_id: int, n_frames: int, *,
                          corrected: bool = False, seed: int = 0,
                          parallel_gain: bool = False, dark: bool = False) -> dict[str, np.ndarray]:
    """All keys of one detector module's instrument source for one train.

    Arrays have the on-disk row layout (dotted key -> array with a leading row
    axis).  XTDF kinds (AGIPD1M, AGIPD500K, LPD1M, DSSC1M) have one row per
    frame in ``image.*``: ``image.data`` ``(n, *raw_entry_shape)`` uint16 raw or
    ``(n, *corrected_entry_shape)`` float32 corrected; ``image.pulseId`` uint64,
    ``image.cellId`` uint16, ``image.trainId`` uint64, ``image.length`` uint32,
    ``image.status`` uint16, shaped ``(n, 1)`` raw and ``(n,)`` corrected;
    corrected data also has ``image.mask`` uint32 and ``image.gain`` uint8 of
    the corrected entry shape.  Their ``header.*``, ``trailer.*`` and
    ``detector.*`` keys have one row per train.

    JUNGFRAU has one row per train with the memory cells inside the row:
    ``data.adc`` ``(1, cells, 512, 1024)`` uint16 raw / float32 corrected,
    ``data.gain`` uint8, ``data.memoryCell`` ``(1, cells)`` uint8,
    ``data.frameNumber`` uint64, ``data.trainId`` ``(1,)``, ``data.timestamp``
    float64 seconds; corrected also ``data.mask`` uint32.  ``n_frames`` is the
    number of memory cells.

    Parameters
    ----------
    kind
        A detector kind from :data:`xfeldata.detectors.kinds.DETECTORS`.
    module
        Module number (as in source names; JUNGFRAU counts from 1).
    train_id, n_frames
        The train and its number of frames (memory cells for JUNGFRAU).
    corrected
        Corrected (float32, with mask and gain) instead of raw data.
    seed
        Seed of the synthetic content.
    parallel_gain
        LPD parallel-gain mode: ``n_frames`` (a multiple of 3) holds 3 gain
        stages per pulse in sequence: all pulses in high gain, then medium,
        then low; pulse and cell IDs repeat per stage.
    dark
        A dark frame: pedestal and noise, no photons (see :func:`detector_photons`
        for the photons of other frames).

    Returns
    -------
    dict
        Dotted key -> numpy array.  Frame ``i`` depends only on
        ``(seed, kind, module, train_id, i)``.

    Examples
    --------
    >>> d = detector_module_train("AGIPD1M", 0, 10000, 3, corrected=True)
    >>> d["image.data"].shape, d["image.pulseId"].shape, d["header.pulseCount"].tolist()
    ((3, 512, 128), (3,), [3])
    >>> d = detector_module_train("LPD1M", 0, 10000, 6, parallel_gain=True)
    >>> d["image.pulseId"].ravel().tolist()
    [0, 1, 0, 1, 0, 1]
    """
    det = _kind(kind)
    n = int(n_frames)
    frames = np.arange(n, dtype=np.uint64)
    tid = np.uint64(train_id)
    if not det.xtdf and not det.cell_axis:
        return _camera_train(det, module, train_id, corrected=corrected, seed=seed, dark=dark)
    if not det.xtdf:
        return _jungfrau_train(det, module, train_id, n, corrected=corrected, seed=seed, dark=dark)

    stage = None
    if parallel_gain:
        if det.aggregator_prefix != "LPD":
            raise ValueError("parallel gain mode exists only for LPD")
        if n % 3:
            raise ValueError(f"parallel gain needs a multiple of 3 frames, not {n}")
        pulses = n // 3
        pulse_index = frames % np.uint64(max(pulses, 1))
        stage = (frames // np.uint64(max(pulses, 1))).astype(np.uint8)
    else:
        pulse_index = frames
    data, gain = _pixels(kind, module, train_id, frames, corrected=corrected, seed=seed,
                         gain_stage=stage, photons=not dark)
    row = (lambda a: a) if corrected else (lambda a: a[:, None])
    frame_bytes = int(np.prod(det.raw_entry_shape)) * 2
    out = {
        "image.data": data,
        "image.pulseId": row(pulse_index.astype(np.uint64)),
        "image.cellId": row((pulse_index % np.uint64(det.max_frames)).astype(np.uint16)),
        "image.trainId": row(np.full(n, tid, dtype=np.uint64)),
        "image.length": row(np.full(n, frame_bytes, dtype=np.uint32)),
        "image.status": row(np.zeros(n, dtype=np.uint16)),
    }
    if corrected:
        out["image.mask"] = np.broadcast_to(_bad_pixels(kind, module, seed), data.shape).copy()
        out["image.gain"] = gain if stage is None else np.broadcast_to(
            stage.reshape((n,) + (1,) * (data.ndim - 1)), data.shape).copy()
    specs = detector_keys(kind, corrected=corrected)
    for key in _XTDF_TRAIN_KEYS:
        dt, shape = specs[key]
        out[key] = np.zeros((1, *shape), dtype=dt)
    for group in ("header", "trailer", "detector"):
        out[f"{group}.trainId"][:] = tid
    out["header.pulseCount"][:] = n
    out["header.dataId"][:] = 1
    out["header.linkId"][:] = 0x10000 + module
    out["header.majorTrainFormatVersion"][:] = 2
    out["header.minorTrainFormatVersion"][:] = 1
    out["header.magicNumberBegin"][:] = _XTDF_MAGIC
    out["trailer.magicNumberEnd"][:] = _XTDF_MAGIC
    out["trailer.checksum"][:] = (_hash(seed, module, tid, np.arange(16)) % _U64(256)).astype(
        np.uint8).view(np.int8)
    return out


def _jungfrau_train(det: DetectorKind, module: int, train_id: int, cells: int, *,
                    corrected: bool, seed: int, dark: bool = False) -> dict[str, np.ndarray]:
    frames = np.arange(cells, dtype=np.uint64)
    adc, gain = _pixels(det.name, module, train_id, frames, corrected=corrected, seed=seed, photons=not dark)
    if gain is None:
        gain = np.zeros(adc.shape, dtype=np.uint8)
    t0 = float(train_timestamp_ns(train_id)[0]) / 1e9
    out = {
        "data.adc": adc[None],
        "data.gain": gain[None],
        "data.memoryCell": frames.astype(np.uint8)[None],
        "data.frameNumber": (np.uint64(train_id) * np.uint64(max(cells, 1)) + frames)[None],
        "data.trainId": np.array([train_id], dtype=np.uint64),
        "data.timestamp": (t0 + frames.astype(np.float64) * 1e-6)[None],
    }
    if corrected:
        mask = np.zeros(det.corrected_entry_shape, dtype=np.uint32)
        mask[::97, ::89] = 1  # a sparse grid of dead pixels
        out["data.mask"] = np.broadcast_to(mask, adc.shape).copy()[None]
    return out


def _camera_train(det: DetectorKind, module: int, train_id: int, *,
                  corrected: bool, seed: int, dark: bool = False) -> dict[str, np.ndarray]:
    """One row of a camera recording one frame per train (ePix100)."""
    pixels, _ = _pixels(det.name, module, train_id, np.zeros(1, np.uint64), corrected=corrected,
                        seed=seed, photons=not dark)
    out = {
        det.data_key: pixels,
        "data.frameNumber": np.array([train_id], dtype=np.uint64),
        "data.trainId": np.array([train_id], dtype=np.uint64),
        "data.timestamp": np.array([float(train_timestamp_ns(train_id)[0]) / 1e9]),
    }
    if corrected:
        out["data.mask"] = _bad_pixels(det.name, module, seed)[None]
    return out


# --------------------------------------------------------------------------
# Slow and instrument (non-detector) sources
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """One key of a slow source.

    Parameters
    ----------
    key
        Dotted key name.
    dtype
        numpy dtype string (``"f4"``, ``"u2"``, ...), ``"str"`` for strings
        (stored as variable-length bytes) or a structured dtype.
    shape
        Entry shape of one row.
    attrs
        Key attributes written from format 1.3 (units, alias, description ...).
    """

    key: str
    dtype: object
    shape: tuple[int, ...] = ()
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_string(self) -> bool:
        return isinstance(self.dtype, str) and self.dtype == "str"


@dataclass(frozen=True)
class SlowSource:
    """A slow-data source of synthetic runs.

    ``section`` is ``"CONTROL"`` or ``"INSTRUMENT"``; ``aggregator`` the file
    aggregator it is written to; ``run_values`` the keys recorded only in the
    RUN section (control sources).  Instrument sources have one row per train.
    """

    name: str
    section: str
    aggregator: str
    keys: tuple[KeySpec, ...]
    run_values: Mapping[str, object] = field(default_factory=dict)

    @property
    def index_groups(self) -> tuple[str, ...]:
        """Index groups of an instrument source (first part of its keys)."""
        if self.section != "INSTRUMENT":
            return ()
        return tuple(dict.fromkeys(k.key.split(".", 1)[0] for k in self.keys))


def _units(symbol: str, name: str, prefix: str = "", prefix_name: str = "", **more) -> dict:
    attrs = {"unitSymbol": symbol, "unitName": name,
             "metricPrefixSymbol": prefix, "metricPrefixName": prefix_name}
    attrs.update(more)
    return attrs


XGM_SOURCE = "SA1_XTD2_XGM/DOOCS/MAIN"
XGM_OUTPUT = "SA1_XTD2_XGM/DOOCS/MAIN:output"
CAMERA_SOURCE = "SA1_XTD2_IMGFEL/CAM/BEAMVIEW:daqOutput"
DIGITISER_SOURCE = "SA3_XTD10_MCP/ADC/1:channel_5.output"
REMI_SOURCE = "SQS_REMI_DLD6/DET/TOP:output"
MOTOR_SOURCES = ("SPB_IRU_MOTORS/MOTOR/SAMPLE_X", "SPB_IRU_MOTORS/MOTOR/SAMPLE_Y")

CAMERA_SHAPE = (256, 320)
XGM_PULSES = 32
REMI_MAX_HITS = 50
REMI_HIT_DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("t", "f8"), ("m", "i4")])

# XGM control keys: (key, dtype, model, params).  Models: "const" value;
# "noise" (mean, sigma) per train; "slow" (mean, sigma, period in trains).
_XGM_KEYS = [
    ("state", "str", "const", "ON"),
    ("beamPosition.ixPos", "f4", "noise", (0.12, 0.02)),
    ("beamPosition.iyPos", "f4", "noise", (-0.05, 0.02)),
    ("current.bottom.output", "f4", "noise", (2e-9, 1e-10)),
    ("current.bottom.rangeCode", "i4", "const", 2),
    ("current.left.output", "f4", "noise", (2.1e-9, 1e-10)),
    ("current.left.rangeCode", "i4", "const", 2),
    ("current.right.output", "f4", "noise", (1.9e-9, 1e-10)),
    ("current.right.rangeCode", "i4", "const", 2),
    ("current.top.output", "f4", "noise", (2e-9, 1e-10)),
    ("current.top.rangeCode", "i4", "const", 2),
    ("gasDosing.measuredPressure", "f4", "slow", (3.1e-5, 2e-7, 10)),
    ("gasDosing.pressureSetPoint", "f4", "const", 3e-5),
    ("gasSupply.gasTypeId", "i4", "const", 3),
    ("gasSupply.gsdCompatId", "i4", "const", 1),
    ("pollingInterval", "i4", "const", 100),
    ("pressure.dcr", "f4", "const", 1.0),
    ("pressure.gasType", "i4", "const", 3),
    ("pressure.pressure1", "f4", "slow", (3.0e-5, 2e-7, 10)),
    ("pressure.pressureFiltered", "f4", "slow", (3.0e-5, 1e-7, 20)),
    ("pressure.rd", "f4", "const", 0.0),
    ("pressure.rsp", "f4", "const", 0.0),
    ("pulseEnergy.conversion", "f8", "const", 1.44e-5),
    ("pulseEnergy.crossUsed", "f4", "const", 41.8),
    ("pulseEnergy.gammaUsed", "f4", "const", 1.0),
    ("pulseEnergy.gmdError", "i4", "const", 0),
    ("pulseEnergy.nummberOfBunches", "f4", "const", float(XGM_PULSES)),
    ("pulseEnergy.photonFlux", "f4", "noise", (1200.0, 60.0)),
    ("pulseEnergy.pressure", "f4", "slow", (3.0e-5, 2e-7, 10)),
    ("pulseEnergy.temperature", "f4", "slow", (296.5, 0.05, 50)),
    ("pulseEnergy.usedGasType", "i4", "const", 3),
    ("pulseEnergy.wavelengthUsed", "f4", "const", 0.1333),
    ("signalAdaption.dig", "i4", "const", 1),
]
_XGM_ATTRS = {
    "beamPosition.ixPos": _units("m", "meter", "m", "milli", alias="IX.POS",
                                 displayedName="X position",
                                 description="Calculated X position [mm]"),
    "beamPosition.iyPos": _units("m", "meter", "m", "milli", alias="IY.POS",
                                 displayedName="Y position",
                                 description="Calculated Y position [mm]"),
    "pulseEnergy.photonFlux": _units("J", "joule", "u", "micro", alias="INTENSITY.SLOW",
                                     displayedName="Photon flux",
                                     description="Average pulse energy [uJ]"),
    "pulseEnergy.wavelengthUsed": _units("m", "meter", "n", "nano",
                                         displayedName="Wavelength used"),
    "pulseEnergy.temperature": _units("K", "kelvin", displayedName="Temperature"),
    "gasDosing.measuredPressure": _units("Pa", "pascal", displayedName="Measured pressure"),
}
_MOTOR_KEYS = [
    ("actualPosition", "f8", "scan", None),
    ("encoderPosition", "f8", "scan", None),
    ("targetPosition", "f8", "scan", None),
    ("isOnTarget", "u1", "const", 1),
    ("state", "str", "const", "ON"),
]
_MOTOR_ATTRS = {"actualPosition": _units("m", "meter", "m", "milli",
                                         displayedName="Actual position",
                                         description="Position of the axis in mm")}
_MODELS: dict[tuple[str, str], tuple[str, object]] = {}


def _control(name: str, table, attrs, run_values) -> SlowSource:
    keys = []
    for key, dt, model, params in table:
        _MODELS[name, key] = (model, params)
        keys.append(KeySpec(key, dt, (), attrs.get(key, {})))
    return SlowSource(name, "CONTROL", "DA01", tuple(keys), run_values)


#: Slow sources with data in every train: name -> :class:`SlowSource`.
SLOW_SOURCES: dict[str, SlowSource] = {
    s.name: s for s in (
        _control(XGM_SOURCE, _XGM_KEYS, _XGM_ATTRS, {
            "classId": "DoocsXGM", "serverId": "xgm/sa1_xtd2",
            "location": "SA1_XTD2", "doocsServer": "XFEL.FEL/XGM/XGM.2643.T9",
            "pulseEnergy.calibrationFactor": np.float32(0.987),
        }),
        *(_control(m, _MOTOR_KEYS, _MOTOR_ATTRS, {
            "classId": "IcePapMotor", "serverId": "motors/spb_iru",
            "axisName": m.rsplit("/", 1)[1], "encoderResolution": np.uint32(2000),
        }) for m in MOTOR_SOURCES),
        SlowSource(XGM_OUTPUT, "INSTRUMENT", "DA01", tuple(
            KeySpec(f"data.{k}", "f4", (1000,),
                    _units("J", "joule", "u", "micro") if k.startswith("intensity") else {})
            for k in ("intensityTD", "intensityAUXTD", "xTD", "yTD"))),
        SlowSource(REMI_SOURCE, "INSTRUMENT", "DA01", (
            KeySpec("rec.hits", REMI_HIT_DTYPE, (REMI_MAX_HITS,),
                    {"description": "Reconstructed hits, NaN-padded (x, y in mm, t in ns)"}),
            KeySpec("rec.nHits", "i4", ()),
        )),
        SlowSource(CAMERA_SOURCE, "INSTRUMENT", "DA02", (
            KeySpec("data.image.pixels", "u2", CAMERA_SHAPE),
            KeySpec("data.image.dims", "u8", (2,)),
            KeySpec("data.image.bitsPerPixel", "i4", ()),
            KeySpec("data.image.roiOffsets", "u8", (2,)),
            KeySpec("data.image.binning", "u8", (2,)),
        )),
        SlowSource(DIGITISER_SOURCE, "INSTRUMENT", "DA02", (
            KeySpec("data.rawData", "u2", (4096,)),
            KeySpec("data.samplesTaken", "u4", ()),
        )),
    )
}

#: Names of control sources with per-train data.
CONTROL_SOURCES = tuple(n for n, s in SLOW_SOURCES.items() if s.section == "CONTROL")
#: Names of instrument (pipeline) sources with per-train data.
INSTRUMENT_SOURCES = tuple(n for n, s in SLOW_SOURCES.items() if s.section == "INSTRUMENT")
#: Keys recorded only in the RUN section of control sources: {source: {key: value}}.
RUN_ONLY_VALUES: dict[str, dict[str, object]] = {
    n: dict(s.run_values) for n, s in SLOW_SOURCES.items() if s.run_values
}
#: Sources that exist only in the RUN section (not in CONTROL, INDEX or the
#: METADATA source list): {source: {key: value}}.
RUN_ONLY_SOURCES: dict[str, dict[str, object]] = {
    "SPB_IRU_SAMPLE/MDL/INFO": {
        "classId": "SampleInfo", "sampleName": "lysozyme",
        "holderType": "fixed target", "temperatureSetpoint": np.float64(293.15),
    },
}
#: Sources listed in files but without any data (all index counts 0, datasets
#: of length 0), written when the writer's ``empty_source`` is set.
EMPTY_SOURCES: dict[str, SlowSource] = {
    s.name: s for s in (
        SlowSource("SA1_XTD2_VAC/GAUGE/G30470D_IN", "CONTROL", "DA01",
                   (KeySpec("pressure", "f4", (), _units("Pa", "pascal")),
                    KeySpec("state", "str")),
                   {"classId": "CentreOnePressureGauge"}),
        SlowSource("SA3_XTD10_MCP/ADC/1:channel_6.output", "INSTRUMENT", "DA01",
                   (KeySpec("data.rawData", "u2", (4096,)),
                    KeySpec("data.samplesTaken", "u4", ()))),
    )
}


def _model_values(source: str, key: str, tids: np.ndarray, seed: int, dtype) -> np.ndarray:
    model, params = _MODELS[source, key]
    n = len(tids)
    tag = _tag(f"{source}/{key}")
    if model == "const":
        if isinstance(params, str):
            return np.full(n, params, dtype=object)
        return np.full(n, params, dtype=dtype)
    if model == "noise":
        mean, sigma = params
        return (mean + sigma * _normal(seed, tag, tids)).astype(dtype)
    if model == "slow":
        mean, sigma, period = params
        return (mean + sigma * _normal(seed, tag, tids // np.uint64(period))).astype(dtype)
    if model == "scan":
        # A step scan: the sample X motor moves every 5 trains through 8
        # positions; Y stays put.  All position keys agree.
        step = (tids // np.uint64(5)) % np.uint64(8)
        if source.endswith("_X"):
            return (1.5 + 0.25 * step.astype(np.float64)).astype(dtype)
        return np.full(n, -0.75, dtype=dtype)
    raise AssertionError(model)


@lru_cache(maxsize=4)
def _camera_parts(seed: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = CAMERA_SHAPE
    y, x = np.mgrid[:h, :w]
    spot = 3000.0 * np.exp(-(((x - w / 2) / 25.0) ** 2 + ((y - h / 2) / 18.0) ** 2) / 2)
    rng = np.random.default_rng([seed, _tag("camera")])
    noise = np.clip(rng.normal(100, 6, size=(8, h, w)), 0, 4095).astype(np.uint16)
    return spot.astype(np.uint16), noise


@lru_cache(maxsize=4)
def _digitiser_parts(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, _tag("digitiser")])
    baseline = np.clip(rng.normal(2048, 3, size=(16, 4096)), 0, 4095).astype(np.uint16)
    t = np.arange(4096)
    starts = 400 + 220 * np.arange(XGM_PULSES // 2)
    pulse = np.exp(-0.5 * ((t[None, :] - starts[:, None]) / 4.0) ** 2).sum(axis=0)
    return baseline, pulse


def _instrument_values(source: str, tids: np.ndarray, seed: int,
                       flux: np.ndarray) -> dict[str, np.ndarray]:
    n = len(tids)
    if source == XGM_OUTPUT:
        td = np.zeros((n, 1000), dtype=np.float32)
        p = np.arange(XGM_PULSES)
        jitter = _normal(seed, _tag("xgm-pulse"), tids[:, None], p[None, :])
        td[:, :XGM_PULSES] = flux[:, None] * (1 + 0.05 * jitter)
        pos = _normal(seed, _tag("xgm-pos"), tids[:, None], p[None, :])
        xtd = np.zeros_like(td)
        ytd = np.zeros_like(td)
        xtd[:, :XGM_PULSES] = 0.12 + 0.02 * pos
        ytd[:, :XGM_PULSES] = -0.05 + 0.02 * pos[:, ::-1]
        return {"data.intensityTD": td, "data.intensityAUXTD": td * np.float32(0.98),
                "data.xTD": xtd, "data.yTD": ytd}
    if source == CAMERA_SOURCE:
        spot, noise = _camera_parts(seed)
        h = _hash(seed, _tag("camera"), tids)
        img = noise.take((h % _U64(len(noise))).astype(np.intp), axis=0)
        for i, hi in enumerate(h):
            dy = int(hi % _U64(7)) - 3
            dx = int((hi >> _U64(8)) % _U64(7)) - 3
            img[i] += np.roll(spot, (dy, dx), axis=(0, 1))
        return {
            "data.image.pixels": img,
            "data.image.dims": np.tile(np.array(CAMERA_SHAPE, dtype=np.uint64), (n, 1)),
            "data.image.bitsPerPixel": np.full(n, 12, dtype=np.int32),
            "data.image.roiOffsets": np.zeros((n, 2), dtype=np.uint64),
            "data.image.binning": np.ones((n, 2), dtype=np.uint64),
        }
    if source == DIGITISER_SOURCE:
        baseline, pulse = _digitiser_parts(seed)
        h = _hash(seed, _tag("digitiser"), tids)
        raw = baseline.take((h % _U64(len(baseline))).astype(np.intp), axis=0)
        amp = (flux / 1200.0 * 900.0)[:, None] * pulse[None, :]
        raw = np.clip(raw.astype(np.float64) - amp, 0, 4095).astype(np.uint16)
        return {"data.rawData": raw, "data.samplesTaken": np.full(n, 4096, dtype=np.uint32)}
    if source == REMI_SOURCE:
        hits = np.zeros((n, REMI_MAX_HITS), dtype=REMI_HIT_DTYPE)
        j = np.arange(REMI_MAX_HITS)
        n_hits = (_hash(seed, _tag("remi-n"), tids) % _U64(REMI_MAX_HITS - 10)).astype(
            np.int32) + 5
        valid = j[None, :] < n_hits[:, None]
        hits["x"] = np.where(valid, 20 * _normal(seed, _tag("remi-x"), tids[:, None], j), np.nan)
        hits["y"] = np.where(valid, 20 * _normal(seed, _tag("remi-y"), tids[:, None], j), np.nan)
        t = np.sort(5000 * _uniform(seed, _tag("remi-t"), tids[:, None], j), axis=1)
        hits["t"] = np.where(valid, t, np.nan)
        hits["m"] = np.where(valid, (_hash(seed, _tag("remi-m"), tids[:, None], j)
                                     % _U64(20)).astype(np.int32), -1)
        return {"rec.hits": hits, "rec.nHits": n_hits}
    raise KeyError(source)


def slow_trains(train_ids: Sequence[int] | np.ndarray, *,
                seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Vectorised :func:`slow_train`: ``{source: {key: array (n_trains, ...)}}``.

    String keys come as object arrays of ``str``.

    Examples
    --------
    >>> v = slow_trains([10000, 10001])
    >>> v[CAMERA_SOURCE]["data.image.pixels"].shape
    (2, 256, 320)
    """
    tids = np.atleast_1d(np.asarray(train_ids, dtype=np.uint64))
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in CONTROL_SOURCES:
        src = SLOW_SOURCES[name]
        out[name] = {k.key: _model_values(name, k.key, tids, seed,
                                          None if k.is_string else np.dtype(k.dtype))
                     for k in src.keys}
        if name in MOTOR_SOURCES:
            # The motor reports MOVING in the train where it steps.
            pos = out[name]["actualPosition"]
            prev = _model_values(name, "actualPosition", tids - np.uint64(1), seed, pos.dtype)
            moving = pos != prev
            out[name]["state"] = np.where(moving, "MOVING", "ON").astype(object)
            out[name]["isOnTarget"] = (~moving).astype(np.uint8)
    flux = out[XGM_SOURCE]["pulseEnergy.photonFlux"].astype(np.float64)
    for name in INSTRUMENT_SOURCES:
        out[name] = _instrument_values(name, tids, seed, flux)
    return out


def slow_train(train_id: int, *, seed: int = 0) -> dict[str, dict[str, object]]:
    """``{source: {key: value}}`` for one train of the slow and instrument sources.

    Covers every source in :data:`SLOW_SOURCES`: the XGM control device
    (:data:`XGM_SOURCE`, 33 keys including the ``state`` string), its pipeline
    channel :data:`XGM_OUTPUT` (``data.intensityTD`` etc., ``(1000,)``
    float32), a camera (:data:`CAMERA_SOURCE`, ``data.image.pixels``
    ``(256, 320)`` uint16), a digitiser channel (:data:`DIGITISER_SOURCE`,
    ``data.rawData`` ``(4096,)`` uint16), a REMI-like hit list with a
    structured dtype (:data:`REMI_SOURCE`) and two motors
    (:data:`MOTOR_SOURCES`, ``actualPosition`` float64 stepping every 5
    trains).  Values are numpy scalars / arrays, strings are ``str``.

    Examples
    --------
    >>> v = slow_train(10000)
    >>> v[XGM_SOURCE]["state"], v[DIGITISER_SOURCE]["data.rawData"].shape
    ('ON', (4096,))
    >>> sorted(v[REMI_SOURCE]["rec.hits"].dtype.names)
    ['m', 't', 'x', 'y']
    """
    values = slow_trains([train_id], seed=seed)
    return {src: {k: v[0] for k, v in keys.items()} for src, keys in values.items()}
