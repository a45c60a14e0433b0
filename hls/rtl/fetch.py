"""Fetch stage: moves tile-table entries, weights and activations from DDR into the operand buffers.

Two halves share the read DMA: the *requester* walks the loop nest (block, weight chunk, column tile), takes a
free buffer region (``lhs_free`` per chunk, ``rhs_free`` per column tile of a chunk), issues the DMA commands and
tells the *sink* (through a small FIFO of descriptors) where the returning beats go; the sink writes beats into the
staging ``TileBank`` and the buffers in order and gives ``rhs_full`` when a column tile's activations are in. The
requester runs up to two column tiles ahead of execute, so reads of the next one stream while the current one
executes.

A *weight chunk* is a run of consecutive row tiles of one block whose weights fit one lhs region together
(``sum(kwords * tbits) <= region words``, at most ``chunk_slots(cfg)`` tiles; a packed layer's chunks are single
tiles, since each packed tile has its own activations). Per row tile of a chunk: the entry (``1 + Dm`` beats) into
the staging bank (a tile that does not fit after the chunk's others closes the chunk and is read again as the
first of the next), the sequential multiplies (``kw``, beats, channel offsets), then ``rows * tbits * wpp`` weight
beats (row ``r``'s planes into lhs buffer ``r``: plane ``i``, Dk-word ``w`` at ``region + lbase + i*kw + w``,
``lbase`` the words of the chunk's earlier tiles), and the entry goes into the chunk entry memory (slot
``region * chunk_slots + k``) before its weights. Per column tile: ``cols * abits * wpp`` activation beats
(column ``c`` into rhs buffer ``c``: plane ``j`` at ``region + j*kw + w``), once for all the chunk's row tiles; the
first column tile's right after the chunk's first row tile, so that execute starts on the chunk while its other
row tiles stream in. ``ChunkState`` tells execute, per lhs region, how many row tiles' weights have landed (the
sink counts them) and, once the chunk is closed, its length.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, Value
from amaranth.lib.fifo import SyncFIFO

from autoq.overlay.layout import row_tile_words
from autoq.overlay.manifest import OverlayConfig

from .arith import SeqMul
from .common import WORD_BITS, ChunkState, EntryLayout, LayerParams, TileBank, Token, bits_for, chunk_slots, region_base

KIND_TABLE, KIND_WEIGHTS, KIND_ACTS = 0, 1, 2


class Fetch(Elaboratable):
    def __init__(self, cfg: OverlayConfig, p: LayerParams, bank: TileBank, entry_port, chunk: ChunkState,
                 lhs_ports, rhs_ports, lhs_free: Token, rhs_free: Token, rhs_full: Token):
        self.cfg, self.p, self.bank = cfg, p, bank
        self.entry_port, self.chunk = entry_port, chunk
        self.lhs_ports, self.rhs_ports = lhs_ports, rhs_ports
        self.lhs_free, self.rhs_free, self.rhs_full = lhs_free, rhs_free, rhs_full
        self.start = Signal()
        self.finished = Signal()
        self.active = Signal()
        self.cmd_valid, self.cmd_ready = Signal(), Signal()
        self.cmd_addr, self.cmd_beats = Signal(32), Signal(32)
        self.rdata, self.rvalid, self.rready = Signal(64), Signal(), Signal()

    def elaborate(self, platform) -> Module:
        cfg, p, bank = self.cfg, self.p, self.bank
        m = Module()
        lanes = cfg.dk // WORD_BITS
        entry_beats = row_tile_words(cfg.dm) // 2
        slots = chunk_slots(cfg)
        layout = EntryLayout(cfg)
        count_bits = bits_for(max(cfg.dm, cfg.dn, entry_beats))
        base_bits = bits_for(cfg.lhs_mem_words)
        m.submodules.mul = mul = SeqMul(32)
        m.submodules.queue = queue = SyncFIFO(width=2 + 1 + count_bits + 32 + base_bits, depth=4)

        # ---------------- requester
        t, tt, n0 = Signal(32), Signal(32), Signal(32)
        lreg, rreg = Signal(), Signal()
        k = Signal(range(slots + 1))
        cwords, tw = Signal(32), Signal(32)
        w_off, act_base, col_addr, tbl_off = Signal(32), Signal(32), Signal(32), Signal(32)
        wpp_t, p1, w_beats, acol, acols_full, col_beats = (Signal(32, name=n) for n in (
            "f_wpp", "f_p1", "f_wbeats", "f_acol", "f_acols_full", "f_col_beats"))
        cols = Signal(range(cfg.dn + 1))
        ch_r = Signal(range(cfg.dm + 1))
        table_loaded = Signal()
        table_loaded_set = Signal()
        requester_done = Signal()
        req_progress = Signal()
        col0 = Signal()  # the chunk's first column tile's activations are fetched (after its first row tile)
        chunk = self.chunk
        landed = Signal()  # pulse: the sink has written a row tile's weights (into region ``sreg``)
        region_words = Mux(p.lhs_single, cfg.lhs_mem_words, cfg.lhs_mem_words // 2)

        def push(kind, reg, count, unit, base=0):
            return [queue.w_en.eq(1), queue.w_data.eq(Cat(Const(kind, 2), reg, fit(count, count_bits), fit(unit, 32),
                                                          fit(base, base_bits)))]

        remaining_cols = Signal(32)
        m.d.comb += remaining_cols.eq(p.n - n0)
        m.d.comb += cols.eq(Mux(remaining_cols < cfg.dn, remaining_cols, cfg.dn))
        with m.If(table_loaded_set):
            m.d.sync += table_loaded.eq(1)
        m.d.comb += [self.entry_port.addr.eq(Mux(lreg, slots, 0) + k), self.entry_port.data.eq(layout.pack(bank, cwords))]

        def next_chunk(activations_end) -> None:
            """The chunk's last column tile is requested: the next chunk takes the other lhs region, and where it starts
            a block (or, packed, a tile) its activations follow these (``activations_end``)."""
            m.d.sync += lreg.eq(~lreg)
            with m.If(p.packed | (tt == 0)):
                m.d.sync += act_base.eq(activations_end)
            m.next = "CHUNK"

        # Loop nest: block -> chunk (row tiles whose weights fill one lhs region) -> column tile -> row tile of the
        # chunk (execute's). Per chunk: one lhs_free; per tile of it: entry, weights at the region's next free word;
        # then per column tile: the activations once for all the chunk's row tiles.
        with m.FSM(name="fetch_req"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [t.eq(0), tt.eq(0), n0.eq(0), lreg.eq(0), rreg.eq(0), w_off.eq(0), act_base.eq(0),
                                 tbl_off.eq(0), requester_done.eq(0), table_loaded.eq(0)]
                    m.next = "CHUNK"
            with m.State("CHUNK"):
                with m.If(t == p.num_tiles):
                    m.d.sync += requester_done.eq(1)
                    m.next = "IDLE"
                with m.Elif(self.lhs_free.avail):
                    m.d.comb += [self.lhs_free.take.eq(1), req_progress.eq(1)]
                    m.d.sync += [k.eq(0), cwords.eq(0), col0.eq(0), n0.eq(0), col_addr.eq(act_base)]
                    for r in range(2):
                        with m.If(lreg == r):
                            m.d.sync += chunk.closed[r].eq(0)
                    m.next = "TILE"
            with m.State("TILE"):
                # a chunk ends at its block's end (the next block reads other activations), with every slot used,
                # and after one tile of a packed layer (each packed tile has its own activations)
                with m.If((k != 0) & ((k == slots) | (tt == 0) | p.packed | (t == p.num_tiles))):
                    m.d.comb += req_progress.eq(1)
                    m.next = "CLOSE"
                with m.Elif(queue.w_rdy):
                    m.d.comb += [self.cmd_valid.eq(1), self.cmd_addr.eq(p.tiles_addr + tbl_off),
                                 self.cmd_beats.eq(entry_beats)]
                    with m.If(self.cmd_ready):
                        m.d.comb += req_progress.eq(1)
                        m.d.comb += push(KIND_TABLE, lreg, entry_beats, 0)
                        m.d.sync += table_loaded.eq(0)
                        m.next = "WAIT_TABLE"
            with m.State("WAIT_TABLE"):
                with m.If(table_loaded):
                    full = bank.rows == cfg.dm
                    m.d.sync += [wpp_t.eq(Mux(p.packed, Mux(full, p.wppf, p.wppl), p.wpp)),
                                 bank.kw.eq(Mux(p.packed, Mux(full, p.kwf, p.kwl), p.kwords))]
                    m.next = "MUL_TW"
            self._mul(m, mul, "MUL_TW", bank.tbits, bank.kw, tw, "FIT", req_progress)
            with m.State("FIT"):
                m.d.comb += req_progress.eq(1)
                # a tile that does not fit after the chunk's others starts the next chunk (its entry is read again)
                with m.If((k != 0) & (cwords + tw > region_words)):
                    m.next = "CLOSE"
                with m.Else():
                    m.next = "MUL_P1"
            self._mul(m, mul, "MUL_P1", bank.tbits, wpp_t, p1, "MUL_W", req_progress)
            self._mul(m, mul, "MUL_W", bank.rows, p1, w_beats, "MUL_A", req_progress)
            self._mul(m, mul, "MUL_A", p.abits, wpp_t, acol, "MUL_AF", req_progress)
            self._mul(m, mul, "MUL_AF", cfg.dn, acol, acols_full, "MUL_CH0", req_progress, after=[ch_r.eq(0)])
            # channel offsets: ch[r] * out_h * out_w * 4 for each used row
            with m.State("MUL_CH0"):
                m.d.comb += req_progress.eq(1)
                with m.If(ch_r == bank.rows):
                    m.next = "COMMIT"
                with m.Else():
                    m.d.comb += [mul.a.eq(p.ohw4), mul.b.eq(_select(bank.ch, ch_r)), mul.start.eq(1)]
                    m.next = "MUL_CH1"
            with m.State("MUL_CH1"):
                m.d.comb += req_progress.eq(1)
                with m.If(mul.ready):
                    for r, off in enumerate(bank.chan_off):
                        with m.If(ch_r == r):
                            m.d.sync += off.eq(mul.product)
                    m.d.sync += ch_r.eq(ch_r + 1)
                    m.next = "MUL_CH0"
            with m.State("WEIGHTS"):
                with m.If(queue.w_rdy):
                    m.d.comb += [self.cmd_valid.eq(1), self.cmd_addr.eq(p.weights_addr + (w_off << 3)),
                                 self.cmd_beats.eq(w_beats)]
                    with m.If(self.cmd_ready):
                        m.d.comb += req_progress.eq(1)
                        m.d.comb += push(KIND_WEIGHTS, lreg, bank.rows, p1, cwords)
                        m.d.sync += [w_off.eq(w_off + w_beats), cwords.eq(cwords + tw), k.eq(k + 1), t.eq(t + 1),
                                     tbl_off.eq(tbl_off + 8 * entry_beats)]
                        with m.If(tt == p.tpb - 1):
                            m.d.sync += tt.eq(0)
                        with m.Else():
                            m.d.sync += tt.eq(tt + 1)
                        # the first column tile's activations right after the chunk's first row tile: execute
                        # starts on the chunk while its other row tiles still stream in
                        with m.If(~col0):
                            m.next = "COL"
                        with m.Else():
                            m.next = "TILE"
            with m.State("COMMIT"):
                # the entry (with its first word in the region) into slot k of the region, before its weights
                m.d.comb += [req_progress.eq(1), self.entry_port.en.eq(1)]
                m.next = "WEIGHTS"
            with m.State("CLOSE"):
                m.d.comb += req_progress.eq(1)
                for r in range(2):
                    with m.If(lreg == r):
                        m.d.sync += [chunk.length[r].eq(k), chunk.closed[r].eq(1)]
                with m.If(n0 + cfg.dn >= p.n):
                    next_chunk(col_addr)  # one column tile: its activations are in already, the chunk is done
                with m.Else():
                    m.d.sync += n0.eq(n0 + cfg.dn)
                    m.next = "COL"
            with m.State("COL"):
                m.d.comb += req_progress.eq(1)
                with m.If(cols == cfg.dn):
                    m.d.sync += col_beats.eq(acols_full)
                    m.next = "ACTS"
                with m.Else():
                    m.d.comb += [mul.a.eq(acol), mul.b.eq(cols), mul.start.eq(1)]
                    m.next = "COL_W"
            with m.State("COL_W"):
                m.d.comb += req_progress.eq(1)
                with m.If(mul.ready):
                    m.d.sync += col_beats.eq(mul.product)
                    m.next = "ACTS"
            with m.State("ACTS"):
                with m.If(self.rhs_free.avail & queue.w_rdy):
                    m.d.comb += [self.cmd_valid.eq(1), self.cmd_addr.eq(p.activations_addr + (col_addr << 3)),
                                 self.cmd_beats.eq(col_beats)]
                    with m.If(self.cmd_ready):
                        m.d.comb += [self.rhs_free.take.eq(1), req_progress.eq(1)]
                        m.d.comb += push(KIND_ACTS, rreg, cols, acol)
                        next_addr = col_addr + col_beats
                        m.d.sync += [col_addr.eq(next_addr), rreg.eq(~rreg), col0.eq(1)]
                        with m.If(~col0):
                            m.next = "TILE"
                        with m.Elif(n0 + cfg.dn >= p.n):
                            m.d.sync += n0.eq(0)
                            next_chunk(next_addr)
                        with m.Else():
                            m.d.sync += n0.eq(n0 + cfg.dn)
                            m.next = "COL"

        # ---------------- sink
        kind = Signal(2)
        sreg = Signal()
        scount = Signal(count_bits)
        sunit = Signal(32)
        sbase = Signal(base_bits)
        unit_idx = Signal(range(max(cfg.dm, cfg.dn, entry_beats) + 1))
        beat_in_unit = Signal(32)
        lane = Signal(range(max(lanes, 2)))
        word = Signal(32)
        sink_busy = Signal()
        beat = Signal()
        m.d.comb += beat.eq(self.rvalid & self.rready)
        m.d.comb += self.rready.eq(sink_busy)
        wdata = Cat(*([self.rdata] * lanes))
        lane_en = Signal(lanes)
        m.d.comb += lane_en.eq(1 << lane)
        for r, port in enumerate(self.lhs_ports):
            m.d.comb += [port.addr.eq(region_base(cfg.lhs_mem_words, sreg, p.lhs_single) + sbase + word), port.data.eq(wdata)]
            m.d.comb += port.en.eq(Mux(beat & (kind == KIND_WEIGHTS) & (unit_idx == r), lane_en, 0))
        for c, port in enumerate(self.rhs_ports):
            m.d.comb += [port.addr.eq(region_base(cfg.rhs_mem_words, sreg, p.rhs_single) + word), port.data.eq(wdata)]
            m.d.comb += port.en.eq(Mux(beat & (kind == KIND_ACTS) & (unit_idx == c), lane_en, 0))
        with m.If(~sink_busy):
            with m.If(queue.r_rdy):
                m.d.comb += queue.r_en.eq(1)
                m.d.sync += [Cat(kind, sreg, scount, sunit, sbase).eq(queue.r_data), sink_busy.eq(1), unit_idx.eq(0),
                             beat_in_unit.eq(0), lane.eq(0), word.eq(0)]
        with m.Elif(beat):
            with m.If(kind == KIND_TABLE):
                for b in range(entry_beats):
                    with m.If(unit_idx == b):
                        for pos, value in ((2 * b, self.rdata[:32]), (2 * b + 1, self.rdata[32:])):
                            m.d.sync += _table_field(cfg, bank, pos, value)
                m.d.sync += unit_idx.eq(unit_idx + 1)
                with m.If(unit_idx == entry_beats - 1):
                    m.d.sync += sink_busy.eq(0)
                    m.d.comb += table_loaded_set.eq(1)
            with m.Else():
                with m.If(lane == lanes - 1):
                    m.d.sync += [lane.eq(0), word.eq(word + 1)]
                with m.Else():
                    m.d.sync += lane.eq(lane + 1)
                with m.If(beat_in_unit == sunit - 1):
                    m.d.sync += [beat_in_unit.eq(0), lane.eq(0), word.eq(0), unit_idx.eq(unit_idx + 1)]
                    with m.If(unit_idx == scount - 1):
                        m.d.sync += sink_busy.eq(0)
                        with m.If(kind == KIND_ACTS):
                            m.d.comb += self.rhs_full.give.eq(1)
                        with m.Else():
                            m.d.comb += landed.eq(1)
                with m.Else():
                    m.d.sync += beat_in_unit.eq(beat_in_unit + 1)
        # row tiles of each region's chunk whose weights are in (reset when fetch takes the region: the sink has
        # nothing of that region outstanding then)
        for r in range(2):
            take = self.lhs_free.take & (lreg == r)
            with m.If(take):
                m.d.sync += chunk.landed[r].eq(0)
            with m.Elif(landed & (sreg == r)):
                m.d.sync += chunk.landed[r].eq(chunk.landed[r] + 1)
        m.d.comb += self.finished.eq(requester_done & ~sink_busy & ~queue.r_rdy)
        m.d.comb += self.active.eq(req_progress | beat)
        return m

    @staticmethod
    def _mul(m, mul, state, a, b, dst, after_state, progress, after=()):
        with m.State(state):
            m.d.comb += [mul.a.eq(a), mul.b.eq(b), mul.start.eq(1), progress.eq(1)]
            m.next = state + "_W"
        with m.State(state + "_W"):
            m.d.comb += progress.eq(1)
            with m.If(mul.ready):
                m.d.sync += [dst.eq(mul.product), *after]
                m.next = after_state


def fit(value, width: int) -> Value:
    """``value`` zero-extended or truncated to exactly ``width`` bits."""
    value = Value.cast(value)
    return value[:width] if len(value) >= width else Cat(value, Const(0, width - len(value)))


def _table_field(cfg: OverlayConfig, bank: TileBank, pos: int, value):
    """Assignment of tile-table word ``pos`` of an entry into ``bank`` (layout: bits, rows, channels, row bits)."""
    if pos == 0:
        return [bank.tbits.eq(value)]
    if pos == 1:
        return [bank.rows.eq(value)]
    if pos < 2 + cfg.dm:
        return [bank.ch[pos - 2].eq(value)]
    return [bank.bits[pos - 2 - cfg.dm].eq(value)]


def _select(values, index):
    """``values[index]`` as a mux chain (``values[0]`` for an index out of range)."""
    result = values[0]
    for r in range(1, len(values)):
        result = Mux(index == r, values[r], result)
    return result
