"""The Zynq-7000's 64-bit global timer (UG585, "Global Timer"), read through MMIO as a second, independent clock.

The Cortex-A9 MPCore private region has a free-running 64-bit counter at ``GLOBAL_TIMER_BASE`` (0xF8F00200):
counter low word at +0x00, high word at +0x04, control at +0x08 (bit 0: enable). It counts at half the CPU clock:
325 MHz on the PYNQ-Z1's 650 MHz Cortex-A9. The two words cannot be read at once, so ``ticks`` reads high, low,
high again until the high word is stable (UG585's procedure). ``GlobalTimer`` works over any object with
``read(offset)`` (``pynq.MMIO`` on the board, a scripted register device in tests). Standard library only.
"""
from __future__ import annotations

from typing import Any

from autoq.common.errors import AutoQError

GLOBAL_TIMER_BASE = 0xF8F00200
GLOBAL_TIMER_SPAN = 0x10
COUNTER_LO, COUNTER_HI, CONTROL = 0x00, 0x04, 0x08
TIMER_ENABLE = 1 << 0
PYNQ_Z1_CPU_HZ = 650_000_000
PYNQ_Z1_TIMER_HZ = PYNQ_Z1_CPU_HZ // 2
MAX_RETRIES = 16


class TimerError(AutoQError, RuntimeError):
    """The global timer cannot be read consistently, or does not run."""


class GlobalTimer:
    """The 64-bit global timer behind ``mmio`` (``read(offset) -> int``, offsets from ``GLOBAL_TIMER_BASE``)."""

    def __init__(self, mmio: Any, clock_hz: float = PYNQ_Z1_TIMER_HZ):
        if not clock_hz > 0:
            raise TimerError(f"global timer clock must be positive, got {clock_hz!r}")
        self.mmio, self.clock_hz = mmio, float(clock_hz)

    @property
    def enabled(self) -> bool:
        return bool(int(self.mmio.read(CONTROL)) & TIMER_ENABLE)

    def ticks(self) -> int:
        """The 64-bit count: high, low, high again, until both highs agree (the low word did not wrap between)."""
        for _ in range(MAX_RETRIES):
            high = int(self.mmio.read(COUNTER_HI)) & 0xFFFFFFFF
            low = int(self.mmio.read(COUNTER_LO)) & 0xFFFFFFFF
            if int(self.mmio.read(COUNTER_HI)) & 0xFFFFFFFF == high:
                return (high << 32) | low
        raise TimerError(f"global timer high word changed on each of {MAX_RETRIES} reads: not a free-running counter")

    def seconds(self) -> float:
        return self.ticks() / self.clock_hz

    def elapsed_s(self, start_ticks: int, end_ticks: int) -> float:
        """Seconds between two ``ticks()`` readings."""
        if end_ticks < start_ticks:
            raise TimerError(f"global timer went backwards ({start_ticks} -> {end_ticks})")
        return (end_ticks - start_ticks) / self.clock_hz

    def check_running(self) -> None:
        """``TimerError`` unless the timer is enabled and counts between two readings."""
        if not self.enabled:
            raise TimerError("the global timer is not enabled (control bit 0 is clear)")
        first = self.ticks()
        for _ in range(MAX_RETRIES):
            if self.ticks() != first:
                return
        raise TimerError(f"the global timer does not count: it read {first} {MAX_RETRIES + 1} times")


def open_global_timer(clock_hz: float = PYNQ_Z1_TIMER_HZ) -> GlobalTimer:
    """The global timer through ``pynq.MMIO`` (on a Zynq-7000 board with pynq), checked to be running."""
    try:
        import pynq
    except ImportError:
        raise TimerError("pynq is not installed here: the global timer is read through pynq.MMIO on the board") from None
    timer = GlobalTimer(pynq.MMIO(GLOBAL_TIMER_BASE, GLOBAL_TIMER_SPAN), clock_hz)
    timer.check_running()
    return timer
