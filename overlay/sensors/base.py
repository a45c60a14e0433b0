"""The sensor seam, duck-typed like pynq's: ``name``, ``parents`` and ``get_value(parents=None)``, plus ``unit`` and a
human ``kind``. Any object of this shape works with ``pynq.DataRecorder`` and with the board's measurement protocol.

Power sensors (``unit == "W"``) report, as the measurement protocol expects, the *average* power since their previous
reading. Meters that only give instantaneous samples are wrapped in :class:`SampledPowerSensor`, which samples them
continuously in a background thread, so power drawn while the engine runs is seen even when the protocol reads
between runs. Imports only the standard library (and the toolkit's errors).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, NamedTuple, Protocol, Sequence

from autoq.common.errors import AutoQError

WATTS = "W"
VOLTS = "V"
AMPS = "A"
CELSIUS = "C"


class SensorError(AutoQError, RuntimeError):
    """A sensor or meter cannot be opened, does not answer, or answers something that is not a valid reading."""


class Sensor(Protocol):
    name: str
    parents: tuple[Any, ...]
    unit: str

    @property
    def kind(self) -> str: ...  # read-only: a plain attribute or a property

    def get_value(self, parents: Any = None) -> float: ...


class PowerSample(NamedTuple):
    """One reading of a power meter; volts and amps are NaN where the meter reports power only."""

    watts: float
    volts: float = math.nan
    amps: float = math.nan

    @classmethod
    def from_volts_amps(cls, volts: float, amps: float) -> "PowerSample":
        return cls(volts * amps, volts, amps)


class PowerMeter(Protocol):
    """An instrument that returns one fresh sample per ``read()``, raising :class:`SensorError` after its timeout.
    ``close()`` may be called from another thread while ``read()`` waits, and makes it return promptly. A meter
    may declare ``max_rate_hz`` (fresh readings per second at best) and ``resolution_w`` (smallest power step)."""

    description: str

    def read(self) -> PowerSample: ...

    def close(self) -> None: ...


def check_reading(value: float, what: str, low: float, high: float) -> float:
    """``value`` if finite and within [low, high], else a :class:`SensorError` naming ``what``."""
    if not math.isfinite(value) or not low <= value <= high:
        raise SensorError(f"{what} reading {value!r} is outside the plausible range [{low:g}, {high:g}]")
    return value


class SampledPowerSensor:
    """Average power since the previous ``get_value()``, from a :class:`PowerMeter` read every ``period_s`` seconds
    in a background thread (a streaming meter paces itself: give ``period_s=0``).

    ``get_value`` returns the mean of the samples taken since the previous call; when none arrived in between it
    repeats the latest one (the meter's display would show the same). The first call waits up to ``timeout_s`` for a
    first sample. A meter failure is raised from ``get_value`` as a :class:`SensorError` once no newer sample exists.
    """

    unit = WATTS

    def __init__(self, name: str, meter: PowerMeter, period_s: float = 0.05, timeout_s: float = 3.0):
        if period_s < 0 or timeout_s <= 0:
            raise SensorError(f"sensor {name!r}: need period_s >= 0 and timeout_s > 0, got {period_s}, {timeout_s}")
        self.name, self.parents, self.meter = name, (), meter
        self.period_s, self.timeout_s = period_s, timeout_s
        self.samples_taken = 0
        self._pending: list[float] = []
        self._latest: PowerSample | None = None
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_forever, name=f"sensor-{name}", daemon=True)
        self._thread.start()

    @property
    def kind(self) -> str:
        return self.meter.description

    @property
    def sample_rate_hz(self) -> float:
        """Readings per second this sensor delivers: the meter's own rate (``max_rate_hz``, unbounded if it
        declares none), capped by the sampling period."""
        rate = float(getattr(self.meter, "max_rate_hz", math.inf))
        return min(rate, 1.0 / self.period_s) if self.period_s > 0 else rate

    @property
    def resolution_w(self) -> float:
        """The smallest power difference the meter resolves (``resolution_w``; 0 when it declares none)."""
        return float(getattr(self.meter, "resolution_w", 0.0))

    @property
    def latest(self) -> PowerSample | None:
        """The most recent sample (volts and amps included where the meter gives them)."""
        with self._changed:
            return self._latest

    def get_value(self, parents: Any = None) -> float:
        deadline = time.monotonic() + self.timeout_s
        with self._changed:
            while self._latest is None and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise SensorError(f"sensor {self.name!r} ({self.kind}): no reading within {self.timeout_s:g} s")
                self._changed.wait(left)
            if self._pending:
                pending, self._pending = self._pending, []
                return math.fsum(pending) / len(pending)
            if self._error is not None:
                raise SensorError(f"sensor {self.name!r} ({self.kind}): {self._error}") from self._error
            assert self._latest is not None  # the wait above ends on a reading or an error
            return self._latest.watts

    def close(self) -> None:
        """Stop sampling and close the meter (idempotent; a meter's ``close`` interrupts a ``read`` in progress)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self.meter.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.timeout_s + 1.0)

    def __repr__(self) -> str:
        latest = self.latest
        return f"Sensor {{name={self.name}, value={latest.watts if latest else math.nan}W}}"

    def _sample_forever(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            try:
                sample = self.meter.read()
            except Exception as exc:  # noqa: BLE001 - kept for the reader; sampling goes on (the meter may recover)
                if self._stop.is_set():
                    return
                with self._changed:
                    self._error = exc
                    self._changed.notify_all()
                self._stop.wait(max(self.period_s, 0.1))
                continue
            with self._changed:
                self._pending.append(sample.watts)
                self._latest, self._error = sample, None
                self.samples_taken += 1
                self._changed.notify_all()
            next_due += self.period_s
            wait = next_due - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)
            else:
                next_due = time.monotonic()


def power_sensors(sensors: Sequence[Sensor]) -> list[Sensor]:
    """The sensors among ``sensors`` that report watts (the ones the measurement protocol may sum)."""
    return [s for s in sensors if getattr(s, "unit", None) == WATTS]


def close_sensors(sensors: Sequence[Any]) -> None:
    """Close every sensor that has a ``close()`` (meters hold serial ports and sampling threads)."""
    for sensor in sensors:
        close = getattr(sensor, "close", None)
        if callable(close):
            close()
