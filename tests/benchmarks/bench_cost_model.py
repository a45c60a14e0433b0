"""How fast the ``model`` backend scores fresh kernel-wise plans (run: ``python tests/benchmarks/bench_cost_model.py``).

End to end as the search scores a plan (``host/search/env.py``): each plan is built from fresh per-kernel bit tuples
(``LayerPlan`` checks them, ``QuantPlan.for_network`` fits them to the network), hashed, and scored by the backend's
``measure``, which builds the ``LayerCost``/``Measurement`` objects; no plan is scored twice, nothing is cached by
plan. Under both schedule models: the RTL pipeline (the bundled calibration's) and the stage totals
(``ScheduleParams()``, the published-figure parameters of the PYNQ-Z1 calibration before the RTL fit).

Beside it, as many fresh plans built the same way and scored in one ``measure_many`` call per round (up to ``MANY``
plans per histogram pass; its schedules over copies of the network are built before the clock starts). Side
by side, the same plans through ``measure_direct``: every layer tiled from its per-kernel bits (the definition the
fast path equals bit for bit, and the path the old layer memo took on a miss). Each figure is the best of
``--repeats`` rounds of ``--plans`` plans, in wall-clock and in CPU time (the machine may be shared); the inputs are
frozen out of the garbage collector's sight before the clock starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from typing import Callable

import numpy as np

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.common.network import NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.backends.model import ModelBackend
from autoq.host.models.resolve import spec_for
from autoq.overlay.calibration_params import CalibrationParams, load_default_calibration
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import ScheduleParams

Layers = list[tuple[str, tuple[int, ...], int]]


def random_bits(network: NetworkSpec, count: int, rng: np.random.Generator) -> list[Layers]:
    """What an agent hands the search per plan: per layer its name, per-kernel bits (2..8) and activation bits."""
    return [[(l.name, tuple(int(b) for b in rng.integers(2, 9, l.c_out)), int(rng.integers(2, 9))) for l in network.layers]
            for _ in range(count)]


def built(network: NetworkSpec, layers: Layers) -> QuantPlan:
    return QuantPlan.for_network(network, (LayerPlan(*layer) for layer in layers))


def one_at_a_time(measure: Callable[[NetworkSpec, QuantPlan, int], object], network: NetworkSpec
                  ) -> Callable[[list[Layers]], object]:
    return lambda plans: [measure(network, built(network, layers), 1) for layers in plans]


def in_one_call(measure_many: Callable[[NetworkSpec, list[QuantPlan], int], object], network: NetworkSpec
                ) -> Callable[[list[Layers]], object]:
    return lambda plans: measure_many(network, [built(network, layers) for layers in plans], 1)


def best_rate(score: Callable[[list[Layers]], object], rounds: list[list[Layers]]) -> tuple[float, float]:
    """Plans per second (wall clock, CPU time), the best round of each; ``score`` builds and scores a round's plans,
    each once."""
    wall = cpu = 0.0
    for plans in rounds:
        start, start_cpu = time.perf_counter(), time.process_time()
        score(plans)
        wall = max(wall, len(plans) / (time.perf_counter() - start))
        cpu = max(cpu, len(plans) / (time.process_time() - start_cpu))
    return wall, cpu


def modes(params: CalibrationParams) -> dict[str, CalibrationParams]:
    pipeline = params.schedule if params.schedule.pipeline else ScheduleParams(pipeline=True)
    return {"pipeline": dataclasses.replace(params, schedule=pipeline),
            "stage totals": dataclasses.replace(params, schedule=ScheduleParams())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", type=int, default=1000, help="fresh plans per round (the direct path: a tenth)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the best counts")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = parser.parse_args()
    overlay = load_overlay()
    print(f"overlay {overlay.name} {overlay.dm}x{overlay.dk}x{overlay.dn}; fresh random kernel-wise plans, bits 2..8, "
          f"built, checked, hashed and scored end to end; best of {args.repeats} rounds")
    rng = np.random.default_rng(0)
    for arch in args.archs:
        network = spec_for(arch)
        for mode, params in modes(load_default_calibration()).items():
            fast_rounds = [random_bits(network, args.plans, rng) for _ in range(args.repeats)]
            many_rounds = [random_bits(network, args.plans, rng) for _ in range(args.repeats)]
            direct_rounds = [random_bits(network, max(1, args.plans // 10), rng) for _ in range(args.repeats)]
            gc.collect()
            gc.freeze()
            backend, direct = ModelBackend(params, overlay, "model"), AnalyticCostModel(overlay, params)
            fast_wall, fast_cpu = best_rate(one_at_a_time(backend.measure, network), fast_rounds)
            backend.measure_many(network, [QuantPlan.uniform(network, 8, 8)] * args.plans, 1)  # its schedules
            many_wall, many_cpu = best_rate(in_one_call(backend.measure_many, network), many_rounds)
            old_wall, old_cpu = best_rate(one_at_a_time(direct.measure_direct, network), direct_rounds)
            gc.unfreeze()
            print(f"{arch:13s} {mode:12s} measure {fast_wall:7.0f} plans/s ({fast_cpu:7.0f} per CPU s) | "
                  f"measure_many {many_wall:7.0f} ({many_cpu:7.0f}) | "
                  f"direct path {old_wall:6.0f} ({old_cpu:6.0f}) | x{fast_wall / old_wall:.1f} (x{fast_cpu / old_cpu:.1f})")


if __name__ == "__main__":
    main()
