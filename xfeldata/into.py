"""Blocks of a dask array computed straight into one output array, with no concatenation.

Computing a dask array of many chunks makes every task put its block in new
memory and then copies all blocks into the result (dask's final
concatenation): one more write of the whole result.  An array built by
:func:`written_into` has block tasks that can write into a view of one array
instead.  When such an array is itself computed (``.values``, ``.compute()``),
:func:`into_one` rewrites its block tasks to write into one new array,
allocated by the first of them, and the result is that array
(:class:`~xfeldata.arrays.FreshArray`, or :func:`~xfeldata.arrays.handed_over`, hands it over).  Used as the input of
other computations, the blocks are new memory as for any dask array.

The array is shared by the tasks of one computation only: it is created by a
task of that computation, and a copy sent to another process (the
``processes`` or distributed schedulers) writes nothing, so there every block
is new memory and dask concatenates as usual.

:func:`optimize` (dask's array optimisation after :func:`into_one`) is dask's
``array_optimize`` setting from the import of this module on, the graph
optimiser of every dask array, unless another one is set: ``dask.compute``
groups the collections it is given by their optimiser and returns the groups'
results in group order, so an optimiser of xfeldata's arrays only would put
results in each other's places when they are computed together with other
dask arrays (a Dataset's variables, ``dask.compute(a, b, c)``).  It leaves
graphs without :func:`written_into` arrays as dask's optimisation does.

Examples
--------
>>> x = da.arange(6, chunks=2)
>>> doubled = written_into(lambda b, out=None: np.multiply(b, 2, out=out), [x], x.chunks, x.dtype)
>>> doubled.compute().tolist()
[0, 2, 4, 6, 8, 10]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import partial
from itertools import product
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.optimization import optimize as dask_optimize
from dask.base import tokenize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from .pool import ArrayPool

#: dask's setting that names the graph optimiser of every dask array.
OPTIMIZE_SETTING = "array_optimize"
#: Start of the names of :func:`written_into` layers (and of their outputs' layers).
LAYER_PREFIX = "xfeldata-into-"


class WritesInto:
    """The block function of a :func:`written_into` array (or arrays: one per dtype).

    ``fn(*blocks, out=None)`` returns the block in new memory, or, given
    ``out`` (a view of the block's place in the output, maybe not
    contiguous), fills every element of it and returns it.  With several
    outputs, ``out`` is a tuple (an entry per output, None or a view) and so is
    the result.
    """

    def __init__(self, fn: Callable[..., Any], chunks: tuple[tuple[int, ...], ...], dtypes: Sequence[Any]):
        self.fn, self.chunks, self.dtypes = fn, chunks, tuple(np.dtype(d) for d in dtypes)

    def __call__(self, *blocks: Any) -> Any:
        return self.fn(*blocks, out=None if len(self.dtypes) == 1 else (None,) * len(self.dtypes))

    def into(self, *args: Any, index: tuple[int, ...], which: tuple[int, ...]) -> Any:
        """The block at ``index`` with outputs ``which`` written into their places in the
        :class:`OneArray` s that come first in ``args`` (new memory where they have none here)."""
        out: list = [None] * len(self.dtypes)
        for j, output in zip(which, args[:len(which)], strict=True):
            out[j] = output.block(index)
        blocks = args[len(which):]
        return self.fn(*blocks, out=out[0] if len(out) == 1 else tuple(out))

    def __dask_tokenize__(self) -> tuple:
        return ("xfeldata.WritesInto", tokenize(self.fn), self.chunks, [str(d) for d in self.dtypes])


class Part:
    """Output ``j`` of the blocks of a :class:`WritesInto` with several outputs (a task's function)."""

    def __init__(self, writer: WritesInto, j: int):
        self.writer, self.j = writer, j

    def __call__(self, results: tuple) -> np.ndarray:
        return results[self.j]

    def __dask_tokenize__(self) -> tuple:
        return ("xfeldata.Part", self.writer.__dask_tokenize__(), self.j)


#: Outputs of at most this many bytes reuse the memory of earlier ones (:func:`new_output`).
KEEP_BYTES = 2**30
_outputs = ArrayPool(keep=2)


def new_output(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array for the output of a computation: in the memory of an
    earlier output of as many bytes that nothing uses any more, where there is one
    (:class:`~xfeldata.pool.ArrayPool`, two kept), else in new memory.

    New memory of 128 MiB costs about as much as writing it once more (the
    kernel zeroes each page as it is first written).  Outputs over
    :data:`KEEP_BYTES` always get new memory, and so does everything with
    ``XFELDATA_KEEP_BUFFERS=0`` (as for the bridge's buffers).

    >>> new_output((2, 3), np.float32).shape
    (2, 3)
    """
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) * dtype.itemsize > KEEP_BYTES or os.environ.get("XFELDATA_KEEP_BUFFERS", "1") == "0":
        return np.empty(shape, dtype)
    return _outputs.empty(tuple(shape), dtype)


class OneArray:
    """The output array of one computation: allocated by the first block that asks for its place
    (:func:`new_output`).

    A copy in another process has no place for any block (:meth:`block` gives None).
    """

    def __init__(self, chunks: tuple[tuple[int, ...], ...], dtype: Any, local: bool = True):
        self.chunks, self.dtype = chunks, np.dtype(dtype)
        self._lock = threading.Lock() if local else None
        self._array: np.ndarray | None = None

    def block(self, index: tuple[int, ...]) -> np.ndarray | None:
        if self._lock is None:
            return None
        with self._lock:
            if self._array is None:
                self._array = new_output(tuple(sum(c) for c in self.chunks), self.dtype)
        return self._array[block_slices(self.chunks, index)]

    def __reduce__(self) -> tuple:
        return OneArray, (self.chunks, self.dtype, False)


def block_slices(chunks: tuple[tuple[int, ...], ...], index: tuple[int, ...]) -> tuple[slice, ...]:
    """The place of the block at ``index`` in an array of ``chunks``.

    >>> block_slices(((2, 2, 1), (3,)), (1, 0))
    (slice(2, 4, None), slice(0, 3, None))
    """
    starts = (sum(c[:i]) for c, i in zip(chunks, index, strict=True))
    return tuple(slice(s, s + c[i]) for s, c, i in zip(starts, chunks, index, strict=True))


def written_into(fn: Callable[..., Any], inputs: Sequence[da.Array],
                 chunks: tuple[tuple[int, ...], ...], dtype: Any,
                 blocks_of: Callable[[tuple[int, ...]], Sequence[tuple[int, ...]]] | None = None,
                 cls: type[da.Array] = da.Array) -> Any:
    """A dask array of ``chunks`` whose block at ``index`` is ``fn(*blocks, out=None)``.

    ``blocks_of(index)`` gives, per input, the index of its block that goes
    into the output block at ``index`` (default: the same index).  The array
    is of class ``cls``; a :class:`~xfeldata.arrays.FreshArray`, or an array
    given its hand-over (:func:`~xfeldata.arrays.handed_over`), computes its
    blocks straight into one array (:func:`into_one`).  ``dtype`` a list: ``fn``
    has as many outputs (see :class:`WritesInto`), and the result is a tuple of
    arrays, one per output, each of them written into one array when computed whole.
    """
    dtypes = list(dtype) if isinstance(dtype, list | tuple) else [dtype]
    name = LAYER_PREFIX + tokenize(fn, chunks, [str(np.dtype(d)) for d in dtypes], *(a.name for a in inputs))
    writer = WritesInto(fn, chunks, dtypes)
    graph: dict = {}
    indices = list(product(*(range(len(c)) for c in chunks)))
    for index in indices:
        picked = blocks_of(index) if blocks_of is not None else [index] * len(inputs)
        graph[(name, *index)] = (writer, *(_block(a, b) for a, b in zip(inputs, picked, strict=True)))
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=list(inputs))
    if not isinstance(dtype, list | tuple):
        return cls(hlg, name, chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype))
    blocks = da.Array(hlg, name, chunks, dtype=dtypes[0], meta=np.empty((0,) * len(chunks), dtypes[0]))
    parts = []
    for j, dt in enumerate(dtypes):
        part = f"{name}-{j}"
        layer = {(part, *index): (Part(writer, j), (name, *index)) for index in indices}
        parts.append(cls(HighLevelGraph.from_collections(part, layer, dependencies=[blocks]), part, chunks,
                         dtype=dt, meta=np.empty((0,) * len(chunks), dt)))
    return tuple(parts)


def _block(a: da.Array, index: tuple[int, ...]) -> Any:
    """The key of block ``index`` of ``a``, or the block itself where ``a``'s graph holds it as
    data (a numpy array in memory): then no task of the graph has to hand it over."""
    key = (a.name, *index)
    layer = a.dask.layers.get(a.name)
    value = layer.mapping.get(key) if isinstance(layer, MaterializedLayer) else None
    value = getattr(value, "value", value) if type(value).__name__ == "DataNode" else value
    return value if isinstance(value, np.ndarray) else key


def into_one(dsk: Any, keys: Any) -> Any:
    """``dsk`` with the block tasks of each :func:`written_into` array (or output of one) whose
    blocks are all in ``keys`` writing into one :class:`OneArray` (a task of their layer)."""
    if not isinstance(dsk, HighLevelGraph) or not any(
            isinstance(name, str) and name.startswith(LAYER_PREFIX) for name in dsk.layers):
        return dsk  # (the optimiser of every dask array: other graphs pass at the cost of a look at their layers)
    wanted: dict[str, set] = {}
    for key in _with_finalized(dsk, keys):
        if isinstance(key, tuple) and key and isinstance(key[0], str):
            wanted.setdefault(key[0], set()).add(key)
    plans: dict[str, set[int]] = {}  # the layer of WritesInto tasks -> its outputs computed whole
    for name, asked in wanted.items():
        layer = dsk.layers.get(name)
        task = layer.mapping.get(next(iter(asked))) if isinstance(layer, MaterializedLayer) else None
        if not (isinstance(task, tuple) and task and isinstance(task[0], WritesInto | Part)):
            continue
        writer = task[0] if isinstance(task[0], WritesInto) else task[0].writer
        if len(asked) != int(np.prod([len(c) for c in writer.chunks])) or len(asked) < 2:
            continue  # a part of the array, or one block (handed over as it is anyway)
        if isinstance(task[0], WritesInto):
            if len(writer.dtypes) == 1:
                plans.setdefault(name, set()).add(0)
        else:
            plans.setdefault(task[1][0], set()).add(task[0].j)
    layers = None
    for name, which in plans.items():
        layer = dsk.layers.get(name)
        if not isinstance(layer, MaterializedLayer):
            continue
        writer = next(iter(layer.mapping.values()))[0]
        outputs = [f"{name}-output-{j}" for j in sorted(which)]
        mapping = {out: (partial(OneArray, writer.chunks, writer.dtypes[j]),)
                   for out, j in zip(outputs, sorted(which), strict=True)}
        for key, (_, *args) in layer.mapping.items():
            mapping[key] = (partial(writer.into, index=key[1:], which=tuple(sorted(which))), *outputs, *args)
        layers = dict(dsk.layers) if layers is None else layers
        layers[name] = MaterializedLayer(mapping, annotations=layer.annotations)
    return dsk if layers is None else HighLevelGraph(layers, dsk.dependencies)


def optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """dask's array optimisation of ``dsk`` after :func:`into_one`: the optimiser of every dask array.

    >>> dask.config.get(OPTIMIZE_SETTING) is optimize
    True
    >>> a, total = dask.compute(written_into(lambda b, out=None: np.add(b, 1, out=out), [da.zeros(4, chunks=2)],
    ...                                      ((2, 2),), float), da.ones(3, chunks=1).sum())
    >>> a.tolist(), float(total)
    ([1.0, 1.0, 1.0, 1.0], 3.0)
    """
    return dask_optimize(into_one(dsk, keys), keys, **kwargs)


def _with_finalized(dsk: HighLevelGraph, keys: Any) -> list:
    """``keys``, and the keys that a requested task of a one-task layer takes (dask computes a
    collection by a task of its own that finalizes the collection's blocks)."""
    out = []
    for key in flatten(keys):
        out.append(key)
        layer = dsk.layers.get(key if isinstance(key, str) else None)
        if isinstance(layer, MaterializedLayer) and len(layer.mapping) == 1:
            out.extend(getattr(layer.mapping.get(key), "dependencies", ()))
    return out


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def tiled_base(results: Any, chunks: tuple[tuple[int, ...], ...]) -> np.ndarray | None:
    """The array that the blocks ``results`` (nested lists, in block order) are views of, if they
    tile all of it in place (as :func:`into_one` writes them); else None.

    >>> whole = np.zeros((4, 3))
    >>> tiled_base([[whole[:2]], [whole[2:]]], ((2, 2), (3,))) is whole
    True
    >>> tiled_base([[whole[2:]], [whole[:2]]], ((2, 2), (3,))) is None
    True
    """
    parts = list(flatten(results))
    if len(parts) < 2 or len(parts) != int(np.prod([len(c) for c in chunks])) \
            or not all(isinstance(p, np.ndarray) for p in parts):
        return None
    root, shape, dtype = _root(parts[0]), tuple(sum(c) for c in chunks), parts[0].dtype
    if root.base is not None or not root.flags.c_contiguous or root.nbytes != int(np.prod(shape)) * dtype.itemsize:
        return None
    if root.shape == shape and root.dtype == dtype:
        base = root
    elif root.ndim == 1 and root.dtype == np.uint8:  # memory of an earlier output (ArrayPool's bytes)
        base = root.view(dtype).reshape(shape)
    else:
        return None
    for part, index in zip(parts, product(*(range(len(c)) for c in chunks)), strict=True):
        place = base[block_slices(chunks, index)]
        if _root(part) is not root or part.shape != place.shape or part.strides != place.strides \
                or part.__array_interface__["data"][0] != place.__array_interface__["data"][0]:
            return None
    return base


if dask.config.get(OPTIMIZE_SETTING, None) is None:  # (a user's own setting stays: then no blocks written into one)
    dask.config.set({OPTIMIZE_SETTING: optimize})
