"""One pipeline in three places: a notebook, a cluster, and live on the bridge.

A pipeline step is a plain function ``fn(ds)`` from an xarray object with a
``trainId`` dimension to one with the same trains; ``inputs(d)`` builds
``ds`` from a Run or a LiveBuffer with the calls they share
(``d.detector(...)``, ``d.dataset(...)``).

- :func:`offline` runs ``fn`` over a whole run, block by block of trains, as
  one lazy xarray object (threads, processes, ``dask.distributed``);
  :func:`write_results` writes it (netCDF), :func:`run_batch` does both on a
  local or SLURM cluster (``xfeldata batch``).
- :func:`live` applies ``fn`` to each new train of a Karabo bridge stream
  and publishes each result as a bridge train (``xfeldata live``).
- :func:`load_script` reads ``fn`` and ``inputs`` from a script file.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from xfeldata import pipeline
>>> def fn(ds):
...     return ds["x"] * 2
>>> class Data:                       # stands in for a Run here
...     def dataset(self):
...         return xr.Dataset({"x": ("trainId", np.arange(4.0))},
...                           coords={"trainId": np.arange(10, 14, dtype=np.uint64)})
>>> pipeline.offline(fn, Data(), inputs=lambda d: d.dataset(), trains_per_block=3).values
array([0., 2., 4., 6.])
"""

from typing import Any

#: Where each public name lives; imported on first use, so that the command
#: line (which registers this package's commands) starts without xarray or dask.
_NAMES = {
    "Live": "online", "LiveStats": "online", "live": "online",
    "PipelineError": "errors", "Script": "script", "load_script": "script",
    "default_inputs": "steps", "offline": "blocks",
    "make_cluster": "batch", "run_batch": "batch", "write_results": "batch",
}

__all__ = [
    "Live",
    "LiveStats",
    "PipelineError",
    "Script",
    "default_inputs",
    "live",
    "load_script",
    "make_cluster",
    "offline",
    "run_batch",
    "write_results",
]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        import importlib

        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xfeldata.pipeline' has no attribute {name!r}")
