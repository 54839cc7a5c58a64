"""The public file writer (``xfeldata.files.writer``) writes the format of ``format.md``.

A file written with :class:`FileWriter` opens with xfeldata and with EXtra-data
with the trains, sources and values given; rows may be streamed in any pieces;
METADATA and INDEX follow the chosen format version.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import xfeldata as xd
from xfeldata.files.writer import TIMESERVER_ENTRY, FileWriter, Key, RowWriter, Storage, pixel_storage

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
CAM = "SPB_CAM/CAM/1:daqOutput"
TRAINS = np.arange(5000, 5006, dtype=np.uint64)
CAM_COUNTS = np.array([1, 0, 1, 1, 0, 1])


def write_small(path, version="1.3", **kw):
    """Six trains: an XGM control source, a camera with trains 5001 and 5004 missing."""
    flux = np.linspace(1, 2, 6, dtype="f4")
    pixels = np.arange(4 * 3 * 2, dtype="u2").reshape(4, 3, 2)
    with FileWriter(path, TRAINS, format_version=version, timestamps=TRAINS * 10**8,
                    proposal=900001, run=7, sequence=2, **kw) as f:
        xgm = f.add_control(XGM, [Key("pulseEnergy.photonFlux", "f4", attrs={"unitSymbol": "J"}),
                                  Key("state", "str")],
                            run_values={"pulseEnergy.photonFlux": flux[0], "classId": "DoocsXGM"})
        xgm["pulseEnergy.photonFlux"].append(flux)
        xgm["pulseEnergy.photonFlux.timestamp"].append(TRAINS * 10**8)
        xgm["state"].append(["ON"] * 6)
        xgm["state.timestamp"].append(np.zeros(6, "u8"))
        cam = f.add_instrument(CAM, [Key("data.image.pixels", "u2", (3, 2))], CAM_COUNTS,
                               storage={"data.image.pixels": pixel_storage(corrected=True)})
        for row in pixels:  # streamed one row at a time
            cam["data.image.pixels"].append(row[None])
    return flux, pixels


def test_a_written_file_opens_with_its_trains_sources_and_values(tmp_path):
    path = tmp_path / "RAW-R0007-DA01-S00002.h5"
    flux, pixels = write_small(path)
    run = xd.open_file(path)
    np.testing.assert_array_equal(run.train_ids, TRAINS)
    assert set(run.sources) == {XGM, CAM}
    np.testing.assert_array_equal(run[XGM, "pulseEnergy.photonFlux"].values, flux)
    cam = run[CAM, "data.image.pixels"]
    np.testing.assert_array_equal(cam.trainId.values, TRAINS[CAM_COUNTS == 1])
    np.testing.assert_array_equal(cam.values, pixels)


def test_extra_data_reads_the_same_trains_and_values(tmp_path):
    extra_data = pytest.importorskip("extra_data")
    path = tmp_path / "RAW-R0007-DA01-S00002.h5"
    flux, pixels = write_small(path)
    f = extra_data.H5File(str(path))
    np.testing.assert_array_equal(f.train_ids, TRAINS)
    assert f.control_sources == {XGM} and f.instrument_sources == {CAM}
    np.testing.assert_array_equal(f[XGM, "pulseEnergy.photonFlux"].ndarray(), flux)
    tids, data = f[CAM, "data.image.pixels"].ndarray(), f[CAM, "data.image.pixels"].train_id_coordinates()
    np.testing.assert_array_equal(tids, pixels)
    np.testing.assert_array_equal(data, TRAINS[CAM_COUNTS == 1])
    assert f.get_run_value(XGM, "classId") == "DoocsXGM"
    assert f.run_metadata()["proposalNumber"] == 900001


def test_index_first_count_and_metadata_in_format_1_3(tmp_path):
    path = tmp_path / "f.h5"
    write_small(path)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[f"INDEX/{CAM}/data/count"][:], CAM_COUNTS)
        np.testing.assert_array_equal(f[f"INDEX/{CAM}/data/first"][:], [0, 1, 1, 2, 3, 3])
        np.testing.assert_array_equal(f[f"INDEX/{XGM}/count"][:], 1)
        np.testing.assert_array_equal(f["INDEX/flag"][:], 1)
        np.testing.assert_array_equal(f["INDEX/origin"][:], -1)
        np.testing.assert_array_equal(f["INDEX/timestamp"][:], TRAINS * 10**8)
        assert f["METADATA/dataFormatVersion"][0] == b"1.3"
        assert (f["METADATA/proposalNumber"][0], f["METADATA/runNumber"][0],
                f["METADATA/sequenceNumber"][0]) == (900001, 7, 2)
        assert f["METADATA/dataSources/root"].asstr()[:].tolist() == ["CONTROL", "INSTRUMENT"]
        assert f[f"CONTROL/{XGM}/pulseEnergy/photonFlux"].attrs["unitSymbol"] in ("J", b"J")
        assert f[f"RUN/{XGM}/classId/value"][0] == b"DoocsXGM"
        assert f[f"RUN/{XGM}/state/value"][0] == b""
        assert f[f"CONTROL/{XGM}/state/value"][0] == b"ON"
        pix = f[f"INSTRUMENT/{CAM}/data/image/pixels"]
        assert pix.chunks == (1, 3, 2) and pix.compression == "gzip" and pix.shuffle


def test_format_0_5_pads_the_source_lists_and_has_no_version(tmp_path):
    path = tmp_path / "f.h5"
    write_small(path, version="0.5", old_index=True)
    with h5py.File(path, "r") as f:
        assert "METADATA/dataFormatVersion" not in f and "INDEX/flag" not in f
        ids = f["METADATA/dataSourceId"][:]
        assert len(ids) == 16 and ids[2:].tolist() == [b""] * 14
        np.testing.assert_array_equal(f[f"INDEX/{CAM}/data/status"][:], CAM_COUNTS)
        np.testing.assert_array_equal(f[f"INDEX/{CAM}/data/last"][:], [0, 1, 1, 2, 3, 3])
    np.testing.assert_array_equal(xd.open_file(path).train_ids, TRAINS)


def test_format_1_1_inverts_flag_and_lists_the_time_server(tmp_path):
    path = tmp_path / "f.h5"
    good = np.array([1, 1, 0, 1, 1, 1], bool)
    write_small(path, version="1.1", good=good)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["INDEX/flag"][:], ~good)
        assert f["METADATA/dataSources/dataSourceId"][0].decode() == TIMESERVER_ENTRY
        assert "INDEX/origin" not in f


def test_format_1_2_origin_points_into_the_source_list_and_padding_is_zero(tmp_path):
    path = tmp_path / "f.h5"
    write_small(path, version="1.2", good=[1, 1, 1, 0, 1, 1],
                origin={3: f"INSTRUMENT/{CAM}/data"}, zero_padding=2)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["INDEX/origin"][:], [-1, -1, -1, 1, -1, -1, 0, 0])
        np.testing.assert_array_equal(f["INDEX/trainId"][6:], 0)
        np.testing.assert_array_equal(f[f"INDEX/{CAM}/data/count"][6:], 0)
    with pytest.raises(ValueError, match="not in the source list"):
        with FileWriter(tmp_path / "g.h5", [1], format_version="1.2", origin={0: "CONTROL/X"}):
            pass


@pytest.mark.parametrize("storage", [Storage(), Storage(rows_per_chunk=4, compression="gzip"),
                                     Storage(rows_per_chunk=3, compression="gzip", shuffle=False),
                                     Storage(rows_per_chunk=2, compression="lzf")])
def test_rows_streamed_in_any_pieces_read_back_equal(tmp_path, storage):
    values = np.random.default_rng(1).integers(0, 1000, (11, 5)).astype("i4")
    counts = [3, 0, 8]
    with FileWriter(tmp_path / "f.h5", [1, 2, 3]) as f:
        rows = f.add_instrument("A/B/C:out", [Key("data.x", "i4", (5,))], counts,
                                storage={"data.x": storage})["data.x"]
        for piece in np.split(values, [1, 2, 7]):
            rows.append(piece)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        np.testing.assert_array_equal(f["INSTRUMENT/A/B/C:out/data/x"][:], values)


def test_more_rows_than_the_counts_is_an_error_naming_file_and_dataset(tmp_path):
    with FileWriter(tmp_path / "f.h5", [1, 2]) as f:
        rows = f.add_instrument("A/B/C:out", [Key("data.x", "f8")], [1, 1])["data.x"]
        with pytest.raises(ValueError, match=r"f\.h5: /INSTRUMENT/A/B/C:out/data/x has 2 rows"):
            rows.append(np.zeros(3))


def test_counts_must_have_one_value_per_train(tmp_path):
    with FileWriter(tmp_path / "f.h5", [1, 2]) as f:
        with pytest.raises(ValueError, match="A/B/C:out/data: counts need one non-negative"):
            f.add_instrument("A/B/C:out", [Key("data.x", "f8")], [1, 1, 1])


def test_an_existing_file_is_not_overwritten_unless_asked(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        FileWriter(path, [1])
    assert path.read_bytes() == b"precious"
    with FileWriter(path, [1], overwrite=True):
        pass
    with h5py.File(path, "r") as f:
        assert f["INDEX/trainId"][:].tolist() == [1]


def test_alias_is_a_soft_link_listed_in_the_source_list(tmp_path):
    new, old = "DET/CORR/0CH0:output", "DET/DET/0CH0:xtdf"
    with FileWriter(tmp_path / "f.h5", [1]) as f:
        f.add_instrument(new, [Key("image.data", "f4", (2,))])["image.data"].append(np.ones((1, 2)))
        f.add_alias(old, new)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert isinstance(f.get(f"INSTRUMENT/{old}", getlink=True), h5py.SoftLink)
        assert f[f"INDEX/{old}/image/count"][:].tolist() == [1]
        assert f"INSTRUMENT/{old}/image" in f["METADATA/dataSources/dataSourceId"].asstr()[:]


def test_row_writer_zero_fills_unwritten_rows(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        rows = RowWriter(f.create_dataset("x", (4,), "u2", chunks=(3,), compression="gzip"))
        rows.append(np.array([7, 8], "u2"))
        rows.close()
        assert f["x"][:].tolist() == [7, 8, 0, 0]
