"""Cycle-accurate simulation of the overlay RTL: Verilator + a C++ harness (AXI-Lite master, Zynq-7000 HP-port
memory model) loaded with ctypes, presented as the register-level device the driver drives.

- ``memory.HPPortModel``: HP-port timing (latencies, outstanding bursts, bandwidth; sources in its docstring).
- ``builder.build(verilog)``: the cached simulation library of a ``bitserial_engine`` Verilog text.
- ``sim.RtlSim``: one simulated DUT (AXI-Lite transactions, clocking, memory counters and protocol errors).
- ``device.RtlSimDevice``: ``read``/``write``/``allocate``/``now``/``idle`` for ``BusEngine`` and the board.
"""
from .builder import RtlSimBuild, RtlSimBuildError, build, cache_root, find_toolchain
from .device import Arena, ArenaBuffer, RtlSimDevice
from .memory import HPPortModel, MemoryModelError
from .sim import BusError, MemoryCounters, RtlSim, RtlSimError

__all__ = [
    "Arena", "ArenaBuffer", "BusError", "HPPortModel", "MemoryCounters", "MemoryModelError", "RtlSim",
    "RtlSimBuild", "RtlSimBuildError", "RtlSimDevice", "RtlSimError", "build", "cache_root", "find_toolchain",
]
