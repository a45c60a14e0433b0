"""The board-side service: one engine (real or emulated), its bitstream registry, sensors, and the measurement of
a plan's layers. ``autoq board serve`` serves it over the wire; the in-process ``emulated`` backend calls it
directly, so both run the same code.

Bitstreams are loaded only by name from the board's own ``bitstreams/`` folder, never uploaded. A build folder
``bitstreams/<name>/`` holds ``manifest.json`` (self-checked by its build hash) and, once built, ``<name>.bit`` and
``<name>.hwh``, each of which must be listed with its SHA-256 in ``checksums.sha256`` (``sha256sum`` format) and
match it. A measure request is bounded by ``RequestLimits`` (layers, batch, per-layer sizes, DDR bytes) and its
geometry checked before anything is allocated; a failed measurement frees every buffer it allocated. Imports numpy
and the board-side modules only; pynq only when a real bitstream is loaded.
"""
from __future__ import annotations

import hashlib
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from autoq.overlay.calibration_params import CalibrationParams, load_default_calibration
from autoq.common.errors import AutoQError, SpecError
from autoq.common.measurement import LayerCost, Measurement, Provenance
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import MAX_BITS, QuantPlan

from .driver import BusEngine, EngineDriver
from .emulated import EmulatedEngine, EmulatedPowerSensor
from .layout import TimingShape, timing_shape
from .manifest import DEFAULT_OVERLAY, ManifestError, OverlayConfig, bitstreams_dir
from .measure import Clock, MeasureSettings, ProtocolResult, RunRecord, run_protocol
from .protocol import ProtocolError
from .regmap import RegisterMap
from .resources import estimate
from .sensors.base import Sensor

CHECKSUMS = "checksums.sha256"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BoardError(AutoQError, RuntimeError):
    """The board cannot measure as asked (no pynq, no engine in the bitstream, ...)."""


class BitstreamError(ProtocolError):
    """A named overlay is unknown, or one of its files fails its checksum (``code`` says which)."""


class LimitError(ProtocolError):
    """A measure request asks for more work than ``RequestLimits`` allow (code ``bad_request``)."""

    def __init__(self, message: str):
        super().__init__("bad_request", message)


@dataclass(frozen=True)
class RequestLimits:
    """The most work one measure request may ask for; ``Board.measure`` checks them before it allocates anything.

    The defaults take the built-in models (ResNet-50: 54 layers, 2,048 channels, 224x224 input, 1.1 GiB of DDR
    buffers at batch 16 and 8 bits; MobileNetV2: 1.8 GiB) with room, and refuse absurd requests. ``max_window``
    bounds kernel, stride and padding; ``max_spatial`` input and output heights and widths. Every per-field limit
    must fit the descriptor register it bounds (``check_registers``).
    """

    max_layers: int = 1024
    max_batch: int = 256
    max_channels: int = 1 << 16
    max_spatial: int = 1 << 14
    max_window: int = 64
    max_ddr_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BoardError(f"request limit {name} must be a positive int, got {value!r}")

    def descriptor_bounds(self) -> dict[str, int]:
        """The largest value each descriptor register can get from a request within these limits."""
        bounds = dict.fromkeys(("c_in", "c_out", "groups", "num_tiles"), self.max_channels)
        bounds.update(dict.fromkeys(("kh", "kw", "stride_h", "stride_w", "pad_h", "pad_w"), self.max_window))
        bounds.update(dict.fromkeys(("in_h", "in_w", "out_h", "out_w"), self.max_spatial))
        return {**bounds, "batch": self.max_batch, "abits": MAX_BITS}

    def check_registers(self, regmap: RegisterMap) -> None:
        """``BoardError`` unless every value these limits admit fits its descriptor register of ``regmap``."""
        for reg in regmap.section("descriptor"):
            bound = self.descriptor_bounds().get(reg.name)
            if bound is None or bound >= 1 << reg.width:
                raise BoardError(f"request limits admit {reg.name} up to {bound}, its register has {reg.width} bits")

    def check_request(self, network: NetworkSpec, batch: int) -> None:
        """``LimitError`` naming the limit and the value when ``network`` at ``batch`` asks for too much;
        ``SpecError`` when a layer's geometry is inconsistent (``check_geometry``)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise LimitError(f"batch must be a positive int, got {batch!r}")
        if batch > self.max_batch:
            raise LimitError(f"batch {batch} exceeds the limit max_batch={self.max_batch}")
        if len(network) > self.max_layers:
            raise LimitError(f"network {network.name!r} has {len(network)} layers, the limit is max_layers={self.max_layers}")
        for layer in network.layers:
            for limit, fields in (("max_channels", ("c_in", "c_out")), ("max_window", ("kernel", "stride", "padding")),
                                  ("max_spatial", ("in_hw", "out_hw"))):
                bound = getattr(self, limit)
                for name in fields:
                    value = getattr(layer, name)
                    if (max(value) if isinstance(value, tuple) else value) > bound:
                        raise LimitError(f"layer {layer.name!r}: {name}={value} exceeds the limit {limit}={bound}")
            check_geometry(layer)

    def check_ddr(self, shapes: Sequence[TimingShape]) -> None:
        total = sum(shape.nbytes for shape in shapes)
        if total > self.max_ddr_bytes:
            raise LimitError(f"the request needs {total} bytes of DDR buffers, the limit is max_ddr_bytes={self.max_ddr_bytes}")


def check_geometry(layer: LayerSpec) -> None:
    """``SpecError`` unless ``layer.out_hw`` can follow from its input size, kernel, stride and padding.

    ``LayerSpec`` keeps the leading padding only and no dilation, so this is a bound, not an equation: dilation
    shrinks the output and the trailing padding of a "same" convolution may exceed the leading one by one, so a
    consistent layer has ``1 <= out <= (in + 2 * pad + 1 - kernel) // stride + 1`` along each axis.
    """
    largest = tuple((i + 2 * p + 1 - k) // s + 1 for i, p, k, s in zip(layer.in_hw, layer.padding, layer.kernel, layer.stride))
    if min(largest) < 1:
        raise SpecError(f"layer {layer.name!r}: a {layer.kernel} kernel with padding {layer.padding} does not fit its "
                        f"{layer.in_hw} input")
    if any(o > m for o, m in zip(layer.out_hw, largest)):
        raise SpecError(f"layer {layer.name!r}: out_hw={layer.out_hw} is larger than in_hw={layer.in_hw}, kernel="
                        f"{layer.kernel}, stride={layer.stride} and padding={layer.padding} allow: at most {largest}")


@dataclass(frozen=True)
class OverlayBuild:
    """One verified build folder: its manifest and, when built, its bitstream and hardware handoff files."""

    name: str
    config: OverlayConfig
    folder: Path
    bitstream: Path | None
    hwh: Path | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BitstreamRegistry:
    """The overlays under one ``bitstreams/`` folder, by name."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else bitstreams_dir()

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/manifest.json"))

    def resolve(self, name: str) -> OverlayBuild:
        """The verified build ``name``; unknown names, bad manifests and checksum mismatches raise ``BitstreamError``."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise BitstreamError("unknown_overlay", f"overlay name {name!r} is not a plain name (letters, digits, _ . -)")
        folder = self.root / name
        if not (folder / "manifest.json").is_file():
            raise BitstreamError("unknown_overlay", f"no overlay named {name!r} in {self.root}; known: {self.names()}")
        try:
            config = OverlayConfig.load(folder / "manifest.json")
        except ManifestError as exc:
            raise BitstreamError("checksum_mismatch", f"overlay {name!r}: {exc}") from None
        built = {suffix: folder / f"{name}{suffix}" for suffix in (".bit", ".hwh")}
        present = {suffix: path for suffix, path in built.items() if path.is_file()}
        if present:
            self._verify(name, folder, list(present.values()))
        if ".bit" in present and ".hwh" not in present:
            raise BitstreamError("checksum_mismatch", f"overlay {name!r}: {name}.bit has no {name}.hwh next to it")
        return OverlayBuild(name, config, folder, present.get(".bit"), present.get(".hwh"))

    def _verify(self, name: str, folder: Path, files: Sequence[Path]) -> None:
        listing = folder / CHECKSUMS
        if not listing.is_file():
            raise BitstreamError("checksum_mismatch", f"overlay {name!r} has no {CHECKSUMS}: refusing unverified bitstream files")
        recorded: dict[str, str] = {}
        for line in listing.read_text().splitlines():
            if line.strip():
                digest, _, filename = line.strip().partition(" ")
                recorded[filename.strip().lstrip("*")] = digest.lower()
        for path in files:
            if path.name not in recorded:
                raise BitstreamError("checksum_mismatch", f"overlay {name!r}: {path.name} is not listed in {CHECKSUMS}")
            actual = _sha256(path)
            if actual != recorded[path.name]:
                raise BitstreamError(
                    "checksum_mismatch",
                    f"overlay {name!r}: {path.name} has SHA-256 {actual[:16]}..., {CHECKSUMS} says {recorded[path.name][:16]}...",
                )


@dataclass
class EngineSession:
    """An attached engine with the sensors and time base that go with it."""

    driver: EngineDriver
    sensors: list[Sensor]
    clock: Clock
    detail: str
    close: Callable[[], None] = lambda: None
    calibration_id: str = ""
    calibrated: bool = True


EngineFactory = Callable[[OverlayBuild], EngineSession]


def emulated_factory(calibration: CalibrationParams | None = None, compute: bool = False,
                     ddr_bytes: int | None = None) -> EngineFactory:
    """Engines on the emulated device: cycle counters from the schedule, power from the analytic energy model of
    ``calibration`` (default: the bundled one), virtual time; ``ddr_bytes`` bounds its DDR (default: unbounded)."""

    def open_engine(build: OverlayBuild) -> EngineSession:
        params = calibration or load_default_calibration()
        device = EmulatedEngine(build.config, params, compute=compute, ddr_bytes=ddr_bytes)
        driver = BusEngine(device, device.allocate)
        driver.attach(build.config)
        what = "bit-exact reference engine on the data" if compute else "timing only, data path not run"
        return EngineSession(
            driver, [EmulatedPowerSensor(device)], Clock(device.now, device.idle),
            f"emulated device: cycle counters from the schedule model ({what}); power from the analytic energy model "
            f"of calibration {params.id!r}",
            device.ddr.release,
            params.id,
            params.calibrated,
        )

    return open_engine


def pynq_factory(sensors: Sequence[Sensor] = ()) -> EngineFactory:
    """Engines on the FPGA through pynq: the build's bitstream is downloaded and its engine IP attached."""

    def open_engine(build: OverlayBuild) -> EngineSession:
        try:
            import pynq
        except ImportError:
            raise BoardError("pynq is not installed here: run on a PYNQ board image, or serve with --emulate") from None
        if build.bitstream is None:
            raise BitstreamError("unknown_overlay", f"overlay {build.name!r} has no {build.name}.bit built yet in {build.folder}")
        overlay = pynq.Overlay(str(build.bitstream))
        names = [name for name, ip in overlay.ip_dict.items() if ip.get("type") == build.config.vlnv]
        if len(names) != 1:
            raise BoardError(f"bitstream {build.bitstream.name} has {len(names)} engines of type {build.config.vlnv}, expected 1")
        driver = getattr(overlay, names[0])
        if not isinstance(driver, EngineDriver):
            raise BoardError(f"pynq bound {type(driver).__name__} to {build.config.vlnv}, not the bit-serial engine driver")
        driver.attach(build.config)
        return EngineSession(driver, list(sensors), Clock(), f"FPGA engine {names[0]} of {build.bitstream.name}")

    return open_engine


EMULATED_SETTINGS = MeasureSettings(warmup_runs=1, min_runs=3, min_window_s=0.0, idle_window_s=0.05, sample_period_s=0.01)
"""The emulated device is deterministic and its sensor exact: a few runs cover it."""


class Board:
    """The board-side service the daemon and the ``emulated`` backend call: info, load_overlay, measure."""

    def __init__(self, factory: EngineFactory, source: str, overlay: str = DEFAULT_OVERLAY,
                 registry: BitstreamRegistry | None = None, settings: MeasureSettings = MeasureSettings(),
                 board_id: str | None = None, limits: RequestLimits = RequestLimits()):
        self.factory, self.source, self.settings, self.limits = factory, source, settings, limits
        self.registry = registry or BitstreamRegistry()
        self.board_id = board_id or f"{source}@{platform.node() or 'localhost'}"
        self.build: OverlayBuild | None = None
        self.session: EngineSession | None = None
        self.load_overlay(overlay)

    @classmethod
    def emulated(cls, overlay: str = DEFAULT_OVERLAY, calibration: CalibrationParams | None = None,
                 registry: BitstreamRegistry | None = None, settings: MeasureSettings = EMULATED_SETTINGS,
                 limits: RequestLimits = RequestLimits()) -> "Board":
        return cls(emulated_factory(calibration), "emulated", overlay, registry, settings, limits=limits)

    # -- requests ------------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        session, build = self._session(), self.build
        return {
            "source": self.source,
            "board_id": self.board_id,
            "overlay": build.config.to_dict(),
            "bitstream": build.bitstream.name if build.bitstream else None,
            "overlays": self.registry.names(),
            "hardware": dict(session.driver.hardware.values) if session.driver.hardware else {},
            "sensors": [{"name": s.name, "kind": getattr(s, "kind", type(s).__name__)} for s in session.sensors],
            "measures": ["latency", "resources"] + (["energy", "power"] if session.sensors else []),
            "settings": asdict(self.settings),
            "detail": session.detail,
        }

    def load_overlay(self, name: str) -> dict[str, Any]:
        """Load ``name`` from the registry (verified) and attach its engine; the previous one is closed."""
        build = self.registry.resolve(name)
        self.limits.check_registers(RegisterMap.from_overlay(build.config))
        session = self.factory(build)
        if self.session is not None:
            self.session.close()
        self.build, self.session = build, session
        return {"overlay": build.config.to_dict(), "bitstream": build.bitstream.name if build.bitstream else None}

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        """Run every layer of ``plan`` on the engine under the measurement protocol.

        The request is checked against ``limits`` (``LimitError``) and its geometry (``SpecError``) before any
        buffer is allocated; whatever was allocated is freed again however the measurement ends.
        """
        plan.check(network)
        session, config = self._session(), self.build.config
        driver = session.driver
        self.limits.check_request(network, batch)
        shapes = [timing_shape(layer, lp.weight_bits, lp.act_bits, config, batch)
                  for layer, lp in zip(network.layers, plan.layers)]
        self.limits.check_ddr(shapes)
        prepared = []
        try:
            for shape in shapes:
                prepared.append(driver.prepare(shape.job()))

            def run_once() -> RunRecord:
                counters = [driver.run(p) for p in prepared]
                return RunRecord(sum(c.total for c in counters) / config.clock_hz, counters)

            result = run_protocol(run_once, session.sensors, self.settings, session.clock)
        finally:
            for p in prepared:
                driver.release(p)
        return self._assemble(network, plan, batch, result, session)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # -- helpers -------------------------------------------------------------------------------------------------
    def _session(self) -> EngineSession:
        if self.session is None or self.build is None:
            raise BoardError("no overlay is loaded")
        return self.session

    def _assemble(self, network: NetworkSpec, plan: QuantPlan, batch: int, result: ProtocolResult,
                  session: EngineSession) -> Measurement:
        """Per-layer medians of the cycle counters; energy = idle + idle-subtracted (dynamic) power over latency."""
        config = self.build.config
        latency = result.latency.median
        dynamic_j = result.energy_per_inference_j
        idle_w = result.idle_power
        layers = []
        for i, layer in enumerate(network.layers):
            runs = np.array([[c.fetch, c.execute, c.result, c.total] for c in (r.detail[i] for r in result.runs)])
            fetch, execute, res, total = (int(v) for v in np.median(runs, axis=0))
            stages = {"fetch": fetch, "execute": execute, "result": res}
            seconds = total / config.clock_hz
            share = seconds / latency if latency > 0 else 0.0
            layers.append(LayerCost(
                layer.name, seconds, idle_w * seconds + dynamic_j * share, max(stages, key=stages.get),
                {**stages, "overhead": total - max(stages.values()), "total": total},
            ))
        samples = result.samples()
        samples["dynamic_energy_j"] = [dynamic_j]
        measured_power = bool(session.sensors)
        return Measurement(
            network_hash=network.hash,
            plan_hash=plan.hash,
            batch=batch,
            latency_s=latency,
            energy_j=idle_w * latency + dynamic_j if measured_power else 0.0,
            avg_power_w=result.avg_power,
            idle_power_w=idle_w,
            layers=tuple(layers),
            provenance=Provenance(
                source=self.source,
                overlay_build_hash=session.driver.hardware.build_hash,
                board_id=self.board_id,
                calibration_id=session.calibration_id,
                calibrated=session.calibrated,
                detail=f"{session.detail}; {result.summary()}"
                + ("" if measured_power else "; no power sensor: energy and power not measured"),
            ),
            resources=estimate(config).to_dict(),
            samples=samples,
        )


def open_board(emulate: bool, overlay: str = DEFAULT_OVERLAY, sensors: Sequence[Sensor] = ()) -> Board:
    """The board ``autoq board serve`` serves: the emulated device, or the FPGA through pynq."""
    if emulate:
        return Board.emulated(overlay)
    return Board(pynq_factory(sensors), "board", overlay)
