"""Blocks written straight into one output array (xfeldata.into) and its hand-over by FreshArray."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest

from xfeldata import into
from xfeldata.arrays import FreshArray, handed_over
from xfeldata.pool import ArrayPool


def _double(block, out=None):
    return np.multiply(block, 2, out=out)


def _doubled(x: da.Array, fresh: bool = False) -> da.Array:
    if fresh:
        return into.written_into(_double, [x], x.chunks, x.dtype, cls=FreshArray)
    return handed_over(into.written_into(_double, [x], x.chunks, x.dtype))


@pytest.fixture
def no_concatenation(monkeypatch):
    """dask's final concatenation of the blocks fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("dask concatenated the blocks")
    monkeypatch.setattr(dask.array.core, "concatenate3", refuse)


@pytest.mark.parametrize("fresh", [False, True])
@pytest.mark.parametrize("chunks", [(2, 6), (6, 2), (2, 3)])
def test_a_computed_array_is_its_blocks_written_into_one_array(chunks, fresh, no_concatenation):
    x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=chunks)
    doubled = _doubled(x, fresh)
    for scheduler in ("threads", "sync"):
        with dask.config.set(scheduler=scheduler):
            values = doubled.compute()
            np.testing.assert_array_equal(values, np.arange(36.0).reshape(6, 6) * 2)
            assert values.flags.c_contiguous and values.flags.writeable  # one array (no concatenation)
            assert not np.shares_memory(values, doubled.compute())  # another one while this one is used


def test_the_memory_of_an_output_nothing_uses_is_used_again(monkeypatch):
    monkeypatch.setattr(into, "_outputs", ArrayPool(keep=2))  # none kept by other tests
    x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=(2, 3))
    address = _doubled(x).compute().__array_interface__["data"][0]  # dropped at once
    again = _doubled(x).compute()
    assert again.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(again, np.arange(36.0).reshape(6, 6) * 2)
    assert not np.shares_memory(again, _doubled(x).compute())  # in use: not again
    monkeypatch.setenv("XFELDATA_KEEP_BUFFERS", "0")
    assert _doubled(x).compute().base is None  # new memory, not the pool's


def test_as_an_input_or_in_part_its_blocks_are_new_memory_as_usual():
    x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=(2, 3))
    doubled = _doubled(x)
    expected = np.arange(36.0).reshape(6, 6) * 2
    np.testing.assert_array_equal((doubled + 1).compute(), expected + 1)
    np.testing.assert_array_equal(doubled[1:5, 2:].compute(), expected[1:5, 2:])
    assert float(doubled.sum().compute()) == expected.sum()
    both, plus = dask.compute(doubled, doubled + 1)
    np.testing.assert_array_equal(both, expected)
    np.testing.assert_array_equal(plus, expected + 1)
    np.testing.assert_array_equal(dask.compute(doubled, optimize_graph=False)[0], expected)


def test_a_copy_in_another_process_has_no_place_for_blocks():
    output = into.OneArray(((2, 2), (3,)), np.float64)
    assert output.block((1, 0)).shape == (2, 3)
    assert pickle.loads(pickle.dumps(output)).block((1, 0)) is None
    x = da.from_array(np.arange(12.0).reshape(4, 3), chunks=(2, 3))
    np.testing.assert_array_equal(_doubled(x).compute(scheduler="processes"), np.arange(12.0).reshape(4, 3) * 2)


def test_blocks_that_do_not_tile_their_array_in_place_are_concatenated():
    whole = np.arange(12.0).reshape(4, 3).copy()  # an array of its own, as OneArray allocates
    chunks = ((2, 2), (3,))
    assert into.tiled_base([[whole[:2]], [whole[2:]]], chunks) is whole
    assert into.tiled_base([[whole[2:]], [whole[:2]]], chunks) is None      # swapped
    assert into.tiled_base([[whole[:2].copy()], [whole[2:]]], chunks) is None  # not all views of it
    assert into.tiled_base([[whole[:2]], [whole[2:]]], ((2, 1), (3,))) is None  # not its shape
    pooled = np.empty(whole.nbytes, np.uint8)  # ArrayPool's memory of an earlier output
    typed = pooled.view(whole.dtype).reshape(4, 3)
    tiled = into.tiled_base([[typed[:2]], [typed[2:]]], chunks)
    assert tiled.shape == (4, 3) and tiled.dtype == whole.dtype and np.shares_memory(tiled, pooled)


@pytest.mark.parametrize("fresh", [False, True])
def test_computed_together_with_plain_dask_arrays_every_result_is_in_its_place(fresh):
    """dask.compute groups the collections it is given by their graph optimiser and used to return the
    groups' results in group order: arrays written into one array must share dask's optimiser, so that
    results never change places (a Dataset's variables got each other's values)."""
    x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=(2, 6))
    doubled, plain, tripled = _doubled(x, fresh), x.sum(axis=1), _doubled(x * 1.5, fresh)
    for scheduler in ("threads", "sync"):
        a, b, c = dask.compute(doubled, plain, tripled, scheduler=scheduler)
        np.testing.assert_array_equal(a, 2 * x.compute())
        np.testing.assert_array_equal(b, x.compute().sum(axis=1))
        np.testing.assert_array_equal(c, 3 * x.compute())
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"doubled": (("a", "b"), doubled), "sum": ("a", plain), "tripled": (("a", "b"), tripled)})
    if not fresh:  # (xarray refuses to compute a Dataset mixing FreshArray with dask arrays)
        computed = ds.compute()
        np.testing.assert_array_equal(computed["sum"].values, x.compute().sum(axis=1))
        np.testing.assert_array_equal(computed["tripled"].values, 3 * x.compute())
