"""The overlay manifest (``OverlayConfig``): one description of the hardware.

It parameterises the schedule and cost model, the RTL engine (``hls/rtl``) and the driver's register map, and is
what the board reports about itself. ``bitstreams/<name>/manifest.json`` holds one per build.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_text

DEFAULT_OVERLAY = "pynq_z1"


class ManifestError(AutoQError, ValueError):
    """A manifest is missing, malformed, or its build hash does not match its contents."""


@dataclass(frozen=True)
class OverlayConfig:
    """Structural parameters of one bit-serial overlay build.

    ``dm x dn`` dot-product units, each ANDing and popcounting ``dk``-bit words per cycle. ``lhs_mem_words`` and
    ``rhs_mem_words`` are the depth (in ``dk``-bit words) of each unit row's weight buffer and each column's
    activation buffer; ``result_mem_words`` the depth of the result buffer per unit.
    """

    name: str
    dm: int
    dn: int
    dk: int
    clock_mhz: float
    lhs_mem_words: int
    rhs_mem_words: int
    result_mem_words: int
    dram_ports: int
    dram_width_bits: int
    max_bits: int
    acc_bits: int
    regmap_version: int
    vlnv: str
    part: str
    build_hash: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (not isinstance(value, (int, float)) or value <= 0):
                raise ManifestError(f"overlay {self.name!r}: {f.name} must be a positive number, got {value!r}")
        if self.regmap_version == 1:
            raise ManifestError(
                f"overlay {self.name!r}: register map v1 was the retired HLS engine's; the RTL engine speaks v2: "
                "rebuild with `make -C hls bitstream OVERLAY=NAME` from a regmap_version 2 manifest (e.g. "
                "bitstreams/pynq_z1), and record traces made on a v1 build again"
            )
        if not self.build_hash:
            object.__setattr__(self, "build_hash", self.structural_hash())

    def structural_hash(self) -> str:
        """Hash of everything but the name and the hash itself: two builds with equal hardware share it."""
        body = {k: v for k, v in asdict(self).items() if k not in ("name", "build_hash")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    @property
    def binary_ops_per_cycle(self) -> int:
        return 2 * self.dm * self.dn * self.dk

    @property
    def peak_binary_ops_per_s(self) -> float:
        return self.binary_ops_per_cycle * self.clock_hz

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_ports * self.dram_width_bits / 8

    def with_changes(self, **changes: Any) -> "OverlayConfig":
        """A variant (e.g. fitted array dims); its build hash is recomputed."""
        return replace(self, build_hash="", **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, verify_hash: bool = True) -> "OverlayConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.name != "build_hash")
        if unknown or missing:
            raise ManifestError(f"manifest fields: missing {missing}, unknown {unknown}")
        config = cls(**data)
        if verify_hash and data.get("build_hash") and data["build_hash"] != config.structural_hash():
            raise ManifestError(
                f"overlay {config.name!r}: build_hash {data['build_hash']} does not match its parameters "
                f"({config.structural_hash()}); the manifest was edited without rebuilding"
            )
        return config

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "OverlayConfig":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def bitstreams_dir() -> Path:
    """The installed ``bitstreams/`` folder (``autoq.bitstreams``)."""
    return Path(str(resources.files("autoq.bitstreams")))


def load_overlay(name: str = DEFAULT_OVERLAY) -> OverlayConfig:
    """Load ``bitstreams/<name>/manifest.json``, or a manifest at a path if ``name`` is one."""
    path = Path(name)
    if path.suffix == ".json" or path.is_dir():
        return OverlayConfig.load(path / "manifest.json" if path.is_dir() else path)
    manifest = bitstreams_dir() / name / "manifest.json"
    if not manifest.exists():
        known = sorted(p.name for p in bitstreams_dir().iterdir() if (p / "manifest.json").exists())
        raise ManifestError(f"no overlay named {name!r}; known overlays: {known}")
    return OverlayConfig.load(manifest)
