"""Sensors from a spec string, as ``autoq board serve --meter SPEC`` takes them.

``KIND[:TARGET][?OPTION=VALUE&...]`` with KIND one of

- ``scpi:DEVICE`` — SCPI supply/analyser; options ``baud`` (9600), ``mode`` (vi | power | all), ``channel`` (e.g.
  CH1), ``eol`` (lf | crlf);
- ``um24c:DEVICE``, ``um25c:DEVICE``, ``um34c:DEVICE``, ``um:DEVICE`` (model from the meter) — RDTech USB meters;
  option ``baud`` (9600);
- ``line:DEVICE`` — ``<watts>`` or ``<volts>,<amps>`` per line; option ``baud`` (115200);
- ``pmbus[:LIBSENSORS_CONFIG]`` — board rails through pynq; option ``rails`` (comma-separated names);
- ``xadc[:IIO_DEVICE_DIR]`` — XADC voltages and die temperature (no power); option ``root`` (IIO devices folder).

Serial meters and PMBus also take ``period`` (seconds between samples), ``timeout`` (seconds) and ``name``.
DEVICE is a tty path (``/dev/ttyUSB0``, ``///dev/ttyUSB0`` also works) or a pyserial URL (``socket://host:port``).
Examples: ``um25c:/dev/rfcomm0``, ``scpi:/dev/ttyUSB0?baud=115200&mode=power``, ``line:/dev/ttyACM0``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence
from urllib.parse import parse_qsl

from .base import SampledPowerSensor, Sensor, SensorError, close_sensors, power_sensors
from .pmbus import pmbus_sensors
from .serial_meters import LineMeter, ScpiMeter, UmMeter, open_port
from .xadc import IIO_ROOT, xadc_sensors

SERIAL_OPTIONS = {"baud", "period", "timeout", "name"}


class MeterSpec(NamedTuple):
    kind: str
    target: str
    options: dict[str, str]


def parse_spec(spec: str) -> MeterSpec:
    """Split ``KIND[:TARGET][?OPTIONS]``; option values are URL-decoded."""
    text = spec.strip()
    head, _, query = text.partition("?")
    kind, _, target = head.partition(":")
    kind = kind.lower()
    if kind not in BUILDERS:
        raise SensorError(f"meter spec {spec!r}: unknown kind {kind!r}; expected one of {sorted(BUILDERS)}")
    if target.startswith("///"):
        target = target[2:]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise SensorError(f"meter spec {spec!r}: options must look like name=value&name=value") from None
    options = dict(pairs)
    if len(options) != len(pairs):
        raise SensorError(f"meter spec {spec!r}: an option is given twice")
    allowed = ALLOWED_OPTIONS[kind]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SensorError(f"meter spec {spec!r}: unknown options {unknown}; {kind} takes {sorted(allowed)}")
    return MeterSpec(kind, target, options)


def _option_number(spec: MeterSpec, key: str, default: float, integer: bool = False) -> Any:
    """Option ``key`` of ``spec`` as a positive number (``period`` may be 0), or ``default`` when absent."""
    if key not in spec.options:
        return default
    text = spec.options[key]
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise SensorError(f"meter {spec.kind}:{spec.target}: option {key}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and key != "period"):
        raise SensorError(f"meter {spec.kind}:{spec.target}: option {key} must be positive, got {text}")
    return value


def _serial_sensor(spec: MeterSpec, default_baud: int, default_period: float, default_timeout: float,
                   make_meter: Callable[[Any, float], Any]) -> list[Sensor]:
    if not spec.target:
        raise SensorError(f"meter {spec.kind}: name the serial port, e.g. {spec.kind}:/dev/ttyUSB0")
    baud = _option_number(spec, "baud", default_baud, integer=True)
    period = _option_number(spec, "period", default_period)
    timeout = _option_number(spec, "timeout", default_timeout)
    port = open_port(spec.target, baud)
    try:
        meter = make_meter(port, timeout)
    except BaseException:
        port.close()
        raise
    name = spec.options.get("name") or f"{spec.kind}_power"
    return [SampledPowerSensor(name, meter, period, timeout)]


def _scpi(spec: MeterSpec) -> list[Sensor]:
    o = spec.options
    return _serial_sensor(spec, 9600, 0.1, 1.0, lambda port, timeout: ScpiMeter(
        port, spec.target, o.get("mode", "vi"), o.get("channel", ""), o.get("eol", "lf"), timeout))


def _um(spec: MeterSpec) -> list[Sensor]:
    model = None if spec.kind == "um" else spec.kind.upper()
    return _serial_sensor(spec, 9600, 0.1, 2.0, lambda port, timeout: UmMeter(port, spec.target, model, timeout))


def _line(spec: MeterSpec) -> list[Sensor]:
    return _serial_sensor(spec, 115200, 0.0, 2.0, lambda port, timeout: LineMeter(port, spec.target, timeout))


def _pmbus(spec: MeterSpec) -> list[Sensor]:
    names = [n for n in spec.options.get("rails", "").split(",") if n]
    found = pmbus_sensors(None, names, spec.target or None, _option_number(spec, "period", 0.05),
                          _option_number(spec, "timeout", 3.0))
    if not found.sensors:
        raise SensorError(f"meter pmbus: {found.note}")
    return list(found.sensors)


def _xadc(spec: MeterSpec) -> list[Sensor]:
    return list(xadc_sensors(spec.target or None, spec.options.get("root", str(IIO_ROOT))))


BUILDERS: dict[str, Callable[[MeterSpec], list[Sensor]]] = {
    "scpi": _scpi,
    "um": _um,
    "um24c": _um,
    "um25c": _um,
    "um34c": _um,
    "line": _line,
    "pmbus": _pmbus,
    "xadc": _xadc,
}
ALLOWED_OPTIONS = {
    "scpi": SERIAL_OPTIONS | {"mode", "channel", "eol"},
    "um": SERIAL_OPTIONS,
    "um24c": SERIAL_OPTIONS,
    "um25c": SERIAL_OPTIONS,
    "um34c": SERIAL_OPTIONS,
    "line": SERIAL_OPTIONS,
    "pmbus": {"rails", "period", "timeout"},
    "xadc": {"root"},
}


def sensors_from_spec(spec: str) -> list[Sensor]:
    """Open the sensors ``spec`` describes (serial meters start sampling at once). Close them with
    :func:`~.base.close_sensors`."""
    parsed = parse_spec(spec)
    return BUILDERS[parsed.kind](parsed)


def power_sensors_from_specs(specs: Sequence[str]) -> list[Sensor]:
    """The power sensors of every spec, for the measurement protocol (which sums them); a spec that yields no
    power reading, or two sensors with one name, is an error, and whatever was opened is closed again."""
    opened: list[Sensor] = []
    try:
        for spec in specs:
            sensors = sensors_from_spec(spec)
            opened.extend(sensors)
            if not power_sensors(sensors):
                units = sorted({s.unit for s in sensors})
                raise SensorError(f"meter spec {spec!r} gives no power reading (units {units}): "
                                  "the XADC measures voltages and temperature only")
        names = [s.name for s in opened]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SensorError(f"two meters named {duplicates}: give each one a name=... option")
    except BaseException:
        close_sensors(opened)
        raise
    chosen = power_sensors(opened)
    close_sensors([s for s in opened if s not in chosen])
    return chosen
