"""Names and conventions of the European XFEL run format.

This module is the single place that knows how files, aggregators, sources and
multi-module detectors are named on disk (see ``format.md``).  The writer, the
file index, the detector views and the bridge simulator all take their names
from here, so they cannot drift apart.

Examples
--------
>>> parse_file_name("RAW-R0450-DA01-S00001.h5")
FileName(data_class='RAW', run=450, aggregator='DA01', sequence=1)
>>> DETECTORS["AGIPD1M"].source(3, corrected=True)
'SPB_DET_AGIPD1M-1/CORR/3CH0:output'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

#: Environment variable that overrides the facility's data root.
DATA_ROOT_ENV = "XFELDATA_ROOT"
#: The facility's data root, used by ``open_run(proposal=..., run=...)``.
DEFAULT_DATA_ROOT = "/gpfs/exfel/exp"

#: Format versions the reader accepts and the writer can produce.
FORMAT_VERSIONS = ("0.5", "1.0", "1.1", "1.2", "1.3")

FILE_NAME_RE = re.compile(
    r"^(?P<data_class>[A-Z]+)-R(?P<run>\d{4})-(?P<aggregator>[A-Za-z0-9]+)-S(?P<sequence>\d{5})\.h5$"
)


class FileName(NamedTuple):
    """The parts of a run file name, ``<CLASS>-R<run>-<AGGREGATOR>-S<seq>.h5``."""

    data_class: str
    run: int
    aggregator: str
    sequence: int


def parse_file_name(name: str) -> FileName | None:
    """Split a run file name into its parts, or return None if it does not match.

    Examples
    --------
    >>> parse_file_name("CORR-R0803-AGIPD00-S00000.h5").aggregator
    'AGIPD00'
    >>> parse_file_name("overview.h5") is None
    True
    """
    m = FILE_NAME_RE.match(name)
    if m is None:
        return None
    return FileName(m["data_class"], int(m["run"]), m["aggregator"], int(m["sequence"]))


def file_name(data_class: str, run: int, aggregator: str, sequence: int) -> str:
    """Build a run file name.

    Examples
    --------
    >>> file_name("RAW", 450, "DA01", 1)
    'RAW-R0450-DA01-S00001.h5'
    """
    return f"{data_class}-R{run:04d}-{aggregator}-S{sequence:05d}.h5"


def key_to_path(key: str) -> str:
    """User-facing key (dotted) to the HDF5 path below the source group.

    >>> key_to_path("beamPosition.ixPos")
    'beamPosition/ixPos'
    """
    return key.replace(".", "/")


def path_to_key(path: str) -> str:
    """HDF5 path below the source group to the user-facing dotted key.

    >>> path_to_key("image/data")
    'image.data'
    """
    return path.replace("/", ".")


@dataclass(frozen=True)
class DetectorKind:
    """How one kind of multi-module detector is named and shaped on disk.

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
        Shape of one frame (XTDF) or one train (JUNGFRAU, without the cell axis)
        of raw and corrected ``data`` of one module.
    raw_dtype
        dtype of raw pixel data.
    xtdf
        True for XTDF detectors (one row per frame in ``image/``), False for
        JUNGFRAU-style detectors (one row per train, memory cells in the row).
    max_frames
        Largest number of frames (or memory cells) per train.
    """

    name: str
    default_device: str
    modules: tuple[int, ...]
    aggregator_prefix: str
    raw_entry_shape: tuple[int, ...]
    corrected_entry_shape: tuple[int, ...]
    raw_dtype: str = "uint16"
    xtdf: bool = True
    max_frames: int = 352

    @property
    def data_key(self) -> str:
        """The key holding pixel data (``image.data`` or ``data.adc``)."""
        return "image.data" if self.xtdf else "data.adc"

    def source(self, module: int, corrected: bool = False, device: str | None = None) -> str:
        """Source name of one module.

        New-style corrected names (``.../CORR/<n>CH0:output``) are used when
        ``corrected`` is true; raw data and legacy corrected data use
        ``.../DET/<n>CH0:xtdf``.
        """
        device = device or self.default_device
        if not self.xtdf:
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


DETECTORS: dict[str, DetectorKind] = {
    kind.name: kind
    for kind in (
        DetectorKind("AGIPD1M", "SPB_DET_AGIPD1M-1", tuple(range(16)), "AGIPD",
                     (2, 512, 128), (512, 128)),
        DetectorKind("AGIPD500K", "HED_DET_AGIPD500K2G", tuple(range(8)), "AGIPD",
                     (2, 512, 128), (512, 128)),
        DetectorKind("LPD1M", "FXE_DET_LPD1M-1", tuple(range(16)), "LPD",
                     (1, 256, 256), (256, 256), max_frames=512),
        DetectorKind("DSSC1M", "SCS_DET_DSSC1M-1", tuple(range(16)), "DSSC",
                     (1, 128, 512), (128, 512), max_frames=800),
        DetectorKind("JUNGFRAU", "SPB_IRDA_JF4M", tuple(range(1, 9)), "JNGFR",
                     (512, 1024), (512, 1024), xtdf=False, max_frames=16),
    )
}

# Source name patterns that identify detector modules, with the module number
# as the group "module" and the device prefix as "device".
XTDF_SOURCE_RE = re.compile(r"^(?P<device>.+)/(?:DET|CORR)/(?P<module>\d+)CH0:(?:xtdf|output)$")
JUNGFRAU_SOURCE_RE = re.compile(r"^(?P<device>.+)/DET/JNGFR(?P<module>\d+):(?:daqOutput|output)$")


def detector_kind_of_device(device: str) -> DetectorKind | None:
    """Guess the detector kind from a device prefix such as ``SPB_DET_AGIPD1M-1``.

    >>> detector_kind_of_device("FXE_DET_LPD1M-1").name
    'LPD1M'
    """
    upper = device.upper()
    for token, name in (("AGIPD500K", "AGIPD500K"), ("AGIPD", "AGIPD1M"), ("LPD", "LPD1M"),
                        ("DSSC", "DSSC1M"), ("JF", "JUNGFRAU"), ("JNGFR", "JUNGFRAU")):
        if token in upper:
            return DETECTORS[name]
    return None


def match_detector_source(source: str) -> tuple[str, int] | None:
    """Return ``(device, module)`` if ``source`` names a detector module.

    >>> match_detector_source("SPB_DET_AGIPD1M-1/DET/7CH0:xtdf")
    ('SPB_DET_AGIPD1M-1', 7)
    >>> match_detector_source("SA1_XTD2_XGM/DOOCS/MAIN") is None
    True
    """
    for pattern in (XTDF_SOURCE_RE, JUNGFRAU_SOURCE_RE):
        m = pattern.match(source)
        if m:
            return m["device"], int(m["module"])
    return None


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
