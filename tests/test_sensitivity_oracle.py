"""Per-kernel sensitivity, sensitivity-ordered budget enforcement, the oracle's exact knapsack, the final pick."""
import itertools

import numpy as np
import pytest
import torch

from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.search.agents.oracle import LayerOracleAgent, OracleAgent, knapsack
from autoq.host.search.env import QuantEnv
from autoq.host.search.rewards import BudgetSpec, CostPoint, RewardSetting
from searchtoys import ToyBackend, ToyEvaluator, toy_env, toy_kernel_scales

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TIGHT = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.4x"))


def test_enforcement_lowers_the_least_sensitive_tiles_first():
    env = toy_env(TIGHT)
    widest = QuantPlan.uniform(env.network, 8, 8)
    outcome = env.evaluate(widest, layer_wise=False)
    assert outcome.fits and not outcome.proposal_fits and outcome.proposed_cost.latency_s > env.objective.limit
    assert env.objective.overshoot(outcome.proposed_cost) == pytest.approx(outcome.proposed_cost.latency_s / env.objective.limit - 1)
    lowered = 0
    for i, lp in enumerate(outcome.plan.layers):
        bits = np.array(lp.weight_bits)
        tiles = env.tiles[i]
        tops = [int(bits[t].max()) for t in tiles]
        assert all(len(set(bits[t])) == 1 for t in tiles)  # whole tiles were lowered
        assert tops == sorted(tops, reverse=True)  # more sensitive tiles never narrower than less sensitive ones
        lowered += sum(t < 8 for t in tops)
    assert lowered > 0
    layer_wise = env.evaluate(widest, layer_wise=True)  # HAQ's rule keeps a layer-wise plan layer-wise
    assert all(len(set(lp.weight_bits)) == 1 for lp in layer_wise.plan.layers) and layer_wise.fits


def test_a_kernel_wise_plan_that_fits_spends_the_budget_it_leaves():
    """The inverse of enforcement: a kernel-wise proposal under the budget is raised, whole tiles at a time, until
    not one activation bit or tile bit more fits; the proposal is kept beside it. Layer-wise plans, and every plan
    with ``spend_slack=False``, are scored as proposed."""
    env = toy_env(TIGHT)
    cheap = QuantPlan.uniform(env.network, 2, 2)
    outcome = env.evaluate(cheap, layer_wise=False)
    assert outcome.proposal_fits and outcome.fits and outcome.proposed == cheap
    assert outcome.cost.latency_s > 1.5 * outcome.proposed_cost.latency_s
    assert outcome.measurement.plan_hash == outcome.plan.hash
    for i, lp in enumerate(outcome.plan.layers):
        bits = np.array(lp.weight_bits)
        tops = [int(bits[t].max()) for t in env.tiles[i]]
        assert all(len(set(bits[t])) == 1 for t in env.tiles[i])
        assert tops == sorted(tops, reverse=True)  # more sensitive tiles never narrower than less sensitive ones
        raised = [LayerPlan(lp.name, lp.weight_bits, lp.act_bits + 1)] if lp.act_bits < env.max_bits else []
        for tile, top in zip(env.tiles[i], tops):
            if top < env.max_bits:
                wider = bits.copy()
                wider[tile] = top + 1
                raised.append(LayerPlan(lp.name, tuple(int(b) for b in wider), lp.act_bits))
        for layer in raised:
            assert not env.objective.fits(CostPoint.of(env.measure(outcome.plan.replace(lp.name, layer)))), layer
    assert env.evaluate(cheap, layer_wise=True).plan == cheap
    assert toy_env(TIGHT, spend_slack=False).evaluate(cheap, layer_wise=False).plan == cheap


def test_snapped_proposals_form_sensitivity_sorted_tiles():
    env = toy_env(TIGHT)
    env.reset()
    rng = np.random.default_rng(0)
    result = env.step(0.5, rng.uniform(size=env.layer.c_out))
    bits = np.array(result.weight_bits)
    for tile in env.tiles[0]:
        assert len(set(bits[tile])) == 1


def tiny_env(limit="0.5x"):
    network = NetworkSpec("tiny2", (LayerSpec("a", "conv", 1, 4, 3, 1, 1, 1, (4, 4), (4, 4)),
                                    LayerSpec("b", "linear", 64, 4)), (1, 4, 4))
    setting = RewardSetting.resource_constrained(BudgetSpec.parse("latency", limit))
    return QuantEnv(network, ToyEvaluator(network), ToyBackend(), setting, min_bits=2, max_bits=4, tile_rows=2,
                    kernel_scales=toy_kernel_scales(network))


@pytest.mark.parametrize("limit", ["0.8x", "0.87x", "0.95x"])
def test_oracle_knapsack_is_optimal_on_a_brute_forceable_instance(limit):
    env = tiny_env(limit)
    agent = OracleAgent(resolution=20000)
    plan = agent.allocate(env, env.objective.limit, "latency")
    cost = CostPoint.of(env.measure(plan)).latency_s
    assert cost <= env.objective.limit
    best = np.inf
    per_layer = []
    for i, layer in enumerate(env.network):
        options = []
        for tile_bits in itertools.product(range(2, 5), repeat=len(env.tiles[i])):
            bits = np.empty(layer.c_out, int)
            for tile, b in zip(env.tiles[i], tile_bits):
                bits[tile] = b
            options += [LayerPlan(layer.name, tuple(int(b) for b in bits), a) for a in range(2, 5)]
        per_layer.append(options)
    slack = env.objective.limit * (1 - 2 / 20000)  # the knapsack rounds each layer's cost up to 1/20000 of the budget
    for layers in itertools.product(*per_layer):
        candidate = QuantPlan(tuple(layers))
        if env.measure(candidate).latency_s <= slack:
            best = min(best, env.sensitivity.plan_loss(candidate))
    assert np.isfinite(best)
    assert env.sensitivity.plan_loss(plan) <= best + 1e-12


def test_knapsack_small_cases():
    assert knapsack([np.array([1.0, 3.0]), np.array([1.0, 2.0])], [np.array([5.0, 1.0]), np.array([4.0, 3.0])], 4.0) == [1, 0]
    assert knapsack([np.array([3.0])], [np.array([0.0])], 2.0) is None


def test_oracles_meet_the_budget_and_kernel_wise_is_no_worse():
    kernel = OracleAgent().run_episode(toy_env(TIGHT), 0)
    layer = LayerOracleAgent().run_episode(toy_env(TIGHT), 0)
    assert kernel.fits and kernel.proposal_fits and layer.fits and layer.proposal_fits
    assert all(len(set(lp.weight_bits)) == 1 for lp in layer.plan.layers)
    assert any(len(set(lp.weight_bits)) > 1 for lp in kernel.plan.layers)
    env = toy_env(TIGHT)
    assert env.sensitivity.plan_loss(kernel.plan) <= env.sensitivity.plan_loss(layer.plan)
    assert kernel.accuracy >= layer.accuracy


def test_oracle_in_accuracy_guaranteed_setting_sweeps_budgets():
    env = toy_env(RewardSetting.accuracy_guaranteed())
    agent = OracleAgent(sweep=4)
    outcomes = []
    while not agent.finished():
        outcomes.append(agent.run_episode(env, len(outcomes)))
    assert len(outcomes) == 4
    latencies = [o.cost.latency_s for o in outcomes]
    assert latencies == sorted(latencies, reverse=True) and latencies[0] > latencies[-1]


# -- the digits model: Fisher sensitivity and the final fine-tune's selection ------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from autoq.host.evaluate import Evaluator
    from autoq.host.tasks import load_task

    torch.manual_seed(0)
    task = load_task("digits")
    return task, Evaluator.for_task(task)


def test_fisher_sensitivity_ranks_kernels_by_their_measured_quantization_loss(digits, tmp_path):
    from scipy.stats import spearmanr

    from autoq.host.search.sensitivity import SENSITIVITY_NAME, Sensitivity, task_sensitivity

    task, evaluator = digits
    sens = task_sensitivity(evaluator, tmp_path)
    assert sens.source == "fisher" and (tmp_path / SENSITIVITY_NAME).is_file()
    again = task_sensitivity(evaluator, tmp_path)  # read from the cache, bit for bit
    assert again.key == sens.key and all(np.array_equal(a, b) for a, b in zip(again.weight_loss, sens.weight_loss))
    assert Sensitivity.load(tmp_path / SENSITIVITY_NAME).source == "fisher"
    import torch.nn.functional as F

    x, y = torch.cat([task.train.x, task.val.x]), torch.cat([task.train.y, task.val.y])  # 1,422 images

    def loss(plan):
        evaluator.qmodel.apply(plan)
        with torch.no_grad():
            return float(F.cross_entropy(evaluator.qmodel(x), y))

    widest = QuantPlan.uniform(task.network, 8, 8)
    base = loss(widest)
    i, layer = 1, task.network[1]  # conv2: 64 kernels
    measured = []
    for k in range(layer.c_out):  # the loss each kernel alone adds at 2 bits
        bits = [8] * layer.c_out
        bits[k] = 2
        measured.append(loss(widest.replace(layer.name, LayerPlan(layer.name, tuple(bits), 8))) - base)
    evaluator.qmodel.apply(widest)
    rho = spearmanr(sens.weight_loss[i][:, 1], measured).statistic
    assert rho > 0, (rho, measured)


def test_final_finetune_is_kept_only_when_it_does_not_worsen_validation(digits, tmp_path, monkeypatch):
    from autoq.host.export import finalize as fin

    task, evaluator = digits
    plan = QuantPlan.uniform(task.network, 2, 2)
    base_val = evaluator.score(plan, split="val")
    weights = {k: v.clone() for k, v in evaluator.weights().items()}
    original = evaluator.finetune_and_keep

    def harmful(p, steps):  # a fine-tune that ruins the model
        with torch.no_grad():
            for param in evaluator.qmodel.model.parameters():
                param.mul_(-1.0)
        evaluator._cache.clear()
        return evaluator.accuracy(p, split="test")

    monkeypatch.setattr(evaluator, "finetune_and_keep", harmful)
    result = fin.finalize(tmp_path, evaluator, plan, 5)
    report = result.report()
    assert not report.finetuned_exported and report.exported == "not fine-tuned"
    assert report.val_accuracy_after < report.val_accuracy_before == base_val.accuracy
    assert report.exported_accuracy == report.accuracy_before
    for key, value in evaluator.weights().items():  # the weights that were exported are the ones before
        assert torch.equal(value, weights[key])
    monkeypatch.setattr(evaluator, "finetune_and_keep", original)
    helped = fin.export_final(evaluator, plan, 40)
    if helped.val_accuracy_after != helped.val_accuracy_before:  # equal accuracies: the validation loss decides
        assert helped.finetuned_exported == (helped.val_accuracy_after > helped.val_accuracy_before)
    evaluator.restore_weights(weights)


def test_the_selected_plan_is_the_best_of_the_top_candidates_rescored_on_val_never_a_warm_up_one():
    from autoq.host.results import select_plan
    from autoq.host.search.env import PlanScore

    env = toy_env(TIGHT)
    rng = np.random.default_rng(0)
    records = []
    for episode in range(12):
        plan = QuantPlan.uniform(env.network, int(rng.integers(2, 9)), int(rng.integers(2, 9)))
        records.append(env.evaluate(plan).placed(episode, "random"))
    records.append(records[5].placed(12, "random"))  # a plan proposed twice is one candidate
    order = sorted(records[3:], key=lambda r: -r.reward)
    val_accuracy = {r.plan.hash: 0.5 + 0.01 * i for i, r in enumerate(order)}  # val reverses the search split's order
    asked = []

    def score(plan, split):
        asked.append((plan.hash, split))
        return PlanScore(val_accuracy[plan.hash] if split == "val" else 0.25, 0.1, 0.0)

    selection = select_plan(records, 3, env.objective, score, candidates=3)
    top = []
    for r in order:
        if r.plan not in [t.plan for t in top]:
            top.append(r)
    top = top[:3]
    assert [c[0].episode for c in selection.candidates] == [r.episode for r in top]  # distinct plans, best first
    assert selection.record.episode == top[-1].episode and selection.record.episode >= 3
    assert selection.val.accuracy == val_accuracy[top[-1].plan.hash] and selection.test.accuracy == 0.25
    assert selection.val_reward == pytest.approx(env.objective.reward(selection.val.accuracy, selection.record.cost, 0.0))
    assert asked == [(r.plan.hash, "val") for r in top] + [(top[-1].plan.hash, "test")]
