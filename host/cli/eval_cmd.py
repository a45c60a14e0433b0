"""``autoq eval [MODEL] [--data PATH] (--plan PLAN.json | --uniform W/A) [--finetune N] [--json]``: accuracy of a model
quantized with a plan, next to its float accuracy, on the held-out test split (the search selects plans on the
separate val split).

MODEL defaults to the bundled ``digits`` task; a ``.pt`` state dict needs ``--arch``. ``--data`` takes an
ImageFolder-style directory or an ``.npz`` with arrays ``x`` and ``y`` (split into train/calib/val/test with a fixed
seed); without it the digits data is used. Activations are calibrated on the calib split.
"""
from __future__ import annotations

import argparse
import json

from autoq.host.cli._args import add_task_arguments, non_negative_int
from autoq.host.cli.cost_cmd import parse_uniform
from autoq.host.cli.inspect_cmd import positive_int
from autoq.host.quant.policy import EDGE_POLICIES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="accuracy of a model quantized with a plan (and its float accuracy)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(parser, positional_model=True)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--plan", metavar="PLAN.json", help="kernel-wise plan (autoq-plan/1 JSON)")
    which.add_argument("--uniform", type=parse_uniform, metavar="W/A", help="every kernel W bits, every activation A bits")
    parser.add_argument("--finetune", type=non_negative_int, default=0, metavar="N",
                        help="fine-tune N SGD steps on the train split before measuring (weights restored afterwards)")
    parser.add_argument("--first-layer", choices=EDGE_POLICIES, default="plan",
                        help="first layer: follow the plan, keep its input at 8 bits (act8), or keep it 8/8 (keep8)")
    parser.add_argument("--last-layer", choices=EDGE_POLICIES, default="plan", help="last layer: as --first-layer")
    parser.add_argument("--batch-size", type=positive_int, default=512, help="evaluation batch size (default 512)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from autoq.common.plan import QuantPlan
    from autoq.host.evaluate import Evaluator, EvaluatorConfig
    from autoq.host.quant.quantizer import QuantizerConfig
    from autoq.host.tasks import load_task

    task = load_task(args.model, args.data, args.arch)
    plan = QuantPlan.load(args.plan) if args.plan else QuantPlan.uniform(task.network, *args.uniform)
    plan.check(task.network)
    evaluator = Evaluator.for_task(
        task, QuantizerConfig(first_layer=args.first_layer, last_layer=args.last_layer),
        EvaluatorConfig(batch_size=args.batch_size),
    )
    effective = evaluator.qmodel.effective_plan(plan)
    report = {
        "task": task.name,
        "network_hash": task.network.hash,
        "plan_hash": plan.hash,
        "split": "test",
        "test_samples": len(task.test),
        "finetune_steps": args.finetune,
        "average_weight_bits": effective.average_weight_bits(task.network),
        "average_act_bits": effective.average_act_bits(),
        "float_accuracy": evaluator.full_precision_accuracy(split="test"),
        "quantized_accuracy": evaluator.accuracy(plan, finetune_steps=args.finetune, split="test"),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"task {report['task']} ({len(task.network)} layers), {report['test_samples']} samples of the test split")
        print(f"float accuracy      {report['float_accuracy']:.2%}")
        print(f"quantized accuracy  {report['quantized_accuracy']:.2%}  (plan {plan.hash}, "
              f"avg weight bits {report['average_weight_bits']:.2f}, avg act bits {report['average_act_bits']:.2f}, "
              f"fine-tune {args.finetune} steps)")
    return 0
