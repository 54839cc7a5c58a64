"""Images assembled in tiles of 8 x 8 pixels moved through vector registers (compiled: needs numba).

EXtra-geom places each tile of a module as whole pixels, turned by a multiple
of 90 degrees or mirrored, so nearly every pixel of an image belongs to an
8 x 8 block of its frame that is copied, mirrored or transposed whole.
:func:`plan` finds those blocks in an index map (each image pixel's place in
the frame, as :mod:`~xfeldata.analysis.geometry` makes it from EXtra-geom);
:func:`assemble_frames` fills the gaps with NaN runs, loads each block as 8
vectors of 8 pixels, shuffles them in registers and stores 8 vectors, then
gathers whatever pixels are left one by one.  A pixel-by-pixel gather through
the map reads a turned module out of order and took about twice as long
(``benchmarks/RESULTS.md``, "assemble in 8 x 8 tiles").

Examples
--------
A frame of one 8 x 8 module, transposed into an image with a gap column:

>>> source = np.full((8, 9), -1)
>>> source[:, 1:] = np.arange(64).reshape(8, 8).T
>>> tiles = plan(source.ravel(), (1, 8, 8))
>>> len(tiles.kind), len(tiles.gap_at), len(tiles.stray_at)   # one block, one gap run per row
(1, 8, 0)
>>> frame = np.arange(64, dtype=np.uint16)
>>> image = np.empty(72, np.float32)
>>> assemble_frames(frame, np.array([0]), tiles, image, np.array([0]))
>>> image.reshape(8, 9)[1, :4].tolist()
[nan, 1.0, 9.0, 17.0]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: Block kinds: frame rows to image rows as they are, mirrored, or transposed.
ROWS, MIRRORED, TRANSPOSED = 0, 1, 2


class Tiles(NamedTuple):
    """How one index map assembles a frame: 8 x 8 blocks, NaN runs and single pixels (int64 arrays).

    Block ``b`` loads 8 vectors of 8 frame pixels, vector ``k`` at
    ``src_at[b] + k * src_step[b]``, rearranges them by ``kind[b]`` and stores
    vector ``k`` at image element ``dst_at[b] + k * dst_step[b]``.
    """

    frame_size: int  # elements of a frame and of an image: every entry stays inside them
    image_size: int
    kind: np.ndarray
    src_at: np.ndarray
    src_step: np.ndarray
    dst_at: np.ndarray
    dst_step: np.ndarray
    gap_at: np.ndarray  # NaN runs: first image element and length
    gap_len: np.ndarray
    stray_at: np.ndarray  # image pixels in no block, and their frame pixels
    stray_source: np.ndarray


def plan(source: np.ndarray, frame_shape: tuple[int, int, int]) -> Tiles:
    """The blocks, gaps and single pixels that assemble frames of ``frame_shape`` by ``source``.

    A block of 8 x 8 frame pixels (slow scan x fast scan, at multiples of 8
    in one module) is moved whole when each of its pixels is the one
    ``source`` puts at its image pixel and its fast-scan rows land as 8
    runs of 8 image elements, each as it is or mirrored, or, transposed,
    its slow-scan columns do.  Every other image pixel is a gap (NaN) or a
    stray, gathered alone.

    Parameters
    ----------
    source
        ``(n,)`` integers: each image pixel's index in the flat frame, -1 (or below) in gaps.
    frame_shape
        ``(module, slow_scan, fast_scan)`` of a frame.

    Returns
    -------
    Tiles
        For :func:`assemble_frames`.

    Examples
    --------
    >>> source = np.arange(128).reshape(8, 16)[:, ::-1].ravel()   # an 8 x 16 module, mirrored
    >>> tiles = plan(source, (1, 8, 16))
    >>> tiles.kind.tolist(), tiles.dst_at.tolist(), tiles.dst_step.tolist()
    ([1, 1], [8, 0], [16, 16])
    """
    n_modules, n_ss, n_fs = frame_shape
    n_pixels = n_modules * n_ss * n_fs
    source = np.asarray(source, np.int64)
    placed = np.flatnonzero(source >= 0)
    where = np.full(n_pixels, -1, np.int64)  # each frame pixel's image pixel, -1: none
    where[source[placed]] = placed
    ss8, fs8 = n_ss // 8 * 8, n_fs // 8 * 8
    # (module, fs block, ss block, 8, 8): consecutive blocks of a turned module fill adjacent image memory
    blocks = (where.reshape(n_modules, n_ss, n_fs)[:, :ss8, :fs8]
              .reshape(n_modules, ss8 // 8, 8, fs8 // 8, 8).transpose(0, 3, 1, 2, 4).reshape(-1, 8, 8))
    first = (np.arange(n_pixels).reshape(n_modules, n_ss, n_fs)[:, :ss8:8, :fs8:8]
             .transpose(0, 2, 1).ravel())  # each block's first frame pixel
    at = blocks[:, 0, 0]
    ss_step, fs_step = blocks[:, 1, 0] - at, blocks[:, 0, 1] - at
    k = np.arange(8)
    square = (blocks == at[:, None, None] + ss_step[:, None, None] * k[:, None] + fs_step[:, None, None] * k).all(
        axis=(1, 2)) & (blocks >= 0).all(axis=(1, 2))
    kind = np.select([np.abs(ss_step) == 1, fs_step == 1, fs_step == -1], [TRANSPOSED, ROWS, MIRRORED], -1)
    tile = square & (kind >= 0)
    kind, first, at, ss_step, fs_step = kind[tile], first[tile], at[tile], ss_step[tile], fs_step[tile]
    transposed, back = kind == TRANSPOSED, ss_step < 0
    # transposed: the loaded vectors are frame rows, and after the transpose vector k is the block's
    # fast-scan column k, stored at k * fs_step (a block whose slow scan runs to lower image elements
    # loads its rows bottom-up).  Rows and mirrored: vector k is frame row k, stored at k * ss_step.
    src_at = np.where(transposed & back, first + 7 * n_fs, first)
    src_step = np.where(transposed & back, -n_fs, n_fs)
    dst_at = at - 7 * ((transposed & back) | (kind == MIRRORED))
    dst_step = np.where(transposed, fs_step, ss_step)
    rest = np.ones(source.shape, bool)
    rest[blocks[tile].ravel()] = False
    gaps = np.diff(np.concatenate([[0], (rest & (source < 0)).astype(np.int8), [0]]))
    gap_at, gap_end = np.flatnonzero(gaps == 1), np.flatnonzero(gaps == -1)
    stray_at = np.flatnonzero(rest & (source >= 0))
    fields = (kind, src_at, src_step, dst_at, dst_step, gap_at, gap_end - gap_at, stray_at, source[stray_at])
    return Tiles(n_pixels, len(source), *(np.ascontiguousarray(f, np.int64) for f in fields))


def _vector_type(dtype: types.Type) -> ir.VectorType:
    return ir.VectorType(ir.IntType(dtype.bitwidth) if isinstance(dtype, types.Integer)
                         else ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType(), 8)


def _convert(builder: ir.IRBuilder, v: ir.Value, src: types.Type, dst: types.Type) -> ir.Value:
    """A vector of ``src`` elements as ``dst`` floats, rounded as numpy and numba's scalars round."""
    to = _vector_type(dst)
    if isinstance(src, types.Integer):
        return builder.sitofp(v, to) if src.signed else builder.uitofp(v, to)
    if src.bitwidth < dst.bitwidth:
        return builder.fpext(v, to)
    return builder.fptrunc(v, to) if src.bitwidth > dst.bitwidth else v


def _mask(*lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(ir.IntType(32), 8), lanes)


# An 8 x 8 transpose in three rounds of two-vector shuffles (for 32-bit lanes, x86's unpack, shuffle
# and 128-bit permute): each round lists (vector i, vector j, lanes of their concatenation).
_LOW, _HIGH = (0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15)
_PAIRS_LOW, _PAIRS_HIGH = (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)
_HALF_LOW, _HALF_HIGH = (0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)
_TRANSPOSE = (
    [(i, i + 1, lanes) for i in (0, 2, 4, 6) for lanes in (_LOW, _HIGH)],
    [(i, i + 2, lanes) for i in (0, 1, 4, 5) for lanes in (_PAIRS_LOW, _PAIRS_HIGH)],
    [(i, i + 4, lanes) for lanes in (_HALF_LOW, _HALF_HIGH) for i in (0, 1, 2, 3)],
)


def _rearranged(builder: ir.IRBuilder, vectors: list, kind: int) -> list:
    if kind == MIRRORED:
        return [builder.shuffle_vector(v, v, _mask(*range(7, -1, -1))) for v in vectors]
    if kind == TRANSPOSED:
        for shuffles in _TRANSPOSE:
            vectors = [builder.shuffle_vector(vectors[i], vectors[j], _mask(*lanes)) for i, j, lanes in shuffles]
    return vectors


def _block_mover(kind: int) -> Any:
    """An intrinsic ``move(src, src_at, src_step, dst, dst_at, dst_step)`` of one block of ``kind``
    between 1-d C-contiguous arrays (no bounds checks: :func:`plan` keeps every block inside)."""

    @intrinsic
    def move(typingctx, src, src_at, src_step, dst, dst_at, dst_step):
        if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (src, dst)):
            return None
        floats = (types.float32, types.float64)
        if dst.dtype not in floats or not (isinstance(src.dtype, types.Integer) or src.dtype in floats):
            return None  # (any other type: a typing error, never a vector of the wrong width)

        def codegen(context, builder, signature, args):
            src_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
            dst_ptr = context.make_array(signature.args[3])(context, builder, args[3]).data
            vectors = []
            for k in range(8):
                at = builder.add(args[1], builder.mul(args[2], ir.Constant(args[2].type, k)))
                pointer = builder.bitcast(builder.gep(src_ptr, [at]), _vector_type(src.dtype).as_pointer())
                vectors.append(builder.load(pointer, align=src.dtype.bitwidth // 8))
            for k, v in enumerate(_rearranged(builder, vectors, kind)):
                at = builder.add(args[4], builder.mul(args[5], ir.Constant(args[5].type, k)))
                pointer = builder.bitcast(builder.gep(dst_ptr, [at]), _vector_type(dst.dtype).as_pointer())
                builder.store(_convert(builder, v, src.dtype, dst.dtype), pointer, align=dst.dtype.bitwidth // 8)
            return context.get_dummy_value()

        return types.void(src, types.intp, types.intp, dst, types.intp, types.intp), codegen

    return move


_move_rows, _move_mirrored, _move_transposed = (_block_mover(k) for k in (ROWS, MIRRORED, TRANSPOSED))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _assemble(frames, frames_at, images, images_at, kind, src_at, src_step, dst_at, dst_step,
              gap_at, gap_len, stray_at, stray_source):  # pragma: no cover - compiled
    nan = np.nan
    for f in range(frames_at.shape[0]):
        fo, io = frames_at[f], images_at[f]
        for g in range(gap_at.shape[0]):
            start = io + gap_at[g]
            for i in range(start, start + gap_len[g]):
                images[i] = nan
        for b in range(kind.shape[0]):
            if kind[b] == TRANSPOSED:
                _move_transposed(frames, fo + src_at[b], src_step[b], images, io + dst_at[b], dst_step[b])
            elif kind[b] == ROWS:
                _move_rows(frames, fo + src_at[b], src_step[b], images, io + dst_at[b], dst_step[b])
            else:
                _move_mirrored(frames, fo + src_at[b], src_step[b], images, io + dst_at[b], dst_step[b])
        for s in range(stray_at.shape[0]):
            images[io + stray_at[s]] = frames[fo + stray_source[s]]


def assemble_frames(frames: np.ndarray, frames_at: np.ndarray, tiles: Tiles, images: np.ndarray,
                    images_at: np.ndarray) -> None:
    """Assemble frames into images by ``tiles`` (of :func:`plan`), both 1-d C-contiguous with each
    frame's and image's offset (:func:`~xfeldata.analysis._jit.flat_frames`); releases the GIL.

    >>> tiles = plan(np.array([1, 0, -1]), (1, 1, 2))   # two pixels swapped, a gap: no blocks
    >>> images = np.empty(6)
    >>> assemble_frames(np.array([1, 2, 3, 4], np.uint8), np.array([0, 2]), tiles, images, np.array([0, 3]))
    >>> images.tolist()
    [2.0, 1.0, nan, 4.0, 3.0, nan]
    """
    frames_at = np.ascontiguousarray(frames_at, np.int64).ravel()
    images_at = np.ascontiguousarray(images_at, np.int64).ravel()
    if len(frames_at) != len(images_at):
        raise ValueError(f"{len(frames_at)} frame offsets for {len(images_at)} images")
    for name, array, at, size in (("frame", frames, frames_at, tiles.frame_size),
                                  ("image", images, images_at, tiles.image_size)):
        if array.ndim != 1 or not array.flags.c_contiguous:
            raise ValueError(f"the {name}s must be one 1-d C-contiguous array")
        if len(at) and (at.min() < 0 or at.max() + size > array.size):
            raise ValueError(f"{name} offsets {at.min()}..{at.max()} with {size} elements each do not fit "
                             f"in {array.size} elements")
    _assemble(frames, frames_at, images, images_at, *tiles[2:])
