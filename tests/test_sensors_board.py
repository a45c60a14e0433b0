"""Sensors plugged into the board side: ``autoq board serve --meter SPEC`` and a Board measuring with a serial meter
(engine emulated, meter real over a pty, wall-clock time as on a board)."""
from __future__ import annotations

import dataclasses
import threading

import pytest

from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.cli import main
from autoq.overlay.board import Board, emulated_factory
from autoq.overlay.measure import Clock, MeasureSettings
from autoq.overlay.sensors.base import close_sensors
from autoq.overlay.sensors.factory import power_sensors_from_specs

from test_sensors_serial import LineStreamer, PtyInstrument, ScpiSupply
from test_sensors_xadc import PYNQ_Z1_RAWS, make_iio_device

NETWORK = NetworkSpec(
    "two_convs",
    (
        LayerSpec("conv1", "conv", 3, 16, 3, 1, 1, 1, (16, 16), (16, 16)),
        LayerSpec("conv2", "conv", 16, 32, 3, 2, 1, 1, (16, 16), (8, 8)),
    ),
    (3, 16, 16),
)


@pytest.fixture
def pty_instrument():
    made = []

    def make(on_bytes=lambda data, reply: None):
        made.append(PtyInstrument(on_bytes))
        return made[-1]

    yield make
    for instrument in made:
        instrument.close()


def test_board_measures_power_with_a_serial_meter(pty_instrument):
    sim = pty_instrument()
    streamer = LineStreamer(sim, b"5.0,0.40\n", period_s=0.005).start()  # a 2 W board
    sensors = power_sensors_from_specs([f"line:{sim.device}?name=wall"])
    emulated = emulated_factory()

    def with_meter(build):
        return dataclasses.replace(emulated(build), sensors=sensors, clock=Clock())

    settings = MeasureSettings(warmup_runs=1, min_runs=3, min_window_s=0.15, idle_window_s=0.1, sample_period_s=0.02)
    board = Board(with_meter, "board", settings=settings)
    try:
        info = board.info()
        assert info["sensors"] == [{"name": "wall", "kind": f"line-protocol meter on {sim.device}"}]
        assert "power" in info["measures"]
        measurement = board.measure(NETWORK, QuantPlan.uniform(NETWORK, 4, 4))
        assert measurement.idle_power_w == pytest.approx(2.0) and measurement.avg_power_w == pytest.approx(2.0)
        assert measurement.samples["power_w"] and measurement.samples["idle_power_w"]
        assert measurement.energy_j == pytest.approx(2.0 * measurement.latency_s)  # nothing drawn beyond idle
    finally:
        board.close()
        streamer.stop()
        close_sensors(sensors)


def test_serve_refuses_meters_that_give_no_power(tmp_path, capsys):
    make_iio_device(tmp_path, 0, "xadc", PYNQ_Z1_RAWS)
    assert main(["board", "serve", "--meter", f"xadc?root={tmp_path}", "--tcp", "127.0.0.1:0"]) == 2
    assert "gives no power reading" in capsys.readouterr().err
    assert main(["board", "serve", "--emulate", "--meter", "line:/dev/ttyUSB0"]) == 2
    assert "the emulated device has its own power model" in capsys.readouterr().err
    assert main(["board", "serve", "--meter", "um25c:/dev/no-such-tty"]) == 2
    assert "cannot open serial port /dev/no-such-tty" in capsys.readouterr().err


def test_serve_opens_the_meter_and_closes_it_when_the_board_cannot_start(pty_instrument, capsys, monkeypatch):
    """On a workstation the FPGA cannot be opened; the meter was opened first and must be released again."""
    supply = ScpiSupply(volts=5.0, amps=0.4)
    sim = pty_instrument(supply)
    closed = threading.Event()
    import autoq.overlay.sensors.base as base

    real_close = base.SampledPowerSensor.close

    def close_and_note(self):
        real_close(self)
        closed.set()

    monkeypatch.setattr(base.SampledPowerSensor, "close", close_and_note)
    code = main(["board", "serve", "--meter", f"scpi:{sim.device}", "--tcp", "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert supply.commands[:1] == ["*IDN?"]
    assert closed.is_set()
    assert code == 2 and err.startswith("autoq board: error:")
