"""Result stage: writes each step's ``rows x cols`` int32 results to DDR (NCHW, original channels) as bursts.

Per step it takes ``res_full``, then for each used row walks its columns: column ``n`` of channel ``ch`` lies at
``results + 4 * (b * c_out * OHW + ch * OHW + pix)`` with ``n = b * OHW + pix``, tracked incrementally (no
division). Consecutive columns of one image form one INCR burst of 64-bit beats (two int32 per beat, byte strobes
for an odd start or end), cut at 16 beats and at 4 KiB boundaries. It gives ``res_free`` after the step's last
beat; the run finishes once every write response is back.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal

from autoq.overlay.manifest import OverlayConfig

from .axi import MAX_BURST, PAGE_BYTES
from .common import LayerParams, ResultBank, Token


class Result(Elaboratable):
    def __init__(self, cfg: OverlayConfig, p: LayerParams, rbanks: list[ResultBank], res_port, res_full: Token,
                 res_free: Token, outstanding: int = 16):
        self.cfg, self.p, self.rbanks, self.res_port = cfg, p, rbanks, res_port
        self.res_full, self.res_free = res_full, res_free
        self.outstanding = outstanding
        self.start = Signal()
        self.finished = Signal()
        self.active = Signal()
        self.awaddr, self.awlen, self.awvalid, self.awready = Signal(32), Signal(4), Signal(), Signal()
        self.wdata, self.wstrb, self.wlast, self.wvalid, self.wready = Signal(64), Signal(8), Signal(), Signal(), Signal()
        self.bvalid, self.bready = Signal(), Signal()

    def elaborate(self, platform) -> Module:
        cfg, p = self.cfg, self.p
        dm, dn, acc = cfg.dm, cfg.dn, cfg.acc_bits
        m = Module()
        qreg = Signal()
        step = Signal(32)
        row = Signal(range(dm + 1))
        j = Signal(range(dn + 2))
        pix, img, addr = Signal(32), Signal(32), Signal(32)
        pix0, img0 = Signal(32), Signal(32)
        pix_end, img_end = Signal(32), Signal(32)  # where the last step's columns ended
        run_left = Signal(range(2 * MAX_BURST + 1))
        inflight = Signal(range(self.outstanding + 1))
        running = Signal()
        progress = Signal()

        def pick(getter):
            return Mux(qreg, getter(self.rbanks[1]), getter(self.rbanks[0]))

        rows, cols = pick(lambda b: b.rows), pick(lambda b: b.cols)
        chan_off = pick(lambda b: b.chan_off[0])
        for r in range(1, dm):
            chan_off = Mux(row == r, pick(lambda b, r=r: b.chan_off[r]), chan_off)
        m.d.comb += self.res_port.addr.eq(Mux(qreg, dm, 0) + row)
        data = self.res_port.data
        col = [data.word_select(j, acc)[:32], data.word_select(j + 1, acc)[:32]]

        # run length of the next burst: columns left, to the image's end, to the 4 KiB page, 16 beats
        odd = addr[2]
        run = Signal(range(2 * MAX_BURST + 1))
        left, to_image = Signal(32), Signal(32)
        to_page = Signal(range(PAGE_BYTES // 4 + 1))
        m.d.comb += [left.eq(cols - j), to_image.eq(p.ohw - pix), to_page.eq(PAGE_BYTES // 4 - addr[2:12])]
        cap = Signal(range(2 * MAX_BURST + 1))
        m.d.comb += cap.eq(2 * MAX_BURST - odd)
        m.d.comb += run.eq(cap)
        with m.If(to_page < cap):
            m.d.comb += run.eq(to_page)
        with m.If((to_image < cap) & (to_image < to_page)):
            m.d.comb += run.eq(to_image)
        with m.If((left < cap) & (left < to_page) & (left < to_image)):
            m.d.comb += run.eq(left)
        beats = (odd + run + 1) >> 1
        m.d.comb += [self.awaddr.eq(Cat(Const(0, 3), addr[3:])), self.awlen.eq(beats - 1)]

        two = Signal()
        m.d.comb += two.eq(~odd & (run_left >= 2))
        m.d.comb += [self.wdata.eq(Mux(odd, Cat(Const(0, 32), col[0]), Cat(col[0], Mux(two, col[1], 0)))),
                     self.wstrb.eq(Mux(odd, 0xF0, Mux(two, 0xFF, 0x0F))),
                     self.wlast.eq(run_left == 1 + two)]
        m.d.comb += self.bready.eq(1)
        aw_done = Signal()
        m.d.comb += aw_done.eq(self.awvalid & self.awready)
        m.d.sync += inflight.eq(inflight + aw_done - (self.bvalid & self.bready))

        with m.FSM(name="result"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [qreg.eq(0), step.eq(0), running.eq(1)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(step == p.total_steps):
                    m.next = "DRAIN_B"
                with m.Elif(self.res_full.avail):
                    m.d.comb += [self.res_full.take.eq(1), progress.eq(1)]
                    m.d.sync += row.eq(0)
                    with m.If(pick(lambda b: b.first)):
                        m.d.sync += [pix0.eq(0), img0.eq(p.results_addr)]
                    with m.Elif(pick(lambda b: b.newcol)):
                        # a new column tile (the chunk's other row tiles of a column tile start at the same column)
                        m.d.sync += [pix0.eq(pix_end), img0.eq(img_end)]
                    m.next = "ROW"
            with m.State("ROW"):
                m.d.comb += progress.eq(1)
                m.d.sync += [pix.eq(pix0), img.eq(img0), addr.eq(img0 + chan_off + (pix0 << 2)), j.eq(0)]
                m.next = "AW"
            with m.State("AW"):
                with m.If(inflight < self.outstanding):
                    m.d.comb += self.awvalid.eq(1)
                    with m.If(self.awready):
                        m.d.comb += progress.eq(1)
                        m.d.sync += run_left.eq(run)
                        m.next = "W"
            with m.State("W"):
                m.d.comb += self.wvalid.eq(1)
                with m.If(self.wready):
                    m.d.comb += progress.eq(1)
                    consumed = 1 + two
                    m.d.sync += [j.eq(j + consumed), addr.eq(addr + (consumed << 2)), pix.eq(pix + consumed),
                                 run_left.eq(run_left - consumed)]
                    with m.If(self.wlast):
                        m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += progress.eq(1)
                with m.If(pix == p.ohw):
                    m.d.sync += [pix.eq(0), img.eq(img + p.img_stride), addr.eq(img + p.img_stride + chan_off)]
                with m.If(j == cols):
                    m.next = "ROW_END"
                with m.Else():
                    m.next = "AW"
            with m.State("ROW_END"):
                m.d.comb += progress.eq(1)
                with m.If(row == rows - 1):
                    m.d.sync += [qreg.eq(~qreg), step.eq(step + 1), pix_end.eq(pix), img_end.eq(img)]
                    m.d.comb += self.res_free.give.eq(1)
                    m.next = "WAIT"
                with m.Else():
                    m.d.sync += row.eq(row + 1)
                    m.next = "ROW"
            with m.State("DRAIN_B"):
                with m.If(inflight == 0):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
        m.d.comb += [self.finished.eq(~running), self.active.eq(progress)]
        return m
