"""``autoq hls``: the overlay's hardware. ``sim`` runs the RTL engine's Verilator simulation against the reference
engine and the schedule model, ``synth`` its Yosys synthesis, ``rehash`` recomputes an edited manifest's build hash
(and its calibration's).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from autoq.host.cli._hls_synth import add_manifest_options, overrides, register_synth

SIM_OVERLAY = "rtl_small"
"""``autoq hls sim``'s default: a 2x2x64 array whose Verilator build takes about a minute (see README)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hls", help="the overlay's hardware: RTL simulation, synthesis, manifest build hash")
    commands = parser.add_subparsers(dest="hls_command", required=True, metavar="HLS_COMMAND")

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

    rehash = commands.add_parser("rehash", help="recompute a manifest's build hash after an edit, and its default "
                                                "calibration's overlay_build_hash")
    add_manifest_options(rehash)
    rehash.set_defaults(handler=rehash_handler)


def sim_handler(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from autoq.common.errors import AutoQError
    from autoq.hls.rtlsim.board import describe_memory
    from autoq.hls.rtlsim.check import check_layer, open_engine, random_case, schedule_params
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


def rehash_handler(args: argparse.Namespace) -> int:
    from autoq.overlay.calibration_params import rehash_build
    from autoq.overlay.manifest import bitstreams_dir

    path = Path(args.overlay)
    folder = path.parent if path.suffix == ".json" else path if path.is_dir() else bitstreams_dir() / args.overlay
    done = rehash_build(folder, **overrides(args.set))
    print(f"{folder / 'manifest.json'}: build_hash {done.old_hash} -> {done.overlay.build_hash}")
    if done.calibration is not None:
        print(f"{folder / 'calibration.json'}: overlay_build_hash -> {done.overlay.build_hash} "
              f"(calibration {done.calibration.id!r}, parameters kept)")
    return 0
