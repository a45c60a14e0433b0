"""The schedule model against the cycle-accurate RTL simulation (run: ``python tests/benchmarks/bench_rtl_model.py``).

Takes a sweep of layer shapes x bit-widths x HP-port settings run on the Verilator simulation of the RTL engine
(``rtl_timing_sweep.py``: every run checked bit for bit against the reference engine; ``--csv`` reuses a sweep's CSV,
e.g. ``calibration/data/rtl_sweep.csv``, the sweep the bundled calibrations are fitted on, else a reduced sweep runs
here, a few minutes) and prints

- the schedule model with the overlay's bundled calibration (``ScheduleParams.pipeline``; the port fields set to each
  run's HP-port settings) against the RTL's ``cycles_total``: MAPE per port setting, per shape and overall;
- a fresh fit of the pipeline constants on the sweep (``calibration.fit.fit_pipeline``): in-sample, 5-fold and
  leave-one-shape-out MAPE and max error, by shape; ``--write-calibration`` writes it as the ``calibration.json`` of
  ``--overlay`` (and of each ``--also`` overlay, e.g. ``pynq_z1``: the constants are per beat, burst, row and
  step, the array's dimensions enter through the formulas), its ``source`` naming the sweep file and its sha256;
- with ``--per-port``, ``autoq calibrate``'s fit (``calibration.fit.fit``, as on a board's measurements: the runs
  of one HP-port setting, the port unknown to the fit) per port setting: leave-one-layer-out MAPE of the pipeline
  with the port's read latency and bandwidth fitted, of the pipeline with the bundled calibration's port kept, and
  of the stage totals, beside the fitted read latency and bandwidth;
- the simulation speed and the time the ``rtlsim`` backend takes to measure the digits network at 8/8
  (``--digits``).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtl_timing_sweep import FIELDS, load_runs, runs_as_measurements, sweep, sweep_overlay  # noqa: E402

from autoq.calibration.fit import (PIPELINE_PARAMETERS, PORT_PARAMETERS, PipelineRun, error_figures,  # noqa: E402
                                   fit, fit_pipeline)
from autoq.common.plan import QuantPlan  # noqa: E402
from autoq.overlay.calibration_params import (CalibrationParams, default_calibration_path,  # noqa: E402
                                              load_default_calibration, today)
from autoq.overlay.manifest import load_overlay  # noqa: E402
from autoq.overlay.schedule import ScheduleParams, layer_cycles  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHIPPED_SWEEP = REPO / "calibration" / "data" / "rtl_sweep.csv"
"""The sweep (``rtl_timing_sweep.py`` on rtl_small, seed 0, its default shapes, bits, HP-port settings and batches)
the bundled rtl_small and pynq_z1 calibrations are fitted on: rtlsim measurements, one row per bit-exact run."""
QUICK_BITS = ("1/2", "2/2", "4/4", "8/8", "mixed/4", "mix2/3")
QUICK_MEMORY = ((40, 8, 6.4), (80, 2, 6.4), (10, 8, 6.4), (80, 8, 6.4))


def predicted(runs: list[PipelineRun], overlay, params: ScheduleParams) -> np.ndarray:
    """The model's cycles for each run, with ``params``' port fields set to the run's HP-port settings."""
    out = []
    for run in runs:
        at = replace(params, **dict(zip(PORT_PARAMETERS, run.port)))
        out.append(layer_cycles(run.layer, run.weight_bits, run.act_bits, overlay, at, run.batch).total)
    return np.array(out, dtype=float)


def report(title: str, runs: list[PipelineRun], model: np.ndarray) -> None:
    measured = np.array([run.cycles for run in runs])
    print(title)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        groups[f"read_latency {run.port[0]:g}, outstanding {run.port[1]:g}, {run.port[4]:g} B/cycle"].append(i)
        groups[run.layer.name].append(i)
    for name, index in groups.items():
        e = error_figures(model[index], measured[index])
        print(f"  {name:<46} MAPE {e.mape:5.2f}%  max {e.max_ape:5.1f}%  ({e.n} runs)")
    e = error_figures(model, measured)
    print(f"  {'overall':<46} MAPE {e.mape:5.2f}%  max {e.max_ape:5.1f}%  ({e.n} runs)")


def write_calibration(overlay_name: str, fitted: ScheduleParams, figures: dict, source_overlay: str, runs: int,
                      sweep_text: str) -> Path:
    base = load_default_calibration(overlay_name)
    overlay = load_overlay(overlay_name)
    source = (f"fitted on rtlsim measurements: {runs} layer runs of the RTL engine on the Verilator simulation "
              f"(overlay {source_overlay}), sweep {sweep_text}")
    transfer = () if overlay_name == source_overlay else (
        f"constants fitted on {source_overlay}'s runs, used for {overlay_name} ({overlay.dm}x{overlay.dn}x{overlay.dk}): "
        "the array's dimensions enter through the formulas; not checked against an rtlsim sweep of this overlay",)
    calibration = CalibrationParams(
        id=f"{overlay_name}_rtlsim", source=source, overlay_build_hash=overlay.build_hash, date=today(),
        calibrated=True, schedule=fitted, energy=base.energy, overlay=None, fit=figures,
        notes=(f"calibrated: timing fitted on RTL-simulation cycle counts ({source_overlay}); the schedule is the "
               "fit's prediction, not a measurement; schedule model pipeline=true (overlay/schedule.py "
               "_pipeline_cycles: derived from the RTL but layer_overhead_cycles, row_cycles, result_burst_cycles and "
               "write_slot_cycles, fitted; row_tile_cycles and step_sync_cycles 0, not fitted); "
               "the port fields are the rtlsim HPPortModel defaults (read latency 40, 8 outstanding, write latency "
               "30, 6.4 B/cycle), assumptions, not board measurements",
               *transfer,
               f"energy parameters not measured: kept from calibration {base.id!r} (calibrated={base.calibrated})",
               "refit from the shipped sweep: python tests/benchmarks/bench_rtl_model.py --csv "
               "calibration/data/rtl_sweep.csv --write-calibration --also pynq_z1; re-measure it: python "
               "tests/benchmarks/rtl_timing_sweep.py -o calibration/data/rtl_sweep.csv"),
    )
    path = default_calibration_path(overlay_name)
    calibration.save(path)
    return path


def per_port(runs: list[PipelineRun], overlay, bundled: ScheduleParams) -> None:
    """``autoq calibrate``'s fits of each HP-port setting's runs alone (see the module docstring)."""
    print("\nautoq calibrate's fit of one HP-port setting's runs, leave-one-layer-out MAPE: pipeline with the port's "
          f"read latency and bandwidth fitted | port kept at the bundled ({bundled.read_latency_cycles:g}, "
          f"{bundled.read_outstanding:g}, {bundled.port_bytes_per_cycle:g}) | stage totals; fitted read latency, B/cycle")
    for port in sorted({run.port for run in runs}):
        chosen = [run for run in runs if run.port == port]
        data = runs_as_measurements(chosen, overlay.clock_hz)
        fitted, kept, totals = (fit(data, overlay, pipeline=bundled), fit(data, overlay, pipeline=bundled, fit_port=False),
                                fit(data, overlay))
        print(f"  read latency {port[0]:3g}, {port[1]:g} outstanding, {port[4]:g} B/cycle ({len(chosen)} runs): "
              f"{fitted.leave_one_layer_out.mape:5.2f}% | {kept.leave_one_layer_out.mape:5.2f}% | "
              f"{totals.leave_one_layer_out.mape:5.2f}%; {fitted.schedule.read_latency_cycles:.1f}, "
              f"{fitted.schedule.port_bytes_per_cycle:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", default="rtl_small",
                        help="overlay (register map v2) the sweep ran on, or base@DMxDNxDK as rtl_timing_sweep.py takes")
    parser.add_argument("--csv", type=Path, help="a sweep CSV of rtl_timing_sweep.py, e.g. calibration/data/rtl_sweep.csv "
                        "(the bundled calibrations' sweep; default: run a reduced sweep)")
    parser.add_argument("--write-calibration", action="store_true", help="write the fit as the overlay's calibration.json")
    parser.add_argument("--also", action="append", default=[], help="another overlay to write the fit for (repeatable)")
    parser.add_argument("--digits", action="store_true", help="also time the rtlsim backend on the digits network")
    parser.add_argument("--per-port", action="store_true", help="also autoq calibrate's fit of each port setting's runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    overlay = sweep_overlay(args.overlay)
    bundled_name = args.overlay.partition("@")[0]
    if args.write_calibration and bundled_name != overlay.name:
        parser.error("--write-calibration needs a bundled overlay (the fit is written as its calibration.json)")
    if args.csv:
        runs = load_runs(args.csv, overlay.name)
        path = args.csv.resolve()
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sweep_text = f"{shown} (sha256 {digest})"
        fitted_on = {"file": str(shown), "sha256": digest, "measured_by": "rtlsim"}
    else:
        import csv
        import tempfile
        from rtl_timing_sweep import SHAPES
        path = Path(tempfile.mkdtemp()) / "sweep.csv"
        start = time.perf_counter()
        cycles = 0
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            for row in sweep(overlay.name, SHAPES, QUICK_BITS, QUICK_MEMORY, (1,), args.seed, timeout_s=20.0):
                writer.writerow(row)
                cycles += int(row["sim_cycles"])
        seconds = time.perf_counter() - start
        print(f"sweep: {cycles} simulated cycles in {seconds:.1f} s = {cycles / seconds:,.0f} cycles/s ({path})")
        runs = load_runs(path, overlay.name)
        sweep_text = f"bench_rtl_model.py quick sweep (seed {args.seed}, not kept)"
        fitted_on = {"file": None, "sha256": None, "measured_by": "rtlsim"}
    shapes = sorted({run.layer.name for run in runs})
    sweep_text += (f": {len(shapes)} shapes ({', '.join(shapes)}), HP port "
                   f"{sorted({(r.port[0], r.port[1], r.port[4]) for r in runs})} (read latency, outstanding, "
                   f"bytes/cycle), batch {sorted({r.batch for r in runs})}")
    print(f"{len(runs)} bit-exact runs on {overlay.name} ({overlay.dm}x{overlay.dn}x{overlay.dk})")

    bundled = load_default_calibration(bundled_name)
    report(f"\nbundled calibration {bundled.id!r} (calibrated={bundled.calibrated}, pipeline="
           f"{bundled.schedule.pipeline}) against rtlsim cycles_total", runs, predicted(runs, overlay, bundled.schedule))

    start = time.perf_counter()
    fit = fit_pipeline(runs, overlay, seed=args.seed)
    print(f"\nfit of the pipeline constants on these runs ({time.perf_counter() - start:.1f} s):")
    for name in (*PIPELINE_PARAMETERS, "row_tile_cycles", "step_sync_cycles"):
        print(f"  {name:<24} {getattr(fit.params, name):g}{'' if name in PIPELINE_PARAMETERS else ' (held, not fitted)'}")
    for label, e in (("in-sample", fit.in_sample), ("5-fold", fit.kfold), ("leave-one-shape-out", fit.leave_one_shape_out)):
        print(f"  {label:<20} MAPE {e.mape:5.2f}%  max {e.max_ape:5.1f}%")
    for name in shapes:
        e, held = fit.by_shape[name], fit.shape_out[name]
        print(f"  {name:<20} in-sample {e.mape:5.2f}% (max {e.max_ape:5.1f}%)  held out {held.mape:5.2f}% "
              f"(max {held.max_ape:5.1f}%)")
    if args.per_port:
        per_port(runs, overlay, bundled.schedule)
    if args.write_calibration:
        for name in [overlay.name, *args.also]:
            figures = {**fit.figures(), "fitted_on": {**fitted_on, "runs": len(runs), "overlay": overlay.name}}
            path = write_calibration(name, fit.params, figures, overlay.name, len(runs), sweep_text)
            print(f"wrote {path}")

    if args.digits:
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
        print(f"\ndigits at 8/8 on rtlsim:{overlay.name}: {1e3 * measured.latency_s:.4f} ms ({cycles} RTL cycles, "
              f"source {measured.provenance.source}); opening the backend {opened - start:.1f} s (cached build), "
              f"measuring {done - opened:.1f} s (>= {cycles / (done - opened):,.0f} simulated cycles/s)")


if __name__ == "__main__":
    main()
