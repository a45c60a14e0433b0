"""``autoq search``: search kernel-wise quantization plans (AutoQ's hierarchical DDPG, or a baseline) and write a
results folder (best plans, Pareto fronts, bit-width heatmap, summary.md), checkpointing after every episode;
then fine-tune the best plan and export it to final/ (plan.json, model.onnx, final.json; hls4ml/ with --hls4ml).

With no arguments: the bundled Fashion-MNIST task (``DEFAULT_TASK``; ``--model digits`` is the quick task), the
analytic ``model`` cost backend, the AutoQ agent, a latency budget of 0.4x the uniform 8-bit plan, results in
runs/search; ``TASK_EPISODES`` episodes for a bundled task (fashion: 100, as scoring a plan there takes seconds;
1000 otherwise). Every episode is scored on a seeded 2,000-image subset of the validation split; the best few
plans are scored again on all of it, which selects the plan, and the selected plan is reported on the test split.

Budgets: ``--latency-budget 3ms`` / ``250us`` / ``0.5x`` (fraction of the uniform 8-bit plan), ``--energy-budget
40mJ`` / ``0.5x``; or ``--accuracy-guaranteed`` with reward psi_acc*acc - psi_l*lat/lat_8bit - psi_e*E/E_8bit.
``--resume`` continues the search in --out exactly where its last checkpoint left it; ``--resume --episodes N``
with N above the stored budget extends it (finished or not) to N episodes (AutoQ and HAQ then follow the N-episode
exploration schedule from there, which summary.md notes). A damaged checkpoint or history is refused, naming the
file. A fresh search that fails before its first checkpoint removes the folder, history and trace it created.
"""
from __future__ import annotations

import argparse

from autoq.host.cli._args import add_task_arguments, non_negative_float, non_negative_int, output_dir, output_file
from autoq.host.cli.inspect_cmd import positive_int

#: the task a fresh ``autoq search`` runs when no --model is given (a resumed one keeps its stored task)
DEFAULT_TASK = "fashion"
#: default episodes of a fresh search of a bundled task (others: ``runner.DEFAULT_EPISODES``): the default search
#: stays within 10 minutes on 2 cores, final fine-tune included
TASK_EPISODES = {"fashion": 100, "digits": 1000}


def register(subparsers: argparse._SubParsersAction) -> None:
    from autoq.common.backend import DEFAULT_BACKEND
    from autoq.host.search.agents.base import AGENTS
    from autoq.host.export.finalize import DEFAULT_FINAL_FINETUNE_STEPS

    parser = subparsers.add_parser("search", help="search kernel-wise quantization plans (AutoQ, HAQ, baselines)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults are None so that --resume can tell the options given from those left out (see resolve_config).
    parser.add_argument("--agent", choices=tuple(AGENTS), help="search agent (default autoq)")
    add_task_arguments(parser, model_default=None, shown_default=DEFAULT_TASK)
    parser.add_argument("--backend", metavar="URI", help=f"cost backend (default {DEFAULT_BACKEND}): model[:calib.json], "
                        "emulated, tcp://host:port, serial:///dev/X, replay:trace.sqlite, pool:URI,URI,... (several boards at once)")
    parser.add_argument("--episodes", type=positive_int, metavar="N",
                        help="episodes (default " + ", ".join(f"{n} on {t}" for t, n in TASK_EPISODES.items())
                        + ", else 1000)")
    parser.add_argument("--seed", type=non_negative_int, metavar="S", help="seed of every generator (default 0)")
    parser.add_argument("--out", default="runs/search", type=output_dir, metavar="DIR", help="results and checkpoint folder (default runs/search)")
    parser.add_argument("--record", type=output_file, metavar="FILE", help="append every measurement to this SQLite trace")
    parser.add_argument("--resume", action="store_true", help="continue the search checkpointed in --out")
    parser.add_argument("--batch", type=positive_int, metavar="K",
                        help="plans the agent proposes with one policy, scored at once, before it learns from them "
                             "(default: one per board of the backend, e.g. a pool:URI,URI,... backend's members; else 1)")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="score on Ray: a pool's boards as Ray actors (pool:ray:RESOURCE: the boards the cluster offers "
                             "as that resource), accuracy on Ray workers; ADDRESS: the cluster to join (default: the one "
                             "ray start runs here, else a new local instance). Needs the [ray] extra")
    reward = parser.add_mutually_exclusive_group()
    reward.add_argument("--latency-budget", metavar="X", help="latency budget: 3ms, 250us, or 0.4x of the 8-bit plan (default 0.4x)")
    reward.add_argument("--energy-budget", metavar="X", help="energy budget: 40mJ, 0.1J, or 0.5x of the 8-bit plan")
    reward.add_argument("--accuracy-guaranteed", action="store_true", help="no budget: reward accuracy against normalised cost")
    parser.add_argument("--psi-acc", type=non_negative_float, help="accuracy weight (with --accuracy-guaranteed; default 2)")
    parser.add_argument("--psi-latency", type=non_negative_float, help="latency weight (with --accuracy-guaranteed; default 0.5)")
    parser.add_argument("--psi-energy", type=non_negative_float, help="energy weight (with --accuracy-guaranteed; default 0.5)")
    parser.add_argument("--finetune-steps", type=non_negative_int, metavar="N", help="SGD steps before each accuracy (default 0)")
    parser.add_argument("--min-bits", type=positive_int, metavar="B", help="narrowest bit-width the search may pick (default 2)")
    parser.add_argument("--final-finetune-steps", type=non_negative_int, metavar="N",
                        help=f"SGD steps of fine-tuning the best plan before exporting it to final/ (default {DEFAULT_FINAL_FINETUNE_STEPS})")
    parser.add_argument("--hls4ml", action="store_true", help="also export the best plan as an hls4ml project (final/hls4ml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def reward_setting(args: argparse.Namespace):
    """The reward setting the options ask for, or None when they name none."""
    from autoq.host.search.rewards import BudgetSpec, RewardSetting, SearchError

    weights = {k: v for k, v in (("psi_acc", args.psi_acc), ("psi_latency", args.psi_latency), ("psi_energy", args.psi_energy)) if v is not None}
    if weights and not args.accuracy_guaranteed:
        raise SearchError("--psi-acc/--psi-latency/--psi-energy weigh the accuracy-guaranteed reward: add --accuracy-guaranteed")
    if args.latency_budget is not None:
        return RewardSetting.resource_constrained(BudgetSpec.parse("latency", args.latency_budget))
    if args.energy_budget is not None:
        return RewardSetting.resource_constrained(BudgetSpec.parse("energy", args.energy_budget))
    if args.accuracy_guaranteed:
        return RewardSetting.accuracy_guaranteed(**weights)
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from autoq.host.export.finalize import FINAL_DIR
    from autoq.host.search.parallel import RayOptions
    from autoq.host.search.runner import resolve_config, run_search

    model = args.model if args.model is not None or args.resume else DEFAULT_TASK
    episodes = args.episodes if args.episodes is not None or args.resume else TASK_EPISODES.get(model)
    given = {
        "agent": args.agent, "model": model, "arch": args.arch, "data": args.data, "backend": args.backend,
        "episodes": episodes, "seed": args.seed, "reward": reward_setting(args),
        "finetune_steps": args.finetune_steps, "final_finetune_steps": args.final_finetune_steps, "min_bits": args.min_bits,
        "batch": args.batch,
    }
    config = resolve_config(args.out, {k: v for k, v in given.items() if v is not None}, args.resume)
    torch.set_num_threads(1)  # small MLPs on a shared 2-core machine: threads only contend (and results stay bit-exact)
    result = run_search(config, args.out, resume=args.resume, record=args.record, progress=not args.no_progress,
                        hls4ml=args.hls4ml, given_episodes=args.episodes,
                        ray=None if args.ray is None else RayOptions(args.ray or None))
    best, final, n = result.best, result.final, result.split_images
    print(f"{config.agent}: {len(result.records)} episodes; best plan (episode {best.episode}): accuracy {best.accuracy:.4f} "
          f"on {n['val_subset']:,} val images (scored every episode), {result.selection.val.accuracy:.4f} on val "
          f"({n['val']:,}, selected it), {result.best_test_accuracy:.4f} on test ({n['test']:,}), "
          f"latency {best.measurement.latency_s * 1e3:.4g} ms, energy {best.measurement.energy_j * 1e3:.4g} mJ")
    print(f"final plan: {final.accuracy_split} accuracy {final.accuracy_before:.4f}, {final.accuracy_after:.4f} after "
          f"{final.finetune_steps} fine-tune steps; exported the {final.exported} model "
          f"({final.exported_accuracy:.4f}) to {result.files['summary'].parent / FINAL_DIR}")
    print(f"results: {result.files['summary'].parent}")
    return 0
