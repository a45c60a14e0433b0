"""The fast cost model (histograms through ``schedule.HistogramSchedule``) equals the direct one on random
kernel-wise plans in both schedule models, and plan hashes equal the JSON formula stored plan files and traces carry."""
import dataclasses
import hashlib
import json
import pickle

import numpy as np
import pytest

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.common.errors import PlanError
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.models.resolve import spec_for
from autoq.overlay.calibration_params import load_default_calibration
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import ScheduleError, ScheduleParams
from autoq.overlay.tiling import OperandError, grouped_tiles_at_least, tile_rows


def random_plans(network, count, seed, low=1):
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(count):
        layers = []
        for layer in network.layers:
            palette = rng.choice(np.arange(low, 9), size=int(rng.integers(1, 4)), replace=False)  # few or many widths
            layers.append(LayerPlan(layer.name, tuple(int(b) for b in rng.choice(palette, layer.c_out)), int(rng.integers(1, 9))))
        plans.append(QuantPlan(tuple(layers)))
    return plans


def grouped_net():
    return NetworkSpec("grouped", (LayerSpec("g", "conv", 32, 48, 3, 1, 1, 4, (16, 16), (16, 16)),
                                   LayerSpec("fc", "linear", 48, 10)), (32, 16, 16))


def calibrations():
    """The bundled calibration and the same with the stage-total schedule model (published-figure parameters)."""
    params = load_default_calibration()
    return [params, dataclasses.replace(params, schedule=ScheduleParams(pipeline=not params.schedule.pipeline))]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "digits", "grouped"])
def test_measure_equals_the_direct_path_on_random_kernel_wise_plans(arch):
    network = grouped_net() if arch == "grouped" else spec_for(arch)
    overlay = load_overlay()
    for params in calibrations():
        model = AnalyticCostModel(overlay, params)  # one model: its schedule serves later plans
        for batch in (1, 3):
            for plan in random_plans(network, 4, seed=batch):
                fast = model.measure(network, plan, batch)
                direct = AnalyticCostModel(overlay, params).measure_direct(network, plan, batch)
                assert dataclasses.replace(fast, provenance=direct.provenance) == direct
                assert fast.latency_s == direct.latency_s and fast.energy_j == direct.energy_j  # bit for bit


def test_bits_the_overlay_cannot_run_raise_as_before():
    network = grouped_net()
    overlay = load_overlay()
    model = AnalyticCostModel(overlay, load_default_calibration())
    plan = QuantPlan.uniform(network, 8, 8)
    narrow = dataclasses.replace(overlay, max_bits=4)
    model.overlay = narrow
    with pytest.raises(OperandError, match=r"weight_bits\[0\] = 8 is outside \[1, 4\]"):
        model.measure(network, plan)
    with pytest.raises(ScheduleError, match="act_bits must be an int in \\[1, 4\\]"):
        model.measure(network, QuantPlan.uniform(network, 3, 8))


def test_tile_counts_from_histograms_equal_the_sorted_tiling():
    rng = np.random.default_rng(0)
    for _ in range(300):
        dm = int(rng.integers(1, 20))
        sets = [rng.integers(1, 9, int(rng.integers(1, 70))) for _ in range(int(rng.integers(1, 5)))]
        at_least = grouped_tiles_at_least(np.stack([np.bincount(b, minlength=9) for b in sets]), dm)
        for row, bits in zip(at_least, sets):
            maxima = tile_rows(bits, dm).tile_bits
            assert row.tolist() == [int((maxima >= b).sum()) for b in range(8, 0, -1)]


def test_plan_hash_is_the_json_formula_and_survives_pickling():
    rng = np.random.default_rng(1)
    for names in (["conv1", "fc"], ['q"uote', "back\\slash", "ünï名"]):
        plan = QuantPlan(tuple(LayerPlan(n, tuple(int(b) for b in rng.integers(1, 9, int(rng.integers(1, 300)))),
                                         int(rng.integers(1, 9))) for n in names))
        body = json.dumps([[l.name, l.act_bits, list(l.weight_bits)] for l in plan.layers], separators=(",", ":"))
        assert plan.hash == hashlib.sha256(body.encode()).hexdigest()[:16]
        again = pickle.loads(pickle.dumps(plan))
        assert again == plan and again.hash == plan.hash and "bits_bytes" not in pickle.loads(pickle.dumps(plan.layers[0])).__dict__
        assert QuantPlan.from_json(plan.to_json()).hash == plan.hash


def test_layer_plan_checks_its_bits_in_one_pass_and_names_the_first_bad_one():
    assert LayerPlan("a", np.array([3, 8], dtype=np.int64), 2).bits_bytes == bytes([3, 8])  # numpy integers
    for bits, message in (((3, 0, 9), r"weight_bits\[1\] = 0 is out of range"), ((3, 9), r"weight_bits\[1\] = 9"),
                          ((3, 2.0), r"weight_bits\[1\] must be an integer"), ((3, 300), r"weight_bits\[1\] = 300"),
                          ((3, "4"), r"weight_bits\[1\] must be an integer"), ((), "weight_bits is empty")):
        with pytest.raises(PlanError, match=message):
            LayerPlan("a", bits, 2)
    with pytest.raises(PlanError, match=r"weight_bits\[1\] must be an integer, got True"):
        QuantPlan.from_json('{"layers": [{"name": "a", "act_bits": 2, "weight_bits": [3, true]}]}')
