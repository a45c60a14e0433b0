"""``autoq hls synth``: open synthesis (Yosys ``synth_xilinx -family xc7``) of the RTL engine of an overlay, its
LUT/FF/BRAM36/DSP48E1/CARRY4 against the part's capacity, and the resource model's estimate beside it.

Registered by ``hls_cmd.register`` through ``register_synth(commands)``.
"""
from __future__ import annotations

import argparse
import json

from autoq.overlay.manifest import DEFAULT_OVERLAY


def register_synth(commands: argparse._SubParsersAction) -> None:
    """Add ``synth`` to the ``autoq hls`` actions."""
    synth = commands.add_parser("synth", help="synthesise the RTL engine with Yosys (synth_xilinx -family xc7) and "
                                              "report LUT/FF/BRAM/DSP against the part")
    add_manifest_options(synth)
    synth.add_argument("--verilog", metavar="FILE", default=None,
                       help="synthesise this Verilog (top bitserial_engine) instead of the one generated from hls/rtl")
    synth.add_argument("--no-cache", action="store_true", help="synthesise even if a cached result exists")
    synth.add_argument("--flatten", action="store_true",
                       help="flatten before mapping: one ABC9 run instead of one per module (for full-size arrays; "
                            "no LUTs per block)")
    synth.add_argument("--json", action="store_true", help="print the report as JSON")
    synth.set_defaults(handler=synth_handler)


def add_manifest_options(parser: argparse.ArgumentParser) -> None:
    """``--overlay`` (default the bundled one) and ``--set KEY=VALUE`` manifest overrides (read with ``overrides``)."""
    parser.add_argument("--overlay", default=DEFAULT_OVERLAY,
                        help=f"overlay in bitstreams/, its folder or its manifest (default {DEFAULT_OVERLAY})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a manifest field first, e.g. --set dm=4 (JSON values; repeatable)")


def overrides(items: list[str]) -> dict[str, object]:
    from autoq.common.errors import AutoQError

    changes: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AutoQError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return changes


def synth_handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoq.hls.synth import format_report, synthesize
    from autoq.overlay.manifest import load_overlay
    from autoq.overlay.resources import estimate

    overlay = load_overlay(args.overlay)
    changes = overrides(args.set)
    if changes:
        overlay = overlay.with_changes(**changes)
    verilog_text = Path(args.verilog).read_text() if args.verilog else None
    report = synthesize(overlay, verilog_text=verilog_text, use_cache=not args.no_cache, flatten=args.flatten)
    model = estimate(overlay)
    if args.json:
        data = report.to_dict()
        data["model"] = {"lut": model.lut, "bram36": model.bram36, "dsp": model.dsp, "fits": model.fits}
        print(json.dumps(data, indent=2))
        return 0
    print(f"Yosys synth_xilinx -family xc7 of overlay {overlay.name!r} ({overlay.dm}x{overlay.dn}x{overlay.dk}, "
          f"lhs/rhs {overlay.lhs_mem_words}/{overlay.rhs_mem_words} words) for {overlay.part}: "
          f"{report.seconds:.0f} s{' (cached)' if report.cached else ''}, {report.tool.split(' (')[0]}")
    print(format_report(report))
    print(f"resource model (autoq.overlay.resources, shell allowance included in 'fits'): {model.lut:,} LUTs, "
          f"{model.bram36} BRAM36, {model.dsp} DSP; {'fits' if model.fits else 'does NOT fit'} {overlay.part}")
    return 0
