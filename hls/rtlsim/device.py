"""``RtlSimDevice``: the engine's Verilog under Verilator, presented as the register-level device the driver and
the board service drive (the same duck type as ``overlay.emulated.EmulatedEngine``).

- ``read(offset)`` / ``write(offset, value)`` are real AXI-Lite transactions on the simulated DUT. A write with
  ``AP_START`` to ``control`` marks the engine running; a read of ``control`` while it runs first clocks the model
  until its ``interrupt`` rises (ap_done) or ``poll_cycles`` pass, so the driver's polling loop ends (each poll is
  bounded: a run longer than the driver's ``timeout_s`` worth of polls fails there, raise it for long layers).
  When a run ends, HP-port protocol errors recorded during it raise ``RtlSimError`` (``strict=False``: only
  recorded, see ``bus_errors``).
- ``allocate(shape, dtype)``: numpy views into one uint8 DDR arena (default 256 MiB at ``0x1000_0000``) with a
  ``device_address``; ``flush``/``invalidate`` are no-ops (the arena is what the simulated HP port reads and
  writes, so it is coherent), ``freebuffer`` returns the block. Allocation and free are O(1): blocks come from
  per-power-of-two free lists or a bump pointer, 4 KiB aligned; contents are zeroed on allocation.
- ``now()`` is simulated time: (clock cycles + idle cycles) / the manifest's clock. ``idle(seconds)`` clocks the
  model for at most ``idle_clock_cycles`` of those cycles (so outstanding memory traffic drains) and adds the rest
  as virtual time only: an idle engine has nothing to simulate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.regmap import AP_DONE, AP_IDLE, AP_START, RegisterMap

from .builder import build
from .memory import HPPortModel
from .sim import UNTIL_INTERRUPT, RUN_CYCLES, BusError, MemoryCounters, RtlSim, RtlSimError

DDR_BASE = 0x1000_0000
PAGE = 4096
DEFAULT_ARENA_BYTES = 256 << 20
CONTROL = 0x00


class ArenaBuffer(np.ndarray):
    """A numpy array living in the simulated DDR arena."""

    device_address: int = 0
    arena: "Arena | None" = None

    @property
    def physical_address(self) -> int:  # pynq's name
        return self.device_address

    def flush(self) -> None:
        return None

    def invalidate(self) -> None:
        return None

    def freebuffer(self) -> None:
        if self.arena is not None:
            self.arena.free(self.device_address)
            self.arena = None


class Arena:
    """One contiguous uint8 DDR image at ``base`` with O(1) page-aligned allocation (power-of-two size classes)."""

    def __init__(self, nbytes: int = DEFAULT_ARENA_BYTES, base: int = DDR_BASE):
        if nbytes < PAGE or nbytes % PAGE or base % PAGE or base + nbytes > 1 << 32:
            raise RtlSimError(f"DDR arena of {nbytes} bytes at {base:#x}: size and base must be 4 KiB multiples "
                              "inside the 32-bit address space")
        self.memory = np.zeros(nbytes, dtype=np.uint8)
        self.base = base
        self._next = 0
        self._free: dict[int, list[int]] = {}
        self._live: dict[int, int] = {}  # offset -> size class (bytes)

    @property
    def size(self) -> int:
        return int(self.memory.size)

    def allocate(self, shape: tuple[int, ...] | int, dtype: Any) -> ArenaBuffer:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if not isinstance(shape, int) else int(shape)
        nbytes = max(count * dtype.itemsize, 1)
        block = max(PAGE, 1 << (nbytes - 1).bit_length())
        free = self._free.get(block)
        if free:
            offset = free.pop()
        elif self._next + block <= self.size:
            offset, self._next = self._next, self._next + block
        else:
            in_use = sum(self._live.values())
            raise RtlSimError(f"DDR arena full: {nbytes} bytes requested, {in_use} of {self.size} in use "
                              f"({self.size - self._next} never allocated); make the arena larger")
        self._live[offset] = block
        raw = self.memory[offset:offset + count * dtype.itemsize]
        raw[:] = 0
        buffer = raw.view(dtype).reshape(shape).view(ArenaBuffer)
        buffer.device_address, buffer.arena = self.base + offset, self
        return buffer

    def free(self, address: int) -> None:
        offset = address - self.base
        block = self._live.pop(offset, None)
        if block is None:
            raise RtlSimError(f"free of {address:#x}: not an allocated buffer of this arena")
        self._free.setdefault(block, []).append(offset)

    def bytes_at(self, address: int, nbytes: int) -> np.ndarray:
        """A writable view of ``nbytes`` at device ``address``."""
        offset = address - self.base
        if offset < 0 or offset + nbytes > self.size:
            raise RtlSimError(f"{nbytes} bytes at {address:#x} are outside the DDR arena")
        return self.memory[offset:offset + nbytes]

    def release(self) -> None:
        """Forget every buffer (the memory stays until the arena goes)."""
        self._live.clear()
        self._free.clear()
        self._next = 0


class RtlSimDevice:
    """The DUT of ``verilog`` (top ``bitserial_engine``, the port contract in ``harness/rtlsim.cpp``) for
    ``overlay``'s register map and clock, over a simulated HP port with ``memory`` timing."""

    def __init__(self, overlay: OverlayConfig, verilog: str, memory: HPPortModel | None = None,
                 arena_bytes: int = DEFAULT_ARENA_BYTES, base: int = DDR_BASE, poll_cycles: int = 1_000_000,
                 idle_clock_cycles: int = 10_000, strict: bool = True, cache: Path | None = None,
                 register_span: int | None = None):
        self.overlay, self.memory = overlay, memory or HPPortModel()
        self.poll_cycles, self.idle_clock_cycles, self.strict = int(poll_cycles), int(idle_clock_cycles), strict
        span = register_span or RegisterMap.from_overlay(overlay).span
        self.build = build(verilog, cache)
        self.ddr = Arena(arena_bytes, base)
        self.sim = RtlSim(self.build.library, self.ddr.memory, base, self.memory, span)
        self._running = False
        self._reported = 0  # protocol errors already raised
        self._virtual_cycles = 0
        self.runs = 0

    # -- bus -----------------------------------------------------------------------------------------------------
    def read(self, offset: int) -> int:
        if offset == CONTROL and self._running:
            self.sim.run_until(UNTIL_INTERRUPT, self.poll_cycles)
        value = self.sim.axil_read(offset)
        if offset == CONTROL and self._running and (value & AP_DONE or (value & AP_IDLE and not value & AP_START)):
            self._running = False
            self.runs += 1
            self._check()
        return value

    def write(self, offset: int, value: int) -> None:
        self.sim.axil_write(offset, value)
        if offset == CONTROL and value & AP_START:
            self._running = True

    def allocate(self, shape: tuple[int, ...] | int, dtype: Any) -> ArenaBuffer:
        return self.ddr.allocate(shape, dtype)

    # -- time ----------------------------------------------------------------------------------------------------
    @property
    def cycles(self) -> int:
        """Clock cycles simulated since reset (idle time not clocked is not included)."""
        return self.sim.cycles

    def now(self) -> float:
        return (self.sim.cycles + self._virtual_cycles) / self.overlay.clock_hz

    def idle(self, seconds: float) -> None:
        cycles = int(round(max(float(seconds), 0.0) * self.overlay.clock_hz))
        clocked = self.sim.run_until(RUN_CYCLES, min(cycles, self.idle_clock_cycles))
        self._virtual_cycles += cycles - clocked

    # -- reports -------------------------------------------------------------------------------------------------
    def memory_counters(self) -> MemoryCounters:
        return self.sim.counters()

    def bus_errors(self) -> list[BusError]:
        return self.sim.errors()

    def _check(self) -> None:
        errors = self.sim.errors()
        total = self.sim.counters().errors
        if self.strict and total > self._reported:
            count, new = total - self._reported, errors[self._reported:]
            self._reported = total
            listed = "; ".join(str(e) for e in new[:8]) + (f"; ... ({count - 8} more)" if count > 8 else "")
            raise RtlSimError(f"HP port: {count} protocol error(s) during the run: {listed}")

    def close(self) -> None:
        self.sim.close()
        self.ddr.release()

    def __enter__(self) -> "RtlSimDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
