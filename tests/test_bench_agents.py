"""The acceptance benchmark of the search (``tests/benchmarks/bench_agents.py``) runs on a fresh clone: every agent on
the digits task, seeds as separate processes merged afterwards, its figures written and printed."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import spearmanr

from autoq.common.plan import QuantPlan
from autoq.host.tasks import fashion, load_task

SCRIPT = Path(__file__).parent / "benchmarks" / "bench_agents.py"
AGENTS = ("autoq", "haq", "random", "uniform", "oracle", "oracle-layer")


def bench(*args: str) -> str:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_the_agents_benchmark_runs_every_agent_and_merges_seeds(tmp_path):
    files = []
    for seed in (0, 1):
        files.append(str(tmp_path / f"seed{seed}.json"))
        bench("--task", "digits", "--episodes", "4", "--seeds", str(seed), "--budgets", "0.5x", "--agents", *AGENTS,
              "--json", files[-1], *(("--ceiling", "2") if seed else ()))
    merged = bench("--merge", *files, "--json", str(tmp_path / "all.json"))
    document = json.loads((tmp_path / "all.json").read_text())
    runs, network = document["runs"], load_task("digits").network
    assert sorted((r["agent"], r["seed"]) for r in runs) == sorted((a, s) for a in AGENTS for s in (0, 1))
    for run in runs:
        assert run["budget"] == "0.5x" and run["latency_ratio"] <= 0.5 + 1e-9  # every selected plan meets the budget
        assert 0 < run["test_accuracy"] <= 1 and 1 <= run["distinct_plans"] <= run["episodes"] <= 4
        assert 0 <= run["mixed_layers"] <= 1
        QuantPlan.from_dict(run["plan"]).check(network)  # the selected plan itself, to score again without searching
        assert "holdout_correct" not in run
    assert not any(r["mixed_layers"] for r in runs if r["agent"] in ("haq", "uniform", "oracle-layer"))  # layer-wise
    for run in runs:  # --ceiling 2 in seed 1 only: its runs' best plans scored on test
        assert ("ceiling_test" in run) == (run["seed"] == 1)
        assert run["seed"] == 0 or 1 <= len(run["ceiling_test"]) <= 2 and all(0 < a <= 1 for a in run["ceiling_test"])
        assert run["seed"] == 0 or len(run["ceiling_candidates"]) == len(run["ceiling_test"])
        # digits' val is within its subset: no unseen val to score the candidates on
        assert not any("val_rest_reward" in c for c in run.get("ceiling_candidates", ()))
    floats = document["float_accuracy"]
    assert sorted(floats) == ["test", "val", "val_subset"] and all(0 < v <= 1 for v in floats.values())
    assert f"Float model: {floats['val_subset']:.2%} on the val subset" in merged
    for agent, row in document["per_budget"]["0.5x"].items():  # each run's share of plans at the float model's accuracy
        shares = [sum(acc >= floats["val_subset"] for acc, _ in r["front"]) / len(r["front"])
                  for r in sorted(runs, key=lambda r: r["seed"]) if r["agent"] == agent]
        assert row["plans_at_float"] == pytest.approx(shares)
    for agent in AGENTS[1:]:
        assert f"- vs {agent}: 0.5x " in merged  # autoq minus each agent, paired by seed
    assert "autoq vs haq at 0.5x" in merged and "autoq vs oracle-layer at 0.5x" in merged
    assert "- random at 0.5x: best of 2 plans" in merged and "(1 runs)" in merged
    for other in ("haq", "oracle-layer"):  # the floor: the all-min-bit plan's latency over the other's selected plan's
        floors = document["latency_at_matched_accuracy"][other]["floor"]["0.5x"]
        expected = [r["floor_latency_s"] / r["latency_s"] for r in runs if r["agent"] == other]
        assert floors == pytest.approx(expected) and len(floors) == 2 and all(0 < f <= 1 for f in floors)
    twice = subprocess.run([sys.executable, str(SCRIPT), "--merge", files[0], files[0]], capture_output=True, text=True,
                           timeout=120)
    assert twice.returncode != 0 and "both hold autoq at seed 0, budget 0.5x" in twice.stderr


def load_bench_agents():
    spec = importlib.util.spec_from_file_location("bench_agents", SCRIPT)
    bench_agents = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_agents)
    return bench_agents


def test_latency_at_matched_accuracy_takes_autoq_plans_of_tighter_budgets_and_the_budgets_the_other_ran(capsys):
    """HAQ run at a looser budget than any autoq run: matched among autoq's plans of every budget of the seed, with
    no 'same budget' figure (autoq did not run there) and the floor beside it."""
    bench_agents = load_bench_agents()
    correct = bench_agents.packed(np.ones(10, bool))

    def run(agent, budget, latency, front):
        return {"agent": agent, "seed": 0, "budget": budget, "test_accuracy": 0.8, "val_accuracy": 0.8,
                "val_subset_accuracy": 0.84, "latency_ratio": latency / 4.0, "latency_s": latency, "floor_latency_s": 0.4,
                "mixed_layers": 0.0, "proposals_met_budget": 1.0, "selected_after_warmup": True, "front": front,
                "test_correct": correct}

    runs = [run("autoq", "0.3x", 1.2, [(0.83, 1.1), (0.85, 1.2)]), run("autoq", "0.2x", 0.8, [(0.845, 0.8)]),
            run("haq", "0.4x", 1.6, [(0.84, 1.6)])]
    meta = {"task": "t", "backend": "model", "episodes": 1, "weight_bit_share": {}, "float_accuracy":
            {"val_subset": 0.9, "val": 0.9, "test": 0.9}}
    document = bench_agents.report(runs, meta)
    assert document["budgets"] == ["0.2x", "0.3x", "0.4x"]  # tightest first, not in the runs' order
    assert list(document["per_budget"]) == ["0.2x", "0.3x", "0.4x"]
    matched = document["latency_at_matched_accuracy"]["haq"]
    assert matched["same budget"] == {"0.4x": []} and matched["every budget"] == {"0.4x": [0.5]}  # 0.8 / 1.6
    assert matched["floor"] == {"0.4x": [0.25]}  # the all-min-bit plan's 0.4 / 1.6
    assert "autoq vs haq at 0.4x: same budget: no autoq run; every budget 0.500" in capsys.readouterr().out


def test_the_ceiling_scores_the_highest_reward_distinct_plans_on_unseen_val_and_test_and_is_printed(capsys):
    bench_agents = load_bench_agents()
    test = {"a": 0.80, "b": 0.86, "c": 0.83, "d": 0.90}
    asked = []

    unseen = {"a": 0.70, "b": 0.76, "c": 0.73, "d": 0.70}

    class Scores:
        splits = ("val_subset", "val", "val_rest", "test")

        def score(self, plan, finetune_steps, split):
            asked.append((plan, finetune_steps, split))
            return SimpleNamespace(accuracy=(test if split == "test" else unseen)[plan], kl=0.01)

        def correct(self, plan, split):
            asked.append((plan, split))
            return np.arange(100) < 100 * test[plan]

    class Objective:
        def reward(self, accuracy, cost, kl):
            return accuracy - kl

    outcomes = [SimpleNamespace(plan=plan, reward=reward, accuracy=0.8, kl=0.02, cost=None, episode=episode,
                                measurement=SimpleNamespace(latency_s=1.0))
                for episode, (plan, reward) in enumerate((("w", 2.0), ("a", 0.5), ("b", 0.9), ("b", 0.9), ("c", 0.7),
                                                          ("d", 0.1)))]
    # "w" is the warm-up's (episode 0); "b" once; "d" ranks last
    found = bench_agents.best_plans(outcomes, 1, 3, Scores(), Objective())
    assert found["ceiling_test"] == [0.86, 0.83, 0.80]
    assert [(c["episode"], c["val_subset_reward"], c["val_rest_accuracy"]) for c in found["ceiling_candidates"]] == [
        (2, 0.9, 0.76), (4, 0.7, 0.73), (1, 0.5, 0.70)]
    assert [c["val_rest_reward"] for c in found["ceiling_candidates"]] == pytest.approx([0.75, 0.72, 0.69])
    assert [bench_agents.unpacked(c["test_correct"]).sum() for c in found["ceiling_candidates"]] == [86, 83, 80]
    assert sorted({split for *_, split in asked}) == ["test", "val_rest"]  # never val or the val subset
    correct = bench_agents.packed(np.ones(10, bool))
    runs = [{"agent": "random", "seed": seed, "budget": "0.25x", "test_accuracy": accuracy, "val_accuracy": 0.8,
             "val_subset_accuracy": 0.84, "latency_ratio": 0.25, "latency_s": 1.0, "mixed_layers": 1.0,
             "proposals_met_budget": 1.0, "selected_after_warmup": True, "front": [(0.84, 1.0)],
             "test_correct": correct, "ceiling_test": ceiling}
            for seed, accuracy, ceiling in ((0, 0.84, [0.84, 0.85]), (1, 0.82, [0.86, 0.82]))]
    meta = {"task": "t", "backend": "model", "episodes": 1, "weight_bit_share": {}, "float_accuracy":
            {"val_subset": 0.9, "val": 0.9, "test": 0.9}}
    bench_agents.report(runs, meta)
    assert ("- random at 0.25x: best of 2 plans 0.8550 +- 0.0050, their mean 0.8425 +- 0.0025, selected 0.8300 +- 0.0100 "
            "(2 runs)") in capsys.readouterr().out


def test_the_report_reselects_the_ceilings_candidates_on_the_unseen_val_and_pairs_autoq_with_random(capsys):
    bench_agents = load_bench_agents()

    def candidate(val_rest_reward, right):
        return {"val_subset_reward": right / 10, "val_rest_reward": val_rest_reward,
                "test_correct": bench_agents.packed(np.arange(10) < right)}

    def run(agent, seed, fifth_right):  # the 5th candidate is the best on the unseen val: only K = 20 reaches it
        candidates = [candidate(0.5, 5), candidate(0.7, 7), candidate(0.6, 9), candidate(0.7, 4), candidate(0.9, fifth_right)]
        return {"agent": agent, "seed": seed, "budget": "0.25x", "test_accuracy": 0.7, "val_accuracy": 0.8,
                "val_subset_accuracy": 0.84, "latency_ratio": 0.25, "latency_s": 1.0, "mixed_layers": 1.0,
                "proposals_met_budget": 1.0, "selected_after_warmup": True, "front": [(0.84, 1.0)],
                "test_correct": candidates[1]["test_correct"], "ceiling_test": [0.5, 0.7, 0.9, 0.4, fifth_right / 10],
                "ceiling_candidates": candidates}

    assert bench_agents.unseen_val_choice(run("autoq", 0, 8), 4)["test_correct"] == candidate(0, 7)["test_correct"]
    runs = [run("autoq", 0, 8), run("autoq", 1, 10), run("random", 1, 6), run("random", 0, 6)]
    meta = {"task": "t", "backend": "model", "episodes": 1, "weight_bit_share": {}, "float_accuracy":
            {"val_subset": 0.9, "val": 0.9, "test": 0.9}}
    bench_agents.report(runs, meta)
    out = capsys.readouterr().out
    assert "- 0.25x, K = 4: autoq 0.7000 +- 0.0000; random 0.7000 +- 0.0000 (+0.00 +- 0.00 [+- 0.00])" in out
    se = 100 * np.sqrt(np.var([0, 0, 1, 1] + [0] * 6, ddof=1) / 10 + np.var([0] * 6 + [1] * 4, ddof=1) / 10) / 2
    assert f"- 0.25x, K = 20: autoq 0.9000 +- 0.1000; random 0.6000 +- 0.0000 (+30.00 +- 10.00 [+- {se:.2f}])" in out
    # the subset's reward here is the test accuracy itself (rho 1); val_rest's ranks them less well
    rest = [spearmanr([0.5, 0.7, 0.6, 0.7, 0.9], [0.5, 0.7, 0.9, 0.4, right / 10])[0] for right in (8, 10)]
    spread = [100 * np.std([0.5, 0.7, 0.9, 0.4, right / 10]) for right in (8, 10)]
    assert (f"- autoq at 0.25x: val subset +1.00 to +1.00, val_rest {min(rest):+.2f} to {max(rest):+.2f}; test std "
            f"{min(spread):.2f} to {max(spread):.2f}") in out


def test_the_report_pairs_the_selected_plans_on_the_holdout_and_merging_keeps_one_holdout(capsys, tmp_path):
    bench_agents = load_bench_agents()

    def run(agent, seed, right):  # 20 holdout images; test figures that the holdout section must not use
        return {"agent": agent, "seed": seed, "budget": "0.25x", "test_accuracy": 0.5, "val_accuracy": 0.8,
                "val_subset_accuracy": 0.84, "latency_ratio": 0.25, "latency_s": 1.0, "mixed_layers": 1.0,
                "proposals_met_budget": 1.0, "selected_after_warmup": True, "front": [(0.84, 1.0)],
                "test_correct": bench_agents.packed(np.arange(10) < 5),
                "holdout_correct": bench_agents.packed(np.arange(20) < right)}

    runs = [run("autoq", 0, 16), run("autoq", 1, 18), run("random", 1, 14), run("random", 0, 14)]
    meta = {"task": "t", "backend": "model", "episodes": 1, "weight_bit_share": {}, "float_accuracy":
            {"val_subset": 0.9, "val": 0.9, "test": 0.9}, "holdout": {"images": 20, "float_accuracy": 0.95}}
    bench_agents.report(runs, meta)
    out = capsys.readouterr().out
    assert "The selected plans on the holdout (20 official training images" in out and "float model 95.00%" in out
    assert "- autoq at 0.25x: holdout 0.8500 +- 0.0500, test 0.5000 +- 0.0000 (2 runs)" in out
    se = 100 * np.sqrt(np.var([1] * 2 + [0] * 18, ddof=1) / 20 + np.var([1] * 4 + [0] * 16, ddof=1) / 20) / 2
    assert f"- autoq - random at 0.25x: holdout +15.00 +- 5.00 [+- {se:.2f}]" in out
    bench_agents.report([{k: v for k, v in r.items() if k != "holdout_correct"} for r in runs], meta)
    assert "on the holdout" not in capsys.readouterr().out  # runs without holdout results print no such section

    document = {**meta, "overlay": "o", "backend_detail": "d", "runs": runs[:2]}
    files = [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"]
    files[0].write_text(json.dumps(document))
    files[1].write_text(json.dumps({**document, "runs": runs[2:], "holdout": {"images": 20, "float_accuracy": 0.9}}))
    files[2].write_text(json.dumps({k: v for k, v in {**document, "runs": runs[2:]}.items() if k != "holdout"}))
    merged_runs, merged_meta = bench_agents.merged([str(files[0]), str(files[2])])
    assert merged_meta["holdout"] == meta["holdout"] and len(merged_runs) == 4  # a file without one merges in
    with pytest.raises(SystemExit, match="scored on different holdouts"):
        bench_agents.merged([str(files[0]), str(files[1])])


def test_holdout_needs_the_full_fashion_set(monkeypatch):
    bench_agents = load_bench_agents()
    with pytest.raises(SystemExit, match="--holdout needs the fashion task .* task 'digits' has no holdout"):
        bench_agents.Task("digits", "model", holdout=True)
    monkeypatch.setattr(bench_agents.fashion, "load_data", lambda: bench_agents.fashion._load(None))  # no full set
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist.* task 'fashion' has only the shipped subset"):
        bench_agents.Task("fashion", "model", holdout=True)


@pytest.mark.skipif(not fashion.has_full_set(fashion.DEBIAN_DIR), reason=f"no Fashion-MNIST IDX set at {fashion.DEBIAN_DIR}")
def test_the_holdout_evaluator_quantizes_as_the_search_evaluator_does():
    t = load_bench_agents().Task("fashion", "model", holdout=True)
    plan = QuantPlan.uniform(t.task.network, 3, 3)
    assert t.holdout.split_size("test") == fashion.HOLDOUT_SIZE
    assert t.holdout.score(plan, 0, "val") == t.evaluator.score(plan, 0, "val")  # same model, calibration, plan
