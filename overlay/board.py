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

from autoq.overlay.calibration_params import (CalibrationError, CalibrationParams, default_calibration_path,
                                              load_default_calibration)
from autoq.common.errors import AutoQError, SpecError
from autoq.common.measurement import LATENCY_FIGURES, POWER_FIGURES, LayerCost, Measurement, Provenance, Source
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import MAX_BITS, QuantPlan

from .driver import BusEngine, EngineDriver
from .emulated import EmulatedEngine, EmulatedPowerSensor
from .globaltimer import PYNQ_Z1_TIMER_HZ, TimerError, open_global_timer
from .layout import TimingShape, timing_shape
from .manifest import DEFAULT_OVERLAY, ManifestError, OverlayConfig, bitstreams_dir
from .measure import Clock, MeasureSettings, ProtocolResult, RunRecord, run_protocol
from .protocol import ProtocolError
from .regmap import RegisterMap
from .resources import estimate
from .schedule import layer_cycles
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
    """An attached engine with the sensors and time base that go with it.

    ``model_timing``: its cycle counters come from the schedule model (the emulated device), so latency is
    predicted by calibration ``calibration_id``; ``model_power``: its power sensors report the analytic energy
    model. ``timer``: a second clock read around each run (the Zynq's global timer, ``globaltimer``), or None.
    """

    driver: EngineDriver
    sensors: list[Sensor]
    clock: Clock
    detail: str
    close: Callable[[], None] = lambda: None
    calibration_id: str = ""
    calibrated: bool = True
    model_timing: bool = False
    model_power: bool = False
    timer: Any = None


EngineFactory = Callable[[OverlayBuild], EngineSession]


def _bundled_calibration(overlay: str) -> CalibrationParams:
    """``overlay``'s bundled calibration (its timing, e.g. fitted on rtlsim for an RTL overlay), else the default's."""
    if default_calibration_path(overlay).is_file():
        return load_default_calibration(overlay)
    return load_default_calibration()


def emulated_factory(calibration: CalibrationParams | None = None, compute: bool = False,
                     ddr_bytes: int | None = None) -> EngineFactory:
    """Engines on the emulated device: cycle counters from the schedule, power from the analytic energy model of
    ``calibration`` (default: the loaded overlay's bundled one, else the default overlay's), virtual time;
    ``ddr_bytes`` bounds its DDR (default: unbounded)."""

    def open_engine(build: OverlayBuild) -> EngineSession:
        params = calibration or _bundled_calibration(build.config.name)
        device = EmulatedEngine(build.config, params, compute=compute, ddr_bytes=ddr_bytes)
        driver = BusEngine(device, device.allocate)
        driver.attach(build.config)
        what = "bit-exact reference engine on the data" if compute else "timing only, data path not run"
        return EngineSession(
            driver, [EmulatedPowerSensor(device)], Clock(device.now, device.idle, "virtual"),
            f"emulated device: cycle counters from the schedule model ({what}); power from the analytic energy model "
            f"of calibration {params.id!r}; virtual time",
            device.ddr.release,
            params.id,
            params.calibrated,
            model_timing=True,
            model_power=True,
        )

    return open_engine


def pynq_factory(sensors: Sequence[Sensor] = (), timer_hz: float = PYNQ_Z1_TIMER_HZ) -> EngineFactory:
    """Engines on the FPGA through pynq: the build's bitstream is downloaded and its engine IP attached; the
    Cortex-A9's global timer (counting at ``timer_hz``) is read around each run as a cross-check of wall time."""

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
        try:
            timer, timing = open_global_timer(timer_hz), f"global timer at {timer_hz / 1e6:g} MHz read around each run"
        except TimerError as exc:
            timer, timing = None, f"no global timer cross-check ({exc})"
        return EngineSession(driver, list(sensors), Clock(), f"FPGA engine {names[0]} of {build.bitstream.name}; host "
                             f"wall time by time.perf_counter_ns; {timing}", timer=timer)

    return open_engine


EMULATED_SETTINGS = MeasureSettings(warmup_runs=1, min_runs=3, min_window_s=0.0, idle_window_s=0.05, sample_period_s=0.01)
"""The emulated device is deterministic and its sensor exact: a few runs cover it."""


class Board:
    """The board-side service the daemon and the ``emulated`` backend call: info, load_overlay, measure."""

    def __init__(self, factory: EngineFactory, source: Source, overlay: str = DEFAULT_OVERLAY,
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
        session, build = self._loaded()
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
        session, build = self._loaded()
        config = build.config
        driver = session.driver
        self.limits.check_request(network, batch)
        shapes = [timing_shape(layer, lp.weight_bits, lp.act_bits, config, batch)
                  for layer, lp in zip(network.layers, plan.layers)]
        self.limits.check_ddr(shapes)
        prepared = []
        try:
            for shape in shapes:
                prepared.append(driver.prepare(shape.job()))

            clock, timer = session.clock, session.timer

            def run_once() -> RunRecord:
                ticks = timer.ticks() if timer is not None else None
                start = clock.now_ns()
                counters = [driver.run(p) for p in prepared]
                wall_s = (clock.now_ns() - start) / 1e9
                timer_s = timer.elapsed_s(ticks, timer.ticks()) if timer is not None else None
                return RunRecord(sum(c.total for c in counters) / config.clock_hz, counters, wall_s, timer_s)

            result = run_protocol(run_once, session.sensors, self.settings, clock,
                                  host_loop=lambda seconds: driver.host_loop(seconds, clock))
        finally:
            for p in prepared:
                driver.release(p)
        return self._assemble(network, plan, batch, result, session)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # -- helpers -------------------------------------------------------------------------------------------------
    def _loaded(self) -> tuple[EngineSession, OverlayBuild]:
        if self.session is None or self.build is None:
            raise BoardError("no overlay is loaded")
        return self.session, self.build

    def _energy_model(self) -> CalibrationParams:
        """The calibration whose energy model predicts the energy a session does not measure: the loaded
        overlay's bundled ``calibration.json``, else the default overlay's."""
        build = self._loaded()[1]
        problems = []
        for name in dict.fromkeys((build.name, DEFAULT_OVERLAY)):
            try:
                return load_default_calibration(name)
            except CalibrationError as exc:
                problems.append(str(exc))
        raise BoardError(f"no calibration to predict unmeasured energy for overlay {build.name!r}: {'; '.join(problems)}")

    def _assemble(self, network: NetworkSpec, plan: QuantPlan, batch: int, result: ProtocolResult,
                  session: EngineSession) -> Measurement:
        """Per-layer medians of the cycle counters (and of the stall counters when the timing is measured); energy
        measured as ``idle power x latency + dynamic energy`` when the meters resolve it, else predicted by an
        energy model and labelled so."""
        config = self._loaded()[1].config
        latency = result.latency.median
        energy = result.energy()
        idle_w = result.idle_power
        measured: list[str] = []
        predicted: dict[str, str] = {}
        reasons: dict[str, str] = {}
        model = None if session.model_power else self._energy_model()
        model_id = session.calibration_id if model is None else model.id
        if session.model_timing:
            predicted.update(dict.fromkeys(LATENCY_FIGURES, session.calibration_id))
        else:
            measured.extend(LATENCY_FIGURES)
        layers, work = [], []
        for i, (layer, lp) in enumerate(zip(network.layers, plan.layers)):
            counters = [r.detail[i] for r in result.runs]
            runs = np.array([[c.fetch, c.execute, c.result, c.total] for c in counters])
            fetch, execute, res, total = (int(v) for v in np.median(runs, axis=0))
            stages = {"fetch": fetch, "execute": execute, "result": res}
            stalls = {} if session.model_timing else {  # a modelled timing has no stalls to report
                name: int(np.median([c.stalls[name] for c in counters])) for name in counters[0].stalls}
            seconds = total / config.clock_hz
            layers.append((layer.name, seconds, max(stages, key=lambda stage: stages[stage]),
                           {**stages, "overhead": total - max(stages.values()), "total": total, **stalls}))
            if model is not None:
                cycles = layer_cycles(layer, np.asarray(lp.weight_bits), lp.act_bits, config, model.schedule, batch)
                work.append((cycles.binary_ops, cycles.dram_bytes))
        samples = result.samples()
        dynamic_j = energy.dynamic_j
        if session.model_power:  # the model's power: exact, no meter resolution to respect
            dynamic_j = max(energy.dynamic_w, 0.0) * result.window_s / max(len(result.runs), 1)
        if dynamic_j is not None:
            energy_j, avg_w = idle_w * latency + dynamic_j, result.avg_power
            samples["dynamic_energy_j"] = [dynamic_j]
            samples["idle_energy_j"] = [energy.idle_j]
            layer_j = [idle_w * s + dynamic_j * (s / latency if latency > 0 else 0.0) for _, s, _, _ in layers]
            if session.model_power:
                predicted.update(dict.fromkeys(POWER_FIGURES, model_id))
            else:
                measured.extend(f for f in POWER_FIGURES if f != "layers.energy_j")
                predicted["layers.energy_j"] = "measured total apportioned by layer latency"
                reasons["layers.energy_j"] = "one meter measures the whole board: per-layer energy is its share of time"
        else:
            assert model is not None
            layer_j = [float(model.energy.total_j(s, ops, dram)) for (_, s, _, _), (ops, dram) in zip(layers, work)]
            energy_j = float(sum(layer_j))
            reason = energy.reason
            if result.has_sensors:  # the readings are measured; only the energy they imply is not resolved
                measured.extend(("avg_power_w", "idle_power_w"))
                predicted.update(dict.fromkeys(("energy_j", "layers.energy_j"), model_id))
                avg_w = result.avg_power
                samples["idle_energy_j"] = [energy.idle_j]
            else:
                predicted.update(dict.fromkeys(POWER_FIGURES, model_id))
                idle_w = model.energy.idle_power_w
                avg_w = energy_j / latency if latency > 0 else idle_w
            reasons.update(dict.fromkeys((f for f in POWER_FIGURES if f in predicted), reason))
        hardware = session.driver.hardware
        assert hardware is not None  # a session's driver is attached (EngineDriver.attach) before it runs layers
        used_model = model_id in predicted.values()
        calibrated = (session.calibrated if model is None else model.calibrated) if used_model else True
        unmeasured = "" if not reasons else "; not measured: " + "; ".join(
            f"{figure} ({why})" for figure, why in reasons.items() if figure in ("energy_j", "layers.energy_j"))
        return Measurement(
            network_hash=network.hash,
            plan_hash=plan.hash,
            batch=batch,
            latency_s=latency,
            energy_j=energy_j,
            avg_power_w=avg_w,
            idle_power_w=idle_w,
            layers=tuple(LayerCost(name, s, j, bound, cycles) for (name, s, bound, cycles), j in zip(layers, layer_j)),
            provenance=Provenance(
                source=self.source,
                overlay_build_hash=hardware.build_hash,
                board_id=self.board_id,
                calibration_id=model_id if used_model else "",
                calibrated=calibrated,
                detail=f"{session.detail}; {result.summary()}{unmeasured}",
            ),
            resources=estimate(config).to_dict(),
            samples=samples,
            measured=tuple(measured),
            predicted=predicted,
            reasons=reasons,
        )


def open_board(emulate: bool, overlay: str = DEFAULT_OVERLAY, sensors: Sequence[Sensor] = ()) -> Board:
    """The board ``autoq board serve`` serves: the emulated device, or the FPGA through pynq."""
    if emulate:
        return Board.emulated(overlay)
    return Board(pynq_factory(sensors), "board", overlay)
