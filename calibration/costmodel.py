"""Analytic cost model: latency, energy, power and resources of a plan, from the schedule model and calibration.

Latency is the schedule's cycles at the overlay clock; energy is ``idle_power * time + energy_per_binary_op *
binary ops + energy_per_dram_byte * DRAM bytes`` (the ops and bytes come from the schedule too). A calibration file
(``CalibrationParams``) holds the free parameters with their provenance, and, when it was fitted for another overlay
(e.g. a third-party table), that overlay.

Imports only numpy: the emulated device runs this.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_text, read_text
from autoq.common.measurement import LayerCost, Measurement, Provenance
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.manifest import ManifestError, OverlayConfig
from autoq.overlay.resources import estimate
from autoq.overlay.schedule import STAGES, LayerEntry, ScheduleError, ScheduleParams, table_cycles, tile_table

CALIBRATION_FORMAT = "autoq-calibration/1"
DEFAULT_CALIBRATION = "pynq_z1_default.json"


class CalibrationError(AutoQError, ValueError):
    """A calibration file is missing or malformed, or does not belong to the overlay it is used with."""


@dataclass(frozen=True)
class EnergyParams:
    """``idle_power_w`` is drawn all the time the layer runs; the other two are dynamic energy per event."""

    idle_power_w: float
    energy_per_binary_op_j: float
    energy_per_dram_byte_j: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise CalibrationError(f"energy parameter {f.name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class CalibrationParams:
    """Free parameters of the analytic model and where they came from.

    ``calibrated`` is False for figures taken from publications rather than fitted to measurements of this overlay;
    every Measurement made with them says so. ``overlay`` is set when the parameters were fitted for an overlay
    other than a bundled manifest (then the model runs on that overlay). ``fit`` holds the fit's error figures.
    """

    id: str
    source: str
    overlay_build_hash: str
    date: str
    calibrated: bool
    schedule: ScheduleParams
    energy: EnergyParams
    overlay: OverlayConfig | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.overlay is not None and self.overlay.build_hash != self.overlay_build_hash:
            raise CalibrationError(
                f"calibration {self.id!r}: its overlay's build hash {self.overlay.build_hash} differs from "
                f"overlay_build_hash {self.overlay_build_hash}"
            )

    def with_changes(self, **changes: Any) -> "CalibrationParams":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "id": self.id,
            "source": self.source,
            "calibrated": self.calibrated,
            "date": self.date,
            "overlay_build_hash": self.overlay_build_hash,
            "overlay": self.overlay.to_dict() if self.overlay else None,
            "schedule": self.schedule.to_dict(),
            "energy": asdict(self.energy),
            "fit": self.fit,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str = "calibration") -> "CalibrationParams":
        if not isinstance(data, dict):
            raise CalibrationError(f"{origin}: a calibration must be a JSON object")
        if data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"{origin}: format must be {CALIBRATION_FORMAT!r}, got {data.get('format')!r}")
        required = ("id", "source", "calibrated", "date", "overlay_build_hash", "schedule", "energy")
        missing = [k for k in required if k not in data]
        if missing:
            raise CalibrationError(f"{origin}: missing fields {missing}")
        if not isinstance(data["calibrated"], bool):
            raise CalibrationError(f"{origin}: 'calibrated' must be true or false, got {data['calibrated']!r}")
        try:
            schedule = ScheduleParams.from_dict(dict(data["schedule"]))
            energy = EnergyParams(**dict(data["energy"]))
            overlay = OverlayConfig.from_dict(data["overlay"]) if data.get("overlay") else None
            return cls(
                str(data["id"]), str(data["source"]), str(data["overlay_build_hash"]), str(data["date"]),
                data["calibrated"], schedule, energy, overlay, dict(data.get("fit") or {}), tuple(data.get("notes") or ()),
            )
        except (ScheduleError, ManifestError, CalibrationError) as exc:
            raise CalibrationError(f"{origin}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{origin}: malformed calibration: {exc}") from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationParams":
        text = read_text(path, CalibrationError, "calibration")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"calibration {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, origin=f"calibration {path}")


def default_calibration_path() -> Path:
    return Path(str(resources.files("autoq.calibration"))) / DEFAULT_CALIBRATION


def load_default_calibration() -> CalibrationParams:
    return CalibrationParams.load(default_calibration_path())


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def grid_entries(layers: Sequence[LayerSpec], wbits: Iterable[int], abits: Iterable[int]) -> list[LayerEntry]:
    """Every layer at every uniform (weight bits, activation bits) pair, layer-major then wbits then abits."""
    wbits, abits = list(wbits), list(abits)
    return [LayerEntry(layer, np.full(layer.c_out, w), a) for layer in layers for w in wbits for a in abits]


MEMO_LAYERS = 8192
"""Per-layer results an ``AnalyticCostModel`` keeps: a search re-measures plans that differ in a few layers."""


class AnalyticCostModel:
    """Scores plans on ``overlay`` with ``params``; cheap enough to call once per searched plan.

    Layers are scheduled in one vectorised pass per plan; layers already scored under the same bits (and batch,
    grouping) are taken from a memo, so re-measuring a plan with one layer changed costs about one layer.
    """

    def __init__(self, overlay: OverlayConfig, params: CalibrationParams):
        if params.overlay_build_hash != overlay.build_hash:
            raise CalibrationError(
                f"calibration {params.id!r} was made for overlay build {params.overlay_build_hash}, "
                f"not for {overlay.name!r} (build {overlay.build_hash})"
            )
        self.overlay = overlay
        self.params = params
        self.resources = estimate(overlay)
        self._memo: dict[tuple, np.ndarray] = {}

    def _layer_cycles(self, entries: Sequence[LayerEntry], batch: int, grouped: bool) -> np.ndarray:
        """Rows of (fetch, execute, result, overhead, total, bound index, DRAM bytes, binary ops), one per entry."""
        keys = [(e.layer, tuple(e.weight_bits), int(e.act_bits), batch, grouped) for e in entries]
        found = {key: self._memo[key] for key in keys if key in self._memo}
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            schedule = self.params.schedule
            table = tile_table([entries[i] for i in missing], self.overlay, batch, grouped, schedule.per_image_convs)
            c = table_cycles(table, self.overlay, schedule)
            rows = np.stack([c.fetch, c.execute, c.result, c.overhead, c.total, c.bound, c.dram_bytes, c.binary_ops], 1)
            scored = {keys[i]: row for i, row in zip(missing, rows)}
            if len(self._memo) + len(scored) > MEMO_LAYERS:
                self._memo.clear()
            self._memo.update(scored)
            found.update(scored)
        return np.stack([found[key] for key in keys])

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        plan.check(network)
        entries = [LayerEntry(spec, lp.weight_bits, lp.act_bits) for spec, lp in zip(network.layers, plan.layers)]
        fetch, execute, result, overhead, total, bound, dram_bytes, binary_ops = self._layer_cycles(entries, batch, grouped).T
        seconds = total / self.overlay.clock_hz
        energy = self.params.energy
        joules = (energy.idle_power_w * seconds + energy.energy_per_binary_op_j * binary_ops
                  + energy.energy_per_dram_byte_j * dram_bytes)
        layers = tuple(
            LayerCost(
                spec.name, float(seconds[i]), float(joules[i]), STAGES[int(bound[i])],
                {"fetch": int(fetch[i]), "execute": int(execute[i]), "result": int(result[i]),
                 "overhead": int(overhead[i]), "total": int(total[i])},
            )
            for i, spec in enumerate(network.layers)
        )
        latency, total_energy = float(seconds.sum()), float(joules.sum())
        return Measurement(
            network_hash=network.hash,
            plan_hash=plan.hash,
            batch=batch,
            latency_s=latency,
            energy_j=total_energy,
            avg_power_w=total_energy / latency,
            idle_power_w=energy.idle_power_w,
            layers=layers,
            provenance=Provenance(
                source="model", overlay_build_hash=self.overlay.build_hash, calibration_id=self.params.id,
                calibrated=self.params.calibrated,
            ),
            resources=self.resources.to_dict(),
        )

    def layer_table(self, layers: Sequence[LayerSpec], batch: int = 1, max_bits: int | None = None) -> np.ndarray:
        """Cycles of every layer at every uniform bit pair: array ``[layer, wbits - 1, abits - 1]``."""
        top = max_bits or self.overlay.max_bits
        entries = grid_entries(layers, range(1, top + 1), range(1, top + 1))
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, True, schedule.per_image_convs)
        cycles = table_cycles(table, self.overlay, schedule)
        return cycles.total.reshape(len(layers), top, top)
