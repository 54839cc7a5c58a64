"""How each detector family records the gain stage of a raw pixel, and the signal without it.

- AGIPD: a second plane per frame (the ``gain`` axis) holds an analogue gain
  signal; its stage comes from thresholds between the stages' dark levels
  (see :func:`~xfeldata.analysis.dark_constants`), not from this module.
- LPD: the data word itself, bits 12-13 the stage (0 high, 1 medium, 2 low;
  3 is invalid), bits 0-11 the signal.
- JUNGFRAU: a separate gain key (``image.gain``, from ``data.gain``), 0, 1 and
  3 for stages 0, 1 and 2 (2 is invalid); bits 0-13 of ``image.data`` the signal.
- Every other detector: one stage, the data word is the signal.

Examples
--------
>>> word = np.array([5, (1 << 12) | 7, (3 << 12) | 9], np.uint16)
>>> signal, stage = split("lpd", word)
>>> signal.tolist(), stage.tolist()
([5, 7, 9], [0, 1, 255])
"""

from __future__ import annotations

import numpy as np

from ..detectors.kinds import DETECTORS

#: Stage of a pixel whose recorded stage is not a valid one (its value is NaN).
INVALID = np.uint8(255)

#: Encodings by the detector family (``DetectorKind.aggregator_prefix``).
_FAMILIES = {"AGIPD": "agipd", "LPD": "lpd", "JNGFR": "jungfrau"}

#: Gain stages of the families whose raw data record the stage of every pixel.
STAGES = {"lpd": 3, "jungfrau": 3}

_LPD_SIGNAL = np.uint16(0x0FFF)
_JUNGFRAU_SIGNAL = np.uint16(0x3FFF)
#: LPD bits 12-15 -> stage: 0, 1, 2 are stages, anything else invalid.
_LPD_STAGE = np.full(16, INVALID, np.uint8)
_LPD_STAGE[:3] = [0, 1, 2]
#: JUNGFRAU gain value (uint8) -> stage: 0, 1, 3 are stages 0, 1, 2, anything else invalid.
_JUNGFRAU_STAGE = np.full(256, INVALID, np.uint8)
_JUNGFRAU_STAGE[[0, 1, 3]] = [0, 1, 2]


def encoding(kind: str | None) -> str:
    """The gain encoding of a detector kind (a Dataset's ``attrs["kind"]``).

    ``"agipd"``, ``"lpd"``, ``"jungfrau"``, or ``"single"`` (one stage;
    also for unknown kinds).

    >>> encoding("LPD1M"), encoding("JUNGFRAU"), encoding("AGIPD500K"), encoding(None)
    ('lpd', 'jungfrau', 'agipd', 'single')
    """
    det = DETECTORS.get(kind or "")
    return _FAMILIES.get(det.aggregator_prefix, "single") if det is not None else "single"


def split(enc: str, data: np.ndarray, gain: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """The signal of raw frames and, for LPD and JUNGFRAU, the stage of each pixel.

    ``data`` is the raw data word (``image.data``), ``gain`` JUNGFRAU's gain
    key; the stage is uint8, :data:`INVALID` where the recorded value is not
    a stage.  Other encodings return ``data`` itself and no stage.
    """
    if enc == "lpd":
        word = np.asarray(data)
        return word & _LPD_SIGNAL, _LPD_STAGE[word >> np.uint16(12)]
    if enc == "jungfrau":
        if gain is None:
            raise ValueError("JUNGFRAU raw data need their gain key (image.gain) to tell the gain stage")
        g = np.asarray(gain)
        if g.dtype != np.uint8:
            g = np.clip(g, 0, 255).astype(np.uint8)
        return np.asarray(data) & _JUNGFRAU_SIGNAL, _JUNGFRAU_STAGE[g]
    return np.asarray(data), None
