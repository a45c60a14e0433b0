"""Top level of the RTL engine: ``BitSerialEngine`` (an Amaranth component) and ``verilog(cfg)``.

It wires the AXI-Lite register slave, the controller, the three stages (``fetch``, ``dpa`` = execute,
``result``), their tokens and buffers, the read DMA and the instrumentation counters; see ``hls/rtl/__init__``
for the port contract and the microarchitecture.

Buffers (Amaranth ``Memory``): ``Dm`` weight buffers of ``lhs_mem_words`` Dk-bit words (one per array row),
``Dn`` activation buffers of ``rhs_mem_words`` (one per column), each run as two half-size regions, or as one
region for a layer with a tile that needs more than half (``LayerParams.lhs_single``/``rhs_single``); one result
buffer of ``2 * Dm`` words of ``Dn * acc_bits`` bits (two regions); the chunk entry memory, ``2 * chunk_slots``
entries (``common.EntryLayout``: a row tile's bits, rows, channel offsets, kwords and first lhs word), read
asynchronously by execute, and ``common.ChunkState`` per lhs region (row tiles landed, closed, length). Tokens
(credit counters): ``lhs_free`` (2, or 1 when single), ``rhs_free`` (2 or 1), ``rhs_full`` (0), ``res_free`` (2),
``res_full`` (0).
"""
from __future__ import annotations

from amaranth.back import verilog as amaranth_verilog
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from autoq.overlay.layout import check_overlay
from autoq.overlay.manifest import ManifestError, OverlayConfig
from autoq.overlay.regmap import REGMAP_VERSION, RegisterMap

from .axi import ReadDma, RegisterSlave
from .common import WORD_BITS, ChunkState, EntryLayout, LayerParams, ResultBank, TileBank, Token, chunk_slots
from .control import Controller
from .dpa import Execute
from .fetch import Fetch
from .result import Result

TOP = "bitserial_engine"
READ_OUTSTANDING = 8
WRITE_OUTSTANDING = 16


def check_rtl_overlay(cfg: OverlayConfig) -> None:
    """Raise ``ManifestError`` unless the RTL can be built for ``cfg``."""
    check_overlay(cfg)
    if cfg.regmap_version != REGMAP_VERSION:
        raise ManifestError(f"overlay {cfg.name!r}: the RTL engine implements register map v{REGMAP_VERSION} "
                            f"(real cycle and stall counters), the manifest says v{cfg.regmap_version}")
    if cfg.dram_width_bits != WORD_BITS or cfg.dram_ports != 1:
        raise ManifestError(f"overlay {cfg.name!r}: the RTL engine has one {WORD_BITS}-bit AXI3 master port, the "
                            f"manifest says {cfg.dram_ports} x {cfg.dram_width_bits} bits")
    if cfg.acc_bits != 32:
        raise ManifestError(f"overlay {cfg.name!r}: results are int32 in DDR, acc_bits must be 32 (got {cfg.acc_bits})")


def signature_of(cfg: OverlayConfig) -> wiring.Signature:
    a = (RegisterMap.from_overlay(cfg).span - 1).bit_length()
    members = {
        "s_axil_awaddr": In(a), "s_axil_awvalid": In(1), "s_axil_awready": Out(1),
        "s_axil_wdata": In(32), "s_axil_wstrb": In(4), "s_axil_wvalid": In(1), "s_axil_wready": Out(1),
        "s_axil_bresp": Out(2), "s_axil_bvalid": Out(1), "s_axil_bready": In(1),
        "s_axil_araddr": In(a), "s_axil_arvalid": In(1), "s_axil_arready": Out(1),
        "s_axil_rdata": Out(32), "s_axil_rresp": Out(2), "s_axil_rvalid": Out(1), "s_axil_rready": In(1),
        "m_axi_arid": Out(1), "m_axi_araddr": Out(32), "m_axi_arlen": Out(4), "m_axi_arsize": Out(3),
        "m_axi_arburst": Out(2), "m_axi_arvalid": Out(1), "m_axi_arready": In(1),
        "m_axi_rid": In(1), "m_axi_rdata": In(64), "m_axi_rresp": In(2), "m_axi_rlast": In(1),
        "m_axi_rvalid": In(1), "m_axi_rready": Out(1),
        "m_axi_awid": Out(1), "m_axi_awaddr": Out(32), "m_axi_awlen": Out(4), "m_axi_awsize": Out(3),
        "m_axi_awburst": Out(2), "m_axi_awvalid": Out(1), "m_axi_awready": In(1),
        "m_axi_wid": Out(1), "m_axi_wdata": Out(64), "m_axi_wstrb": Out(8), "m_axi_wlast": Out(1),
        "m_axi_wvalid": Out(1), "m_axi_wready": In(1),
        "m_axi_bid": In(1), "m_axi_bresp": In(2), "m_axi_bvalid": In(1), "m_axi_bready": Out(1),
        "interrupt": Out(1),
    }
    return wiring.Signature(members)


class BitSerialEngine(wiring.Component):
    """The bit-serial engine for overlay ``cfg`` (register map v2)."""

    def __init__(self, cfg: OverlayConfig):
        check_rtl_overlay(cfg)
        self.cfg = cfg
        self.regmap = RegisterMap.from_overlay(cfg)
        super().__init__(signature_of(cfg))

    def elaborate(self, platform) -> Module:
        cfg, regmap = self.cfg, self.regmap
        m = Module()
        p = LayerParams()
        m.submodules.slave = slave = RegisterSlave(regmap)
        m.submodules.ctrl = ctrl = Controller(cfg, slave.rw, p)
        m.submodules.dma = dma = ReadDma(READ_OUTSTANDING)
        tokens = {}
        for name, init, single in (("lhs_free", 2, p.lhs_single), ("rhs_free", 2, p.rhs_single), ("rhs_full", 0, None),
                                   ("res_free", 2, None), ("res_full", 0, None)):
            m.submodules[f"tok_{name}"] = tokens[name] = Token(init, name, single)
            m.d.comb += tokens[name].reset.eq(ctrl.run_start)
        self.tokens = tokens  # after elaboration: for test benches that watch the stages' credits

        lhs_w, lhs_r, rhs_w, rhs_r = [], [], [], []
        for r in range(cfg.dm):
            mem = Memory(shape=unsigned(cfg.dk), depth=cfg.lhs_mem_words, init=[])
            lhs_w.append(mem.write_port(granularity=WORD_BITS))
            lhs_r.append(mem.read_port())
            m.submodules[f"lhs{r}"] = mem
        for c in range(cfg.dn):
            mem = Memory(shape=unsigned(cfg.dk), depth=cfg.rhs_mem_words, init=[])
            rhs_w.append(mem.write_port(granularity=WORD_BITS))
            rhs_r.append(mem.read_port())
            m.submodules[f"rhs{c}"] = mem
        res_mem = Memory(shape=unsigned(cfg.dn * cfg.acc_bits), depth=2 * cfg.dm, init=[])
        res_w, res_r = res_mem.write_port(), res_mem.read_port()
        m.submodules.res = res_mem
        # the weight chunks' tile-table entries: chunk_slots per lhs region, written by fetch, read by execute
        layout = EntryLayout(cfg)
        entries = Memory(shape=unsigned(layout.width), depth=2 * chunk_slots(cfg), init=[])
        entry_w, entry_r = entries.write_port(), entries.read_port(domain="comb")
        m.submodules.entries = entries
        chunk = ChunkState(cfg)
        rbanks = [ResultBank(cfg, i) for i in range(2)]

        m.submodules.fetch = fetch = Fetch(cfg, p, TileBank(cfg, 0), entry_w, chunk, lhs_w, rhs_w,
                                           tokens["lhs_free"], tokens["rhs_free"], tokens["rhs_full"])
        m.submodules.execute = execute = Execute(cfg, p, entry_r, chunk, rbanks, lhs_r, rhs_r, res_w,
                                                 tokens["rhs_full"],
                                                 tokens["rhs_free"], tokens["lhs_free"], tokens["res_free"],
                                                 tokens["res_full"])
        m.submodules.result = result = Result(cfg, p, rbanks, res_r, tokens["res_full"], tokens["res_free"],
                                              WRITE_OUTSTANDING)

        # ---- AXI-Lite slave
        for port in ("awaddr", "awvalid", "wdata", "wstrb", "wvalid", "bready", "araddr", "arvalid", "rready"):
            m.d.comb += getattr(slave, port).eq(getattr(self, f"s_axil_{port}"))
        for port in ("awready", "wready", "bresp", "bvalid", "arready", "rdata", "rresp", "rvalid"):
            m.d.comb += getattr(self, f"s_axil_{port}").eq(getattr(slave, port))
        m.d.comb += [ctrl.start.eq(slave.start), slave.busy.eq(ctrl.busy), slave.done.eq(ctrl.done),
                     self.interrupt.eq(slave.ap_done)]

        # ---- read DMA: the controller's table check, then fetch
        with m.If(ctrl.prepass):
            m.d.comb += [dma.cmd_valid.eq(ctrl.cmd_valid), dma.cmd_addr.eq(ctrl.cmd_addr),
                         dma.cmd_beats.eq(ctrl.cmd_beats), self.m_axi_rready.eq(1)]
        with m.Else():
            m.d.comb += [dma.cmd_valid.eq(fetch.cmd_valid), dma.cmd_addr.eq(fetch.cmd_addr),
                         dma.cmd_beats.eq(fetch.cmd_beats), self.m_axi_rready.eq(fetch.rready)]
        m.d.comb += [ctrl.cmd_ready.eq(dma.cmd_ready), fetch.cmd_ready.eq(dma.cmd_ready & ~ctrl.prepass),
                     ctrl.rdata.eq(self.m_axi_rdata), ctrl.rvalid.eq(self.m_axi_rvalid & ctrl.prepass),
                     fetch.rdata.eq(self.m_axi_rdata), fetch.rvalid.eq(self.m_axi_rvalid & ~ctrl.prepass),
                     dma.burst_done.eq(self.m_axi_rvalid & self.m_axi_rready & self.m_axi_rlast)]
        m.d.comb += [self.m_axi_arid.eq(0), self.m_axi_araddr.eq(dma.araddr), self.m_axi_arlen.eq(dma.arlen),
                     self.m_axi_arsize.eq(3), self.m_axi_arburst.eq(1), self.m_axi_arvalid.eq(dma.arvalid),
                     dma.arready.eq(self.m_axi_arready)]
        # ---- write channels: the result stage
        m.d.comb += [self.m_axi_awid.eq(0), self.m_axi_awaddr.eq(result.awaddr), self.m_axi_awlen.eq(result.awlen),
                     self.m_axi_awsize.eq(3), self.m_axi_awburst.eq(1), self.m_axi_awvalid.eq(result.awvalid),
                     result.awready.eq(self.m_axi_awready),
                     self.m_axi_wid.eq(0), self.m_axi_wdata.eq(result.wdata), self.m_axi_wstrb.eq(result.wstrb),
                     self.m_axi_wlast.eq(result.wlast), self.m_axi_wvalid.eq(result.wvalid),
                     result.wready.eq(self.m_axi_wready),
                     result.bvalid.eq(self.m_axi_bvalid), self.m_axi_bready.eq(result.bready)]

        # ---- stages start together once the table is checked
        m.d.comb += [fetch.start.eq(ctrl.run_start), execute.start.eq(ctrl.run_start),
                     result.start.eq(ctrl.run_start),
                     ctrl.stages_done.eq(fetch.finished & execute.finished & result.finished)]

        # ---- registers the engine drives: ID block, status, counters
        for name, value in regmap.id_values.items():
            m.d.comb += slave.ro[name].eq(ctrl.id_valid.replicate(32) & value)
        m.d.comb += slave.ro["status"].eq(ctrl.status)
        now, started = Signal(64), Signal(64)
        m.d.sync += now.eq(now + 1)
        with m.If(ctrl.start):
            m.d.sync += started.eq(now)
        with m.If(ctrl.done):
            m.d.sync += slave.ro["cycles_total"].eq(now - started)
        running = Signal()
        with m.If(ctrl.run_start):
            m.d.sync += running.eq(1)
        with m.Elif(ctrl.done):
            m.d.sync += running.eq(0)
        for stage_name, stage in (("fetch", fetch), ("execute", execute), ("result", result)):
            active, stall = slave.ro[f"cycles_{stage_name}"], slave.ro[f"stall_{stage_name}"]
            with m.If(ctrl.run_start):
                m.d.sync += [active.eq(0), stall.eq(0)]
            with m.Elif(running & ~stage.finished):
                with m.If(stage.active):
                    m.d.sync += active.eq(active + 1)
                with m.Else():
                    m.d.sync += stall.eq(stall + 1)
        return m


def verilog(cfg: OverlayConfig) -> str:
    """Verilog of the engine for ``cfg``, top module ``bitserial_engine`` (ports: see ``hls/rtl/__init__``)."""
    engine = BitSerialEngine(cfg)
    return amaranth_verilog.convert(engine, name=TOP, emit_src=False)

