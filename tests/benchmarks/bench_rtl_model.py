"""The schedule model against the cycle-accurate RTL simulation (run: ``python tests/benchmarks/bench_rtl_model.py``).

Over a sweep of layer shapes x bit-widths x HP-port read latencies it runs each layer on the Verilator simulation
of the RTL engine (checking its results against the reference engine) and prints the schedule model's
``layer_cycles(...).total`` against the RTL's ``cycles_total``: the mean absolute percentage error per read latency,
per shape and overall. Then the simulation speed (simulated clock cycles per wall-clock second) and the time the
``rtlsim`` backend takes to measure the digits network at 8/8 (the Verilator build is cached, so run once before
timing a fresh checkout).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from autoq.common.network import LayerSpec
from autoq.common.plan import QuantPlan
from autoq.hls.rtlsim import HPPortModel
from autoq.hls.rtlsim.check import check_layer, open_engine, schedule_params
from autoq.overlay.bitserial import value_range
from autoq.overlay.manifest import load_overlay

SHAPES = (
    LayerSpec("conv3x3", "conv", 16, 16, 3, 1, 1, 1, (8, 8), (8, 8)),
    LayerSpec("conv3x3_s2", "conv", 8, 24, 3, 2, 1, 1, (10, 10), (5, 5)),
    LayerSpec("pointwise", "conv", 32, 16, 1, 1, 0, 1, (6, 6), (6, 6)),
    LayerSpec("grouped", "conv", 16, 16, 3, 1, 1, 4, (6, 6), (6, 6)),
    LayerSpec("depthwise", "depthwise", 16, 16, 3, 1, 1, 16, (8, 8), (8, 8)),
    LayerSpec("linear", "linear", 256, 32),
)
BITS = ("2/2", "4/4", "8/8", "mixed/4")  # weight/activation; mixed: 2..8 per kernel
READ_LATENCIES = (10, 40, 80)


def operands(rng: np.random.Generator, layer: LayerSpec, wbits: str, abits: int):
    bits = rng.integers(2, 9, layer.c_out) if wbits == "mixed" else np.full(layer.c_out, int(wbits))
    low, high = value_range(bits, signed=True)
    w = rng.integers(low[:, None], high[:, None] + 1, (layer.c_out, layer.kernel_size))
    w = w.reshape(layer.c_out, layer.c_in // layer.groups, *layer.kernel)
    x = rng.integers(0, 1 << abits, (1, layer.c_in, *layer.in_hw))
    return x, w, bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", default="rtl_small", help="overlay (register map v2) to simulate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    overlay = load_overlay(args.overlay)
    params = schedule_params(overlay)
    print(f"overlay {overlay.name} ({overlay.dm}x{overlay.dn}x{overlay.dk}); schedule model with the bundled "
          f"calibration's parameters (layer overhead {params.layer_overhead_cycles:g} cycles, DRAM efficiency "
          f"{params.dram_efficiency:g})")
    print(f"{'read_lat':>8} {'layer':<11} {'bits':<8} {'rtl cycles':>10} {'model':>9} {'error':>8}  exact")
    errors: dict[tuple[int, str], list[float]] = {}
    sim_cycles, sim_seconds, inexact = 0, 0.0, 0
    for latency in READ_LATENCIES:
        engine = open_engine(overlay, HPPortModel(read_latency=latency))
        rng = np.random.default_rng(args.seed)
        try:
            for layer in SHAPES:
                for spec in BITS:
                    wbits, abits = spec.split("/")
                    x, w, bits = operands(rng, layer, wbits, int(abits))
                    start = time.perf_counter()
                    check = check_layer(engine, layer, x, w, bits, int(abits), params)
                    sim_seconds += time.perf_counter() - start
                    sim_cycles += check.sim_cycles
                    if check.rejected:
                        print(f"{latency:>8} {layer.name:<11} {spec:<8} rejected: {check.rejected}")
                        inexact += 1
                        continue
                    inexact += not check.exact
                    errors.setdefault((latency, layer.name), []).append(check.model_error)
                    print(f"{latency:>8} {layer.name:<11} {spec:<8} {check.rtl_cycles[3]:>10} "
                          f"{check.model_cycles.total:>9} {100 * check.model_error:>+7.1f}%  "
                          f"{'yes' if check.exact else 'NO'}")
        finally:
            engine.close()

    def mape(values) -> str:
        return f"{100 * float(np.mean(np.abs(list(values)))):.1f}%"

    print("\nschedule model MAPE against rtlsim cycles_total")
    for latency in READ_LATENCIES:
        print(f"  read_latency {latency:>3}: {mape(e for (lat, _), v in errors.items() if lat == latency for e in v)}")
    for layer in SHAPES:
        print(f"  {layer.name:<16} {mape(e for (_, name), v in errors.items() if name == layer.name for e in v)}")
    print(f"  overall          {mape(e for v in errors.values() for e in v)} over "
          f"{sum(len(v) for v in errors.values())} runs; {inexact} runs not bit-exact or rejected")
    print(f"\nsimulation speed: {sim_cycles} cycles in {sim_seconds:.2f} s = {sim_cycles / sim_seconds:,.0f} cycles/s "
          f"(layer packing, reference engine and DDR copies included)")

    from autoq.common.backend import open_backend
    from autoq.host.models.resolve import spec_for

    network = spec_for("digits")
    plan = QuantPlan.uniform(network, 8, 8)
    start = time.perf_counter()
    backend = open_backend(f"rtlsim:{overlay.name}")
    opened = time.perf_counter()
    try:
        measured = backend.measure(network, plan)
    finally:
        backend.close()
    done = time.perf_counter()
    cycles = sum(layer.cycles["total"] for layer in measured.layers)
    print(f"digits at 8/8 on rtlsim:{overlay.name}: {1e3 * measured.latency_s:.4f} ms ({cycles} RTL cycles, "
          f"source {measured.provenance.source}); opening the backend {opened - start:.1f} s (cached build), "
          f"measuring {done - opened:.1f} s")


if __name__ == "__main__":
    main()
