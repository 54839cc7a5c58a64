"""Compressed pixel data written by other writers decodes outside HDF5, to the same values.

Corrected detector data (float32, deflate + shuffle, one frame per chunk) is
decoded chunk by chunk by :mod:`xfeldata.files.direct` instead of HDF5's filter
pipeline.  Here the files come from EXtra-data's mock writers and from h5py with
creation properties other writers use (fixed or unlimited maximum shape, other
deflate levels, allocation and fill settings).  Each read is compared with h5py's
own; a filter pipeline the fast path cannot undo (Fletcher-32 checksums, deflate
before shuffle) is read by HDF5, still exactly.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import xfeldata as xd
from xfeldata.files import direct
from xfeldata.files.direct import read_rows_into

#: Frames per train and trains of the mock-written corrected module.
FRAMES, TRAINS = 4, 3
CORR_SOURCE = "SPB_DET_AGIPD1M-1/CORR/0CH0:output"


@pytest.fixture
def hdf5_reads(monkeypatch) -> list[tuple[str, int, int]]:
    """``(dataset name, first row, stop row)`` of every read through HDF5's filter
    pipeline from now on."""
    names: list[tuple[str, int, int]] = []
    for cls in (direct._Rows, direct._Frames):
        real = cls.from_hdf5

        def counting(self, ds, lo, hi, start, real=real):
            names.append((ds.name, lo, hi))
            return real(self, ds, lo, hi, start)
        monkeypatch.setattr(cls, "from_hdf5", counting)
    return names


@pytest.fixture(scope="module")
def mock_corr_run(tmp_path_factory):
    """Corrected AGIPD module 0 written by EXtra-data's mock writer, ``image.data`` deflate
    level 1 + shuffle as the calibration pipeline writes it, filled with random values."""
    mockdata = pytest.importorskip("extra_data.tests.mockdata")
    from extra_data.tests.mockdata.detectors import AGIPDModule

    class CompressedAGIPDModule(AGIPDModule):
        @property
        def image_keys(self):
            return [(k, t, d, {"compression": "gzip", "compression_opts": 1, "shuffle": True}
                     if k == "data" else kw) for k, t, d, kw in super().image_keys]

    run_dir = tmp_path_factory.mktemp("mock_corr")
    path = run_dir / "CORR-R0001-AGIPD00-S00000.h5"
    module = CompressedAGIPDModule("SPB_DET_AGIPD1M-1/CORR/0CH0", channel_name="output", raw=False,
                                   frames_per_train=FRAMES, legacy_name="SPB_DET_AGIPD1M-1/DET/0CH0")
    mockdata.write_file(str(path), [module], ntrains=TRAINS, chunksize=32, format_version="1.0")
    with h5py.File(path, "r+") as f:
        ds = f[f"INSTRUMENT/{CORR_SOURCE}/image/data"]
        ds[...] = np.random.default_rng(3).normal(100, 30, ds.shape).astype(ds.dtype)
    return run_dir


def test_mock_written_corrected_frames_decode_outside_hdf5_to_h5py_values(mock_corr_run, hdf5_reads):
    with h5py.File(mock_corr_run / "CORR-R0001-AGIPD00-S00000.h5", "r") as f:
        ds = f[f"INSTRUMENT/{CORR_SOURCE}/image/data"]
        assert ds.compression == "gzip" and ds.shuffle and ds.chunks == (1, *ds.shape[1:])
        expected = ds[()].reshape(TRAINS, FRAMES, *ds.shape[1:])
    run = xd.open_run(mock_corr_run, progress=False)
    for dask in (True, False):
        frames = run.detector(dask=dask)["image.data"].values    # (train, pulse, module, ss, fs)
        np.testing.assert_array_equal(frames[:, :, 0], expected)
    assert hdf5_reads == []


def _create(f: h5py.File, name: str, values: np.ndarray, *, order: str = "shuffle-deflate",
            level: int = 1, fletcher32: bool = False, maxshape=None, alloc: int | None = None,
            fill: float = 0.0) -> h5py.Dataset:
    """A one-frame-per-chunk dataset with the creation properties of another writer."""
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_chunk((1, *values.shape[1:]))
    if order == "shuffle-deflate":       # what h5py, EXtra-data and the facility's writers do
        plist.set_shuffle()
        plist.set_deflate(level)
    else:                                # deflate first, then shuffle the compressed bytes
        plist.set_deflate(level)
        plist.set_shuffle()
    if fletcher32:
        plist.set_fletcher32()
    if alloc is not None:
        plist.set_alloc_time(alloc)
    plist.set_fill_value(np.array(fill, values.dtype))
    unlimited = tuple(h5py.h5s.UNLIMITED if n is None else n for n in maxshape or values.shape)
    space = h5py.h5s.create_simple(values.shape, unlimited)
    dsid = h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(values.dtype), space, dcpl=plist)
    ds = h5py.Dataset(dsid)
    ds[: len(values) - 2] = values[:-2]  # the last two frames are never written
    return ds


@pytest.mark.parametrize("props, through_hdf5", [
    ({}, False),
    ({"level": 9, "maxshape": (None, 64, 32)}, False),
    ({"alloc": h5py.h5d.ALLOC_TIME_EARLY, "fill": 7.5}, False),
    ({"fletcher32": True}, True),
    ({"order": "deflate-shuffle"}, True),
])
def test_foreign_creation_properties_read_exactly(tmp_path, hdf5_reads, props, through_hdf5):
    values = np.random.default_rng(1).normal(100, 30, (6, 64, 32)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = _create(f, "data", values, **props)
        expected = ds[()]
        assert (expected[-2:] == props.get("fill", 0.0)).all()     # unwritten: the fill value
        one = np.full_like(expected, -1)
        read_rows_into(ds, 0, 6, one, {})
        per_row = np.full((6, 2, 64, 32), -1, np.float32)         # each row into every other slot
        read_rows_into(ds, 1, 6, [per_row[i, 1] for i in range(5)], {})
    np.testing.assert_array_equal(one, expected)
    np.testing.assert_array_equal(per_row[:5, 1], expected[1:6])
    assert (per_row[:, 0] == -1).all() and (per_row[5:] == -1).all()
    # rows never written are HDF5's to fill (it knows the fill value); written ones only
    # if the fast path cannot undo the filters
    assert any(lo < 4 for _, lo, _ in hdf5_reads) == through_hdf5
