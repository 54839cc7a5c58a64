"""Hypothesis fuzzing of the bridge decoder and the REP server's request handling.

Properties: a valid train decodes to exactly what was encoded; any other
input raises :class:`ProtocolError` (never another exception, never a hang);
a decoded array always has exactly the bytes its header announced.
Example counts are bounded so that the file runs in a few seconds.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xfeldata.bridge import Client, ProtocolError, Server, decode, encode, make_metadata

pytestmark = pytest.mark.timeout(120)

SRC = "FUZZ/DEV/ONE:output"
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from(["u1", "i2", "<u2", "<i4", "<f4", "<f8", "<c8", "?", "<i8", "|S3", "<U2"])
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
scalars = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.booleans(),
                    st.text(max_size=10), st.binary(max_size=10))
#: Property names: any text but "metadata", which names a source's metadata in the protocol (encode's docs).
names = st.text(min_size=1, max_size=8).filter(lambda name: name != "metadata")


def random_array(dtype: str, shape: tuple, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize,
                                               dtype=np.uint8)
    return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)


@FAST
@given(st.dictionaries(names, scalars, max_size=5),
       st.lists(st.tuples(dtypes, shapes, st.integers(0, 2**32)), max_size=3),
       st.integers(0, 2**64 - 1), st.sampled_from(["2.2", "1.0"]))
def test_valid_trains_round_trip(plain, arrays, tid, protocol):
    props = dict(plain)
    for i, (dtype, shape, seed) in enumerate(arrays):
        props[f"array{i}"] = random_array(dtype, shape, seed)
    data, metadata = decode(encode({SRC: props}, {SRC: make_metadata(SRC, tid, 1.5)}, protocol))
    assert metadata[SRC]["timestamp.tid"] == tid
    got = {k: v for k, v in data[SRC].items() if k != "metadata"}
    assert sorted(got) == sorted(props)
    for key, value in props.items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape
            assert got[key].tobytes() == value.tobytes()
        else:
            assert got[key] == value and type(got[key]) is type(value)


@FAST
@given(st.lists(st.binary(max_size=40), min_size=0, max_size=6))
def test_arbitrary_frames_decode_or_raise_protocol_error(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


header_values = st.one_of(st.none(), st.integers(-2**63, 2**64 - 1), st.text(max_size=12),
                          st.lists(st.integers(-2**63, 2**64 - 1), max_size=4))


@FAST
@given(dtype=st.one_of(dtypes, st.text(max_size=16), header_values,
                       st.sampled_from(["(2,)u1", "|V999999999", "O", "[('a', 'u1')]", "{}", "V0"])),
       shape=st.one_of(header_values, st.lists(st.integers(0, 2**64 - 1), max_size=4)),
       payload=st.binary(max_size=64), path=st.one_of(st.text(max_size=5), header_values))
def test_array_headers_give_exact_arrays_or_protocol_error(dtype, shape, payload, path):
    head = encode({SRC: {"n": 1}}, {SRC: {"timestamp.tid": 1}})
    header = msgpack.packb({"source": SRC, "content": "array", "path": path, "dtype": dtype,
                            "shape": shape})
    try:
        data, _ = decode([*head, header, payload])
    except ProtocolError:
        return
    array = data[SRC][path]
    assert array.nbytes == len(payload) and list(array.shape) == list(shape)
    assert array.tobytes() == payload


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=4))
def test_rep_server_answers_every_request(request_frames):
    """Any request gets one reply (a train for [b"next"], else an error) and the server goes on."""
    with Server(policy="queue") as server:
        server.feed({SRC: {"n": 1}}, train_id=3)
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 5000)
            s.connect(server.endpoint)
            s.send_multipart(request_frames)
            reply = s.recv_multipart()
            s.close()
        finally:
            ctx.term()
        if request_frames == [b"next"]:
            assert decode(reply)[1][SRC]["timestamp.tid"] == 3
        else:
            assert len(reply) == 1 and reply[0].startswith(b"Error: ")
            assert server.bad_requests == 1
            with Client(server.endpoint, timeout=5) as client:
                assert client.next()[1][SRC]["timestamp.tid"] == 3
