"""Driver of the bit-serial engine: registers by name (``regmap``), DDR buffers, start, wait, cycle counters.

``EngineDriver`` holds the logic over three primitives (32-bit register read/write and buffer allocation).
Two concrete drivers share it:

- ``BitSerialEngine``: a ``pynq.DefaultIP`` bound to the engine's VLNV (``pynq.Overlay`` instantiates it on the
  board; tests build it from a description dict); registers through pynq's ``MMIO``, buffers from
  ``pynq.allocate`` on the IP's device. Defined only where pynq imports.
- ``BusEngine``: the same logic over any object with ``read(offset)``/``write(offset, value)`` and
  ``allocate(shape, dtype)`` (the emulated device, without pynq).

A layer run is a ``LayerJob`` (``layout.build_job`` packs one): descriptor register values plus the contents of
the four DDR buffers; the driver only moves them.

Imports numpy and the board-side modules only; pynq is optional.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from autoq.common.errors import AutoQError

from .manifest import ManifestError, OverlayConfig, bitstreams_dir
from .regmap import (
    AP_DONE,
    AP_IDLE,
    AP_START,
    CMD_IDENTIFY,
    CMD_RUN,
    MAGIC,
    RegisterMap,
    Status,
    rejection_reason,
)

BUFFERS = ("weights", "activations", "results", "tiles")
COUNTERS = ("cycles_fetch", "cycles_execute", "cycles_result", "cycles_total")
STALL_COUNTERS = ("stall_fetch", "stall_execute", "stall_result")
"""Cycles each stage waited on the last run."""


class DriverError(AutoQError, RuntimeError):
    """The engine did not respond as expected (timeout, not idle, wrong ID block, a run it rejected)."""


class Counters(NamedTuple):
    """Cycle counters of one run, as the engine reports them; ``stalls`` maps ``STALL_COUNTERS`` names to their
    values."""

    fetch: int
    execute: int
    result: int
    total: int
    stalls: Mapping[str, int]


@dataclass(frozen=True)
class HardwareConfig:
    """What the engine's read-only ID block reports."""

    magic: int
    regmap_version: int
    values: dict[str, int]

    @property
    def build_hash(self) -> str:
        return f"{(self.values['build_hash_hi'] << 32) | self.values['build_hash_lo']:016x}"


class EngineDriver:
    """Engine logic over ``_read32``/``_write32``/``_allocate``; call ``attach(manifest)`` before running layers.

    Registers are addressed by name (``read_register``/``write_register``; pynq's ``DefaultIP`` keeps ``read``
    and ``write`` for raw offsets)."""

    timeout_s: float = 5.0
    poll_s: float = 1e-4
    overlay: OverlayConfig | None = None
    hardware: HardwareConfig | None = None
    _regs: RegisterMap | None = None

    # -- primitives (supplied by subclasses) ---------------------------------------------------------------------
    def _read32(self, offset: int) -> int:
        raise NotImplementedError

    def _write32(self, offset: int, value: int) -> None:
        raise NotImplementedError

    def _allocate(self, shape: tuple[int, ...], dtype: Any) -> Any:
        raise NotImplementedError

    # -- registers by name ---------------------------------------------------------------------------------------
    @property
    def registers(self) -> RegisterMap:
        if self._regs is None:
            raise DriverError("engine driver has no register map yet: call attach(manifest) first")
        return self._regs

    def read_register(self, name: str) -> int:
        reg = self.registers[name]
        return reg.join([self._read32(offset) for offset in reg.word_offsets])

    def write_register(self, name: str, value: int) -> None:
        reg = self.registers[name]
        if reg.access == "ro":
            raise DriverError(f"register {name} is read-only")
        for offset, word in zip(reg.word_offsets, reg.split(int(value))):
            self._write32(offset, word)

    # -- control -------------------------------------------------------------------------------------------------
    def _start_and_wait(self, what: str) -> None:
        control = self.read_register("control")
        if not control & AP_IDLE:
            raise DriverError(f"{what}: engine is not idle (control={control:#x}); another run is still going")
        self.write_register("control", AP_START)
        deadline = time.monotonic() + self.timeout_s
        while True:
            control = self.read_register("control")
            if control & AP_DONE or (control & AP_IDLE and not control & AP_START):
                return
            if time.monotonic() > deadline:
                raise DriverError(f"{what}: engine did not finish within {self.timeout_s:g} s (control={control:#x})")
            time.sleep(self.poll_s)

    def attach(self, manifest: OverlayConfig) -> HardwareConfig:
        """Identify the engine and refuse it unless its ID block matches ``manifest`` (build hash included)."""
        self._regs = RegisterMap.from_overlay(manifest)
        self.write_register("command", CMD_IDENTIFY)
        self._start_and_wait("identify")
        magic = self.read_register("magic")
        if magic != MAGIC:
            self._regs = None
            raise DriverError(f"no bit-serial engine answers here: magic {magic:#010x}, expected {MAGIC:#010x}")
        version = self.read_register("regmap_version")
        values = {reg.name: self.read_register(reg.name) for reg in self.registers.section("id")}
        hardware = HardwareConfig(magic, version, values)
        expected = self.registers.id_values
        mismatched = [f"{k} {values[k]} != {expected[k]}" for k in values if k in expected and values[k] != expected[k]]
        if version != manifest.regmap_version or hardware.build_hash != manifest.build_hash or mismatched:
            self._regs = None
            raise ManifestError(
                f"bitstream does not match manifest {manifest.name!r}: it reports build hash {hardware.build_hash}, "
                f"register map v{version}; the manifest says {manifest.build_hash}, v{manifest.regmap_version}"
                + (f" ({'; '.join(mismatched)})" if mismatched else "") + ". Refusing to use it."
            )
        self.overlay, self.hardware = manifest, hardware
        return hardware

    # -- layers --------------------------------------------------------------------------------------------------
    def prepare(self, job: LayerJob) -> "PreparedLayer":
        """Allocate the job's DDR buffers and copy its contents in (flushed for the engine to read)."""
        if self.overlay is None:
            raise DriverError("engine is not attached: call attach(manifest) first")
        missing = [name for name in BUFFERS if name not in job.buffers]
        if missing:
            raise DriverError(f"layer {job.name!r}: job lacks buffers {missing}")
        buffers = {}
        try:
            for name in BUFFERS:
                data = np.ascontiguousarray(job.buffers[name])
                buffers[name] = buffer = self._allocate(data.shape, data.dtype)
                buffer[...] = data
                buffer.flush()
        except BaseException:  # free what this layer got before the failure
            for buffer in buffers.values():
                buffer.freebuffer()
            raise
        return PreparedLayer(job, buffers)

    def run(self, prepared: "PreparedLayer") -> Counters:
        """Write the layer's descriptor and buffer addresses, run it, check its status, read its cycle counters."""
        job = prepared.job
        for name, value in job.descriptor.items():
            self.write_register(name, value)
        for name in BUFFERS:
            self.write_register(f"{name}_addr", prepared.buffers[name].device_address)
        self.write_register("command", CMD_RUN)
        self._start_and_wait(f"layer {job.name!r}")
        status = self.read_register("status")
        if status != Status.OK:
            raise DriverError(f"layer {job.name!r}: the engine rejected the run: {rejection_reason(status)}")
        stalls = {name: self.read_register(name) for name in STALL_COUNTERS}
        fetch, execute, result, total = (self.read_register(name) for name in COUNTERS)
        return Counters(fetch, execute, result, total, stalls)

    def host_loop(self, seconds: float, clock: Any) -> None:
        """The host side of a run without engine work, for ``seconds`` of ``clock``: the engine started on an empty
        job (identify: no DDR traffic), then its control register polled every ``poll_s`` as ``run`` polls it.
        The measurement protocol takes the idle power baseline with this running."""
        end = clock.now() + seconds
        self.write_register("command", CMD_IDENTIFY)
        self._start_and_wait("idle host loop")
        while clock.now() < end:
            self.read_register("control")
            clock.sleep(self.poll_s)

    def release(self, prepared: "PreparedLayer") -> None:
        """Free the job's DDR buffers."""
        for buffer in prepared.buffers.values():
            buffer.freebuffer()

    def results(self, prepared: "PreparedLayer") -> np.ndarray:
        """The layer's int32 result buffer after ``run`` (its layout is the job's)."""
        buffer = prepared.buffers["results"]
        buffer.invalidate()
        return np.array(buffer, dtype=np.int32)


@dataclass(frozen=True)
class LayerJob:
    """What one layer run needs: descriptor register values and the contents of each DDR buffer (``BUFFERS``)."""

    name: str
    descriptor: Mapping[str, int]
    buffers: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PreparedLayer:
    job: LayerJob
    buffers: dict[str, Any]


class BusEngine(EngineDriver):
    """``EngineDriver`` over a plain register bus and allocator (the emulated device, or any test bus)."""

    def __init__(self, bus: Any, allocate: Callable[[tuple[int, ...], Any], Any], timeout_s: float = 5.0):
        self._bus, self._alloc, self.timeout_s = bus, allocate, timeout_s

    def _read32(self, offset: int) -> int:
        return int(self._bus.read(offset))

    def _write32(self, offset: int, value: int) -> None:
        self._bus.write(offset, value)

    def _allocate(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self._alloc(shape, dtype)


def known_vlnvs() -> list[str]:
    """VLNVs of every overlay in ``bitstreams/`` whose manifest loads (what ``BitSerialEngine`` binds to)."""
    found = set()
    for manifest in sorted(bitstreams_dir().glob("*/manifest.json")):
        try:
            found.add(OverlayConfig.load(manifest).vlnv)
        except ManifestError:
            continue
    return sorted(found)


try:
    with warnings.catch_warnings():  # off the board pynq warns that it finds no device and no supported CPU
        warnings.simplefilter("ignore")
        import pynq
except ImportError:  # workstation without pynq: BusEngine over the emulated device still works
    pynq = None

if pynq is not None:

    class BitSerialEngine(pynq.DefaultIP, EngineDriver):
        """The engine as a pynq IP driver; ``pynq.Overlay`` binds it by VLNV. Call ``attach(manifest)`` next."""

        bindto = known_vlnvs()

        def __init__(self, description: dict[str, Any]):
            super().__init__(description)

        def _read32(self, offset: int) -> int:
            return int(self.mmio.read(offset))

        def _write32(self, offset: int, value: int) -> None:
            self.mmio.write(offset, int(value))

        def _allocate(self, shape: tuple[int, ...], dtype: Any) -> Any:
            return pynq.allocate(shape, dtype, target=self.device)
