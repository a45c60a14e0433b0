"""QuantEnv contract (in the spirit of stable-baselines3's check_env) and the reward settings."""
import types

import numpy as np
import pytest

from autoq.common.backend import BackendInfo
from autoq.common.errors import AutoQError

from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.search.env import KERNEL_OBS_DIM, LAYER_OBS_DIM, QuantEnv
from autoq.host.search.rewards import BudgetSpec, CostPoint, RewardSetting, SearchError
from searchtoys import ToyBackend, ToyEvaluator, toy_env, toy_network

HALF_LATENCY = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.5x"))


def play(env, rng):
    """One episode of random actions; returns the observations seen and the final step result."""
    observations = [env.reset()]
    while True:
        kernels = env.kernel_observations(rng.uniform(), rng.uniform())
        observations.append(kernels)
        result = env.step(rng.uniform(), rng.uniform(size=env.layer.c_out))
        if result.outcome is not None:
            return observations, result
        observations.append(result.observation)


def test_check_env_contract():
    env = toy_env(HALF_LATENCY)
    network = env.network
    first = env.reset()
    assert first.shape == (LAYER_OBS_DIM,) and first.dtype == np.float32
    np.testing.assert_array_equal(env.reset(), first)  # deterministic reset
    rng = np.random.default_rng(0)
    for _ in range(3):
        observations, result = play(env, rng)
        layer_obs = observations[0::2]
        kernel_obs = observations[1::2]
        assert len(layer_obs) == len(kernel_obs) == len(network)  # episode length = number of layers
        for obs, kernels, layer in zip(layer_obs, kernel_obs, network):
            assert obs.shape == (LAYER_OBS_DIM,) and kernels.shape == (layer.c_out, KERNEL_OBS_DIM)
            for array in (obs, kernels):
                assert np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0
        outcome = result.outcome
        assert env.done and result.observation is None
        outcome.plan.check(network)
        outcome.proposed.check(network)
        assert outcome.fits and outcome.cost.latency_s <= env.objective.limit
        assert outcome.measurement.plan_hash == outcome.plan.hash
        assert all(env.min_bits <= b <= env.max_bits for lp in outcome.plan.layers for b in (*lp.weight_bits, lp.act_bits))
        with pytest.raises(SearchError, match="episode is over"):
            env.step(0.5, 0.5)


def test_observations_carry_layer_and_kernel_features():
    env = toy_env(HALF_LATENCY)
    obs = env.reset()
    assert obs[0] == 0.0 and obs[-2:].tolist() == [1.0, 1.0]  # first layer; no previous action yet
    kernels = env.kernel_observations(0.25, 0.75)
    assert kernels[:, -6].tolist() == pytest.approx(np.linspace(0, 1, env.layer.c_out).tolist())  # kernel index
    assert kernels[:, -5].min() == 0.0 and kernels[:, -5].max() == 1.0  # weight scale, normalised in the layer
    order = env.sensitivity.order(0)  # sensitivity rank in the layer: 0 for the most sensitive kernel
    assert kernels[order, -3].tolist() == pytest.approx(np.linspace(0, 1, env.layer.c_out).tolist())
    assert np.argmax(kernels[:, -4]) == order[0]  # log Fisher, normalised over the network
    assert (kernels[:, -2] == 0.25).all() and (kernels[:, -1] == 0.75).all()  # goal, activation action
    result = env.step(0.0, np.ones(env.layer.c_out))
    assert result.act_bits == env.min_bits and set(result.weight_bits) == {env.max_bits}
    assert result.observation[0] > 0.0 and result.observation[-2:].tolist() == pytest.approx([1 / 14, 13 / 14])


def test_action_projection_is_haqs_rounding():
    env = toy_env(HALF_LATENCY)  # bits 2..8: 7 equal intervals of [0, 1]
    assert env.bits_of([0.0, 1 / 7 - 1e-9, 1 / 7 + 1e-9, 0.5, 1.0]).tolist() == [2, 2, 3, 5, 8]
    assert env.bits_of(env.action_of(np.arange(2, 9))).tolist() == list(range(2, 9))
    assert env.goal_of(0.0) == 2.0 and env.goal_of(1.0) == 8.0 and env.goal_of(0.5) == 5.0
    narrow = toy_env(HALF_LATENCY, min_bits=1, max_bits=4)
    assert narrow.bits_of([0.0, 0.3, 0.6, 1.0]).tolist() == [1, 2, 3, 4]


def test_step_rejects_wrong_number_of_kernel_actions():
    env = toy_env(HALF_LATENCY)
    env.reset()
    with pytest.raises(SearchError, match="3 weight actions for 8 kernels"):
        env.step(0.5, [0.5, 0.5, 0.5])


def test_budget_enforcement_lowers_last_layer_activations_first_then_widest_kernels():
    env = toy_env(RewardSetting.accuracy_guaranteed())
    widest = QuantPlan.uniform(env.network, 8, 8)
    full = CostPoint.of(env.measure(widest)).latency_s
    # A budget just under the widest plan: one activation bit off the last layer is enough.
    tight = toy_env(RewardSetting.resource_constrained(BudgetSpec("latency", full * (1 - 1e-6), False)))
    plan, _ = tight.enforce_budget(widest)
    changed = [(a.name, a.act_bits, set(a.weight_bits)) for a, b in zip(plan.layers, widest.layers) if a != b]
    assert changed == [("fc", 7, {8})]
    # A budget that needs more: the sweep goes from the last layer backwards, activations before weights, and
    # lowers only a layer's widest kernels.
    mixed = widest.replace("fc", widest["fc"].__class__("fc", (8,) * 5 + (3,) * 5, 8))
    tighter = toy_env(RewardSetting.resource_constrained(BudgetSpec("latency", 0.7, True)))
    plan, measurement = tighter.enforce_budget(mixed)
    assert measurement.latency_s <= tighter.objective.limit and measurement.plan_hash == plan.hash
    assert sorted(set(plan["fc"].weight_bits))[0] == 3  # the 3-bit kernels were never touched before the widest
    assert plan["conv1"].act_bits >= plan["fc"].act_bits


def test_plans_within_budget_are_not_changed():
    env = toy_env(HALF_LATENCY)
    cheap = QuantPlan.uniform(env.network, 2, 2)
    outcome = env.evaluate(cheap)
    assert outcome.plan == outcome.proposed == cheap and outcome.fits


def test_measure_many_is_measure_of_each_plan_batched_or_one_by_one():
    """With the model backend ``measure_many`` takes its batch path; a backend without one measures plan by plan."""
    import dataclasses

    from autoq.common.backend import open_backend

    stamp = lambda m: dataclasses.replace(m, provenance=dataclasses.replace(m.provenance, timestamp=0.0))
    toy = toy_env(HALF_LATENCY)
    rng = np.random.default_rng(0)
    plans = [QuantPlan.uniform(toy.network, 8, 8)]
    plans += [QuantPlan.for_network(toy.network, (LayerPlan(l.name, tuple(int(b) for b in rng.integers(2, 9, l.c_out)),
                                                            int(rng.integers(2, 9))) for l in toy.network))
              for _ in range(5)]
    calls = toy.backend.calls
    assert [stamp(m) for m in toy.measure_many(plans)] == [stamp(toy.measure(p)) for p in plans]
    assert toy.backend.calls == calls + 2 * len(plans)
    model = toy.scoring_with(open_backend("model"), toy.evaluator)
    one_by_one = [stamp(model.measure(p)) for p in plans]
    model.backend.measure = lambda *args: pytest.fail("measure_many went plan by plan on the model backend")
    assert [stamp(m) for m in model.measure_many(plans)] == one_by_one
    assert model.measure_many([]) == []


def test_impossible_budget_is_an_error_before_the_search():
    with pytest.raises(SearchError, match=r"cannot be met: the cheapest plan the search can reach \(all weights and activations at 2 bits\)"):
        toy_env(RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.01x")))
    with pytest.raises(SearchError, match=r"energy budget 1e-06 mJ \(energy <= 1e-06 mJ\) cannot be met"):
        toy_env(RewardSetting.resource_constrained(BudgetSpec("energy", 1e-9, False)))


@pytest.mark.parametrize(
    "metric, text, value, relative",
    [("latency", "3ms", 3e-3, False), ("latency", "250us", 250e-6, False), ("latency", "0.5x", 0.5, True),
     ("latency", "2 s", 2.0, False), ("energy", "40mJ", 0.04, False), ("energy", "1.5e-3J", 1.5e-3, False),
     ("energy", "0.25X", 0.25, True)],
)
def test_budget_parsing(metric, text, value, relative):
    spec = BudgetSpec.parse(metric, text)
    assert spec.value == pytest.approx(value) and spec.relative is relative and spec.metric == metric


@pytest.mark.parametrize("metric, text", [("latency", "fast"), ("latency", "3mJ"), ("energy", "3ms"), ("latency", "-1ms"), ("latency", "0x")])
def test_bad_budget_text_is_a_clear_error(metric, text):
    with pytest.raises(SearchError, match="budget"):
        BudgetSpec.parse(metric, text)


def test_rewards_of_both_settings():
    env = toy_env(RewardSetting.accuracy_guaranteed(psi_acc=2.0, psi_latency=0.5, psi_energy=0.25))
    ref = env.objective.reference
    half = CostPoint(ref.latency_s / 2, ref.energy_j / 4)
    assert env.objective.reward(0.9, half) == pytest.approx(2 * 0.9 - 0.5 * 0.5 - 0.25 * 0.25)
    assert env.objective.fits(CostPoint(1e9, 1e9))  # no budget
    constrained = toy_env(HALF_LATENCY)
    assert constrained.objective.reward(0.9, half) == pytest.approx(0.9)
    with pytest.raises(SearchError, match="psi_acc > 0"):
        RewardSetting.accuracy_guaranteed(psi_acc=0.0)
    assert RewardSetting.from_dict(HALF_LATENCY.to_dict()) == HALF_LATENCY


def test_state_round_trip_mid_episode_and_the_evaluators_accuracy_cache():
    env = toy_env(HALF_LATENCY)
    env.reset()
    env.step(0.3, np.full(env.layer.c_out, 0.6))
    state = env.state_dict()
    other = toy_env(HALF_LATENCY)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.observation(), env.observation())
    assert other.layer_index == 1
    plan = QuantPlan.uniform(env.network, 4, 4)
    first = env.accuracy(plan)
    calls = env.evaluator.calls
    assert env.accuracy(plan) == first and env.evaluator.calls == calls  # served by the evaluator's cache
    assert env.evaluator.cache[(plan.hash, env.finetune_steps)] == first  # the only memo
    restored = toy_env(HALF_LATENCY)
    restored.load_state_dict(env.state_dict())
    before = restored.evaluator.calls
    assert restored.accuracy(plan) == first and restored.evaluator.calls == before + 1  # evaluated again: same value


def test_bit_range_defaults_to_the_overlays_max_bits():
    network = toy_network()
    backend = ToyBackend()
    backend.describe = lambda: BackendInfo("toy", "model", types.SimpleNamespace(dm=4, max_bits=6), ("latency",), "")
    env = QuantEnv(network, ToyEvaluator(network), backend, HALF_LATENCY)
    assert (env.min_bits, env.max_bits) == (2, 6)
    assert env.objective.reference == CostPoint.of(backend.measure(network, QuantPlan.uniform(network, 6, 6)))
    backend.describe = lambda: BackendInfo("toy", "model", types.SimpleNamespace(dm=4, max_bits=16), ("latency",), "")
    with pytest.raises(SearchError, match=r"bit range must satisfy 1 <= min_bits <= max_bits <= 8, got \[2, 16\]"):
        QuantEnv(network, ToyEvaluator(network), backend, HALF_LATENCY)


def test_bad_construction_is_refused():
    network = toy_network()
    with pytest.raises(SearchError, match="bit range"):
        QuantEnv(network, ToyEvaluator(network), ToyBackend(), HALF_LATENCY, min_bits=5, max_bits=4)
    with pytest.raises(SearchError, match="kernel scales name layers the network lacks"):
        QuantEnv(network, ToyEvaluator(network), ToyBackend(), HALF_LATENCY, kernel_scales={"nope": [1.0]})
    with pytest.raises(SearchError, match="3 kernel scales for 8 kernels"):
        QuantEnv(network, ToyEvaluator(network), ToyBackend(), HALF_LATENCY, kernel_scales={"conv1": [1.0, 2.0, 3.0]})


def test_one_accuracy_guaranteed_reward_and_its_penalty():
    setting = RewardSetting.accuracy_guaranteed(psi_acc=2.0, psi_latency=0.3, psi_energy=0.7)
    env = toy_env(setting)
    objective = env.objective
    cost = CostPoint(objective.reference.latency_s * 0.5, objective.reference.energy_j * 0.25)
    assert objective.reward(0.9, cost) == pytest.approx(2.0 * 0.9 - 0.3 * 0.5 - 0.7 * 0.25)
    assert objective.reward(0.9, cost) == pytest.approx(2.0 * (0.9 - objective.penalty(cost)))
    budget = toy_env(HALF_LATENCY).objective
    assert budget.penalty(cost) == cost.latency_s and budget.reward(0.9, cost) == 0.9


def test_episodes_are_scored_on_a_seeded_subset_of_val_which_val_extends():
    import torch

    from autoq.host.evaluate import HELD_OUT_SPLITS, UNSEEN_VAL_SPLIT, Evaluator, EvaluatorConfig
    from autoq.host.search.env import SEARCH_SPLIT
    from autoq.host.tasks import load_task

    task = load_task("digits")
    evaluator = Evaluator.for_task(task, config=EvaluatorConfig(search_images=100))
    assert [evaluator.split_size(s) for s in HELD_OUT_SPLITS] == [100, len(task.val), len(task.test)]
    again = Evaluator.for_task(load_task("digits"), config=EvaluatorConfig(search_images=100))
    assert torch.equal(evaluator._parts[SEARCH_SPLIT].x, again._parts[SEARCH_SPLIT].x)  # seeded: the same images
    subset_rows = {tuple(r) for r in evaluator._parts[SEARCH_SPLIT].x.flatten(1).tolist()}
    val_rows = [tuple(r) for r in task.val.x.flatten(1).tolist()]
    assert len(subset_rows) == 100 and subset_rows <= set(val_rows) and val_rows[:100] != list(subset_rows)
    env = QuantEnv(task.network, evaluator, ToyBackend(), RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.9x")))
    plan = QuantPlan.uniform(task.network, 3, 3)
    scored = env.score(plan)
    assert scored == evaluator.score(plan, split=SEARCH_SPLIT) and env.accuracy(plan) == scored.accuracy
    count = evaluator.evaluations
    val = evaluator.score(plan, split="val")  # the subset's figures are reused: only the rest is evaluated
    assert evaluator.evaluations == count + 1  # one quantized pass on the rest (its float pass ran for the objective)
    whole = Evaluator.for_task(load_task("digits"))  # search_images above the val size: the subset is all of val
    assert whole.split_size(SEARCH_SPLIT) == len(task.val) and whole.score(plan, split="val") == whole.score(plan, split=SEARCH_SPLIT)
    direct = whole.score(plan, split="val")  # val scored in one part equals val scored as subset + rest
    assert direct.accuracy == val.accuracy and direct.loss == pytest.approx(val.loss) and direct.kl == pytest.approx(val.kl)
    assert UNSEEN_VAL_SPLIT in evaluator.splits and UNSEEN_VAL_SPLIT not in whole.splits  # whole's val is its subset
    assert evaluator.split_size(UNSEEN_VAL_SPLIT) == len(task.val) - 100
    count = evaluator.evaluations
    unseen = evaluator.score(plan, split=UNSEEN_VAL_SPLIT)
    assert evaluator.evaluations == count  # the rest of val was scored (cached) as part of val
    assert val.accuracy == pytest.approx((100 * scored.accuracy + (len(task.val) - 100) * unseen.accuracy) / len(task.val))
    with pytest.raises(AutoQError, match="no held-out split 'val_rest'; choose one of \\('val_subset', 'val', 'test'\\)"):
        whole.score(plan, split=UNSEEN_VAL_SPLIT)
