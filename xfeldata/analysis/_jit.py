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

import numpy as np

#: Environment variable: ``0`` runs the numpy kernels even where numba is installed.
ENV = "XFELDATA_JIT"


@functools.cache
def _numba() -> Any:
    """The numba module, or None when it is not installed.

    Once imported, numba types a :class:`Jitted` global as its compiled
    function, so that one kernel calls another.
    """
    try:
        import numba
        from numba.extending import typeof_impl
    except ImportError:
        return None
    typeof_impl.register(Jitted)(lambda kernel, context: numba.core.types.Dispatcher(kernel.compiled()))
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


def flat_frames(a: np.ndarray, n_lead: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``a``'s memory as one 1-d C-contiguous array and the element offset in it of each of its
    frames (its leading ``n_lead`` axes, as an int64 array of their shape); None where a frame is
    not C-contiguous or a stride is negative.

    Compiled kernels vectorise loops over C-contiguous arrays only: a view of
    one module of a ``(frame, module, ss, fs)`` stack is not one, though each of
    its frames is, and a kernel indexing it directly ran 3-7 times slower than
    one indexing the frames through this view.  The 1-d array spans the
    memory from the first frame's start to the last frame's end, and may hold
    elements of other frames between them: a kernel touches only
    ``flat[offset:offset + frame size]``.

    >>> stack = np.arange(24).reshape(3, 2, 4)   # (frame, module, pixel)
    >>> flat, offsets = flat_frames(stack[:, 1], 1)
    >>> offsets.tolist(), flat[offsets[2]:offsets[2] + 4].tolist()
    ([0, 8, 16], [20, 21, 22, 23])
    """
    lead, frame = a.shape[:n_lead], a.shape[n_lead:]
    item = a.itemsize
    if a.size == 0:
        return np.empty(0, a.dtype), np.zeros(lead, np.int64)
    if not a[(0,) * n_lead].flags.c_contiguous or any(s < 0 or s % item for s in a.strides[:n_lead]):
        return None
    offsets = np.zeros(lead, np.int64)
    for axis, (n, stride) in enumerate(zip(lead, a.strides[:n_lead], strict=True)):
        shape = [1] * n_lead
        shape[axis] = n
        offsets += (np.arange(n, dtype=np.int64) * (stride // item)).reshape(shape)
    span = int(offsets.max()) + int(np.prod(frame, dtype=np.int64))
    flat = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,), writeable=a.flags.writeable)
    return flat, offsets


def contiguous_frames(a: np.ndarray, n_lead: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`flat_frames` of ``a``, or of a C-contiguous copy of it where its frames are not.

    >>> flat, offsets = contiguous_frames(np.arange(6).reshape(2, 3).T, 1)  # frames not contiguous
    >>> offsets.tolist(), flat[offsets[1]:offsets[1] + 2].tolist()
    ([0, 2, 4], [1, 4])
    """
    return flat_frames(a, n_lead) or flat_frames(np.ascontiguousarray(a), n_lead)
