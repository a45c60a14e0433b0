"""The engine's controller: command decode, layer setup (sequential multiply/divide), tile-table check, run.

On ``start`` it reads ``command``: ``CMD_IDENTIFY`` makes the ID block visible and reports ``Status.OK``;
``CMD_RUN`` latches the buffer addresses and runs a setup sequence over the descriptor registers on one
``SeqMul`` and one ``SeqDiv`` (~40 states, a few hundred cycles) that derives ``LayerParams`` and rejects what
``overlay/emulated.py`` rejects:

- ``BAD_DESCRIPTOR``: a zero size (c_in, c_out, groups, kernel, stride, in/out size, batch), ``groups`` not
  dividing ``c_in`` and ``c_out``, ``abits`` outside ``[1, max_bits]``; a row wider than ``max_bits`` (found by the
  table check);
- ``BAD_TABLE``: ``num_tiles`` other than the layout's (``groups * ceil(m / Dm)``, packed ``ceil(c_out / Dm)``), and
  any entry other than ``layout.tile_table`` builds, checked while streaming the table once from DDR: rows equal the
  layout's tile sizes, channels inside their block, in the layout's order (bits descending, channel ascending:
  with the row count this makes every block a permutation of its channels), tile bits equal to its first row's,
  row bits in ``[1, ...]`` (``[2, ...]`` in a packed tile, where the layout stores binary rows as 2-bit rows),
  unused slots ``NO_CHANNEL``/0;
- ``BUFFER_OVERFLOW``: a tile whose weights (``kwords * tile bits``) or activations (``kwords * abits``) exceed
  ``lhs_mem_words`` / ``rhs_mem_words`` (compared against elaboration-time tables of ``floor(mem / bits)``); a
  tile that needs more than half of a buffer makes that buffer single-region for the layer (``LayerParams``).

Otherwise it starts the three stages and reports ``Status.OK`` when all of them have finished (the result stage's
last write response included). Any other command reports ``BAD_COMMAND``.
"""
from __future__ import annotations

from amaranth.hdl import Const, Elaboratable, Module, Mux, Signal

from autoq.overlay.layout import NO_CHANNEL, row_tile_words
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.regmap import CMD_IDENTIFY, CMD_RUN, Status

from .arith import SeqDiv, SeqMul
from .common import WORD_BITS, LayerParams

DESCRIPTOR_NONZERO = ("c_in", "c_out", "groups", "kh", "kw", "stride_h", "stride_w", "in_h", "in_w", "out_h",
                      "out_w", "batch")


def _power_of_two(value) -> bool:
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


def _by_shift(step):
    """A multiply or divide by an elaboration-time power of two as a one-cycle shift."""
    if step[0] == "mul" and _power_of_two(step[3]):
        dst, a, shift = step[1], step[2], step[3].bit_length() - 1
        return ("do", lambda: [dst.eq(a << shift)])
    if step[0] == "div" and _power_of_two(step[3]) and not step[4]:
        dst, n, shift = step[1], step[2], step[3].bit_length() - 1
        return ("do", lambda: [dst.eq(n >> shift)])
    return step


class Controller(Elaboratable):
    def __init__(self, cfg: OverlayConfig, regs: dict[str, Signal], params: LayerParams):
        self.cfg, self.regs, self.p = cfg, regs, params
        self.start = Signal()
        self.busy = Signal()
        self.done = Signal()
        self.status = Signal(32)
        self.id_valid = Signal()
        # DMA, owned by the controller while ``prepass`` (the tile-table check)
        self.prepass = Signal()
        self.cmd_valid, self.cmd_ready = Signal(), Signal()
        self.cmd_addr, self.cmd_beats = Signal(32), Signal(32)
        self.rdata, self.rvalid = Signal(64), Signal()
        # stages
        self.run_start = Signal()  # pulse: reset tokens and start fetch/execute/result
        self.stages_done = Signal()  # in: all three stages have finished

    def elaborate(self, platform) -> Module:
        cfg, regs, p = self.cfg, self.regs, self.p
        m = Module()
        m.submodules.mul = mul = SeqMul(32)
        m.submodules.div = div = SeqDiv(32)
        lanes = cfg.dk // WORD_BITS

        # scratch values of the setup sequence
        cpg, k, kf, kl, col_tiles, expected_tiles, table_beats, nblocks, rem = (Signal(32, name=n) for n in (
            "s_cpg", "s_k", "s_kf", "s_kl", "s_col_tiles", "s_expected_tiles", "s_table_beats", "s_nblocks", "s_rem"))
        tmp = Signal(32)
        bad_rem = Signal()

        def reg(name):
            return regs[name][:32]

        # (kind, ...) steps: ("mul", dst, a, b), ("div", dst, n, d, check remainder), ("do", fn(m) -> None)
        steps = [
            ("div", p.m, reg("c_out"), reg("groups"), True),
            ("div", cpg, reg("c_in"), reg("groups"), True),
            ("mul", tmp, reg("kh"), cpg),
            ("mul", k, reg("kw"), tmp),
            ("mul", p.ohw, reg("out_h"), reg("out_w")),
            ("mul", p.n, reg("batch"), p.ohw),
            ("mul", tmp, reg("c_out"), p.ohw),
            ("do", lambda: [p.img_stride.eq(tmp << 2), p.ohw4.eq(p.ohw << 2),
                            p.packed.eq((p.m == 1) & (reg("groups") > 1))]),
            ("do", lambda: [p.rows_total.eq(Mux(p.packed, reg("c_out"), p.m)),
                            nblocks.eq(Mux(p.packed, 1, reg("groups")))]),
            ("div", p.kwords, k + (cfg.dk - 1), cfg.dk, False),
            ("mul", p.wpp, p.kwords, lanes),
            ("div", p.tpb, p.rows_total + (cfg.dm - 1), cfg.dm, False),
            ("mul", tmp, p.tpb - 1, cfg.dm),
            ("do", lambda: [p.last_rows.eq(p.rows_total - tmp)]),
            ("mul", expected_tiles, nblocks, p.tpb),
            ("div", col_tiles, p.n + (cfg.dn - 1), cfg.dn, False),
            ("mul", p.total_steps, reg("num_tiles"), col_tiles),
            ("mul", kf, k, cfg.dm),
            ("div", p.kwf, kf + (cfg.dk - 1), cfg.dk, False),
            ("mul", p.wppf, p.kwf, lanes),
            ("mul", kl, k, p.last_rows),
            ("div", p.kwl, kl + (cfg.dk - 1), cfg.dk, False),
            ("mul", p.wppl, p.kwl, lanes),
            ("mul", table_beats, reg("num_tiles"), row_tile_words(cfg.dm) // 2),
        ]
        assert row_tile_words(cfg.dm) % 2 == 0

        # ---- tile-table check state
        dm = cfg.dm
        entry_beats = row_tile_words(dm) // 2
        beat = Signal(range(entry_beats))
        beats_seen = Signal(32)
        t_rows = Signal(32)
        t_bits = Signal(32)
        t_ch = [Signal(32, name=f"chk_ch{s}") for s in range(dm)]
        prev_bits, prev_ch, have_prev = Signal(32), Signal(32), Signal()
        tt = Signal(32)
        blk_lo = Signal(32)
        bad_table, too_wide, overflow = Signal(), Signal(), Signal()
        lhs_big, rhs_big = Signal(), Signal()
        m.d.comb += [p.lhs_single.eq(lhs_big), p.rhs_single.eq(rhs_big)]
        lhs_limit = [(cfg.lhs_mem_words // b, cfg.lhs_mem_words // 2 // b) for b in range(1, cfg.max_bits + 1)]
        rhs_limit = [(cfg.rhs_mem_words // b, cfg.rhs_mem_words // 2 // b) for b in range(1, cfg.max_bits + 1)]

        def limit(table, which, index):
            value = Const(0, 32)
            for b, lims in enumerate(table, start=1):
                value = Mux(index == b, lims[which], value)
            return value

        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += self.busy.eq(1)
                    with m.If(reg("command") == CMD_IDENTIFY):
                        m.next = "IDENTIFY"
                    with m.Elif(reg("command") == CMD_RUN):
                        m.d.sync += [p.abits.eq(reg("abits")), p.num_tiles.eq(reg("num_tiles")), bad_rem.eq(0)]
                        for name in ("weights_addr", "activations_addr", "results_addr", "tiles_addr"):
                            m.d.sync += getattr(p, name).eq(reg(name))
                        m.next = "CHECK"
                    with m.Else():
                        m.d.sync += self.status.eq(Status.BAD_COMMAND)
                        m.next = "FINISH"
            with m.State("IDENTIFY"):
                m.d.sync += [self.id_valid.eq(1), self.status.eq(Status.OK)]
                m.next = "FINISH"
            with m.State("CHECK"):
                zero = Const(0)
                for name in DESCRIPTOR_NONZERO:
                    zero = zero | (reg(name) == 0)
                with m.If(zero | (reg("abits") == 0) | (reg("abits") > cfg.max_bits)):
                    m.d.sync += self.status.eq(Status.BAD_DESCRIPTOR)
                    m.next = "FINISH"
                with m.Else():
                    m.next = "SETUP_0"
            for index, step in enumerate(steps):
                here, after = f"SETUP_{index}", f"SETUP_{index + 1}"
                step = _by_shift(step)
                if step[0] == "do":
                    with m.State(here):
                        m.d.sync += step[1]()
                        m.next = after
                    continue
                unit = mul if step[0] == "mul" else div
                with m.State(here):
                    if step[0] == "mul":
                        m.d.comb += [mul.a.eq(step[2]), mul.b.eq(step[3]), mul.start.eq(1)]
                    else:
                        m.d.comb += [div.n.eq(step[2]), div.d.eq(step[3]), div.start.eq(1)]
                    m.next = here + "_W"
                with m.State(here + "_W"):
                    with m.If(unit.ready):
                        if step[0] == "mul":
                            m.d.sync += step[1].eq(mul.product)
                        else:
                            m.d.sync += step[1].eq(div.quotient)
                            if step[4]:
                                m.d.sync += bad_rem.eq(bad_rem | (div.remainder != 0))
                        m.next = after
            with m.State(f"SETUP_{len(steps)}"):
                with m.If(bad_rem):
                    m.d.sync += self.status.eq(Status.BAD_DESCRIPTOR)
                    m.next = "FINISH"
                with m.Elif(expected_tiles != p.num_tiles):
                    m.d.sync += self.status.eq(Status.BAD_TABLE)
                    m.next = "FINISH"
                with m.Else():
                    m.d.sync += [beat.eq(0), beats_seen.eq(0), tt.eq(0), blk_lo.eq(0), have_prev.eq(0),
                                 bad_table.eq(0), too_wide.eq(0), overflow.eq(0), lhs_big.eq(0), rhs_big.eq(0)]
                    m.next = "TABLE_CMD"
            with m.State("TABLE_CMD"):
                m.d.comb += [self.prepass.eq(1), self.cmd_valid.eq(1), self.cmd_addr.eq(p.tiles_addr),
                             self.cmd_beats.eq(table_beats)]
                with m.If(self.cmd_ready):
                    m.next = "TABLE"
            with m.State("TABLE"):
                m.d.comb += self.prepass.eq(1)
                with m.If(self.rvalid):
                    self._check_beat(m, beat, t_rows, t_bits, t_ch, prev_bits, prev_ch, have_prev, tt, blk_lo,
                                     bad_table, too_wide, overflow, lhs_big, rhs_big, limit, lhs_limit, rhs_limit)
                    m.d.sync += beats_seen.eq(beats_seen + 1)
                    with m.If(beat == entry_beats - 1):
                        m.d.sync += beat.eq(0)
                    with m.Else():
                        m.d.sync += beat.eq(beat + 1)
                with m.If(beats_seen == table_beats):
                    m.next = "TABLE_END"
            with m.State("TABLE_END"):
                with m.If(bad_table):
                    m.d.sync += self.status.eq(Status.BAD_TABLE)
                    m.next = "FINISH"
                with m.Elif(too_wide):
                    m.d.sync += self.status.eq(Status.BAD_DESCRIPTOR)
                    m.next = "FINISH"
                with m.Elif(overflow):
                    m.d.sync += self.status.eq(Status.BUFFER_OVERFLOW)
                    m.next = "FINISH"
                with m.Else():
                    m.d.comb += self.run_start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.stages_done):
                    m.d.sync += self.status.eq(Status.OK)
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += self.done.eq(1)
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"
        return m

    def _check_beat(self, m, beat, t_rows, t_bits, t_ch, prev_bits, prev_ch, have_prev, tt, blk_lo, bad_table,
                    too_wide, overflow, lhs_big, rhs_big, limit, lhs_limit, rhs_limit):
        """Checks of one 64-bit beat of the tile table (two uint32 words at static entry positions)."""
        cfg, p, dm = self.cfg, self.p, self.cfg.dm
        entry_beats = row_tile_words(dm) // 2
        last_tile = tt == p.tpb - 1
        with m.Switch(beat):
            for b in range(entry_beats):
                with m.Case(b):
                    words = {2 * b: self.rdata[:32], 2 * b + 1: self.rdata[32:]}
                    rows = words[1] if 1 in words else t_rows
                    state = (prev_bits, prev_ch, have_prev)
                    table_err, wide_err, over_err = Const(0), Const(0), Const(0)
                    for pos, word in words.items():
                        if pos == 0:
                            m.d.sync += t_bits.eq(word)
                        elif pos == 1:
                            m.d.sync += t_rows.eq(word)
                            expected = Mux(last_tile, p.last_rows, dm)
                            kw = Mux(p.packed, Mux(word == dm, p.kwf, p.kwl), p.kwords)
                            table_err = table_err | (word != expected)
                            over_err = over_err | (kw > limit(lhs_limit, 0, words[0])) | (kw > limit(rhs_limit, 0, p.abits))
                            with m.If(kw > limit(lhs_limit, 1, words[0])):
                                m.d.sync += lhs_big.eq(1)
                            with m.If(kw > limit(rhs_limit, 1, p.abits)):
                                m.d.sync += rhs_big.eq(1)
                        elif pos < 2 + dm:
                            s = pos - 2
                            m.d.sync += t_ch[s].eq(word)
                            used = s < rows
                            inside = (word >= blk_lo) & (word < blk_lo + p.rows_total)
                            table_err = table_err | Mux(used, ~inside, word != NO_CHANNEL)
                        else:
                            s = pos - 2 - dm
                            ch = words.get(2 + s, t_ch[s])
                            used = s < rows
                            pb, pc, hp = state
                            ordered = (word < pb) | ((word == pb) & (ch > pc))
                            # a packed tile's binary rows are 2-bit rows (``layout.stored_weight_bits``)
                            err_used = (word == 0) | (hp & ~ordered) | (p.packed & (word == 1))
                            if s == 0:
                                err_used = err_used | (word != (words[0] if 0 in words else t_bits))
                            table_err = table_err | Mux(used, err_used, word != 0)
                            wide_err = wide_err | (used & (word > cfg.max_bits))
                            state = (Mux(used, word, pb), Mux(used, ch, pc), hp | used)
                    m.d.sync += [bad_table.eq(bad_table | table_err), too_wide.eq(too_wide | wide_err),
                                 overflow.eq(overflow | over_err)]
                    m.d.sync += [prev_bits.eq(state[0]), prev_ch.eq(state[1]), have_prev.eq(state[2])]
                    if b == entry_beats - 1:
                        with m.If(last_tile):
                            m.d.sync += [tt.eq(0), blk_lo.eq(blk_lo + p.rows_total), have_prev.eq(0)]
                        with m.Else():
                            m.d.sync += tt.eq(tt + 1)
