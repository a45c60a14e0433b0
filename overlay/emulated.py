"""Emulated FPGA: a register-level stand-in for the bit-serial engine, so the driver, the measurement protocol and
the daemon run unchanged on any workstation.

``EmulatedEngine`` answers 32-bit register reads and writes at the ``regmap`` offsets and owns an emulated DDR
(``allocate`` hands out buffers with a ``device_address``; optionally of bounded size, like the board's). Starting it with ``command = CMD_IDENTIFY`` fills the
ID block from the manifest; with ``CMD_RUN`` it reads the layer's descriptor and tile table from its DDR, sets
the cycle counters from the schedule model (``schedule``, with the overlay's calibration: the same model the cost
model uses; the stall counters are not modelled and read 0) and, when ``compute`` is on, runs the bit-exact
reference engine on the buffers and writes the results back.

Time is virtual: each run advances the device clock by its cycles at the manifest's clock, ``idle(s)`` by ``s``.
``EmulatedPowerSensor`` reports the average power over the virtual time since its previous reading from the
analytic energy model (idle watts plus joules per binary op and per DRAM byte of the runs in that interval).
``EmulatedPynqDevice`` wraps the engine as a ``pynq.Device`` (register access + allocation) where pynq imports,
so pynq's own ``MMIO``/``DefaultIP``/``allocate`` drive it. Everything measured here is labelled ``emulated``.
"""
from __future__ import annotations

import bisect
import math
import struct
import warnings
from typing import Any, Sequence

import numpy as np

from autoq.overlay.calibration_params import CalibrationParams
from autoq.common.errors import AutoQError, SpecError
from autoq.common.network import LayerSpec, conv_kind

from .bitserial import BitPlanes, unpack_bitplanes
from .engine import run_layer
from .layout import (
    ROW_TILE_HEADER_WORDS,
    Block,
    operand_layout,
    row_tile_words,
    schedule_blocks,
    stored_weight_bits,
    tile_table,
)
from .manifest import OverlayConfig
from .regmap import (
    AP_DONE,
    AP_IDLE,
    AP_READY,
    AP_START,
    CMD_IDENTIFY,
    CMD_RUN,
    RegisterMap,
    Status,
)
from .schedule import PACKED_GROUPS, LayerCycles, layer_cycles

DDR_BASE = 0x1000_0000
DDR_ALIGN = 4096
CHECKED_LAYERS = 1024  # decoded descriptor/table pairs kept (a plan search revisits the same layers)


class EmulationError(AutoQError, RuntimeError):
    """The emulated device was driven outside what the hardware supports (bad address, unmapped buffer)."""


class _Rejected(Exception):
    """A run the engine refuses; ``status`` is the ``Status`` it reports."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _layer_from_descriptor(d: dict[str, int]) -> LayerSpec:
    try:
        kind = conv_kind(d["c_in"], d["groups"])
        return LayerSpec(
            "layer", kind, d["c_in"], d["c_out"], (d["kh"], d["kw"]), (d["stride_h"], d["stride_w"]),
            (d["pad_h"], d["pad_w"]), d["groups"], (d["in_h"], d["in_w"]), (d["out_h"], d["out_w"]),
        )
    except SpecError:
        raise _Rejected(Status.BAD_DESCRIPTOR) from None


def _channel_bits(raw: np.ndarray, layer: LayerSpec, dm: int, num_tiles: int) -> np.ndarray:
    """Per output channel weight bits from the tile table's row-tile entries (``layout``), each channel once."""
    entries = raw.astype(np.int64).reshape(num_tiles, row_tile_words(dm))
    bits = np.zeros(layer.c_out, dtype=np.int64)
    for entry in entries:
        rows = int(entry[1])
        channels = entry[ROW_TILE_HEADER_WORDS:ROW_TILE_HEADER_WORDS + rows]
        if not 1 <= rows <= dm or channels.max() >= layer.c_out or bits[channels].any():
            raise _Rejected(Status.BAD_TABLE)
        bits[channels] = entry[ROW_TILE_HEADER_WORDS + dm:ROW_TILE_HEADER_WORDS + dm + rows]
    if not bits.all():
        raise _Rejected(Status.BAD_TABLE)
    return bits


class EmulatedBuffer(np.ndarray):
    """A numpy array living in emulated DDR; ``flush``/``invalidate`` are no-ops (the emulated DDR is coherent)."""

    device_address: int = 0
    ddr: "EmulatedDDR | None" = None

    def flush(self) -> None:
        return None

    def invalidate(self) -> None:
        return None

    def freebuffer(self) -> None:
        if self.ddr is not None:
            self.ddr.unmap(self.device_address)


class EmulatedDDR:
    """Buffers by device address, handed out at increasing page-aligned addresses (never reused); ``capacity``:
    the most bytes mapped at once (None: unbounded), beyond which ``allocate`` fails as pynq's does when DDR runs out.

    Lookups bisect the sorted region starts and unmapping is a dict removal (freed starts are dropped lazily), so
    every access costs O(log n) in the number of mapped buffers.
    """

    def __init__(self, base: int = DDR_BASE, capacity: int | None = None):
        self._next, self.capacity = base, capacity
        self._regions: dict[int, np.ndarray] = {}
        self._starts: list[int] = []  # sorted; may still hold starts of unmapped buffers
        self.mapped_bytes = 0

    def __len__(self) -> int:
        """Buffers mapped now."""
        return len(self._regions)

    def reserve(self, nbytes: int) -> int:
        """The device address of a fresh page-aligned range of ``nbytes``."""
        address = self._next
        self._next += -(-max(int(nbytes), 1) // DDR_ALIGN) * DDR_ALIGN
        return address

    def map(self, buffer: np.ndarray, address: int) -> None:
        """Make ``buffer`` the DDR contents at ``address`` (from ``reserve``)."""
        self.unmap(address)
        if not self._starts or address > self._starts[-1]:
            self._starts.append(address)
        else:
            i = bisect.bisect_left(self._starts, address)
            if i == len(self._starts) or self._starts[i] != address:
                self._starts.insert(i, address)
        self._regions[address] = buffer
        self.mapped_bytes += buffer.nbytes

    def unmap(self, address: int) -> None:
        buffer = self._regions.pop(address, None)
        if buffer is not None:
            self.mapped_bytes -= buffer.nbytes
        if len(self._starts) > 2 * len(self._regions) + 64:  # amortised: drop the starts of unmapped buffers
            self._starts = [start for start in self._starts if start in self._regions]

    def allocate(self, shape: tuple[int, ...] | int, dtype: Any) -> EmulatedBuffer:
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
        if self.capacity is not None and self.mapped_bytes + nbytes > self.capacity:
            raise EmulationError(f"emulated DDR: cannot allocate {nbytes} bytes, {self.mapped_bytes} of its "
                                 f"{self.capacity} bytes are in use")
        buffer = np.zeros(shape, dtype=dtype).view(EmulatedBuffer)
        buffer.device_address, buffer.ddr = self.reserve(buffer.nbytes), self
        self.map(buffer, buffer.device_address)
        return buffer

    def bytes_at(self, address: int, nbytes: int) -> np.ndarray:
        """A writable uint8 view of ``nbytes`` of DDR starting at ``address`` (inside one allocated buffer)."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            start = self._starts[i]
            buffer = self._regions.get(start)
            if buffer is not None and nbytes >= 0 and address + nbytes <= start + buffer.nbytes:
                raw = buffer.reshape(-1).view(np.uint8)
                return raw[address - start:address - start + nbytes]
        raise EmulationError(f"emulated DDR: {nbytes} bytes at {address:#x} are not inside one allocated buffer")

    def array_at(self, address: int, dtype: Any, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        return self.bytes_at(address, dtype.itemsize * count).view(dtype)

    def release(self) -> None:
        self._regions.clear()
        self._starts.clear()
        self.mapped_bytes = 0


class EmulatedEngine:
    """Register-level emulation of the engine described by ``overlay``."""

    def __init__(self, overlay: OverlayConfig, calibration: CalibrationParams, compute: bool = False,
                 ddr_bytes: int | None = None):
        self.overlay, self.compute = overlay, compute
        self.schedule, self.energy = calibration.schedule, calibration.energy
        self.regmap = RegisterMap.from_overlay(overlay)
        self.ddr = EmulatedDDR(capacity=ddr_bytes)
        self._checked: dict[tuple[Any, ...], tuple[np.ndarray, tuple[Block, ...], LayerCycles]] = {}
        self._registers = {offset: reg for reg in self.regmap for offset in reg.word_offsets}
        self._words: dict[int, int] = dict.fromkeys(self._registers, 0)
        self._words[self.regmap.offset("control")] = AP_IDLE
        self.time_s = 0.0
        self.work_energy_j = 0.0
        self.runs = 0

    # -- bus -----------------------------------------------------------------------------------------------------
    def read(self, offset: int) -> int:
        if offset not in self._words:
            raise EmulationError(f"read of unmapped register offset {offset:#x}")
        value = self._words[offset]
        if offset == self.regmap.offset("control"):
            self._words[offset] = value & ~AP_DONE  # ap_done is clear-on-read
        return value

    def write(self, offset: int, value: int) -> None:
        reg = self._registers.get(offset)
        if reg is None:
            raise EmulationError(f"write to unmapped register offset {offset:#x}")
        if reg.access == "ro":
            return  # the hardware ignores writes to read-only registers
        if reg.name == "control":
            if value & AP_START:
                self._start()
            return
        self._words[offset] = int(value) & 0xFFFFFFFF

    def allocate(self, shape: tuple[int, ...] | int, dtype: Any) -> EmulatedBuffer:
        return self.ddr.allocate(shape, dtype)

    def get(self, name: str) -> int:
        """A register's value without side effects (the device's own view)."""
        reg = self.regmap[name]
        return reg.join([self._words[o] for o in reg.word_offsets])

    def _set(self, name: str, value: int) -> None:
        reg = self.regmap[name]
        for offset, word in zip(reg.word_offsets, reg.split(int(value))):
            self._words[offset] = word

    # -- execution -----------------------------------------------------------------------------------------------
    def _start(self) -> None:
        command = self.get("command")
        if command == CMD_IDENTIFY:
            for name, value in self.regmap.id_values.items():
                self._set(name, value)
            self._set("status", Status.OK)
        elif command == CMD_RUN:
            descriptor = {reg.name: self.get(reg.name) for reg in self.regmap.section("descriptor")}
            descriptor.update({reg.name: self.get(reg.name) for reg in self.regmap.section("buffers")})
            try:
                cycles = self._run(descriptor)
            except _Rejected as exc:
                self._set("status", exc.status)
            else:
                self._set("status", Status.OK)
                for stage in ("fetch", "execute", "result", "total"):
                    self._set(f"cycles_{stage}", getattr(cycles, stage))
                self.time_s += cycles.total / self.overlay.clock_hz
                self.work_energy_j += self.energy.dynamic_j(cycles.binary_ops, cycles.dram_bytes)
                self.runs += 1
        else:
            self._set("status", Status.BAD_COMMAND)
        self._words[self.regmap.offset("control")] = AP_DONE | AP_IDLE | AP_READY

    def _run(self, d: dict[str, int]) -> LayerCycles:
        """One CMD_RUN: decode descriptor and tile table from registers and DDR; cycles from the schedule; the
        data through the reference engine when ``compute`` is on.

        The emulation models the grouped schedule: a tile table other than the one ``layout`` builds for the
        channels' bits (another tiling or order) is rejected as ``Status.BAD_TABLE``.
        """
        layer = _layer_from_descriptor(d)
        try:
            raw = self.ddr.array_at(d["tiles_addr"], np.uint32, d["num_tiles"] * row_tile_words(self.overlay.dm))
        except EmulationError:
            raise _Rejected(Status.BAD_TABLE) from None
        key = (tuple(sorted((k, v) for k, v in d.items() if not k.endswith("_addr"))), raw.tobytes())
        if key not in self._checked:
            bits = _channel_bits(raw, layer, self.overlay.dm, d["num_tiles"])
            abits, batch = d["abits"], d["batch"]
            if not 1 <= abits <= self.overlay.max_bits or bits.max() > self.overlay.max_bits:
                raise _Rejected(Status.BAD_DESCRIPTOR)
            blocks = schedule_blocks(layer, bits, self.overlay)
            # the table records stored widths: a 1-bit row in a packed tile is not the layout's (it stores 2 bits)
            if not np.array_equal(tile_table(blocks, stored_weight_bits(layer, bits), self.overlay.dm), raw):
                raise _Rejected(Status.BAD_TABLE)
            if len(self._checked) >= CHECKED_LAYERS:
                self._checked.pop(next(iter(self._checked)))
            self._checked[key] = (bits, blocks, layer_cycles(layer, bits, abits, self.overlay, self.schedule, batch))
        bits, blocks, cycles = self._checked[key]
        if self.compute:
            try:
                self._compute(layer, bits, blocks, d)
            except (EmulationError, ValueError):
                raise _Rejected(Status.BUFFER_OVERFLOW) from None
        return cycles

    def _compute(self, layer: LayerSpec, bits: np.ndarray, blocks: Sequence[Block], d: dict[str, int]) -> None:
        """Unpack the operands from DDR (inverse of ``layout.build_job``), run the reference engine on the layer's
        matrix products, write the int32 results back."""
        batch, abits = d["batch"], d["abits"]
        groups, m, k, n = layer.gemm(batch)
        w = np.zeros((layer.c_out, k), dtype=np.int64)
        columns = np.zeros((groups, k, n), dtype=np.int64)
        addresses = {"weights": d["weights_addr"], "activations": d["activations_addr"]}
        for operand in operand_layout(layer, blocks, abits, batch, self.overlay.dk).operands:
            raw = self.ddr.array_at(addresses[operand.buffer] + 8 * operand.offset, np.uint64, operand.words)
            words = raw.reshape(operand.rows, operand.planes, -1)
            if operand.buffer == "weights":
                assert operand.tile is not None  # a weights operand is always one row tile's
                channels = operand.tile.channels
                values = unpack_bitplanes(BitPlanes(words, bits[channels], True, operand.k))
                if operand.group == PACKED_GROUPS:
                    for s, channel in enumerate(channels):
                        w[channel] = values[s, s * k:(s + 1) * k]
                else:
                    w[channels] = values
            else:
                acts = unpack_bitplanes(BitPlanes(words, np.full(n, abits), False, operand.k)).T
                if operand.tile is None:
                    columns[operand.group] = acts
                else:
                    columns[operand.tile.channels // m] = acts.reshape(operand.tile.channels.size, k, n)
        gemm = LayerSpec("gemm", "conv", groups * k, layer.c_out, (1, 1), (1, 1), (0, 0), groups, (n, 1), (n, 1))
        x = columns.reshape(1, groups * k, n, 1)
        output = run_layer(gemm, x, w.reshape(layer.c_out, k, 1, 1), bits, abits, self.overlay, self.schedule).output
        oh, ow = layer.out_hw
        result = output[0, :, :, 0].reshape(layer.c_out, batch, oh, ow).transpose(1, 0, 2, 3)
        self.ddr.array_at(d["results_addr"], np.int32, result.size)[:] = result.ravel()

    # -- time ----------------------------------------------------------------------------------------------------
    def now(self) -> float:
        return self.time_s

    def idle(self, seconds: float) -> None:
        self.time_s += max(float(seconds), 0.0)


class EmulatedPowerSensor:
    """Duck-typed power sensor (``name``, ``parents``, ``get_value``) over the emulated device's energy model."""

    kind = "emulated (analytic energy model)"
    unit = "W"
    sample_rate_hz = math.inf  # exact at any reading
    resolution_w = 0.0

    def __init__(self, device: EmulatedEngine, name: str = "emulated_power"):
        self.name, self.parents, self._device = name, (), device
        self._last_time, self._last_energy = device.now(), device.work_energy_j

    def get_value(self, parents: Any = None) -> float:
        """Average watts since the previous reading (idle watts if no virtual time has passed)."""
        now, energy = self._device.now(), self._device.work_energy_j
        elapsed, work = now - self._last_time, energy - self._last_energy
        self._last_time, self._last_energy = now, energy
        idle_w = self._device.energy.idle_power_w
        return idle_w + work / elapsed if elapsed > 0 else idle_w


try:
    with warnings.catch_warnings():  # off the board pynq warns that it finds no device and no supported CPU
        warnings.simplefilter("ignore")
        import pynq
except ImportError:
    pynq = None

if pynq is not None:

    class EmulatedPynqDevice(pynq.Device):
        """The emulated engine behind pynq's ``Device`` seam: register reads/writes at ``base`` and DDR buffers.

        Build ``BitSerialEngine({"phys_addr": base, "addr_range": span, "device": this})`` to drive it through
        pynq's real ``MMIO`` and ``allocate``.
        """

        def __init__(self, engine: EmulatedEngine, base: int = 0x4000_0000, tag: str = "emulated"):
            super().__init__(tag)
            self.capabilities = {"REGISTER_RW": True}
            self.engine, self.base = engine, base

        def _offset(self, address: int, length: int) -> int:
            offset = address - self.base
            if length != 4 or offset < 0 or offset % 4:
                raise EmulationError(f"register access of {length} bytes at {address:#x}: the engine has aligned 32-bit registers at {self.base:#x}")
            return offset

        def read_registers(self, address: int, length: int) -> bytes:
            return struct.pack("<I", self.engine.read(self._offset(address, length)))

        def write_registers(self, address: int, data: bytes) -> None:
            (value,) = struct.unpack("<I", bytes(data))
            self.engine.write(self._offset(address, len(data)), value)

        def allocate(self, shape: Any, dtype: Any, **kwargs: Any) -> EmulatedBuffer:
            """What ``pynq.allocate(..., target=this)`` returns: a buffer in the emulated DDR. (pynq 4.0's own
            ``PynqBuffer`` cannot be built on numpy >= 2, whose arrays have a read-only ``device`` attribute.)"""
            return self.engine.allocate(shape, dtype)
