"""Acceptance benchmark of the search: on one task (``--task``, default the default task of ``autoq search``) with the
analytic ``model`` cost backend (``--backend``), for each seed and latency budget, every agent runs the same number
of episodes, scored on the validation subset; the plan each selects as ``autoq search`` does (the best after its
warm-up, re-scored on the whole validation split: ``autoq.host.results.select_plan``) is scored on the test split.
Not a test: prints tables (and writes ``--json PATH``).

Per agent and budget: test accuracy of the selected plan (mean +- std over seeds: the std is the noise a difference
must beat), its latency relative to the uniform 8-bit plan, the fraction of its layers that run more than one tile
width, how often the agent's own proposal met the budget, whether a selected plan ever came from the warm-up, and the share of
its scored plans at least as accurate on the validation subset as the float model (where that share is not zero, the
best plans are within the subset's noise of the float model, and the selection picks among plans it cannot tell
apart); each run's line also says how many distinct plans it scored.
Then autoq's test accuracy minus each other agent's, paired by seed, with two noise figures: the std over seeds
(the search's own randomness) and the standard error from the test images (the paired per-image differences of the
two selected plans, which is well below the ~0.5 points of one accuracy on 5,000 images, as both plans get most
images alike). Then latency at matched accuracy: the lowest latency autoq reached among plans at least as accurate (on the
validation subset) as the other agent's selected plan, as a ratio to that plan's latency (autoq vs haq, autoq vs the
layer-wise oracle), among the plans of autoq's search at that budget (which all sit at the budget once enforced) and
among those of its searches at every budget of the seed, printed beside the floor no plan can beat (the cheapest
plan the search can reach, every bit at the minimum, as a ratio to the other's latency) and the share of the
network's latency that depends on weight bits (``autoq.host.tasks.costshare``), which is what a kernel-wise plan can
save against a layer-wise one at the same activation bits. With ``--ceiling K``, each run's K highest-reward plans are
also scored on test, and the best of them is printed beside the selected plan: how much better a plan the search
found than the one its selection took (a diagnosis, never used to select). With ``--holdout`` (the fashion task
with the full Fashion-MNIST set), each selected plan is also scored on the 37,000 training images the shipped
weights never saw, and the differences between agents are printed with that larger split's smaller noise. Every run
records its selected plan (``plan``, ``QuantPlan.to_dict``), so it can be scored again without searching again.

    python tests/benchmarks/bench_agents.py [--task fashion] [--backend model] [--seeds 0 1 2]
        [--budgets 0.2x 0.25x 0.3x] [--episodes 150] [--agents autoq haq random uniform oracle oracle-layer]
        [--ceiling 20] [--holdout] [--json out.json]
    python tests/benchmarks/bench_agents.py --merge seed0.json seed1.json seed2.json [--json all.json]
"""
from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Iterator

import numpy as np
import torch
from scipy.stats import spearmanr

from autoq.common.backend import open_backend
from autoq.host.cli.search_cmd import DEFAULT_TASK, TASK_EPISODES
from autoq.host.evaluate import SEARCH_SPLIT, UNSEEN_VAL_SPLIT, Evaluator
from autoq.host.results import ranked_plans, select_plan, tile_widths
from autoq.host.search.agents.base import make_agent
from autoq.host.search.checkpoint import seed_everything
from autoq.host.search.env import QuantEnv
from autoq.host.search.rewards import BudgetSpec, Objective, RewardSetting
from autoq.host.search.sensitivity import task_sensitivity
from autoq.host.tasks import fashion, load_task
from autoq.host.tasks.costshare import weight_bit_shares

AGENTS = ("autoq", "haq", "random", "uniform", "oracle", "oracle-layer")


class Task:
    """The task, its evaluator (one accuracy memo for all agents: scores are deterministic), its sensitivity and the
    cost backend, opened once so that every run is costed alike. With ``holdout``, a second evaluator whose test
    split is the Fashion task's holdout (``autoq.host.tasks.fashion``: the full set's training images the shipped
    weights never saw), calibrated on the same images as the first."""

    def __init__(self, name: str, backend: str, holdout: bool = False) -> None:
        images = fashion.load_data().holdout if holdout and name == fashion.NAME else None
        if holdout and images is None:
            raise SystemExit(f"--holdout needs the {fashion.NAME} task with the full Fashion-MNIST set (apt-get install "
                             f"dataset-fashion-mnist, read from {fashion.DEBIAN_DIR}); task {name!r} has "
                             + ("only the shipped subset" if name == fashion.NAME else "no holdout"))
        self.task = load_task(name)
        self.backend = open_backend(backend)
        self.evaluator = Evaluator.for_task(self.task)
        self.scales = self.evaluator.kernel_scales()
        self.sensitivity = task_sensitivity(self.evaluator)
        self.float_accuracy = {split: self.evaluator.full_precision_accuracy(split) for split in (SEARCH_SPLIT, "val", "test")}
        # its own copy of the model: a model is quantized in place, once
        self.holdout = Evaluator.for_task(load_task(name)._replace(test=images)) if images is not None else None


def run_agent(t: Task, name: str, setting: RewardSetting, episodes: int, seed: int, ceiling: int = 0) -> dict:
    seed_everything(seed)
    env = QuantEnv(t.task.network, t.evaluator, t.backend, setting, kernel_scales=t.scales,
                   sensitivity=t.sensitivity)
    agent = make_agent(name, episodes, len(t.task.network), seed)
    outcomes, start = [], time.perf_counter()
    for episode in range(episodes):
        if agent.finished():
            break
        outcomes.append(agent.run_episode(env, episode).placed(episode, name))
    wall = time.perf_counter() - start
    selection = select_plan(outcomes, agent.warmup_episodes, env.objective, lambda plan, split: t.evaluator.score(plan, 0, split))
    selected = selection.record
    widths = [tile_widths(lp.weight_bits, env.tile_rows) for lp in selected.plan.layers]
    learned = [o for o in outcomes if o.episode >= agent.warmup_episodes] or outcomes
    return {
        "agent": name, "seed": seed, "episodes": len(outcomes), "warmup_episodes": agent.warmup_episodes,
        "selected_episode": selected.episode, "selected_after_warmup": selected.episode >= agent.warmup_episodes,
        "val_subset_accuracy": selected.accuracy, "val_accuracy": selection.val.accuracy,
        "test_accuracy": selection.test.accuracy, "latency_s": selected.cost.latency_s,
        "latency_ratio": selected.cost.latency_s / env.objective.reference.latency_s, "energy_j": selected.cost.energy_j,
        "reference_latency_s": env.objective.reference.latency_s, "floor_latency_s": env.objective.floor.latency_s,
        "mixed_layers": sum(w > 1 for w in widths) / len(widths),
        "proposals_met_budget": float(np.mean([o.proposal_fits for o in learned])),
        "distinct_plans": len({o.plan.hash for o in outcomes}),
        "s_per_episode": wall / len(outcomes),
        "front": [(o.accuracy, o.cost.latency_s) for o in learned],
        "test_correct": packed(t.evaluator.correct(selected.plan, "test")),
        "plan": selected.plan.to_dict(),
        **({"holdout_correct": packed(t.holdout.correct(selected.plan, "test"))} if t.holdout else {}),
        **(best_plans(outcomes, agent.warmup_episodes, ceiling, t.evaluator, env.objective) if ceiling else {}),
    }


def best_plans(outcomes: list, warmup_episodes: int, count: int, evaluator: Evaluator, objective: Objective) -> dict:
    """The ``count`` highest-reward distinct plans after the warm-up, ranked as the selection ranks its candidates
    (``ranked_plans``), best first: ``ceiling_test``, their test accuracies (how good the plans a search found are,
    beside the one its selection took: a diagnosis, never used to select), and ``ceiling_candidates``, per plan its
    episode, accuracy, KL and reward on the val subset and on the rest of val (``UNSEEN_VAL_SPLIT``, where there is one) and its
    per-image test correctness, from which other selection rules can be scored offline."""
    ranked = ranked_plans(outcomes, warmup_episodes, count)
    rescorable = UNSEEN_VAL_SPLIT in evaluator.splits
    unseen = [evaluator.score(o.plan, 0, UNSEEN_VAL_SPLIT) if rescorable else None for o in ranked]
    correct = [evaluator.correct(o.plan, "test") for o in ranked]  # one test pass per plan gives both figures
    return {"ceiling_test": [float(c.mean()) for c in correct],
            "ceiling_candidates": [
                {"episode": o.episode, "val_subset_accuracy": o.accuracy, "val_subset_kl": o.kl,
                 "val_subset_reward": o.reward, "test_correct": packed(right),
                 **({"val_rest_accuracy": val.accuracy, "val_rest_kl": val.kl,
                     "val_rest_reward": objective.reward(val.accuracy, o.cost, val.kl)} if val else {})}
                for o, val, right in zip(ranked, unseen, correct)]}


#: The candidate counts the report re-selects among on the unseen val (``select_plan`` re-scores 4 on all of val).
UNSEEN_VAL_CANDIDATES = (4, 20)


def unseen_val_choice(run: dict, count: int) -> dict:
    """The candidate of ``run``'s ceiling with the highest reward on the unseen val among its first ``count`` (the
    first of equals, as ``select_plan`` keeps it)."""
    candidates = run["ceiling_candidates"][:count]
    return max(candidates, key=lambda c: c["val_rest_reward"])


def ranked_together(run: dict, reward: str) -> float:
    """Spearman's rho of ``run``'s ceiling candidates' ``reward`` with their test accuracy."""
    return float(spearmanr([c[reward] for c in run["ceiling_candidates"]], run["ceiling_test"])[0])


def packed(correct: np.ndarray) -> str:
    """Per-image correctness as JSON-friendly text (base64 of the packed bits)."""
    return base64.b64encode(np.packbits(correct).tobytes()).decode() + f":{len(correct)}"


def unpacked(text: str) -> np.ndarray:
    bits, count = text.rsplit(":", 1)
    return np.unpackbits(np.frombuffer(base64.b64decode(bits), dtype=np.uint8))[: int(count)].astype(bool)


def paired_difference(mine: list[dict], others: list[dict], correct: str = "test_correct") -> tuple[float, float, float]:
    """Test accuracy (or that of another split's per-image results, ``correct``) of ``mine`` minus ``others`` (runs
    paired by seed), in points: the mean over seeds, its std over seeds, and the standard error of the mean from the
    images alone (each seed's paired per-image differences, which cancel the images both plans get right or wrong:
    the split's own noise on this difference)."""
    diffs, variances = [], []
    for a, b in zip(mine, others):
        d = unpacked(a[correct]).astype(float) - unpacked(b[correct])
        diffs.append(100 * d.mean())
        variances.append((100 * d.std(ddof=1)) ** 2 / len(d))
    return float(np.mean(diffs)), float(np.std(diffs)), float(np.sqrt(sum(variances)) / len(diffs))


def paired_by_seed(runs: list[dict], budget: str, other: str, correct: str = "test_correct") -> tuple[float, float, float] | None:
    """``paired_difference`` of autoq's runs at ``budget`` minus ``other``'s, or None unless both ran the same seeds."""
    mine, theirs = (sorted((r for r in runs if r["agent"] == name and r["budget"] == budget), key=lambda r: r["seed"])
                    for name in ("autoq", other))
    if not mine or [r["seed"] for r in mine] != [r["seed"] for r in theirs]:
        return None
    return paired_difference(mine, theirs, correct)


def latency_at_matched_accuracy(front: list[tuple[float, float]], other: dict) -> float | None:
    """Lowest latency among the plans of ``front`` (val-subset accuracy, latency) at least as accurate as ``other``'s
    selected plan, relative to that plan's latency."""
    eligible = [lat for acc, lat in front if acc >= other["val_subset_accuracy"]]
    return min(eligible) / other["latency_s"] if eligible else None


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} +- {np.std(values):.4f}" if values else "-"


FIGURES = ("test_accuracy", "val_accuracy", "latency_ratio", "mixed_layers", "proposals_met_budget", "selected_after_warmup")


def at_float(run: dict, float_accuracy: float) -> float:
    """Share of the run's scored plans (after its warm-up) at least as accurate on the val subset as the float model."""
    return float(np.mean([acc >= float_accuracy for acc, _ in run["front"]]))


def table(runs: list[dict], agents: list[str], title: str, float_accuracy: float, over: str = "seeds") -> dict:
    print(f"\n{title}\n")
    print(f"| agent | test accuracy (mean +- std over {over}) | val accuracy | latency / 8-bit | mixed-width layers "
          "| proposals within budget | selected after warm-up | plans at the float model's val-subset accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    out = {}
    for name in agents:
        mine = [r for r in runs if r["agent"] == name]
        if not mine:  # merged files may hold an agent at some budgets only
            continue
        out[name] = row = {k: [float(r[k]) for r in mine] for k in FIGURES}
        row["plans_at_float"] = [at_float(r, float_accuracy) for r in mine]
        print(f"| {name} | {mean_std(row['test_accuracy'])} | {mean_std(row['val_accuracy'])} | {np.mean(row['latency_ratio']):.3f} | "
              f"{np.mean(row['mixed_layers']):.2f} | {np.mean(row['proposals_met_budget']):.2f} | "
              f"{int(sum(row['selected_after_warmup']))}/{len(mine)} | {np.mean(row['plans_at_float']):.2f} |")
    return out


def grouped(runs: list[dict], budgets: list[str], agents: list[str]) -> Iterator[tuple[str, str, list[dict]]]:
    """(budget, agent, its runs there) for each budget and agent that has runs, in the order given."""
    for budget in budgets:
        for name in agents:
            mine = [r for r in runs if r["budget"] == budget and r["agent"] == name]
            if mine:
                yield budget, name, mine


def budget_order(budget: str) -> tuple[bool, float]:
    """Budgets tightest first: fractions of the 8-bit plan, then absolute ones, each by value (whatever the order
    of merged files)."""
    spec = BudgetSpec.parse("latency", budget)
    return not spec.relative, spec.value


def report(runs: list[dict], meta: dict) -> dict:
    """Print the tables of ``runs`` (run here or merged from ``--json`` files); returns the ``--json`` document."""
    seeds, budgets = sorted({r["seed"] for r in runs}), sorted({r["budget"] for r in runs}, key=budget_order)
    agents = list(dict.fromkeys(r["agent"] for r in runs))
    head = f"## {meta['task']} on {meta['backend']}: {meta['episodes']} episodes per agent, seeds {seeds}"
    floats = meta["float_accuracy"]
    print(f"Float model: {floats[SEARCH_SPLIT]:.2%} on the val subset, {floats['val']:.2%} on val, {floats['test']:.2%} on "
          "test. Where an agent's plans reach the float model's val-subset accuracy, its best plans are within the "
          "subset's noise of the float model, and the selection picks among plans the subset cannot tell apart.")
    per_budget = {budget: table([r for r in runs if r["budget"] == budget], agents, f"{head}, latency budget {budget}",
                                floats[SEARCH_SPLIT]) for budget in budgets}
    summary = (table(runs, agents, f"{head}, all budgets {budgets}", floats[SEARCH_SPLIT], "seeds and budgets")
               if len(budgets) > 1 else per_budget[budgets[0]])
    print("\nShare of the latency that depends on weight bits (bounds what kernel-wise saves at equal activation bits): "
          + ", ".join(f"{k}: {v:.1%}" for k, v in meta["weight_bit_share"].items()))
    ceilings = [r for r in runs if "ceiling_test" in r]
    if ceilings:
        print("\nThe plans each search found, on test (a diagnosis, never used to select): the best test accuracy among a "
              "run's K highest-reward plans on the val subset and their mean, each mean +- std over seeds, beside its selected "
              "plan's:\n")
        for budget, name, mine in grouped(ceilings, budgets, agents):
            print(f"- {name} at {budget}: best of {max(len(r['ceiling_test']) for r in mine)} plans "
                  f"{mean_std([max(r['ceiling_test']) for r in mine])}, their mean "
                  f"{mean_std([float(np.mean(r['ceiling_test'])) for r in mine])}, selected "
                  f"{mean_std([r['test_accuracy'] for r in mine])} ({len(mine)} runs)")
    rescorable = [r for r in ceilings if "val_rest_reward" in (r.get("ceiling_candidates") or [{}])[0]]
    if rescorable:
        print("\nSelecting on the val images no episode was scored on instead (a diagnosis: the plan with the highest "
              f"reward on {UNSEEN_VAL_SPLIT} among a run's K highest-reward plans on the val subset), its test accuracy "
              "mean +- std over seeds, and autoq minus random paired by seed [+- the test images' standard error]:\n")
        for budget in budgets:
            for count in UNSEEN_VAL_CANDIDATES:
                chosen = {name: [{"seed": r["seed"], "test_correct": unseen_val_choice(r, count)["test_correct"]}
                                 for r in sorted(rescorable, key=lambda r: r["seed"])
                                 if r["budget"] == budget and r["agent"] == name] for name in agents}
                line = "; ".join(f"{name} {mean_std([float(unpacked(c['test_correct']).mean()) for c in picks])}"
                                 for name, picks in chosen.items() if picks)
                mine, theirs = chosen.get("autoq", []), chosen.get("random", [])
                if mine and [c["seed"] for c in mine] == [c["seed"] for c in theirs]:
                    line += " ({:+.2f} +- {:.2f} [+- {:.2f}])".format(*paired_difference(mine, theirs))
                print(f"- {budget}, K = {count}: {line}")
        print("\nHow far each reward ranks a run's candidates by their test accuracy (Spearman's rho, lowest to highest "
              "over runs), beside how much the candidates differ on test (their std, in points, lowest to highest):\n")
        for budget, name, mine in grouped(rescorable, budgets, agents):
            rho = {key: [ranked_together(r, key) for r in mine] for key in ("val_subset_reward", "val_rest_reward")}
            spread = [100 * float(np.std(r["ceiling_test"])) for r in mine]
            print(f"- {name} at {budget}: val subset {min(rho['val_subset_reward']):+.2f} to "
                  f"{max(rho['val_subset_reward']):+.2f}, {UNSEEN_VAL_SPLIT} {min(rho['val_rest_reward']):+.2f} to "
                  f"{max(rho['val_rest_reward']):+.2f}; test std {min(spread):.2f} to {max(spread):.2f}")
    holdout = meta.get("holdout")
    scored = [r for r in runs if "holdout_correct" in r]
    if holdout and scored:
        print(f"\nThe selected plans on the holdout ({holdout['images']:,} official training images the shipped weights "
              f"never saw, float model {holdout['float_accuracy']:.2%}): accuracy mean +- std over seeds, beside test; "
              "autoq minus each other agent, paired by seed [+- the holdout images' standard error]:\n")
        for budget in budgets:
            for _, name, mine in grouped(scored, [budget], agents):
                print(f"- {name} at {budget}: holdout {mean_std([float(unpacked(r['holdout_correct']).mean()) for r in mine])}, "
                      f"test {mean_std([r['test_accuracy'] for r in mine])} ({len(mine)} runs)")
            for other in agents:
                difference = paired_by_seed(scored, budget, other, "holdout_correct") if other != "autoq" else None
                if difference is not None:
                    print("- autoq - {} at {}: holdout {:+.2f} +- {:.2f} [+- {:.2f}]".format(other, budget, *difference))
    matched: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    paired: dict[str, dict[str, tuple[float, float, float]]] = {}
    if "autoq" in agents:
        print("\nTest accuracy of autoq minus each other agent, in points, paired by seed: mean over seeds +- its std over "
              "seeds [+- the test images' standard error of that mean, from the per-image differences]:\n")
        for other in agents:
            if other == "autoq":
                continue
            paired[other] = {}
            for budget in budgets:
                difference = paired_by_seed(runs, budget, other)
                if difference is not None:
                    paired[other][budget] = difference
            print(f"- vs {other}: " + "; ".join(f"{budget} {d:+.2f} +- {s:.2f} [+- {e:.2f}]"
                                                 for budget, (d, s, e) in paired[other].items()))
        print("\nLatency at matched accuracy: autoq's lowest latency at >= the other's selected val-subset accuracy, / the "
              "other's latency; among the plans of autoq's search at the same budget, and among those of its searches at "
              "every budget of the seed (a tighter budget's plan can match a looser one's accuracy); beside them the floor "
              "no search can beat, the cheapest plan the search can reach (every bit at the minimum) / the other's "
              "latency:\n")
        for other in ("haq", "oracle-layer"):
            if other not in agents:
                continue
            matched[other] = {"same budget": {}, "every budget": {}}
            floors: dict[str, list[float]] = {}
            for budget in budgets:
                theirs = [r for r in runs if r["agent"] == other and r["budget"] == budget]
                if not theirs:
                    continue
                for scope, ratios in matched[other].items():
                    ratios[budget] = []
                    for b in theirs:  # only the seeds autoq ran in this scope: no plans of its is not "never matched"
                        mine = [r for r in runs if r["agent"] == "autoq" and r["seed"] == b["seed"]
                                and (scope == "every budget" or r["budget"] == budget)]
                        if mine:
                            ratios[budget].append(latency_at_matched_accuracy([p for r in mine for p in r["front"]], b))
                floors[budget] = [r["floor_latency_s"] / r["latency_s"] for r in theirs if "floor_latency_s" in r]
                line = []
                for scope, ratios in matched[other].items():
                    reached = [r for r in ratios[budget] if r is not None]
                    if not ratios[budget]:
                        line.append(f"{scope}: no autoq run")
                        continue
                    line.append(f"{scope} " + (f"{np.mean(reached):.3f} +- {np.std(reached):.3f}" if reached else "never matched")
                                + f" ({len(reached)} of {len(ratios[budget])} runs)")
                if floors[budget]:
                    line.append(f"floor {np.mean(floors[budget]):.3f}")
                print(f"- autoq vs {other} at {budget}: " + "; ".join(line))
            matched[other]["floor"] = floors  # type: ignore[assignment]
    return {**meta, "seeds": seeds, "budgets": budgets, "runs": runs, "per_budget": per_budget, "summary": summary,
            "latency_at_matched_accuracy": matched, "paired_test_difference": paired}


def merged(paths: list[str]) -> tuple[list[dict], dict]:
    """The runs and shared figures of several ``--json`` files of one task, backend and episode count."""
    docs = [json.loads(open(path).read()) for path in paths]
    keys = ("task", "backend", "backend_detail", "overlay", "episodes", "weight_bit_share", "float_accuracy")
    meta = {k: docs[0][k] for k in keys}
    for path, doc in zip(paths, docs):
        differ = [k for k in keys if doc[k] != meta[k]]
        if differ:
            raise SystemExit(f"{path} differs from {paths[0]} in {', '.join(differ)}: not runs of one benchmark")
    holdouts = {json.dumps(doc["holdout"], sort_keys=True) for doc in docs if "holdout" in doc}
    if len(holdouts) > 1:
        raise SystemExit(f"the files were scored on different holdouts ({', '.join(sorted(holdouts))})")
    if holdouts:
        meta["holdout"] = json.loads(holdouts.pop())
    runs, seen = [], {}
    for path, doc in zip(paths, docs):
        for run in doc["runs"]:
            key = (run["agent"], run["seed"], run["budget"])
            if key in seen:
                raise SystemExit(f"{path} and {seen[key]} both hold {key[0]} at seed {key[1]}, budget {key[2]}")
            seen[key] = path
            runs.append(run)
    return runs, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=DEFAULT_TASK, help="model/task name as for autoq search --model")
    parser.add_argument("--backend", default="model", help="cost backend URI (default model)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    # tight budgets: on the Fashion CNN at 0.4x and 0.5x every agent's plan is within ~0.3 points of the float model
    parser.add_argument("--budgets", nargs="+", default=["0.2x", "0.25x", "0.3x"])
    parser.add_argument("--episodes", type=int, help="episodes per agent (default: autoq search's for the task)")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS))
    parser.add_argument("--ceiling", type=int, default=0, metavar="K",
                        help="also score each run's K highest-reward plans on test (a diagnosis, never used to select)")
    parser.add_argument("--holdout", action="store_true", help="also score each selected plan on the fashion task's "
                        f"holdout ({fashion.HOLDOUT_SIZE:,} images; needs the full Fashion-MNIST set)")
    parser.add_argument("--json", metavar="PATH", help="write every run's figures here")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="print the tables of these --json files together "
                        "(e.g. seeds run as parallel processes) instead of running")
    args = parser.parse_args()
    if args.merge:
        runs, meta = merged(args.merge)
    else:
        runs, meta = run_all(args)
    document = report(runs, meta)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(document, fh, indent=1)


def run_all(args: argparse.Namespace) -> tuple[list[dict], dict]:
    episodes = args.episodes or TASK_EPISODES.get(args.task, 200)
    torch.set_num_threads(1)
    t = Task(args.task, args.backend, args.holdout)
    shares = {f"{w}/{a}->{low}": weight_bit_shares(t.task.network, t.backend, w, a, low_bits=low).share
              for w, a, low in ((4, 4, 1), (8, 8, 2))}
    runs: list[dict] = []
    for budget in args.budgets:
        setting = RewardSetting.resource_constrained(BudgetSpec.parse("latency", budget))
        for seed in args.seeds:
            for name in args.agents:
                result = run_agent(t, name, setting, episodes, seed, args.ceiling)
                result["budget"] = budget
                runs.append(result)
                print(f"budget {budget} seed {seed} {name}: test {result['test_accuracy']:.4f} (val {result['val_accuracy']:.4f}, "
                      f"episode {result['selected_episode']}), latency {result['latency_ratio']:.3f}x, mixed layers "
                      f"{result['mixed_layers']:.2f}, proposals within budget {result['proposals_met_budget']:.2f}, "
                      f"{result['distinct_plans']} distinct plans scored, "
                      f"{result['s_per_episode']:.2f} s/episode", flush=True)
    description = t.backend.describe()
    return runs, {"task": args.task, "backend": args.backend, "backend_detail": description.detail,
                  "overlay": description.overlay.name, "episodes": episodes, "weight_bit_share": shares,
                  "float_accuracy": t.float_accuracy,
                  **({"holdout": {"images": t.holdout.split_size("test"),
                                  "float_accuracy": t.holdout.full_precision_accuracy("test")}} if t.holdout else {})}


if __name__ == "__main__":
    main()
