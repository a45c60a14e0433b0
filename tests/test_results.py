import csv
import json
import random

import pytest
from matplotlib.image import imread

from autoq.common.errors import AutoQError, PlanError
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.export.finalize import FinalReport
from autoq.host.results import CRITERIA, ResultsWriter, RunReport, best_record, pareto_front, write_results
from autoq.host.search.env import EpisodeOutcome
from autoq.host.search.rewards import BudgetSpec, CostPoint, RewardSetting
from boardkit import TINY
from tracekit import ToyBackend, some_plans


def record(episode, plan, accuracy, measurement, reward, agent="random"):
    """Episode ``episode`` of a search: an outcome whose plan met the budget as proposed."""
    outcome = EpisodeOutcome(plan, plan, accuracy, measurement, reward, CostPoint.of(measurement), True)
    return outcome.placed(episode, agent)


RUN = RunReport("random", "tiny", "toy://", 3, 40, 50, RewardSetting.resource_constrained(BudgetSpec("latency", 0.4, True)),
                2, 8, 0, 0.95, 0.9375, CostPoint(2e-3, 5e-3), budget_limit=8e-4)


def episodes(count=40, seed=0):
    net, backend, rng = TINY, ToyBackend(noise=0.05), random.Random(seed)
    records = []
    for i, plan in enumerate(some_plans(net, count, seed)):
        # accuracy grows with bits (plus noise) so there is a real trade-off to find
        accuracy = min(1.0, 0.5 + 0.06 * plan.average_weight_bits(net) + rng.uniform(-0.05, 0.05))
        records.append(record(i, plan, accuracy, backend.measure(net, plan), accuracy - 0.1 * rng.random()))
    return net, records


def dominated(record, others, cost):
    return any(o.accuracy >= record.accuracy and cost(o) <= cost(record) and (o.accuracy, cost(o)) != (record.accuracy, cost(record)) for o in others)


@pytest.mark.parametrize("cost_name", ["latency", "energy"])
def test_pareto_front_is_exactly_the_non_dominated_set(cost_name):
    net, records = episodes()
    cost = (lambda r: r.measurement.latency_s) if cost_name == "latency" else (lambda r: r.measurement.energy_j)
    front = pareto_front(records, cost)
    assert front and all(not dominated(r, records, cost) for r in front)
    outside = [r for r in records if r not in front]
    assert all(dominated(r, records, cost) or any((f.accuracy, cost(f)) == (r.accuracy, cost(r)) for f in front) for r in outside)
    assert [cost(r) for r in front] == sorted(cost(r) for r in front)
    assert [r.accuracy for r in front] == sorted(r.accuracy for r in front)


def test_pareto_front_keeps_one_of_identical_points():
    net, records = episodes(3)
    twin = record(99, records[0].plan, records[0].accuracy, records[0].measurement, 0.0)
    front = pareto_front(records + [twin], lambda r: r.measurement.latency_s)
    assert twin not in front


def test_results_folder(tmp_path):
    net, records = episodes()
    written = write_results(tmp_path / "out", net, records, RUN, best_test_accuracy=0.8125)
    out = tmp_path / "out"
    for name in CRITERIA:
        plan = QuantPlan.load(out / f"best_{name}.plan.json")
        assert plan == best_record(records, name).plan
    assert QuantPlan.load(out / "best_reward.plan.json") == max(records, key=lambda r: r.reward).plan
    index = json.loads((out / "best_plans.json").read_text())
    assert index["best"]["accuracy"]["accuracy"] == max(r.accuracy for r in records)
    assert index["best"]["latency"]["latency_s"] == min(r.measurement.latency_s for r in records)
    assert index["run"]["seed"] == "3" and index["run"]["episodes"] == "40 of 50" and index["run"]["bits"] == "2..8"
    assert index["run"]["uniform 8-bit plan"] == "2 ms, 5 mJ" and index["run"]["budget limit"] == "0.0008 (s)"
    assert index["run"]["record"] == "-" and index["run"]["full-precision accuracy (test)"] == "0.9375"
    assert index["accuracy_split"] == "val" and index["best_reward_test_accuracy"] == 0.8125
    assert len(list(csv.DictReader(open(out / "episodes.csv")))) == len(records)
    for cost_name, key in (("latency", "latency_s"), ("energy", "energy_j")):
        rows = list(csv.DictReader(open(out / f"pareto_{cost_name}.csv")))
        points = [(float(r["accuracy"]), float(r[key])) for r in rows]
        assert points, "a Pareto front is never empty"
        for acc, c in points:  # non-dominated against every episode
            assert not any(
                (o.accuracy >= acc and getattr(o.measurement, key) <= c) and (o.accuracy, getattr(o.measurement, key)) != (acc, c)
                for o in records
            )
    for png in ("pareto_latency.png", "pareto_energy.png", "bits_heatmap.png"):
        image = imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05, f"{png} is blank"
    best = best_record(records, "reward")
    summary = (out / "summary.md").read_text()
    assert f"validation accuracy (selected it): {best.accuracy:.4f}" in summary
    assert "**test accuracy: 0.8125**" in summary
    assert f"latency: {best.measurement.latency_s * 1e3:.4f} ms" in summary
    assert f"energy: {best.measurement.energy_j * 1e3:.4f} mJ" in summary
    assert f"average weight bits: {best.plan.average_weight_bits(net):.3f}" in summary
    assert f"average activation bits: {best.plan.average_act_bits():.3f}" in summary
    assert "| backend | toy:// |" in summary and "| reward | resource-constrained: latency <= 0.4x the max-bit plan; " in summary
    assert set(written) >= {"summary", "heatmap", "best_reward", "pareto_latency_png", "pareto_energy_csv"}
    assert not list(out.glob(".*.tmp")), "atomic writes leave no temp files"


def test_writer_rewrites_only_what_changed(tmp_path):
    net, records = episodes()
    writer = ResultsWriter(tmp_path, net)
    files = writer.write(records[:30], RUN)
    assert writer.writes == len(files)  # every file once
    stamps = {role: path.stat().st_mtime_ns for role, path in files.items()}
    writer.write(records[:30], RUN)
    assert writer.writes == len(files)  # nothing changed: nothing written, no plot rendered
    final = FinalReport("abc", 7, 0.5, 0.625, "/x/final/model.onnx", None)
    writer.write(records[:30], RUN, final)
    assert writer.writes == len(files) + 2  # the summaries (md and json), with the final plan
    assert {role for role, path in files.items() if path.stat().st_mtime_ns != stamps[role]} <= {"summary", "summary_json"}
    summary = files["summary"].read_text()
    assert "## Final plan: fine-tuned 7 steps; the fine-tuned model exported" in summary and "**0.6250 after**" in summary
    assert "- plan abc: `final/plan.json`; onnx: `final/model.onnx`" in summary
    before = writer.writes
    writer.write(records, RUN, final)  # ten more episodes: the episodes and every figure drawn from them change
    assert before < writer.writes <= before + len(files)
    assert len(list(csv.DictReader(open(files["episodes"])))) == len(records)
    files["heatmap"].unlink()
    writer.write(records, RUN, final)
    assert files["heatmap"].is_file()  # a file removed behind the writer's back is written again


def test_bad_input(tmp_path):
    net, records = episodes(3)
    with pytest.raises(AutoQError, match="no episodes"):
        write_results(tmp_path, net, [])
    other = NetworkSpec("other", net.layers[:-1], net.input_shape)
    with pytest.raises(PlanError, match=r"unknown layers \['fc'\]"):
        write_results(tmp_path, other, records)
    unplaced = EpisodeOutcome(records[0].plan, records[0].plan, 0.5, records[0].measurement, 0.5, CostPoint(1.0, 1.0), True)
    with pytest.raises(AutoQError, match="not placed in a search"):
        write_results(tmp_path, net, [unplaced])
    with pytest.raises(AutoQError, match="unknown criterion"):
        best_record(records, "speed")


def test_summary_json_is_the_machine_readable_twin(tmp_path):
    import dataclasses

    net, records = episodes()
    run = dataclasses.replace(RUN, warmup_episodes=5, tile_rows=2, uniform_accuracy_val=0.9, uniform_accuracy_test=0.875,
                              sensitivity="fisher")
    warm = max(records[:5], key=lambda r: r.reward)
    records[warm.episode] = dataclasses.replace(warm, reward=9.0)  # a warm-up episode with the best reward: passed over
    final = FinalReport("abc", 7, 0.5, 0.625, None, None, "test", 0.7, 0.65, False)
    files = write_results(tmp_path, net, records, run, final, best_test_accuracy=0.8125)
    data = json.loads(files["summary_json"].read_text())
    selected = max(records[5:], key=lambda r: (r.reward, r.accuracy, -r.measurement.latency_s))
    assert data["task"] == "tiny" and data["agent"] == "random" and data["seed"] == 3 and data["episodes"] == 50
    assert data["budget"] == {"metric": "latency", "value": 0.4, "relative": True, "limit": 8e-4}
    assert data["float"] == {"val_accuracy": 0.95, "test_accuracy": 0.9375}
    assert data["uniform"]["val_accuracy"] == 0.9 and data["uniform"]["latency_s"] == 2e-3
    sel = data["selected"]
    assert sel["episode"] == selected.episode != warm.episode and sel["test_accuracy"] == 0.8125
    assert sel["val_accuracy"] == selected.accuracy and sel["latency_s"] == selected.measurement.latency_s
    assert sel["energy_j"] == selected.measurement.energy_j
    widths = {lp.name: len({sorted(lp.weight_bits, reverse=True)[k] for k in range(0, len(lp.weight_bits), 2)})
              for lp in selected.plan.layers}  # 2-row tiles of bits sorted widest first: each tile's first row
    assert sel["tile_widths"] == widths
    assert sel["mixed_layers_fraction"] == sum(n > 1 for n in widths.values()) / len(widths)
    assert data["warmup_best"]["episode"] == warm.episode and data["warmup_best"]["reward"] == 9.0
    assert data["final"]["exported"] == "not fine-tuned" and data["final"]["exported_accuracy"] == 0.5
    summary = files["summary"].read_text()
    assert f"warm-up episode {warm.episode} scored a higher reward" in summary
    assert "the not fine-tuned model exported" in summary
