"""PMBus rails through pynq's own classes (``get_rails``, ``Rail``, ``SysFSSensor``, ``DerivedPowerSensor``) and
compatibility of every sensor kind with ``pynq.DataRecorder`` / ``MultiSensor``. Off the board pynq finds no
rails, which is exactly the PYNQ-Z1 case."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from autoq.overlay.measure import read_power
from autoq.overlay.sensors.base import SensorError, close_sensors
from autoq.overlay.sensors.factory import power_sensors_from_specs, sensors_from_spec
from autoq.overlay.sensors.pmbus import NO_RAILS_NOTE, RailMeter, get_pynq_rails, pmbus_sensors

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pynq = pytest.importorskip("pynq", reason="pynq is not installed (pip install --no-deps pynq; see ENVIRONMENT.md)")
    from pynq.pmbus import DerivedPowerSensor, MultiSensor, Rail, SysFSSensor


def sysfs_value(tmp_path: Path, name: str, value: float) -> Path:
    path = tmp_path / name
    path.write_text(f"{value}\n")
    return path


@pytest.fixture
def rails(tmp_path: Path) -> dict[str, Rail]:
    """Rails as pynq builds them: hwmon values in milli-units read through SysFSSensor with scale 0.001."""
    vccint = Rail("VCCINT")  # a regulator reporting power directly
    vccint.voltage = SysFSSensor(str(sysfs_value(tmp_path, "in1_input", 850)), "V", "VCCINT_voltage", 0.001)
    vccint.power = SysFSSensor(str(sysfs_value(tmp_path, "power1_input", 1_250)), "W", "VCCINT_power", 0.001)
    ddr = Rail("VCC1V2")  # voltage and current only: power is their product
    ddr.voltage = SysFSSensor(str(sysfs_value(tmp_path, "in2_input", 1_200)), "V", "VCC1V2_voltage", 0.001)
    ddr.current = SysFSSensor(str(sysfs_value(tmp_path, "curr2_input", 500)), "A", "VCC1V2_current", 0.001)
    aux = Rail("VCCAUX")  # voltage only: no power
    aux.voltage = SysFSSensor(str(sysfs_value(tmp_path, "in3_input", 1_800)), "V", "VCCAUX_voltage", 0.001)
    return {r.name: r for r in (vccint, ddr, aux)}


def test_off_board_pynq_finds_no_rails_and_says_why():
    found, note = get_pynq_rails()
    assert found == {} and note.startswith(NO_RAILS_NOTE)
    discovery = pmbus_sensors()
    assert discovery.sensors == [] and "PYNQ-Z1 and PYNQ-Z2 have no on-board current sensing" in discovery.note
    with pytest.raises(SensorError, match="meter pmbus: no PMBus power rails .*external meter"):
        sensors_from_spec("pmbus")


def test_rails_with_power_become_averaging_power_sensors(rails, tmp_path: Path):
    discovery = pmbus_sensors(rails, period_s=0.005)
    try:
        assert [s.name for s in discovery.sensors] == ["pmbus_VCCINT", "pmbus_VCC1V2"]
        assert discovery.note == ""
        vccint, ddr = discovery.sensors
        assert vccint.get_value() == pytest.approx(1.25)
        assert ddr.get_value() == pytest.approx(1.2 * 0.5)
        assert ddr.latest.volts == pytest.approx(1.2) and ddr.latest.amps == pytest.approx(0.5)
        assert "voltage x current" in ddr.kind and "power sensor" in vccint.kind
        (tmp_path / "power1_input").write_text("2500\n")
        time.sleep(0.05)
        vccint.get_value()  # samples straddling the change
        time.sleep(0.05)
        assert vccint.get_value() == pytest.approx(2.5)
        assert read_power(discovery.sensors) == pytest.approx(2.5 + 0.6)  # the board's protocol sums them
    finally:
        close_sensors(discovery.sensors)


def test_rail_selection_and_errors(rails):
    chosen = pmbus_sensors(rails, names=["VCC1V2"])
    assert [s.name for s in chosen.sensors] == ["pmbus_VCC1V2"]
    close_sensors(chosen.sensors)
    voltage_only = pmbus_sensors(rails, names=["VCCAUX"])
    assert voltage_only.sensors == [] and "voltage-only" in voltage_only.note
    with pytest.raises(SensorError, match=r"unknown PMBus rails \['VCCXX'\]; this board has"):
        pmbus_sensors(rails, names=["VCCXX"])
    with pytest.raises(SensorError, match="neither a power sensor nor voltage and current"):
        RailMeter(rails["VCCAUX"])


def test_pynq_derived_power_sensor_is_read_through_its_parents(rails):
    """pynq's DerivedPowerSensor as a rail's power sensor: read the way pynq reads it."""
    ddr = rails["VCC1V2"]
    ddr.power = DerivedPowerSensor("VCC1V2_power", ddr.voltage, ddr.current)
    assert RailMeter(ddr).read().watts == pytest.approx(0.6)


def test_data_recorder_records_every_sensor_kind(rails, tmp_path: Path):
    """pynq.DataRecorder (pandas) and MultiSensor call ``get_value(parent_values)`` on our sensors."""
    pytest.importorskip("pandas", reason="pynq.DataRecorder needs pandas")
    from autoq.overlay.sensors.xadc import XadcSensor

    (tmp_path / "in_temp0_raw").write_text("2640\n")
    temp = XadcSensor("xadc_temp", "C", tmp_path / "in_temp0_raw", 123.040771484, -2219)
    power = pmbus_sensors(rails, period_s=0.005).sensors
    try:
        assert MultiSensor([temp, *power]).get_values() == pytest.approx((51.80, 1.25, 0.6), abs=0.01)
        recorder = pynq.DataRecorder(temp, *power)
        with recorder.record(0.01):
            time.sleep(0.1)
        frame = recorder.frame
        assert list(frame.columns) == ["Mark", "xadc_temp", "pmbus_VCCINT", "pmbus_VCC1V2"]
        assert len(frame) >= 3
        assert frame["pmbus_VCCINT"].iloc[-1] == pytest.approx(1.25)
        assert frame["xadc_temp"].iloc[-1] == pytest.approx(51.80, abs=0.01)
    finally:
        close_sensors(power)


def test_pmbus_spec_with_rails_option_on_a_board_without_pmbus():
    with pytest.raises(SensorError, match="no PMBus power rails"):
        power_sensors_from_specs(["pmbus?rails=VCCINT,VCCBRAM&period=0.1"])
