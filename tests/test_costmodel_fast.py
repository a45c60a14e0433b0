"""The fast cost model (histograms, tile maxima, memo) equals the direct one on random kernel-wise plans, and plan
hashes equal the JSON formula stored plan files and traces carry."""
import dataclasses
import hashlib
import json

import numpy as np
import pytest

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.models.resolve import spec_for
from autoq.overlay.calibration_params import load_default_calibration
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import ScheduleError
from autoq.overlay.tiling import OperandError, grouped_tile_bits, tile_rows


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


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "digits", "grouped"])
def test_measure_equals_the_direct_path_on_random_kernel_wise_plans(arch):
    network = grouped_net() if arch == "grouped" else spec_for(arch)
    overlay, params = load_overlay(), load_default_calibration()
    model = AnalyticCostModel(overlay, params)  # one model: its memo serves later plans
    for batch in (1, 3):
        for plan in random_plans(network, 6, seed=batch):
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


def test_tile_maxima_from_histograms_equal_the_sorted_tiling():
    rng = np.random.default_rng(0)
    for _ in range(300):
        dm = int(rng.integers(1, 20))
        sets = [rng.integers(1, 9, int(rng.integers(1, 70))) for _ in range(int(rng.integers(1, 5)))]
        row_set, bits = grouped_tile_bits(np.stack([np.bincount(b, minlength=9) for b in sets]), dm)
        expected = [tile_rows(b, dm).tile_bits for b in sets]
        assert bits.tolist() == np.concatenate(expected).tolist()
        assert row_set.tolist() == [i for i, e in enumerate(expected) for _ in e]


def test_plan_hash_is_the_json_formula_and_survives_pickling():
    import pickle

    rng = np.random.default_rng(1)
    for names in (["conv1", "fc"], ['q"uote', "back\\slash", "ünï名"]):
        plan = QuantPlan(tuple(LayerPlan(n, tuple(int(b) for b in rng.integers(1, 9, int(rng.integers(1, 300)))),
                                         int(rng.integers(1, 9))) for n in names))
        body = json.dumps([[l.name, l.act_bits, list(l.weight_bits)] for l in plan.layers], separators=(",", ":"))
        assert plan.hash == hashlib.sha256(body.encode()).hexdigest()[:16]
        again = pickle.loads(pickle.dumps(plan))
        assert again == plan and again.hash == plan.hash and "json_fragment" not in again.layers[0].__dict__
        assert QuantPlan.from_json(plan.to_json()).hash == plan.hash
