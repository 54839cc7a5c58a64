"""Pipeline scripts: a Python file that defines ``fn`` (and optionally ``inputs``).

The same file serves ``xfeldata batch`` and ``xfeldata live``::

    # reduce.py
    def inputs(d):
        return d.detector()

    def fn(ds):
        return ds["image.data"].isel(gain=0).astype("f4").mean(["slow_scan", "fast_scan"])

The script runs in a namespace of its own (like ``python reduce.py`` but not as
``__main__``); it is not registered as a module, so ``fn`` and ``inputs``
pickle by value and run on cluster workers that cannot import the script.

Examples
--------
>>> script = load_script("reduce.py")      # doctest: +SKIP
>>> script.fn, script.inputs               # doctest: +SKIP
"""

from __future__ import annotations

import os
import runpy
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .steps import Inputs, Step, default_inputs

__all__ = ["Script", "load_script"]


@dataclass(frozen=True)
class Script:
    """What a pipeline script defines.

    Attributes
    ----------
    path : pathlib.Path
        The script file.
    fn : callable
        The step.
    inputs : callable
        The script's ``inputs``, or :func:`~xfeldata.pipeline.default_inputs`.
    """

    path: Path
    fn: Step
    inputs: Inputs

    @property
    def name(self) -> str:
        """The file name without its suffix (``reduce`` for ``reduce.py``)."""
        return self.path.stem


def load_script(path: str | os.PathLike) -> Script:
    """Run a pipeline script and take its ``fn`` and ``inputs``.

    Raises
    ------
    FileNotFoundError
        No such file.
    PipelineError
        The script fails, or defines no callable ``fn`` (or a non-callable ``inputs``).

    Examples
    --------
    >>> load_script("reduce.py").name      # doctest: +SKIP
    'reduce'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pipeline script")
    try:
        namespace = runpy.run_path(str(path), run_name=f"xfeldata_pipeline_{path.stem}")
    except Exception as exc:
        raise PipelineError(f"{path}: the script failed: {type(exc).__name__}: {exc}") from exc
    fn = namespace.get("fn")
    if not callable(fn):
        raise PipelineError(f"{path}: a pipeline script defines a function fn(ds); "
                            f"found {'nothing' if fn is None else type(fn).__name__} named fn")
    inputs = namespace.get("inputs", default_inputs)
    if not callable(inputs):
        raise PipelineError(f"{path}: inputs must be a function inputs(d), not {type(inputs).__name__}")
    return Script(path, fn, inputs)
