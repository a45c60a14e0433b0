"""``autoq inspect MODEL``: the layers of a network (as the cost backends see them) and their MACs and weights."""
from __future__ import annotations

import argparse
import json
from typing import Any

from autoq.common.network import LayerSpec, NetworkSpec

TABLE_COLUMNS = ("name", "kind", "c_in", "c_out", "kernel", "stride", "groups", "in", "out", "MACs", "weights")


def parse_input_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 3,224,224), got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="list a model's conv/linear layers with their MACs and weights",
                                   description=__doc__)
    parser.add_argument("model", metavar="MODEL",
                        help="built-in name (resnet18, mobilenet_v2, ...), 'digits', or a path to .onnx / .pt / .pth")
    parser.add_argument("--arch", help="architecture of a .pt/.pth state dict: built-in name or package.module:callable")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size the MACs are counted for (default 1)")
    parser.add_argument("--input-shape", type=parse_input_shape, metavar="C,H,W",
                        help="input size instead of the model's default (not for .onnx)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    parser.set_defaults(handler=run)


def _hw(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _scaled(value: int) -> str:
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3f} {unit}"
    return str(value)


def summary(spec: NetworkSpec, batch: int) -> dict[str, Any]:
    """The machine-readable inspection of ``spec`` at ``batch`` (what ``--json`` prints)."""
    counts = {kind: sum(layer.kind == kind for layer in spec) for kind in ("conv", "depthwise", "linear")}
    return {
        "network": spec.name,
        "hash": spec.hash,
        "batch": batch,
        "input_shape": list(spec.input_shape),
        "layers": [{**layer.to_dict(), "macs": layer.macs(batch), "weights": layer.weights} for layer in spec],
        "totals": {"layers": len(spec), **counts, "macs": spec.total_macs(batch), "weights": spec.total_weights},
    }


def _row(layer: LayerSpec, batch: int) -> tuple[str, ...]:
    return (layer.name, layer.kind, str(layer.c_in), str(layer.c_out), _hw(layer.kernel), _hw(layer.stride),
            str(layer.groups), _hw(layer.in_hw), _hw(layer.out_hw), f"{layer.macs(batch):,}", f"{layer.weights:,}")


def render_table(spec: NetworkSpec, batch: int) -> str:
    rows = [TABLE_COLUMNS, *(_row(layer, batch) for layer in spec)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    numeric = set(range(2, len(TABLE_COLUMNS))) - {4, 5}

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

    totals = summary(spec, batch)["totals"]
    kinds = ", ".join(f"{totals[k]} {k}" for k in ("conv", "depthwise", "linear") if totals[k])
    return "\n".join([
        f"network {spec.name}  input {'x'.join(map(str, spec.input_shape))} (CxHxW)  hash {spec.hash}",
        line(rows[0]),
        *(line(row) for row in rows[1:]),
        f"total: {len(spec)} layers ({kinds}), {_scaled(totals['macs'])}MACs at batch {batch}, "
        f"{_scaled(totals['weights'])} weights",
    ])


def run(args: argparse.Namespace) -> int:
    from autoq.host.models.resolve import spec_for  # torch: imported only when the command runs

    spec = spec_for(args.model, arch=args.arch, input_shape=args.input_shape)
    print(json.dumps(summary(spec, args.batch), indent=2) if args.json else render_table(spec, args.batch))
    return 0
