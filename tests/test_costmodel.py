"""Analytic cost model, calibration files, resources and the ``model`` backend."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.overlay.calibration_params import CalibrationError, CalibrationParams, default_calibration_path, load_default_calibration
from autoq.common.backend import open_backend
from autoq.common.errors import BackendError, PlanError
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.overlay.manifest import ManifestError, OverlayConfig, bitstreams_dir, load_overlay
from autoq.overlay.resources import SHELL_RESERVE, bismo_lut, device_capacity, estimate, within_margin
from autoq.overlay.schedule import ScheduleParams, layer_cycles


def small_net() -> NetworkSpec:
    return NetworkSpec(
        "small",
        (
            LayerSpec("conv1", "conv", 3, 32, 3, 2, 1, 1, (64, 64), (32, 32)),
            LayerSpec("dw", "depthwise", 32, 32, 3, 1, 1, 32, (32, 32), (32, 32)),
            LayerSpec("pw", "conv", 32, 64, 1, 1, 0, 1, (32, 32), (32, 32)),
            LayerSpec("fc", "linear", 64, 10),
        ),
        (3, 64, 64),
    )


@pytest.fixture(scope="module")
def model() -> AnalyticCostModel:
    return AnalyticCostModel(load_overlay(), load_default_calibration())


def test_preset_manifest_resources_follow_the_model_fitted_to_synthesis():
    overlay = load_overlay("pynq_z1")
    assert overlay.build_hash == overlay.structural_hash()
    res = estimate(overlay)
    # the preset is 8x8x128: the largest array that fits the Zynq-7020 with the shell and routing margin
    # (Yosys, flattened: 37,628 LUTs); 8x8x256 does not (59,514 LUTs, 112% of the part)
    assert res.fits and within_margin(overlay) and res.bram36 == 32 and res.dsp == 0
    assert (res.lut + SHELL_RESERVE.lut) / 53_200 < 0.8 and res.utilisation["bram36"] < 0.9
    assert res.lut > bismo_lut(overlay) and res.ff > overlay.dm * overlay.dn * overlay.acc_bits
    assert overlay.peak_binary_ops_per_s == pytest.approx(2 * 8 * 8 * 128 * 200e6)  # AND + popcount
    full = overlay.with_changes(dk=256)
    assert not estimate(full).fits and estimate(full).lut > 53_200 and not within_margin(full)
    too_big = overlay.with_changes(dm=16, dn=16)
    assert not estimate(too_big).fits and estimate(too_big.with_changes(part="xcvu9p-flga2104-2-i")).fits
    with pytest.raises(ManifestError, match="no resource capacity known for FPGA part 'xc9999'"):
        device_capacity("xc9999")


def test_measurement_adds_up_and_names_its_calibration(model):
    net = small_net()
    plan = QuantPlan.uniform(net, 4, 6)
    m = model.measure(net, plan, batch=2)
    params = model.params
    assert m.provenance.source == "model" and m.provenance.calibrated is True  # timing fitted on rtlsim
    assert m.provenance.calibration_id == "pynq_z1_rtlsim" and m.provenance.overlay_build_hash == model.overlay.build_hash
    assert m.latency_s == pytest.approx(sum(l.latency_s for l in m.layers))
    assert m.energy_j == pytest.approx(sum(l.energy_j for l in m.layers))
    assert m.avg_power_w == pytest.approx(m.energy_j / m.latency_s)
    assert params.energy.idle_power_w < m.avg_power_w < 5.0  # PYNQ-Z1 with BISMO: under 5 W at the wall
    for spec, cost in zip(net.layers, m.layers):
        cycles = layer_cycles(spec, [4] * spec.c_out, 6, model.overlay, params.schedule, batch=2)
        assert cost.cycles["total"] == cycles.total and cost.bound == cycles.bound
        assert cost.latency_s == pytest.approx(cycles.total / model.overlay.clock_hz)
        expected = (params.energy.idle_power_w * cost.latency_s + params.energy.energy_per_binary_op_j * cycles.binary_ops
                    + params.energy.energy_per_dram_byte_j * cycles.dram_bytes)
        assert cost.energy_j == pytest.approx(expected)
    assert m.resources["fits"] == float(estimate(model.overlay).fits) and m.resources["lut"] == estimate(model.overlay).lut
    assert m.layers[1].bound == "fetch"  # depthwise: moving activations


def test_kernel_wise_plan_between_min_and_max_and_grouping_helps(model):
    net = small_net()
    rng = np.random.default_rng(0)
    mixed_bits = tuple(int(b) for b in rng.permutation(np.repeat([2, 8], 32)))
    mixed = QuantPlan.uniform(net, 8, 8).replace("pw", LayerPlan("pw", mixed_bits, 8))
    low = QuantPlan.uniform(net, 8, 8).replace("pw", LayerPlan("pw", (2,) * 64, 8))
    high = QuantPlan.uniform(net, 8, 8)
    cost = {name: model.measure(net, plan, batch=4).layers[2].latency_s
            for name, plan in (("mixed", mixed), ("low", low), ("high", high))}
    assert cost["low"] < cost["mixed"] < cost["high"]
    # grouping the 2-bit kernels into tiles of their own saves execute passes
    ungrouped = model.measure(net, mixed, batch=4, grouped=False).layers[2]
    grouped = model.measure(net, mixed, batch=4).layers[2]
    assert grouped.cycles["execute"] < 0.8 * ungrouped.cycles["execute"] and grouped.latency_s <= ungrouped.latency_s


def test_per_image_lowering_from_the_calibration_is_used():
    base = load_default_calibration()
    schedule = ScheduleParams(**{**base.schedule.to_dict(), "per_image_convs": True, "layer_overhead_cycles": 0.0})
    model = AnalyticCostModel(load_overlay(), base.with_changes(schedule=schedule))
    net = small_net()
    plan = QuantPlan.uniform(net, 4, 4)
    one, three = model.measure(net, plan, batch=1), model.measure(net, plan, batch=3)
    assert three.layers[0].cycles["execute"] == 3 * one.layers[0].cycles["execute"]
    assert model.layer_table(net.layers, batch=3)[0, 3, 3] == three.layers[0].cycles["total"]


def test_a_model_that_scored_other_plans_gives_what_a_fresh_model_gives():
    net = small_net()
    rng = np.random.default_rng(7)
    model = AnalyticCostModel(load_overlay(), load_default_calibration())
    plan = QuantPlan.uniform(net, 6, 6)
    first = model.measure(net, plan, batch=2)
    for _ in range(3):
        layer = net.layers[int(rng.integers(len(net)))]
        bits = tuple(int(b) for b in rng.integers(1, 9, layer.c_out))
        plan = plan.replace(layer.name, LayerPlan(layer.name, bits, int(rng.integers(1, 9))))
        scored = model.measure(net, plan, batch=2)
        fresh = AnalyticCostModel(load_overlay(), load_default_calibration()).measure(net, plan, batch=2)
        assert scored.layers == fresh.layers and scored.latency_s == fresh.latency_s
    assert model.measure(net, QuantPlan.uniform(net, 6, 6), batch=2).layers == first.layers
    assert model.measure(net, QuantPlan.uniform(net, 6, 6), batch=1).latency_s < first.latency_s


def test_plan_that_does_not_fit_the_network_is_rejected(model):
    net = small_net()
    other = NetworkSpec("other", (LayerSpec("x", "linear", 4, 4),), (4, 1, 1))
    with pytest.raises(PlanError, match="plan does not fit network"):
        model.measure(net, QuantPlan.uniform(other, 4, 4))


def test_layer_table_matches_layer_cycles(model):
    layers = small_net().layers
    table = model.layer_table(layers, batch=3)
    assert table.shape == (4, 8, 8)
    for i, w, a in [(0, 1, 1), (1, 8, 2), (3, 5, 7)]:
        assert table[i, w - 1, a - 1] == layer_cycles(layers[i], [w] * layers[i].c_out, a, model.overlay,
                                                      model.params.schedule, batch=3).total


def test_calibration_round_trip(tmp_path):
    params = load_default_calibration()
    assert params.calibrated and params.schedule.pipeline and params.notes[0].startswith("calibrated: timing fitted")
    path = tmp_path / "cal.json"
    params.save(path)
    assert CalibrationParams.load(path) == params


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("schedule"), r"missing fields \['schedule'\]"),
        (lambda d: d.update(format="other/1"), "format must be 'autoq-calibration/1'"),
        (lambda d: d["schedule"].update(dram_efficiency=2.0), r"dram_efficiency must be in \(0, 1\]"),
        (lambda d: d["energy"].update(idle_power_w=-1), "idle_power_w must be a finite number >= 0"),
        (lambda d: d.update(calibrated="yes"), "'calibrated' must be true or false"),
        (lambda d: d["schedule"].update(warp=1), "unknown schedule parameters"),
    ],
)
def test_malformed_calibration_is_a_clear_error(tmp_path, mutate, message):
    data = json.loads(default_calibration_path().read_text())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=message):
        CalibrationParams.load(path)
    with pytest.raises(BackendError, match=message):
        open_backend(f"model:{path}")


def test_model_backend_uris(tmp_path):
    backend = open_backend("model")
    info = backend.describe()
    assert info.source == "model" and info.overlay == load_overlay() and "calibrated; fitted on rtlsim" in info.detail
    net = small_net()
    m = backend.measure(net, QuantPlan.uniform(net, 8, 8))
    assert m.provenance.calibrated is True
    backend.close()

    with pytest.raises(BackendError, match="cannot read calibration"):
        open_backend(f"model:{tmp_path / 'missing.json'}")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(BackendError, match="is not valid JSON"):
        open_backend(f"model:{tmp_path / 'junk.json'}")
    with pytest.raises(BackendError, match="unknown cost backend 'nonsense"):
        open_backend("nonsense:x")

    # a calibration for another overlay build: refused unless it carries that overlay
    other = load_overlay().with_changes(name="other", dm=4)
    foreign = load_default_calibration().with_changes(id="foreign", overlay_build_hash=other.build_hash, calibrated=True)
    foreign.save(tmp_path / "foreign.json")
    with pytest.raises(BackendError, match=f"was made for overlay build {other.build_hash}"):
        open_backend(f"model:{tmp_path / 'foreign.json'}")
    foreign.with_changes(overlay=other).save(tmp_path / "carried.json")
    carried = open_backend(f"model:{tmp_path / 'carried.json'}")
    assert carried.describe().overlay == other
    measured = carried.measure(net, QuantPlan.uniform(net, 8, 8))
    assert measured.provenance.overlay_build_hash == other.build_hash and measured.provenance.calibrated is True


def test_bundled_manifests_load():
    names = sorted(p.name for p in bitstreams_dir().iterdir() if (p / "manifest.json").exists())
    assert "pynq_z1" in names
    assert isinstance(load_overlay("pynq_z1"), OverlayConfig)
