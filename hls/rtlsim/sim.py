"""ctypes binding of the harness library (``harness/rtlsim.h``): one simulated DUT, its AXI-Lite master and the
HP-port memory model over a caller-owned DDR arena. ``RtlSimDevice`` (``device.py``) builds on it."""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from autoq.common.errors import AutoQError

from .memory import HPPortModel

ABI = 1
RUN_CYCLES, UNTIL_INTERRUPT, UNTIL_MEMORY_QUIET = 0, 1, 2
ERROR_KINDS = {
    1: "4 KiB boundary crossed",
    2: "outside the DDR arena",
    3: "burst type is not INCR",
    4: "beat wider than the 64-bit port",
    5: "start address not aligned to the beat size",
    6: "WLAST on the wrong beat",
}
COUNTER_NAMES = ("cycles", "bytes_read", "bytes_written", "read_bursts", "write_bursts", "read_beats", "write_beats",
                 "errors", "max_reads_in_flight", "max_writes_in_flight", "memory_busy_cycles")
RESPONSES = {0: "OKAY", 1: "EXOKAY", 2: "SLVERR", 3: "DECERR"}


class RtlSimError(AutoQError, RuntimeError):
    """The simulated RTL misbehaved or was driven wrongly: no AXI-Lite response, an error response, HP-port
    protocol errors, a closed simulation."""


class _ErrorRecord(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint32), ("is_write", ctypes.c_uint32), ("address", ctypes.c_uint64),
                ("beats", ctypes.c_uint32), ("size", ctypes.c_uint32), ("cycle", ctypes.c_uint64)]


class BusError(NamedTuple):
    """One HP-port protocol error the memory model recorded."""

    kind: str
    write: bool
    address: int
    beats: int
    size: int  # bytes per beat
    cycle: int

    def __str__(self) -> str:
        return (f"{self.kind}: {'write' if self.write else 'read'} burst at {self.address:#x} "
                f"({self.beats} beats x {self.size} B) at cycle {self.cycle}")


@dataclass(frozen=True)
class MemoryCounters:
    """What the HP-port model counted since reset."""

    cycles: int
    bytes_read: int
    bytes_written: int
    read_bursts: int
    write_bursts: int
    read_beats: int
    write_beats: int
    errors: int
    max_reads_in_flight: int
    max_writes_in_flight: int
    memory_busy_cycles: int  # cycles with any burst in flight


@functools.lru_cache(maxsize=None)
def _load(library: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(library)
    p, u32, u64, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    lib.rtlsim_abi.restype = i32
    if lib.rtlsim_abi() != ABI:
        raise RtlSimError(f"{library} has harness ABI {lib.rtlsim_abi()}, this code expects {ABI}: rebuild it")
    lib.rtlsim_create.restype = p
    lib.rtlsim_create.argtypes = [p, u64, u64, u32, u32, u32, u32, ctypes.c_double, u32, u32]
    lib.rtlsim_destroy.argtypes = [p]
    lib.rtlsim_axil_write.restype = i32
    lib.rtlsim_axil_write.argtypes = [p, u32, u32, u32]
    lib.rtlsim_axil_read.restype = i32
    lib.rtlsim_axil_read.argtypes = [p, u32, ctypes.POINTER(u32), u32]
    lib.rtlsim_run_until.restype = u64
    lib.rtlsim_run_until.argtypes = [p, i32, u64]
    for name in ("rtlsim_interrupt", "rtlsim_memory_quiet"):
        getattr(lib, name).restype = i32
        getattr(lib, name).argtypes = [p]
    lib.rtlsim_cycles.restype = u64
    lib.rtlsim_cycles.argtypes = [p]
    lib.rtlsim_counters.argtypes = [p, ctypes.POINTER(u64)]
    lib.rtlsim_error_count.restype = u64
    lib.rtlsim_error_count.argtypes = [p]
    lib.rtlsim_error_at.restype = i32
    lib.rtlsim_error_at.argtypes = [p, u64, ctypes.POINTER(_ErrorRecord)]
    return lib


class RtlSim:
    """One simulation instance. ``arena`` (a C-contiguous uint8 array) is the DDR at device address ``base``; it
    must outlive the instance (this object keeps a reference)."""

    def __init__(self, library: Path | str, arena: np.ndarray, base: int, memory: HPPortModel = HPPortModel(),
                 register_span: int = 1 << 16, reset_cycles: int = 8, axil_timeout_cycles: int = 10_000):
        if arena.dtype != np.uint8 or arena.ndim != 1 or not arena.flags.c_contiguous or not arena.flags.writeable:
            raise RtlSimError("the DDR arena must be a writable, contiguous 1-D uint8 array")
        if register_span & (register_span - 1) or not 4 <= register_span <= 1 << 16:
            raise RtlSimError(f"register span {register_span:#x} must be a power of two in 4..0x10000")
        self._lib = _load(str(library))
        self.arena, self.base, self.memory, self.register_span = arena, int(base), memory, register_span
        self.axil_timeout_cycles = int(axil_timeout_cycles)
        handle = self._lib.rtlsim_create(arena.ctypes.data, self.base, arena.size, memory.read_latency,
                                         memory.write_latency, memory.read_outstanding, memory.write_outstanding,
                                         memory.bandwidth, register_span - 1, reset_cycles)
        if not handle:
            raise RtlSimError(f"the harness refused the settings {memory}")
        self._handle: int | None = handle

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise RtlSimError("the RTL simulation is closed")
        return self._handle

    def _offset(self, offset: int) -> int:
        offset = int(offset)
        if not 0 <= offset < self.register_span or offset % 4:
            raise RtlSimError(f"register offset {offset:#x} is not an aligned 32-bit word in the {self.register_span:#x}-byte map")
        return offset

    def axil_write(self, offset: int, value: int) -> None:
        """One AXI-Lite write (the model is clocked until its B response)."""
        resp = self._lib.rtlsim_axil_write(self.handle, self._offset(offset), int(value) & 0xFFFFFFFF,
                                           self.axil_timeout_cycles)
        if resp < 0:
            raise RtlSimError(f"AXI-Lite write to {offset:#x}: no response within {self.axil_timeout_cycles} cycles")
        if resp != 0:
            raise RtlSimError(f"AXI-Lite write to {offset:#x} answered {RESPONSES[resp]}")

    def axil_read(self, offset: int) -> int:
        """One AXI-Lite read (the model is clocked until its R beat)."""
        value = ctypes.c_uint32()
        resp = self._lib.rtlsim_axil_read(self.handle, self._offset(offset), ctypes.byref(value),
                                          self.axil_timeout_cycles)
        if resp < 0:
            raise RtlSimError(f"AXI-Lite read of {offset:#x}: no response within {self.axil_timeout_cycles} cycles")
        if resp != 0:
            raise RtlSimError(f"AXI-Lite read of {offset:#x} answered {RESPONSES[resp]}")
        return int(value.value)

    def run_until(self, condition: int, max_cycles: int) -> int:
        """Clock until ``condition`` (``UNTIL_INTERRUPT``, ``UNTIL_MEMORY_QUIET``; ``RUN_CYCLES``: never) holds or
        ``max_cycles`` passed; the cycles advanced."""
        if condition not in (RUN_CYCLES, UNTIL_INTERRUPT, UNTIL_MEMORY_QUIET):
            raise RtlSimError(f"unknown run condition {condition!r}")
        return int(self._lib.rtlsim_run_until(self.handle, condition, max(int(max_cycles), 0)))

    @property
    def interrupt(self) -> bool:
        return bool(self._lib.rtlsim_interrupt(self.handle))

    @property
    def memory_quiet(self) -> bool:
        return bool(self._lib.rtlsim_memory_quiet(self.handle))

    @property
    def cycles(self) -> int:
        """Clock cycles since reset."""
        return int(self._lib.rtlsim_cycles(self.handle))

    def counters(self) -> MemoryCounters:
        raw = (ctypes.c_uint64 * len(COUNTER_NAMES))()
        self._lib.rtlsim_counters(self.handle, raw)
        return MemoryCounters(*(int(v) for v in raw))

    def errors(self) -> list[BusError]:
        """The HP-port protocol errors recorded since reset (the first 256; ``counters().errors`` counts all)."""
        out, record = [], _ErrorRecord()
        for i in range(int(self._lib.rtlsim_error_count(self.handle))):
            self._lib.rtlsim_error_at(self.handle, i, ctypes.byref(record))
            out.append(BusError(ERROR_KINDS.get(record.kind, f"error {record.kind}"), bool(record.is_write),
                                int(record.address), int(record.beats), int(record.size), int(record.cycle)))
        return out

    def close(self) -> None:
        if self._handle is not None:
            self._lib.rtlsim_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
