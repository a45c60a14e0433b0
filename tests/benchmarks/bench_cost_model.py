"""How fast the analytic cost model scores plans (run: ``python tests/benchmarks/bench_cost_model.py``).

Scores random kernel-wise ResNet-18 and MobileNet-V2 plans with ``AnalyticCostModel.measure`` (the whole network in
one vectorised pass; a fresh model per plan, so its layer memo never helps) and prints plans/s, side by side with a
walk of plans that change one layer at a time (the memo's case), the same plans scored layer by layer
(``schedule.layer_cycles``), and by summing the explicit tiles (``schedule.layer_tiles``, what the engine executes).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.overlay.calibration_params import load_default_calibration
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.models.resolve import spec_for
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import layer_cycles, layer_tiles, sum_tiles


def random_plans(network, count: int, seed: int) -> list[QuantPlan]:
    rng = np.random.default_rng(seed)
    return [
        QuantPlan(tuple(LayerPlan(l.name, tuple(int(b) for b in rng.integers(2, 9, l.c_out)), int(rng.integers(2, 9)))
                        for l in network.layers))
        for _ in range(count)
    ]


def one_layer_changes(network, plan: QuantPlan, count: int, seed: int) -> list[QuantPlan]:
    """A walk of plans, each differing from the previous one in one layer (as budget enforcement produces)."""
    rng = np.random.default_rng(seed)
    plans = [plan]
    for _ in range(count - 1):
        layer = network.layers[int(rng.integers(len(network)))]
        bits = tuple(int(b) for b in rng.integers(2, 9, layer.c_out))
        plans.append(plans[-1].replace(layer.name, LayerPlan(layer.name, bits, int(rng.integers(2, 9)))))
    return plans


def rate(fn, items, min_seconds: float) -> float:
    """Items per second, repeating the list until ``min_seconds`` have passed."""
    done, start = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    args = parser.parse_args()
    overlay, params = load_overlay(), load_default_calibration()
    print(f"overlay {overlay.name} {overlay.dm}x{overlay.dk}x{overlay.dn}; {args.plans} random kernel-wise plans each")
    for arch in ("resnet18", "mobilenet_v2"):
        network = spec_for(arch)
        plans = random_plans(network, args.plans, seed=0)
        vectorised = rate(lambda p: AnalyticCostModel(overlay, params).measure(network, p), plans, args.seconds)
        walk = one_layer_changes(network, plans[0], 200, seed=1)
        memo_model = AnalyticCostModel(overlay, params)
        walking = rate(lambda p: memo_model.measure(network, p), walk, args.seconds)
        per_layer = rate(lambda p: [layer_cycles(l, lp.weight_bits, lp.act_bits, overlay, params.schedule)
                                    for l, lp in zip(network.layers, p.layers)], plans[:3], args.seconds)
        tiles = rate(lambda p: [sum_tiles(layer_tiles(l, lp.weight_bits, lp.act_bits, overlay, params.schedule),
                                          params.schedule) for l, lp in zip(network.layers, p.layers)],
                     plans[:1], args.seconds)
        print(f"{arch:13s} measure(), fresh plans: {vectorised:7.1f} plans/s | one layer changed per plan (memo): "
              f"{walking:7.1f} plans/s (x{walking / vectorised:.1f}) | layer by layer: {per_layer:6.1f} plans/s "
              f"(x{vectorised / per_layer:.1f} slower) | summing explicit tiles: {tiles:5.2f} plans/s "
              f"(x{vectorised / tiles:.0f} slower)")


if __name__ == "__main__":
    main()
