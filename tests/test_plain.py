"""Plainly stored rows read with pread, and the handle cache that keeps their files open.

Rows of datasets without filters are read with ``os.preadv`` at offsets HDF5
reports; everything else is left to HDF5.  These tests write small HDF5 files
of each layout and compare with h5py.
"""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pytest

from xfeldata.files.handles import FileHandleCache
from xfeldata.files.plain import PlainLayout, plain_layout, pread_rows

ROWS = np.arange(40 * 6, dtype=np.uint16).reshape(40, 2, 3)


@pytest.fixture
def layouts(tmp_path):
    """One file with the same rows stored in every layout, and some not plain."""
    path = tmp_path / "layouts.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("contiguous", data=ROWS)
        f.create_dataset("chunked", data=ROWS, chunks=(16, 2, 3))
        f.create_dataset("deflate", data=ROWS, chunks=(16, 2, 3), compression="gzip")
        f.create_dataset("split_rows", data=ROWS, chunks=(16, 1, 3))
        f.create_dataset("strings", data=np.array([b"a", b"bc"], dtype=h5py.string_dtype()))
        partly = f.create_dataset("partly_written", shape=ROWS.shape, dtype=ROWS.dtype,
                                  chunks=(16, 2, 3), fillvalue=7)
        partly[:16] = ROWS[:16]
        f.create_dataset("never_written", shape=ROWS.shape, dtype=ROWS.dtype)
        f.create_dataset("big_endian", data=ROWS.astype(">u2"), chunks=(16, 2, 3))
        odd_float = h5py.h5t.IEEE_F32LE.copy()
        odd_float.set_ebias(100)  # h5py converts it to float64 when reading
        h5py.h5d.create(f.id, b"odd_float", odd_float, h5py.h5s.create_simple((4,))).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.array([1.5, -2, 3, 1e-3], "f4"))
        int12 = h5py.h5t.STD_I16LE.copy()
        int12.set_precision(12)  # stored in 2 bytes, sign-extended when reading
        h5py.h5d.create(f.id, b"int12", int12, h5py.h5s.create_simple((4,))).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.array([-1, 1, -2047, 5], "i2"))
    return path


@pytest.mark.parametrize("name", ["contiguous", "chunked", "big_endian"])
@pytest.mark.parametrize("lo, hi", [(0, 40), (3, 5), (15, 17), (10, 40), (39, 40), (7, 7)])
def test_plain_rows_read_with_pread_equal_h5py(layouts, name, lo, hi):
    with h5py.File(layouts, "r") as f:
        layout = plain_layout(f[name])
        out = np.full((hi - lo, 2, 3), 9999, f[name].dtype)
        assert pread_rows(f.id.get_vfd_handle(), layout, lo, hi, out)
    np.testing.assert_array_equal(out, ROWS[lo:hi])


@pytest.mark.parametrize("name", ["deflate", "split_rows", "strings", "never_written",
                                  "odd_float", "int12"])
def test_filtered_split_or_unallocated_datasets_are_not_plain(layouts, name):
    with h5py.File(layouts, "r") as f:
        assert plain_layout(f[name]) is None


def test_a_destination_of_another_dtype_or_size_is_refused(layouts):
    with h5py.File(layouts, "r") as f:
        layout, fd = plain_layout(f["big_endian"]), f.id.get_vfd_handle()
        assert not pread_rows(fd, layout, 0, 4, np.zeros((4, 2, 3), "<u2"))  # other byte order
        assert not pread_rows(fd, layout, 0, 4, np.zeros((4, 2, 2), ">u2"))  # rows too small
        assert not pread_rows(fd, layout, 0, 4, np.zeros((4, 2, 6), ">u2")[:, :, ::2])  # strided


def test_rows_in_a_chunk_never_written_are_left_to_hdf5(layouts):
    with h5py.File(layouts, "r") as f:
        layout = plain_layout(f["partly_written"])
        out = np.zeros((4, 2, 3), np.uint16)
        assert pread_rows(f.id.get_vfd_handle(), layout, 12, 16, out)   # written chunk
        np.testing.assert_array_equal(out, ROWS[12:16])
        assert not pread_rows(f.id.get_vfd_handle(), layout, 14, 18, out)  # reaches chunk 1


def test_a_layout_past_the_end_of_a_truncated_file_reads_nothing_and_says_so(layouts):
    with h5py.File(layouts, "r") as f:
        layout = plain_layout(f["contiguous"])
        beyond = PlainLayout(None, layout.dtype, layout.nrows, layout.row_bytes, offset=layouts.stat().st_size)
        assert not pread_rows(f.id.get_vfd_handle(), beyond, 0, 1, np.zeros((1, 2, 3), np.uint16))


def test_a_file_in_use_is_closed_only_when_its_use_ends(layouts, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    cache = FileHandleCache(maxsize=1)
    with cache.use(str(layouts)) as opened:
        with cache.use(str(other)):  # evicts layouts.h5 from the cache
            pass
        assert len(cache) == 1
        assert opened.file.id.valid  # but it stays open while in use
        out = np.zeros((2, 2, 3), np.uint16)
        assert pread_rows(opened.fd, opened.plain_layout("chunked"), 0, 2, out)
        np.testing.assert_array_equal(out, ROWS[:2])
    assert not opened.file.id.valid
    cache.clear()


def test_files_in_use_on_threads_stay_valid_while_others_evict_them(layouts, tmp_path):
    paths = [str(layouts)]
    for i in range(3):
        p = tmp_path / f"f{i}.h5"
        with h5py.File(p, "w") as f:
            f["x"] = np.zeros(3)
        paths.append(str(p))
    cache, failures = FileHandleCache(maxsize=1), []

    def reader() -> None:
        for _ in range(50):
            with cache.use(paths[0]) as opened:
                out = np.zeros((40, 2, 3), np.uint16)
                ok = pread_rows(opened.fd, opened.plain_layout("contiguous"), 0, 40, out)
                if not ok or not np.array_equal(out, ROWS):
                    failures.append(out)

    def evicter() -> None:
        for i in range(150):
            with cache.use(paths[1 + i % 3]):
                pass

    threads = [threading.Thread(target=reader), threading.Thread(target=evicter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not failures
    cache.clear()


def test_a_forked_child_starts_with_an_empty_cache(layouts):
    cache = FileHandleCache()
    with cache.use(str(layouts)):
        pass
    pid = os.fork()
    if pid == 0:  # the child: report how many files its cache holds
        os._exit(len(cache))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(cache) == 1
    cache.clear()
