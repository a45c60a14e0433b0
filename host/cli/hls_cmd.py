"""``autoq hls``: generate the HLS engine's config files from a manifest; run its g++ C-simulation.

``autoq hls generate`` writes to ``--out DIR``; by default to ``hls/generated/<overlay>/`` of the checkout it is run
from (the folder holding ``hls/Makefile``, which ``make -C hls`` reads), and it refuses anywhere else rather than
write into the installed package.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from autoq.host.cli._args import output_dir
from autoq.overlay.manifest import DEFAULT_OVERLAY


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hls", help="HLS engine: generate its config from a manifest, run its C-simulation")
    commands = parser.add_subparsers(dest="hls_command", required=True, metavar="HLS_COMMAND")

    generate = commands.add_parser("generate", help="write hls/generated/<overlay>/ (config header, Tcl settings)")
    generate.add_argument("--overlay", default=DEFAULT_OVERLAY, help="overlay name in bitstreams/ or a manifest path")
    generate.add_argument("--out", "--output", dest="output", type=output_dir, metavar="DIR",
                          help="folder to write to (default: hls/generated/<overlay>/ of the checkout in the current "
                               "folder; required elsewhere)")
    generate.add_argument("--check", action="store_true",
                          help="write nothing; exit 1 if the files differ from a fresh rendering")
    generate.set_defaults(handler=generate_handler)

    csim = commands.add_parser("csim", help="run random layers through the g++ C-sim and compare with the reference engine")
    csim.add_argument("--overlay", default=DEFAULT_OVERLAY, help="overlay name in bitstreams/ or a manifest path")
    csim.add_argument("--layers", type=int, default=12, help="random layers to run (default 12)")
    csim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    csim.set_defaults(handler=csim_handler)


def generate_handler(args: argparse.Namespace) -> int:
    from autoq.hls.codegen import checkout_generated_dir, render_all, write_generated
    from autoq.overlay.manifest import load_overlay

    overlay = load_overlay(args.overlay)
    folder = Path(args.output) if args.output else checkout_generated_dir(overlay.name)
    if args.check:
        stale = [name for name, text in render_all(overlay).items()
                 if not (folder / name).exists() or (folder / name).read_text() != text]
        for name in stale:
            print(f"stale: {folder / name}")
        if not stale:
            print(f"up to date: {folder}")
        return 1 if stale else 0
    for path in write_generated(overlay, folder):
        print(f"wrote {path}")
    return 0


def csim_handler(args: argparse.Namespace) -> int:
    import numpy as np

    from autoq.common.errors import AutoQError
    from autoq.hls import csim
    from autoq.overlay.manifest import load_overlay

    if args.layers < 1:
        raise AutoQError(f"--layers must be at least 1, got {args.layers}")
    overlay = load_overlay(args.overlay)
    build = csim.build(overlay)
    rng = np.random.default_rng(args.seed)
    header = f"{'layer':<8} {'kind':<9} {'c_in>c_out/g':<14} {'k/s/p':<7} {'batch':>5} {'wbits':<9} {'abits':>5} " \
             f"{'outputs':>8} {'mismatch':>8} {'csim cycles':>12} {'model':>12}  result"
    print(f"C-sim of overlay {overlay.name!r} ({overlay.dm}x{overlay.dn}x{overlay.dk}), binary {build.binary}")
    print(header)
    failures = 0
    for i in range(args.layers):
        case = csim.random_case(rng, f"l{i}")
        check = csim.check_layer(build, case.layer, case.x_int, case.w_int, case.weight_bits, case.act_bits)
        layer = check.layer
        bits = sorted(set(check.weight_bits))
        verdict = "pass" if check.passed else ("FAIL outputs" if not check.exact else "FAIL cycles")
        failures += not check.passed
        outputs = layer.c_out * check.batch * layer.out_hw[0] * layer.out_hw[1]
        print(f"{layer.name:<8} {layer.kind:<9} {f'{layer.c_in}>{layer.c_out}/{layer.groups}':<14} "
              f"{f'{layer.kernel[0]}/{layer.stride[0]}/{layer.padding[0]}':<7} {check.batch:>5} "
              f"{','.join(map(str, bits)):<9} {check.act_bits:>5} {outputs:>8} "
              f"{check.mismatches:>8} {check.csim_cycles[3]:>12} {check.model_cycles.total:>12}  {verdict}")
    print(f"{args.layers - failures}/{args.layers} layers bit-exact with the reference engine "
          "and cycle-exact with the schedule model")
    return 1 if failures else 0
