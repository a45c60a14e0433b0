"""Reference engine speed on real layer shapes, side by side with an integer conv (torch float64, exact here).

    python tests/benchmarks/bench_engine.py [--overlay pynq_z1] [--repeat 2]

Prints per layer: tiles, engine seconds, reference seconds, their ratio, and the schedule's execute cycles with
and without grouping channels by bit-width (random kernel-wise bits 2..8).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autoq.common.network import LayerSpec
from autoq.overlay.bitserial import value_range
from autoq.overlay.engine import run_layer
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import ScheduleParams, layer_tiles

LAYERS = (
    LayerSpec("resnet18.conv1", "conv", 3, 64, 7, 2, 3, 1, (224, 224), (112, 112)),
    LayerSpec("resnet18.layer3.conv", "conv", 256, 256, 3, 1, 1, 1, (14, 14), (14, 14)),
    LayerSpec("resnet18.layer4.conv", "conv", 512, 512, 3, 1, 1, 1, (7, 7), (7, 7)),
    LayerSpec("mobilenetv2.dw_112", "depthwise", 96, 96, 3, 2, 1, 96, (112, 112), (56, 56)),
    LayerSpec("mobilenetv2.pw_14", "conv", 384, 64, 1, 1, 0, 1, (14, 14), (14, 14)),
    LayerSpec("resnet18.fc", "linear", 512, 1000),
)


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", default="pynq_z1")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    overlay, params, rng = load_overlay(args.overlay), ScheduleParams(), np.random.default_rng(0)
    print(f"overlay {overlay.name}: Dm={overlay.dm} Dn={overlay.dn} Dk={overlay.dk}; act bits 4, weight bits 2..8 per kernel")
    print(f"{'layer':24s} {'tiles':>7s} {'engine s':>9s} {'ref s':>8s} {'engine/ref':>10s} {'exec grouped/natural':>21s}")
    as_float = lambda a: torch.from_numpy(a.astype(np.float64))
    for layer in LAYERS:
        bits = rng.integers(2, 9, size=layer.c_out)
        low, high = value_range(bits, signed=True)
        w = rng.integers(low[:, None, None, None], high[:, None, None, None] + 1,
                         size=(layer.c_out, layer.c_in // layer.groups, *layer.kernel))
        x = rng.integers(0, 16, size=(1, layer.c_in, *layer.in_hw))
        # best_of() calls the function at once: the defaults only bind the loop's values explicitly
        engine_s, result = best_of(args.repeat, lambda layer=layer, x=x, w=w, bits=bits: run_layer(layer, x, w, bits, 4, overlay, params))
        ref_s, reference = best_of(args.repeat, lambda layer=layer, x=x, w=w: torch.nn.functional.conv2d(
            as_float(x), as_float(w), stride=layer.stride, padding=layer.padding, groups=layer.groups).numpy())
        assert np.array_equal(result.output, reference.astype(np.int64)), layer.name
        natural = run_layer(layer, x, w, bits, 4, overlay, params, grouped=False).cycles
        tiles = sum(1 for _ in layer_tiles(layer, bits, 4, overlay, params))
        print(f"{layer.name:24s} {tiles:7d} {engine_s:9.3f} {ref_s:8.4f} {engine_s / ref_s:10.1f} "
              f"{result.cycles.execute / natural.execute:21.3f}")


if __name__ == "__main__":
    main()
