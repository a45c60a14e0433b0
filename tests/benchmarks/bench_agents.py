"""AutoQ against HAQ, random search and uniform at equal episode budgets on the bundled digits task with the
analytic ``model`` cost backend (the default search setup). Not a test: prints tables.

For each reward setting and agent: the best plan's (highest reward) accuracy, latency, energy, average weight and
activation bits, and the wall time per episode; then, per pair, the lowest latency each agent found among plans at
least as accurate as a target (the other agent's best accuracy), as a ratio: kernel-wise / layer-wise.

    python tests/benchmarks/bench_agents.py [--episodes 50] [--seed 0] [--settings constrained guaranteed]
                                            [--budget 0.4x] [--agents autoq haq random uniform]
"""
from __future__ import annotations

import argparse
import time

import torch

from autoq.common.backend import open_backend
from autoq.host.evaluate import Evaluator
from autoq.host.search.agents.base import Agent
from autoq.host.search.agents.baselines import GreedyAgent
from autoq.host.search.checkpoint import seed_everything
from autoq.host.search.env import QuantEnv
from autoq.host.search.rewards import BudgetSpec, RewardSetting
from autoq.host.search.runner import kernel_weight_scales, make_agent
from autoq.host.tasks import load_task


def run_agent(name: str, setting: RewardSetting, episodes: int, seed: int, agent: Agent | None = None):
    """A fresh task, evaluator (its cache empty) and backend per agent, so wall times compare."""
    seed_everything(seed)
    task = load_task("digits")
    scales = kernel_weight_scales(task.model, task.network)
    env = QuantEnv(task.network, Evaluator.for_task(task), open_backend("model"), setting, kernel_scales=scales)
    agent = agent or make_agent(name, episodes, len(task.network), seed)
    outcomes, start = [], time.perf_counter()
    for episode in range(episodes):
        if agent.finished():
            break
        outcomes.append(agent.run_episode(env, episode))
    wall = time.perf_counter() - start
    return env, outcomes, wall / len(outcomes)


def lowest_latency_at(outcomes, accuracy: float) -> float | None:
    eligible = [o.cost.latency_s for o in outcomes if o.accuracy >= accuracy]
    return min(eligible) if eligible else None


def diagnose(env: QuantEnv, results: dict, setting: RewardSetting, seed: int) -> None:
    """Does kernel granularity pay on this task and cost model, independent of how well an RL agent learns it?"""
    print("\nSame greedy sensitivity allocator, kernel-wise moves (tiles of dm rows) vs layer-wise moves (whole layers):\n")
    for label, rows in (("kernel-wise", None), ("layer-wise", 10**9)):
        _, (outcome,), _ = run_agent("greedy", setting, 1, seed, GreedyAgent(tile_rows=rows))
        print(f"- greedy {label}: accuracy {outcome.accuracy:.4f}, latency {outcome.cost.latency_s * 1e3:.4f} ms, "
              f"avg bits w {outcome.plan.average_weight_bits(env.network):.2f} / a {outcome.plan.average_act_bits():.2f}")
    for name, (_, best) in results.items():
        total = best.cost.latency_s
        layers = ", ".join(f"{l.name} {l.latency_s / total:.0%} {l.bound} (w {min(lp.weight_bits)}-{max(lp.weight_bits)}, a {lp.act_bits})"
                           for l, lp in zip(best.measurement.layers, best.plan.layers))
        print(f"- {name} best plan per layer: {layers}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="0.4x", help="latency budget of the resource-constrained setting")
    parser.add_argument("--settings", nargs="+", default=["constrained", "guaranteed"], choices=["constrained", "guaranteed"])
    parser.add_argument("--agents", nargs="+", default=["autoq", "haq", "random", "uniform"])
    parser.add_argument("--diagnose", action="store_true",
                        help="also: greedy allocation kernel-wise vs layer-wise, and per-layer bounds of the best plans")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = {
        "constrained": RewardSetting.resource_constrained(BudgetSpec.parse("latency", args.budget)),
        "guaranteed": RewardSetting.accuracy_guaranteed(),
    }
    for key in args.settings:
        setting = settings[key]
        print(f"\n## {setting.describe()}; {args.episodes} episodes per agent, seed {args.seed}\n")
        print("| agent | episodes | accuracy | latency (ms) | latency / 8-bit | energy (mJ) | avg w bits | avg a bits | reward | s / episode |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        results = {}
        for name in args.agents:
            env, outcomes, per_episode = run_agent(name, setting, args.episodes, args.seed)
            best = max(outcomes, key=lambda o: (o.reward, o.accuracy, -o.cost.latency_s))
            results[name] = (outcomes, best)
            ref = env.objective.reference
            print(f"| {name} | {len(outcomes)} | {best.accuracy:.4f} | {best.cost.latency_s * 1e3:.4f} | "
                  f"{best.cost.latency_s / ref.latency_s:.3f} | {best.cost.energy_j * 1e3:.4f} | "
                  f"{best.plan.average_weight_bits(env.network):.2f} | {best.plan.average_act_bits():.2f} | "
                  f"{best.reward:.4f} | {per_episode:.2f} |", flush=True)
        if args.diagnose:
            diagnose(env, results, setting, args.seed)
        if {"autoq", "haq"} <= results.keys():
            print("\nLowest latency at matched accuracy (kernel-wise AutoQ / layer-wise HAQ):\n")
            for target_name in ("haq", "autoq"):
                target = results[target_name][1].accuracy
                autoq_lat = lowest_latency_at(results["autoq"][0], target)
                haq_lat = lowest_latency_at(results["haq"][0], target)
                if autoq_lat is None or haq_lat is None:
                    print(f"- accuracy >= {target:.4f} ({target_name}'s best): reached only by "
                          f"{'haq' if autoq_lat is None else 'autoq'}")
                else:
                    print(f"- accuracy >= {target:.4f} ({target_name}'s best): autoq {autoq_lat * 1e3:.4f} ms, "
                          f"haq {haq_lat * 1e3:.4f} ms, ratio {autoq_lat / haq_lat:.3f} ({(autoq_lat / haq_lat - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
