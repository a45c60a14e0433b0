"""``autoq calibrate INPUT... -o OUT.json``: fit the analytic cost model to measurements and report its error.

INPUT is a per-layer measurement CSV (format in ``autoq.calibration.measurements``), the CSV that ``autoq trace
FILE --export csv`` writes (whole-network totals of uniform plans of named networks), or a trace database
(``.sqlite``, everything it recorded). ``--lookup-table FILE.npy --arch NAME --batch N`` fits a HAQ-style table
(``[layer, wbits-1, abits-1]``, cycles) of another overlay; ``--lookup-table haq-mobilenet-v2`` is HAQ's
MobileNetV2 table, bundled (it sets --arch mobilenet_v2 --batch 16). With ``--search-overlay`` (implied for a
lookup table) the overlay's structure is searched as well and the calibration file carries it, so ``--backend
model:OUT.json`` uses it as is. The schedule model fitted is the bundled calibration's (the RTL's step pipeline:
its ``calibration.fit.PIPELINE_PARAMETERS`` and the HP port's read latency and bandwidth, ``PORT_FITTED``, unless
``--keep-port``), or with ``--schedule stage-totals``, a structure search or a lookup table, the stage totals'
``FREE_PARAMETERS``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autoq.host.cli._args import output_file
from autoq.host.cli.inspect_cmd import positive_int

SCHEDULE_MODELS = ("pipeline", "stage-totals")


def register(subparsers: argparse._SubParsersAction) -> None:
    from autoq.calibration.measurements import BUNDLED_TABLES  # numpy only: the base install has it

    parser = subparsers.add_parser("calibrate", help="fit the analytic cost model to measurements",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="measurement CSV or trace database (.sqlite)")
    parser.add_argument("-o", "--output", required=True, type=output_file, metavar="OUT.json", help="calibration file to write")
    parser.add_argument("--lookup-table", metavar="FILE.npy|NAME",
                        help="HAQ-style latency table [layer, wbits-1, abits-1]: a .npy file or a bundled table "
                             f"({', '.join(BUNDLED_TABLES)})")
    parser.add_argument("--arch", help="network of the lookup table (built-in name, e.g. mobilenet_v2; "
                                       "a bundled table knows its own)")
    parser.add_argument("--batch", type=positive_int, help="batch size the lookup table was measured at "
                                                           "(a bundled table knows its own)")
    parser.add_argument("--overlay", default="pynq_z1", help="overlay the measurements come from, or the search's start "
                                                             "(bundled name or manifest path; default pynq_z1)")
    parser.add_argument("--search-overlay", action="store_true",
                        help="also search array dims, DRAM width and batch lowering (default for --lookup-table)")
    parser.add_argument("--schedule", choices=SCHEDULE_MODELS,
                        help="schedule model to fit: the RTL step pipeline's constants and the HP port's read latency "
                             "and bandwidth, or the stage totals' parameters (default: the overlay's bundled calibration's "
                             "model; stage totals with --search-overlay or --lookup-table)")
    parser.add_argument("--keep-port", action="store_true",
                        help="pipeline fit: keep the HP port's read latency and bandwidth at the bundled calibration's "
                             "instead of fitting them")
    parser.add_argument("--per-image-convs", action="store_true",
                        help="without a search: the runtime runs conv layers image by image")
    parser.add_argument("--folds", type=positive_int, default=5, help="k of k-fold cross-validation (default 5)")
    parser.add_argument("--id", dest="calibration_id", help="calibration id (default: the output file's stem)")
    parser.add_argument("--json", action="store_true", help="print the fit figures as JSON")
    parser.set_defaults(handler=run)


def _lookup_dataset(args: argparse.Namespace, clock_hz: float):
    from autoq.calibration.measurements import BUNDLED_TABLES, MeasurementError, lookup_table_path, samples_from_lookup_table
    from autoq.host.models.resolve import spec_for

    bundled = BUNDLED_TABLES.get(args.lookup_table)
    arch = args.arch or (bundled.arch if bundled else None)
    batch = args.batch or (bundled.batch if bundled else None)
    if bundled and (arch, batch) != (bundled.arch, bundled.batch):
        raise MeasurementError(f"bundled table {args.lookup_table!r} measures {bundled.arch} at batch {bundled.batch}, "
                               f"not {arch} at batch {batch}: leave out --arch/--batch")
    if not arch or not batch:
        raise MeasurementError(f"--lookup-table needs --arch NAME and --batch N (a bundled table sets both: "
                               f"{', '.join(BUNDLED_TABLES)})")
    network = spec_for(arch)
    return samples_from_lookup_table(lookup_table_path(args.lookup_table), network.layers, batch, clock_hz, arch)


def _line(label: str, figures: dict[str, Any]) -> str:
    return f"  {label:46s} MAPE {figures['mape_percent']:8.2f}%   max {figures['max_ape_percent']:8.2f}%"


def render(report: dict[str, Any], path: str, overlay: dict[str, Any] | None) -> str:
    fit = report["fit"]
    folds = next(k for k in fit if k.endswith("fold") and k.startswith("latency_"))
    lines = [
        f"calibration {report['id']!r} from {report['source']}: "
        + ("calibrated" if report["calibrated"] else "NOT calibrated (calibrated: false)"),
        *report["notes"],  # what it was fitted on, which parameters, what was kept
        f"structure: {fit['structure']}" + (f" (carried overlay, part {overlay['part']})" if overlay else ""),
        "latency error (absolute percentage):",
        _line("in-sample", fit["latency_in_sample"]),
        _line(folds.replace("latency_", "").replace("fold", "-fold cross-validated"), fit[folds]),
        _line("leave-one-layer-out", fit["latency_leave_one_layer_out"]),
    ]
    lines += [_line(f"baseline {name}", figures) for name, figures in fit["baselines"].items()]
    if fit["energy_in_sample"]:
        lines.append(_line("energy, in-sample", fit["energy_in_sample"]))
    schedule = report["schedule"]
    lines.append("fitted: " + ", ".join(f"{k}={schedule[k]:.4g}" for k in fit["fitted_parameters"]))
    lines.append(f"wrote {path}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from autoq.overlay.calibration_params import load_default_calibration
    from autoq.calibration.fit import FitError, calibration_from_fit, fit, pipeline_to_fit
    from autoq.calibration.measurements import MeasurementError, load_samples, merge
    from autoq.overlay.manifest import load_overlay

    template = load_overlay(args.overlay)
    datasets = [load_samples(path) for path in args.inputs]
    if args.lookup_table:
        datasets.append(_lookup_dataset(args, template.clock_hz))
    elif args.arch or args.batch:
        raise MeasurementError("--arch and --batch describe a --lookup-table; give one")
    if not datasets:
        raise MeasurementError("give measurement inputs (CSV or trace) and/or --lookup-table FILE.npy|NAME")
    dataset = merge(datasets)
    progress = (lambda _: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    bundled = None if Path(args.overlay).suffix == ".json" else template
    base = load_default_calibration(args.overlay) if bundled is not None else load_default_calibration()
    searching = args.search_overlay or bool(args.lookup_table)
    stage_totals = args.schedule == "stage-totals" if args.schedule else True if searching else None
    pipeline = pipeline_to_fit(base, stage_totals)
    if pipeline is None and args.keep_port:
        raise FitError("--keep-port keeps the HP port of a pipeline fit; this fit is of the stage totals, which have none")
    result = fit(dataset, template, search_overlay=searching, per_image_convs=args.per_image_convs, folds=args.folds,
                 progress=progress, pipeline=pipeline, fit_port=not args.keep_port)
    calibration_id = args.calibration_id or Path(args.output).stem
    calibration = calibration_from_fit(result, dataset, base, calibration_id, bundled)
    calibration.save(args.output)
    if not calibration.calibrated:
        print(f"warning: {args.output} is NOT calibrated (calibrated: false): {dataset.predicted}", file=sys.stderr)
    report = calibration.to_dict()
    print(json.dumps(report, indent=1) if args.json else render(report, args.output, report["overlay"]))
    return 0
