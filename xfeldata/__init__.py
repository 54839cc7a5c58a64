"""xfeldata: European XFEL runs and Karabo bridge streams as labelled xarray objects.

The public names are loaded on first use, so that ``xfeldata info`` and other
commands that need no xarray start quickly.

Examples
--------
>>> import xfeldata as xd
>>> run = xd.open_run("path/to/r0001")        # doctest: +SKIP
>>> run.info()                                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

from .errors import (
    DataIndexError,
    FileFormatError,
    PropertyNameError,
    SourceNameError,
    TrainIdError,
)

if TYPE_CHECKING:  # pragma: no cover
    from .api import Run, open_file, open_run
    from .detectors.plan import by_id, by_index
    from .export.cxi import write_cxi
    from .export.xarray import open_export, write_netcdf, write_zarr
    from .trains import stack_detector_data
    from .views import uniform_dask

try:
    __version__ = importlib.metadata.version("xfeldata")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

#: Public names and the modules that define them (imported on first access).
_LAZY = {
    "Run": ".api", "open_file": ".api", "open_run": ".api",
    "by_id": ".detectors.plan", "by_index": ".detectors.plan",
    "stack_detector_data": ".trains",
    "uniform_dask": ".views",
    "write_cxi": ".export.cxi",
    "write_netcdf": ".export.xarray", "write_zarr": ".export.xarray", "open_export": ".export.xarray",
}

__all__ = [
    "DataIndexError",
    "FileFormatError",
    "PropertyNameError",
    "Run",
    "SourceNameError",
    "TrainIdError",
    "by_id",
    "by_index",
    "open_export",
    "open_file",
    "open_run",
    "stack_detector_data",
    "uniform_dask",
    "write_cxi",
    "write_netcdf",
    "write_zarr",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xfeldata' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
