"""``autoq hls``: generate the HLS engine's config files from a manifest; run its g++ C-simulation; run the RTL
engine's Verilator simulation (``sim``).

``autoq hls generate`` writes to ``--out DIR``; by default to ``hls/generated/<overlay>/`` of the checkout it is run
from (the folder holding ``hls/Makefile``, which ``make -C hls`` reads), and it refuses anywhere else rather than
write into the installed package.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from autoq.host.cli._args import output_dir
from autoq.host.cli._hls_synth import register_synth
from autoq.overlay.manifest import DEFAULT_OVERLAY

SIM_OVERLAY = "rtl_small"
"""``autoq hls sim``'s default: a 2x2x64 array whose Verilator build takes about a minute (see README)."""


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

    sim = commands.add_parser("sim", help="run random layers through the Verilator simulation of the RTL engine, "
                                          "compare with the reference engine and the schedule model")
    sim.add_argument("--overlay", default=SIM_OVERLAY,
                     help=f"overlay (register map v2) in bitstreams/ or a manifest path (default {SIM_OVERLAY})")
    sim.add_argument("--layers", type=int, default=12, help="random layers to run (default 12)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--memory", metavar="QUERY", default="",
                     help="HP-port model, e.g. 'read_latency=40&write_latency=30&outstanding=8&bandwidth=8'")
    sim.add_argument("--verilog", metavar="FILE", default=None,
                     help="simulate this Verilog (top bitserial_engine) instead of the one generated from hls/rtl")
    sim.set_defaults(handler=sim_handler)
    register_synth(commands)


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


def sim_handler(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from autoq.common.errors import AutoQError
    from autoq.hls.csim import random_case
    from autoq.hls.rtlsim.board import describe_memory
    from autoq.hls.rtlsim.check import check_layer, open_engine, schedule_params
    from autoq.hls.rtlsim.memory import HPPortModel
    from autoq.overlay.manifest import load_overlay

    if args.layers < 1:
        raise AutoQError(f"--layers must be at least 1, got {args.layers}")
    overlay = load_overlay(args.overlay)
    memory = HPPortModel.from_query(args.memory)
    verilog = Path(args.verilog).read_text() if args.verilog else None
    params = schedule_params(overlay)
    engine = open_engine(overlay, memory, verilog)
    rng = np.random.default_rng(args.seed)
    print(f"RTL simulation of overlay {overlay.name!r} ({overlay.dm}x{overlay.dn}x{overlay.dk}), Verilator build "
          f"{engine.device.build.key}{' of ' + args.verilog if args.verilog else ''}; {describe_memory(memory)}")
    print(f"{'layer':<6} {'kind':<9} {'c_in>c_out/g':<13} {'k/s/p':<7} {'in':>3} {'batch':>5} {'wbits':<7} "
          f"{'abits':>5} {'outputs':>7} {'mismatch':>8} {'rtl cycles':>10} {'model':>9} {'error':>7}  result")
    failures, errors, cycles, started = 0, [], 0, time.perf_counter()
    try:
        for i in range(args.layers):
            case = random_case(rng, f"l{i}")
            check = check_layer(engine, case.layer, case.x_int, case.w_int, case.weight_bits, case.act_bits, params)
            layer = check.layer
            failures += not check.exact
            cycles += check.sim_cycles
            outputs = layer.c_out * check.batch * layer.out_hw[0] * layer.out_hw[1]
            if check.rejected:
                measured, verdict = f"{'-':>8} {'-':>10} {check.model_cycles.total:>9} {'-':>7}", \
                    f"FAIL rejected: {check.rejected}"
            else:
                errors.append(check.model_error)
                measured = (f"{check.mismatches:>8} {check.rtl_cycles[3]:>10} {check.model_cycles.total:>9} "
                            f"{100 * check.model_error:>+6.1f}%")
                verdict = "PASS" if check.exact else "FAIL"
            print(f"{layer.name:<6} {layer.kind:<9} {f'{layer.c_in}>{layer.c_out}/{layer.groups}':<13} "
                  f"{f'{layer.kernel[0]}/{layer.stride[0]}/{layer.padding[0]}':<7} {layer.in_hw[0]:>3} "
                  f"{check.batch:>5} {','.join(map(str, sorted(set(check.weight_bits)))):<7} {check.act_bits:>5} "
                  f"{outputs:>7} {measured}  {verdict}")
    finally:
        engine.close()
    elapsed = time.perf_counter() - started
    model = (f"MAPE {100 * float(np.mean(np.abs(errors))):.1f}%, max {100 * float(np.max(np.abs(errors))):.1f}% "
             f"over {len(errors)} layers" if errors else "no layer ran")
    print(f"{args.layers - failures}/{args.layers} layers bit-exact with the reference engine; schedule model vs RTL "
          f"cycles_total: {model}; simulated {cycles} cycles in {elapsed:.1f} s")
    return 1 if failures else 0
