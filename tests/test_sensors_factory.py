"""Meter spec strings: what they mean and the errors bad ones get (opening real meters is in test_sensors_serial)."""
from __future__ import annotations

import pytest

from autoq.overlay.sensors.base import SensorError
from autoq.overlay.sensors.factory import MeterSpec, parse_spec, power_sensors_from_specs, sensors_from_spec


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("um25c:/dev/rfcomm0", MeterSpec("um25c", "/dev/rfcomm0", {})),
        ("scpi:///dev/ttyUSB0?baud=115200&mode=power",
         MeterSpec("scpi", "/dev/ttyUSB0", {"baud": "115200", "mode": "power"})),
        ("SCPI:COM3?channel=CH1&eol=crlf", MeterSpec("scpi", "COM3", {"channel": "CH1", "eol": "crlf"})),
        ("line:socket://10.0.0.2:4000?name=wall", MeterSpec("line", "socket://10.0.0.2:4000", {"name": "wall"})),
        ("pmbus?rails=VCCINT%2CVCCBRAM", MeterSpec("pmbus", "", {"rails": "VCCINT,VCCBRAM"})),
        ("xadc", MeterSpec("xadc", "", {})),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ina219:/dev/i2c-1", r"unknown kind 'ina219'; expected one of \['line', 'pmbus', 'scpi', 'um', 'um24c'"),
        ("scpi:/dev/ttyUSB0?speed=9600", r"unknown options \['speed'\]; scpi takes \['baud', 'channel', 'eol'"),
        ("scpi:/dev/ttyUSB0?baud", "options must look like name=value"),
        ("scpi:/dev/ttyUSB0?baud=1&baud=2", "an option is given twice"),
        ("xadc?period=1", r"unknown options \['period'\]"),
        ("line:/dev/ttyUSB0?baud=fast", r"option baud='fast' is not a number"),
        ("line:/dev/ttyUSB0?timeout=0", "option timeout must be positive"),
        ("line:/dev/ttyUSB0?period=nan", "option period must be positive, got nan"),
        ("um25c:?baud=9600", "name the serial port, e.g. um25c:/dev/ttyUSB0"),
        ("line:/dev/no-such-tty", "cannot open serial port /dev/no-such-tty at 115200 baud"),
    ],
)
def test_bad_specs_get_clear_errors(spec, message):
    with pytest.raises(SensorError, match=message):
        sensors_from_spec(spec)


def test_no_specs_no_sensors():
    assert power_sensors_from_specs([]) == []


def test_sensors_import_on_a_board_without_torch_scipy_or_pynq():
    """The board image may lack pynq's PMBus support and never has torch: the modules import and say so."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for blocked in ('torch', 'scipy', 'pynq', 'pandas'): sys.modules[blocked] = None\n"
        "import autoq.overlay.sensors.factory, autoq.overlay.sensors.xadc, autoq.overlay.sensors.serial_meters\n"
        "from autoq.overlay.sensors.pmbus import pmbus_sensors\n"
        "print(pmbus_sensors().note)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pynq is not installed here")
