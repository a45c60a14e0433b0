"""Execute stage: the Dm x Dn dot-product array (AND + popcount + shift + conditional negate, no multipliers).

Per step (one row tile x one column tile; for each column tile the row tiles of the weight chunk in lhs region
``lreg`` one after the other, entry ``k`` read from the chunk entry memory; on the first column tile row tile
``k`` waits until ``ChunkState.landed`` says its weights are in) it takes an ``rhs_full`` token (only for the
chunk's first row tile: the activations serve them all), then streams ``tbits * abits * kw``
cycles: weight plane ``i`` (outer), activation plane ``j``, Dk-word ``w`` (inner), every unit ``(r, c)`` doing
``acc += (-1 if neg_r else 1) * (popcount(lhs_r & rhs_c) << (i + j))`` where ``neg_r`` marks row ``r``'s MSB plane
(``i == bits_r - 1``, ``bits_r >= 2``); planes at or above a row's width are zero in the buffer. A column unit
accumulates ``colsum_c = sum_j popcount(rhs_c) << j`` during the ``i == 0`` passes, and a binary row ({-1, +1},
``bits_r == 1``) reads out ``2 * acc - colsum_c`` (applied once per column, after the drain's row select).
Pipeline: buffer read, the first two levels of a compressor tree (``common.CompressorLevel``: the AND fused into
full adders, then 6:3 counters), the rest of the tree and one carry-chain add, accumulate (``PIPE`` cycles after
the last read). It gives ``rhs_free`` after the last read of the chunk's last row tile (or, on the first column
tile, when the chunk closes after its step), then takes ``res_free``, drains the accumulators row by row (``Dm``
cycles) into the result region with the step's ``ResultBank``, gives ``res_full`` and, after the chunk's last
step (last row tile, last column tile), ``lhs_free``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Elaboratable, Module, Mux, Signal

from autoq.overlay.manifest import OverlayConfig

from .common import ChunkState, EntryLayout, LayerParams, ResultBank, Token, chunk_slots, column_sum, compress, region_base

PIPE = 3
STAGE1_LEVELS = 2  # compressor levels before the stage-1 register


class Execute(Elaboratable):
    def __init__(self, cfg: OverlayConfig, p: LayerParams, entry_port, chunk: ChunkState,
                 rbanks: list[ResultBank], lhs_ports, rhs_ports, res_port, rhs_full: Token, rhs_free: Token,
                 lhs_free: Token, res_free: Token, res_full: Token):
        self.cfg, self.p, self.rbanks = cfg, p, rbanks
        self.entry_port, self.chunk = entry_port, chunk
        self.lhs_ports, self.rhs_ports, self.res_port = lhs_ports, rhs_ports, res_port
        self.rhs_full, self.rhs_free, self.lhs_free = rhs_full, rhs_free, lhs_free
        self.res_free, self.res_full = res_free, res_full
        self.start = Signal()
        self.finished = Signal()
        self.active = Signal()

    def elaborate(self, platform) -> Module:
        cfg, p = self.cfg, self.p
        dm, dn, acc_bits = cfg.dm, cfg.dn, cfg.acc_bits
        m = Module()
        lreg, rreg, qreg = Signal(), Signal(), Signal()
        step, n0 = Signal(32), Signal(32)
        i, j, w = Signal(32), Signal(32), Signal(32)
        la_plane, ra_plane = Signal(32), Signal(32)
        flush = Signal(range(PIPE + 1))
        row = Signal(range(dm + 1))
        progress = Signal()
        running = Signal()

        # the step's row tile: entry k of the chunk in lhs region lreg (an asynchronous read of the entry memory)
        slots = chunk_slots(cfg)
        k = Signal(range(slots + 1))
        m.d.comb += self.entry_port.addr.eq(Mux(lreg, slots, 0) + k)
        entry = EntryLayout(cfg).unpack(self.entry_port.data)
        tbits, rows, kw = entry.tbits, entry.rows, entry.kw
        row_bits = entry.bits
        chunk = self.chunk
        clen = Mux(lreg, chunk.length[1], chunk.length[0])
        closed = Mux(lreg, chunk.closed[1], chunk.closed[0])
        landed = Mux(lreg, chunk.landed[1], chunk.landed[0])
        last_k, pass_over, rhs_held = Signal(), Signal(), Signal()
        # the chunk's last row tile (known once fetch has closed the chunk; on the first column tile that can come
        # after the step, then WAIT ends the column tile's pass)
        m.d.comb += [last_k.eq(closed & (k == clen - 1)), pass_over.eq(closed & (k == clen))]
        last_col = Signal()
        m.d.comb += last_col.eq(n0 + dn >= p.n)
        remaining = Signal(32)
        m.d.comb += remaining.eq(p.n - n0)
        cols = Mux(remaining < dn, remaining, dn)

        # ---- issue
        issue = Signal()
        last_w, last_j, last_i = Signal(), Signal(), Signal()
        m.d.comb += [last_w.eq(w == kw - 1), last_j.eq(j == p.abits - 1), last_i.eq(i == tbits - 1)]
        for port in self.lhs_ports:
            m.d.comb += port.addr.eq(region_base(cfg.lhs_mem_words, lreg, p.lhs_single) + entry.lbase + la_plane + w)
        for port in self.rhs_ports:
            m.d.comb += port.addr.eq(region_base(cfg.rhs_mem_words, rreg, p.rhs_single) + ra_plane + w)
        shift_w = (2 * cfg.max_bits - 1).bit_length()
        c1_valid, c1_first, c1_csum = Signal(), Signal(), Signal()
        c1_shift, c1_neg = Signal(shift_w), Signal(dm)
        m.d.sync += [c1_valid.eq(issue), c1_first.eq((i == 0) & (j == 0) & (w == 0)), c1_csum.eq(i == 0),
                     c1_shift.eq(i + j),
                     c1_neg.eq(Cat(*((i == row_bits[r] - 1) & (row_bits[r] >= 2) for r in range(dm))))]

        # ---- stage 1: AND + the first compressor levels
        lhs = [port.data for port in self.lhs_ports]
        rhs = [port.data for port in self.rhs_ports]

        def registered(columns, name):
            regs = []
            for w, column in enumerate(columns):
                reg = Signal(len(column), name=f"{name}_w{w}")
                m.d.sync += reg.eq(Cat(*column))
                regs.append([reg[k] for k in range(len(column))])
            return regs

        pc1 = [[registered(compress(m, f"pc_{r}_{c}", products=(lhs[r], rhs[c]), levels=STAGE1_LEVELS), f"pc1_{r}_{c}")
                for c in range(dn)] for r in range(dm)]
        cc1 = [registered(compress(m, f"cc_{c}", columns=[[rhs[c][k] for k in range(cfg.dk)]], levels=STAGE1_LEVELS),
                          f"cc1_{c}") for c in range(dn)]
        c2_valid, c2_first, c2_csum = Signal(), Signal(), Signal()
        c2_shift, c2_neg = Signal(shift_w), Signal(dm)
        m.d.sync += [c2_valid.eq(c1_valid), c2_first.eq(c1_first), c2_csum.eq(c1_csum), c2_shift.eq(c1_shift),
                     c2_neg.eq(c1_neg)]

        # ---- stage 2: the rest of the compressor trees, one add
        def total(columns, name):
            out = Signal(range(cfg.dk + 1), name=name)
            m.d.sync += out.eq(column_sum(compress(m, name, columns=columns)))
            return out

        pc2 = [[total(pc1[r][c], f"pc2_{r}_{c}") for c in range(dn)] for r in range(dm)]
        cc2 = [total(cc1[c], f"cc2_{c}") for c in range(dn)]
        c3_valid, c3_first, c3_csum = Signal(), Signal(), Signal()
        c3_shift, c3_neg = Signal(shift_w), Signal(dm)
        m.d.sync += [c3_valid.eq(c2_valid), c3_first.eq(c2_first), c3_csum.eq(c2_csum), c3_shift.eq(c2_shift),
                     c3_neg.eq(c2_neg)]

        # ---- stage 3: shift, conditional negate, accumulate
        acc = [[Signal(acc_bits, name=f"acc_{r}_{c}") for c in range(dn)] for r in range(dm)]
        colsum = [Signal(acc_bits, name=f"colsum_{c}") for c in range(dn)]
        with m.If(c3_valid):
            for r in range(dm):
                neg = c3_neg[r]
                for c in range(dn):
                    x = (pc2[r][c] << c3_shift)[:acc_bits]
                    base = Mux(c3_first, 0, acc[r][c])
                    m.d.sync += acc[r][c].eq(base + (x ^ neg.replicate(acc_bits)) + neg)
            for c in range(dn):
                with m.If(c3_csum):
                    x = (cc2[c] << c3_shift)[:acc_bits]
                    m.d.sync += colsum[c].eq(Mux(c3_first, 0, colsum[c]) + x)

        # ---- drain: one row per cycle into the result region (binary rows: 2 * acc - colsum, after the row select)
        binary = row_bits[0] == 1
        for r in range(1, dm):
            binary = Mux(row == r, row_bits[r] == 1, binary)
        words = []
        for c in range(dn):
            select = acc[0][c]
            for r in range(1, dm):
                select = Mux(row == r, acc[r][c], select)
            selected = Signal(acc_bits, name=f"drain_acc_{c}")
            m.d.comb += selected.eq(select)
            words.append(Mux(binary, (selected << 1) - colsum[c], selected)[:acc_bits])
        m.d.comb += [self.res_port.addr.eq(Mux(qreg, dm, 0) + row), self.res_port.data.eq(Cat(*words))]

        with m.FSM(name="execute"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [lreg.eq(0), rreg.eq(0), qreg.eq(0), step.eq(0), n0.eq(0), k.eq(0), running.eq(1)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(step == p.total_steps):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
                with m.Elif(k == 0):
                    # a column tile's activations serve every row tile of the chunk: one rhs_full for the first
                    with m.If(self.rhs_full.avail & ((n0 != 0) | (landed != 0))):
                        m.d.comb += [self.rhs_full.take.eq(1), progress.eq(1)]
                        m.d.sync += [i.eq(0), j.eq(0), w.eq(0), la_plane.eq(0), ra_plane.eq(0), rhs_held.eq(1)]
                        m.next = "ISSUE"
                with m.Elif(pass_over):
                    # the column tile's pass over the chunk is done
                    m.d.comb += progress.eq(1)
                    with m.If(rhs_held):
                        m.d.comb += self.rhs_free.give.eq(1)
                        m.d.sync += [rreg.eq(~rreg), rhs_held.eq(0)]
                    m.d.sync += k.eq(0)
                    with m.If(last_col):
                        m.d.comb += self.lhs_free.give.eq(1)
                        m.d.sync += [n0.eq(0), lreg.eq(~lreg)]
                    with m.Else():
                        m.d.sync += n0.eq(n0 + dn)
                with m.Elif((n0 != 0) | (landed > k)):
                    # the next row tile of the chunk (on the first column tile: once its weights are in)
                    m.d.comb += progress.eq(1)
                    m.d.sync += [i.eq(0), j.eq(0), w.eq(0), la_plane.eq(0), ra_plane.eq(0)]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [issue.eq(1), progress.eq(1)]
                with m.If(~last_w):
                    m.d.sync += w.eq(w + 1)
                with m.Else():
                    m.d.sync += w.eq(0)
                    with m.If(~last_j):
                        m.d.sync += [j.eq(j + 1), ra_plane.eq(ra_plane + kw)]
                    with m.Else():
                        m.d.sync += [j.eq(0), ra_plane.eq(0)]
                        with m.If(~last_i):
                            m.d.sync += [i.eq(i + 1), la_plane.eq(la_plane + kw)]
                        with m.Else():
                            with m.If(last_k):
                                m.d.comb += self.rhs_free.give.eq(1)
                                m.d.sync += [rreg.eq(~rreg), rhs_held.eq(0)]
                            m.d.sync += flush.eq(PIPE)
                            m.next = "FLUSH"
            with m.State("FLUSH"):
                m.d.comb += progress.eq(1)
                m.d.sync += flush.eq(flush - 1)
                with m.If(flush == 1):
                    m.next = "RES"
            with m.State("RES"):
                with m.If(self.res_free.avail):
                    m.d.comb += [self.res_free.take.eq(1), progress.eq(1)]
                    m.d.sync += row.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += [progress.eq(1), self.res_port.en.eq(1)]
                m.d.sync += row.eq(row + 1)
                with m.If(row == dm - 1):
                    for q, rb in enumerate(self.rbanks):
                        with m.If(qreg == q):
                            m.d.sync += [rb.rows.eq(rows), rb.cols.eq(cols), rb.first.eq(n0 == 0),
                                         rb.newcol.eq(k == 0)]
                            m.d.sync += [rb.chan_off[r].eq(entry.chan_off[r]) for r in range(dm)]
                    m.d.comb += self.res_full.give.eq(1)
                    m.d.sync += [qreg.eq(~qreg), step.eq(step + 1), k.eq(k + 1)]
                    m.next = "WAIT"
        m.d.comb += [self.finished.eq(~running), self.active.eq(progress)]
        return m
