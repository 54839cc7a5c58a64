"""Names and conventions of the European XFEL run format.

This module is the single place that knows how files and aggregators are named
on disk (see ``format.md``).  Detector kinds (module numbering, source names,
keys, shapes) are the table of :mod:`xfeldata.detectors.kinds`.

Examples
--------
>>> parse_file_name("RAW-R0450-DA01-S00001.h5")
FileName(data_class='RAW', run=450, aggregator='DA01', sequence=1)
"""

from __future__ import annotations

import re
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
