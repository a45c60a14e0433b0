"""Measurement protocol on the board: idle power first, then warm-up, then repeated runs until the power meter's
sampling window is covered; median and spread of latency, idle power subtracted for energy per inference.

Power sensors are ``sensors.base.Sensor``s (duck-typed like pynq's) whose ``get_value()`` returns the average power
in watts since the previous reading (what a sampling meter reports). They may declare ``sample_rate_hz`` (readings
per second the meter delivers; the RDTech UM meters about 5) and ``resolution_w`` (the smallest power difference
they resolve). Each phase lasts long enough for ``MeasureSettings.min_samples`` readings of the slowest meter.

The idle baseline is taken with the same host loop running (``host_loop(seconds)``: the engine started on an
empty job and its control register polled as during a run, without engine work), so the Cortex-A9's polling power
is in both the idle and the run reading and is not attributed to the engine. Energy per inference is
``(P_run - P_idle) x run window / runs``; the idle share (``P_idle x window / runs``) is reported apart. A
difference below the meters' resolution, or within two standard errors of zero, is not reported as a number
(``EnergyResult.dynamic_j`` is None, with the reason).

``clock`` is the board's time base: wall time (``time.perf_counter``) on a board; the emulated device's virtual
time or the RTL simulation's simulated time on a workstation (``Clock.kind`` says which), so the protocol and its
sensors run unchanged there. Imports only numpy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from autoq.common.errors import AutoQError

from .sensors.base import Sensor

CLOCK_KINDS = ("wall", "virtual", "simulated")
_WALL_CLOCKS = (time.perf_counter, time.monotonic, time.time)


class MeasureError(AutoQError, RuntimeError):
    """The measurement protocol cannot run as configured, or a sensor failed."""


@dataclass(frozen=True)
class Clock:
    """The time base runs and sensors share: ``now()`` in seconds and ``sleep(s)``. ``kind`` is ``wall`` (host
    wall time), ``virtual`` (the emulated device's model time) or ``simulated`` (the RTL simulation's time); left
    empty it is ``wall`` for the standard library's clocks and ``simulated`` for any other ``now``."""

    now: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", "wall" if self.now in _WALL_CLOCKS else "simulated")
        if self.kind not in CLOCK_KINDS:
            raise MeasureError(f"clock kind must be one of {CLOCK_KINDS}, got {self.kind!r}")

    @property
    def is_wall(self) -> bool:
        return self.kind == "wall"

    def now_ns(self) -> int:
        """Now in integer nanoseconds: ``time.perf_counter_ns`` on the default wall clock, else ``now()`` scaled."""
        if self.now is time.perf_counter:
            return time.perf_counter_ns()
        return round(self.now() * 1e9)


@dataclass(frozen=True)
class MeasureSettings:
    """How long and how often to measure. The run phase lasts at least ``min_runs`` runs and ``min_window_s``."""

    warmup_runs: int = 2
    min_runs: int = 5
    max_runs: int = 10_000
    min_window_s: float = 1.0
    idle_window_s: float = 1.0
    sample_period_s: float = 0.1
    min_samples: int = 20
    """Meter readings each phase (idle, run) must cover: the window is at least ``min_samples / sample_rate_hz``."""

    def __post_init__(self) -> None:
        if self.warmup_runs < 0 or self.min_runs < 1 or self.max_runs < self.min_runs or self.min_samples < 1:
            raise MeasureError(f"need warmup_runs >= 0, 1 <= min_runs <= max_runs and min_samples >= 1, got {self}")
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
    """What one run returned: its latency from the engine's cycle counters, the host's time around it on the
    session's clock (``wall_s``) and on the CPU's global timer where there is one (``timer_s``), and whatever the
    runner attaches (``detail``)."""

    latency_s: float
    detail: Any = None
    wall_s: float | None = None
    timer_s: float | None = None


class EnergyResult(NamedTuple):
    """Energy per inference from a protocol run. ``dynamic_j`` is None when the power difference is not resolved
    (``reason`` says why); ``idle_j`` is the idle board's share of one inference's time on the host loop."""

    dynamic_j: float | None
    idle_j: float
    dynamic_w: float
    stderr_w: float
    resolution_w: float
    reason: str = ""


@dataclass
class ProtocolResult:
    """Raw samples of one measurement and the figures derived from them."""

    runs: list[RunRecord]
    idle_power_w: list[float] = field(default_factory=list)
    run_power_w: list[float] = field(default_factory=list)
    window_s: float = 0.0
    idle_window_s: float = 0.0
    required_window_s: float = 0.0  # what the meters' sample rate asks of each phase
    resolution_w: float = 0.0
    idle_host_loop: bool = False
    clock_kind: str = "wall"
    has_sensors: bool = False

    @property
    def latency(self) -> Spread:
        return Spread.of([r.latency_s for r in self.runs])

    @property
    def idle_power(self) -> float:
        return float(np.mean(self.idle_power_w)) if self.idle_power_w else 0.0

    @property
    def avg_power(self) -> float:
        return float(np.mean(self.run_power_w)) if self.run_power_w else 0.0

    def energy(self) -> EnergyResult:
        """``(P_run - P_idle) x window / runs`` when resolved (see the module docstring)."""
        runs = max(len(self.runs), 1)
        idle_j = self.idle_power * self.window_s / runs
        if not self.has_sensors:
            return EnergyResult(None, 0.0, 0.0, 0.0, 0.0, "no power sensor")
        dynamic_w = self.avg_power - self.idle_power
        stderr = math.sqrt(sum(float(np.var(x, ddof=1)) / len(x) for x in (self.run_power_w, self.idle_power_w)
                               if len(x) > 1))
        base = EnergyResult(None, idle_j, dynamic_w, stderr, self.resolution_w)
        if abs(dynamic_w) < self.resolution_w:
            return base._replace(reason=f"the power difference running - idle ({dynamic_w:.4g} W) is below the meters' "
                                        f"resolution ({self.resolution_w:.4g} W)")
        if abs(dynamic_w) <= 2 * stderr:
            return base._replace(reason=f"the power difference running - idle ({dynamic_w:.4g} W) is within two "
                                        f"standard errors ({stderr:.3g} W) of zero")
        if dynamic_w < 0:
            return base._replace(reason=f"the board drew less power running than idle ({dynamic_w:.4g} W)")
        return base._replace(dynamic_j=dynamic_w * self.window_s / runs)

    @property
    def energy_per_inference_j(self) -> float | None:
        """The energy one inference adds to the idle board (``energy().dynamic_j``; None when not resolved)."""
        return self.energy().dynamic_j

    def samples(self) -> dict[str, list[float]]:
        out = {
            "latency_s": [r.latency_s for r in self.runs],
            "power_w": list(self.run_power_w),
            "idle_power_w": list(self.idle_power_w),
        }
        walls = [r.wall_s for r in self.runs if r.wall_s is not None]
        if len(walls) == len(self.runs):
            out["host_wall_s"] = walls
            out["driver_overhead_s"] = [r.wall_s - r.latency_s for r in self.runs if r.wall_s is not None]
        timers = [r.timer_s for r in self.runs if r.timer_s is not None]
        if timers:
            out["global_timer_s"] = timers
        return out

    def summary(self) -> str:
        lat = self.latency
        text = (
            f"{lat.n} runs over {self.window_s:.3g} s ({self.clock_kind} time); engine latency median "
            f"{lat.median:.6g} s, IQR {lat.iqr:.3g} s, stdev {lat.stdev:.3g} s"
        )
        samples = self.samples()
        if "host_wall_s" in samples:
            text += (f"; host {self.clock_kind} time per run median {float(np.median(samples['host_wall_s'])):.6g} s, "
                     f"driver overhead median {float(np.median(samples['driver_overhead_s'])):.3g} s")
        if "global_timer_s" in samples:
            text += f"; global timer per run median {float(np.median(samples['global_timer_s'])):.6g} s"
        if self.run_power_w:
            energy = self.energy()
            text += (
                f"; power {self.avg_power:.4g} W running ({len(self.run_power_w)} readings, stdev "
                f"{float(np.std(self.run_power_w)):.3g} W), {self.idle_power:.4g} W idle ({len(self.idle_power_w)} "
                f"readings over {self.idle_window_s:.3g} s, stdev {float(np.std(self.idle_power_w)):.3g} W, "
                f"{'with' if self.idle_host_loop else 'WITHOUT'} the host loop running); "
                + (f"dynamic energy {energy.dynamic_j:.4g} J per inference" if energy.dynamic_j is not None
                   else f"dynamic energy not resolved: {energy.reason}")
                + f", idle share {energy.idle_j:.4g} J"
            )
        return text


def read_power(sensors: Sequence[Sensor]) -> float:
    """Total watts over all sensors (each reports its average since its previous reading)."""
    try:
        return float(sum(float(s.get_value()) for s in sensors))
    except Exception as exc:  # noqa: BLE001 - any sensor failure becomes one clear error naming the sensors
        raise MeasureError(f"power sensor reading failed ({[s.name for s in sensors]}): {exc}") from exc


def sample_rate_hz(sensors: Sequence[Sensor]) -> float:
    """Readings per second of the slowest sensor (``inf`` when none declares a rate)."""
    rates = [float(getattr(s, "sample_rate_hz", math.inf) or math.inf) for s in sensors]
    return min(rates, default=math.inf)


def resolution_w(sensors: Sequence[Sensor]) -> float:
    """The smallest power difference the sum of ``sensors`` resolves (their declared resolutions added)."""
    return float(sum(float(getattr(s, "resolution_w", 0.0) or 0.0) for s in sensors))


def meter_window_s(sensors: Sequence[Sensor], settings: MeasureSettings) -> float:
    """How long each phase (idle, run) must last for ``settings.min_samples`` readings of the slowest meter."""
    rate = sample_rate_hz(sensors)
    return settings.min_samples / rate if sensors and math.isfinite(rate) and rate > 0 else 0.0


def run_protocol(
    run_once: Callable[[], RunRecord],
    sensors: Sequence[Sensor],
    settings: MeasureSettings = MeasureSettings(),
    clock: Clock = Clock(),
    host_loop: Callable[[float], None] | None = None,
) -> ProtocolResult:
    """Idle power over at least ``idle_window_s`` and the meters' window (``meter_window_s``) with
    ``host_loop(seconds)`` running (without it the idle phase just sleeps, and the host's polling power ends up in
    the engine's energy), ``warmup_runs`` discarded runs, then runs until ``min_runs`` and the window are reached
    (power read every ``sample_period_s``). Without sensors, power is not sampled."""
    meters = meter_window_s(sensors, settings)
    window = max(settings.min_window_s, meters)
    result = ProtocolResult(runs=[], required_window_s=meters, resolution_w=resolution_w(sensors),
                            idle_host_loop=host_loop is not None, clock_kind=clock.kind, has_sensors=bool(sensors))
    if sensors:
        read_power(sensors)  # starts each meter's averaging interval
        idle_start = clock.now()
        idle_window = max(settings.idle_window_s, meters)
        while True:  # one reading per sample period
            if host_loop is not None:
                host_loop(settings.sample_period_s)
            else:
                clock.sleep(settings.sample_period_s)
            result.idle_power_w.append(read_power(sensors))
            if clock.now() - idle_start >= idle_window:
                break
        result.idle_window_s = clock.now() - idle_start
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
        if len(result.runs) >= settings.min_runs and now - start >= window:
            break
    if sensors and not result.run_power_w:
        result.run_power_w.append(read_power(sensors))
    result.window_s = clock.now() - start
    return result
