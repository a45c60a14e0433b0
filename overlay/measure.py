"""Measurement protocol on the board: idle power first, then warm-up, then repeated runs until the power meter's
sampling window is covered; median and spread of latency, idle power subtracted for energy per inference.

Power sensors are ``sensors.base.Sensor``s (duck-typed like pynq's) whose ``get_value()`` returns the average power
in watts since the previous reading (what a sampling meter reports). ``clock``/``sleep`` are the
board's time base: wall time on a board; the emulated device's virtual time (advanced by each run's simulated
latency) on a workstation, so the protocol and its sensors run unchanged there. Imports only numpy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from autoq.common.errors import AutoQError

from .sensors.base import Sensor


class MeasureError(AutoQError, RuntimeError):
    """The measurement protocol cannot run as configured, or a sensor failed."""


@dataclass(frozen=True)
class Clock:
    """The time base runs and sensors share: ``now()`` in seconds and ``sleep(s)``."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class MeasureSettings:
    """How long and how often to measure. The run phase lasts at least ``min_runs`` runs and ``min_window_s``."""

    warmup_runs: int = 2
    min_runs: int = 5
    max_runs: int = 10_000
    min_window_s: float = 1.0
    idle_window_s: float = 1.0
    sample_period_s: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_runs < 0 or self.min_runs < 1 or self.max_runs < self.min_runs:
            raise MeasureError(f"need warmup_runs >= 0 and 1 <= min_runs <= max_runs, got {self}")
        if self.min_window_s < 0 or self.idle_window_s < 0 or self.sample_period_s <= 0:
            raise MeasureError(f"windows must be >= 0 and sample_period_s > 0, got {self}")


class Spread(NamedTuple):
    """Median and spread of a sample: interquartile range and standard deviation."""

    n: int
    median: float
    iqr: float
    stdev: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        array = np.asarray(values, dtype=float)
        if array.size == 0:
            raise MeasureError("no samples to summarise")
        q1, median, q3 = np.percentile(array, [25, 50, 75])
        return cls(int(array.size), float(median), float(q3 - q1), float(array.std(ddof=1)) if array.size > 1 else 0.0)


@dataclass
class RunRecord:
    """What one run returned: its latency (from the engine's cycle counters) and whatever the runner attaches."""

    latency_s: float
    detail: Any = None


@dataclass
class ProtocolResult:
    """Raw samples of one measurement and the figures derived from them."""

    runs: list[RunRecord]
    idle_power_w: list[float] = field(default_factory=list)
    run_power_w: list[float] = field(default_factory=list)
    window_s: float = 0.0

    @property
    def latency(self) -> Spread:
        return Spread.of([r.latency_s for r in self.runs])

    @property
    def idle_power(self) -> float:
        return float(np.mean(self.idle_power_w)) if self.idle_power_w else 0.0

    @property
    def avg_power(self) -> float:
        return float(np.mean(self.run_power_w)) if self.run_power_w else 0.0

    @property
    def energy_per_inference_j(self) -> float:
        """(power while running - idle power) x median latency: the energy one inference adds to the idle board."""
        return max(self.avg_power - self.idle_power, 0.0) * self.latency.median

    def samples(self) -> dict[str, list[float]]:
        return {
            "latency_s": [r.latency_s for r in self.runs],
            "power_w": list(self.run_power_w),
            "idle_power_w": list(self.idle_power_w),
        }

    def summary(self) -> str:
        lat = self.latency
        text = (
            f"{lat.n} runs over {self.window_s:.3g} s; latency median {lat.median:.6g} s, IQR {lat.iqr:.3g} s, "
            f"stdev {lat.stdev:.3g} s"
        )
        if self.run_power_w:
            text += (
                f"; power {self.avg_power:.4g} W running ({len(self.run_power_w)} readings), "
                f"{self.idle_power:.4g} W idle ({len(self.idle_power_w)} readings)"
            )
        return text


def read_power(sensors: Sequence[Sensor]) -> float:
    """Total watts over all sensors (each reports its average since its previous reading)."""
    try:
        return float(sum(float(s.get_value()) for s in sensors))
    except Exception as exc:  # noqa: BLE001 - any sensor failure becomes one clear error naming the sensors
        raise MeasureError(f"power sensor reading failed ({[s.name for s in sensors]}): {exc}") from exc


def run_protocol(
    run_once: Callable[[], RunRecord],
    sensors: Sequence[Sensor],
    settings: MeasureSettings = MeasureSettings(),
    clock: Clock = Clock(),
) -> ProtocolResult:
    """Idle power over ``idle_window_s``, ``warmup_runs`` discarded runs, then runs until both ``min_runs`` and
    ``min_window_s`` are reached (power read every ``sample_period_s``). Without sensors, power is not sampled."""
    result = ProtocolResult(runs=[])
    if sensors:
        read_power(sensors)  # starts each meter's averaging interval
        idle_end = clock.now() + settings.idle_window_s
        while True:
            clock.sleep(settings.sample_period_s)
            result.idle_power_w.append(read_power(sensors))
            if clock.now() >= idle_end:
                break
    for _ in range(settings.warmup_runs):
        run_once()
    if sensors:
        read_power(sensors)
    start = last_read = clock.now()
    while len(result.runs) < settings.max_runs:
        result.runs.append(run_once())
        now = clock.now()
        if sensors and now - last_read >= settings.sample_period_s:
            result.run_power_w.append(read_power(sensors))
            last_read = now
        if len(result.runs) >= settings.min_runs and now - start >= settings.min_window_s:
            break
    if sensors and not result.run_power_w:
        result.run_power_w.append(read_power(sensors))
    result.window_s = clock.now() - start
    return result
