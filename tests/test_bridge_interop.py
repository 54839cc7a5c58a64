"""Interoperability with the published ``karabo-bridge`` package, both ways, over sockets."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from xfeldata.bridge import Client, Server, ServerClosed, Simulator, encode, serve

karabo_bridge = pytest.importorskip("karabo_bridge")
from karabo_bridge.server import ServerInThread, SimServerInThread  # noqa: E402

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PAIRS = [("REP", "REQ"), ("PUB", "SUB"), ("PUSH", "PULL")]


def _feed_until(server: Server, stop: threading.Event, sim: Simulator) -> None:
    for data, meta in sim:
        if stop.is_set():
            return
        try:
            server.feed(data, meta, timeout=0.2)
        except TimeoutError:
            continue
        except ServerClosed:
            return


@pytest.mark.parametrize("server_sock, client_sock", PAIRS)
@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_published_client_against_our_server(server_sock, client_sock, protocol):
    sim = Simulator("AGIPD", modules=[0, 1], frames=2, ntrains=500)
    stop = threading.Event()
    with Server(sock=server_sock, protocol=protocol, policy="drop", maxlen=2) as server:
        feeder = threading.Thread(target=_feed_until, args=(server, stop, sim))
        feeder.start()
        client = karabo_bridge.Client(server.endpoint, sock=client_sock, timeout=10)
        try:
            got = [client.next() for _ in range(2)]
        finally:
            client._context.destroy(linger=0)
            stop.set()
            feeder.join(10)
    src = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    for data, meta in got:
        assert data[src]["image.data"].shape == (2, 2, 512, 128)
        assert meta[src]["timestamp.tid"] == int(data[src]["image.trainId"].ravel()[0])
        assert meta["SA1_XTD2_XGM/DOOCS/MAIN"]["source"] == "SA1_XTD2_XGM/DOOCS/MAIN"
        expected, _ = sim.train(meta[src]["timestamp.tid"])
        np.testing.assert_array_equal(data[src]["image.data"], expected[src]["image.data"])


@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_published_client_against_serve(protocol):
    sim = Simulator("JUNGFRAU", modules=[1, 2], frames=1, first_train_id=42)
    with serve(sim, background=True, protocol=protocol, ntrains=3) as handle:
        client = karabo_bridge.Client(handle.endpoint, timeout=10)
        try:
            got = [client.next() for _ in range(3)]
        finally:
            client._context.destroy(linger=0)
    tids = [meta["SPB_IRDA_JF4M/DET/JNGFR02:daqOutput"]["timestamp.tid"] for _, meta in got]
    assert tids == [42, 43, 44]


@pytest.mark.parametrize("server_sock, client_sock", PAIRS)
@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_our_client_against_published_sim_server(server_sock, client_sock, protocol):
    server = SimServerInThread("tcp://127.0.0.1:0", sock=server_sock, protocol_version=protocol,
                               detector="AGIPDModule", raw=True, debug=False)
    server.start()
    try:
        with Client(server.endpoint, sock=client_sock, timeout=10) as client:
            got = [client.next() for _ in range(2)]
    finally:
        server.stop()
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    for data, meta in got:
        assert data[src]["image.data"].shape == (128, 512, 64)
        assert data[src]["image.data"].dtype == np.uint16
        assert meta[src]["timestamp.tid"] >= 10000000000
        if protocol == "1.0":
            assert data[src]["metadata"] == meta[src]
    assert got[0][1][src]["timestamp.tid"] < got[1][1][src]["timestamp.tid"]


def test_our_client_against_published_server_in_thread():
    data = {"A/B/C": {"x": 1.5, "arr": np.arange(12, dtype=np.float32).reshape(3, 4)}}
    meta = {"A/B/C": {"source": "A/B/C", "timestamp.tid": 99}}
    server = ServerInThread("tcp://127.0.0.1:0", sock="REP")
    server.start()
    try:
        server.feed(data, meta)
        with Client(server.endpoint, timeout=10) as client:
            got, got_meta = client.next()
    finally:
        server.stop()
    assert got_meta == meta
    np.testing.assert_array_equal(got["A/B/C"]["arr"], data["A/B/C"]["arr"])


@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_same_frames_on_the_wire(protocol):
    """What our Server sends is byte for byte what karabo_bridge.serialize makes."""
    sim = Simulator("DSSC", modules=[0], frames=2)
    data, meta = sim.train(123)
    with Server(protocol=protocol, policy="queue") as server:
        server.feed(data, meta)
        with Client(server.endpoint, timeout=10) as client:
            frames = client.recv_frames()
    wire = [bytes(f.buffer) for f in frames]
    assert wire == [bytes(f) for f in karabo_bridge.serialize(data, meta, protocol_version=protocol)]
    assert wire == [bytes(f) for f in encode(data, meta, protocol)]


def test_throughput_smoke():
    """Large trains go through without trouble (numbers are in the benchmark)."""
    arr = np.zeros((16, 4, 512, 128), dtype=np.uint16)  # 8 MiB
    with Server(policy="queue", maxlen=2) as server:
        def feed():
            for tid in range(10):
                try:
                    server.feed({"DET": {"image.data": arr}}, train_id=tid, timeout=5)
                except (TimeoutError, ServerClosed):
                    return

        t = threading.Thread(target=feed)
        t.start()
        with Client(server.endpoint, timeout=10) as client:
            start = time.perf_counter()
            for _ in range(10):
                data, _ = client.next()
            elapsed = time.perf_counter() - start
        t.join(10)
    assert data["DET"]["image.data"].shape == arr.shape
    assert elapsed < 10


def test_serve_a_written_run_to_the_published_client(tmp_path):
    writer = pytest.importorskip("xfeldata.testing")
    import xfeldata

    path = writer.make_example(tmp_path / "r0001", detector="AGIPD1M", modules=[0, 1],
                               n_trains=4, frames_per_train=2)
    run = xfeldata.open_run(path)
    with serve(run, background=True, sources="SPB_DET_*", keys="image.*") as handle:
        client = karabo_bridge.Client(handle.endpoint, timeout=10)
        try:
            got = [client.next() for _ in range(4)]
        finally:
            client._context.destroy(linger=0)
    src = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"
    assert [meta[src]["timestamp.tid"] for _, meta in got] == list(run.train_ids[:4])
    assert all(sorted(data) == ["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", src] for data, _ in got)
    assert got[0][0][src]["image.data"].shape == (2, 2, 512, 128)


@pytest.mark.parametrize("protocol", ["1.0", "2.2"])
def test_a_served_run_with_structured_arrays_reaches_the_published_client_whole(tmp_path, protocol):
    """A REMI detector's hits are a structured (compound) array: the published package decodes
    the train (it failed on every train when 2.2 sent str(dtype)), with the run's own values."""
    import xfeldata
    from xfeldata.testing import make_example

    run = xfeldata.open_run(make_example(tmp_path / "r0001", detector=None, n_trains=3))
    source = next(s for s in run.instrument_sources
                  if any(run.key_info(s, k).dtype.names for k in run.keys(s)))
    key = next(k for k in run.keys(source) if run.key_info(source, k).dtype.names)
    with serve(run, background=True, protocol=protocol, sources=source) as handle:
        client = karabo_bridge.Client(handle.endpoint, timeout=10)
        try:
            data, meta = client.next()
        finally:
            client._context.destroy(linger=0)
    _, expected = run.train_from_id(meta[source]["timestamp.tid"], devices=[(source, key)])
    assert data[source][key].dtype == expected[source][key].dtype
    assert data[source][key].tobytes() == expected[source][key].tobytes()  # (NaN fill: bytes, not ==)
