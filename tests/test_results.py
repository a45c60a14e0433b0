import csv
import json
import random

import pytest
from matplotlib.image import imread

from autoq.common.errors import AutoQError, PlanError
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.results import CRITERIA, EpisodeRecord, best_record, pareto_front, write_results
from boardkit import TINY
from tracekit import ToyBackend, some_plans


def episodes(count=40, seed=0):
    net, backend, rng = TINY, ToyBackend(noise=0.05), random.Random(seed)
    records = []
    for i, plan in enumerate(some_plans(net, count, seed)):
        # accuracy grows with bits (plus noise) so there is a real trade-off to find
        accuracy = min(1.0, 0.5 + 0.06 * plan.average_weight_bits(net) + rng.uniform(-0.05, 0.05))
        records.append(EpisodeRecord(i, plan, accuracy, backend.measure(net, plan), accuracy - 0.1 * rng.random(), "random"))
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
    twin = EpisodeRecord(99, records[0].plan, records[0].accuracy, records[0].measurement, 0.0, "random")
    front = pareto_front(records + [twin], lambda r: r.measurement.latency_s)
    assert twin not in front


def test_results_folder(tmp_path):
    net, records = episodes()
    written = write_results(tmp_path / "out", net, records, {"agent": "random", "backend": "toy://", "seed": 3},
                            best_test_accuracy=0.8125)
    out = tmp_path / "out"
    for name in CRITERIA:
        plan = QuantPlan.load(out / f"best_{name}.plan.json")
        assert plan == best_record(records, name).plan
    assert QuantPlan.load(out / "best_reward.plan.json") == max(records, key=lambda r: r.reward).plan
    index = json.loads((out / "best_plans.json").read_text())
    assert index["best"]["accuracy"]["accuracy"] == max(r.accuracy for r in records)
    assert index["best"]["latency"]["latency_s"] == min(r.measurement.latency_s for r in records)
    assert index["run"]["seed"] == "3"
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
    assert "| backend | toy:// |" in summary
    assert set(written) >= {"summary", "heatmap", "best_reward", "pareto_latency_png", "pareto_energy_csv"}
    assert not list(out.glob(".*.tmp")), "atomic writes leave no temp files"


def test_bad_input(tmp_path):
    net, records = episodes(3)
    with pytest.raises(AutoQError, match="no episodes"):
        write_results(tmp_path, net, [])
    other = NetworkSpec("other", net.layers[:-1], net.input_shape)
    with pytest.raises(PlanError, match=r"unknown layers \['fc'\]"):
        write_results(tmp_path, other, records)
    with pytest.raises(AutoQError, match="unknown criterion"):
        best_record(records, "speed")
