"""The HLS engine under g++ C-simulation: bit-exact with the numpy reference engine, cycle-exact with the schedule."""
import numpy as np
import pytest

from autoq.common.network import LayerSpec
from autoq.hls import csim
from autoq.host.cli import main
from autoq.overlay.layout import ROW_TILE_HEADER_WORDS, build_job
from autoq.overlay.manifest import load_overlay
from autoq.overlay.regmap import CMD_IDENTIFY, RegisterMap, Status
from autoq.overlay.schedule import ScheduleParams
from autoq.overlay.tiling import OperandError

PYNQ = load_overlay("pynq_z1")
# Small array and buffers: runs of row tiles, activation-stationary column blocks and refetches all happen.
TIGHT = PYNQ.with_changes(name="tight", dm=4, dn=4, dk=64, lhs_mem_words=16, rhs_mem_words=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hls-cache")


@pytest.fixture(scope="module")
def builds(cache):
    return {overlay.name: csim.build(overlay, cache) for overlay in (PYNQ, TIGHT)}


def assert_passes(check: csim.LayerCheck) -> None:
    assert check.exact, f"{check.layer}: {check.mismatches} outputs differ from the reference engine"
    assert check.cycles_agree, f"{check.layer}: C-sim counted {check.csim_cycles}, the schedule {check.model_cycles}"


@pytest.mark.parametrize("kind", ["conv", "grouped", "depthwise", "linear"])
def test_random_layers_bit_exact_on_the_pynq_overlay(builds, kind):
    rng = np.random.default_rng(["conv", "grouped", "depthwise", "linear"].index(kind))
    for i in range(5):
        case = csim.random_case(rng, f"{kind}{i}", kind)
        assert_passes(csim.check_layer(builds["pynq_z1"], case.layer, case.x_int, case.w_int, case.weight_bits, case.act_bits))


def test_random_layers_with_tight_buffers_and_random_schedule_parameters(builds):
    rng = np.random.default_rng(7)
    for i in range(30):
        case = csim.random_case(rng, f"t{i}", max_linear_k=128)
        params = ScheduleParams(
            dram_efficiency=float(rng.uniform(0.1, 1.0)), result_efficiency=float(rng.uniform(0.1, 1.0)),
            layer_overhead_cycles=float(rng.uniform(0, 5000)), tile_overhead_cycles=float(rng.uniform(0, 50)),
            pass_overhead_cycles=float(rng.uniform(0, 8)),
        )
        assert_passes(csim.check_layer(builds["tight"], case.layer, case.x_int, case.w_int, case.weight_bits,
                                       case.act_bits, params))


@pytest.mark.parametrize("c_out, size, act_bits, bits", [
    (16, 4, 4, [8] * 16),  # activation-stationary, 2 column blocks, weights refetched per block
    (24, 8, 2, [8] * 24),  # activation-stationary, column blocks of 4 column tiles
    (16, 8, 8, [2] * 8 + [8] * 8),  # weight-stationary, runs of row tiles sharing the lhs buffer, acts refetched
])
def test_reuse_paths_of_the_tight_overlay(builds, c_out, size, act_bits, bits):
    """K = 72 fills 2 words of 64 bits: an 8-bit row tile takes the whole 16-word lhs buffer."""
    rng = np.random.default_rng(c_out + size)
    layer = LayerSpec("reuse", "conv", 8, c_out, 3, 1, 1, 1, (size, size), (size, size))
    w = rng.integers(-2, 2, size=(c_out, 8, 3, 3))
    x = rng.integers(0, 1 << act_bits, size=(1, 8, size, size))
    assert_passes(csim.check_layer(builds["tight"], layer, x, w, bits, act_bits))


def test_extreme_values_binary_weights_and_packed_depthwise(builds):
    rng = np.random.default_rng(3)
    conv = LayerSpec("extreme", "conv", 40, 12, 3, 1, 1, 1, (6, 6), (6, 6))
    bits = np.array([8, 1, 2, 8, 1, 3, 8, 8, 1, 4, 5, 1])
    low = np.where(bits == 1, -1, -(1 << (bits - 1)))
    w = np.broadcast_to(low[:, None, None, None], (12, 40, 3, 3)).copy()  # every row at its most negative value
    x = np.full((1, 40, 6, 6), 255)
    check = csim.check_layer(builds["pynq_z1"], conv, x, w, bits, 8)
    assert_passes(check)
    depthwise = LayerSpec("binary-dw", "depthwise", 11, 11, 3, 1, 0, 11, (5, 5), (3, 3))
    w = rng.choice([-1, 1], size=(11, 1, 3, 3))
    x = rng.integers(0, 2, size=(2, 11, 5, 5))
    for build in builds.values():
        assert_passes(csim.check_layer(build, depthwise, x, w, [1] * 11, 1))


def test_fewer_kernel_bits_cost_fewer_execute_cycles(builds):
    layer = LayerSpec("mixed", "conv", 16, 16, 3, 1, 1, 1, (8, 8), (8, 8))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=(1, 16, 8, 8))
    uniform = csim.check_layer(builds["pynq_z1"], layer, x, rng.integers(-2, 2, size=(16, 16, 3, 3)), [8] * 16, 4)
    mixed_bits = [2, 8] * 8  # grouping puts the eight 2-bit kernels into a tile of their own
    mixed = csim.check_layer(builds["pynq_z1"], layer, x, rng.integers(-2, 2, size=(16, 16, 3, 3)), mixed_bits, 4)
    assert_passes(uniform), assert_passes(mixed)
    assert mixed.csim_cycles[1] < uniform.csim_cycles[1]


def small_job():
    layer = LayerSpec("small", "conv", 4, 6, 3, 1, 1, 2, (4, 4), (4, 4))
    rng = np.random.default_rng(5)
    w = rng.integers(-4, 4, size=(6, 2, 3, 3))
    return build_job(layer, rng.integers(0, 8, size=(1, 4, 4, 4)), w, [3] * 6, 3, PYNQ)


def with_buffers(job, **buffers):
    return type(job)(job.name, job.descriptor, {**job.buffers, **buffers})


def test_identify_reports_the_manifest_and_bad_commands_are_refused(builds):
    job = small_job()
    ident = csim.run_job(builds["pynq_z1"], job, command=CMD_IDENTIFY)
    expected = RegisterMap.from_overlay(PYNQ).id_values
    assert {name: ident.registers[name] for name in expected} == expected
    assert ident.registers["status"] == Status.OK and not ident.results.any()
    assert csim.run_job(builds["pynq_z1"], job, command=7).registers["status"] == Status.BAD_COMMAND


def test_rejected_runs_name_the_problem_and_write_nothing(builds):
    job = small_job()
    bad_geometry = type(job)(job.name, {**job.descriptor, "out_h": 5}, job.buffers)
    tiles = job.buffers["tiles"].copy()
    tiles[ROW_TILE_HEADER_WORDS] = 5  # group 0's first tile names a channel of group 1
    for bad, status in ((bad_geometry, Status.BAD_DESCRIPTOR), (with_buffers(job, tiles=tiles), Status.BAD_TABLE)):
        run = csim.run_job(builds["pynq_z1"], bad)
        assert run.registers["status"] == status and not run.results.any()
    # a job packed for bigger buffers does not fit the tight build: refused on the host and by the engine
    layer = LayerSpec("wide", "linear", 600, 4)
    x, w = np.ones((1, 600), dtype=int), np.ones((4, 600), dtype=int)
    with pytest.raises(OperandError, match="buffers hold 16 and 16"):
        build_job(layer, x, w, [8] * 4, 8, TIGHT)
    roomy = TIGHT.with_changes(lhs_mem_words=1024, rhs_mem_words=1024)
    run = csim.run_job(builds["tight"], build_job(layer, x, w, [8] * 4, 8, roomy))
    assert run.registers["status"] == Status.BUFFER_OVERFLOW and not run.results.any()


def test_cli_prints_a_pass_table_and_refuses_bad_arguments(builds, cache, monkeypatch, capsys):
    monkeypatch.setenv("AUTOQ_HLS_CACHE", str(cache))  # reuses the module's build
    assert main(["hls", "csim", "--layers", "3", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count(" pass\n") == 3 and "3/3 layers bit-exact" in out
    assert main(["hls", "csim", "--layers", "0"]) == 2
    assert "--layers must be at least 1" in capsys.readouterr().err


def test_emulated_device_answers_like_the_csim(builds):
    """The driver over the emulated device and the C-sim of the engine, on the same jobs: same results, same
    cycle counters (the emulated board stands in for this hardware)."""
    from autoq.overlay.calibration_params import load_default_calibration
    from autoq.overlay.driver import BusEngine
    from autoq.overlay.emulated import EmulatedEngine

    calibration = load_default_calibration()
    rng = np.random.default_rng(11)
    for i in range(4):
        case = csim.random_case(rng, f"e{i}")
        job = build_job(case.layer, case.x_int, case.w_int, case.weight_bits, case.act_bits, PYNQ)
        device = EmulatedEngine(PYNQ, calibration, compute=True)
        driver = BusEngine(device, device.allocate)
        driver.attach(PYNQ)
        prepared = driver.prepare(job)
        counters = driver.run(prepared)
        run = csim.run_job(builds["pynq_z1"], job, calibration.schedule)
        np.testing.assert_array_equal(driver.results(prepared), run.results)
        assert (counters.fetch, counters.execute, counters.result, counters.total) == tuple(
                run.registers[name] for name in csim.COUNTERS)
