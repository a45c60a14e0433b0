"""What every cost backend returns: latency, energy, power and resources of one plan, with provenance."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Source = Literal["board", "emulated", "model", "replay"]
SOURCES: tuple[str, ...] = ("board", "emulated", "model", "replay")
SOFTWARE_VERSION = "0.1.0"


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer. ``cycles`` maps stage name (fetch/execute/result/overhead) to cycles; ``bound`` names the slowest stage."""

    name: str
    latency_s: float
    energy_j: float
    bound: str
    cycles: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
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


@dataclass(frozen=True)
class Measurement:
    """Cost of running one plan on one network at one batch size.

    ``samples`` keeps the raw observations behind the figures (e.g. ``latency_s`` per run, ``power_w`` per meter
    reading); a model backend leaves it empty.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        fields = dict(data)
        fields["layers"] = tuple(LayerCost(**l) for l in data["layers"])
        fields["provenance"] = Provenance(**data["provenance"])
        return cls(**fields)
