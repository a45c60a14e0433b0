import dataclasses
import os
import sqlite3

import pytest

from autoq.common.backend import open_backend
from autoq.common.errors import BackendError
from autoq.host.backends.record import RecordingBackend, open_backend_recording
from autoq.overlay.calibration_params import CalibrationParams, load_default_calibration
from autoq.host.backends.replay import FIT_CACHE_SUFFIX, parse_uri
from autoq.host.traces import TraceStore
from boardkit import TINY
from tracekit import OVERLAY, ToyBackend, some_plans


def record_toy_search(path, plans, network):
    """A 'search' against a noisy backend: every plan measured once, then the first two measured again."""
    backend = RecordingBackend(ToyBackend(noise=0.2, seed=1), TraceStore(path))
    sequence = plans + plans[:2]
    seen = [backend.measure(network, p) for p in sequence]
    backend.close()
    return sequence, seen


def without_replay_marks(m):
    return dataclasses.replace(m, provenance=dataclasses.replace(m.provenance, source="emulated", detail=""))


def test_replay_reproduces_the_recorded_search(tmp_path):
    net, path = TINY, tmp_path / "trace.sqlite"
    sequence, seen = record_toy_search(path, some_plans(net, 5), net)
    assert seen[0].latency_s != seen[5].latency_s, "the toy backend is noisy: repeated plans must differ"
    replay = open_backend(f"replay:{path}")
    replayed = [replay.measure(net, p) for p in sequence]
    assert [without_replay_marks(m) for m in replayed] == seen
    assert all(m.provenance.source == "replay" and "recorded source=emulated" in m.provenance.detail for m in replayed)
    assert replay.measure(net, sequence[0]) == replayed[5], "once recorded values run out, the last one repeats"
    info = replay.describe()
    assert info.source == "replay" and info.overlay == OVERLAY and "toy://" in info.detail
    replay.close()


def test_replay_miss_is_an_error_naming_the_plan(tmp_path):
    net, path = TINY, tmp_path / "trace.sqlite"
    record_toy_search(path, some_plans(net, 3), net)
    unseen = some_plans(net, 1, seed=42)[0]
    with pytest.raises(BackendError, match=f"replay miss: .* plan {unseen.hash} .*fallback=model"):
        open_backend(f"replay:{path}").measure(net, unseen)
    with pytest.raises(BackendError, match="at batch 4"):
        open_backend(f"replay:{path}").measure(net, some_plans(net, 1)[0], batch=4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(os.urandom(2048)), "not a readable SQLite trace"),
        (lambda p: sqlite3.connect(p).execute("CREATE TABLE x (y)").connection.commit(), "not an autoq trace"),
    ],
    ids=["missing", "random-bytes", "other-sqlite"],
)
def test_unreadable_trace_is_a_clear_backend_error(tmp_path, make, message):
    path = tmp_path / "bad.sqlite"
    make(path)
    with pytest.raises(BackendError, match=f"cannot replay 'replay:{path}': .*{message}"):
        open_backend(f"replay:{path}")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("replay:", "replay URI must be"),
        ("replay:t.sqlite?fallback=magic", "fallback must be one of"),
        ("replay:t.sqlite?fallbak=model", r"unknown option\(s\) \['fallbak'\]"),
    ],
)
def test_bad_replay_uri(uri, message):
    with pytest.raises(BackendError, match=message):
        parse_uri(uri)


def test_parse_uri():
    assert parse_uri("replay:runs/x/trace.sqlite") == ("runs/x/trace.sqlite", "error")
    assert parse_uri("replay:t.sqlite?fallback=model") == ("t.sqlite", "model")


def test_record_refuses_to_append_to_the_replayed_trace(tmp_path):
    net, path = TINY, tmp_path / "trace.sqlite"
    record_toy_search(path, some_plans(net, 1), net)
    with pytest.raises(BackendError, match="would append to the trace"):
        open_backend_recording(f"replay:{path}", path)


def test_replay_can_be_recorded_elsewhere(tmp_path):
    net, path, copy = TINY, tmp_path / "trace.sqlite", tmp_path / "copy.sqlite"
    plans = some_plans(net, 3)
    record_toy_search(path, plans, net)
    backend = open_backend_recording(f"replay:{path}", copy)
    replayed = [backend.measure(net, p) for p in plans]
    backend.close()
    with TraceStore(copy, mode="r") as store:
        assert [r.measurement for r in store] == replayed
        assert store.backends()[0].overlay == OVERLAY


def record_with_model_backend(path, network, plans, uri="model"):
    backend = open_backend_recording(uri, path)
    measured = [backend.measure(network, p) for p in plans]
    backend.close()
    return measured


def test_model_backend_search_replays_identically(tmp_path):
    net, path = TINY, tmp_path / "trace.sqlite"
    plans = some_plans(net, 6)
    measured = record_with_model_backend(path, net, plans)
    replay = open_backend(f"replay:{path}")
    for plan, original in zip(plans, measured):
        served = replay.measure(net, plan)
        assert served.provenance.source == "replay" and "recorded source=model" in served.provenance.detail
        assert dataclasses.replace(served, provenance=original.provenance) == original
    assert replay.describe().overlay == open_backend("model").describe().overlay
    replay.close()


def test_fallback_predicts_misses_with_the_model_fitted_on_the_trace(tmp_path):
    net, path = TINY, tmp_path / "trace.sqlite"
    # The fallback fits the default calibration's model (the RTL's step pipeline, its port's read latency and
    # bandwidth too), as ``autoq calibrate`` does: the trace is recorded with a pipeline calibration of other
    # constants, whose costs of unseen plans the fit must predict.
    other = tmp_path / "other.json"
    schedule = dataclasses.replace(load_default_calibration().schedule, layer_overhead_cycles=400.0, row_cycles=4.0)
    dataclasses.replace(load_default_calibration(), schedule=schedule).save(other)
    model = f"model:{other}"
    plans = some_plans(net, 8)
    recorded = record_with_model_backend(path, net, plans, model)
    unseen = some_plans(net, 3, seed=7)
    truth = open_backend(model)
    replay = open_backend(f"replay:{path}?fallback=model")
    assert replay.measure(net, plans[2]).provenance.source == "replay"  # hits are still served from the trace
    for plan in unseen:
        predicted, expected = replay.measure(net, plan), truth.measure(net, plan)
        assert predicted.provenance.source == "model"
        assert predicted.provenance.calibration_id == f"replay-fit/3:{path.name}:8:8"
        # the trace came from the model itself, so the model refitted on it predicts unseen plans closely
        assert predicted.latency_s == pytest.approx(expected.latency_s, rel=0.02)
        assert predicted.energy_j == pytest.approx(expected.energy_j, rel=0.05)
    assert replay.fitted_calibration().schedule.pipeline
    assert not replay.fitted_calibration().calibrated  # fitted on a model's predictions
    replay.close()
    cache = path.with_name(path.name + FIT_CACHE_SUFFIX)
    assert cache.exists(), "the fit is cached beside the trace"
    CalibrationParams.load(cache).with_changes(notes=("cached",)).save(cache)
    assert open_backend(f"replay:{path}?fallback=model").fitted_calibration().notes == ("cached",), "read from the cache"
    record_with_model_backend(path, net, unseen[:1], model)  # the trace grows: the cached fit is stale
    assert open_backend(f"replay:{path}?fallback=model").fitted_calibration().id == f"replay-fit/3:{path.name}:9:9"
    assert recorded  # recorded measurements remain hits


def test_fallback_on_a_trace_too_small_to_fit_is_a_clear_error(tmp_path):
    net, path = TINY, tmp_path / "trace.sqlite"
    record_with_model_backend(path, net, some_plans(net, 1))
    with pytest.raises(BackendError, match="cannot fit the fallback model on the trace: .*too few"):
        open_backend(f"replay:{path}?fallback=model").measure(net, some_plans(net, 1, seed=3)[0])


def test_recording_into_a_file_that_is_not_a_trace_is_refused(tmp_path):
    from autoq.host.traces import TraceError

    bad = tmp_path / "notes.sqlite"
    bad.write_bytes(os.urandom(1024))
    with pytest.raises(TraceError, match="not a readable SQLite trace"):
        open_backend_recording("model", bad)


def test_search_recorded_then_replayed_sees_the_same_measurements(tmp_path, monkeypatch, capsys):
    import csv

    from autoq.host.cli import main

    monkeypatch.chdir(tmp_path)
    search = ["search", "--model", "digits", "--agent", "random", "--episodes", "3", "--seed", "3", "--no-progress", "--final-finetune-steps", "0"]
    assert main([*search, "--out", "recorded", "--record", "trace.sqlite"]) == 0
    assert main([*search, "--out", "replayed", "--backend", "replay:trace.sqlite"]) == 0
    recorded = list(csv.DictReader(open("recorded/episodes.csv")))
    replayed = list(csv.DictReader(open("replayed/episodes.csv")))
    figures = ("plan_hash", "accuracy", "latency_s", "energy_j", "avg_power_w", "reward")
    assert [[r[k] for k in figures] for r in replayed] == [[r[k] for k in figures] for r in recorded]
    assert {r["source"] for r in recorded} == {"model"} and {r["source"] for r in replayed} == {"replay"}
    with TraceStore("trace.sqlite", mode="r") as store:
        assert {r["plan_hash"] for r in recorded} <= {r.plan.hash for r in store}
    capsys.readouterr()
    assert main(["search", "--model", "digits", "--agent", "random", "--episodes", "1", "--seed", "4", "--no-progress", "--final-finetune-steps", "0", "--out", "other",
                 "--backend", "replay:trace.sqlite"]) == 2
    assert "replay miss" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # failed in its first episode: no empty results folder left behind
