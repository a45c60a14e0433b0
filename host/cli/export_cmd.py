"""``autoq export --plan PLAN.json [--model M] [--onnx OUT.onnx] [--hls4ml DIR] [--finetune-steps N]``:
fine-tune the model under a plan, then export it to ONNX and/or an hls4ml project."""
from __future__ import annotations

import argparse

from autoq.common.errors import AutoQError
from autoq.host.cli._args import add_task_arguments, output_dir, output_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="fine-tune a plan's quantized model and export it (ONNX, hls4ml)", description=__doc__.split(":\n", 1)[1]
    )
    parser.add_argument("--plan", required=True, help="plan JSON (e.g. best_reward.plan.json from a results folder)")
    add_task_arguments(parser)  # the model the plan was searched for, and its data
    parser.add_argument("--onnx", type=output_file, metavar="OUT.onnx", help="write the quantized model as ONNX")
    parser.add_argument("--hls4ml", type=output_dir, metavar="DIR", help="write an hls4ml project (per-layer precision: the widest kernel's bits)")
    parser.add_argument("--csim", type=int, default=0, metavar="N",
                        help="with --hls4ml: build the project's C simulation (g++) and compare it with torch on N test images")
    parser.add_argument("--finetune-steps", type=int, default=0, metavar="N", help="SGD steps of fine-tuning before export (default 0)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not (args.onnx or args.hls4ml):
        raise AutoQError("nothing to export: give --onnx OUT.onnx and/or --hls4ml DIR")
    if args.csim and not args.hls4ml:
        raise AutoQError("--csim checks the hls4ml project: give --hls4ml DIR too")
    if args.csim < 0:
        raise AutoQError(f"--csim must be >= 0, got {args.csim}")
    if args.finetune_steps < 0:
        raise AutoQError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    from autoq.common.plan import QuantPlan
    from autoq.host.evaluate import Evaluator
    from autoq.host.export.finalize import export_final
    from autoq.host.tasks import load_task

    plan = QuantPlan.load(args.plan)
    task = load_task(args.model, args.data, args.arch)
    plan.check(task.network)
    evaluator = Evaluator.for_task(task)
    result = export_final(evaluator, plan, args.finetune_steps, args.onnx, args.hls4ml)
    print(f"plan {plan.hash} on {task.name}: test accuracy {result.accuracy_before:.4f}"
          + (f" -> {result.accuracy_after:.4f} after {args.finetune_steps} fine-tune steps; exported the "
             f"{result.report().exported} model" if args.finetune_steps else ""))
    if result.onnx:
        print(f"ONNX: {result.onnx}")
    if result.hls4ml:
        print(f"hls4ml project: {result.hls4ml.output_dir} (synthesis needs Vivado HLS)")
    if args.csim:
        from autoq.host.export.hls4ml_export import check_csim
        from autoq.host.quant.quantizer import QuantizedModel

        hls, qmodel = result.hls4ml, evaluator.qmodel
        assert hls is not None and isinstance(qmodel, QuantizedModel)  # --csim implies --hls4ml, which needs a torch model
        print(check_csim(hls, qmodel, task.test.x[: args.csim]).describe())
    return 0
