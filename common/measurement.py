"""What every cost backend returns: latency, energy, power and resources of one plan, with provenance.

Every figure of a ``Measurement`` (``FIGURES``) is either *measured* (by hardware, or by the RTL simulation's cycle
counters) or *predicted* by a model, and says which: ``measured`` names the measured figures, ``predicted`` maps
each other figure to the id of the calibration whose model filled it in, and ``reasons`` says why a figure is not
measured where a measurement was attempted (no power sensor, a power difference below the meter's resolution).
No figure is both. The JSON form carries ``format`` (``MEASUREMENT_FORMAT``); records of an older format, which
do not say what was measured, are refused by ``from_dict`` with a ``MeasurementFormatError``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import AutoQError

Source = Literal["board", "emulated", "rtlsim", "model", "replay"]
SOURCES: tuple[str, ...] = ("board", "emulated", "rtlsim", "model", "replay")
SOFTWARE_VERSION = "0.1.0"
MEASUREMENT_FORMAT = 2
"""Version of ``Measurement.to_dict``; 1 (no ``format`` key) had no measured/predicted labels."""

LATENCY_FIGURES = ("latency_s", "layers.latency_s", "layers.cycles")
POWER_FIGURES = ("energy_j", "avg_power_w", "idle_power_w", "layers.energy_j")
FIGURES: tuple[str, ...] = LATENCY_FIGURES + POWER_FIGURES
"""The figures a measurement labels: totals by field name, per-layer ones as ``layers.<field>``."""


class MeasurementFormatError(AutoQError, ValueError):
    """A measurement record is of another format, or labels its figures inconsistently."""


_NO_CYCLES: dict[str, int] = {}  # LayerCost's default cycles: a fresh empty dict


@dataclass(frozen=True, init=False)
class LayerCost:
    """Cost of one layer. ``cycles`` maps stage name (fetch/execute/result/overhead/total, and on engines with
    register map v2 stall_fetch/stall_execute/stall_result) to cycles; ``bound`` names the slowest stage."""

    name: str
    latency_s: float
    energy_j: float
    bound: str
    cycles: dict[str, int] = field(default_factory=dict)

    def __init__(self, name: str, latency_s: float, energy_j: float, bound: str,
                 cycles: dict[str, int] = _NO_CYCLES) -> None:
        fields = self.__dict__  # frozen: the fields are written once, here (faster than object.__setattr__)
        fields["name"], fields["latency_s"], fields["energy_j"], fields["bound"] = name, latency_s, energy_j, bound
        fields["cycles"] = {} if cycles is _NO_CYCLES else cycles


@dataclass(frozen=True)
class Provenance:
    """Where a measurement comes from. ``calibrated``: the calibration behind its predicted figures (if any) was
    fitted on measurements of hardware or of the RTL simulation."""

    source: Source
    overlay_build_hash: str
    board_id: str = ""
    calibration_id: str = ""
    calibrated: bool = True
    timestamp: float = field(default_factory=time.time)
    software_version: str = SOFTWARE_VERSION
    detail: str = ""  # free text, e.g. a replayed measurement's original source and trace record

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"measurement source must be one of {SOURCES}, got {self.source!r}")


def predicted_by(calibration_id: str, figures: tuple[str, ...] = FIGURES) -> dict[str, str]:
    """``figures`` (default: all) as predicted by the model of calibration ``calibration_id``."""
    return dict.fromkeys(figures, calibration_id or "unnamed calibration")


@dataclass(frozen=True)
class Measurement:
    """Cost of running one plan on one network at one batch size.

    ``samples`` keeps the raw observations behind the figures (e.g. ``latency_s`` per run, ``power_w`` per meter
    reading); a model backend leaves it empty. ``measured``/``predicted``/``reasons``: see the module docstring;
    the defaults say everything was predicted by ``provenance.calibration_id``.
    """

    network_hash: str
    plan_hash: str
    batch: int
    latency_s: float
    energy_j: float
    avg_power_w: float
    idle_power_w: float
    layers: tuple[LayerCost, ...]
    provenance: Provenance
    resources: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    measured: tuple[str, ...] = ()
    predicted: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.measured and not self.predicted:  # the default labels: consistent unless a reason says otherwise
            object.__setattr__(self, "predicted", predicted_by(self.provenance.calibration_id))
            if not self.reasons:
                return
        unknown = sorted((set(self.measured) | set(self.predicted) | set(self.reasons)) - set(FIGURES))
        both = sorted(set(self.measured) & set(self.predicted))
        unlabelled = [f for f in FIGURES if f not in self.measured and f not in self.predicted]
        explained = [f for f in self.reasons if f in self.measured]
        if unknown or both or unlabelled or explained:
            raise MeasurementFormatError(
                f"measurement labels are inconsistent: unknown figures {unknown}, both measured and predicted {both}, "
                f"neither {unlabelled}, measured yet given a reason for not being measured {explained}")

    def is_measured(self, figure: str) -> bool:
        return figure in self.measured

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["measured"] = list(self.measured)
        return {"format": MEASUREMENT_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        fields = dict(data)
        version = fields.pop("format", 1)
        if version != MEASUREMENT_FORMAT:
            raise MeasurementFormatError(
                f"measurement record of format {version}, this autoq reads format {MEASUREMENT_FORMAT}"
                + (": format 1 records do not say which figures were measured and which a model predicted; "
                   "record them again" if version == 1 else ""))
        fields["layers"] = tuple(LayerCost(**l) for l in data["layers"])
        fields["provenance"] = Provenance(**data["provenance"])
        fields["measured"] = tuple(data["measured"])
        return cls(**fields)
