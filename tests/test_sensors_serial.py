"""External power meters over a real tty: each protocol through a pty pair (``os.openpty()``, the slave opened with
pyserial) against a simulated instrument in a thread that answers like the real device, faults included."""
from __future__ import annotations

import math
import os
import select
import struct
import termios
import threading
import time
import tty
from typing import Callable

import pytest

from autoq.overlay.measure import Clock, MeasureSettings, RunRecord, run_protocol
from autoq.overlay.sensors import factory
from autoq.overlay.sensors.base import SampledPowerSensor, SensorError, close_sensors
from autoq.overlay.sensors.factory import power_sensors_from_specs, sensors_from_spec
from autoq.overlay.sensors.serial_meters import (
    UM_MODELS,
    LineMeter,
    ScpiMeter,
    UmMeter,
    decode_um_record,
    open_port,
    parse_line,
)


class PtyInstrument:
    """The instrument end of a pty pair. ``on_bytes(data, reply)`` handles what the host sends; ``reply(bytes)``
    writes to the host. ``device`` is the tty the code under test opens."""

    def __init__(self, on_bytes: Callable[[bytes, Callable[[bytes], None]], None] = lambda data, reply: None):
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)  # no echo or line editing even before pyserial configures it
        self.device = os.ttyname(self._slave)
        self.received = bytearray()
        self._on_bytes, self._stop = on_bytes, threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def reply(self, data: bytes) -> None:
        os.write(self.master, data)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            self.received += data
            self._on_bytes(data, self.reply)

    def hang_up(self) -> None:
        """Close the instrument end, as when a USB adapter is pulled out."""
        self._stop.set()
        self._thread.join(1.0)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def close(self) -> None:
        self.hang_up()
        os.close(self._slave)


@pytest.fixture
def instruments():
    made: list[PtyInstrument] = []

    def make(on_bytes=lambda data, reply: None) -> PtyInstrument:
        made.append(PtyInstrument(on_bytes))
        return made[-1]

    yield make
    for instrument in made:
        instrument.close()


# ------------------------------------------------------------------------------------------------------- SCPI
class ScpiSupply:
    """A bench supply answering SCPI lines like an OWON SPE / Rigol DP800: ``*IDN?``, ``MEAS:VOLT?``,
    ``MEAS:CURR?``, ``MEAS:POW?``, ``MEAS:ALL? CHn``; unknown commands get no answer (they only queue an error)."""

    def __init__(self, volts: float = 5.0, amps: float = 0.5, eol: bytes = b"\n"):
        self.volts, self.amps, self.eol = volts, amps, eol
        self.garble_next = 0
        self.commands: list[str] = []
        self._pending = bytearray()

    def __call__(self, data: bytes, reply: Callable[[bytes], None]) -> None:
        self._pending += data
        while b"\n" in self._pending:
            line, _, rest = bytes(self._pending).partition(b"\n")
            self._pending = bytearray(rest)
            command = line.decode().strip()
            self.commands.append(command)
            answer = self.answer(command)
            if answer is None:
                continue
            if self.garble_next:
                self.garble_next -= 1
                reply(b"\xff\x00#!" + self.eol)
                continue
            reply(answer.encode() + self.eol)

    def answer(self, command: str) -> str | None:
        header, _, channel = command.partition(" ")
        if header == "*IDN?":
            return "OWON,SPE6103,2210123,FV:V1.2.0"
        if header == "MEAS:VOLT?":
            return f"{self.volts:.4f}"
        if header == "MEAS:CURR?":
            return f"{self.amps:.4f}"
        if header == "MEAS:POW?":
            return f"{self.volts * self.amps:.4f}"
        if header == "MEAS:ALL?" and channel in ("CH1", "CH2", "CH3"):
            return f"{self.volts:.4f},{self.amps:.4f},{self.volts * self.amps:.4f}"
        return None


def test_scpi_volts_times_amps(instruments):
    supply = ScpiSupply(volts=12.0, amps=0.41)
    sim = instruments(supply)
    meter = ScpiMeter(open_port(sim.device, 9600), sim.device, mode="vi", timeout_s=1.0)
    try:
        assert meter.identity == "OWON,SPE6103,2210123,FV:V1.2.0"
        sample = meter.read()
        assert sample.volts == pytest.approx(12.0) and sample.amps == pytest.approx(0.41)
        assert sample.watts == pytest.approx(12.0 * 0.41)
        assert supply.commands == ["*IDN?", "MEAS:VOLT?", "MEAS:CURR?"]
    finally:
        meter.close()


def test_scpi_power_and_all_modes_with_channel_and_crlf(instruments):
    supply = ScpiSupply(volts=5.1, amps=0.9, eol=b"\r\n")
    sim = instruments(supply)
    power = ScpiMeter(open_port(sim.device, 115200), sim.device, mode="power", eol="crlf")
    try:
        assert power.read().watts == pytest.approx(5.1 * 0.9, abs=1e-4)
        assert math.isnan(power.read().volts)
    finally:
        power.close()
    every = ScpiMeter(open_port(sim.device, 115200), sim.device, mode="all", channel="CH2", eol="crlf")
    try:
        sample = every.read()
        assert (sample.volts, sample.amps) == pytest.approx((5.1, 0.9))
        assert supply.commands[-1] == "MEAS:ALL? CH2"
    finally:
        every.close()


def test_scpi_garbled_answer_is_asked_again(instruments):
    supply = ScpiSupply(volts=3.3, amps=1.0)
    sim = instruments(supply)
    meter = ScpiMeter(open_port(sim.device, 9600), sim.device)
    try:
        supply.garble_next = 1
        assert meter.read().watts == pytest.approx(3.3)
        assert supply.commands.count("MEAS:VOLT?") == 2  # garbled once, asked again
        supply.garble_next = 2
        with pytest.raises(SensorError, match=r"bad answer to 'MEAS:VOLT\?' twice.*is not text"):
            meter.read()
        assert meter.read().watts == pytest.approx(3.3)  # and it recovers
    finally:
        meter.close()


def test_scpi_silent_instrument_times_out_with_a_clear_error(instruments):
    sim = instruments()  # answers nothing
    port = open_port(sim.device, 9600)
    t0 = time.monotonic()
    with pytest.raises(SensorError, match=r"no answer to '\*IDN\?' from .* within 0.3 s"):
        ScpiMeter(port, sim.device, timeout_s=0.3)
    assert time.monotonic() - t0 < 2.0
    port.close()


def test_scpi_rejects_bad_settings(instruments):
    sim = instruments(ScpiSupply())
    port = open_port(sim.device, 9600)
    try:
        with pytest.raises(SensorError, match="mode must be one of"):
            ScpiMeter(port, sim.device, mode="watts")
        with pytest.raises(SensorError, match="channel must be a plain word"):
            ScpiMeter(port, sim.device, channel="CH1;*RST")
    finally:
        port.close()


# ------------------------------------------------------------------------------------------- RDTech UM meters
def um_record(model_id: int, raw_volts: int, raw_amps: int, end: bytes | None = None, temp_c: int = 25) -> bytes:
    """A 130-byte record laid out as the meters send it (big-endian; see serial_meters' module doc for sources)."""
    record = bytearray(130)
    struct.pack_into(">HHHIH", record, 0, model_id, raw_volts, raw_amps, 0, temp_c)
    if end is None:  # UM24C/UM25C end mark
        end = b"\xff\xf1"
    record[-len(end):] = end
    return bytes(record)


class UmSimulator:
    """Answers each 0xF0 with one record; ``faults`` lists what the next polls get instead ('garbage', 'checksum',
    'silent')."""

    def __init__(self, record: Callable[[], bytes]):
        self.record, self.faults, self.polls = record, [], 0

    def __call__(self, data: bytes, reply: Callable[[bytes], None]) -> None:
        for byte in data:
            if byte != 0xF0:
                continue
            self.polls += 1
            fault = self.faults.pop(0) if self.faults else None
            record = self.record()
            if fault == "garbage":
                reply(b"\x00\x13\xaa\x55" * 5 + record)  # noise before the record: resynchronised on the model id
            elif fault == "checksum":
                reply(record[:-1] + bytes([record[-1] ^ 0xFF]))
            elif fault == "silent":
                pass
            else:
                reply(record)


def test_um25c_record_decoding_and_model_detection(instruments):
    sim = instruments(UmSimulator(lambda: um_record(0x09C9, 5123, 4567)))  # 5.123 V, 0.4567 A
    meter = UmMeter(open_port(sim.device, 9600), sim.device, model=None, timeout_s=1.0)
    try:
        assert meter.model.name == "UM25C" and meter.description == f"RDTech UM25C on {sim.device}"
        sample = meter.read()
        assert (sample.volts, sample.amps) == pytest.approx((5.123, 0.4567))
        assert sample.watts == pytest.approx(5.123 * 0.4567)
    finally:
        meter.close()


def test_um24c_and_um34c_scales_and_checksums():
    um24 = decode_um_record(um_record(0x0963, 512, 1234), UM_MODELS["UM24C"])
    assert (um24.volts, um24.amps) == pytest.approx((5.12, 1.234))
    body = bytearray(um_record(0x0D4C, 498, 210, end=b"\x00"))
    checksum = 0
    for offset in (1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67, 69, 73, 79, 83, 89, 97, 99,
                   109, 111, 113, 119, 121, 127):
        checksum ^= body[offset]
    body[-1] = checksum
    um34 = decode_um_record(bytes(body), UM_MODELS["UM34C"])
    assert (um34.volts, um34.amps) == pytest.approx((4.98, 0.210))
    body[-1] ^= 1
    with pytest.raises(SensorError, match="UM34C record checksum"):
        decode_um_record(bytes(body), UM_MODELS["UM34C"])
    with pytest.raises(SensorError, match="does not end in 0xFFF1"):
        decode_um_record(um_record(0x09C9, 1, 1, end=b"\x12\x34"), UM_MODELS["UM25C"])
    with pytest.raises(SensorError, match="expected UM25C"):
        decode_um_record(um_record(0x0963, 1, 1), UM_MODELS["UM25C"])


def test_um_meter_resynchronises_after_garbage_and_bad_checksums(instruments):
    um = UmSimulator(lambda: um_record(0x09C9, 5000, 2000))
    sim = instruments(um)
    meter = UmMeter(open_port(sim.device, 9600), sim.device, model="um25c", timeout_s=1.0)
    try:
        um.faults = ["garbage"]
        assert meter.read().watts == pytest.approx(1.0)
        um.faults = ["checksum", "silent", "checksum"]
        polls = um.polls
        assert meter.read().watts == pytest.approx(1.0)
        assert um.polls - polls == 4 and meter.bad_records == 2
    finally:
        meter.close()


def test_um_meter_errors_name_the_problem(instruments):
    um = UmSimulator(lambda: um_record(0x09C9, 5000, 2000))
    sim = instruments(um)
    meter = UmMeter(open_port(sim.device, 9600), sim.device, model="UM25C", timeout_s=0.4)
    try:
        um.faults = ["checksum"] * 1000
        with pytest.raises(SensorError, match=r"no valid UM25C record .* within 0.4 s \(last problem: .*0xFFF1"):
            meter.read()
    finally:
        meter.close()
    wrong = instruments(UmSimulator(lambda: um_record(0x0963, 500, 100)))  # a UM24C where a UM25C was named
    port = open_port(wrong.device, 9600)
    with pytest.raises(SensorError, match="no valid UM25C record"):
        UmMeter(port, wrong.device, model="UM25C", timeout_s=0.3)
    port.close()
    with pytest.raises(SensorError, match="unknown RDTech meter 'UM99'"):
        UmMeter(open_port(wrong.device, 9600), wrong.device, model="UM99")


# ------------------------------------------------------------------------------------------------ line protocol
class LineStreamer:
    """A logger that streams lines every ``period_s`` from a background thread; ``lines`` is consumed in order,
    then ``steady`` repeats."""

    def __init__(self, instrument: PtyInstrument, steady: bytes, lines: list[bytes] = (), period_s: float = 0.01):
        self.instrument, self.steady, self.lines, self.period_s = instrument, steady, list(lines), period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LineStreamer":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.instrument.reply(self.lines.pop(0) if self.lines else self.steady)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


def test_parse_line_formats_and_errors():
    assert parse_line(b" 4.25 ").watts == 4.25
    sample = parse_line(b"5.0,0.8")
    assert (sample.volts, sample.amps, sample.watts) == pytest.approx((5.0, 0.8, 4.0))
    for bad, message in [(b"4.2W", "not a number"), (b"1,2,3", "3 fields"), (b"nan", "plausible range"),
                         (b"\xff\xfe", "not text"), (b"-5000000", "plausible range")]:
        with pytest.raises(SensorError, match=message):
            parse_line(bad)


def test_line_meter_skips_partial_and_garbage_lines(instruments):
    sim = instruments()
    meter = LineMeter(open_port(sim.device, 115200), sim.device, timeout_s=1.0)
    try:
        sim.reply(b"2.5\n")  # a tail of a line sent before opening, as far as the meter can know: dropped
        sim.reply(b"\x00\x81garbage\n")
        sim.reply(b"x" * 500)  # no line end at all: dropped, then resynchronised on the next line end
        sim.reply(b"\n3.0\n5.0,1.5\n")
        first = meter.read()
        assert first.watts == 7.5 and meter.bad_lines == 2  # '3.0' followed the overlong run: dropped to resync
    finally:
        meter.close()


def test_line_meter_times_out_naming_the_last_bad_line(instruments):
    sim = instruments()
    meter = LineMeter(open_port(sim.device, 115200), sim.device, timeout_s=0.3)
    try:
        sim.reply(b"hello\nworld\n")
        with pytest.raises(SensorError, match=r"no valid reading line .* within 0.3 s \(last bad line: .*'world'"):
            meter.read()
    finally:
        meter.close()


# ---------------------------------------------------------------------------------- sampling and the factory
def test_sampled_sensor_averages_between_readings(instruments):
    sim = instruments()
    streamer = LineStreamer(sim, b"2.0\n", [b"2.0\n"] * 3 + [b"6.0\n"] * 3).start()
    sensor = SampledPowerSensor("line_power", LineMeter(open_port(sim.device, 115200), sim.device), period_s=0.0)
    try:
        deadline = time.monotonic() + 3.0
        while sensor.samples_taken < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        value = sensor.get_value()
        assert 2.0 < value < 6.0  # mean of the 2 W and 6 W lines seen so far
        time.sleep(0.1)
        assert sensor.get_value() == pytest.approx(2.0)  # only the steady 2 W since the last reading
        assert sensor.unit == "W" and sensor.parents == () and sensor.kind.startswith("line-protocol meter")
    finally:
        streamer.stop()
        sensor.close()


def test_sampled_sensor_reports_a_dead_meter(instruments):
    sim = instruments(ScpiSupply(volts=5.0, amps=1.0))
    [sensor] = sensors_from_spec(f"scpi:{sim.device}?timeout=0.3&period=0.02")
    try:
        assert sensor.get_value() == pytest.approx(5.0)
        sim._on_bytes = lambda data, reply: None  # the supply stops answering
        time.sleep(0.5)
        try:
            sensor.get_value()  # what was sampled before it went quiet, if anything
        except SensorError:
            pass
        with pytest.raises(SensorError, match=r"sensor 'scpi_power' \(SCPI OWON.*: no answer to 'MEAS:VOLT\?'"):
            sensor.get_value()
        sim._on_bytes = ScpiSupply(volts=4.0, amps=1.0)  # back again: readings resume
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                assert sensor.get_value() == pytest.approx(4.0)
                break
            except SensorError:
                time.sleep(0.05)
        else:
            pytest.fail("the sensor did not recover when the supply answered again")
    finally:
        sensor.close()


def test_factory_opens_each_serial_kind(instruments):
    scpi = instruments(ScpiSupply(volts=12.0, amps=0.25))
    um = instruments(UmSimulator(lambda: um_record(0x09C9, 5000, 5000)))
    line_sim = instruments()
    streamer = LineStreamer(line_sim, b"1.5\n").start()
    specs = [f"scpi://{scpi.device}?baud=115200&mode=power", f"um25c:{um.device}?name=usb",
             f"line:{line_sim.device}?baud=115200"]
    sensors = power_sensors_from_specs(specs)
    try:
        assert [s.name for s in sensors] == ["scpi_power", "usb", "line_power"]
        assert [s.get_value() for s in sensors] == pytest.approx([3.0, 2.5, 1.5])
        assert "SCPI OWON,SPE6103" in sensors[0].kind and "UM25C" in sensors[1].kind
    finally:
        streamer.stop()
        close_sensors(sensors)


def test_factory_closes_what_it_opened_when_a_later_spec_fails(instruments, monkeypatch):
    first, second = instruments(ScpiSupply()), instruments(ScpiSupply())
    opened = []
    real_open = factory.open_port

    def recording_open(device, baud):
        opened.append(real_open(device, baud))
        return opened[-1]

    monkeypatch.setattr(factory, "open_port", recording_open)
    with pytest.raises(SensorError, match=r"two meters named \['scpi_power'\]"):
        power_sensors_from_specs([f"scpi:{first.device}", f"scpi:{second.device}"])
    with pytest.raises(SensorError, match="cannot open serial port /dev/does-not-exist"):
        power_sensors_from_specs([f"scpi:{first.device}", "line:/dev/does-not-exist"])
    assert len(opened) == 3 and not any(port.is_open for port in opened)


def test_measurement_protocol_sees_power_drawn_during_runs(instruments):
    """E's measurement protocol with a real sampled meter on wall time: idle 2 W, 5 W while 'running'."""
    sim = instruments()
    streamer = LineStreamer(sim, b"2.0\n", period_s=0.005).start()
    [sensor] = sensors_from_spec(f"line:{sim.device}")

    def run_once() -> RunRecord:
        streamer.steady = b"5.0\n"  # the board draws more while the engine runs...
        time.sleep(0.03)
        streamer.steady = b"2.0\n"
        return RunRecord(0.03)

    try:
        settings = MeasureSettings(warmup_runs=1, min_runs=5, min_window_s=0.3, idle_window_s=0.2, sample_period_s=0.05)
        result = run_protocol(run_once, [sensor], settings, Clock())
        assert result.idle_power == pytest.approx(2.0, abs=0.05)
        assert result.avg_power > 3.5  # read between runs, but averaged over them
        assert result.energy_per_inference_j > 0
    finally:
        streamer.stop()
        sensor.close()


def test_unplugged_adapter_is_a_sensor_error(instruments):
    sim = instruments()
    meter = LineMeter(open_port(sim.device, 115200), sim.device, timeout_s=1.0)
    try:
        sim.hang_up()
        with pytest.raises(SensorError, match=f"reading {sim.device} failed"):
            meter.read()
    finally:
        meter.close()


def test_idle_baseline_with_the_host_loop_keeps_polling_power_out_of_the_engine(instruments):
    """A board whose meter reads 2 W at rest, +0.5 W while the Cortex-A9 polls the engine, +3 W while the engine
    runs: with the idle baseline taken while the same host loop polls, the dynamic power is the engine's 3 W;
    with the old baseline (the host asleep) the polling power is counted as the engine's too."""
    sim = instruments()
    streamer = LineStreamer(sim, b"2.0\n", period_s=0.002).start()
    [sensor] = sensors_from_spec(f"line:{sim.device}")

    def draw(cpu: bool, engine: bool) -> None:
        streamer.steady = f"{2.0 + 0.5 * cpu + 3.0 * engine}\n".encode()

    def run_once() -> RunRecord:
        draw(cpu=True, engine=True)  # the engine runs while the host polls it
        time.sleep(0.02)
        draw(cpu=True, engine=False)  # the host polls on between runs
        time.sleep(0.005)
        return RunRecord(0.02)

    def host_loop(seconds: float) -> None:
        draw(cpu=True, engine=False)
        time.sleep(seconds)

    def at_rest(seconds: float) -> None:
        draw(cpu=False, engine=False)
        time.sleep(seconds)

    settings = MeasureSettings(warmup_runs=1, min_runs=5, min_window_s=0.4, idle_window_s=0.3, sample_period_s=0.05)
    try:
        new = run_protocol(run_once, [sensor], settings, Clock(), host_loop=host_loop)
        old = run_protocol(run_once, [sensor], settings, Clock(), host_loop=at_rest)
    finally:
        streamer.stop()
        sensor.close()
    assert new.idle_power == pytest.approx(2.5, abs=0.05) and old.idle_power == pytest.approx(2.0, abs=0.05)
    engine_share = 0.02 / 0.025  # of each run's time on the host loop
    assert new.energy().dynamic_w == pytest.approx(3.0 * engine_share, abs=0.4)
    assert old.energy().dynamic_w == pytest.approx(3.0 * engine_share + 0.5, abs=0.4)
    # the run phases are timed with real sleeps (a loaded machine stretches them), so the baselines carry the
    # exact claim and the dynamic powers only its direction
    assert old.energy().dynamic_w - new.energy().dynamic_w > 0.2
    assert new.idle_host_loop and "with the host loop running" in new.summary()
