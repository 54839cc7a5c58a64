"""Karabo bridge message encoding and decoding (no sockets)."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfeldata.bridge import ProtocolError, decode, encode, make_metadata
from xfeldata.bridge.protocol import train_id_of

karabo_bridge = pytest.importorskip("karabo_bridge")

SRC = "DET/A:out"


def worked_example():
    data = {SRC: {"n": 2, "image.data": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint16)}}
    meta = {SRC: make_metadata(SRC, 10000, 1700000000.5)}
    return data, meta


def rich_train():
    """Several sources, numpy scalars, strings, lists, 0-d, empty, structured arrays."""
    hits = np.zeros(3, dtype=[("x", "<f8"), ("m", "<i4")])
    hits["x"] = [1.5, 2.5, 3.5]
    data = {
        "B_SRC/DET/0CH0:xtdf": {
            "image.data": np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4),
            "image.pulseId": np.arange(2, dtype=np.uint64),
            "header.pulseCount": np.uint64(2),
            "empty": np.zeros((0, 5), dtype=np.float32),
            "zerod": np.array(3.5),
            "hits": hits,
        },
        "A_SRC/DOOCS/MAIN": {
            "state": "ON", "position": np.float64(1.25), "count": 7,
            "list": [1, 2, 3], "flag": True, "text.value": "é",
        },
    }
    meta = {src: make_metadata(src, 10001, 1700000000.25) for src in data}
    return data, meta


def as_bytes(frames):
    return [bytes(f) for f in frames]


# -- the worked example of the protocol description ------------------------------


def test_worked_example_frames():
    data, meta = worked_example()
    frames = encode(data, meta)
    assert len(frames) == 4
    assert msgpack.unpackb(frames[0]) == {"source": SRC, "content": "msgpack", "metadata": {
        "source": SRC, "timestamp": 1700000000.5, "timestamp.sec": "1700000000",
        "timestamp.frac": "500000000000000000", "timestamp.tid": 10000}}
    assert bytes(frames[1]) == bytes.fromhex("81a16e02")
    assert msgpack.unpackb(frames[2]) == {"source": SRC, "content": "array", "path": "image.data",
                                          "dtype": "uint16", "shape": [2, 3]}
    assert bytes(frames[3]) == bytes.fromhex("010002000300040005000600")


def test_make_metadata():
    m = make_metadata("S", 2**40, 1700000000.123456)
    assert m["timestamp.sec"] == "1700000000"
    assert len(m["timestamp.frac"]) == 18 and m["timestamp.frac"].startswith("123456")
    assert m["timestamp.tid"] == 2**40 and m["source"] == "S"
    assert make_metadata("S", 1, 1e-7)["timestamp.frac"] == "000000100000000000"


# -- byte-for-byte equality with the published package -----------------------------


@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
@pytest.mark.parametrize("train", [worked_example, rich_train])
def test_same_bytes_as_published(protocol, train):
    data, meta = train()
    if protocol == "2.2" and train is rich_train:
        data["A_SRC/DOOCS/MAIN"].pop("flag")  # np.bool_-free; plain bool is fine
        data["B_SRC/DET/0CH0:xtdf"].pop("hits")  # structured: see the next test
    ours = as_bytes(encode(data, meta, protocol))
    theirs = as_bytes(karabo_bridge.serialize(data, meta, protocol_version=protocol))
    assert ours == theirs


def test_a_structured_array_goes_in_a_form_the_published_decoder_reads():
    """The published package's 2.2 header carries str(dtype) of a structured array, which no numpy
    parses back (its own client fails on the whole train); ours carries numpy's dict form."""
    data, meta = rich_train()
    hits = data["B_SRC/DET/0CH0:xtdf"]["hits"]
    frames = encode(data, meta, "2.2")
    with pytest.raises(TypeError, match="not understood"):
        karabo_bridge.deserialize(karabo_bridge.serialize(data, meta, protocol_version="2.2"))
    theirs, _ = karabo_bridge.deserialize(as_bytes(frames))
    ours, _ = decode(frames)
    for got in (theirs, ours):
        assert got["B_SRC/DET/0CH0:xtdf"]["hits"].dtype == hits.dtype
        assert got["B_SRC/DET/0CH0:xtdf"]["hits"].tobytes() == hits.tobytes()


def test_same_bytes_as_published_simulator_trains():
    from xfeldata.bridge import Simulator

    data, meta = Simulator("AGIPD", modules=[0, 1], frames=3).train(1000)
    for protocol in ("1.0", "2.2"):
        theirs = karabo_bridge.serialize(data, meta, protocol_version=protocol)
        assert as_bytes(encode(data, meta, protocol)) == as_bytes(theirs)


# -- round trips and cross-decoding ----------------------------------------------


@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_round_trip(protocol):
    data, meta = rich_train()
    out, out_meta = decode(encode(data, meta, protocol))
    assert out_meta == meta
    for src, props in data.items():
        for key, value in props.items():
            got = out[src][key]
            if isinstance(value, np.ndarray):
                assert got.dtype == value.dtype and got.shape == value.shape
                np.testing.assert_array_equal(got, value)
            else:
                assert got == value, key
    if protocol == "1.0":  # metadata also stays in the data, as the published client gives it
        assert out["A_SRC/DOOCS/MAIN"]["metadata"] == meta["A_SRC/DOOCS/MAIN"]
    else:
        assert "metadata" not in out["A_SRC/DOOCS/MAIN"]


@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_published_decodes_ours_and_we_decode_theirs(protocol):
    data, meta = worked_example()
    theirs_data, theirs_meta = karabo_bridge.deserialize(encode(data, meta, protocol))
    assert theirs_meta == meta
    np.testing.assert_array_equal(theirs_data[SRC]["image.data"], data[SRC]["image.data"])
    ours_data, ours_meta = decode(karabo_bridge.serialize(data, meta, protocol_version=protocol))
    assert ours_meta == meta
    np.testing.assert_array_equal(ours_data[SRC]["image.data"], data[SRC]["image.data"])


def test_arrays_are_views_on_frames():
    data, meta = worked_example()
    frames = [bytearray(f) for f in encode(data, meta)]
    out, _ = decode(frames)
    arr = out[SRC]["image.data"]
    frames[3][0] = 99  # the array shares the frame's memory
    assert arr[0, 0] == 99


def test_encode_does_not_copy_arrays():
    data, meta = worked_example()
    frames = encode(data, meta)
    assert isinstance(frames[3], memoryview)
    assert np.shares_memory(np.frombuffer(frames[3], np.uint16), data[SRC]["image.data"])


def test_non_contiguous_and_big_endian_arrays():
    base = np.arange(24, dtype=">i4").reshape(4, 6)
    data = {SRC: {"a": base[:, ::2], "b": base}}
    out, _ = decode(encode(data, {SRC: {}}))
    np.testing.assert_array_equal(out[SRC]["a"], base[:, ::2])
    np.testing.assert_array_equal(out[SRC]["b"], base)
    assert out[SRC]["b"].dtype == np.dtype("<i4")


def test_metadata_taken_from_data_when_not_given():
    data = {SRC: {"x": 1, "metadata": {"timestamp.tid": 5}}}
    out, meta = decode(encode(data))
    assert meta == {SRC: {"timestamp.tid": 5}}
    assert out == {SRC: {"x": 1}}


def test_decode_2_0_and_2_1():
    pack = msgpack.packb
    m = {"source": SRC, "timestamp.tid": 77}
    v20 = [pack({"source": SRC, "content": "msgpack"}), pack({"x": 1, "metadata": m}),
           pack({"source": SRC, "content": "array", "path": "a", "dtype": "<f4", "shape": [2]}),
           np.array([1, 2], "<f4").tobytes()]
    data, meta = decode(v20)
    assert meta[SRC] == m and data[SRC]["x"] == 1 and data[SRC]["a"].tolist() == [1.0, 2.0]
    v21 = [pack({"source": SRC, "content": "msgpack"}),
           pack({"x": 1, "metadata.source": SRC, "metadata.timestamp.tid": 77})]
    data, meta = decode(v21)
    assert meta[SRC] == m and data[SRC]["x"] == 1


def test_train_id_mismatch_reported():
    assert train_id_of({}) is None
    with pytest.raises(ProtocolError, match="different train IDs"):
        train_id_of({"a": {"timestamp.tid": 1}, "b": {"timestamp.tid": 2}})


def test_encode_rejects_unknown_protocol_and_object_arrays():
    with pytest.raises(ValueError, match="protocol"):
        encode({}, protocol="2.1")
    with pytest.raises(TypeError):
        encode({SRC: {"o": np.array([object()])}})


# -- pickle only on request ---------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran')",))


def test_pickle_never_by_default():
    frames = [pickle.dumps({SRC: {"x": _Boom()}})]
    with pytest.raises(ProtocolError):
        decode(frames)


def test_pickle_when_asked():
    frames = [pickle.dumps({SRC: {"x": 1, "metadata": {"timestamp.tid": 3}}})]
    data, meta = decode(frames, ser="pickle")
    assert data[SRC]["x"] == 1 and meta[SRC]["timestamp.tid"] == 3


def test_msgpack_numpy_object_arrays_refused():
    frame = msgpack.packb({SRC: {"o": {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1],
                                       b"data": pickle.dumps(_Boom())}}}, use_bin_type=True)
    with pytest.raises(ProtocolError, match="pickled"):
        decode([frame])


# -- malformed messages -----------------------------------------------------------


def _hdr(**kw):
    h = {"source": SRC, "content": "array", "path": "k", "dtype": "uint16", "shape": [2]}
    h.update(kw)
    return msgpack.packb({k: v for k, v in h.items() if v is not None})


GOOD_HEAD = msgpack.packb({"source": SRC, "content": "msgpack", "metadata": {}})
GOOD_BODY = msgpack.packb({})
TWO_U16 = b"\x01\x00\x02\x00"

MALFORMED = {
    "no frames": ([], "empty"),
    "odd frame count": ([GOOD_HEAD, GOOD_BODY, GOOD_HEAD], "odd number"),
    "bad msgpack header": ([b"\xc1", GOOD_BODY], "frame 0"),
    "truncated header": ([GOOD_HEAD[:-3], GOOD_BODY], "frame 0"),
    "header not a map": ([msgpack.packb([1, 2]), GOOD_BODY], "not a map"),
    "header without source": ([msgpack.packb({"content": "msgpack"}), GOOD_BODY], "without a source"),
    "source not a string": ([msgpack.packb({"source": 5, "content": "msgpack"}), GOOD_BODY],
                            "without a source"),
    "bad msgpack payload": ([GOOD_HEAD, b"\x92\x01"], "frame 1"),
    "payload not a map": ([GOOD_HEAD, msgpack.packb(3)], "not a map"),
    "metadata not a map": ([msgpack.packb({"source": SRC, "content": "msgpack", "metadata": 3}),
                            GOOD_BODY], "metadata"),
    "unknown content": ([msgpack.packb({"source": SRC, "content": "hdf5"}), GOOD_BODY],
                        "unknown content type 'hdf5'"),
    "array before msgpack": ([_hdr(), TWO_U16], "before"),
    "array length mismatch": ([GOOD_HEAD, GOOD_BODY, _hdr(), b"\x01\x00\x02"],
                              r"frame 3 \(source 'DET/A:out', key 'k'\): 3 bytes"),
    "bad dtype": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype="uint17"), TWO_U16], "bad dtype"),
    "dtype not a string": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype=5), TWO_U16], "dtype"),
    "object dtype": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype="O"), b"\0" * 16], "not allowed"),
    "structured object dtype": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype="[('a', 'O')]"), b"\0" * 16],
                                "not allowed"),
    "code in dtype": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype="[__import__('os')]"), TWO_U16],
                      "bad dtype"),
    "structured map with other entries": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype={"names": ["a"], "formats": ["<u2"],
                                                                    "titles": ["x"]}), TWO_U16], "structured"),
    "structured map, names and formats differ": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype={"names": ["a", "b"],
                                                                           "formats": ["<u2"]}), TWO_U16],
                                                 "structured"),
    "structured map with an object field": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype={"names": ["a"], "formats": ["O"]}),
                                             b"\0" * 16], "not allowed"),
    "structured map with code": ([GOOD_HEAD, GOOD_BODY, _hdr(dtype={"names": ["a"],
                                                                    "formats": ["[__import__('os')]"]}), TWO_U16],
                                 "bad field format"),
    "bad shape": ([GOOD_HEAD, GOOD_BODY, _hdr(shape=[-2]), TWO_U16], "bad shape"),
    "shape not a list": ([GOOD_HEAD, GOOD_BODY, _hdr(shape="2"), TWO_U16], "bad shape"),
    "no path": ([GOOD_HEAD, GOOD_BODY, _hdr(path=None), TWO_U16], "without a path"),
    "duplicate source": ([GOOD_HEAD, GOOD_BODY, GOOD_HEAD, GOOD_BODY], "twice"),
    "1.0 not a map": ([msgpack.packb([1])], "1.0"),
    "1.0 source not a dict": ([msgpack.packb({SRC: 1})], "1.0"),
    "1.0 bad array": ([msgpack.packb({SRC: {"a": {b"nd": True, b"type": "<u2", b"shape": [3],
                                                  b"data": TWO_U16}}}, use_bin_type=True)],
                      "do not match"),
    "1.0 bad bytes": ([b"\xc1\xc1"], "not valid msgpack"),
    "error reply": ([b"Error: bad request b'nxt'"], "error"),
    "not bytes": ([GOOD_HEAD, 12], "frame 1: not a bytes-like"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed(name):
    frames, match = MALFORMED[name]
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_only_raise_protocol_error(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_headers = st.fixed_dictionaries(
    {}, optional={"source": st.sampled_from([SRC, "X"]) | _msgpack_values,
                  "content": st.sampled_from(["msgpack", "array", "other"]) | _msgpack_values,
                  "path": st.text(max_size=4) | _msgpack_values,
                  "dtype": st.sampled_from(["uint16", "<f8", "S3", "[('a', '<i4')]", "O"]) | _msgpack_values,
                  "shape": st.lists(st.integers(-3, 5), max_size=3) | _msgpack_values,
                  "metadata": st.dictionaries(st.text(max_size=4), _msgpack_values, max_size=3)
                  | _msgpack_values})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_headers, _msgpack_values | st.binary(max_size=24)), max_size=4))
def test_structured_random_messages_only_raise_protocol_error(pairs):
    frames = []
    for header, payload in pairs:
        frames.append(msgpack.packb(header))
        frames.append(payload if isinstance(payload, bytes) else msgpack.packb(payload))
    try:
        decode(frames)
    except ProtocolError:
        pass
