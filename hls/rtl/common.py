"""Shared pieces of the engine RTL: the layer parameters the controller derives, tokens, banks, popcount trees."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, Value

from autoq.overlay.manifest import OverlayConfig

WORD_BITS = 64


def _full_adder(a, b, c):
    return a ^ b ^ c, (a & b) | (a & c) | (b & c)


def _counter_6_3(bits):
    """Sum of six bits as three (weights 1, 2, 4): each output a function of all six, one LUT6."""
    s1, k1 = _full_adder(*bits[:3])
    s2, k2 = _full_adder(*bits[3:])
    t, u = _full_adder(k1, k2, s1 & s2)
    return s1 ^ s2, t, u


class CompressorLevel(Elaboratable):
    """One level of a popcount compressor tree (BISMO-style), as its own module.

    ``i``: the bits of columns of the given ``heights`` (column ``w`` weighs ``2^w``), concatenated column by column
    (with ``products``: one column, ``i`` = ``Cat(a, b)`` and the column's bits are ``a & b``). Each column is cut
    into 6:3 counters, then full adders (3:2; with ``products`` only full adders, each output a function of three
    AND pairs), the rest passed through; ``o``: the resulting columns (``out_heights``), concatenated the same way.
    Every output is a function of at most six inputs, one LUT6: a level per module keeps Yosys/ABC (which maps each
    module on its own) from restructuring the tree into a deeper, larger one.
    """

    def __init__(self, heights: list[int], products: bool = False):
        self.heights, self.products = list(heights), products
        n = sum(heights)
        self.i = Signal(2 * n if products else n)
        plan, out = [], [0] * (len(heights) + 2)
        for w, height in enumerate(heights):
            while not products and height >= 6:
                plan.append(("c63", w))
                height -= 6
                out[w], out[w + 1], out[w + 2] = out[w] + 1, out[w + 1] + 1, out[w + 2] + 1
            while height >= 3:
                plan.append(("fa", w))
                height -= 3
                out[w], out[w + 1] = out[w] + 1, out[w + 1] + 1
            plan.extend([("wire", w)] * height)
            out[w] += height
        while out and out[-1] == 0:
            out.pop()
        self.plan, self.out_heights = plan, out
        self.o = Signal(sum(out))

    def elaborate(self, platform) -> Module:
        m = Module()
        n = sum(self.heights)
        bits = [self.i[k] & self.i[n + k] for k in range(n)] if self.products else [self.i[k] for k in range(n)]
        # Columns as lists of the bits themselves: slicing a Cat of expressions would re-emit the whole Cat per bit.
        starts = [sum(self.heights[:w]) for w in range(len(self.heights))]
        columns = [bits[start:start + height] for start, height in zip(starts, self.heights)]
        out: list[list[Value]] = [[] for _ in self.out_heights]
        for kind, w in self.plan:
            if kind == "c63":
                for d, bit in enumerate(_counter_6_3(columns[w][:6])):
                    out[w + d].append(bit)
                columns[w] = columns[w][6:]
            elif kind == "fa":
                for d, bit in enumerate(_full_adder(*columns[w][:3])):
                    out[w + d].append(bit)
                columns[w] = columns[w][3:]
            else:
                out[w].append(columns[w].pop(0))
        m.d.comb += self.o.eq(Cat(*(bit for column in out for bit in column)))
        return m


def split_columns(value: Value, heights: list[int]) -> list[list[Value]]:
    """``value``'s bits as columns of ``heights`` (the inverse of concatenating them column by column)."""
    columns, pos = [], 0
    for height in heights:
        columns.append([value[pos + k] for k in range(height)])
        pos += height
    return columns


def compress(m: Module, name: str, columns: list[list[Value]] | None = None, products: tuple[Value, Value] | None = None,
             levels: int | None = None) -> list[list[Value]]:
    """Columns reduced by ``CompressorLevel`` submodules (``{name}_l{n}``) until no column holds more than two bits
    (or after ``levels`` levels): of ``columns``, or of the AND of the two equal-width ``products`` operands."""
    level = 0
    if products is not None:
        a, b = products
        columns = [[a[k] & b[k] for k in range(len(a))]]
    if columns is None:
        raise ValueError(f"compress {name!r}: give columns or products")
    while max(len(column) for column in columns) > 2 and (levels is None or level < levels):
        first = products is not None and level == 0
        unit = CompressorLevel([len(a)] if first else [len(column) for column in columns], products=first)
        m.submodules[f"{name}_l{level}"] = unit
        m.d.comb += unit.i.eq(Cat(a, b) if first else Cat(*(bit for column in columns for bit in column)))
        columns = split_columns(unit.o, unit.out_heights)
        level += 1
    return columns


def column_sum(columns: list[list[Value]]) -> Value:
    """The value of columns of at most two bits each: one carry-chain add of two rows."""
    assert all(len(column) <= 2 for column in columns)
    rows = [Cat(*(column[r] if len(column) > r else Const(0, 1) for column in columns)) for r in range(2)]
    return rows[0] + rows[1]


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
    """A counting semaphore between two stages (BISMO's token queues, as credits): ``give``/``take`` pulses.

    ``capacity``: the most tokens it can ever hold, the regions of the buffer it guards (a ``*_full`` token starts
    at 0 but holds up to 2 when the producer is two regions ahead of a stalled consumer), so the count never wraps.
    """

    def __init__(self, init: int, name: str, single: Signal | None = None, capacity: int = 2):
        assert 0 <= init <= capacity
        self.init, self.single = init, single
        self.count = Signal(range(capacity + 1), init=init, name=f"{name}_count")
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
    """A tile-table entry being loaded by fetch and what fetch derived from it (before it goes into the chunk
    entry memory, ``EntryLayout``)."""

    def __init__(self, cfg: OverlayConfig, index: int):
        bw = bits_for(cfg.max_bits)
        self.tbits = Signal(bw, name=f"lb{index}_tbits")
        self.rows = Signal(range(cfg.dm + 1), name=f"lb{index}_rows")
        self.bits = [Signal(bw, name=f"lb{index}_bits{r}") for r in range(cfg.dm)]
        self.ch = [Signal(32, name=f"lb{index}_ch{r}") for r in range(cfg.dm)]
        self.chan_off = [Signal(32, name=f"lb{index}_off{r}") for r in range(cfg.dm)]
        self.kw = Signal(32, name=f"lb{index}_kw")


MAX_CHUNK_SLOTS = 32


def chunk_slots(cfg: OverlayConfig) -> int:
    """Tile-table entries one lhs region can hold (a weight chunk's most row tiles): one per Dk-word of a region,
    capped at ``MAX_CHUNK_SLOTS`` (a chunk also ends when its weights fill the region)."""
    return max(1, min(MAX_CHUNK_SLOTS, cfg.lhs_mem_words // 2))


class EntryLayout:
    """A row tile's entry as one word of the chunk entry memory (``Dm``... fields concatenated, LSB first):
    ``tbits``, ``rows``, ``bits[Dm]``, ``chan_off[Dm]`` (byte offsets of the rows' output channels), ``kw``
    (Dk-words per bit-plane) and ``lbase`` (the tile's first word in its lhs region)."""

    def __init__(self, cfg: OverlayConfig):
        bw = bits_for(cfg.max_bits)
        self.dm = cfg.dm
        self.fields = ([("tbits", bw), ("rows", bits_for(cfg.dm))] + [(f"bits{r}", bw) for r in range(cfg.dm)]
                       + [(f"off{r}", 32) for r in range(cfg.dm)] + [("kw", 32), ("lbase", bits_for(cfg.lhs_mem_words))])
        self.width = sum(width for _name, width in self.fields)

    def pack(self, bank: TileBank, lbase: Value) -> Value:
        values = {"tbits": bank.tbits, "rows": bank.rows, "kw": bank.kw, "lbase": lbase}
        values.update({f"bits{r}": bank.bits[r] for r in range(self.dm)})
        values.update({f"off{r}": bank.chan_off[r] for r in range(self.dm)})
        out = []
        for name, width in self.fields:
            value = Value.cast(values[name])
            out.append(value[:width] if len(value) >= width else Cat(value, Const(0, width - len(value))))
        return Cat(*out)

    def unpack(self, data: Value) -> "Entry":
        fields, pos = {}, 0
        for name, width in self.fields:
            fields[name] = data[pos:pos + width]
            pos += width
        return Entry(fields, self.dm)


class Entry:
    """The fields of an entry read from the chunk entry memory (slices of the read data)."""

    def __init__(self, fields: dict, dm: int):
        self.tbits, self.rows, self.kw, self.lbase = fields["tbits"], fields["rows"], fields["kw"], fields["lbase"]
        self.bits = [fields[f"bits{r}"] for r in range(dm)]
        self.chan_off = [fields[f"off{r}"] for r in range(dm)]


class ChunkState:
    """Per lhs region, what fetch tells execute about the weight chunk in it: ``landed`` row tiles whose entry and
    weights are in, ``closed`` once the chunk has all its row tiles, then ``length`` of them."""

    def __init__(self, cfg: OverlayConfig):
        slots = chunk_slots(cfg)
        self.length = [Signal(range(slots + 1), name=f"chunk_len{i}") for i in range(2)]
        self.landed = [Signal(range(slots + 1), name=f"chunk_landed{i}") for i in range(2)]
        self.closed = [Signal(name=f"chunk_closed{i}") for i in range(2)]


class ResultBank:
    """What one result region holds besides the accumulators: where its rows and columns go. ``first``: the step's
    column tile is the first of a pass over the columns (results restart at column 0); ``newcol``: it is the first
    row tile of its chunk for this column tile (it starts where the previous step's columns ended)."""

    def __init__(self, cfg: OverlayConfig, index: int):
        self.rows = Signal(range(cfg.dm + 1), name=f"rb{index}_rows")
        self.cols = Signal(range(cfg.dn + 1), name=f"rb{index}_cols")
        self.first = Signal(name=f"rb{index}_first")
        self.newcol = Signal(name=f"rb{index}_newcol")
        self.chan_off = [Signal(32, name=f"rb{index}_off{r}") for r in range(cfg.dm)]
