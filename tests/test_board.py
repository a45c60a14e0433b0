"""Board service: bitstream registry with checksums, measurement protocol, emulated measurements vs the model."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.overlay.calibration_params import load_default_calibration
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.board import Board, BitstreamError, BitstreamRegistry
from autoq.overlay.layout import build_job, timing_job
from autoq.overlay.manifest import bitstreams_dir, load_overlay
from autoq.overlay.measure import Clock, MeasureError, MeasureSettings, RunRecord, Spread, run_protocol

from boardkit import TINY, kernel_wise_plan

OVERLAY = load_overlay()
# -- registry ----------------------------------------------------------------------------------------------------
@pytest.fixture
def registry(tmp_path):
    build = tmp_path / "pynq_z1"
    build.mkdir()
    shutil.copy(bitstreams_dir() / "pynq_z1" / "manifest.json", build / "manifest.json")
    (build / "pynq_z1.bit").write_bytes(b"bitstream" * 100)
    (build / "pynq_z1.hwh").write_bytes(b"<hwh/>")
    lines = [f"{hashlib.sha256((build / n).read_bytes()).hexdigest()}  {n}" for n in ("pynq_z1.bit", "pynq_z1.hwh")]
    (build / "checksums.sha256").write_text("\n".join(lines) + "\n")
    return BitstreamRegistry(tmp_path)


def test_registry_verifies_checksums(registry):
    build = registry.resolve("pynq_z1")
    assert build.bitstream.name == "pynq_z1.bit" and build.config == OVERLAY and registry.names() == ["pynq_z1"]


def test_registry_refuses_a_modified_bitstream(registry):
    (registry.root / "pynq_z1" / "pynq_z1.bit").write_bytes(b"tampered")
    with pytest.raises(BitstreamError, match="pynq_z1.bit has SHA-256 .* checksums.sha256 says") as exc:
        registry.resolve("pynq_z1")
    assert exc.value.code == "checksum_mismatch"


def test_registry_refuses_unlisted_or_unverifiable_files(registry):
    listing = registry.root / "pynq_z1" / "checksums.sha256"
    listing.write_text(listing.read_text().splitlines()[0] + "\n")
    with pytest.raises(BitstreamError, match="pynq_z1.hwh is not listed"):
        registry.resolve("pynq_z1")
    listing.unlink()
    with pytest.raises(BitstreamError, match="no checksums.sha256: refusing unverified"):
        registry.resolve("pynq_z1")


def test_registry_refuses_an_edited_manifest(registry):
    manifest = registry.root / "pynq_z1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dm": 8', '"dm": 16'))
    with pytest.raises(BitstreamError, match="build_hash .* does not match its parameters"):
        registry.resolve("pynq_z1")


@pytest.mark.parametrize("name", ["missing", "../pynq_z1", "/etc", "", "a/b"])
def test_registry_only_knows_plain_names_in_its_folder(registry, name):
    with pytest.raises(BitstreamError) as exc:
        registry.resolve(name)
    assert exc.value.code == "unknown_overlay"


def test_board_refuses_to_load_a_bad_overlay_and_keeps_the_current_one(registry):
    board = Board.emulated(registry=registry)
    (registry.root / "pynq_z1" / "pynq_z1.hwh").write_bytes(b"changed")
    with pytest.raises(BitstreamError, match="checksum"):
        board.load_overlay("pynq_z1")
    assert board.measure(TINY, QuantPlan.uniform(TINY, 4, 4)).latency_s > 0
    board.close()


# -- measurement protocol ----------------------------------------------------------------------------------------
class Meter:
    """A power meter in virtual time: ``watts(t0, t1)`` is the average it reports over an interval."""

    def __init__(self, clock_state, watts):
        self.name, self.parents, self.state, self.watts, self.last = "meter", (), clock_state, watts, 0.0

    def get_value(self, parents=None):
        now = self.state["t"]
        value, self.last = self.watts(self.last, now), now
        return value


def virtual_clock():
    state = {"t": 0.0, "busy_from": None}

    def sleep(s):
        state["t"] += s

    return state, Clock(lambda: state["t"], sleep)


def test_protocol_covers_the_window_and_subtracts_idle_power():
    state, clock = virtual_clock()
    busy = []

    def run_once():
        start = state["t"]
        state["t"] += 0.01 + 0.001 * (len(busy) % 3)
        busy.append((start, state["t"]))
        return RunRecord(state["t"] - start)

    def watts(t0, t1):  # 2 W at rest, 5 W while the engine runs
        run = sum(min(b, t1) - max(a, t0) for a, b in busy if b > t0 and a < t1)
        return 2.0 + 3.0 * run / (t1 - t0) if t1 > t0 else 2.0

    settings = MeasureSettings(warmup_runs=2, min_runs=5, min_window_s=0.5, idle_window_s=0.3, sample_period_s=0.05)
    result = run_protocol(run_once, [Meter(state, watts)], settings, clock)
    assert len(busy) == 2 + len(result.runs) and result.window_s >= 0.5 and len(result.runs) >= 40
    assert result.idle_power == pytest.approx(2.0) and len(result.idle_power_w) == 6
    assert result.avg_power == pytest.approx(5.0)
    lat = result.latency
    assert lat.median == pytest.approx(0.011) and lat.iqr == pytest.approx(0.002) and lat.stdev > 0
    # (P_run - P_idle) x window / runs: the mean time of a run on the host loop, not the median latency
    assert result.energy_per_inference_j == pytest.approx(3.0 * result.window_s / len(result.runs))
    assert result.samples()["latency_s"] == [r.latency_s for r in result.runs]


def test_protocol_min_runs_without_sensors_and_failing_sensor():
    state, clock = virtual_clock()
    result = run_protocol(lambda: RunRecord(1.0), [], MeasureSettings(warmup_runs=0, min_runs=3, min_window_s=0), clock)
    assert len(result.runs) == 3 and result.run_power_w == [] and result.energy_per_inference_j is None
    assert result.energy().reason == "no power sensor"

    class Broken:
        name, parents = "broken", ()

        def get_value(self, parents=None):
            raise OSError("meter unplugged")

    with pytest.raises(MeasureError, match=r"power sensor reading failed \(\['broken'\]\): meter unplugged"):
        run_protocol(lambda: RunRecord(1.0), [Broken()], MeasureSettings(), clock)
    with pytest.raises(MeasureError):
        MeasureSettings(min_runs=0)
    assert Spread.of([1.0, 2.0, 3.0, 4.0]) == (4, 2.5, 1.5, pytest.approx(1.2909944))


# -- emulated board ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def board():
    board = Board.emulated()
    yield board
    board.close()


def test_emulated_measurement_matches_the_analytic_model(board):
    """Same schedule, same energy model: the emulated board reproduces the model's figures through the driver,
    the register-level device, the measurement protocol and the emulated power sensor."""
    plan = kernel_wise_plan(TINY)
    measured = board.measure(TINY, plan, batch=2)
    model = AnalyticCostModel(OVERLAY, load_default_calibration()).measure(TINY, plan, batch=2)
    assert measured.latency_s == pytest.approx(model.latency_s, rel=1e-12)
    assert measured.energy_j == pytest.approx(model.energy_j, rel=1e-9)
    assert measured.idle_power_w == model.idle_power_w
    assert [l.cycles for l in measured.layers] == [l.cycles for l in model.layers]
    assert [l.bound for l in measured.layers] == [l.bound for l in model.layers]
    p = measured.provenance
    assert (p.source, p.overlay_build_hash, p.calibration_id, p.calibrated) == ("emulated", OVERLAY.build_hash, "pynq_z1_rtlsim", True)
    assert "timing only" in p.detail and "latency median" in p.detail
    assert len(measured.samples["latency_s"]) >= 3 and measured.samples["idle_power_w"] and measured.samples["power_w"]
    assert measured.samples["dynamic_energy_j"][0] == pytest.approx(model.energy_j - model.idle_power_w * model.latency_s)
    assert sum(l.energy_j for l in measured.layers) == pytest.approx(measured.energy_j)


def test_board_rejects_a_plan_for_another_network(board):
    from autoq.common.errors import PlanError

    other = NetworkSpec("other", TINY.layers[:2], (3, 8, 8))
    with pytest.raises(PlanError, match="plan does not fit network"):
        board.measure(other, QuantPlan.uniform(TINY, 4, 4))


def test_info_reports_manifest_sensors_and_hardware(board):
    info = board.info()
    assert info["overlay"] == OVERLAY.to_dict() and info["source"] == "emulated"
    assert info["sensors"] == [{"name": "emulated_power", "kind": "emulated (analytic energy model)"}]
    assert info["hardware"]["dm"] == OVERLAY.dm and "pynq_z1" in info["overlays"]


@pytest.mark.parametrize("layer", TINY.layers, ids=TINY.names)
def test_timing_job_has_the_shapes_and_table_of_the_data_job(layer):
    bits = np.random.default_rng(2).integers(1, 9, layer.c_out)
    x = np.zeros((2, layer.c_in, *layer.in_hw), np.int64)
    w = np.ones((layer.c_out, layer.kernel_size), np.int64)
    data, timing = build_job(layer, x, w, bits, 5, OVERLAY), timing_job(layer, bits, 5, OVERLAY, 2)
    assert data.descriptor == timing.descriptor
    assert {k: v.shape for k, v in data.buffers.items()} == {k: v.shape for k, v in timing.buffers.items()}
    assert np.array_equal(data.buffers["tiles"], timing.buffers["tiles"])


def test_board_side_runs_without_pynq_torch_or_scipy():
    """What the PYNQ-Z1 imports: the emulated board measures with pynq, torch and scipy unavailable."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('pynq', 'torch', 'scipy', 'matplotlib'): sys.modules[name] = None\n"
        "from autoq.overlay import board, daemon, driver, protocol\n"
        "from autoq.common.network import LayerSpec, NetworkSpec\n"
        "from autoq.common.plan import QuantPlan\n"
        "net = NetworkSpec('n', (LayerSpec('c', 'conv', 3, 8, 3, 1, 1, 1, (8, 8), (8, 8)),), (3, 8, 8))\n"
        "m = board.Board.emulated().measure(net, QuantPlan.uniform(net, 4, 4))\n"
        "assert not hasattr(driver, 'BitSerialEngine')\n"
        "print(m.provenance.source, m.latency_s > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["emulated", "True"], out.stderr


def test_cli_board_info_on_the_emulated_backend(capsys):
    from autoq.host.cli import main

    assert main(["board", "info", "emulated"]) == 0
    text = capsys.readouterr().out
    assert "protocol version: 2" in text and "pynq_z1  build " + OVERLAY.build_hash in text
    assert "emulated_power: emulated (analytic energy model)" in text
    assert main(["board", "info", "emulated", "--json"]) == 0
    assert '"protocol_version": 2' in capsys.readouterr().out
    assert main(["board", "info", "model"]) == 2
    assert "'model' is not a board" in capsys.readouterr().err
