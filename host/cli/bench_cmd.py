"""``autoq bench overlay --backend URI``: sweep layer shapes x bit-widths on any cost backend and report achieved
binary ops/s against the overlay's peak and how busy each pipeline stage was, as a table (or JSON) and a plot.

Useful binary ops of a layer: ``2 * MACs * wbits * abits`` (an AND and an add per bit pair of every product); the
peak is ``2 * Dm * Dn * Dk`` per cycle at the overlay clock. A stage's utilisation is its busy cycles over the
layer's cycles (the stages overlap, so they need not sum to 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from autoq.common.errors import AutoQError
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.cli._args import output_file

# (name, kind, c_in, c_out, kernel, stride, padding, groups, input hw): ResNet/MobileNet-like layers.
DEFAULT_SHAPES: tuple[tuple[str, str, int, int, int, int, int, int, int], ...] = (
    ("conv3x3_64@56", "conv", 64, 64, 3, 1, 1, 1, 56),
    ("conv3x3_128@28", "conv", 128, 128, 3, 1, 1, 1, 28),
    ("conv3x3_256@14", "conv", 256, 256, 3, 1, 1, 1, 14),
    ("conv3x3_512@7", "conv", 512, 512, 3, 1, 1, 1, 7),
    ("conv1x1_256to512@14", "conv", 256, 512, 1, 1, 0, 1, 14),
    ("dw3x3_128@28", "depthwise", 128, 128, 3, 1, 1, 128, 28),
    ("fc_512to1000", "linear", 512, 1000, 1, 1, 0, 1, 1),
)
DEFAULT_BITS = "1/1,2/2,4/4,8/8,2/8,8/2"
STAGE_NAMES = ("fetch", "execute", "result")


class BenchError(AutoQError, ValueError):
    """Bad sweep arguments."""


@dataclass(frozen=True)
class BenchRow:
    layer: str
    kind: str
    gemm: tuple[int, int, int, int]
    wbits: int
    abits: int
    latency_s: float
    binary_ops: int
    achieved_ops_per_s: float
    peak_fraction: float
    utilisation: dict[str, float]
    bound: str


def bench_layers(shapes: Sequence[tuple] = DEFAULT_SHAPES) -> list[LayerSpec]:
    from autoq.overlay.engine import conv_output_size

    layers = []
    for name, kind, c_in, c_out, kernel, stride, padding, groups, hw in shapes:
        out = conv_output_size(hw, kernel, stride, padding)
        layers.append(LayerSpec(name, kind, c_in, c_out, kernel, stride, padding, groups, (hw, hw), (out, out)))
    return layers


def parse_bits(text: str) -> list[tuple[int, int]]:
    """``"1/1,4/8"`` -> [(1, 1), (4, 8)]."""
    pairs = []
    for item in text.split(","):
        try:
            w, a = (int(v) for v in item.split("/"))
        except ValueError:
            raise BenchError(f"--bits wants W/A pairs separated by commas (e.g. {DEFAULT_BITS}), got {item!r}") from None
        pairs.append((w, a))
    return pairs


def overlay_sweep(backend: Any, layers: Sequence[LayerSpec], bits: Sequence[tuple[int, int]], batch: int = 1) -> list[BenchRow]:
    """Measure every layer alone at every uniform (wbits, abits) on ``backend``."""
    peak = backend.describe().overlay.peak_binary_ops_per_s
    rows = []
    for layer in layers:
        network = NetworkSpec(layer.name, (layer,), (layer.c_in, *layer.in_hw))
        for wbits, abits in bits:
            measured = backend.measure(network, QuantPlan.uniform(network, wbits, abits), batch)
            cost = measured.layers[0]
            ops = 2 * layer.macs(batch) * wbits * abits
            total = cost.cycles.get("total") or max(1, sum(cost.cycles.get(s, 0) for s in STAGE_NAMES))
            achieved = ops / measured.latency_s
            rows.append(BenchRow(
                layer.name, layer.kind, (*layer.gemm(batch),), wbits, abits, measured.latency_s, ops, achieved,
                achieved / peak, {s: cost.cycles.get(s, 0) / total for s in STAGE_NAMES}, cost.bound,
            ))
    return rows


def render_table(rows: Sequence[BenchRow], peak: float) -> str:
    header = f"{'layer':22} {'W/A':>5} {'latency us':>11} {'GOPS':>9} {'% peak':>7} {'fetch':>6} {'exec':>6} {'result':>6}  bound"
    lines = [f"peak {peak / 1e9:.1f} binary GOPS", header, "-" * len(header)]
    for r in rows:
        u = r.utilisation
        lines.append(
            f"{r.layer:22} {r.wbits:>2}/{r.abits:<2} {r.latency_s * 1e6:>11.1f} {r.achieved_ops_per_s / 1e9:>9.1f} "
            f"{100 * r.peak_fraction:>6.1f}% {100 * u['fetch']:>5.0f}% {100 * u['execute']:>5.0f}% {100 * u['result']:>5.0f}%  {r.bound}"
        )
    return "\n".join(lines)


def plot(rows: Sequence[BenchRow], title: str, path: str) -> None:
    """Two panels: % of peak per layer and bit-width; stage utilisation per measurement. Written crash-safe."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoq.common.fileio import atomic_write_bytes

    layers = list(dict.fromkeys(r.layer for r in rows))
    bits = list(dict.fromkeys((r.wbits, r.abits) for r in rows))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.25), 8))
    width = 0.8 / len(bits)
    for j, (w, a) in enumerate(bits):
        values = [next((100 * r.peak_fraction for r in rows if r.layer == l and (r.wbits, r.abits) == (w, a)), 0) for l in layers]
        top.bar([i + j * width for i in range(len(layers))], values, width, label=f"{w}/{a}")
    top.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], layers, rotation=20, fontsize=7)
    top.set_ylabel("% of peak binary ops/s")
    top.legend(title="W/A bits", fontsize=7)
    top.set_title(title)
    x = range(len(rows))
    for offset, stage in enumerate(STAGE_NAMES):
        bottom.bar([i + (offset - 1) * 0.27 for i in x], [100 * r.utilisation[stage] for r in rows], 0.27, label=stage)
    bottom.set_xticks(list(x), [f"{r.layer.split('_')[0]} {r.wbits}/{r.abits}" for r in rows], rotation=90, fontsize=6)
    bottom.set_ylabel("stage busy, % of layer cycles")
    bottom.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmark the overlay on a cost backend")
    commands = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    overlay = commands.add_parser("overlay", help="layer shapes x bit-widths: achieved binary ops/s vs peak, stage utilisation")
    overlay.add_argument("--backend", default="model", metavar="URI", help="cost backend (model, emulated, tcp://..., serial://...)")
    overlay.add_argument("--bits", default=DEFAULT_BITS, metavar="W/A,...", help=f"bit-width pairs (default {DEFAULT_BITS})")
    overlay.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    overlay.add_argument("--json", action="store_true", help="print JSON instead of a table")
    overlay.add_argument("--plot", type=output_file, metavar="FILE.png", help="also write a plot")
    overlay.add_argument("--record", type=output_file, metavar="FILE", help="append every measurement to this SQLite trace")
    overlay.set_defaults(handler=overlay_handler)


def overlay_handler(args: argparse.Namespace) -> int:
    from autoq.host.backends.record import open_backend_recording

    bits = parse_bits(args.bits)
    if args.batch < 1:
        raise BenchError(f"--batch must be >= 1, got {args.batch}")
    backend = open_backend_recording(args.backend, args.record)
    try:
        info = backend.describe()
        rows = overlay_sweep(backend, bench_layers(), bits, args.batch)
    finally:
        backend.close()
    overlay = info.overlay
    if args.json:
        json.dump({"backend": info.uri, "source": info.source, "overlay": overlay.to_dict(),
                   "peak_binary_ops_per_s": overlay.peak_binary_ops_per_s, "rows": [asdict(r) for r in rows]},
                  sys.stdout, indent=1)
        print()
    else:
        print(f"overlay {overlay.name} ({overlay.dm}x{overlay.dn}x{overlay.dk} at {overlay.clock_mhz:g} MHz) on {info.uri} [{info.source}]")
        print(render_table(rows, overlay.peak_binary_ops_per_s))
    if args.plot:
        plot(rows, f"{overlay.name} on {info.uri} ({info.source})", args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0
