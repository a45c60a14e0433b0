"""How fast the analytic cost model scores plans (run: ``python tests/benchmarks/bench_cost_model.py``).

Scores fresh random kernel-wise ResNet-18 and MobileNet-V2 plans (each plan object scored once, so nothing cached on
a plan helps; built before the clock starts) old and new side by side: *old* is today's direct path before the
histogram memo (``measure_direct``: every layer tiled from its per-kernel bits) plus the JSON-and-SHA-256 plan hash
it used to compute; *new* is ``measure`` on one model (histograms, tile maxima, memo by tile maxima). Then a walk of
plans that change one layer at a time (the memo's best case), the plans scored layer by layer
(``schedule.layer_cycles``), and by summing the explicit tiles (``schedule.layer_tiles``, what the engine executes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
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


def json_hash(plan: QuantPlan) -> str:
    """The plan hash as it was computed before (the same value ``plan.hash`` gives now)."""
    body = json.dumps([[l.name, l.act_bits, list(l.weight_bits)] for l in plan.layers], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def once(fn, items) -> float:
    """Items per second, each scored once."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


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
    parser.add_argument("--fresh", type=int, default=1500, help="fresh plans scored once each, old and new")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    args = parser.parse_args()
    overlay, params = load_overlay(), load_default_calibration()
    print(f"overlay {overlay.name} {overlay.dm}x{overlay.dk}x{overlay.dn}; random kernel-wise plans, bits 2..8")
    for arch in ("resnet18", "mobilenet_v2"):
        network = spec_for(arch)
        count = args.fresh if arch == "resnet18" else args.fresh // 4
        old_model, new_model = AnalyticCostModel(overlay, params), AnalyticCostModel(overlay, params)
        old = once(lambda p, m=old_model, network=network: (json_hash(p), m.measure_direct(network, p)),
                   random_plans(network, count, seed=0))
        new = once(lambda p, m=new_model, network=network: m.measure(network, p), random_plans(network, count, seed=0))
        print(f"{arch:13s} fresh plans: old {old:7.1f} plans/s | new {new:7.1f} plans/s | x{new / old:.1f}")
        plans = random_plans(network, args.plans, seed=0)
        walk = one_layer_changes(network, plans[0], 200, seed=1)
        memo_model = AnalyticCostModel(overlay, params)
        walking = rate(lambda p, model=memo_model, network=network: model.measure(network, p), walk, args.seconds)
        per_layer = rate(lambda p, network=network: [layer_cycles(l, lp.weight_bits, lp.act_bits, overlay, params.schedule)
                                    for l, lp in zip(network.layers, p.layers)], plans[:3], args.seconds)
        tiles = rate(lambda p, network=network: [sum_tiles(layer_tiles(l, lp.weight_bits, lp.act_bits, overlay, params.schedule),
                                          params.schedule) for l, lp in zip(network.layers, p.layers)],
                     plans[:1], args.seconds)
        print(f"{arch:13s} one layer changed per plan (memo): {walking:7.1f} plans/s | layer by layer: {per_layer:6.1f} "
              f"plans/s | summing explicit tiles: {tiles:5.2f} plans/s")


if __name__ == "__main__":
    main()
