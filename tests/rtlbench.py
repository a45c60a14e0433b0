"""Cycle-accurate test bench of the RTL engine (``autoq.hls.rtl``) in Amaranth's simulator.

``EngineBench`` holds a small DDR (numpy bytes at page-aligned addresses) behind an AXI3 slave model with
configurable read latency, outstanding bursts and ready stalls, and drives the AXI-Lite port as
``overlay/driver.py`` drives a board: ``identify()`` and ``run(job)``. The AXI slave checks the protocol rules the
engine promises (bursts of at most 16 beats within a 4 KiB page, wlast on the last beat, reads and writes inside
allocated buffers).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping, NamedTuple

import numpy as np
from amaranth.sim import Simulator

from autoq.hls.rtl.engine import BitSerialEngine
from autoq.overlay.driver import BUFFERS, LayerJob
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.regmap import AP_DONE, AP_IDLE, AP_START, CMD_IDENTIFY, CMD_RUN, RegisterMap

DDR_BASE = 0x1000_0000
PAGE = 4096


class AxiError(AssertionError):
    """The engine broke an AXI rule or touched memory outside its buffers."""


class RunResult(NamedTuple):
    status: int
    counters: dict[str, int]
    results: np.ndarray | None
    cycles: int  # simulated cycles from start to ap_done seen by the driver
    reads: int  # read bursts
    writes: int  # write bursts


class Ddr:
    def __init__(self) -> None:
        self.regions: list[tuple[int, np.ndarray]] = []
        self.next = DDR_BASE

    def place(self, data: np.ndarray, offset: int = 0) -> int:
        """Copy ``data`` to ``offset`` bytes into fresh pages; its device address."""
        raw = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8).copy()
        address = self.next + offset
        self.next += -(-max(raw.size + offset, 1) // PAGE) * PAGE + PAGE  # a guard page between buffers
        self.regions.append((address, raw))
        return address

    def view(self, address: int, nbytes: int) -> np.ndarray:
        for start, raw in self.regions:
            if start <= address and address + nbytes <= start + raw.size:
                return raw[address - start:address - start + nbytes]
        raise AxiError(f"access of {nbytes} bytes at {address:#x} outside every buffer")

    def read64(self, address: int) -> int:
        return int.from_bytes(self.view(address, 8).tobytes(), "little")


class EngineBench:
    def __init__(self, cfg: OverlayConfig, *, read_latency: int = 6, max_reads: int = 8, stall_every: int = 0,
                 seed: int = 0, offsets: Mapping[str, int] | None = None):
        self.cfg = cfg
        self.regmap = RegisterMap.from_overlay(cfg)
        self.dut = BitSerialEngine(cfg)
        self.read_latency, self.max_reads, self.stall_every = read_latency, max_reads, stall_every
        self.rng = np.random.default_rng(seed)
        self.offsets = dict(offsets or {})  # buffer name -> byte offset into its first page (alignment tests)
        self.sim = Simulator(self.dut)
        self.sim.add_clock(1e-8)
        self.ddr = Ddr()
        self.cycle = 0
        self.reads = self.writes = 0
        self.sim.add_testbench(self._axi_slave, background=True)

    # -- AXI3 slave (DDR) ------------------------------------------------------------------------------------------
    def _stall(self) -> bool:
        return bool(self.stall_every) and self.rng.integers(self.stall_every) == 0

    async def _axi_slave(self, ctx: Any) -> None:
        d = self.dut
        reads: deque[list[int]] = deque()  # [ready cycle, address, beats left]
        writes: deque[list[int]] = deque()  # [address, beats left]
        responses: deque[int] = deque()
        while True:
            arready = len(reads) < self.max_reads and not self._stall()
            rvalid = bool(reads) and reads[0][0] <= self.cycle and not self._stall()
            if rvalid:
                ctx.set(d.m_axi_rdata, self.ddr.read64(reads[0][1]))
                ctx.set(d.m_axi_rlast, reads[0][2] == 1)
            awready = len(writes) < 4 and not self._stall()
            wready = bool(writes) and not self._stall()
            bvalid = bool(responses) and responses[0] <= self.cycle
            ctx.set(d.m_axi_arready, arready)
            ctx.set(d.m_axi_rvalid, rvalid)
            ctx.set(d.m_axi_awready, awready)
            ctx.set(d.m_axi_wready, wready)
            ctx.set(d.m_axi_bvalid, bvalid)
            if arready and ctx.get(d.m_axi_arvalid):
                address, beats = ctx.get(d.m_axi_araddr), ctx.get(d.m_axi_arlen) + 1
                self._check_burst("read", address, beats, ctx.get(d.m_axi_arsize), ctx.get(d.m_axi_arburst))
                reads.append([self.cycle + self.read_latency, address, beats])
                self.reads += 1
            if rvalid and ctx.get(d.m_axi_rready):
                reads[0][1] += 8
                reads[0][2] -= 1
                if reads[0][2] == 0:
                    reads.popleft()
            if wready and ctx.get(d.m_axi_wvalid):
                address, strobes = writes[0][0], ctx.get(d.m_axi_wstrb)
                data = ctx.get(d.m_axi_wdata).to_bytes(8, "little")
                last = ctx.get(d.m_axi_wlast)
                if last != (writes[0][1] == 1):
                    raise AxiError(f"wlast {last} with {writes[0][1]} beats of the burst left")
                for byte in range(8):
                    if strobes >> byte & 1:
                        self.ddr.view(address + byte, 1)[0] = data[byte]
                writes[0][0] += 8
                writes[0][1] -= 1
                if writes[0][1] == 0:
                    writes.popleft()
                    responses.append(self.cycle + 3)
            if awready and ctx.get(d.m_axi_awvalid):
                address, beats = ctx.get(d.m_axi_awaddr), ctx.get(d.m_axi_awlen) + 1
                self._check_burst("write", address, beats, ctx.get(d.m_axi_awsize), ctx.get(d.m_axi_awburst))
                writes.append([address, beats])
                self.writes += 1
            if bvalid and ctx.get(d.m_axi_bready):
                responses.popleft()
            await ctx.tick()
            self.cycle += 1

    def _check_burst(self, what: str, address: int, beats: int, size: int, burst: int) -> None:
        if size != 3 or burst != 1 or address % 8:
            raise AxiError(f"{what} burst at {address:#x}: size {size}, burst type {burst} (want 8-byte INCR)")
        if not 1 <= beats <= 16 or address // PAGE != (address + 8 * beats - 1) // PAGE:
            raise AxiError(f"{what} burst of {beats} beats at {address:#x} crosses a 4 KiB boundary or is too long")
        if what == "read":  # writes are checked byte by byte where strobed (a beat may straddle a buffer's end)
            self.ddr.view(address, 8 * beats)

    # -- AXI-Lite master -------------------------------------------------------------------------------------------
    async def write32(self, ctx: Any, offset: int, value: int) -> None:
        d = self.dut
        ctx.set(d.s_axil_awaddr, offset)
        ctx.set(d.s_axil_wdata, value & 0xFFFFFFFF)
        ctx.set(d.s_axil_wstrb, 0xF)
        ctx.set(d.s_axil_awvalid, 1)
        ctx.set(d.s_axil_wvalid, 1)
        ctx.set(d.s_axil_bready, 1)
        aw = w = False
        while not (aw and w):
            aw_now, w_now = ctx.get(d.s_axil_awready), ctx.get(d.s_axil_wready)
            await ctx.tick()
            aw, w = aw or aw_now, w or w_now
            if aw:
                ctx.set(d.s_axil_awvalid, 0)
            if w:
                ctx.set(d.s_axil_wvalid, 0)
        while not ctx.get(d.s_axil_bvalid):
            await ctx.tick()
        await ctx.tick()
        ctx.set(d.s_axil_bready, 0)

    async def read32(self, ctx: Any, offset: int) -> int:
        d = self.dut
        ctx.set(d.s_axil_araddr, offset)
        ctx.set(d.s_axil_arvalid, 1)
        ctx.set(d.s_axil_rready, 1)
        while not ctx.get(d.s_axil_arready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(d.s_axil_arvalid, 0)
        while not ctx.get(d.s_axil_rvalid):
            await ctx.tick()
        value = ctx.get(d.s_axil_rdata)
        await ctx.tick()
        ctx.set(d.s_axil_rready, 0)
        return value

    async def write_register(self, ctx: Any, name: str, value: int) -> None:
        reg = self.regmap[name]
        for offset, word in zip(reg.word_offsets, reg.split(int(value))):
            await self.write32(ctx, offset, word)

    async def read_register(self, ctx: Any, name: str) -> int:
        reg = self.regmap[name]
        return reg.join([await self.read32(ctx, offset) for offset in reg.word_offsets])

    async def start_and_wait(self, ctx: Any, limit: int) -> int:
        control = await self.read_register(ctx, "control")
        assert control & AP_IDLE and not control & AP_START, f"engine not idle before start: {control:#x}"
        await self.write_register(ctx, "control", AP_START)
        begin = self.cycle
        while True:
            control = await self.read_register(ctx, "control")
            if control & AP_DONE:
                assert ctx.get(self.dut.interrupt) == 0, "interrupt still high after ap_done was read"
                return self.cycle - begin
            if self.cycle - begin > limit:
                raise TimeoutError(f"engine did not finish within {limit} cycles")
            for _ in range(8):
                await ctx.tick()

    # -- driver-level operations (Amaranth cannot add a testbench to a started simulation: one session per bench)
    def session(self, *operations: "Operation") -> list[Any]:
        """Run ``operations`` (``self.identify()``, ``self.run(job)``) one after the other; their results in order."""
        results: list[Any] = []

        async def testbench(ctx: Any) -> None:
            for operation in operations:
                results.append(await operation(ctx))

        self.sim.add_testbench(testbench)
        self.sim.run()
        return results

    def identify(self) -> "Operation":
        async def operation(ctx: Any) -> dict[str, int]:
            await self.write_register(ctx, "command", CMD_IDENTIFY)
            await self.start_and_wait(ctx, 1000)
            names = ["status"] + [r.name for r in self.regmap if r.section in ("header", "id") and r.access == "ro"]
            return {name: await self.read_register(ctx, name) for name in dict.fromkeys(names)}
        return operation

    def run(self, job: LayerJob, *, descriptor: Mapping[str, int] | None = None, command: int = CMD_RUN,
            limit: int = 200_000) -> "Operation":
        """Place the job's buffers, write descriptor (``descriptor`` overrides entries), addresses and ``command``,
        start, wait; status, counters and the result buffer."""
        async def operation(ctx: Any) -> RunResult:
            addresses = {name: self.ddr.place(job.buffers[name], self.offsets.get(name, 0)) for name in BUFFERS}
            reads, writes = self.reads, self.writes
            for name, value in {**job.descriptor, **(descriptor or {})}.items():
                await self.write_register(ctx, name, value)
            for name in BUFFERS:
                await self.write_register(ctx, f"{name}_addr", addresses[name])
            await self.write_register(ctx, "command", command)
            cycles = await self.start_and_wait(ctx, limit)
            status = await self.read_register(ctx, "status")
            counters = {reg.name: await self.read_register(ctx, reg.name) for reg in self.regmap.section("counters")}
            result = job.buffers["results"]
            raw = self.ddr.view(addresses["results"], result.nbytes)
            results = np.frombuffer(raw.tobytes(), dtype=result.dtype).reshape(result.shape)
            return RunResult(status, counters, results, cycles, self.reads - reads, self.writes - writes)
        return operation


Operation = Any
