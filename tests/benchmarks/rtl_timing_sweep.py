"""RTL cycle counts over a sweep of layer shapes x bit-widths x HP-port settings, for fitting the schedule model
(run: ``python tests/benchmarks/rtl_timing_sweep.py -o /tmp/rtl_sweep.csv``).

Each layer runs on the Verilator simulation of the RTL engine (``hls.rtlsim.check.check_layer``: outputs checked
bit for bit against the reference engine) and one CSV row records the layer, its bits, the memory model and the
RTL's counters (fetch, execute, result active cycles and ``cycles_total``). ``--shapes``/``--bits``/``--memory``
run a subset. The rows are measurements: ``calibration`` fits the schedule model's parameters to them; the sweep the
bundled calibrations are fitted on is ``calibration/data/rtl_sweep.csv`` (this script's defaults, seed 0), refit with
``bench_rtl_model.py --csv calibration/data/rtl_sweep.csv``. ``--compare OLD.csv`` says, after the sweep, how many
runs (same layer, bits, batch and HP port; seeded operands) have the same ``cycles_total`` as in ``OLD.csv``.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from autoq.calibration.fit import PipelineRun
from autoq.calibration.measurements import Dataset, Sample
from autoq.common.network import LayerSpec
from autoq.hls.rtlsim import HPPortModel
from autoq.hls.rtlsim.check import check_layer, open_engine
from autoq.overlay.bitserial import value_range
from autoq.overlay.driver import DriverError
from autoq.overlay.manifest import load_overlay

SHAPES = (
    LayerSpec("conv3x3", "conv", 16, 16, 3, 1, 1, 1, (8, 8), (8, 8)),
    LayerSpec("conv3x3_s2", "conv", 8, 24, 3, 2, 1, 1, (10, 10), (5, 5)),
    LayerSpec("conv3x3_deep", "conv", 32, 6, 3, 1, 1, 1, (5, 5), (5, 5)),
    LayerSpec("pointwise", "conv", 32, 16, 1, 1, 0, 1, (6, 6), (6, 6)),
    LayerSpec("grouped", "conv", 16, 16, 3, 1, 1, 4, (6, 6), (6, 6)),
    LayerSpec("depthwise", "depthwise", 16, 16, 3, 1, 1, 16, (8, 8), (8, 8)),
    LayerSpec("linear", "linear", 256, 32),
    LayerSpec("linear_small", "linear", 64, 10),
    LayerSpec("conv3x3_big", "conv", 32, 32, 3, 1, 1, 1, (12, 12), (12, 12)),
)
# weight/activation bits; mixed: 1..8 per kernel, mix2: 2..8 (packed depthwise tiles reject binary rows)
BITS = ("1/2", "2/2", "4/4", "8/8", "3/6", "mixed/4", "mixed/8", "mix2/3")
MEMORY = "10:2,10:8,40:2,40:8,80:2,80:8,40:8:4"  # read_latency:outstanding[:bandwidth]
FIELDS = ("overlay", "layer", "kind", "c_in", "c_out", "kernel", "stride", "padding", "groups", "in_h", "in_w",
          "out_h", "out_w", "batch", "wbits_spec", "weight_bits", "act_bits", "read_latency", "write_latency",
          "outstanding", "bandwidth", "rtl_fetch", "rtl_execute", "rtl_result", "rtl_total", "sim_cycles", "exact",
          "rejected")


def operands(rng: np.random.Generator, layer: LayerSpec, wbits: str, abits: int, batch: int):
    if wbits in ("mixed", "mix2"):
        bits = rng.integers(1 if wbits == "mixed" else 2, 9, layer.c_out)
    else:
        bits = np.full(layer.c_out, int(wbits))
    low, high = value_range(bits, signed=True)
    w = rng.integers(low[:, None], high[:, None] + 1, (layer.c_out, layer.kernel_size))
    w = np.where((bits == 1)[:, None], np.where(w > 0, 1, -1), w)  # binary rows are {-1, +1}
    w = w.reshape(layer.c_out, layer.c_in // layer.groups, *layer.kernel)
    x = rng.integers(0, 1 << abits, (batch, layer.c_in, *layer.in_hw))
    return x, w, bits


def memory_settings(text: str) -> list[tuple[int, int, float]]:
    """``MEMORY``-style text as (read latency, outstanding bursts, bytes per cycle) settings."""
    settings = []
    for item in text.split(","):
        parts = item.split(":")
        settings.append((int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else HPPortModel().bandwidth))
    return settings


def sweep_overlay(name: str):
    """A bundled overlay by ``name``, or ``base@DMxDNxDK``: ``base`` with other array dimensions."""
    base, _, dims = name.partition("@")
    overlay = load_overlay(base)
    if not dims:
        return overlay
    dm, dn, dk = (int(v) for v in dims.split("x"))
    return overlay.with_changes(name=name, dm=dm, dn=dn, dk=dk)


def sweep(overlay_name: str, shapes, bits_specs, memory, batches, seed: int = 0, timeout_s: float = 60.0):
    """CSV rows (dicts) of every (memory setting, shape, bits, batch) run on the RTL simulation.

    A run that does not finish within ``timeout_s`` wall-clock seconds is recorded as ``rejected = "hang"`` (and
    the simulation is opened afresh)."""
    overlay = sweep_overlay(overlay_name)
    for latency, outstanding, bandwidth in memory:
        port = HPPortModel(read_latency=latency, read_outstanding=outstanding, write_outstanding=outstanding,
                           bandwidth=bandwidth)
        rng = np.random.default_rng(seed)
        engine = None
        try:
            for layer, spec, batch in itertools.product(shapes, bits_specs, batches):
                if engine is None:
                    engine = open_engine(overlay, port)
                    engine.driver.timeout_s = timeout_s
                wbits, abits = spec.split("/")
                x, w, bits = operands(rng, layer, wbits, int(abits), batch)
                try:
                    check = check_layer(engine, layer, x, w, bits, int(abits))
                    cycles, sim_cycles, exact, rejected = check.rtl_cycles, check.sim_cycles, check.exact, check.rejected
                except DriverError:
                    engine.close()
                    engine = None
                    cycles, sim_cycles, exact, rejected = (0, 0, 0, 0), 0, False, "hang"
                yield {
                    "overlay": overlay.name, "layer": layer.name, "kind": layer.kind, "c_in": layer.c_in,
                    "c_out": layer.c_out, "kernel": layer.kernel[0], "stride": layer.stride, "padding": layer.padding,
                    "groups": layer.groups, "in_h": layer.in_hw[0], "in_w": layer.in_hw[1], "out_h": layer.out_hw[0],
                    "out_w": layer.out_hw[1], "batch": batch, "wbits_spec": wbits,
                    "weight_bits": "-".join(str(int(b)) for b in bits), "act_bits": int(abits),
                    "read_latency": latency, "write_latency": port.write_latency, "outstanding": outstanding,
                    "bandwidth": port.bandwidth, "rtl_fetch": cycles[0], "rtl_execute": cycles[1],
                    "rtl_result": cycles[2], "rtl_total": cycles[3], "sim_cycles": sim_cycles,
                    "exact": int(exact), "rejected": rejected,
                }
        finally:
            if engine is not None:
                engine.close()


def _pair(text: str) -> tuple[int, int]:
    first, second = (int(v) for v in text.strip("()").split(","))
    return first, second


def load_runs(path: Path, overlay: str | None = None) -> list[PipelineRun]:
    """The bit-exact runs of a sweep CSV (of ``overlay`` only, if given) as ``calibration.fit.PipelineRun``."""
    runs = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["exact"] != "1" or (overlay is not None and row["overlay"] != overlay):
                continue
            if row["kind"] == "linear":
                layer = LayerSpec(row["layer"], "linear", int(row["c_in"]), int(row["c_out"]))
            else:
                layer = LayerSpec(row["layer"], row["kind"], int(row["c_in"]), int(row["c_out"]), int(row["kernel"]),
                                  _pair(row["stride"]), _pair(row["padding"]), int(row["groups"]),
                                  (int(row["in_h"]), int(row["in_w"])), (int(row["out_h"]), int(row["out_w"])))
            port = (float(row["read_latency"]), float(row["outstanding"]), float(row["write_latency"]),
                    float(row["outstanding"]), float(row["bandwidth"]))
            bits = tuple(int(b) for b in row["weight_bits"].split("-"))
            runs.append(PipelineRun(layer, bits, int(row["act_bits"]), int(row["batch"]), port, float(row["rtl_total"])))
    return runs


def runs_as_measurements(runs: list[PipelineRun], clock_hz: float) -> Dataset:
    """Sweep runs as the measurements ``autoq calibrate`` fits (latency from the RTL's ``cycles_total`` at
    ``clock_hz``, no power), each keyed by its layer's name."""
    return Dataset(tuple(Sample(run.layer, run.weight_bits, run.act_bits, run.batch, run.cycles / clock_hz,
                                float("nan"), run.layer.name) for run in runs), "rtlsim", measured_by=("rtlsim",))


def _run_key(row: dict) -> tuple:
    return (row["overlay"], row["layer"], row["wbits_spec"], row["act_bits"], row["batch"], row["read_latency"],
            row["outstanding"], row["bandwidth"])


def compare(new: Path, old: Path) -> str:
    """How the runs of sweep CSV ``new`` compare with the same runs of ``old``: identical ``cycles_total``, the
    largest difference, and the runs bit-exact in only one of them."""
    def rows(path: Path) -> dict:
        with Path(path).open(newline="") as handle:
            return {_run_key(row): row for row in csv.DictReader(handle)}

    a, b = rows(old), rows(new)
    common = [k for k in b if k in a and a[k]["exact"] == "1" and b[k]["exact"] == "1"
              and a[k]["weight_bits"] == b[k]["weight_bits"]]
    same = sum(a[k]["rtl_total"] == b[k]["rtl_total"] for k in common)
    worst = max(common, key=lambda k: abs(int(b[k]["rtl_total"]) - int(a[k]["rtl_total"])), default=None)
    text = f"{same} of {len(common)} runs bit-exact in both have the same cycles_total"
    if worst is not None and same < len(common):
        old_cycles, new_cycles = int(a[worst]["rtl_total"]), int(b[worst]["rtl_total"])
        text += (f"; largest difference {new_cycles - old_cycles:+d} cycles ({100 * (new_cycles / old_cycles - 1):+.2f}%) "
                 f"at {worst}")
    only_new = sum(b[k]["exact"] == "1" and (k not in a or a[k]["exact"] != "1") for k in b)
    only_old = sum(a[k]["exact"] == "1" and (k not in b or b[k]["exact"] != "1") for k in a)
    return text + f"; bit-exact only in the new sweep: {only_new}, only in the old: {only_old}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("/tmp/rtl_sweep.csv"))
    parser.add_argument("--overlay", default="rtl_small", help="bundled overlay, or base@DMxDNxDK (e.g. rtl_small@4x4x128)")
    parser.add_argument("--shapes", help="comma-separated subset of " + ",".join(s.name for s in SHAPES))
    parser.add_argument("--bits", help="comma-separated subset of " + ",".join(BITS))
    parser.add_argument("--memory", default=MEMORY, help="HP-port settings, read_latency:outstanding[:bandwidth],...")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0, help="wall-clock seconds before a run counts as hung")
    parser.add_argument("--compare", type=Path, help="a previous sweep CSV to compare the runs' cycles_total with")
    args = parser.parse_args()
    shapes = [s for s in SHAPES if not args.shapes or s.name in args.shapes.split(",")]
    bits = args.bits.split(",") if args.bits else list(BITS)
    memory = memory_settings(args.memory)
    batches = [int(v) for v in args.batches.split(",")]
    new = not (args.append and args.output.is_file())
    start = time.perf_counter()
    with args.output.open("w" if new else "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new:
            writer.writeheader()
            handle.flush()
        for row in sweep(args.overlay, shapes, bits, memory, batches, args.seed, args.timeout):
            writer.writerow(row)
            handle.flush()
            print(f"{row['read_latency']:>3} {row['outstanding']} {row['layer']:<13} {row['wbits_spec']}/{row['act_bits']} "
                  f"b{row['batch']} {row['rtl_total']:>8} exact={row['exact']} {row['rejected']} "
                  f"[{time.perf_counter() - start:.0f}s]", file=sys.stderr, flush=True)
    if args.compare:
        print(compare(args.output, args.compare))


if __name__ == "__main__":
    main()
