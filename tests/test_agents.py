"""Agents on the toy network: AutoQ learns, HAQ is layer-wise, the baselines do what they claim."""
import itertools

import numpy as np
import pytest
import torch

from autoq.common.plan import QuantPlan
from autoq.host.search.agents.autoq import AutoQAgent, AutoQConfig
from autoq.host.search.agents.baselines import GreedyAgent, RandomAgent, UniformAgent
from autoq.host.search.agents.haq import HAQAgent, HAQConfig
from autoq.host.search.rewards import BudgetMultiplier, BudgetSpec, CostPoint, RewardSetting, SearchError
from searchtoys import toy_env

TIGHT = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.4x"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(agent, env, episodes):
    outcomes = []
    for episode in range(episodes):
        if agent.finished():
            break
        outcomes.append(agent.run_episode(env, episode))
    return outcomes


def small_autoq(episodes, **overrides):
    return AutoQConfig(episodes, hidden=(64, 64), **overrides)


def test_autoq_learns_to_meet_the_budget_itself_on_a_toy_network():
    torch.manual_seed(0)
    env = toy_env(TIGHT)
    episodes = 100
    agent = AutoQAgent(small_autoq(episodes, budget_lr=0.5), len(env.network), seed=0)  # a short search: a fast multiplier
    outcomes, multipliers = [], []
    for episode in range(episodes):
        outcomes.append(agent.run_episode(env, episode))
        multipliers.append(agent.budget.value)
    best_fitting = max(o.reward for o in outcomes[20:] if o.proposal_fits)
    assert best_fitting > np.mean([o.reward for o in outcomes[:20]]) + 0.05
    fits_early = np.mean([o.proposal_fits for o in outcomes[:20]])
    fits_late = np.mean([o.proposal_fits for o in outcomes[-20:]])
    assert fits_late >= 0.75 and fits_late > fits_early, (fits_early, fits_late)  # enforcement became the exception
    assert all(o.fits for o in outcomes)
    assert all(o.proposed_cost.latency_s <= env.objective.limit for o in outcomes if o.proposal_fits)
    assert max(multipliers) > 0  # the overshooting early proposals raised lambda from 0


def test_budget_multiplier_is_projected_dual_ascent_on_the_clipped_residual():
    env = toy_env(TIGHT)
    objective, limit = env.objective, env.objective.limit
    multiplier = BudgetMultiplier(0.0, 0.5, 0.1)

    def at(ratio):
        return CostPoint(ratio * limit, 0.0)

    assert multiplier.lagrangian(objective, 0.8, at(1.5)) == 0.8  # lambda 0: no penalty yet
    multiplier.update(objective, at(1.04))
    assert multiplier.value == pytest.approx(0.5 * 0.04)
    multiplier.update(objective, at(3.0))  # a wild proposal moves lambda by lr * clip at most
    assert multiplier.value == pytest.approx(0.02 + 0.05)
    assert multiplier.lagrangian(objective, 0.8, at(1.2)) == pytest.approx(0.8 - 0.07 * 0.2)
    assert multiplier.lagrangian(objective, 0.8, at(0.5)) == 0.8  # within the budget a plan is worth its reward
    for _ in range(3):
        multiplier.update(objective, at(0.5))  # budget left unused: lambda shrinks, never below 0
    assert multiplier.value == 0.0
    free = BudgetMultiplier(0.3, 0.5, 0.1)
    free.update(toy_env(RewardSetting.accuracy_guaranteed()).objective, CostPoint(1.0, 1.0))
    assert free.value == 0.3  # no budget, no constraint to ascend on
    with pytest.raises(SearchError, match="clip > 0"):
        BudgetMultiplier(0.0, 0.1, 0.0)


def test_autoq_learns_from_the_lagrangian_at_the_current_multiplier_and_checkpoints_it():
    torch.manual_seed(0)
    env = toy_env(TIGHT)
    agent = AutoQAgent(small_autoq(10, budget_multiplier=2.0), len(env.network), seed=0)
    outcome = agent.run_episode(env, 0)
    expected = 10 * (outcome.reward - 2.0 * env.objective.overshoot(outcome.proposed_cost))
    np.testing.assert_allclose(agent.hlc.buffer.state_dict()["rewards"], expected, rtol=1e-5)
    ratio = outcome.proposed_cost.latency_s / env.objective.limit
    assert agent.budget.value == pytest.approx(max(0.0, 2.0 + 0.1 * float(np.clip(ratio - 1, -0.1, 0.1))))
    clone = AutoQAgent(small_autoq(10, budget_multiplier=2.0), len(env.network), seed=0)
    clone.load_state_dict(agent.state_dict())
    assert clone.budget.value == agent.budget.value != 2.0


def test_autoq_acts_on_a_layers_kernels_in_one_batched_call():
    torch.manual_seed(0)
    env = toy_env(TIGHT)
    agent = AutoQAgent(small_autoq(10, warmup_fraction=0.0), len(env.network), seed=0)
    calls = {"hlc": [], "llc": []}
    for name in calls:
        controller = getattr(agent, name)
        act = controller.act
        controller.act = lambda states, act=act, name=name: calls[name].append(len(np.atleast_2d(states))) or act(states)
    agent.run_episode(env, 5)
    assert calls["hlc"] == [1] * len(env.network)
    assert calls["llc"] == [layer.c_out for layer in env.network]  # one forward pass per layer, all kernels at once
    assert len(agent.llc.buffer) == sum(layer.c_out for layer in env.network)
    assert len(agent.hlc.buffer) == len(env.network)


def test_autoq_llc_reward_mixes_goal_completion_with_extrinsic():
    torch.manual_seed(0)
    env = toy_env(TIGHT)
    agent = AutoQAgent(small_autoq(10, goal_mix=1.0), len(env.network), seed=0)
    outcome = agent.run_episode(env, 0)
    rewards = agent.llc.buffer.state_dict()["rewards"]
    states = agent.llc.buffer.state_dict()["states"]
    start = 0
    for layer_plan in outcome.proposed.layers:
        n = len(layer_plan.weight_bits)
        goal = env.goal_of(float(states[start, -2]))
        expected = -abs(goal - layer_plan.mean_weight_bits) / (env.max_bits - env.min_bits)
        np.testing.assert_allclose(rewards[start:start + n], expected, rtol=1e-5)
        start += n
    hlc_rewards = agent.hlc.buffer.state_dict()["rewards"]
    np.testing.assert_allclose(hlc_rewards, 10 * outcome.reward, rtol=1e-5)


def test_haq_is_layer_wise_and_learns():
    torch.manual_seed(0)
    env = toy_env(TIGHT)
    agent = HAQAgent(HAQConfig(40, hidden=(64, 64)), len(env.network), seed=0)
    outcomes = run(agent, env, 40)
    for o in outcomes:
        assert all(len(set(lp.weight_bits)) == 1 for lp in o.proposed.layers)
        assert o.fits
    rewards = [o.reward for o in outcomes]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10])
    assert len(agent.ddpg.buffer) == 2 * len(env.network) * 40  # two steps (weights, activations) per layer
    assert HAQConfig(600).warmup_episodes == 20 and HAQConfig(600).noise().sigma_at(100) == pytest.approx(0.5 * 0.99**100)


def test_uniform_finds_the_best_uniform_plan_within_budget():
    env = toy_env(TIGHT)
    agent = UniformAgent()
    outcomes = run(agent, env, 100)
    assert agent.finished() and len(outcomes) < 49  # dominated and over-budget plans were skipped
    best = max(outcomes, key=lambda o: o.accuracy)
    brute = max(
        (env.accuracy(p) for w, a in itertools.product(range(2, 9), repeat=2)
         if env.objective.fits(CostPoint.of(env.measure(p := QuantPlan.uniform(env.network, w, a))))),
    )
    assert best.accuracy == brute
    assert all(o.plan == o.proposed for o in outcomes)  # it never relied on budget enforcement


def test_random_search_is_seeded_and_meets_the_budget():
    first = [o.plan.hash for o in run(RandomAgent(7), toy_env(TIGHT), 5)]
    again = [o.plan.hash for o in run(RandomAgent(7), toy_env(TIGHT), 5)]
    assert first == again and len(set(first)) == 5
    assert all(o.fits for o in run(RandomAgent(3), toy_env(TIGHT), 5))


def test_greedy_meets_the_budget_and_beats_uniform():
    env = toy_env(TIGHT)
    greedy = GreedyAgent()
    outcomes = run(greedy, env, 10)
    assert greedy.finished() and len(outcomes) == 1
    (outcome,) = outcomes
    assert outcome.fits and outcome.proposal_fits  # it never relied on budget enforcement
    assert any(len(set(lp.weight_bits)) > 1 for lp in outcome.plan.layers)  # kernel-wise
    uniform_best = max(o.accuracy for o in run(UniformAgent(), toy_env(TIGHT), 100))
    assert outcome.accuracy > uniform_best


def test_greedy_in_accuracy_guaranteed_setting_stops_when_reward_stops_improving():
    env = toy_env(RewardSetting.accuracy_guaranteed())
    (outcome,) = run(GreedyAgent(), env, 1)
    widest = env.evaluate(QuantPlan.uniform(env.network, 8, 8))
    assert outcome.reward > widest.reward


@pytest.mark.parametrize("make", [
    lambda: AutoQAgent(small_autoq(8), 4, seed=1),
    lambda: HAQAgent(HAQConfig(8, hidden=(64, 64)), 4, seed=1),
    lambda: RandomAgent(1),
    UniformAgent,
    GreedyAgent,
], ids=["autoq", "haq", "random", "uniform", "greedy"])
def test_agent_state_round_trip_continues_identically(make):
    torch.manual_seed(0)
    env = toy_env(TIGHT)
    agent = make()
    run(agent, env, 3)
    state = agent.state_dict()
    torch.manual_seed(5)
    clone = make()
    clone.load_state_dict(state)
    env_a, env_b = toy_env(TIGHT), toy_env(TIGHT)
    for episode in range(3, 5):
        if agent.finished():
            assert clone.finished()
            break
        assert agent.run_episode(env_a, episode).plan == clone.run_episode(env_b, episode).plan


def test_one_agent_registry_builds_every_agent_and_feeds_the_cli():
    import argparse

    from autoq.host.cli.search_cmd import register
    from autoq.host.search.agents.base import AGENTS, Agent, agent_class, make_agent

    for name in AGENTS:
        agent = make_agent(name, 10, 4, seed=0)
        assert isinstance(agent, Agent) and agent.name == name
    assert [n for n in AGENTS if agent_class(n).budget_scheduled] == ["autoq", "haq"]
    with pytest.raises(SearchError, match="unknown agent 'dqn'; choose one of autoq, haq, random, uniform, greedy"):
        make_agent("dqn", 10, 4, seed=0)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    (search,) = parser._subparsers._group_actions[0].choices.values()
    (agent_option,) = [a for a in search._actions if "--agent" in a.option_strings]
    assert tuple(agent_option.choices) == tuple(AGENTS)
