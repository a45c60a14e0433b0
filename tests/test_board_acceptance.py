"""Acceptance suite for a real PYNQ-Z1 (``overlay/README.md``, bring-up): marked ``board``, skipped with the reason
unless ``AUTOQ_BOARD`` names a board, e.g. ``AUTOQ_BOARD='tcp://pynq:7700?key=key' python -m pytest -m board``.

Over the wire: the board identifies as ``board`` with a bundled overlay, its latencies are measured (never the
model's) and within ``LATENCY_TOLERANCE`` of the analytic model (a bring-up bound: the default calibration's timing
is fitted on the RTL simulation, not on a board), and its power readings lie within the PYNQ-Z1's physical
bounds. On the board itself (``AUTOQ_BOARD=local``, pynq importable, no daemon holding the engine): one layer
through the FPGA is bit-exact against the numpy reference engine (``boardkit.assert_bit_exact``, the check the
rtlsim board passes in ``test_rtlsim_backend.py``). ``--record`` a trace of these runs with ``AUTOQ_BOARD_TRACE=trace.sqlite`` and
calibrate on it (``autoq calibrate trace.sqlite -o calibration/pynq_z1-board.json``).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import QuantPlan
from boardkit import assert_bit_exact

pytestmark = pytest.mark.board

LATENCY_TOLERANCE = 3.0
"""Board latency / model latency must lie in [1/3, 3]: the rtlsim-fitted model against real AXI timing."""
PYNQ_Z1_POWER_W = (1.0, 6.0)
"""Whole-board power of a PYNQ-Z1 on USB: about 1.5-2.5 W idle; above 6 W or below 1 W the meter is wrong."""

NETWORK = NetworkSpec("acceptance", (
    LayerSpec("conv", "conv", 16, 32, 3, 1, 1, 1, (16, 16), (16, 16)),
    LayerSpec("dw", "depthwise", 32, 32, 3, 1, 1, 32, (16, 16), (16, 16)),
    LayerSpec("fc", "linear", 512, 10),
), (16, 16, 16))


@pytest.fixture(scope="module")
def remote():
    from autoq.common.backend import open_backend

    uri = os.environ.get("AUTOQ_BOARD", "")
    if not uri or uri == "local":
        pytest.skip("AUTOQ_BOARD names no remote board (tcp://HOST:7700?key=FILE or serial://...)")
    trace = os.environ.get("AUTOQ_BOARD_TRACE")
    if trace:
        from autoq.host.backends.record import open_backend_recording

        backend = open_backend_recording(uri, trace)
    else:
        backend = open_backend(uri)
    yield backend
    backend.close()


def test_identifies_as_a_board_with_a_bundled_overlay(remote):
    from autoq.overlay.manifest import bitstreams_dir, OverlayConfig

    info = remote.describe()
    bundled = {OverlayConfig.load(p).build_hash for p in bitstreams_dir().glob("*/manifest.json")}
    assert info.source == "board", f"{info.uri} serves {info.source!r}, not a board"
    assert info.overlay.build_hash in bundled and "latency" in info.measures


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_latency_is_measured_and_near_the_model(remote, bits):
    from autoq.common.backend import open_backend

    plan = QuantPlan.uniform(NETWORK, bits, bits)
    measured = remote.measure(NETWORK, plan)
    assert measured.provenance.source == "board"
    assert measured.is_measured("latency_s") and measured.is_measured("layers.latency_s")
    assert len(measured.samples["latency_s"]) >= 5 and "host_wall_s" in measured.samples
    assert min(measured.samples["driver_overhead_s"]) >= 0, "the host's wall time is shorter than the engine's count"
    model = open_backend("model").measure(NETWORK, plan)
    ratio = measured.latency_s / model.latency_s
    assert 1 / LATENCY_TOLERANCE <= ratio <= LATENCY_TOLERANCE, f"board/model latency {ratio:.3g} at {bits}/{bits}"


def test_power_readings_are_physical(remote):
    if "power" not in remote.describe().measures:
        pytest.skip("the board serves no power meter (autoq board serve --meter um25c:/dev/ttyUSB0)")
    m = remote.measure(NETWORK, QuantPlan.uniform(NETWORK, 8, 8))
    low, high = PYNQ_Z1_POWER_W
    readings = m.samples["power_w"] + m.samples["idle_power_w"]
    assert len(m.samples["idle_power_w"]) >= 20 and readings
    assert all(low <= w <= high for w in readings), f"power readings outside [{low}, {high}] W: {readings}"
    assert m.is_measured("idle_power_w") and m.is_measured("avg_power_w")
    if not m.is_measured("energy_j"):  # too small a difference for the meter: said so, and not as a measurement
        assert "energy_j" in m.reasons and m.predicted["energy_j"]


def test_a_layer_on_the_fpga_is_bit_exact():
    if os.environ.get("AUTOQ_BOARD") != "local":
        pytest.skip("bit-exactness runs on the board itself: AUTOQ_BOARD=local (stop `autoq board serve` first)")
    pytest.importorskip("pynq", reason="AUTOQ_BOARD=local needs pynq (the PYNQ-Z1 image)")
    from autoq.overlay.board import open_board

    board = open_board(emulate=False, overlay=os.environ.get("AUTOQ_OVERLAY", "pynq_z1"))
    try:
        assert board.session is not None and board.build is not None
        layer = NETWORK.layers[0]
        bits = np.random.default_rng(0).integers(1, 9, layer.c_out)
        counters = assert_bit_exact(board.session.driver, board.build.config, layer, 1, 3, bits)
        assert counters.total > 0
    finally:
        board.close()
