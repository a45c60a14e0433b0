"""Small sequential arithmetic units for the engine's controller (no multipliers or dividers in the datapath).

``SeqMul``: shift-and-add, one multiplier bit per cycle, stops when the remaining multiplier is zero (so a product
by a small ``b`` takes ``bit_length(b) + 1`` cycles). ``SeqDiv``: restoring division, ``width`` cycles.
Both: pulse ``start`` while ``ready``; the result is valid once ``ready`` is back (``start`` is ignored while
busy). Results are truncated to ``width`` bits.
"""
from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Signal


class SeqMul(Elaboratable):
    def __init__(self, width: int = 32):
        self.width = width
        self.a = Signal(width)
        self.b = Signal(width)
        self.start = Signal()
        self.ready = Signal(init=1)
        self.product = Signal(width)

    def elaborate(self, platform) -> Module:
        m = Module()
        x, y = Signal(self.width), Signal(self.width)
        with m.If(self.ready):
            with m.If(self.start):
                m.d.sync += [x.eq(self.a), y.eq(self.b), self.product.eq(0), self.ready.eq(0)]
        with m.Else():
            with m.If(y == 0):
                m.d.sync += self.ready.eq(1)
            with m.Else():
                with m.If(y[0]):
                    m.d.sync += self.product.eq(self.product + x)
                m.d.sync += [x.eq(x << 1), y.eq(y >> 1)]
        return m


class SeqDiv(Elaboratable):
    def __init__(self, width: int = 32):
        self.width = width
        self.n = Signal(width)
        self.d = Signal(width)
        self.start = Signal()
        self.ready = Signal(init=1)
        self.quotient = Signal(width)
        self.remainder = Signal(width)

    def elaborate(self, platform) -> Module:
        m = Module()
        count = Signal(range(self.width + 1))
        d = Signal(self.width)
        shifted = Signal(self.width + 1)
        m.d.comb += shifted.eq((self.remainder << 1) | self.quotient[-1])
        with m.If(self.ready):
            with m.If(self.start):
                m.d.sync += [self.quotient.eq(self.n), self.remainder.eq(0), d.eq(self.d), count.eq(self.width),
                             self.ready.eq(0)]
        with m.Else():
            with m.If(count == 0):
                m.d.sync += self.ready.eq(1)
            with m.Else():
                m.d.sync += count.eq(count - 1)
                with m.If(shifted >= d):
                    m.d.sync += [self.remainder.eq(shifted - d), self.quotient.eq((self.quotient << 1) | 1)]
                with m.Else():
                    m.d.sync += [self.remainder.eq(shifted), self.quotient.eq(self.quotient << 1)]
        return m
