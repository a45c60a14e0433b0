"""Trace records are checksummed: a flipped byte in a stored plan or measurement, a changed digit of a latency or
a damaged SQLite file is reported by record id (``autoq trace``) or refused (replay), never a traceback, never served."""
import json
import sqlite3

import pytest

from autoq.common.backend import open_backend
from autoq.common.errors import BackendError
from autoq.host.backends.record import RecordingBackend
from autoq.host.cli import main
from autoq.host.traces import TraceError, TraceStore
from boardkit import TINY
from tracekit import ToyBackend, some_plans


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "trace.sqlite"
    backend = RecordingBackend(ToyBackend(noise=0.1), TraceStore(path))
    plans = some_plans(TINY, 4)
    measured = [backend.measure(TINY, p) for p in plans]
    backend.close()
    assert not path.with_name(path.name + "-wal").exists()  # everything is in the file itself
    return path, plans, measured


def edit_file(path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def flip_in_plan(path, plan) -> None:
    """Flip the top bit of a byte in the middle of the plan's stored JSON (which makes it invalid UTF-8)."""
    text = json.dumps(plan.to_dict()).encode()
    middle = len(text) // 2
    edit_file(path, text, text[:middle] + bytes([text[middle] ^ 0x80]) + text[middle + 1:])


def change_latency_digit(path, measurement) -> str:
    digits = repr(measurement.latency_s)
    changed = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    edit_file(path, f'"latency_s": {digits}'.encode(), f'"latency_s": {changed}'.encode())
    return changed


def test_a_flipped_byte_in_a_plan_is_reported_by_record_id_and_the_rest_listed(trace, capsys):
    path, plans, measured = trace
    flip_in_plan(path, plans[1])
    assert main(["trace", str(path), "--list"]) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["1", "3", "4"]  # the good ones, still listed
    assert "record 2: its plan" in captured.err and "does not match its checksum" in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert main(["trace", str(path)]) == 2
    captured = capsys.readouterr()
    assert "records: 3," in captured.out and "damaged (fail their checksums, left out): 1, ids 2" in captured.out
    out = path.with_name("export.json")
    assert main(["trace", str(path), "--export", "json", "-o", str(out)]) == 2
    assert [r["id"] for r in json.loads(out.read_text())["records"]] == [1, 3, 4]
    assert "record 2" in capsys.readouterr().err
    with pytest.raises(BackendError, match=r"cannot replay .* 1 damaged record\(s\) .*record 2: its plan"):
        open_backend(f"replay:{path}")


def test_a_changed_latency_digit_is_never_served(trace, capsys):
    path, plans, measured = trace
    changed = change_latency_digit(path, measured[2])
    with pytest.raises(BackendError, match=r"never served \(record 3: its content does not match its checksum\)"):
        open_backend(f"replay:{path}")
    with TraceStore(path, mode="r") as store:
        damaged = []
        assert [r.id for r in store.records(damaged=damaged)] == [1, 2, 4]
        assert [d.id for d in damaged] == [3]
        with pytest.raises(TraceError, match="record 3 is damaged"):
            store.lookup(TINY.hash, plans[2].hash)
        assert store.lookup(TINY.hash, plans[0].hash) == measured[0]
    assert main(["trace", str(path), "--export", "csv", "-o", "-"]) == 2
    captured = capsys.readouterr()
    assert changed not in captured.out and repr(measured[3].latency_s) in captured.out and "record 3" in captured.err


def test_a_damaged_sqlite_file_is_a_clear_error(trace, capsys):
    path, _, _ = trace
    db = sqlite3.connect(path)
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='measurements'").fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size] = 0x00  # not a b-tree page type: SQLite reports the file as malformed
    path.write_bytes(bytes(data))
    for argv in (["--list"], ["--summary"], ["--export", "json", "-o", "-"]):
        assert main(["trace", str(path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"autoq trace: error: trace {path} cannot be read (the file is damaged: ") and err.count("\n") == 1
    with pytest.raises(BackendError, match="cannot replay .*the file is damaged"):
        open_backend(f"replay:{path}")


def test_a_trace_of_schema_1_is_refused(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('format', 'autoq-trace'), ('schema_version', '1'), ('created_at', '0');")
    db.close()
    for mode in ("r", "a"):
        with pytest.raises(TraceError, match="schema version 1, whose records carry no checksums.*record it again"):
            TraceStore(path, mode=mode)


def test_a_trace_recorded_on_a_register_map_v1_build_is_refused_by_name(tmp_path):
    from autoq.common.backend import BackendInfo
    from tracekit import OVERLAY

    class V1Overlay:  # how a build of the retired HLS engine described itself
        def to_dict(self) -> dict:
            return {**OVERLAY.to_dict(), "regmap_version": 1, "build_hash": ""}

    path = tmp_path / "v1.sqlite"
    with TraceStore(path) as store:
        store.record_backend(BackendInfo("tcp://pynq:7700", "board", V1Overlay(), ("latency",)))  # type: ignore[arg-type]
    with TraceStore(path, mode="r") as store, pytest.raises(
            TraceError, match="backend description: overlay 'toy': register map v1 was the retired HLS engine's"):
        store.backends()
    with pytest.raises(BackendError, match="register map v1 was the retired HLS engine's"):
        open_backend(f"replay:{path}")
