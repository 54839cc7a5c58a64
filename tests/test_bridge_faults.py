"""Hostile bridge peers and faults: clear errors naming the peer, correct data, never a hang.

Each test plays the peer with raw pyzmq on 127.0.0.1 (free ports) and bounds
every loop in count and time; every socket and thread it starts it stops.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
import zmq

from xfeldata.bridge import Client, LiveBuffer, ProtocolError, Server, ServerClosed, encode, make_metadata
from xfeldata.bridge.protocol import MAX_CONTAINERS, MAX_FRAMES, decode
from xfeldata.bridge.server import MAX_REQUEST_BYTES

pytestmark = pytest.mark.timeout(60)

SRC = "TEST/DEV/ONE:output"


def message(tid: int, value: int = 0) -> list:
    return encode({SRC: {"value": value, "x": np.full(3, tid, dtype=np.uint32)}},
                  {SRC: make_metadata(SRC, tid)})


def array_header(dtype, shape) -> bytes:
    return msgpack.packb({"source": SRC, "content": "array", "path": "image.data",
                          "dtype": dtype, "shape": shape})


BAD_HEADERS = [
    ("(2,)u1", [3], b"\0" * 6, "subarray dtype '(2,)u1' is not allowed"),
    ("u1", [2**63, 0], b"", "too large for any machine"),
    ("u1", [2**64 - 1, 0], b"", "too large for any machine"),
    ("u1", [0, 2**62, 2**62], b"", "too large for any machine"),
    ("|V999999999", [0, 2**40], b"", "too large for any machine"),
]


class RawPeer:
    """A raw ZeroMQ socket bound on a free loopback port, closed by ``close``."""

    def __init__(self, kind: int) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(kind)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def answer(self, replies: list[list], timeout: float = 10) -> threading.Thread:
        """REP: answer one request with each reply, in a thread (bounded by ``timeout``)."""
        def run():
            deadline = time.monotonic() + timeout
            for reply in replies:
                while time.monotonic() < deadline and not self.socket.poll(50):
                    pass
                if time.monotonic() >= deadline:
                    return
                self.socket.recv_multipart()
                self.socket.send_multipart(reply, copy=False)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def raw_req(endpoint: str, context: zmq.Context) -> zmq.Socket:
    s = context.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(endpoint)
    return s


# -- 9: malformed array headers -------------------------------------------------------


@pytest.mark.parametrize("dtype, shape, payload, text", BAD_HEADERS)
def test_malformed_array_header_is_a_protocol_error(dtype, shape, payload, text):
    frames = message(1)[:2] + [array_header(dtype, shape), payload]
    with pytest.raises(ProtocolError, match=rf"frame 3 \(source '{SRC}', key 'image.data'\): .*"
                                            + re.escape(text)):
        decode(frames)


def test_live_buffer_counts_bad_headers_and_keeps_receiving():
    peer = RawPeer(zmq.REP)
    bad = [message(1)[:2] + [array_header(d, s), p] for d, s, p, _ in BAD_HEADERS]
    thread = peer.answer([*bad, message(7)])
    try:
        with LiveBuffer(peer.endpoint, timeout=0.5) as buf:
            buf.wait(1, timeout=10)
            assert buf.running and list(buf.train_ids) == [7]
            assert buf.errors == len(BAD_HEADERS)
            assert isinstance(buf.last_error, ProtocolError)
            assert str(buf.last_error).startswith(peer.endpoint)  # names the peer
    finally:
        thread.join(10)
        peer.close()


# -- 13: byte and object limits --------------------------------------------------------


def test_msgpack_bomb_is_refused_without_building_it():
    bomb = msgpack.packb([{}] * 5_000_000)  # 5 MB on the wire, 350 MB as Python dicts
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=f"frame 1: more than {MAX_CONTAINERS} maps"):
            decode([message(1)[0], bomb])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30e6


def test_too_many_frames():
    with pytest.raises(ProtocolError, match=f"at most {MAX_FRAMES}"):
        decode([b""] * (MAX_FRAMES + 2))


def test_client_discards_message_over_max_bytes_and_stays_usable():
    peer = RawPeer(zmq.PUSH)
    try:
        with Client(peer.endpoint, sock="PULL", timeout=5, max_bytes=1000) as client:
            peer.socket.send_multipart([b"x" * 400] * 3)  # 1200 bytes in frames under the limit
            peer.socket.send_multipart(message(3))
            with pytest.raises(ProtocolError, match=rf"{peer.endpoint}: message larger than "
                                                    r"1000 bytes \(1200 bytes in 3 frames\)"):
                client.next()
            assert client.next()[1][SRC]["timestamp.tid"] == 3
    finally:
        peer.close()


def test_client_frame_over_max_bytes_drops_the_peer():
    """ZeroMQ's MAXMSGSIZE: the big frame is never held; the peer reconnects and goes on."""
    peer = RawPeer(zmq.PUSH)
    try:
        with Client(peer.endpoint, sock="PULL", timeout=1, max_bytes=1000) as client:
            peer.socket.send(b"x" * 100_000)
            with pytest.raises(TimeoutError):
                client.next()
            peer.socket.send_multipart(message(4))
            assert client.next()[1][SRC]["timestamp.tid"] == 4
    finally:
        peer.close()


def test_live_buffer_max_bytes_evicts_the_trains_received_first():
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=100, max_bytes=3_500_000)
    for tid in range(10, 20):
        buf.add({SRC: {"x": np.zeros(1_000_000, np.uint8)}}, {SRC: make_metadata(SRC, tid)})
    assert list(buf.train_ids) == [17, 18, 19] and buf.trains_evicted == 7
    assert buf.nbytes == 3 * (1_000_000 + 0) <= buf.max_bytes
    one = LiveBuffer("tcp://127.0.0.1:1", max_bytes=10)  # the newest train is always kept
    one.add({SRC: {"x": np.zeros(100, np.uint8)}}, {SRC: make_metadata(SRC, 1)})
    assert list(one.train_ids) == [1]


# -- 10: hostile requests to a REP server ----------------------------------------------


@pytest.mark.parametrize("request_frames", [[b"next", b"x"], [b"x", b"next"], [b"next"] * 20])
def test_rep_server_answers_multipart_request_and_keeps_serving(request_frames):
    with Server(policy="queue") as server:
        ctx = zmq.Context()
        try:
            s = raw_req(server.endpoint, ctx)
            s.send_multipart(request_frames)
            reply = s.recv_multipart()
            assert len(reply) == 1 and reply[0].startswith(b"Error: ")
            s.close()
        finally:
            ctx.term()
        assert server.bad_requests == 1 and server.running
        server.feed({SRC: {"value": 1}}, train_id=5)
        with Client(server.endpoint, timeout=5) as client:
            assert client.next()[1][SRC]["timestamp.tid"] == 5


def test_rep_server_drops_a_peer_with_a_huge_request():
    with Server(policy="queue") as server:
        ctx = zmq.Context()
        try:
            s = raw_req(server.endpoint, ctx)
            s.setsockopt(zmq.RCVTIMEO, 500)
            s.send(b"n" * (MAX_REQUEST_BYTES + 1))
            with pytest.raises(zmq.Again):  # disconnected, never read
                s.recv()
            s.close()
        finally:
            ctx.term()
        assert server.running
        server.feed({SRC: {"value": 1}}, train_id=6)
        with Client(server.endpoint, timeout=5) as client:
            assert client.next()[1][SRC]["timestamp.tid"] == 6


@pytest.mark.parametrize("policy", ["drop", "raise", "queue"])
def test_feed_raises_when_the_sending_thread_died(policy):
    server = Server(policy=policy).start()
    try:
        server._socket.close(linger=0)  # the sending thread's socket fails under it
        server._thread.join(5)
        assert not server.running
        with pytest.raises(ServerClosed, match=f"sending thread of {server.endpoint} failed"):
            server.feed({SRC: {"value": 1}}, train_id=1)
    finally:
        server.stop()


# -- 12: REQ clients with a timeout under half the train interval ----------------------


def test_req_client_with_short_timeout_gets_every_train():
    with Server(policy="queue", maxlen=10) as server:
        def feed():
            for tid in range(5):
                time.sleep(0.5)
                server.feed({SRC: {"value": tid}}, train_id=tid)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        got, timeouts = [], 0
        with Client(server.endpoint, timeout=0.2) as client:
            deadline = time.monotonic() + 15
            while len(got) < 5 and time.monotonic() < deadline:
                try:
                    got.append(client.next()[1][SRC]["timestamp.tid"])
                except TimeoutError:
                    timeouts += 1
        feeder.join(10)
        assert server.drain(5)  # the last send may still be finishing as the client reads it
        assert got == [0, 1, 2, 3, 4] and server.sent == 5
        assert timeouts >= 5  # the timeouts did happen, and lost nothing


# -- 15: finalizers never block --------------------------------------------------------


def test_unclosed_client_and_server_collected_in_another_thread_do_not_block():
    peer = RawPeer(zmq.REP)
    thread = peer.answer([[b"\x93garbage", b"x", b"y"]])
    try:
        client = Client(peer.endpoint, timeout=5)
        with pytest.raises(ProtocolError):
            client.next()
        server = Server(sock="PUB")
        client.cycle = client  # only the cycle collector can free them
        server.cycle = server
        del client, server
        collector = threading.Thread(target=gc.collect, daemon=True)
        collector.start()
        collector.join(5)
        assert not collector.is_alive()
    finally:
        thread.join(10)
        peer.close()


# -- 17: PUSH with drop, PUB with wait -------------------------------------------------


def test_push_drop_drops_old_trains_not_new_ones():
    """A PULL client that sleeps while 60 trains of 1 MB come gets the newest, not the oldest."""
    with Server(sock="PUSH", policy="drop", maxlen=2) as server:
        with Client(server.endpoint, sock="PULL", timeout=3) as client:  # 3 s of silence ends the reading
            time.sleep(0.3)  # connected
            big = np.zeros(1_000_000, np.uint8)
            for tid in range(60):
                server.feed({SRC: {"x": big}}, train_id=tid)
                time.sleep(0.01)
            time.sleep(0.3)
            got = []
            for _ in range(60):
                try:
                    got.append(client.next()[1][SRC]["timestamp.tid"])
                except TimeoutError:
                    break
    assert got[-1] == 59  # the newest train came
    assert len(got) <= 20 and server.dropped >= 40  # old ones were dropped, not queued


def test_pub_wait_without_subscriber_returns_at_once():
    """For PUB, 'wait' means until ZeroMQ took the train: it does not wait for subscribers."""
    with Server(sock="PUB", policy="wait") as server:
        start = time.monotonic()
        server.feed({SRC: {"value": 1}}, train_id=1, timeout=5)
        assert time.monotonic() - start < 2 and server.sent == 1


# -- 11: restarts and bogus train IDs --------------------------------------------------


def add(buf: LiveBuffer, tid: int, value: int = 0) -> None:
    buf.add({SRC: {"value": value}}, {SRC: make_metadata(SRC, tid)})


def values(buf: LiveBuffer) -> list[tuple[int, int]]:
    return [(int(t), buf.train(t)[0][SRC]["value"]) for t in buf.train_ids]


def test_restart_far_below_starts_afresh():
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=4)
    for tid in range(10000, 10148):
        add(buf, tid, 1)
    for tid in range(10000, 10006):  # the replay loops
        add(buf, tid, 2)
    assert values(buf) == [(t, 2) for t in range(10002, 10006)]
    assert buf.restarts == 1 and buf.trains_discarded == 0 and buf.trains_missed == 0


def test_restart_inside_the_buffer_replaces_the_old_trains():
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=20)
    for tid in range(100, 105):
        add(buf, tid, 1)
    for tid in range(100, 103):
        add(buf, tid, 2)  # the source sends train 100 again: it restarted
    assert values(buf) == [(100, 2), (101, 2), (102, 2)]
    assert buf.restarts == 1 and buf.trains_evicted == 5


def test_bogus_train_id_neither_holds_a_slot_nor_counts_missed():
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=5)
    for tid in [100, 101, 102, 2**64 - 1, 103, 104, 105, 106, 107, 108]:
        add(buf, tid)
    assert list(buf.train_ids) == [104, 105, 106, 107, 108]
    assert buf.trains_missed == 0 and buf.restarts == 0


def test_long_jump_counts_as_missed_once_confirmed():
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=5)
    for tid in [100, 101, 5101]:
        add(buf, tid)
    assert buf.trains_missed == 0
    add(buf, 5102)
    assert buf.trains_missed == 4999


def test_late_train_older_than_a_full_buffer_is_discarded_and_counted(caplog):
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=3)
    for tid in [10, 11, 12, 13, 10]:  # 10 is at most maxlen below 13: late, not a restart
        add(buf, tid)
    assert list(buf.train_ids) == [11, 12, 13]
    assert buf.trains_discarded == 1 and buf.restarts == 0
    assert "train(s) [10] from tcp://127.0.0.1:1 are older than the 3 buffered trains" in caplog.text


def test_looped_replay_over_the_socket_keeps_every_train(agipd_raw_run):
    from xfeldata import open_run
    from xfeldata.bridge import serve

    run = open_run(agipd_raw_run).select("*XGM*")
    n = len(run.train_ids)
    with serve(run, policy="wait", loop=True, ntrains=3 * n, background=True) as handle:
        with LiveBuffer(handle.endpoint, maxlen=4, timeout=1) as buf:
            deadline = time.monotonic() + 30
            while buf.received < 3 * n and time.monotonic() < deadline:
                time.sleep(0.05)
    assert buf.received == 3 * n and buf.restarts == 2
    assert buf.trains_discarded == 0 and buf.trains_missed == 0
    assert list(buf.train_ids) == list(run.train_ids[-4:])


# -- 14: log flooding ------------------------------------------------------------------


def test_garbage_flood_logs_a_few_lines_with_a_count(caplog):
    peer = RawPeer(zmq.PUSH)
    try:
        with caplog.at_level(logging.WARNING, logger="xfeldata.bridge.live"):
            with LiveBuffer(peer.endpoint, sock="PULL", timeout=0.5) as buf:
                for _ in range(500):
                    peer.socket.send(b"\xc1")
                peer.socket.send_multipart(message(8))
                buf.wait(1, timeout=20)
        lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
        assert buf.errors == 500
        assert 1 <= len(lines) <= 3
        assert lines[0].startswith(f"live buffer: malformed message from {peer.endpoint} skipped")
    finally:
        peer.close()


def test_throttle_backs_off():
    from xfeldata.bridge.sockets import Throttle

    lines, now = [], [0.0]
    warn = Throttle(lines.append, first_interval=1, max_interval=8, clock=lambda: now[0])
    for i in range(400):  # one warning every 0.1 s for 40 s
        now[0] = i / 10
        warn("w")
    assert lines[0] == "w" and len(lines) == 8  # at 0, 1, 3, 7, 15, 23, 31, 39 s
    assert lines[1] == "w (and 9 more like it in the last 1.0 s)"


# -- 16: `xfeldata serve` exits after Ctrl-C ---------------------------------------------


def test_serve_exits_promptly_after_ctrl_c(tmp_path):
    """Served, read by a client, interrupted: exits with 130 every time (it used to hang 1 in 2)."""
    import re
    import signal
    import subprocess
    import sys

    from xfeldata.testing import make_example

    run = make_example(tmp_path / "r0001", n_trains=20, frames_per_train=4, trains_per_sequence=10)
    cmd = [sys.executable, "-m", "xfeldata.cli", "serve", str(run), "--rate", "10", "--loop",
           "--port", "0"]
    # Six servers at once, each read and interrupted in turn: a 1-in-2 hang shows up.
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    try:
        for proc in procs:
            endpoint = re.search(r"tcp://\S+", proc.stdout.readline()).group(0)
            with Client(endpoint, timeout=10) as client:
                for _ in range(3):
                    client.next()
            proc.send_signal(signal.SIGINT)
        errors = [proc.communicate(timeout=15)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 130 and "stopped after" in err and "Traceback" not in err
