"""Compiled block kernels: numba, when it is installed (the ``analysis`` extra brings it).

Every compiled kernel has a numpy twin that gives the same numbers; the twin
runs when numba is not installed or when the environment variable
``XFELDATA_JIT`` is ``0`` (the tests run both).  Kernels are compiled on their
first call (not at import: numba takes about half a second to import), release
the GIL, so that dask's threads run blocks side by side, and are cached on disk,
so that a later process does not compile them again.

Examples
--------
>>> def add_one(x):
...     for i in range(x.shape[0]):
...         x[i] += 1
>>> kernel = Jitted(add_one)
>>> x = np.zeros(3)
>>> (kernel.compiled() or add_one)(x)
>>> x.tolist()
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np  # noqa: F401  (the example's namespace)

#: Environment variable: ``0`` runs the numpy kernels even where numba is installed.
ENV = "XFELDATA_JIT"


@functools.cache
def _numba() -> Any:
    """The numba module, or None when it is not installed."""
    try:
        import numba
    except ImportError:
        return None
    return numba


def enabled() -> bool:
    """True when compiled kernels run: numba is installed and ``XFELDATA_JIT`` is not ``0``.

    >>> isinstance(enabled(), bool)
    True
    """
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"{ENV} must be 0 (numpy kernels) or 1 (compiled kernels where numba is "
                         f"installed), not {value!r}")
    return value != "0" and _numba() is not None


class Jitted:
    """A kernel written in the subset of Python numba compiles, compiled on first use.

    ``compiled()`` is the compiled function (``nogil``, cached on disk when
    ``fn`` comes from a file), or
    None when :func:`enabled` is False: the caller then runs its numpy twin.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None
        functools.update_wrapper(self, fn)

    def compiled(self) -> Callable[..., Any] | None:
        if not enabled():
            return None
        if self._compiled is None:
            on_disk = os.path.isfile(self.fn.__code__.co_filename)  # a cache needs the source file
            self._compiled = _numba().njit(nogil=True, cache=on_disk, error_model="numpy")(self.fn)
        return self._compiled


def jitted(fn: Callable[..., Any]) -> Jitted:
    """Decorator: ``fn`` as a :class:`Jitted` kernel."""
    return Jitted(fn)
