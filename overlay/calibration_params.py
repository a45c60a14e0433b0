"""Calibration parameters of the overlay's timing and energy: the types, the energy formula and the default file.

A calibration (``CalibrationParams``) holds the schedule's timing parameters and the energy parameters, with where
they came from: ``calibrated`` is true only for a fit on measurements of hardware or of the RTL simulation. The
board side needs these (the emulated device's timing and power), so they live here and import only numpy and
``autoq.common``/``autoq.overlay``; fitting them is ``autoq.calibration``'s job. The default calibration of each
overlay build ships as ``bitstreams/<name>/calibration.json``; ``rehash_build`` keeps the two in step after a
manifest edit (``autoq hls rehash``).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_text, read_text

from .manifest import DEFAULT_OVERLAY, ManifestError, OverlayConfig, bitstreams_dir
from .schedule import ScheduleError, ScheduleParams

CALIBRATION_FORMAT = "autoq-calibration/1"
DEFAULT_CALIBRATION = "calibration.json"
"""File name of an overlay build's default calibration in its ``bitstreams/<name>/`` folder."""


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

    def dynamic_j(self, binary_ops: Any, dram_bytes: Any) -> Any:
        """Energy of the work itself (scalars or arrays): ``e_op * binary_ops + e_byte * dram_bytes``."""
        return self.energy_per_binary_op_j * binary_ops + self.energy_per_dram_byte_j * dram_bytes

    def total_j(self, seconds: Any, binary_ops: Any, dram_bytes: Any) -> Any:
        """``idle_power * seconds`` plus the dynamic energy: the model's energy of running that work."""
        return self.idle_power_w * seconds + self.dynamic_j(binary_ops, dram_bytes)


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


def default_calibration_path(overlay: str = DEFAULT_OVERLAY) -> Path:
    return bitstreams_dir() / overlay / DEFAULT_CALIBRATION


def load_default_calibration(overlay: str = DEFAULT_OVERLAY) -> CalibrationParams:
    return CalibrationParams.load(default_calibration_path(overlay))


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class Rehashed(NamedTuple):
    old_hash: str
    overlay: OverlayConfig
    calibration: CalibrationParams | None  # the build's default calibration, now for ``overlay.build_hash``


def rehash_build(folder: str | Path, **changes: Any) -> Rehashed:
    """Recompute the build hash of ``folder``'s manifest after an edit (or with ``changes``, e.g. ``dm=4``,
    applied) and point its default calibration at it; writes both.

    Refused once the build has a bitstream (it reports the hash it was built with: rebuild instead). The
    calibration's parameters are kept: the timing constants are per beat, burst and row (fitted on ``rtl_small``),
    the energy ones per op and byte; refit them for figures of the new array's own.
    """
    folder = Path(folder)
    path = folder / "manifest.json"
    try:
        data = json.loads(read_text(path, ManifestError, "manifest"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path}: a manifest must be a JSON object")
    stale = OverlayConfig.from_dict(data, verify_hash=False)
    bitstream = folder / f"{stale.name}.bit"
    if bitstream.exists():
        raise ManifestError(f"overlay {stale.name!r} has a bitstream ({bitstream}) built with build hash "
                            f"{stale.build_hash}: rebuild it (make -C hls bitstream OVERLAY={stale.name}) instead")
    overlay = stale.with_changes(**changes)
    calibration = None
    if (folder / DEFAULT_CALIBRATION).is_file():
        calibration = CalibrationParams.load(folder / DEFAULT_CALIBRATION)
        if calibration.overlay is not None:
            raise CalibrationError(f"calibration {calibration.id!r} carries its own overlay "
                                   f"{calibration.overlay.name!r}: refit it for {overlay.name!r}")
        if calibration.overlay_build_hash not in (stale.build_hash, overlay.build_hash):
            raise CalibrationError(f"calibration {calibration.id!r} was made for build {calibration.overlay_build_hash}, "
                                   f"not for manifest {path}'s {stale.build_hash}")
        calibration = calibration.with_changes(overlay_build_hash=overlay.build_hash)
    overlay.save(path)
    if calibration is not None:
        calibration.save(folder / DEFAULT_CALIBRATION)
    return Rehashed(stale.build_hash, overlay, calibration)
