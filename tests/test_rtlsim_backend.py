"""The ``rtlsim`` cost backend, ``autoq board serve --rtlsim`` and ``autoq hls sim``: the board service on the
Verilator simulation of the RTL engine (``hls/rtl``) for the small bundled overlay ``rtl_small``.

One Verilator build of ``rtl_small`` (about a minute, cached by source hash in ``autoq.hls.rtlsim.cache_root()``)
serves every test here; the test that builds a deliberately broken copy of the RTL is marked ``slow``.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from autoq.common.backend import open_backend, scheme_of
from autoq.common.errors import BackendError
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.overlay.layout import build_job, timing_shape
from autoq.overlay.manifest import load_overlay

from autoq.host.backends.rtlsim import parse_uri
from boardkit import assert_bit_exact

pytest.importorskip("amaranth")

OVERLAY = "rtl_small"
NET = NetworkSpec(
    "rtl_tiny",
    (
        LayerSpec("conv1", "conv", 3, 6, 3, 1, 1, 1, (6, 6), (6, 6)),
        LayerSpec("grouped", "conv", 6, 8, 3, 2, 1, 2, (6, 6), (3, 3)),
        LayerSpec("fc", "linear", 72, 5),
    ),
    (3, 6, 6),
)


def mixed_plan(net: NetworkSpec, seed: int = 0) -> QuantPlan:
    rng = np.random.default_rng(seed)
    return QuantPlan(tuple(LayerPlan(l.name, tuple(int(b) for b in rng.integers(2, 9, l.c_out)), int(rng.integers(2, 9)))
                           for l in net.layers))


@pytest.fixture(scope="session")
def rtl_build():
    """The Verilator build of ``rtl_small``'s RTL in the shared cache (built here once if absent)."""
    from autoq.hls.rtlsim import RtlSimBuildError, build, find_toolchain
    from autoq.hls.rtlsim.board import engine_verilog

    try:
        find_toolchain()
    except RtlSimBuildError as exc:
        pytest.skip(f"no Verilator toolchain here: {exc}")
    config = load_overlay(OVERLAY)
    text = engine_verilog(config)
    return config, text, build(text)


@pytest.fixture(scope="module")
def board(rtl_build):
    from autoq.hls.rtlsim.board import rtlsim_board

    board = rtlsim_board(OVERLAY)
    yield board
    board.close()


# -- URIs and options (no simulation) ----------------------------------------------------------------------------
def test_uri_forms():
    assert scheme_of("rtlsim") == scheme_of("rtlsim?read_latency=10") == scheme_of("rtlsim:rtl_small") == "rtlsim"
    assert parse_uri("rtlsim") == ("rtl_small", "")
    assert parse_uri("rtlsim:rtl_small?read_latency=10") == ("rtl_small", "read_latency=10")
    assert parse_uri("rtlsim?read_latency=10&outstanding=2&overlay=rtl_small") == ("rtl_small", "read_latency=10&outstanding=2")
    with pytest.raises(BackendError, match="name the overlay once"):
        parse_uri("rtlsim:rtl_small?overlay=pynq_z1")
    with pytest.raises(BackendError, match="not key=value pairs"):
        parse_uri("rtlsim?read_latency")
    with pytest.raises(BackendError, match="expected 'rtlsim'"):
        parse_uri("rtlsimx")


def test_bad_settings_and_overlays_are_named_before_anything_is_built():
    with pytest.raises(BackendError, match="unknown HP port setting.*read_latancy"):
        open_backend("rtlsim?read_latancy=10&overlay=rtl_small")
    with pytest.raises(BackendError, match="bandwidth must be in"):
        open_backend("rtlsim?bandwidth=0&overlay=rtl_small")
    with pytest.raises(BackendError, match="no overlay named 'nope'"):
        open_backend("rtlsim:nope")


def test_serve_flags():
    from autoq.host.cli import main

    with pytest.raises(SystemExit):
        main(["board", "serve", "--emulate", "--rtlsim"])
    assert main(["board", "serve", "--emulate", "--rtlsim-memory", "read_latency=3"]) == 2  # DaemonError, reported
    assert main(["board", "serve", "--rtlsim", "--meter", "line:/dev/null"]) == 2
    assert main(["board", "serve", "--rtlsim", "--rtlsim-memory", "latency=3", "--overlay", OVERLAY]) == 2


# -- the backend on the simulation -------------------------------------------------------------------------------
def test_backend_latency_is_the_rtl_cycle_count(rtl_build):
    """``rtlsim:...``'s per-layer cycles are the RTL's counters for the same timing job run directly on the
    simulated engine, and differ from the schedule model's."""
    from autoq.hls.rtlsim.check import open_engine, schedule_params
    from autoq.overlay.schedule import layer_cycles

    config, text, _ = rtl_build
    plan = mixed_plan(NET)
    backend = open_backend("rtlsim:rtl_small?read_latency=20")
    try:
        measured = backend.measure(NET, plan)
        info = backend.describe()
    finally:
        backend.close()
    assert measured.provenance.source == info.source == "rtlsim"
    assert "RTL simulation" in measured.provenance.detail and "read latency 20 cycles" in measured.provenance.detail
    # latency measured by the simulation; energy predicted by the overlay's calibration (no power model), labelled
    assert measured.is_measured("latency_s") and measured.is_measured("layers.latency_s")
    assert not measured.is_measured("energy_j") and measured.reasons["energy_j"] == "no power sensor"
    assert measured.predicted["energy_j"] == measured.provenance.calibration_id and measured.energy_j > 0
    assert "no power sensor" in measured.provenance.detail and "simulated time" in measured.provenance.detail
    assert info.overlay.name == OVERLAY and "energy" not in info.measures
    from autoq.hls.rtlsim import HPPortModel

    engine = open_engine(config, HPPortModel(read_latency=20), text)
    try:
        direct = []
        for layer, lp in zip(NET.layers, plan.layers):
            prepared = engine.driver.prepare(timing_shape(layer, lp.weight_bits, lp.act_bits, config, 1).job())
            direct.append(engine.driver.run(prepared).total)
            engine.driver.release(prepared)
    finally:
        engine.close()
    assert [l.cycles["total"] for l in measured.layers] == direct
    assert measured.latency_s == pytest.approx(sum(direct) / config.clock_hz, rel=1e-12)
    params = schedule_params(config)
    model = [layer_cycles(l, lp.weight_bits, lp.act_bits, config, params).total for l, lp in zip(NET.layers, plan.layers)]
    assert model != direct


def test_read_latency_changes_the_measured_latency(rtl_build):
    plan = mixed_plan(NET, 1)
    latency = {}
    for read_latency in (10, 80):
        backend = open_backend(f"rtlsim?read_latency={read_latency}&overlay={OVERLAY}")
        try:
            latency[read_latency] = backend.measure(NET, plan).latency_s
        finally:
            backend.close()
    assert latency[10] < latency[80]


def test_repeated_measurements_agree(board):
    plan = mixed_plan(NET, 2)
    first, second = board.measure(NET, plan), board.measure(NET, plan)
    assert [l.cycles for l in first.layers] == [l.cycles for l in second.layers]
    assert first.provenance.source == "rtlsim" and first.provenance.overlay_build_hash == load_overlay(OVERLAY).build_hash


CASES = [
    # layer, batch, act_bits, weight bits per output channel
    (LayerSpec("conv", "conv", 3, 5, 3, 1, 1, 1, (5, 5), (5, 5)), 2, 3, [3, 1, 8, 5, 1]),
    (LayerSpec("grouped", "conv", 6, 6, 3, 2, 1, 3, (6, 6), (3, 3)), 1, 8, [2, 3, 4, 7, 8, 6]),
    (LayerSpec("dw", "depthwise", 5, 5, 3, 1, 1, 5, (4, 4), (4, 4)), 1, 4, [2, 3, 4, 5, 2]),
    (LayerSpec("fc", "linear", 150, 3), 2, 5, [7, 1, 4]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0].name for c in CASES])
def test_results_through_the_board_are_bit_exact(board, case):
    layer, batch, act_bits, bits = case
    counters = assert_bit_exact(board.session.driver, board.build.config, layer, batch, act_bits, bits, len(bits))
    assert 0 < counters.execute <= counters.total


def test_daemon_over_tcp_loopback_serves_the_simulation(board):
    from autoq.overlay.daemon import Daemon

    daemon = Daemon(board)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    plan = mixed_plan(NET, 3)
    remote = open_backend(f"tcp://127.0.0.1:{port}")
    try:
        measured = remote.measure(NET, plan)
        assert remote.describe().source == "rtlsim"
    finally:
        remote.close()
        daemon.shutdown()
    local = board.measure(NET, plan)
    assert measured.provenance.source == "rtlsim"
    assert measured.latency_s == local.latency_s
    assert [l.cycles for l in measured.layers] == [l.cycles for l in local.layers]


def test_hls_sim_cli(rtl_build, capsys):
    from autoq.host.cli import main

    assert main(["hls", "sim", "--layers", "5", "--seed", "1", "--overlay", OVERLAY, "--memory", "read_latency=12"]) == 0
    out = capsys.readouterr().out
    assert "read latency 12 cycles" in out and "5/5 layers bit-exact" in out
    rows = [line for line in out.splitlines() if re.match(r"l\d+ ", line)]
    assert len(rows) == 5 and all(row.endswith("PASS") for row in rows)


@pytest.mark.slow
def test_a_one_bit_error_in_the_rtl_is_caught(rtl_build, tmp_path, capsys):
    """The accumulator shift of unit (0, 0) feeding a 1 instead of a 0: ``autoq hls sim --verilog`` fails (a
    fresh Verilator build of the broken copy)."""
    from autoq.host.cli import main

    _, text, _ = rtl_build
    good = "{ drain_acc_0, 1'h0 }"
    assert text.count(good) == 1, "the generated Verilog changed: pick another bit to flip"
    broken = tmp_path / "broken.v"
    broken.write_text(text.replace(good, "{ drain_acc_0, 1'h1 }"))
    assert main(["hls", "sim", "--layers", "12", "--seed", "1", "--overlay", OVERLAY, "--verilog", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "/12 layers bit-exact" in out


def test_a_build_of_the_retired_register_map_v1_is_refused_by_name(tmp_path):
    from autoq.hls.rtlsim.board import rtlsim_board
    from autoq.overlay.board import BitstreamError, BitstreamRegistry

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(
        {**load_overlay(OVERLAY).to_dict(), "name": "old", "regmap_version": 1, "build_hash": ""}))
    with pytest.raises(BitstreamError, match="overlay 'old': .*register map v1 was the retired HLS engine's"):
        rtlsim_board("old", registry=BitstreamRegistry(tmp_path))


def test_random_cases_cover_every_kind_with_operands_in_range():
    from autoq.hls.rtlsim.check import random_case

    rng = np.random.default_rng(0)
    overlay = load_overlay(OVERLAY)
    for kind in ("conv", "grouped", "depthwise", "linear"):
        for i in range(10):
            case = random_case(rng, f"{kind}{i}", kind)
            layer, bits = case.layer, np.asarray(case.weight_bits)
            assert layer.kind == {"grouped": "conv"}.get(kind, kind) and (kind != "grouped" or layer.groups > 1)
            assert bits.shape == (layer.c_out,) and 1 <= bits.min() and bits.max() <= 8 and 1 <= case.act_bits <= 8
            assert case.w_int.shape == (layer.c_out, layer.c_in // layer.groups, *layer.kernel)
            assert case.x_int.shape[1:] == (layer.c_in, *layer.in_hw) and 0 <= case.x_int.min()
            assert case.x_int.max() < 1 << case.act_bits
            limit = 1 << (bits - 1)
            w = case.w_int.reshape(layer.c_out, -1)
            assert np.all((w >= -limit[:, None]) & (w < np.maximum(limit, 2)[:, None]))
            assert np.all(w[bits == 1] != 0)  # binary {-1, +1}
            build_job(layer, case.x_int, case.w_int, bits, case.act_bits, overlay)  # fits the RTL's buffers
    a, b = random_case(np.random.default_rng(5), "x"), random_case(np.random.default_rng(5), "x")
    assert a.layer == b.layer and np.array_equal(a.w_int, b.w_int) and np.array_equal(a.x_int, b.x_int)
