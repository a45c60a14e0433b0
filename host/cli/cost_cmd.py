"""``autoq cost MODEL (--plan PLAN.json | --uniform W/A)``: latency, energy and power of a plan on a cost backend.

Works with any backend URI (``model[:cal.json]``, ``emulated``, ``tcp://...``, ``serial://...``, ``replay:...``):
it only talks to the ``CostBackend`` seam. ``--record FILE`` appends the measurement to a trace that
``--backend replay:FILE`` serves again.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from autoq.common.backend import DEFAULT_BACKEND, BackendInfo
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import MAX_BITS, MIN_BITS, QuantPlan
from autoq.host.cli._args import output_file
from autoq.host.cli.inspect_cmd import parse_input_shape, positive_int

TABLE_COLUMNS = ("layer", "kind", "wbits", "abits", "latency ms", "energy mJ", "bound")


def parse_uniform(text: str) -> tuple[int, int]:
    """``W/A`` -> (weight bits, activation bits), each in the plan's allowed range."""
    parts = text.split("/")
    try:
        wbits, abits = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W/A such as 8/8 or 4/8, got {text!r}") from None
    for bits in (wbits, abits):
        if not MIN_BITS <= bits <= MAX_BITS:
            raise argparse.ArgumentTypeError(f"bit-widths must be in [{MIN_BITS}, {MAX_BITS}], got {text!r}")
    return wbits, abits


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cost", help="latency/energy/power of a quantization plan on a cost backend",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL",
                        help="built-in name (resnet18, mobilenet_v2, ...), 'digits', or a path to .onnx / .pt / .pth")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--plan", metavar="PLAN.json", help="kernel-wise plan (autoq-plan/1 JSON)")
    which.add_argument("--uniform", type=parse_uniform, metavar="W/A", help="every kernel W bits, every activation A bits")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, metavar="URI",
                        help="cost backend: model[:cal.json] (default), emulated, tcp://host:port, serial:///dev/X, replay:trace.sqlite")
    parser.add_argument("--record", type=output_file, metavar="FILE", help="append the measurement to this SQLite trace")
    parser.add_argument("--arch", help="architecture of a .pt/.pth state dict")
    parser.add_argument("--input-shape", type=parse_input_shape, metavar="C,H,W", help="input size instead of the model's default")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    parser.set_defaults(handler=run)


def cost_report(network: NetworkSpec, plan: QuantPlan, measurement: Measurement, info: BackendInfo) -> dict[str, Any]:
    """What ``--json`` prints: totals, provenance and one entry per layer."""
    costs = {layer.name: layer for layer in measurement.layers}
    layers = []
    for spec, lp in zip(network.layers, plan.layers):
        cost = costs.get(spec.name)
        layers.append({
            "name": spec.name,
            "kind": spec.kind,
            "wbits_min": min(lp.weight_bits),
            "wbits_max": max(lp.weight_bits),
            "wbits_mean": lp.mean_weight_bits,
            "abits": lp.act_bits,
            "latency_ms": cost.latency_s * 1e3 if cost else None,
            "energy_mj": cost.energy_j * 1e3 if cost else None,
            "bound": cost.bound if cost else None,
            "cycles": dict(cost.cycles) if cost else {},
        })
    p = measurement.provenance
    return {
        "network": network.name,
        "network_hash": network.hash,
        "plan_hash": plan.hash,
        "batch": measurement.batch,
        "backend": {"uri": info.uri, "source": info.source, "overlay": info.overlay.name,
                    "overlay_build_hash": info.overlay.build_hash, "detail": info.detail},
        "provenance": {"source": p.source, "calibrated": p.calibrated, "calibration_id": p.calibration_id,
                       "overlay_build_hash": p.overlay_build_hash, "board_id": p.board_id},
        "totals": {"latency_ms": measurement.latency_s * 1e3, "energy_mj": measurement.energy_j * 1e3,
                   "avg_power_w": measurement.avg_power_w, "idle_power_w": measurement.idle_power_w},
        "resources": dict(measurement.resources),
        "layers": layers,
    }


def _bits(entry: dict[str, Any]) -> str:
    low, high = entry["wbits_min"], entry["wbits_max"]
    return str(low) if low == high else f"{low}-{high}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(report: dict[str, Any]) -> str:
    rows = [TABLE_COLUMNS] + [
        (e["name"], e["kind"], _bits(e), str(e["abits"]), _number(e["latency_ms"], 4), _number(e["energy_mj"], 4),
         e["bound"] or "-")
        for e in report["layers"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    numeric = {2, 3, 4, 5}
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    totals, prov = report["totals"], report["provenance"]
    state = "" if prov["calibrated"] else "  [UNCALIBRATED: published figures, not board measurements]"
    header = (f"{report['network']} (batch {report['batch']}, plan {report['plan_hash']}) on {report['backend']['uri']}"
              f" -> source {prov['source']}, overlay {report['backend']['overlay']}{state}")
    footer = (f"total: latency {totals['latency_ms']:.4f} ms, energy {totals['energy_mj']:.4f} mJ, "
              f"power {totals['avg_power_w']:.3f} W (idle {totals['idle_power_w']:.3f} W)")
    return "\n".join([header, *lines, footer])


def run(args: argparse.Namespace) -> int:
    from autoq.host.backends.record import open_backend_recording
    from autoq.host.models.resolve import spec_for

    network = spec_for(args.model, arch=args.arch, input_shape=args.input_shape)
    plan = QuantPlan.load(args.plan) if args.plan else QuantPlan.uniform(network, *args.uniform)
    plan.check(network)
    backend = open_backend_recording(args.backend, args.record)
    try:
        info = backend.describe()
        measurement = backend.measure(network, plan, args.batch)
    finally:
        backend.close()
    report = cost_report(network, plan, measurement, info)
    print(json.dumps(report, indent=1) if args.json else render_table(report))
    return 0
