"""Our bridge Client, Server, serve and Simulator over real ZeroMQ sockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from xfeldata.bridge import (
    Client,
    KaraboBridge,
    ProtocolError,
    Server,
    ServerBusy,
    ServerClosed,
    Simulator,
    append_detector_modules,
    encode,
    serve,
)
from xfeldata.detectors import DETECTORS
from xfeldata.trains import stack_detector_data

pytestmark = pytest.mark.timeout(30)

SRC = "TEST/DEV/ONE:output"


def train(tid: int, shape=(2, 3)) -> dict:
    return {SRC: {"tid": tid, "image.data": np.full(shape, tid % 60000, dtype=np.uint16)}}


class Feeder:
    """Feed numbered trains to a server from a thread, until stopped or ``count`` fed."""

    def __init__(self, server: Server, count: int = 10_000, period: float = 0.0,
                 shape=(2, 3)) -> None:
        self.server = server
        self.shape = shape
        self.count = count
        self.period = period
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for tid in range(self.count):
            if self.stop_event.is_set():
                return
            try:
                self.server.feed(train(tid, self.shape), train_id=tid, timeout=0.2)
            except TimeoutError:
                continue
            except ServerClosed:
                return
            if self.period:
                time.sleep(self.period)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def tid_of(data) -> int:
    return data[SRC]["tid"]


# -- one client per socket pair ---------------------------------------------------


@pytest.mark.parametrize("server_sock, client_sock", [("REP", "REQ"), ("PUB", "SUB"), ("PUSH", "PULL")])
@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_socket_pairs(server_sock, client_sock, protocol):
    with Server(sock=server_sock, protocol=protocol, policy="drop", maxlen=2) as server:
        feeder = Feeder(server, period=0.002)
        try:
            with Client(server.endpoint, sock=client_sock, timeout=5) as client:
                got = [client.next() for _ in range(3)]
        finally:
            feeder.stop()
    for data, meta in got:
        assert meta[SRC]["timestamp.tid"] == tid_of(data)
        np.testing.assert_array_equal(data[SRC]["image.data"], tid_of(data) % 60000)
        if protocol == "1.0":
            assert data[SRC]["metadata"] == meta[SRC]
    tids = [tid_of(d) for d, _ in got]
    assert tids == sorted(tids) and len(set(tids)) == 3


def test_endpoint_resolves_port_zero_and_binds_loopback():
    with Server() as server:
        assert server.endpoint.startswith("tcp://127.0.0.1:")
        assert not server.endpoint.endswith(":0")


def test_ipc_endpoint(tmp_path):
    with Server(f"ipc://{tmp_path}/bridge", policy="queue") as server:
        server.feed(train(5), train_id=5)
        with Client(server.endpoint, timeout=5) as client:
            data, meta = client.next()
    assert tid_of(data) == 5 and meta[SRC]["timestamp.tid"] == 5


def test_iteration():
    with Server(policy="queue") as server:
        for tid in range(3):
            server.feed(train(tid), train_id=tid)
        with Client(server.endpoint, timeout=5) as client:
            tids = [tid_of(data) for _, (data, _meta) in zip(range(3), client, strict=False)]
    assert tids == [0, 1, 2]


# -- several clients ----------------------------------------------------------------


@pytest.mark.parametrize("server_sock, client_sock", [("REP", "REQ"), ("PUSH", "PULL")])
def test_clients_share_trains_without_duplicates(server_sock, client_sock):
    n = 40
    with Server(sock=server_sock, policy="queue", maxlen=4) as server:
        clients = [Client(server.endpoint, sock=client_sock, timeout=0.5) for _ in range(2)]
        results: list[list[int]] = [[], []]

        def receive(i):
            while True:
                try:
                    results[i].append(tid_of(clients[i].next()[0]))
                except TimeoutError:
                    return

        threads = [threading.Thread(target=receive, args=(i,)) for i in range(2)]
        time.sleep(0.2)  # let both connect so that trains are shared
        for t in threads:
            t.start()
        for tid in range(n):
            server.feed(train(tid), train_id=tid, timeout=5)
        for t in threads:
            t.join(10)
        for c in clients:
            c.close()
    everything = results[0] + results[1]
    assert sorted(everything) == list(range(n))  # each train once, none lost
    assert results[0] and results[1]  # both got some


def test_pub_copies_to_every_subscriber():
    with Server(sock="PUB", policy="drop", maxlen=1) as server:
        clients = [Client(server.endpoint, sock="SUB", timeout=5) for _ in range(3)]
        feeder = Feeder(server, period=0.005)
        try:
            firsts = [tid_of(c.next()[0]) for c in clients]
            later = max(firsts) + 5
            seen = [set() for _ in clients]
            for i, c in enumerate(clients):
                for _ in range(200):
                    tid = tid_of(c.next()[0])
                    seen[i].add(tid)
                    if tid >= later + 3:
                        break
        finally:
            feeder.stop()
            for c in clients:
                c.close()
    # Every subscriber got the same stream (slow ones may lose trains, but these keep up).
    common = set.intersection(*seen)
    assert common, seen


# -- policies under a slow client -------------------------------------------------


def test_policy_wait_blocks_until_taken():
    with Server(policy="wait") as server:
        with pytest.raises(TimeoutError):
            server.feed(train(0), train_id=0, timeout=0.3)  # nobody asks
        done = threading.Event()

        def feed():
            server.feed(train(1), train_id=1, timeout=5)
            done.set()

        t = threading.Thread(target=feed)
        t.start()
        time.sleep(0.2)
        assert not done.is_set()
        with Client(server.endpoint, timeout=5) as client:
            assert tid_of(client.next()[0]) in (0, 1)
        t.join(5)
        assert done.is_set()


def test_policy_queue_blocks_when_full():
    with Server(policy="queue", maxlen=3) as server:
        start = time.monotonic()
        for tid in range(3):
            server.feed(train(tid), train_id=tid)
        assert time.monotonic() - start < 1
        with pytest.raises(TimeoutError):
            server.feed(train(3), train_id=3, timeout=0.3)
        with Client(server.endpoint, timeout=5) as client:
            assert [tid_of(client.next()[0]) for _ in range(3)] == [0, 1, 2]


def test_policy_drop_keeps_the_newest():
    with Server(policy="drop", maxlen=2) as server:
        for tid in range(6):
            server.feed(train(tid), train_id=tid)
        assert server.dropped == 4
        with Client(server.endpoint, timeout=5) as client:
            assert [tid_of(client.next()[0]) for _ in range(2)] == [4, 5]


def test_policy_raise():
    with Server(policy="raise", maxlen=2) as server:
        server.feed(train(0), train_id=0)
        server.feed(train(1), train_id=1)
        with pytest.raises(ServerBusy):
            server.feed(train(2), train_id=2)
        with Client(server.endpoint, timeout=5) as client:
            assert tid_of(client.next()[0]) == 0


def test_policy_with_slow_pull_client():
    with Server(sock="PUSH", policy="drop", maxlen=1) as server:
        # 4 MB trains, so that socket buffers cannot hide the slow client
        feeder = Feeder(server, count=300, period=0.002, shape=(1024, 2048))
        try:
            with Client(server.endpoint, sock="PULL", timeout=5) as client:
                tids = []
                for _ in range(10):
                    tids.append(tid_of(client.next()[0]))
                    time.sleep(0.05)  # a slow client
        finally:
            feeder.stop()
    assert tids == sorted(tids)
    assert server.dropped > 0  # the source did not wait for the slow client
    assert tids[-1] - tids[0] > 9  # the client skipped trains instead of lagging behind


def test_feed_after_stop_and_stop_wakes_blocked_feed():
    server = Server(policy="wait").start()
    errors = []

    def feed():
        try:
            server.feed(train(0), train_id=0)
        except ServerClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=feed)
    t.start()
    time.sleep(0.2)
    server.stop()
    t.join(5)
    assert errors and not t.is_alive()
    with pytest.raises(ServerClosed):
        server.feed(train(1))


# -- timeouts, recovery, bad messages ---------------------------------------------


@pytest.mark.parametrize("sock, client_sock", [("REP", "REQ"), ("PUB", "SUB"), ("PUSH", "PULL")])
def test_timeout_on_silent_endpoint(sock, client_sock):
    with Server(sock=sock) as server, Client(server.endpoint, sock=client_sock, timeout=0.2) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            client.next()
        assert time.monotonic() - start < 2
        with pytest.raises(TimeoutError):  # still usable, times out again
            client.next()


def test_req_client_recovers_after_server_restart():
    server = Server(policy="queue").start()
    endpoint = server.endpoint
    server.feed(train(1), train_id=1)
    client = Client(endpoint, timeout=0.5)
    try:
        assert tid_of(client.next()[0]) == 1
        server.stop()  # the next request reaches nobody
        with pytest.raises(TimeoutError):
            client.next()
        port = int(endpoint.rsplit(":", 1)[1])
        with Server(port, policy="queue") as server2:
            assert server2.endpoint == endpoint
            server2.feed(train(2), train_id=2)
            assert tid_of(client.next()[0]) == 2
    finally:
        client.close()
        server.stop()


def test_req_client_gets_a_reply_that_came_after_its_timeout():
    with Server(policy="queue") as server, Client(server.endpoint, timeout=0.3) as client:
        with pytest.raises(TimeoutError):
            client.next()  # the request is out; nothing to send yet
        server.feed(train(7), train_id=7)  # answers the request that timed out
        assert tid_of(client.next()[0]) == 7  # not lost to a socket reset


def test_bad_request_gets_error_reply():
    with Server(policy="queue") as server:
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 5000)
            s.connect(server.endpoint)
            s.send(b"give me data")
            reply = s.recv_multipart()
            assert len(reply) == 1 and reply[0].startswith(b"Error: bad request")
            s.close()
        finally:
            ctx.term()
        assert server.bad_requests == 1


def test_client_survives_malformed_message():
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    replies = [[b"\x93garbage", b"x", b"y"], encode(train(9), {SRC: {"timestamp.tid": 9}})]

    def answer():
        for reply in replies:
            if rep.poll(5000):
                rep.recv()
                rep.send_multipart(reply, copy=False)

    t = threading.Thread(target=answer)
    t.start()
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=5) as client:
            with pytest.raises(ProtocolError, match="odd number"):
                client.next()
            assert tid_of(client.next()[0]) == 9
    finally:
        t.join(10)
        rep.close()
        ctx.term()


def test_pickle_refused_unless_asked():
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", ser="json")
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", sock="DEALER")


# -- serve ---------------------------------------------------------------------------


def test_serve_iterable_of_train_id_pairs():
    trains = [(tid, {SRC: {"x": tid, "image.data": np.arange(3) + tid},
                     "OTHER/SRC": {"y": 1}}) for tid in range(100, 105)]
    with serve(trains, background=True, policy="queue", sources="TEST/*") as handle:
        with Client(handle.endpoint, timeout=5) as client:
            got = [client.next() for _ in range(5)]
    assert [meta[SRC]["timestamp.tid"] for _, meta in got] == list(range(100, 105))
    assert all(set(data) == {SRC} for data, _ in got)


def test_serve_keys_glob_ntrains_and_end():
    sim = Simulator("AGIPD", modules=[0], frames=2, first_train_id=500)
    with serve(sim, background=True, sock="PUSH", keys="image.*", ntrains=3) as handle:
        with Client(handle.endpoint, sock="PULL", timeout=1) as client:
            got = [client.next() for _ in range(3)]
            with pytest.raises(TimeoutError):  # the stream ended after 3 trains
                client.next()
        assert handle.join(5)
    assert handle.server.sent == 3
    for data, _meta in got:
        assert list(data) == ["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]  # slow sources have no image.*
        assert all(k.startswith("image.") for k in data["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"])
    assert [m["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]["timestamp.tid"] for _, m in got] == [500, 501, 502]


def test_serve_loop_and_rate():
    trains = [(data, None) for data in (train(1), train(2))]
    with serve(trains, background=True, loop=True, rate=50, ntrains=6, policy="queue") as handle:
        with Client(handle.endpoint, timeout=5) as client:
            start = time.monotonic()
            tids = [tid_of(client.next()[0]) for _ in range(6)]
            elapsed = time.monotonic() - start
    assert tids == [1, 2, 1, 2, 1, 2]
    assert elapsed > 0.05  # paced at 50 trains/s


def test_serve_loop_needs_reiterable():
    with pytest.raises(ValueError, match="re-iterable"):
        serve(iter([]), loop=True)


def test_serve_blocking_returns_count():
    trains = [(tid, {SRC: {"x": tid}}) for tid in range(4)]
    # PUB never waits for clients: the blocking call ends when everything is sent.
    assert serve(trains, sock="PUB", policy="queue") == 4


def test_serve_stack_detector():
    sim = Simulator("AGIPD", modules=[0, 3], frames=2)
    with serve(sim, background=True, stack_detector=True) as handle:
        with Client(handle.endpoint, timeout=10) as client:
            data, meta = client.next()
    name = "SPB_DET_AGIPD1M-1/CAL/APPEND"
    assert not any("CH0:xtdf" in s for s in data)
    stacked = data[name]
    assert stacked["image.data"].shape == (16, 2, 2, 512, 128)
    assert stacked["modulesPresent"][0] and stacked["modulesPresent"][3]
    assert not stacked["modulesPresent"][1]
    assert stacked["image.data"][1].max() == 0 and stacked["image.data"][0].max() > 0
    assert meta[name]["source"] == name and "SA1_XTD2_XGM/DOOCS/MAIN" in data


def test_serve_stack_detector_skips_a_train_whose_modules_cannot_stack_and_goes_on(caplog):
    """One train whose modules hold different frame counts cannot be one array: that train is
    left out with a warning naming it, and the stream goes on (it ended there)."""
    sim = Simulator("AGIPD", modules=[0, 3], frames=2, slow=False)
    trains = [sim.train(tid) for tid in (100, 101, 102)]
    odd = trains[1][0]["SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"]
    for key in [k for k in odd if k.startswith("image.")]:
        odd[key] = odd[key][:1]  # module 3: one frame of train 101, module 0 two
    with caplog.at_level("WARNING", logger="xfeldata.bridge.server"), \
            serve(trains, background=True, stack_detector=True) as handle:
        with Client(handle.endpoint, timeout=10) as client:
            got = [client.next()[1]["SPB_DET_AGIPD1M-1/CAL/APPEND"]["timestamp.tid"] for _ in range(2)]
        assert handle.join(5)
    assert got == [100, 102] and handle.unstackable == 1 and handle.error is None
    assert "train 101 not sent: its modules cannot be stacked" in caplog.text


@pytest.mark.parametrize(("detector", "kind", "modules", "key"),
                         [("AGIPD", "AGIPD1M", [0, 3], "image.data"),
                          ("JUNGFRAU", "JUNGFRAU", [1, 3], "data.adc")])
def test_append_stacks_as_stack_detector_data(detector, kind, modules, key):
    data, meta = Simulator(detector, modules=modules, frames=2, slow=False).train(10)
    expected = stack_detector_data(data, key, axis=0)
    (name, stacked), = append_detector_modules(data, meta)[0].items()
    np.testing.assert_array_equal(stacked[key], expected)
    numbers = stacked["modules"].tolist()
    assert numbers == list(DETECTORS[kind].modules)  # JUNGFRAU: 1 to 8
    assert [numbers[i] for i in np.flatnonzero(stacked["modulesPresent"])] == modules


def test_append_counts_a_module_without_frames_as_missing():
    data, meta = Simulator("AGIPD", modules=[0, 1], frames=2, slow=False).train(10)
    module_1 = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    data[module_1] = dict(data[module_1], **{"image.data": data[module_1]["image.data"][:0]})
    stacked = append_detector_modules(data, meta)[0]["SPB_DET_AGIPD1M-1/CAL/APPEND"]
    assert stacked["modulesPresent"][:2] == [True, False]
    assert (stacked["image.data"][1] == 0).all() and stacked["image.data"].dtype == np.uint16


def test_append_refuses_modules_of_different_shapes():
    data, meta = Simulator("AGIPD", modules=[0, 1], frames=2, slow=False).train(10)
    module_1 = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    data[module_1] = dict(data[module_1], **{"image.data": data[module_1]["image.data"][:1]})
    with pytest.raises(ValueError, match="SPB_DET_AGIPD1M-1 have mismatched shapes for 'image.data'"):
        append_detector_modules(data, meta)


def test_serve_duck_typed_run():
    class FakeRun:
        def __init__(self, sources=("A/B/C", "D/E/F")):
            self._sources = sources

        def select(self, source_glob, key_glob="*"):
            import fnmatch

            return FakeRun(tuple(s for s in self._sources if fnmatch.fnmatch(s, source_glob)))

        def trains(self, devices=None, require_all=False):
            for tid in range(10, 13):
                yield tid, {s: {"v": tid, "metadata": {"source": s, "timestamp.tid": tid}}
                            for s in self._sources}

    with serve(FakeRun(), background=True, sources="D/*", policy="queue") as handle:
        with Client(handle.endpoint, timeout=5) as client:
            got = [client.next() for _ in range(3)]
    assert [d["D/E/F"]["v"] for d, _ in got] == [10, 11, 12]
    assert all(list(d) == ["D/E/F"] for d, _ in got)
    assert got[0][1]["D/E/F"]["timestamp.tid"] == 10


def test_background_stop_while_waiting_for_clients():
    handle = serve(Simulator("LPD", modules=[0], frames=1, slow=False), background=True)
    time.sleep(0.1)
    handle.stop()
    assert handle.done


# -- simulator and the seed talk's KaraboBridge demo ----------------------------------


@pytest.mark.parametrize("detector, source, key, shape, dtype", [
    ("AGIPD", "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image.data", (2, 2, 512, 128), "uint16"),
    ("AGIPD500K", "HED_DET_AGIPD500K2G/DET/0CH0:xtdf", "image.data", (2, 2, 512, 128), "uint16"),
    ("LPD", "FXE_DET_LPD1M-1/DET/0CH0:xtdf", "image.data", (2, 1, 256, 256), "uint16"),
    ("DSSC", "SCS_DET_DSSC1M-1/DET/0CH0:xtdf", "image.data", (2, 1, 128, 512), "uint16"),
    ("LPD_MINI", "FXE_DET_LPD_MINI/DET/1CH0:xtdf", "image.data", (2, 1, 32, 256), "uint16"),
    ("JUNGFRAU", "SPB_IRDA_JF4M/DET/JNGFR01:daqOutput", "data.adc", (2, 512, 1024), "uint16"),
    ("EPIX", "MID_EXP_EPIX-1/DET/RECEIVER:daqOutput", "data.image.pixels", (704, 768), "uint16"),
])
def test_simulator_detectors(detector, source, key, shape, dtype):
    modules = [1] if detector in ("JUNGFRAU", "LPD_MINI") else [0]
    frames = 1 if detector == "EPIX" else 2   # a camera: one frame per train
    (data, meta), = list(Simulator(detector, modules=modules, frames=frames, ntrains=1, first_train_id=7))
    assert data[source][key].shape == shape and data[source][key].dtype == dtype
    assert meta[source]["timestamp.tid"] == 7
    assert "SA1_XTD2_XGM/DOOCS/MAIN" in data
    if detector not in ("JUNGFRAU", "EPIX"):
        assert data[source]["image.pulseId"].dtype == np.uint64
        assert data[source]["image.cellId"].ravel().tolist() == [0, 1]


def test_simulator_corrected_and_same_content_as_synthetic():
    from xfeldata.testing import synthetic

    sim = Simulator("AGIPD", raw=False, modules=[2], frames=3, slow=False, seed=4)
    data, _ = sim.train(10003)
    src = "SPB_DET_AGIPD1M-1/CORR/2CH0:output"
    expected = synthetic.detector_module_train("AGIPD1M", 2, 10003, 3, corrected=True, seed=4)
    assert data[src]["image.data"].dtype == np.float32
    np.testing.assert_array_equal(data[src]["image.data"], expected["image.data"])


def test_simulator_rate_and_validation():
    start = time.monotonic()
    assert len(list(Simulator("LPD", modules=[0], frames=1, ntrains=3, rate=20, slow=False))) == 3
    assert time.monotonic() - start >= 0.09
    with pytest.raises(ValueError):
        Simulator("EIGER")
    with pytest.raises(ValueError):
        Simulator("LPD", modules=[16])


def test_karabo_bridge_demo():
    sim = Simulator("LPD", modules=[0, 1, 2, 3], frames=4)
    with serve(sim, background=True) as handle:
        kb = KaraboBridge(handle.endpoint, timeout=10)
        try:
            train_ = kb.next()
        finally:
            kb.close()
    assert type(train_) is dict
    assert "FXE_DET_LPD1M-1/DET/2CH0:xtdf" in train_.keys()
    det = train_["FXE_DET_LPD1M-1/DET/2CH0:xtdf"]
    assert {"image.data", "image.trainId", "image.pulseId", "image.cellId", "metadata"} <= set(det)
    assert det["metadata"]["source"] == "FXE_DET_LPD1M-1/DET/2CH0:xtdf"
    assert det["metadata"]["timestamp.tid"] == int(det["image.trainId"].ravel()[0])


# -- command line ------------------------------------------------------------------------


def test_monitor_in_process(capsys):
    from xfeldata.bridge.cli import monitor

    sim = Simulator("AGIPD", modules=[0, 1], frames=2)
    with serve(sim, background=True, ntrains=20) as handle:
        assert monitor(handle.endpoint, ntrains=3, timeout=10) == 0
    out = capsys.readouterr().out
    import re

    assert re.search(r"SPB_DET_AGIPD1M-1/DET/1CH0:xtdf +image\.data +2x2x512x128 +uint16", out)
    assert out.count("train ") == 3 and "trains/s" in out and "MB/s" in out and "age" in out
    assert str(sim.first_train_id + 2) in out


def test_monitor_timeout_exit_code():
    from xfeldata.bridge.cli import monitor

    with Server() as server:
        assert monitor(server.endpoint, ntrains=1, timeout=0.2) == 1


def test_cli_simulate_and_monitor_subprocesses():
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a free port for the simulator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "xfeldata.cli"]
    sim = subprocess.Popen([*cmd, "simulate", "--detector", "DSSC", "--modules", "0-1", "--frames", "2",
                            "--port", str(port), "--rate", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        mon = subprocess.run([*cmd, "monitor", f"tcp://127.0.0.1:{port}", "--ntrains", "3",
                              "--timeout", "20"], capture_output=True, text=True, timeout=25)
        assert mon.returncode == 0, mon.stderr
        assert "SCS_DET_DSSC1M-1/DET/1CH0:xtdf" in mon.stdout and mon.stdout.count("train ") == 3
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            _, err = sim.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(sim.pid, signal.SIGKILL)
            sim.communicate()
            raise
    assert sim.returncode == 130 and "Traceback" not in err


def _glibc() -> bool:
    from xfeldata.bridge import buffers

    return buffers._mallopt() is not None


@pytest.mark.skipif(not _glibc(), reason="the allocator tuning needs glibc's mallopt")
def test_client_reuses_the_memory_of_received_messages():
    # Four 16 MiB frames a train: with glibc's defaults most of each lands in fresh
    # pages that fault in one by one (about 5000 faults a train of 16384 pages here);
    # the client keeps freed message memory in the process, so later trains fault in
    # almost nothing (a few faults a train).
    import resource

    big = np.ones(8 * 2**20, np.uint16)
    trains = [(tid, {SRC: {k: big for k in "abcd"}}) for tid in range(5)]
    pages = 4 * big.nbytes // resource.getpagesize()
    with serve(trains, background=True) as handle, Client(handle.endpoint, timeout=10) as client:
        for _ in range(2):  # the first trains grow the heap
            client.next()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            data, _ = client.next()
            assert data[SRC]["d"].sum() == big.size
            del data
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
    assert faults < pages / 10, f"{faults:.0f} page faults per train of {pages} pages"


def test_allocator_tuning_can_be_turned_off(monkeypatch):
    from xfeldata.bridge.buffers import keep_freed_memory

    monkeypatch.setenv("XFELDATA_KEEP_BUFFERS", "0")
    assert keep_freed_memory(2**20) is False
