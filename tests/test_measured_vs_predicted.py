"""Measured and predicted figures apart: the Measurement labels, what each backend labels, calibration only on
measurements (``autoq calibrate`` and the replay fallback), the Zynq global timer, and the power protocol's
resolution check."""
from __future__ import annotations

import dataclasses

import pytest

from autoq.common.backend import open_backend
from autoq.common.measurement import FIGURES, Measurement, MeasurementFormatError
from autoq.host.backends.record import open_backend_recording
from autoq.host.cli import main
from autoq.overlay.calibration_params import CalibrationParams
from autoq.overlay.globaltimer import COUNTER_HI, COUNTER_LO, CONTROL, GlobalTimer, TimerError
from autoq.overlay.measure import Clock, MeasureSettings, RunRecord, run_protocol
from boardkit import TINY
from tracekit import some_plans


def record(uri, path, plans):
    backend = open_backend_recording(uri, path)
    measured = [backend.measure(TINY, p) for p in plans]
    backend.close()
    return measured


# ------------------------------------------------------------------------------------------- the Measurement type
def test_model_measurements_are_all_predicted_and_round_trip():
    m = open_backend("model").measure(TINY, some_plans(TINY, 1)[0])
    assert m.measured == () and set(m.predicted) == set(FIGURES)
    assert set(m.predicted.values()) == {m.provenance.calibration_id}
    data = m.to_dict()
    assert data["format"] == 2 and Measurement.from_dict(data) == m


def test_old_records_and_inconsistent_labels_are_refused():
    data = open_backend("model").measure(TINY, some_plans(TINY, 1)[0]).to_dict()
    old = {k: v for k, v in data.items() if k not in ("format", "measured", "predicted", "reasons")}
    with pytest.raises(MeasurementFormatError, match="format 1 records do not say which figures were measured"):
        Measurement.from_dict(old)
    with pytest.raises(MeasurementFormatError, match=r"both measured and predicted \['latency_s'\]"):
        Measurement.from_dict({**data, "measured": ["latency_s"]})
    with pytest.raises(MeasurementFormatError, match=r"neither \['energy_j'\]"):
        Measurement.from_dict({**data, "predicted": {k: v for k, v in data["predicted"].items() if k != "energy_j"}})
    with pytest.raises(MeasurementFormatError, match=r"unknown figures \['speed'\]"):
        Measurement.from_dict({**data, "predicted": {**data["predicted"], "speed": "x"}})


def test_default_labels_are_the_provenance_calibration_and_reasons_are_still_checked():
    m = open_backend("model").measure(TINY, some_plans(TINY, 1)[0])
    data = {**m.to_dict(), "predicted": {}}
    assert Measurement.from_dict(data) == m  # no labels: every figure predicted by the provenance's calibration
    with pytest.raises(MeasurementFormatError, match=r"unknown figures \['speed'\]"):
        Measurement.from_dict({**data, "reasons": {"speed": "x"}})
    assert Measurement.from_dict({**data, "reasons": {"energy_j": "no meter"}}).reasons == {"energy_j": "no meter"}
    layer = m.layers[0]
    assert type(layer)(layer.name, layer.latency_s, layer.energy_j, layer.bound).cycles == {}
    assert type(layer)(layer.name, 1.0, 2.0, "x").cycles is not type(layer)(layer.name, 1.0, 2.0, "x").cycles
    assert dataclasses.replace(layer, bound="fetch") == type(layer)(**{**dataclasses.asdict(layer), "bound": "fetch"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.bound = "fetch"  # type: ignore[misc]


def test_emulated_latency_and_energy_are_predicted_by_its_calibration():
    backend = open_backend("emulated")
    m = backend.measure(TINY, some_plans(TINY, 1)[0])
    backend.close()
    assert m.measured == () and set(m.predicted) == set(FIGURES)
    assert set(m.predicted.values()) == {m.provenance.calibration_id} and m.provenance.calibrated  # fitted on rtlsim
    assert "virtual time" in m.provenance.detail
    # the host's time around each run is kept, on the virtual clock: no driver overhead in model time
    assert len(m.samples["host_wall_s"]) == len(m.samples["latency_s"])
    assert m.samples["driver_overhead_s"] == pytest.approx([0.0] * len(m.samples["latency_s"]), abs=1e-9)


# ------------------------------------------------------------------------------------- calibration on measurements
@pytest.mark.parametrize("uri", ["model", "emulated"])
def test_calibrate_on_a_model_or_emulated_trace_is_not_calibrated(tmp_path, capsys, uri):
    trace, out = tmp_path / "t.sqlite", tmp_path / "fit.json"
    record(uri, trace, some_plans(TINY, 6))
    assert main(["calibrate", str(trace), "-o", str(out), "--folds", "2"]) == 0
    captured = capsys.readouterr()
    fitted = CalibrationParams.load(out)
    assert not fitted.calibrated and fitted.fit["fitted_on"]["calibrated"] is False
    assert f"from {uri} (predicted by" in fitted.notes[0] and fitted.notes[0].startswith("NOT calibrated")
    assert "is NOT calibrated (calibrated: false)" in captured.err and f"from {uri}" in captured.err
    assert "NOT calibrated (calibrated: false)" in captured.out


def test_replay_fallback_keeps_the_trace_uncalibrated(tmp_path):
    trace = tmp_path / "t.sqlite"
    record("model", trace, some_plans(TINY, 6))
    replay = open_backend(f"replay:{trace}?fallback=model")
    miss = replay.measure(TINY, some_plans(TINY, 1, seed=9)[0])
    replay.close()
    assert miss.provenance.source == "model" and not miss.provenance.calibrated
    assert miss.measured == () and set(miss.predicted.values()) == {miss.provenance.calibration_id}


# ----------------------------------------------------------------------------------------------- the global timer
class ScriptedTimer:
    """Global timer registers whose counter advances by ``step`` per read of the low word; ``wraps`` makes the
    high word change between the first two reads once."""

    def __init__(self, start: int, step: int = 1, enabled: bool = True):
        self.count, self.step, self.enabled, self.reads = start, step, enabled, []

    def read(self, offset: int) -> int:
        self.reads.append(offset)
        if offset == CONTROL:
            return int(self.enabled)
        if offset == COUNTER_LO:
            value = self.count & 0xFFFFFFFF
            self.count += self.step
            return value
        if offset == COUNTER_HI:
            return self.count >> 32
        raise AssertionError(f"unexpected offset {offset:#x}")


def test_global_timer_reads_high_low_high_until_stable():
    mmio = ScriptedTimer((5 << 32) | 0xFFFFFFFF)  # the low read makes the counter roll into the high word
    timer = GlobalTimer(mmio, clock_hz=325e6)
    ticks = timer.ticks()
    assert mmio.reads[:3] == [COUNTER_HI, COUNTER_LO, COUNTER_HI] and len(mmio.reads) == 6  # retried once
    assert ticks == (6 << 32) | 0
    assert timer.elapsed_s(ticks, ticks + 325_000_000) == pytest.approx(1.0)
    with pytest.raises(TimerError, match="went backwards"):
        timer.elapsed_s(ticks, ticks - 1)
    with pytest.raises(TimerError, match="not enabled"):
        GlobalTimer(ScriptedTimer(0, enabled=False)).check_running()
    with pytest.raises(TimerError, match="does not count"):
        GlobalTimer(ScriptedTimer(7, step=0)).check_running()
    GlobalTimer(ScriptedTimer(7)).check_running()


# ------------------------------------------------------------------------------------------ power resolution check
class VirtualMeter:
    """Average watts since the last reading on a virtual clock, ``resolution_w`` and ``sample_rate_hz`` declared."""

    name, parents, unit, kind = "virtual", (), "W", "virtual meter"

    def __init__(self, state, watts, resolution_w=0.01, rate=5.0):
        self.state, self.watts, self.resolution_w, self.sample_rate_hz = state, watts, resolution_w, rate
        self.last = state["t"]

    def get_value(self, parents=None):
        t0, self.last = self.last, self.state["t"]
        return self.watts(t0, self.last)


def virtual():
    state = {"t": 0.0}

    def sleep(s):
        state["t"] += s

    return state, Clock(lambda: state["t"], sleep, "virtual")


@pytest.mark.parametrize("engine_w, resolved", [(3.0, True), (0.004, False)])
def test_window_follows_the_sample_rate_and_small_differences_are_not_numbers(engine_w, resolved):
    state, clock = virtual()
    busy = []

    def run_once():
        start = state["t"]
        state["t"] += 0.01
        busy.append((start, state["t"]))
        return RunRecord(0.01)

    def watts(t0, t1):
        run = sum(min(b, t1) - max(a, t0) for a, b in busy if b > t0 and a < t1)
        return 2.0 + engine_w * run / (t1 - t0) if t1 > t0 else 2.0

    settings = MeasureSettings(warmup_runs=0, min_runs=1, min_window_s=0.0, idle_window_s=0.0, sample_period_s=0.2,
                               min_samples=20)
    result = run_protocol(run_once, [VirtualMeter(state, watts)], settings, clock)
    assert result.required_window_s == pytest.approx(4.0)  # 20 readings of a 5/s meter
    assert result.window_s >= 4.0 and result.idle_window_s >= 4.0 and len(result.idle_power_w) >= 20
    energy = result.energy()
    if resolved:
        assert energy.dynamic_j == pytest.approx(engine_w * result.window_s / len(result.runs))
    else:
        assert energy.dynamic_j is None and "below the meters' resolution (0.01 W)" in energy.reason
        assert result.energy_per_inference_j is None and "not resolved" in result.summary()


def test_board_keygen_writes_a_key_the_daemon_accepts(tmp_path):
    import argparse
    import stat

    from autoq.host.cli._board_keygen import KeygenError, register_keygen
    from autoq.overlay.protocol import load_key

    parser = argparse.ArgumentParser()
    register_keygen(parser.add_subparsers())
    path = tmp_path / "key"
    args = parser.parse_args(["keygen", "-o", str(path)])
    assert args.handler(args) == 0
    assert len(load_key(str(path))) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    with pytest.raises(KeygenError, match="exists"):
        args.handler(args)
    forced = parser.parse_args(["keygen", "-o", str(path), "--force"])
    assert forced.handler(forced) == 0 and path.read_text() != first
