"""Board power rails through pynq's PMBus/libsensors interface (``pynq.get_rails()``), where a board has them.

Boards with PMBus regulators (ZCU104, ZCU111, ...) expose rails with power sensors, or voltage and current sensors
whose product is the power. PYNQ-Z1 and PYNQ-Z2 have none: ``get_rails()`` is empty there, and the discovery says
so and points at an external meter. Each rail with power becomes a :class:`~.base.SampledPowerSensor` reading the
rail continuously, so the measurement protocol gets the average over its window. pynq is imported only here, only
when asked, and its absence is reported rather than raised.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, NamedTuple, Sequence

from .base import PowerSample, SampledPowerSensor, SensorError

NO_RAILS_NOTE = (
    "no PMBus power rails (pynq.get_rails() is empty): PYNQ-Z1 and PYNQ-Z2 have no on-board current sensing; "
    "read power with an external meter instead, e.g. --meter um25c:/dev/rfcomm0 or --meter scpi:/dev/ttyUSB0"
)


class RailMeter:
    """A :class:`~.base.PowerMeter` over one pynq rail: its power sensor, else voltage x current."""

    def __init__(self, rail: Any):
        self.rail = rail
        power, volts, amps = (getattr(rail, a, None) for a in ("power", "voltage", "current"))
        if power is None and (volts is None or amps is None):
            raise SensorError(f"PMBus rail {rail.name!r} has neither a power sensor nor voltage and current sensors")
        self._power, self._volts, self._amps = power, volts, amps
        how = "power sensor" if power is not None else "voltage x current"
        self.description = f"PMBus rail {rail.name} ({how}, via pynq)"

    def read(self) -> PowerSample:
        volts = float(self._volts.get_value()) if self._volts is not None else float("nan")
        amps = float(self._amps.get_value()) if self._amps is not None else float("nan")
        watts = float(self._power.get_value()) if self._power is not None else volts * amps
        return PowerSample(watts, volts, amps)

    def close(self) -> None:
        """pynq's rails hold no resources of their own."""


class PmbusDiscovery(NamedTuple):
    sensors: list[SampledPowerSensor]
    note: str


def get_pynq_rails(config_file: str | None = None) -> tuple[Mapping[str, Any], str]:
    """``pynq.get_rails()`` and a note; an empty mapping with the reason when pynq is missing or has no rails."""
    try:
        with warnings.catch_warnings():  # off a board pynq warns that it finds no device
            warnings.simplefilter("ignore")
            import pynq
    except ImportError as exc:
        return {}, f"pynq is not installed here ({exc}); PMBus rails are read through pynq on the board image"
    with warnings.catch_warnings(record=True) as caught:  # e.g. "Could not initialise libsensors library"
        warnings.simplefilter("always")
        rails = pynq.get_rails(config_file)
    if rails:
        return rails, ""
    said = "; ".join(sorted({str(w.message) for w in caught}))
    return {}, NO_RAILS_NOTE + (f" (pynq said: {said})" if said else "")


def has_power(rail: Any) -> bool:
    return getattr(rail, "power", None) is not None or (
        getattr(rail, "voltage", None) is not None and getattr(rail, "current", None) is not None
    )


def pmbus_sensors(rails: Mapping[str, Any] | None = None, names: Sequence[str] = (), config_file: str | None = None,
                  period_s: float = 0.05, timeout_s: float = 3.0) -> PmbusDiscovery:
    """One averaging power sensor (``pmbus_<rail>``) per rail that measures power, from ``rails`` (default:
    ``pynq.get_rails(config_file)``), restricted to ``names`` if given. Summing all rails may count a supply and
    the rails it feeds twice: pick the rails with ``names`` on such boards."""
    note = ""
    if rails is None:
        rails, note = get_pynq_rails(config_file)
    unknown = sorted(set(names) - set(rails))
    if unknown and rails:
        raise SensorError(f"unknown PMBus rails {unknown}; this board has {sorted(rails)}")
    chosen = [rails[n] for n in names if n in rails] if names else list(rails.values())
    with_power = [r for r in chosen if has_power(r)]
    if chosen and not with_power:
        note = f"none of the PMBus rails {[r.name for r in chosen]} measures power (voltage-only rails)"
    elif not chosen and not note:
        note = NO_RAILS_NOTE
    sensors = [SampledPowerSensor(f"pmbus_{r.name}", RailMeter(r), period_s, timeout_s) for r in with_power]
    return PmbusDiscovery(sensors, note)
