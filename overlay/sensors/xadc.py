"""Zynq-7000 XADC supply voltages and die temperature through the Linux IIO sysfs interface.

The xilinx-xadc driver exposes ``/sys/bus/iio/devices/iio:deviceN/`` with ``in_temp0_{raw,offset,scale}`` and
``in_voltageK_<rail>_{raw,scale}`` for the rails vccint, vccaux, vccbram, vccpint, vccpaux, vccoddr, vrefp, vrefn.
Scales are in milli-units per LSB: volts = raw * scale / 1000, degrees C = (raw + offset) * scale / 1000. The XADC
has no current channel, so it gives no power. Scale and offset are read once; every ``get_value`` reads ``raw``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .base import CELSIUS, VOLTS, SensorError

IIO_ROOT = Path("/sys/bus/iio/devices")
XADC_RAILS = ("vccint", "vccaux", "vccbram", "vccpint", "vccpaux", "vccoddr", "vrefp", "vrefn")
_VOLTAGE_RAW = re.compile(r"^in_voltage(\d+)_([a-z0-9]+)_raw$")


def _read_number(path: Path) -> float:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SensorError(f"cannot read XADC attribute {path}: {exc.strerror or exc}") from None
    try:
        return float(text)
    except ValueError:
        raise SensorError(f"XADC attribute {path} holds {text[:40]!r}, not a number") from None


class XadcSensor:
    """One XADC channel: ``(raw + offset) * scale / 1000`` in volts or degrees Celsius."""

    def __init__(self, name: str, unit: str, raw_path: Path, scale: float, offset: float = 0.0):
        self.name, self.unit, self.parents = name, unit, ()
        self.raw_path, self.scale, self.offset = raw_path, scale, offset
        self.kind = f"XADC {'die temperature' if unit == CELSIUS else 'supply voltage'} ({raw_path.parent.name})"

    def get_value(self, parents: Any = None) -> float:
        return (_read_number(self.raw_path) + self.offset) * self.scale / 1000.0

    @property
    def value(self) -> float:
        return self.get_value()

    def __repr__(self) -> str:
        return f"Sensor {{name={self.name}, value={self.value}{self.unit}}}"


def is_xadc_device(folder: Path) -> bool:
    """An IIO device with the XADC's temperature channel and at least one of its named supply channels."""
    if not (folder / "in_temp0_raw").is_file():
        return False
    return any(
        (m := _VOLTAGE_RAW.match(p.name)) and m.group(2) in XADC_RAILS for p in folder.glob("in_voltage*_raw")
    )


def find_xadc(root: Path | str = IIO_ROOT) -> Path:
    """The XADC's IIO device folder under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise SensorError(f"no IIO devices at {root}: the XADC is read through the Linux IIO driver (xilinx-xadc)")
    found = sorted(p for p in root.glob("iio:device*") if is_xadc_device(p))
    if not found:
        raise SensorError(f"no XADC among the IIO devices in {root} (none has in_temp0_raw and in_voltage*_vccint_raw)")
    return found[0]


def xadc_sensors(device: Path | str | None = None, root: Path | str = IIO_ROOT,
                 prefix: str = "xadc_") -> list[XadcSensor]:
    """Sensors for the die temperature and every supply channel of the XADC at ``device`` (default: found under
    ``root``), named ``xadc_temp`` and ``xadc_<rail>``."""
    folder = Path(device) if device is not None else find_xadc(root)
    if not is_xadc_device(folder):
        raise SensorError(f"{folder} is not an XADC IIO device (needs in_temp0_raw and in_voltageN_<rail>_raw files)")
    sensors = [
        XadcSensor(f"{prefix}temp", CELSIUS, folder / "in_temp0_raw", _read_number(folder / "in_temp0_scale"),
                   _read_number(folder / "in_temp0_offset"))
    ]
    channels = sorted(
        (int(m.group(1)), m.group(2)) for p in folder.glob("in_voltage*_raw") if (m := _VOLTAGE_RAW.match(p.name))
    )
    for index, rail in channels:
        stem = f"in_voltage{index}_{rail}"
        scale_path = folder / f"{stem}_scale"
        if not scale_path.is_file():  # some IIO drivers share one scale per channel type
            scale_path = folder / "in_voltage_scale"
        sensors.append(XadcSensor(f"{prefix}{rail}", VOLTS, folder / f"{stem}_raw", _read_number(scale_path)))
    return sensors
