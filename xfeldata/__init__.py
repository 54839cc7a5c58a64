"""xfeldata: European XFEL runs and Karabo bridge streams as labelled xarray objects."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xfeldata")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
