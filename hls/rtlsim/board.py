"""The board service on the cycle-accurate RTL simulation: ``rtlsim_factory`` opens ``EngineSession``s whose driver
is ``BusEngine`` over an ``RtlSimDevice`` running the Verilog of ``autoq.hls.rtl`` for the loaded overlay.

Latency comes from the RTL's own cycle counters (register map v2: ``cycles_total`` is a real count from start to
done, the stages' counters are their active cycles), never from the schedule model; time is the simulated time of
the device. The simulation has no power model, so a session has no sensors and measures latency only. The RTL
needs a ``regmap_version`` 2 manifest: the bundled ``rtl_small`` (a 2x2x64 array, the default: it builds in about
a minute and simulates fast) and ``pynq_z1`` (the 8x8x128 PYNQ-Z1 build).

Generating the Verilog (Amaranth) of a large array takes a while, so ``engine_verilog`` caches the text on disk,
keyed by the manifest and the RTL's sources; Verilator builds are cached by ``builder.build``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from autoq.overlay.board import (
    Board,
    BoardError,
    BitstreamRegistry,
    EngineFactory,
    EngineSession,
    OverlayBuild,
    RequestLimits,
)
from autoq.overlay.driver import BusEngine
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.measure import Clock, MeasureSettings

from .builder import cache_root
from .device import RtlSimDevice
from .memory import HPPortModel

DEFAULT_RTL_OVERLAY = "rtl_small"
"""The overlay ``rtlsim`` backends and ``autoq board serve --rtlsim`` load by default: the 2x2x64 array, whose
Verilator build takes about a minute and simulates ~400k cycles/s. ``pynq_z1`` (the 8x8x128 PYNQ-Z1 build)
takes ~5 minutes to generate and build and simulates ~20-30k cycles/s."""
ARENA_BYTES = 1 << 30
RUN_TIMEOUT_S = 3600.0  # wall-clock bound on one simulated layer run (the driver's poll loop)

RTLSIM_SETTINGS = MeasureSettings(warmup_runs=0, min_runs=1, min_window_s=0.0, idle_window_s=0.0, sample_period_s=0.01)
"""The simulation is deterministic and has no power sensor: one run per measurement gives the cycle counts."""


def rtl_sources_digest() -> str:
    """Hash of the RTL generator's sources (``autoq.hls.rtl``) and the Amaranth version."""
    import amaranth

    from autoq.hls import rtl

    digest = hashlib.sha256(str(getattr(amaranth, "__version__", "")).encode() + b"\0")
    for path in sorted(Path(rtl.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def engine_verilog(config: OverlayConfig, cache: Path | None = None) -> str:
    """The Verilog of the RTL engine for ``config``, generated once per (manifest, RTL sources) and cached."""
    try:
        from autoq.hls.rtl.engine import check_rtl_overlay, verilog
    except ImportError as exc:
        raise BoardError(f"the RTL simulation needs Amaranth to generate the engine's Verilog: {exc}; "
                         "pip install amaranth") from None
    check_rtl_overlay(config)
    key = hashlib.sha256(f"{config.structural_hash()}\0{rtl_sources_digest()}".encode()).hexdigest()[:20]
    path = (cache or cache_root()) / "verilog" / f"{config.build_hash}-{key}.v"
    if path.is_file():
        return path.read_text()
    text = verilog(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)  # atomic: concurrent generators end with one complete file
    return text


def describe_memory(memory: HPPortModel) -> str:
    return (f"HP port read latency {memory.read_latency} cycles, write latency {memory.write_latency} cycles, "
            f"{memory.read_outstanding}/{memory.write_outstanding} outstanding read/write bursts, "
            f"{memory.bandwidth:g} B/cycle each way")


def rtlsim_factory(memory: HPPortModel = HPPortModel(), cache: Path | None = None, arena_bytes: int = ARENA_BYTES,
                   timeout_s: float = RUN_TIMEOUT_S) -> EngineFactory:
    """Engines on the Verilator simulation of the RTL for each loaded overlay, over an HP port with ``memory``
    timing; cycle counters are the RTL's own, time is simulated, no power sensor. ``cache``: build cache folder
    (default ``builder.cache_root()``)."""

    def open_engine(build: OverlayBuild) -> EngineSession:
        text = engine_verilog(build.config, cache)
        device = RtlSimDevice(build.config, text, memory, arena_bytes=arena_bytes, cache=cache)
        try:
            driver = BusEngine(device, device.allocate, timeout_s=timeout_s)
            driver.attach(build.config)
        except BaseException:
            device.close()
            raise
        return EngineSession(
            driver, [], Clock(device.now, device.idle, "simulated"),
            f"RTL simulation: Verilator {device.build.key} of the Amaranth engine for overlay {build.name!r}, cycle "
            f"counters from the RTL; {describe_memory(memory)}",
            device.close,
        )

    return open_engine


def rtlsim_board(overlay: str = DEFAULT_RTL_OVERLAY, memory: HPPortModel = HPPortModel(),
                 registry: BitstreamRegistry | None = None, settings: MeasureSettings = RTLSIM_SETTINGS,
                 cache: Path | None = None, arena_bytes: int = ARENA_BYTES) -> Board:
    """The board service on the RTL simulation, labelled ``rtlsim``. DDR requests are limited to half the arena
    (its power-of-two blocks may take up to twice what a buffer needs)."""
    limits = RequestLimits(max_ddr_bytes=arena_bytes // 2)
    return Board(rtlsim_factory(memory, cache, arena_bytes), "rtlsim", overlay, registry, settings, limits=limits)
