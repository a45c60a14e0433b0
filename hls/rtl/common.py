"""Shared pieces of the engine RTL: the layer parameters the controller derives, tokens, banks, popcount trees."""
from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Mux, Signal, Value

from autoq.overlay.manifest import OverlayConfig

WORD_BITS = 64


def popcount(value: Value) -> Value:
    """Set bits of ``value`` as a balanced adder tree."""
    terms = [value[i] for i in range(len(value))]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def bits_for(value: int) -> int:
    return max(1, int(value).bit_length())


class LayerParams:
    """Geometry of the current run, computed by the controller's setup sequence (32-bit unless noted).

    ``rows_total``: rows of one block (``m``, or ``c_out`` when packed); ``tpb``: row tiles per block;
    ``last_rows``: rows of a block's last tile; ``kwords``/``wpp``: Dk-words and uint64 words per bit-plane of a
    non-packed operand, ``kwf``/``wppf`` and ``kwl``/``wppl`` of a packed tile with ``dm`` and ``last_rows`` rows;
    ``ohw4``: bytes of one output channel plane, ``img_stride``: bytes of one output image; ``*_addr``: the DDR
    buffers (byte addresses, low 32 bits, latched at start); ``lhs_single``/``rhs_single``: some tile of the layer
    needs more than half of the lhs/rhs buffer, so that buffer runs as one region (no double buffering).
    """

    def __init__(self) -> None:
        self.m = Signal(32, name="p_m")
        self.rows_total = Signal(32, name="p_rows_total")
        self.n = Signal(32, name="p_n")
        self.ohw = Signal(32, name="p_ohw")
        self.ohw4 = Signal(32, name="p_ohw4")
        self.img_stride = Signal(32, name="p_img_stride")
        self.kwords = Signal(32, name="p_kwords")
        self.wpp = Signal(32, name="p_wpp")
        self.kwf = Signal(32, name="p_kwf")
        self.wppf = Signal(32, name="p_wppf")
        self.kwl = Signal(32, name="p_kwl")
        self.wppl = Signal(32, name="p_wppl")
        self.tpb = Signal(32, name="p_tpb")
        self.last_rows = Signal(32, name="p_last_rows")
        self.num_tiles = Signal(32, name="p_num_tiles")
        self.total_steps = Signal(32, name="p_total_steps")
        self.abits = Signal(32, name="p_abits")
        self.weights_addr = Signal(32, name="p_weights_addr")
        self.activations_addr = Signal(32, name="p_activations_addr")
        self.results_addr = Signal(32, name="p_results_addr")
        self.tiles_addr = Signal(32, name="p_tiles_addr")
        self.packed = Signal(name="p_packed")
        self.lhs_single = Signal(name="p_lhs_single")
        self.rhs_single = Signal(name="p_rhs_single")


def region_base(words: int, region: Value, single: Value) -> Value:
    """First word of buffer region ``region`` of a ``words``-deep buffer: two halves, or all of it when ``single``."""
    return Mux(region & ~single, words // 2, 0)


class Token(Elaboratable):
    """A counting semaphore between two stages (BISMO's token queues, as credits): ``give``/``take`` pulses."""

    def __init__(self, init: int, name: str, single: Signal | None = None):
        self.init, self.single = init, single
        self.count = Signal(range(init + 2), init=init, name=f"{name}_count")
        self.give, self.take, self.reset = Signal(name=f"{name}_give"), Signal(name=f"{name}_take"), Signal()
        self.avail = Signal(name=f"{name}_avail")

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += self.avail.eq(self.count != 0)
        with m.If(self.reset):
            m.d.sync += self.count.eq(self.init if self.single is None else Mux(self.single, 1, self.init))
        with m.Else():
            m.d.sync += self.count.eq(self.count + self.give - self.take)
        return m


class TileBank:
    """What one lhs region holds besides the weights: its tile-table entry and what fetch derived from it."""

    def __init__(self, cfg: OverlayConfig, index: int):
        bw = bits_for(cfg.max_bits)
        self.tbits = Signal(bw, name=f"lb{index}_tbits")
        self.rows = Signal(range(cfg.dm + 1), name=f"lb{index}_rows")
        self.bits = [Signal(bw, name=f"lb{index}_bits{r}") for r in range(cfg.dm)]
        self.ch = [Signal(32, name=f"lb{index}_ch{r}") for r in range(cfg.dm)]
        self.chan_off = [Signal(32, name=f"lb{index}_off{r}") for r in range(cfg.dm)]
        self.kw = Signal(32, name=f"lb{index}_kw")


class ResultBank:
    """What one result region holds besides the accumulators: where its rows and columns go."""

    def __init__(self, cfg: OverlayConfig, index: int):
        self.rows = Signal(range(cfg.dm + 1), name=f"rb{index}_rows")
        self.cols = Signal(range(cfg.dn + 1), name=f"rb{index}_cols")
        self.first = Signal(name=f"rb{index}_first")
        self.chan_off = [Signal(32, name=f"rb{index}_off{r}") for r in range(cfg.dm)]
