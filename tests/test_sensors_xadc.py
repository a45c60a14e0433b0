"""XADC through IIO sysfs, on a fake ``/sys/bus/iio/devices`` tree laid out like the xilinx-xadc driver's."""
from __future__ import annotations

from pathlib import Path

import pytest

from autoq.overlay.sensors.base import SensorError, power_sensors
from autoq.overlay.sensors.factory import power_sensors_from_specs, sensors_from_spec
from autoq.overlay.sensors.xadc import XADC_RAILS, find_xadc, xadc_sensors

# The xilinx-xadc driver's constants: supply channels 3 V / 4096 LSB (in mV), temperature 503.975 K / 4096 LSB (in
# milli-degrees) with offset -273.15 C / scale = -2219 LSB. Raw values are typical of a PYNQ-Z1 (1.0 V vccint).
VOLT_SCALE = "0.732421875"
TEMP_SCALE = "123.040771484"
TEMP_OFFSET = "-2219"


def make_iio_device(root: Path, index: int, name: str, raws: dict[str, int], temp_raw: int = 2640) -> Path:
    folder = root / f"iio:device{index}"
    folder.mkdir(parents=True)
    (folder / "name").write_text(f"{name}\n")
    (folder / "in_temp0_raw").write_text(f"{temp_raw}\n")
    (folder / "in_temp0_offset").write_text(f"{TEMP_OFFSET}\n")
    (folder / "in_temp0_scale").write_text(f"{TEMP_SCALE}\n")
    for channel, (rail, raw) in enumerate(raws.items()):
        (folder / f"in_voltage{channel}_{rail}_raw").write_text(f"{raw}\n")
        (folder / f"in_voltage{channel}_{rail}_scale").write_text(f"{VOLT_SCALE}\n")
    return folder


PYNQ_Z1_RAWS = {"vccint": 1365, "vccaux": 2457, "vccbram": 1366, "vccpint": 1364, "vccpaux": 2458, "vccoddr": 2048,
                "vrefp": 1707, "vrefn": 0}


@pytest.fixture
def iio_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys/bus/iio/devices"
    other = root / "iio:device0"  # another IIO device (an accelerometer) comes first and must be skipped
    other.mkdir(parents=True)
    (other / "name").write_text("adxl345\n")
    (other / "in_accel_x_raw").write_text("12\n")
    make_iio_device(root, 1, "xadc", PYNQ_Z1_RAWS)
    return root


def test_voltages_and_temperature_follow_the_sysfs_formulas(iio_root: Path):
    sensors = {s.name: s for s in xadc_sensors(root=iio_root)}
    assert set(sensors) == {"xadc_temp"} | {f"xadc_{rail}" for rail in XADC_RAILS}
    assert sensors["xadc_vccint"].get_value() == pytest.approx(1365 * 0.732421875 / 1000)  # ~1.0 V
    assert sensors["xadc_vccaux"].get_value() == pytest.approx(1.7996, abs=1e-4)
    assert sensors["xadc_temp"].get_value() == pytest.approx((2640 - 2219) * 123.040771484 / 1000)  # ~51.8 C
    assert sensors["xadc_temp"].unit == "C" and sensors["xadc_vccint"].unit == "V"
    assert all(s.parents == () for s in sensors.values())
    assert not power_sensors(list(sensors.values()))  # the XADC measures no current, hence no power


def test_each_reading_reads_raw_again(iio_root: Path):
    [vccint] = [s for s in xadc_sensors(root=iio_root) if s.name == "xadc_vccint"]
    (iio_root / "iio:device1" / "in_voltage0_vccint_raw").write_text("1400\n")
    assert vccint.get_value() == pytest.approx(1400 * 0.732421875 / 1000)
    assert vccint.value == vccint.get_value([])  # pynq's calling conventions


def test_device_can_be_named_and_shared_scale_is_used(tmp_path: Path):
    folder = make_iio_device(tmp_path, 3, "f8007100.adc", {"vccint": 1000})
    (folder / "in_voltage0_vccint_scale").unlink()
    (folder / "in_voltage_scale").write_text("0.5\n")
    sensors = {s.name: s for s in sensors_from_spec(f"xadc:{folder}")}
    assert sensors["xadc_vccint"].get_value() == pytest.approx(0.5)
    assert "iio:device3" in sensors["xadc_vccint"].kind


def test_clear_errors(tmp_path: Path, iio_root: Path):
    with pytest.raises(SensorError, match="no IIO devices at"):
        find_xadc(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SensorError, match="no XADC among the IIO devices"):
        find_xadc(empty)
    with pytest.raises(SensorError, match="is not an XADC IIO device"):
        xadc_sensors(iio_root / "iio:device0")
    folder = iio_root / "iio:device1"
    [vccaux] = [s for s in xadc_sensors(folder) if s.name == "xadc_vccaux"]
    (folder / "in_voltage1_vccaux_raw").write_text("busy\n")
    with pytest.raises(SensorError, match="in_voltage1_vccaux_raw holds 'busy', not a number"):
        vccaux.get_value()
    (folder / "in_voltage1_vccaux_raw").unlink()
    with pytest.raises(SensorError, match="cannot read XADC attribute .*in_voltage1_vccaux_raw"):
        vccaux.get_value()
    (folder / "in_temp0_scale").unlink()
    with pytest.raises(SensorError, match="in_temp0_scale"):
        xadc_sensors(folder)


def test_factory_xadc_root_option_and_refusal_as_a_power_meter(iio_root: Path):
    names = [s.name for s in sensors_from_spec(f"xadc?root={iio_root}")]
    assert names[0] == "xadc_temp" and "xadc_vccbram" in names
    with pytest.raises(SensorError, match="gives no power reading .*voltages and temperature only"):
        power_sensors_from_specs([f"xadc?root={iio_root}"])
