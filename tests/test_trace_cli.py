import csv
import json
import os

import pytest

from autoq.common.measurement import Measurement
from autoq.host.cli import main
from autoq.host.backends.record import RecordingBackend
from autoq.host.traces import TraceStore
from boardkit import TINY
from tracekit import ToyBackend, some_plans


@pytest.fixture
def trace(tmp_path):
    net = TINY
    path = tmp_path / "trace.sqlite"
    backend = RecordingBackend(ToyBackend(noise=0.1), TraceStore(path))
    measured = [(p, backend.measure(net, p)) for p in some_plans(net, 4)]
    backend.close()
    return path, net, measured


def test_summary_is_the_default(trace, capsys):
    path, net, measured = trace
    assert main(["trace", str(path)]) == 0
    out = capsys.readouterr().out
    assert "records: 4, distinct plans: 4" in out
    assert f"network tiny ({net.hash}): 4 records" in out and "source emulated: 4" in out and "backend toy://: 4" in out
    assert main(["trace", str(path), "--summary"]) == 0
    assert capsys.readouterr().out == out


def test_list_has_one_line_per_record(trace, capsys):
    path, net, measured = trace
    assert main(["trace", str(path), "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(measured)
    for line, (plan, m) in zip(lines[1:], measured):
        assert plan.hash in line and f"{m.latency_s * 1e3:.4f}" in line


def test_export_csv_and_json(trace, tmp_path, capsys):
    path, net, measured = trace
    assert main(["trace", str(path), "--export", "csv", "-o", str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["plan_hash"] for r in rows] == [p.hash for p, _ in measured]
    assert [float(r["latency_s"]) for r in rows] == [m.latency_s for _, m in measured]
    assert [float(r["avg_weight_bits"]) for r in rows] == [p.average_weight_bits(net) for p, _ in measured]
    assert main(["trace", str(path), "--export", "json", "-o", str(tmp_path / "t.json")]) == 0
    body = json.loads((tmp_path / "t.json").read_text())
    assert [Measurement.from_dict(r["measurement"]) for r in body["records"]] == [m for _, m in measured]
    assert set(body["plans"]) == {p.hash for p, _ in measured} and list(body["networks"]) == [net.hash]
    assert body["summary"]["records"] == 4 and body["backends"][0]["uri"] == "toy://"
    assert main(["trace", str(path), "--export", "csv", "-o", "-"]) == 0
    assert capsys.readouterr().out == (tmp_path / "t.csv").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--export", "csv"], "needs -o OUT"),
        (["-o", "x.csv"], "only used with --export"),
    ],
)
def test_bad_arguments(trace, args, message, capsys):
    path, _, _ = trace
    assert main(["trace", str(path), *args]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_trace_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(os.urandom(1000))
    assert main(["trace", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"autoq trace: error: {bad} is not a readable SQLite trace: file is not a database"
    assert main(["trace", str(tmp_path / "missing.sqlite"), "--list"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_calibrate_accepts_a_recorded_trace(tmp_path, capsys):
    from autoq.overlay.calibration_params import CalibrationParams
    from autoq.common.backend import open_backend
    from autoq.host.backends.record import open_backend_recording

    net, path = TINY, tmp_path / "trace.sqlite"
    backend = open_backend_recording("model", path)
    plans = some_plans(net, 8)
    measured = [backend.measure(net, p) for p in plans]
    backend.close()
    out = tmp_path / "fitted.json"
    assert main(["calibrate", str(path), "-o", str(out)]) == 0
    params = CalibrationParams.load(out)
    # a model trace holds predictions, not measurements: the fit reproduces them but is not a calibration
    assert not params.calibrated and "trace.sqlite" in params.source
    assert "predicted by a model" in capsys.readouterr().err
    refitted = open_backend(f"model:{out}")
    for plan, m in zip(plans, measured):
        assert refitted.measure(net, plan).latency_s == pytest.approx(m.latency_s, rel=0.02)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(os.urandom(512))
    capsys.readouterr()
    assert main(["calibrate", str(bad), "-o", str(tmp_path / "x.json")]) == 2
    assert "not a readable SQLite trace" in capsys.readouterr().err
