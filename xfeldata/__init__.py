"""xfeldata: European XFEL runs and Karabo bridge streams as labelled xarray objects.

Examples
--------
>>> import xfeldata as xd
>>> run = xd.open_run("path/to/r0001")        # doctest: +SKIP
>>> run.info()                                # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from .api import Run, open_file, open_run
from .detectors import by_id, by_index
from .errors import (
    DataIndexError,
    FileFormatError,
    PropertyNameError,
    SourceNameError,
    TrainIdError,
)
from .trains import stack_detector_data

try:
    __version__ = version("xfeldata")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "DataIndexError",
    "FileFormatError",
    "PropertyNameError",
    "Run",
    "SourceNameError",
    "TrainIdError",
    "by_id",
    "by_index",
    "open_file",
    "open_run",
    "stack_detector_data",
]
