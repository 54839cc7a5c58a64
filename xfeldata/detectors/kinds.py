"""Detector kinds as one table: every kind-specific fact, one entry per kind.

A leaf module: it imports nothing from xfeldata, so the files layer, the
synthetic writer, the bridge and the stacking plan all read their detector
knowledge from here without an upward import.  Adding a kind is one entry in
:data:`DETECTORS` (plus its synthetic profile).

Examples
--------
>>> DETECTORS["AGIPD1M"].source(3, corrected=True)
'SPB_DET_AGIPD1M-1/CORR/3CH0:output'
>>> DETECTORS["JUNGFRAU"].index_group, DETECTORS["JUNGFRAU"].data_key
('data', 'data.adc')
>>> match_detector_source("SPB_DET_AGIPD1M-1/DET/7CH0:xtdf")
('SPB_DET_AGIPD1M-1', 7)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorKind:
    """How one kind of multi-module detector is named, stored and stacked.

    Parameters
    ----------
    name
        Short name used by xfeldata (``"AGIPD1M"``, ``"LPD1M"``, ...).
    default_device
        Device prefix of the default instance, e.g. ``"SPB_DET_AGIPD1M-1"``.
    modules
        Module numbers, as they appear in source and aggregator names.
    aggregator_prefix
        Aggregator name prefix of module files (``"AGIPD"`` -> ``AGIPD00``).
    raw_entry_shape, corrected_entry_shape
        Shape of one frame (a row per frame) or of one train without its
        memory-cell axis (JUNGFRAU: a row per train) of raw and corrected data.
    raw_dtype
        dtype of raw pixel data.
    row_per_frame
        True: one row per frame in the index group, labelled by ``pulse_key``
        (the XTDF detectors AGIPD, LPD, DSSC).  False: one row per train
        holding every memory cell (JUNGFRAU).
    max_frames
        Largest number of frames (or memory cells) per train.
    device_tokens
        Parts of a device name that identify the kind (the longest token
        found in a name wins: ``AGIPD500K`` before ``AGIPD``).
    gain_stages
        Frames stored per pulse when the kind records gain stages in parallel
        (LPD: 3, one after the other within a train); 1 otherwise.
    pixel_key
        The key holding pixel data where it is not the layout's usual one
        (ePix100: ``data.image.pixels``); empty: ``image.data`` or ``data.adc``.
    cell_axis
        Whether a row per train holds a memory-cell axis first (JUNGFRAU).
        False for a camera recording one frame per train (ePix100): its
        ``cell`` dimension has length 1 and rows are frames.
    source_names
        ``(raw, corrected)`` source name templates with ``{device}`` and
        ``{module}`` fields, for a kind whose names do not follow the
        XTDF/JUNGFRAU patterns; empty: those patterns.
    """

    name: str
    default_device: str
    modules: tuple[int, ...]
    aggregator_prefix: str
    raw_entry_shape: tuple[int, ...]
    corrected_entry_shape: tuple[int, ...]
    raw_dtype: str = "uint16"
    row_per_frame: bool = True
    max_frames: int = 352
    device_tokens: tuple[str, ...] = ()
    gain_stages: int = 1
    pixel_key: str = ""
    cell_axis: bool = True
    source_names: tuple[str, str] | tuple[()] = ()

    @property
    def xtdf(self) -> bool:
        """The XTDF layout (a row per frame in ``image/``); same as ``row_per_frame``."""
        return self.row_per_frame

    @property
    def index_group(self) -> str:
        """The index group of the pixel data: ``"image"`` or ``"data"``."""
        return "image" if self.row_per_frame else "data"

    @property
    def data_key(self) -> str:
        """The key holding pixel data (``image.data``, ``data.adc``, ``data.image.pixels``)."""
        if self.pixel_key:
            return self.pixel_key
        return "image.data" if self.row_per_frame else "data.adc"

    @property
    def pixel_keys(self) -> tuple[str, ...]:
        """The keys a stacked detector holds where present: data, mask, gain."""
        return (self.data_key, f"{self.index_group}.mask", f"{self.index_group}.gain")

    @property
    def pulse_key(self) -> str | None:
        """The key labelling frames by pulse ID (None: cells are positions in the row)."""
        return "image.pulseId" if self.row_per_frame else None

    @property
    def cell_key(self) -> str:
        """The key holding memory cell IDs."""
        return "image.cellId" if self.row_per_frame else "data.memoryCell"

    @property
    def pulse_dim(self) -> str:
        """The stacked Dataset's pulse-like dimension: ``"pulseId"`` or ``"cell"``."""
        return "pulseId" if self.row_per_frame else "cell"

    def stacked_entry(self, entry_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a stacked frame has, from a key's row shape.

        A row per train drops its memory-cell axis (that is the ``cell``
        dimension); raw LPD/DSSC's length-1 axis is dropped; AGIPD's
        data/gain axis stays (the ``gain`` dimension).

        >>> DETECTORS["LPD1M"].stacked_entry((1, 256, 256))
        (256, 256)
        >>> DETECTORS["AGIPD1M"].stacked_entry((2, 512, 128))
        (2, 512, 128)
        >>> DETECTORS["JUNGFRAU"].stacked_entry((16, 512, 1024))
        (512, 1024)
        >>> DETECTORS["EPIX100"].stacked_entry((704, 768))
        (704, 768)
        """
        if not self.row_per_frame and not self.cell_axis:
            return tuple(entry_shape)
        return stacked_entry(entry_shape, self.row_per_frame)

    def cells_in_row(self, entry_shape: tuple[int, ...]) -> int:
        """Memory cells (slots of the ``cell`` dimension) one row of a key holds.

        >>> DETECTORS["JUNGFRAU"].cells_in_row((16, 512, 1024)), DETECTORS["EPIX100"].cells_in_row((704, 768))
        (16, 1)
        """
        return entry_shape[0] if self.row_holds_cells else 1

    @property
    def row_holds_cells(self) -> bool:
        """A row per train holding several memory cells (JUNGFRAU), not one frame."""
        return not self.row_per_frame and self.cell_axis

    def source(self, module: int, corrected: bool = False, device: str | None = None) -> str:
        """Source name of one module.

        New-style corrected names (``.../CORR/<n>CH0:output``) are used when
        ``corrected`` is true; raw data and legacy corrected data use
        ``.../DET/<n>CH0:xtdf``.
        """
        device = device or self.default_device
        if self.source_names:
            return self.source_names[int(corrected)].format(device=device, module=module)
        if not self.row_per_frame:
            return f"{device}/DET/{self.aggregator_prefix}{module:02d}:daqOutput"
        if corrected:
            return f"{device}/CORR/{module}CH0:output"
        return f"{device}/DET/{module}CH0:xtdf"

    def legacy_source(self, module: int, device: str | None = None) -> str:
        """The old name of a module's source, kept as a soft link in new corrected files."""
        return self.source(module, corrected=False, device=device)

    def aggregator(self, module: int) -> str:
        """Aggregator name of one module's files (``AGIPD03``, ``JNGFR02``)."""
        return f"{self.aggregator_prefix}{module:02d}"


def stacked_entry(entry_shape: tuple[int, ...], row_per_frame: bool) -> tuple[int, ...]:
    """:meth:`DetectorKind.stacked_entry` for data whose kind is not known."""
    entry_shape = tuple(entry_shape)
    if not row_per_frame:
        return entry_shape[1:]
    return entry_shape[1:] if len(entry_shape) == 3 and entry_shape[0] == 1 else entry_shape


#: Every kind, by name.
DETECTORS: dict[str, DetectorKind] = {
    kind.name: kind
    for kind in (
        DetectorKind("AGIPD1M", "SPB_DET_AGIPD1M-1", tuple(range(16)), "AGIPD",
                     (2, 512, 128), (512, 128), device_tokens=("AGIPD",)),
        DetectorKind("AGIPD500K", "HED_DET_AGIPD500K2G", tuple(range(8)), "AGIPD",
                     (2, 512, 128), (512, 128), device_tokens=("AGIPD500K",)),
        DetectorKind("LPD1M", "FXE_DET_LPD1M-1", tuple(range(16)), "LPD",
                     (1, 256, 256), (256, 256), max_frames=512, device_tokens=("LPD",),
                     gain_stages=3),
        # LPD Mini: XTDF like LPD-1M, modules of 2 tiles of 16 x 256 pixels,
        # so a frame is (32, 256); its modules count from 1.
        DetectorKind("LPDMINI", "FXE_DET_LPD_MINI", tuple(range(1, 9)), "LPD",
                     (1, 32, 256), (32, 256), max_frames=512,
                     device_tokens=("LPD_MINI", "LPDMINI"), gain_stages=3),
        DetectorKind("DSSC1M", "SCS_DET_DSSC1M-1", tuple(range(16)), "DSSC",
                     (1, 128, 512), (128, 512), max_frames=800, device_tokens=("DSSC",)),
        DetectorKind("JUNGFRAU", "SPB_IRDA_JF4M", tuple(range(1, 9)), "JNGFR",
                     (512, 1024), (512, 1024), row_per_frame=False, max_frames=16,
                     device_tokens=("JF", "JNGFR")),
        # ePix100: a single-module camera, one row per train holding one
        # (704, 768) frame in data.image.pixels, no pulse IDs and no memory
        # cells: its cell dimension has length 1 (module 0).
        DetectorKind("EPIX100", "MID_EXP_EPIX-1", (0,), "EPIX",
                     (704, 768), (704, 768), row_per_frame=False, max_frames=1,
                     device_tokens=("EPIX", "EPX100"), pixel_key="data.image.pixels",
                     cell_axis=False,
                     source_names=("{device}/DET/RECEIVER:daqOutput", "{device}/CORR/RECEIVER:output")),
    )
}

def generic_kind(device: str, row_per_frame: bool) -> DetectorKind:
    """A kind for a detector the table does not know: its layout as found, no module list.

    >>> generic_kind("XYZ_DET_NEW", row_per_frame=True).data_key
    'image.data'
    """
    return DetectorKind("unknown", device, (), "", (), (), row_per_frame=row_per_frame)


# Source name patterns that identify detector modules, with the module number
# as the group "module" and the device prefix as "device".
XTDF_SOURCE_RE = re.compile(r"^(?P<device>.+)/(?:DET|CORR)/(?P<module>\d+)CH0:(?:xtdf|output)$")
JUNGFRAU_SOURCE_RE = re.compile(r"^(?P<device>.+)/DET/JNGFR(?P<module>\d+):(?:daqOutput|output)$")
# A single-module ePix100 camera has no module number in its names: module 0.
EPIX_SOURCE_RE = re.compile(r"^(?P<device>[^/]*(?:EPIX|EPX100)[^/]*)/(?:DET|CORR)/RECEIVER:(?:daqOutput|output)$")


def detector_kind_of_device(device: str) -> DetectorKind | None:
    """The detector kind of a device prefix such as ``SPB_DET_AGIPD1M-1``, by its name.

    >>> detector_kind_of_device("FXE_DET_LPD1M-1").name
    'LPD1M'
    >>> detector_kind_of_device("HED_DET_AGIPD500K2G").name
    'AGIPD500K'
    """
    upper = device.upper()
    found = [(len(token), kind) for kind in DETECTORS.values() for token in kind.device_tokens
             if token in upper]
    return max(found, key=lambda pair: pair[0])[1] if found else None


def match_detector_source(source: str) -> tuple[str, int] | None:
    """Return ``(device, module)`` if ``source`` names a detector module.

    >>> match_detector_source("SPB_DET_AGIPD1M-1/DET/7CH0:xtdf")
    ('SPB_DET_AGIPD1M-1', 7)
    >>> match_detector_source("MID_EXP_EPIX-1/DET/RECEIVER:daqOutput")
    ('MID_EXP_EPIX-1', 0)
    >>> match_detector_source("SA1_XTD2_XGM/DOOCS/MAIN") is None
    True
    """
    for pattern in (XTDF_SOURCE_RE, JUNGFRAU_SOURCE_RE, EPIX_SOURCE_RE):
        m = pattern.match(source)
        if m:
            return m["device"], int(m.groupdict().get("module") or 0)
    return None


def detector_kind_of_source(source: str) -> DetectorKind | None:
    """The detector kind of a module source, by its device's name; None for other sources.

    >>> detector_kind_of_source("FXE_DET_LPD1M-1/DET/3CH0:xtdf").name
    'LPD1M'
    >>> detector_kind_of_source("SA1_XTD2_XGM/DOOCS/MAIN") is None
    True
    """
    match = match_detector_source(source)
    return detector_kind_of_device(match[0]) if match else None


def group_detector_sources(sources: Iterable[str]) -> dict[str, dict[int, str]]:
    """The detector module sources among ``sources``: ``{device: {module: source}}``, sorted.

    >>> group_detector_sources(["SPB_DET_AGIPD1M-1/DET/1CH0:xtdf", "SA1_XTD2_XGM/DOOCS/MAIN",
    ...                         "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"])
    {'SPB_DET_AGIPD1M-1': {0: 'SPB_DET_AGIPD1M-1/DET/0CH0:xtdf', 1: 'SPB_DET_AGIPD1M-1/DET/1CH0:xtdf'}}
    """
    found: dict[str, dict[int, str]] = {}
    for source in sources:
        match = match_detector_source(source)
        if match:
            found.setdefault(match[0], {})[match[1]] = source
    return {device: dict(sorted(mods.items())) for device, mods in sorted(found.items())}
