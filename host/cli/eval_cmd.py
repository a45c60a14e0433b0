"""``autoq eval [MODEL] [--data PATH] (--plan PLAN.json | --uniform W/A) [--finetune N] [--json]``: accuracy of a model
quantized with a plan, next to its float accuracy, on the held-out test split (the search selects plans on the
separate val split).

MODEL defaults to the bundled ``digits`` task; a ``.pt`` state dict needs ``--arch`` (torchvision state dicts fit the
built-in architectures of the same name); an ``.onnx`` model is quantized and run in onnxruntime (no fine-tuning).
``--data`` takes an ImageFolder-style directory (DIR/<class>/<image>) or an ``.npz`` with arrays ``x`` (N, C, H, W)
float32 or uint8 and ``y`` (N,) integer labels (split into train/calib/val/test with a fixed seed); without it the
digits data is used, which only digits-sized models take. BatchNorm is folded into the convs and activations are
calibrated on the calib split. A built-in model named without weights has random weights: its accuracy comes with
a warning on stderr and ``"trained_weights": false``.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

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
    from autoq.host.evaluate import Evaluator, EvaluatorConfig, UntrainedWeightsWarning, untrained_message
    from autoq.host.quant.quantizer import QuantizerConfig
    from autoq.host.tasks import load_task

    task = load_task(args.model, args.data, args.arch)
    plan = QuantPlan.load(args.plan) if args.plan else QuantPlan.uniform(task.network, *args.uniform)
    plan.check(task.network)
    if not task.trained:  # said here once, as a CLI message, instead of as a Python warning
        print(f"autoq eval: warning: {untrained_message(task.name)}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
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
        "trained_weights": task.trained,
        "finetune_steps": args.finetune,
        "average_weight_bits": effective.average_weight_bits(task.network),
        "average_act_bits": effective.average_act_bits(),
        "float_accuracy": evaluator.full_precision_accuracy(split="test"),
        "quantized_accuracy": evaluator.accuracy(plan, finetune_steps=args.finetune, split="test"),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        if not task.trained:
            print("UNTRAINED MODEL (random weights): the accuracies below mean nothing")
        print(f"task {report['task']} ({len(task.network)} layers), {report['test_samples']} samples of the test split")
        print(f"float accuracy      {report['float_accuracy']:.2%}")
        print(f"quantized accuracy  {report['quantized_accuracy']:.2%}  (plan {plan.hash}, "
              f"avg weight bits {report['average_weight_bits']:.2f}, avg act bits {report['average_act_bits']:.2f}, "
              f"fine-tune {args.finetune} steps)")
    return 0
