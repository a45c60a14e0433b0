"""How much of a network's overlay latency depends on its weight bits: per layer, the share of the latency at W/A
that narrowing every kernel to LOW bits removes, ``(L(W/A) - L(LOW/A)) / L(W/A)``, and the same for the network
(the layers' differences over their total). A layer bound by per-layer overheads, result write-back or activation
traffic scores near 0; a purely execute- or weight-fetch-bound one ``1 - LOW/W`` (75% at 4/4 against 1 bit).

    python -m autoq.host.tasks.costshare [MODEL] [--uniform 4/4] [--low 1] [--backend model] [--batch 1]
"""
from __future__ import annotations

import argparse
from typing import NamedTuple, Sequence

from autoq.common.backend import DEFAULT_BACKEND, CostBackend
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan


class LayerShare(NamedTuple):
    name: str
    latency_s: float  # at W/A
    low_latency_s: float  # at LOW/A
    bound: str  # slowest stage at W/A
    low_bound: str

    @property
    def share(self) -> float:
        return (self.latency_s - self.low_latency_s) / self.latency_s


class ShareReport(NamedTuple):
    wbits: int
    abits: int
    low_bits: int
    layers: tuple[LayerShare, ...]

    @property
    def latency_s(self) -> float:
        return sum(layer.latency_s for layer in self.layers)

    @property
    def share(self) -> float:
        """The network's weight-bit-dependent share of its latency at W/A."""
        return (self.latency_s - sum(layer.low_latency_s for layer in self.layers)) / self.latency_s


def weight_bit_shares(network: NetworkSpec, backend: CostBackend, wbits: int = 4, abits: int = 4, low_bits: int = 1,
                      batch: int = 1) -> ShareReport:
    """Each layer's latency at uniform W/A and at LOW/A on ``backend``, and so its weight-bit-dependent share."""
    high = backend.measure(network, QuantPlan.uniform(network, wbits, abits), batch)
    low = backend.measure(network, QuantPlan.uniform(network, low_bits, abits), batch)
    layers = tuple(LayerShare(h.name, h.latency_s, l.latency_s, h.bound, l.bound) for h, l in zip(high.layers, low.layers))
    return ShareReport(wbits, abits, low_bits, layers)


def render(network: NetworkSpec, report: ShareReport) -> str:
    w, a, low = report.wbits, report.abits, report.low_bits
    header = ("layer", "kind", "c_in", "c_out", "K", "MMACs", f"{w}/{a} ms", "bound", f"{low}/{a} ms", "bound", "share")
    rows = [header]
    for spec, layer in zip(network.layers, report.layers):
        rows.append((layer.name, spec.kind, str(spec.c_in), str(spec.c_out), str(spec.kernel_size),
                     f"{spec.macs() / 1e6:.2f}", f"{layer.latency_s * 1e3:.4f}", layer.bound,
                     f"{layer.low_latency_s * 1e3:.4f}", layer.low_bound, f"{layer.share:.1%}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i in (0, 1, 7, 9) else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    total_macs = sum(spec.macs() for spec in network.layers) / 1e6
    lines.append(f"{network.name}: {total_macs:.1f} M MACs, latency {report.latency_s * 1e3:.4f} ms at {w}/{a}; "
                 f"{report.share:.1%} of it depends on weight bits (removed at {low}/{a})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from autoq.common.backend import open_backend
    from autoq.host.cli.cost_cmd import parse_uniform
    from autoq.host.cli.inspect_cmd import positive_int
    from autoq.host.models.resolve import spec_for

    parser = argparse.ArgumentParser(prog="python -m autoq.host.tasks.costshare", description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="MODEL", nargs="?", default="fashion", help="model reference (default fashion)")
    parser.add_argument("--uniform", type=parse_uniform, default=(4, 4), metavar="W/A", help="bits to score (default 4/4)")
    parser.add_argument("--low", type=positive_int, default=1, metavar="B", help="narrowest weight bits to compare with (default 1)")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, metavar="URI", help=f"cost backend (default {DEFAULT_BACKEND})")
    parser.add_argument("--batch", type=positive_int, default=1)
    args = parser.parse_args(argv)
    network = spec_for(args.model)
    backend = open_backend(args.backend)
    try:
        wbits, abits = args.uniform
        report = weight_bit_shares(network, backend, wbits, abits, low_bits=args.low, batch=args.batch)
    finally:
        backend.close()
    print(render(network, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
