"""AXI interfaces of the engine: the AXI-Lite register slave (decode generated from ``RegisterMap``) and the burst
read engine of the AXI3 master's read channels.

``RegisterSlave``: the register file at the offsets of ``RegisterMap.from_overlay(cfg)``. ``rw`` registers are
storage (``self.rw[name]``, byte strobes honoured); ``ro`` registers read the engine's signals (``self.ro[name]``,
driven by the top level; reads as 0 where nothing drives it); ``control`` (0x00) holds ap_start (reads 1 while a
run is going), ap_done (set at the end of a run, cleared when control is read), ap_idle, ap_ready (set at the end
of a run, cleared by the next start) and auto_restart (stored, not acted on); ``gie``/``ier`` are storage and
``isr`` bits are set at done (when enabled in ``ier``) and toggled by writes. Unmapped offsets read 0; writes to
them and to ``ro`` registers are ignored. A write of ap_start while a run is going is ignored.

``ReadDma``: takes commands (byte address, beats of 8 bytes) and issues INCR bursts of up to 16 beats that never
cross a 4 KiB boundary, up to ``outstanding`` bursts in flight; read data comes back in order (one ID) on the R
channel, which the consumer accepts with ``rready``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal

from autoq.overlay.regmap import AP_DONE, AP_IDLE, AP_READY, AP_START, AUTO_RESTART, RegisterMap

BEAT_BYTES = 8
MAX_BURST = 16
PAGE_BYTES = 4096


class RegisterSlave(Elaboratable):
    def __init__(self, regmap: RegisterMap):
        self.regmap = regmap
        self.addr_bits = (regmap.span - 1).bit_length()
        a = self.addr_bits
        self.awaddr, self.awvalid, self.awready = Signal(a), Signal(), Signal()
        self.wdata, self.wstrb, self.wvalid, self.wready = Signal(32), Signal(4), Signal(), Signal()
        self.bresp, self.bvalid, self.bready = Signal(2), Signal(), Signal()
        self.araddr, self.arvalid, self.arready = Signal(a), Signal(), Signal()
        self.rdata, self.rresp, self.rvalid, self.rready = Signal(32), Signal(2), Signal(), Signal()
        self.rw = {reg.name: Signal(reg.width, name=f"reg_{reg.name}") for reg in regmap
                   if reg.access == "rw" and reg.section != "control"}
        self.ro = {reg.name: Signal(reg.width, name=f"ro_{reg.name}") for reg in regmap if reg.access == "ro"}
        self.start = Signal()  # one-cycle pulse: ap_start written while idle
        self.busy = Signal()  # in: a run is going
        self.done = Signal()  # in: one-cycle pulse at the end of a run
        self.ap_done = Signal()
        self.gie, self.ier, self.isr = Signal(32), Signal(32), Signal(32)

    def elaborate(self, platform) -> Module:
        m = Module()
        aw_addr, aw_full = Signal(self.addr_bits), Signal()
        w_data, w_strb, w_full = Signal(32), Signal(4), Signal()
        ap_ready, auto_restart = Signal(), Signal()
        m.d.comb += [self.awready.eq(~aw_full & ~self.bvalid), self.wready.eq(~w_full & ~self.bvalid),
                     self.arready.eq(~self.rvalid), self.bresp.eq(0), self.rresp.eq(0)]
        with m.If(self.awvalid & self.awready):
            m.d.sync += [aw_addr.eq(self.awaddr), aw_full.eq(1)]
        with m.If(self.wvalid & self.wready):
            m.d.sync += [w_data.eq(self.wdata), w_strb.eq(self.wstrb), w_full.eq(1)]
        with m.If(self.bvalid & self.bready):
            m.d.sync += self.bvalid.eq(0)

        word = aw_addr >> 2
        write = Signal()
        m.d.comb += write.eq(aw_full & w_full)

        def merged(old):
            return Cat(*(Mux(w_strb[b], w_data[8 * b:8 * b + 8], old[8 * b:8 * b + 8]) for b in range(4)))

        start_written = Signal()
        isr_toggle = Signal(32)
        with m.If(write):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), self.bvalid.eq(1)]
            with m.Switch(word):
                with m.Case(self.regmap.offset("control") >> 2):
                    m.d.comb += start_written.eq(w_strb[0] & w_data[0])
                    with m.If(w_strb[0]):
                        m.d.sync += auto_restart.eq(w_data[7])
                with m.Case(self.regmap.offset("gie") >> 2):
                    m.d.sync += self.gie.eq(merged(self.gie))
                with m.Case(self.regmap.offset("ier") >> 2):
                    m.d.sync += self.ier.eq(merged(self.ier))
                with m.Case(self.regmap.offset("isr") >> 2):
                    m.d.comb += isr_toggle.eq(merged(Const(0, 32)))
                for name, storage in self.rw.items():
                    for i, offset in enumerate(self.regmap[name].word_offsets):
                        with m.Case(offset >> 2):
                            part = storage[32 * i:32 * i + 32]
                            m.d.sync += part.eq(merged(part))
        m.d.comb += self.start.eq(start_written & ~self.busy)
        isr_set = Mux(self.done, Cat(self.ier[0], self.ier[1]), 0)
        m.d.sync += self.isr.eq((self.isr ^ isr_toggle) | isr_set)
        with m.If(self.start):
            m.d.sync += ap_ready.eq(0)
        with m.If(self.done):
            m.d.sync += ap_ready.eq(1)

        control = Signal(32)
        m.d.comb += control.eq(Cat(self.busy, self.ap_done, ~self.busy, ap_ready, Const(0, 3), auto_restart))
        assert (AP_START, AP_DONE, AP_IDLE, AP_READY, AUTO_RESTART) == (1, 2, 4, 8, 128)
        read_control = Signal()
        with m.If(self.arvalid & self.arready):
            m.d.sync += self.rvalid.eq(1)
            with m.Switch(self.araddr >> 2):
                with m.Case(self.regmap.offset("control") >> 2):
                    m.d.sync += self.rdata.eq(control)
                    m.d.comb += read_control.eq(1)
                for name, value in (("gie", self.gie), ("ier", self.ier), ("isr", self.isr)):
                    with m.Case(self.regmap.offset(name) >> 2):
                        m.d.sync += self.rdata.eq(value)
                for reg in self.regmap:
                    if reg.section == "control":
                        continue
                    source = self.rw[reg.name] if reg.name in self.rw else self.ro[reg.name]
                    for i, offset in enumerate(reg.word_offsets):
                        with m.Case(offset >> 2):
                            m.d.sync += self.rdata.eq(source[32 * i:32 * i + 32])
                with m.Default():
                    m.d.sync += self.rdata.eq(0)
        with m.Elif(self.rvalid & self.rready):
            m.d.sync += self.rvalid.eq(0)
        # ap_done: set at the end of a run (wins over a read in the same cycle), cleared when control is read
        with m.If(self.done):
            m.d.sync += self.ap_done.eq(1)
        with m.Elif(read_control | self.start):
            m.d.sync += self.ap_done.eq(0)
        return m


class ReadDma(Elaboratable):
    """Burst read engine; ``cmd_*`` in, AXI3 AR channel out (R is passed through to the consumer by the top)."""

    def __init__(self, outstanding: int = 8):
        self.outstanding = outstanding
        self.cmd_valid, self.cmd_ready = Signal(), Signal()
        self.cmd_addr, self.cmd_beats = Signal(32), Signal(32)
        self.araddr, self.arlen, self.arvalid, self.arready = Signal(32), Signal(4), Signal(), Signal()
        self.burst_done = Signal()  # in: an R beat with rlast was accepted
        self.idle = Signal()  # no command being issued and nothing in flight

    def elaborate(self, platform) -> Module:
        m = Module()
        busy = Signal()
        addr, remaining = Signal(32), Signal(32)
        inflight = Signal(range(self.outstanding + 1))
        to_page = Signal(range(PAGE_BYTES // BEAT_BYTES + 1))
        length = Signal(range(MAX_BURST + 1))
        m.d.comb += to_page.eq(PAGE_BYTES // BEAT_BYTES - addr[3:12])
        m.d.comb += length.eq(MAX_BURST)
        with m.If(remaining < MAX_BURST):
            m.d.comb += length.eq(remaining)
        with m.If((to_page < MAX_BURST) & (to_page < remaining)):
            m.d.comb += length.eq(to_page)
        m.d.comb += [self.cmd_ready.eq(~busy), self.arvalid.eq(busy & (inflight < self.outstanding)),
                     self.araddr.eq(Cat(Const(0, 3), addr[3:])), self.arlen.eq(length - 1),
                     self.idle.eq(~busy & (inflight == 0))]
        issued = Signal()
        m.d.comb += issued.eq(self.arvalid & self.arready)
        m.d.sync += inflight.eq(inflight + issued - self.burst_done)
        with m.If(self.cmd_valid & self.cmd_ready):
            m.d.sync += [addr.eq(self.cmd_addr), remaining.eq(self.cmd_beats), busy.eq(self.cmd_beats != 0)]
        with m.If(issued):
            m.d.sync += [addr.eq(addr + (length << 3)), remaining.eq(remaining - length)]
            with m.If(remaining == length):
                m.d.sync += busy.eq(0)
        return m
