import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoq.common.measurement import Measurement
from autoq.host.traces import SCHEMA_VERSION, TraceError, TraceStore
from boardkit import TINY
from tracekit import ToyBackend, some_plans

TESTS_DIR = Path(__file__).parent


def test_append_lookup_iterate_and_summary(tmp_path):
    net, backend = TINY, ToyBackend(noise=0.1)
    plans = some_plans(net, 4)
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        measured = [backend.measure(net, p) for p in plans]
        ids = [store.append(net, p, m, "toy://") for p, m in zip(plans, measured)]
        again = backend.measure(net, plans[0], batch=1)
        store.append(net, plans[0], again, "toy://")
        assert ids == sorted(ids) and len(store) == 5
    with TraceStore(path, mode="r") as store:
        assert store.lookup(net.hash, plans[1].hash) == measured[1]
        assert store.lookup_all(net.hash, plans[0].hash) == [measured[0], again]
        assert store.lookup(net.hash, plans[0].hash, batch=2) is None
        assert store.lookup("0" * 16, plans[0].hash) is None
        records = list(store)
        assert [r.plan for r in records] == plans + [plans[0]]
        assert all(r.network == net and r.backend_uri == "toy://" and r.batch == 1 for r in records)
        summary = store.summary()
        assert summary.records == 5 and summary.distinct_plans == 4
        assert summary.networks == {net.hash: ("tiny", 5)}
        assert summary.sources == {"emulated": 5}
        assert summary.latency_s_range == (min(m.latency_s for m in measured + [again]), max(m.latency_s for m in measured + [again]))
        json.dumps(summary.to_dict())
        with pytest.raises(TraceError, match="read-only"):
            store.append(net, plans[0], measured[0], "toy://")


def test_trace_is_self_contained_and_in_wal_mode(tmp_path):
    net = TINY
    plan = some_plans(net, 1)[0]
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        store.append(net, plan, ToyBackend().measure(net, plan), "toy://")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    (spec_json,) = db.execute("SELECT spec_json FROM networks").fetchone()
    (plan_json,) = db.execute("SELECT plan_json FROM plans").fetchone()
    assert json.loads(spec_json)["hash"] == net.hash and json.loads(plan_json)["hash"] == plan.hash
    db.close()


def test_append_rejects_a_measurement_of_another_plan(tmp_path):
    net = TINY
    a, b = some_plans(net, 2)
    with TraceStore(tmp_path / "t.sqlite") as store, pytest.raises(TraceError, match="not of network"):
        store.append(net, b, ToyBackend().measure(net, a), "toy://")


def _non_trace_db(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()


def _future_trace(path):
    TraceStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(os.urandom(4096)), "not a readable SQLite trace"),
        (lambda p: p.write_text("latency,energy\n1,2\n"), "not a readable SQLite trace"),
        (_non_trace_db, r"SQLite database but not an autoq trace \(it has tables \['songs'\]\)"),
        (_future_trace, f"schema version {SCHEMA_VERSION + 1}"),
    ],
    ids=["missing", "random-bytes", "text", "other-sqlite", "future-schema"],
)
@pytest.mark.parametrize("mode", ["r", "a"])
def test_unreadable_trace_is_a_clear_error(tmp_path, make, message, mode):
    path = tmp_path / "bad.sqlite"
    make(path)
    if mode == "a" and message == "does not exist":
        TraceStore(path, mode="a").close()  # appending creates a missing trace
        return
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(TraceError, match=message):
        TraceStore(path, mode=mode)
    assert (path.read_bytes() if path.exists() else None) == before, "a failed open must not create or modify the file"


def test_corrupt_record_is_reported_with_its_id(tmp_path):
    net = TINY
    plan = some_plans(net, 1)[0]
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        rid = store.append(net, plan, ToyBackend().measure(net, plan), "toy://")
    db = sqlite3.connect(path)
    db.execute("UPDATE measurements SET measurement_json='{\"latency_s\": 1' WHERE id=?", (rid,))
    db.commit()
    db.close()
    with TraceStore(path, mode="r") as store, pytest.raises(TraceError, match=f"record {rid} is damaged: its content does not match its checksum"):
        store.lookup(net.hash, plan.hash)


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from autoq.host.backends.record import RecordingBackend
    from autoq.host.traces import TraceStore
    from boardkit import TINY, kernel_wise_plan
    from tracekit import ToyBackend

    backend = RecordingBackend(ToyBackend(noise=0.2), TraceStore({path!r}))
    for seed in range(100000):
        plan = kernel_wise_plan(TINY, seed)
        m = backend.measure(TINY, plan)
        print(plan.hash, repr(m.latency_s), flush=True)
    """
)


def test_sigkilled_writer_keeps_every_committed_record(tmp_path):
    path = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(tests=str(TESTS_DIR), path=str(path))], stdout=subprocess.PIPE, text=True
    )
    reported = []
    try:
        for line in proc.stdout:
            reported.append(line.split())
            if len(reported) >= 25:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) >= 25, "writer died before recording"
    net = TINY
    with TraceStore(path, mode="r") as store:
        records = list(store)
        assert len(records) >= len(reported)
        for (plan_hash, latency), record in zip(reported, records):
            assert record.plan.hash == plan_hash and repr(record.measurement.latency_s) == latency
            assert store.lookup(net.hash, plan_hash).latency_s == float(latency)
    with TraceStore(path, mode="a") as store:  # the killed trace can be appended to again
        plan = some_plans(net, 1, seed=99)[0]
        store.append(net, plan, ToyBackend().measure(net, plan), "toy://")
        assert len(store) == len(records) + 1


def test_measurement_survives_json_round_trip_exactly(tmp_path):
    net = TINY
    plan = some_plans(net, 1)[0]
    m = ToyBackend(noise=0.3).measure(net, plan)
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m
