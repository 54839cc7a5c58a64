"""LiveBuffer: trains over real ZeroMQ sockets on 127.0.0.1, viewed like an offline run.

Every server and buffer is stopped by its test (context managers); every wait is
bounded in time and every loop in count.
"""

from __future__ import annotations

import threading
import tracemalloc

import dask.array as da
import msgpack
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zmq

import xfeldata as xd
from xfeldata.bridge import Client, LiveBuffer, ProtocolError, Simulator, encode, make_metadata, serve

pytestmark = pytest.mark.timeout(60)

AGIPD0 = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
AGIPD_CORR = "SPB_DET_AGIPD1M-1/CORR/{}CH0:output"


def receive(trains, ntrains: int, maxlen: int = 100, **serve_kw) -> LiveBuffer:
    """Serve ``trains`` (a Run, Simulator or iterable), buffer ``ntrains`` of them, stop both."""
    with serve(trains, background=True, **serve_kw) as handle:
        with LiveBuffer(handle.endpoint, maxlen=maxlen) as buf:
            buf.wait(min(ntrains, maxlen), timeout=20)
            assert handle.join(timeout=20)  # every train fed and sent
            deadline = 50
            while buf.received < ntrains and deadline:  # the last messages may still be on their way
                threading.Event().wait(0.1)
                deadline -= 1
    assert not buf.running
    assert buf.received == ntrains and buf.errors == 0
    return buf


def layout(ds: xr.Dataset) -> dict:
    """Everything of a Dataset's layout but the values and the lengths."""
    return {
        "dims": {n: v.dims for n, v in ds.variables.items()},
        "dtypes": {n: v.dtype for n, v in ds.variables.items()},
        "coords": sorted(ds.coords),
        "attrs": sorted(ds.attrs),
    }


# -- simulated streams ------------------------------------------------------------


def test_simulator_detector_layout_matches_offline(detector_runs):
    sim = Simulator("AGIPD", modules=[0, 3], frames=3, ntrains=4, slow=False)
    buf = receive(sim, 4)
    ds = buf.detector()
    offline = xd.open_run(detector_runs["AGIPD1M"]).detector()
    assert layout(ds) == layout(offline)
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan")
    assert ds.sizes["pulseId"] == 3 and ds["module"].values.tolist() == [0, 3]  # the modules found
    np.testing.assert_array_equal(ds.trainId, sim.first_train_id + np.arange(4))
    assert ds.present.all()
    asked = buf.detector(modules=[0, 1, 3])
    assert asked.present.sel(module=[0, 3]).all() and not asked.present.sel(module=1).any()
    assert (asked.cellId.sel(module=1) == -1).all() and (asked.cellId.sel(module=0) >= 0).all()
    for tid in ds.trainId.values:
        data, meta = sim.train(int(tid))
        np.testing.assert_array_equal(ds["image.data"].sel(trainId=tid, module=3),
                                      data["SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"]["image.data"])


def test_present_mask_with_a_module_missing():
    sim = Simulator("AGIPD", raw=False, modules=[0, 1, 2], frames=2, ntrains=3, slow=False)
    trains = []
    for data, meta in sim:
        if meta[AGIPD0.replace("DET/0CH0:xtdf", "CORR/0CH0:output")]["timestamp.tid"] == \
                sim.first_train_id + 1:
            del data["SPB_DET_AGIPD1M-1/CORR/1CH0:output"], meta["SPB_DET_AGIPD1M-1/CORR/1CH0:output"]
        trains.append((data, meta))
    buf = receive(trains, 3)
    ds = buf.detector(modules=[0, 1, 2])
    assert list(ds.module.values) == [0, 1, 2]
    assert set(ds.data_vars) == {"image.data", "image.mask", "image.gain", "present", "cellId"}
    assert ds["image.data"].dtype == np.float32
    np.testing.assert_array_equal(ds.present.any("pulseId").values, [[1, 1, 1], [1, 0, 1], [1, 1, 1]])
    assert ds.present.dims == ("trainId", "pulseId", "module")
    missing = ds.sel(trainId=sim.first_train_id + 1, module=1)
    assert np.isnan(missing["image.data"]).all() and (missing["image.mask"] == 0).all()
    assert (missing.cellId == -1).all()
    assert not np.isnan(ds["image.data"].sel(module=[0, 2])).any()
    # require_all_modules drops the train where module 1 is missing
    assert list(buf.detector(require_all_modules=True).trainId.values) == \
        [sim.first_train_id, sim.first_train_id + 2]
    assert buf.detector(modules=[0, 1, 2], fill_value=7)["image.data"].sel(
        trainId=sim.first_train_id + 1, module=1).min() == 7


def test_dropped_trains_evicted_and_gaps():
    sim = Simulator("JUNGFRAU", modules=[1], frames=2, slow=False)
    tids = [100, 101, 102, 103, 106, 107]  # 104 and 105 never come
    buf = receive([sim.train(t) for t in tids], 6, maxlen=3)
    assert list(buf.train_ids) == [103, 106, 107] and len(buf) == 3
    assert buf.trains_evicted == 3 and buf.trains_missed == 2 and buf.trains_dropped == 5
    ds = buf.detector()
    assert ds["image.data"].dims == ("trainId", "cell", "module", "slow_scan", "fast_scan")
    assert list(ds.cell.values) == [0, 1]


def test_trains_arriving_out_of_order_are_not_counted_missed():
    """101 comes after 102: counted missed when 102 came, taken back when it arrives; 104 never comes."""
    sim = Simulator("JUNGFRAU", modules=[1], frames=2, slow=False)
    buf = receive([sim.train(t) for t in (100, 102, 101, 103, 105, 106)], 6, maxlen=10)
    assert sorted(buf.train_ids) == [100, 101, 102, 103, 105, 106]
    assert buf.trains_missed == 1 and buf.restarts == 0 and buf.trains_discarded == 0


def test_live_jungfrau_detector_says_which_keys_it_renames():
    sim = Simulator("JUNGFRAU", modules=[1, 2], frames=2, slow=False)
    ds = receive([sim.train(t) for t in (100, 101)], 2).detector()
    assert "image.gain" in ds and "data.gain" not in ds
    assert "data.adc -> image.data" in ds.attrs["renamed_keys"]


def test_live_pulse_selection_follows_the_plan():
    sim = Simulator("AGIPD", modules=[0], frames=3, slow=False)
    buf = receive([sim.train(t) for t in (10, 11)], 2)
    full = buf.detector()
    last = buf.detector(pulses=xd.by_index[-1])
    np.testing.assert_array_equal(last["image.data"].values, full["image.data"].values[:, -1:])
    with pytest.raises(ValueError, match="pulse ID 999 is not in .*pulse IDs there"):
        buf.detector(pulses=xd.by_id[[999]])


def test_mismatched_train_ids_are_reported_and_matched_by_tid():
    sim = Simulator("AGIPD", modules=[0, 1], frames=2, slow=False)
    good = [sim.train(t) for t in (10, 11)]
    data, meta = sim.train(12)
    data1, _ = sim.train(13)
    data["SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"] = data1["SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"]
    meta["SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"] = make_metadata("SPB_DET_AGIPD1M-1/DET/1CH0:xtdf", 13)
    buf = receive([*good, (data, meta)], 3)
    assert buf.mismatched_trains == 1
    assert list(buf.train_ids) == [10, 11, 12, 13]
    assert sorted(buf.train(12)[0]) == [AGIPD0] and sorted(buf.train(13)[0]) == [
        "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"]
    present = buf.detector(modules=[0, 1]).present
    np.testing.assert_array_equal(present.sel(trainId=[12, 13]).any("pulseId").values, [[1, 0], [0, 1]])


def test_malformed_messages_are_counted_and_the_thread_survives(caplog):
    """A raw REP socket answers with an odd frame count, bad msgpack, no train ID, then a train."""
    good = encode({"SRC": {"x": 1.5}}, {"SRC": make_metadata("SRC", 7)})
    no_tid = [msgpack.packb({"source": "SRC", "content": "msgpack", "metadata": {"source": "SRC"}}),
              msgpack.packb({"x": 1})]
    replies = [[b"a", b"b", b"c"], [b"\xc1", b"\xc1"], no_tid, good]
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def answer():
        for frames in replies:
            if not rep.poll(10_000):
                return
            rep.recv()
            rep.send_multipart(frames)

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    try:
        with LiveBuffer(f"tcp://127.0.0.1:{port}", maxlen=5, timeout=5) as buf:
            buf.wait(1, timeout=20)
            assert buf.running
        server.join(10)
    finally:
        rep.close(linger=0)
        ctx.term()
    assert buf.errors == 3 and isinstance(buf.last_error, ProtocolError)
    assert list(buf.train_ids) == [7]
    assert buf.control_frame().loc[7, "SRC/x"] == 1.5
    assert "malformed message" in caplog.text


def test_silent_endpoint_times_out_and_stops_promptly():
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)  # takes requests, never answers
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    try:
        buf = LiveBuffer(f"tcp://127.0.0.1:{port}", timeout=30)
        with buf:
            with pytest.raises(TimeoutError):
                buf.wait(1, timeout=0.3)
        assert not buf.running  # stop() did not wait for the 30 s receive timeout
        assert len(buf) == 0 and buf.train_ids.dtype == np.uint64 and buf.errors == 0
        with pytest.raises(KeyError, match="no multi-module detector"):
            buf.detector()
        assert buf.dataset().sizes == {"trainId": 0}
        assert buf.control_frame().empty
    finally:
        rep.close(linger=0)
        ctx.term()


def test_client_passed_in_and_argument_checks():
    with pytest.raises(ValueError, match="finite timeout"):
        with Client("tcp://127.0.0.1:1", timeout=None) as client:
            LiveBuffer(client)
    with pytest.raises(ValueError):
        LiveBuffer("tcp://127.0.0.1:1", maxlen=0)
    sim = Simulator("AGIPD", modules=[0], frames=1, ntrains=2, slow=False)
    with serve(sim, background=True) as handle:
        with Client(handle.endpoint, timeout=1) as client:
            with LiveBuffer(client, maxlen=2) as buf:
                with pytest.raises(ValueError):
                    buf.wait(3)
                buf.wait(2, timeout=20)
            assert not client.closed  # the caller's client stays the caller's
    assert "2/2 trains" in repr(buf)
    with pytest.raises(RuntimeError, match="not running"):
        buf.clear()
        buf.wait(1, timeout=1)


# -- lazy stacking: buffers fed with add() as the receiving thread feeds them (no sockets) --


def fed(trains, maxlen: int = 10) -> LiveBuffer:
    """A buffer that is never started, fed with ``(data, metadata)`` pairs."""
    buf = LiveBuffer("tcp://127.0.0.1:1", maxlen=maxlen)
    for data, meta in trains:
        buf.add(data, meta)
    return buf


def with_frames(train, source: str, order) -> tuple[dict, dict]:
    """A copy of a train whose ``source`` has the frames ``order`` (indices) of every image.* key."""
    data, meta = train
    props = {k: (v[order] if k.startswith("image.") else v) for k, v in data[source].items()}
    return {**data, source: props}, meta


def test_detector_is_lazy_and_stays_valid_after_eviction_and_clear():
    sim = Simulator("AGIPD", modules=[0, 2], frames=4, slow=False)
    tids = [sim.first_train_id + i for i in range(3)]
    buf = fed([sim.train(t) for t in tids], maxlen=3)
    tracemalloc.start()
    try:
        ds = buf.detector(modules=[0, 1, 2])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = ds["image.data"].data
    assert isinstance(data, da.Array) and data.numblocks == (3, 1, 3, 1, 1, 1)  # a chunk per train x module
    assert peak < data.nbytes / 10  # building copied no frames
    buffered = buf.train(tids[0])[0][AGIPD0]["image.data"]
    assert not buffered.flags.writeable  # what the Dataset reads cannot be changed through the buffer
    computed = ds["image.data"].isel(trainId=0, module=0).values
    assert computed.flags.writeable and not np.shares_memory(computed, buffered)

    for t in range(tids[-1] + 1, tids[-1] + 4):  # evicts every train of ds
        buf.add(*sim.train(t))
    assert buf.trains_evicted == 3
    buf.clear()
    values = ds["image.data"].values
    for i, t in enumerate(tids):
        sent, _ = sim.train(t)
        for j, m in enumerate([0, 1, 2]):
            expected = sent[sim.kind.source(m)]["image.data"] if m != 1 else 0
            np.testing.assert_array_equal(values[i, :, j], expected)
    assert (ds.cellId.sel(module=1) == -1).all() and ds.present.sel(module=[0, 2]).all()


def test_added_arrays_stay_writeable_for_their_owner():
    sim = Simulator("AGIPD", modules=[0], frames=2, slow=False)
    data, meta = sim.train(5)
    buf = fed([(data, meta)])
    assert data[AGIPD0]["image.data"].flags.writeable
    assert not buf.train(5)[0][AGIPD0]["image.data"].flags.writeable


def test_no_common_train_gives_empty_lazy_variables():
    first = Simulator("AGIPD", modules=[0], frames=2, slow=False)
    second = Simulator("AGIPD", modules=[1], frames=2, slow=False)
    buf = fed([first.train(1), second.train(2)])
    ds = buf.detector(modules=[0, 1], require_all_modules=True)
    assert isinstance(ds["image.data"].data, da.Array)
    assert ds.compute()["image.data"].shape == (0, 0, 2, 2, 512, 128)
    ds = buf.detector(modules=[0, 1])
    assert ds["image.data"].data.numblocks == (2, 1, 2, 1, 1, 1)
    np.testing.assert_array_equal(ds.present.any("pulseId").values, [[1, 0], [0, 1]])


def test_reordered_and_missing_frames_are_placed_by_pulse_id():
    sim = Simulator("AGIPD", raw=False, modules=[0, 1], frames=4, slow=False)
    tids = [sim.first_train_id + i for i in range(3)]
    plain = fed([sim.train(t) for t in tids]).detector()
    reordered = [with_frames(sim.train(tids[0]), AGIPD_CORR.format(1), [3, 1, 0, 2]),
                 sim.train(tids[1]),
                 with_frames(sim.train(tids[2]), AGIPD_CORR.format(0), [3, 2, 1, 0])]
    xr.testing.assert_identical(fed(reordered).detector(), plain)

    gaps = [with_frames(sim.train(tids[0]), AGIPD_CORR.format(1), [2, 0, 1]),  # frame 3 missing
            *[sim.train(t) for t in tids[1:]]]
    ds = fed(gaps).detector(modules=[0, 1], fill_value=-5)
    missing = {"trainId": tids[0], "module": 1, "pulseId": plain.pulseId[3]}
    assert (ds["image.data"].sel(missing) == -5).all() and (ds["image.mask"].sel(missing) == 0).all()
    assert ds.cellId.sel(missing) == -1
    others = ~((ds.trainId == tids[0]) & (ds.module == 1) & (ds.pulseId == plain.pulseId[3]))
    xr.testing.assert_equal(ds.where(others), plain.sel(module=[0, 1]).where(others))  # attrs: fill_value
    xr.testing.assert_equal(ds.isel(trainId=[0], pulseId=[1, 3]).compute(),
                            ds.compute().isel(trainId=[0], pulseId=[1, 3]))


def parallel_gain(train, order, junk_ids: bool = False) -> tuple[dict, dict]:
    """An LPD train whose frames are stored three times (gain stages 0, 1, 2: data + stage),
    each stage with the frames ``order``; with ``junk_ids`` stages 1 and 2 record pulse and
    cell IDs 500 + stage (as real LPD files record junk IDs after the first third)."""
    data, meta = train
    out = {}
    for source, props in data.items():
        stages = []
        for s in range(3):
            stage = {k: v[order] for k, v in props.items() if k.startswith("image.")}
            stage["image.data"] = stage["image.data"] + np.uint16(s)
            if junk_ids and s:
                for key in ("image.pulseId", "image.cellId"):
                    stage[key] = np.full_like(stage[key], 500 + s)
            stages.append(stage)
        out[source] = {**props, **{k: np.concatenate([st[k] for st in stages]) for k in stages[0]}}
    return out, meta


def test_lpd_parallel_gain_in_order_and_reordered():
    sim = Simulator("LPD", modules=[0, 3], frames=3, slow=False)
    tids = [sim.first_train_id + i for i in range(2)]
    ds = fed([parallel_gain(sim.train(t), [0, 1, 2]) for t in tids]).detector(modules=[0, 3])
    assert ds["image.data"].dims == ("trainId", "pulseId", "module", "gain", "slow_scan", "fast_scan")
    assert ds.attrs["frames_per_pulse"] == 3
    for i, t in enumerate(tids):
        frames = sim.train(t)[0][sim.kind.source(3)]["image.data"][:, 0]
        for s in range(3):
            np.testing.assert_array_equal(ds["image.data"].isel(trainId=i, gain=s).sel(module=3), frames + s)
    reordered = fed([parallel_gain(sim.train(tids[0]), [2, 0, 1]),
                     parallel_gain(sim.train(tids[1]), [0, 1, 2])]).detector(modules=[0, 3])
    xr.testing.assert_identical(reordered, ds)


def test_lpd_parallel_gain_with_junk_ids_is_stacked_by_the_first_thirds_ids():
    """``parallel_gain=True`` as for files: the buffer gives the Dataset of trains whose
    stages repeat their pulse IDs; without it the junk IDs repeat, and the error says what to pass."""
    sim = Simulator("LPD", modules=[0, 3], frames=3, slow=False)
    tids = [sim.first_train_id + i for i in range(2)]
    clean = fed([parallel_gain(sim.train(t), [2, 0, 1]) for t in tids])
    junk = fed([parallel_gain(sim.train(t), [2, 0, 1], junk_ids=True) for t in tids])
    for kw in ({}, {"dask": False}, {"pulses": xd.by_index[1:]}, {"pulses": xd.by_id[[0, 2]]}):
        xr.testing.assert_identical(junk.detector(parallel_gain=True, **kw).compute(),
                                    clean.detector(**kw).compute())
    assert clean.detector(pulses=xd.by_index[1:])["present"].values.all()
    with pytest.raises(ValueError, match="repeats within a train.*pass parallel_gain=True"):
        junk.detector()


def _streams() -> dict[str, tuple[list, dict]]:
    """Buffered streams whose chunks take every form: views in order, frames placed by
    pulse ID (reordered, one missing), a module without data, LPD parallel gain."""
    corr = Simulator("AGIPD", raw=False, modules=[0, 1], frames=4, slow=False)
    tids = [corr.first_train_id + i for i in range(3)]
    lpd = Simulator("LPD", modules=[0, 3], frames=3, slow=False)
    return {
        "in order, a module missing": ([corr.train(t) for t in tids], {"modules": [0, 1, 2]}),
        "reordered, a frame missing": (
            [with_frames(corr.train(tids[0]), AGIPD_CORR.format(1), [2, 0, 1]),
             with_frames(corr.train(tids[1]), AGIPD_CORR.format(0), [3, 2, 1, 0]), corr.train(tids[2])],
            {"fill_value": -5}),
        "parallel gain": ([parallel_gain(lpd.train(lpd.first_train_id), [2, 0, 1]),
                           parallel_gain(lpd.train(lpd.first_train_id + 1), [0, 1, 2])],
                          {"modules": [0, 3]}),
    }


@pytest.mark.parametrize("stream", list(_streams()))
def test_numpy_detector_equals_the_computed_lazy_one(stream):
    trains, kw = _streams()[stream]
    buf = fed(trains)
    ds = buf.detector(dask=False, **kw)
    assert all(isinstance(v.data, np.ndarray) for v in ds.variables.values())
    xr.testing.assert_identical(ds, buf.detector(**kw).compute())
    newest = buf.detector(dask=False, last=1, **kw)
    xr.testing.assert_identical(newest, ds.isel(trainId=[-1]))
    assert newest["image.data"].values.flags.writeable  # a copy, not a view of the buffer


def test_numpy_detector_reuses_memory_only_once_nothing_uses_it():
    sim = Simulator("AGIPD", modules=[0, 1], frames=2, slow=False)
    buf = fed([sim.train(sim.first_train_id + i) for i in range(3)])
    first = buf.detector(dask=False, last=1)["image.data"].values
    held = first.copy()
    second = buf.detector(dask=False, last=1)["image.data"].values
    assert not np.shares_memory(first, second)  # first is still in use
    np.testing.assert_array_equal(first, held)
    address = second.__array_interface__["data"][0]
    del second
    buf.add(*sim.train(sim.first_train_id + 3))
    third = buf.detector(dask=False, last=1)["image.data"]
    assert third.values.__array_interface__["data"][0] == address  # second's memory again
    np.testing.assert_array_equal(third.isel(trainId=0, module=1).values,
                                  sim.train(sim.first_train_id + 3)[0][sim.kind.source(1)]["image.data"])
    np.testing.assert_array_equal(first, held)


def test_wait_newer_gives_the_newest_train_once_per_filed_message():
    sim = Simulator("AGIPD", modules=[0], frames=2, slow=False)
    t0 = sim.first_train_id
    buf = fed([sim.train(t0 + i) for i in (1, 2, 0)], maxlen=2)  # t0 is older than both: discarded
    newest = buf.wait_newer(0, timeout=1)
    assert (newest.filed, newest.train_id) == (2, t0 + 2) and buf.trains_discarded == 1
    assert sorted(newest.data) == [AGIPD0] and newest.metadata[AGIPD0]["timestamp.tid"] == t0 + 2
    with pytest.raises(TimeoutError):
        buf.wait_newer(newest.filed, timeout=0.2)  # nothing filed since
    buf.add(*sim.train(t0 + 3))
    assert buf.wait_newer(newest.filed, timeout=1).train_id == t0 + 3


def test_views_of_the_newest_trains_only():
    sim = Simulator("AGIPD", modules=[0], frames=2)
    buf = fed([sim.train(sim.first_train_id + i) for i in range(4)])
    newest = buf.train_ids[-2:]
    np.testing.assert_array_equal(buf.detector(last=2).trainId, newest)
    xr.testing.assert_identical(buf.dataset(last=2), buf.dataset().sel(trainId=newest))
    pd.testing.assert_frame_equal(buf.control_frame(last=2), buf.control_frame().loc[newest])
    assert len(buf.detector(last=10).trainId) == 4
    with pytest.raises(ValueError, match="last must be at least 1"):
        buf.detector(last=0)


# -- the acceptance test: a run served from files equals the run opened from files -----


@pytest.mark.timeout(90)
def test_served_run_equals_open_run(agipd_raw_run):
    run = xd.open_run(agipd_raw_run)
    buf = receive(run, len(run.train_ids), maxlen=4)
    tids = buf.train_ids
    np.testing.assert_array_equal(tids, run.train_ids[-4:])
    assert buf.trains_evicted == len(run.train_ids) - 4 and buf.trains_missed == 0
    assert buf.mismatched_trains == 0

    # detector: values, layout and attrs
    xr.testing.assert_identical(buf.detector(), run.detector().sel(trainId=tids).compute())
    xr.testing.assert_identical(buf.detector(modules=[3, 5]),
                                run.detector(modules=[3, 5]).sel(trainId=tids).compute())

    # control frame: the same rows, columns and values; scalars travel as int64/float64
    live, offline = buf.control_frame(), run.control_frame().loc[tids]
    pd.testing.assert_frame_equal(live, offline, check_dtype=False)
    assert live.attrs["skipped"] == offline.attrs["skipped"]

    # dataset: names, dims, coords, values; arrays keep their dtype
    live, offline = buf.dataset(), run.dataset().sel(trainId=tids).compute()
    assert set(live.variables) == set(offline.variables)
    for name, var in offline.variables.items():
        assert live[name].dims == var.dims, name
        # source and key; the files' key attributes (units, names) and files read are not on the wire
        assert live[name].attrs.items() <= var.attrs.items(), name
        np.testing.assert_array_equal(live[name].values, var.values, err_msg=name)
        if var.ndim > 1 or name in live.coords:
            assert live[name].dtype == var.dtype, name
        else:  # a scalar per train: a plain msgpack number on the wire
            assert live[name].dtype.kind == var.dtype.kind or var.dtype.kind in "uib", name
    sel = buf.dataset("SA1_XTD2_XGM/*", "data.*")
    assert set(sel.data_vars) == set(run.select("SA1_XTD2_XGM/*", "data.*").dataset().data_vars)


@pytest.mark.parametrize("kind", ["AGIPD500K", "LPD1M", "LPD1M-parallel", "DSSC1M", "JUNGFRAU"])
def test_served_detector_equals_open_run_for_every_kind(detector_runs, kind):
    run = xd.open_run(detector_runs[kind])
    buf = receive(run, len(run.train_ids), maxlen=10)
    np.testing.assert_array_equal(buf.train_ids, run.train_ids)
    xr.testing.assert_identical(buf.detector(), run.detector().compute())


def test_served_corrected_and_irregular_runs(agipd_corr_run, irregular_run):
    run = xd.open_run(agipd_corr_run).select("*/CORR/*", "*")
    buf = receive(run, len(run.train_ids), maxlen=20)
    xr.testing.assert_identical(buf.detector(), run.detector().compute())

    # missing module trains, varying frames per train, a train without frames
    run = xd.open_run(irregular_run).select("SPB_DET*", "image.*")
    buf = receive(run, len(run.train_ids), maxlen=20)
    offline = run.detector().compute()
    xr.testing.assert_identical(buf.detector(), offline)
    live = buf.dataset("*/1CH0:xtdf", "image.data")
    offline = run.select("*/1CH0:xtdf", "image.data").dataset().compute()
    xr.testing.assert_equal(live, offline)
    name = "SPB_DET_AGIPD1M-1/DET/1CH0:xtdf/image.data"
    assert live[name].dtype == offline[name].dtype
    assert live[name].attrs == {"source": offline[name].attrs["source"], "key": "image.data"}
