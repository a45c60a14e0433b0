"""Acceptance benchmark of the search: on one task (``--task``, default the bundled one) with the analytic ``model``
cost backend, for each seed and latency budget, every agent runs the same number of episodes; the plan each selects
on the validation split (the highest reward after its warm-up, as ``autoq search`` selects) is scored on the test
split. Not a test: prints tables (and writes ``--json PATH``).

Per agent: test accuracy of the selected plan (mean +- std over seeds and budgets), its latency relative to the
uniform 8-bit plan, the fraction of its layers that run more than one tile width, and how often the agent's own
proposal met the budget. Then latency at matched accuracy: the lowest latency autoq reached among plans at least as
accurate (validation) as the other agent's selected plan, as a ratio to that plan's latency (autoq vs haq, autoq vs
the layer-wise oracle).

    python tests/benchmarks/bench_agents.py [--task digits] [--seeds 0 1 2] [--budgets 0.3x 0.4x 0.5x]
        [--episodes 200] [--agents autoq haq random uniform oracle oracle-layer] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from autoq.common.backend import open_backend
from autoq.host.evaluate import Evaluator
from autoq.host.results import selected_record, tile_widths
from autoq.host.search.agents.base import make_agent
from autoq.host.search.checkpoint import seed_everything
from autoq.host.search.env import QuantEnv
from autoq.host.search.rewards import BudgetSpec, RewardSetting
from autoq.host.search.sensitivity import task_sensitivity
from autoq.host.tasks import load_task

AGENTS = ("autoq", "haq", "random", "uniform", "oracle", "oracle-layer")


class Task:
    """The task, its evaluator (one accuracy memo for all agents: scores are deterministic) and its sensitivity."""

    def __init__(self, name: str) -> None:
        self.task = load_task(name)
        self.evaluator = Evaluator.for_task(self.task)
        self.scales = self.evaluator.kernel_scales()
        self.sensitivity = task_sensitivity(self.evaluator)


def run_agent(t: Task, name: str, setting: RewardSetting, episodes: int, seed: int) -> dict:
    seed_everything(seed)
    env = QuantEnv(t.task.network, t.evaluator, open_backend("model"), setting, kernel_scales=t.scales,
                   sensitivity=t.sensitivity)
    agent = make_agent(name, episodes, len(t.task.network), seed)
    outcomes, start = [], time.perf_counter()
    for episode in range(episodes):
        if agent.finished():
            break
        outcomes.append(agent.run_episode(env, episode).placed(episode, name))
    wall = time.perf_counter() - start
    selected = selected_record(outcomes, agent.warmup_episodes)
    widths = [tile_widths(lp.weight_bits, env.tile_rows) for lp in selected.plan.layers]
    return {
        "agent": name, "seed": seed, "episodes": len(outcomes), "selected_episode": selected.episode,
        "val_accuracy": selected.accuracy, "test_accuracy": t.evaluator.accuracy(selected.plan, split="test"),
        "latency_s": selected.cost.latency_s, "latency_ratio": selected.cost.latency_s / env.objective.reference.latency_s,
        "energy_j": selected.cost.energy_j, "mixed_layers": sum(w > 1 for w in widths) / len(widths),
        "proposals_met_budget": float(np.mean([o.proposal_fits for o in outcomes])),
        "s_per_episode": wall / len(outcomes),
        "front": [(o.accuracy, o.cost.latency_s) for o in outcomes if o.episode >= agent.warmup_episodes] or
                 [(o.accuracy, o.cost.latency_s) for o in outcomes],
    }


def latency_at_matched_accuracy(mine: dict, other: dict) -> float | None:
    """Lowest latency among ``mine``'s plans at least as accurate (val) as ``other``'s selected plan, relative to it."""
    eligible = [lat for acc, lat in mine["front"] if acc >= other["val_accuracy"]]
    return min(eligible) / other["latency_s"] if eligible else None


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} +- {np.std(values):.4f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits", help="model/task name as for autoq search --model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=["0.3x", "0.4x", "0.5x"])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS))
    parser.add_argument("--json", metavar="PATH", help="write every run's figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = Task(args.task)
    runs: list[dict] = []
    for budget in args.budgets:
        setting = RewardSetting.resource_constrained(BudgetSpec.parse("latency", budget))
        for seed in args.seeds:
            for name in args.agents:
                result = run_agent(t, name, setting, args.episodes, seed)
                result["budget"] = budget
                runs.append(result)
                print(f"budget {budget} seed {seed} {name}: test {result['test_accuracy']:.4f} (val {result['val_accuracy']:.4f}, "
                      f"episode {result['selected_episode']}), latency {result['latency_ratio']:.3f}x, mixed layers "
                      f"{result['mixed_layers']:.2f}, proposals within budget {result['proposals_met_budget']:.2f}, "
                      f"{result['s_per_episode']:.2f} s/episode", flush=True)
    print(f"\n## {args.task}: {args.episodes} episodes per agent, seeds {args.seeds}, latency budgets {args.budgets}\n")
    print("| agent | test accuracy (mean +- std) | val accuracy | latency / 8-bit | mixed-width layers | proposals within budget |")
    print("|---|---|---|---|---|---|")
    table = {}
    for name in args.agents:
        mine = [r for r in runs if r["agent"] == name]
        table[name] = {k: [r[k] for r in mine] for k in ("test_accuracy", "val_accuracy", "latency_ratio", "mixed_layers", "proposals_met_budget")}
        row = table[name]
        print(f"| {name} | {mean_std(row['test_accuracy'])} | {mean_std(row['val_accuracy'])} | {np.mean(row['latency_ratio']):.3f} | "
              f"{np.mean(row['mixed_layers']):.2f} | {np.mean(row['proposals_met_budget']):.2f} |")
    matched = {}
    if "autoq" in args.agents:
        print("\nLatency at matched accuracy (autoq's lowest latency at >= the other's selected val accuracy, / its latency):\n")
        for other in ("haq", "oracle-layer"):
            if other not in args.agents:
                continue
            ratios = []
            for budget in args.budgets:
                for seed in args.seeds:
                    a = next(r for r in runs if r["agent"] == "autoq" and r["budget"] == budget and r["seed"] == seed)
                    b = next(r for r in runs if r["agent"] == other and r["budget"] == budget and r["seed"] == seed)
                    ratios.append(latency_at_matched_accuracy(a, b))
            reached = [r for r in ratios if r is not None]
            matched[other] = ratios
            print(f"- autoq vs {other}: " + (f"{np.mean(reached):.3f} ({(np.mean(reached) - 1) * 100:+.1f}%)" if reached else "never matched")
                  + f", matched in {len(reached)} of {len(ratios)} runs")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"task": args.task, "episodes": args.episodes, "seeds": args.seeds, "budgets": args.budgets,
                       "runs": [{k: v for k, v in r.items() if k != "front"} for r in runs], "summary": table,
                       "latency_at_matched_accuracy": matched}, fh, indent=1)


if __name__ == "__main__":
    main()
