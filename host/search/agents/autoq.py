"""AutoQ's hierarchical agent (Lou et al., ICLR 2020): two DDPG actor-critics.

* High-level controller (HLC), once per layer: the activation QBN and a *goal*, the average weight QBN the layer's
  kernels should reach. Its transitions follow the layers (gamma = 1) and carry the episode's extrinsic reward.
* Low-level controller (LLC), per kernel: the kernel's weight QBN, conditioned on the goal. A layer's kernels are
  acted on in one batched forward pass (kernel index and weight scale are features), so an episode costs two
  network calls per layer. The LLC's action is an offset from the goal (0.5 = the goal itself), so an untrained
  LLC already realises the HLC's goal and the hierarchy starts out no worse than a layer-wise agent; its
  exploration noise is ``kernel_noise_scale`` times the HLC's. Each kernel decision is a one-step transition whose reward is shaped: goal completion
  (minus the distance between the goal and the layer's achieved average, scaled to [-1, 0]) mixed with the
  extrinsic reward and a per-kernel credit: a difference reward, minus ``kernel_credit`` times the kernel's
  Fisher-estimated quantization loss at its bits relative to the layer's mean (in units of the layer's mean loss at
  the narrowest bits), so kernels of one layer no longer share one scalar. The kernel state carries the kernel's
  sensitivity and its sensitivity rank in the layer (the environment snaps bits to sensitivity-sorted tiles).

The extrinsic reward is the Lagrangian of the resource-constrained problem: the scored plan's reward minus lambda
times the proposal's relative budget overshoot, lambda adapted by dual ascent (``rewards.BudgetMultiplier``: one
step per outcome, in episode order, in ``_remember``, i.e. when the agent learns from it), so the controllers learn
to meet the budget themselves and enforcement stays the exception.

Defaults are the paper's (actor lr 1e-4, critic lr 1e-3, batch 64, replay 2000, noise 0.5 held for the first
quarter of the learning episodes, then decayed exponentially, goal_max = action_max = 8), with the schedule
compressed from the paper's 400 episodes into the episodes the search has.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from autoq.host.rl.actor_critic import ActorCritic
from autoq.host.rl.noise import NoiseSchedule, truncated_normal

from ..env import KERNEL_OBS_DIM, LAYER_OBS_DIM, EpisodeOutcome, Proposal, QuantEnv
from ..rewards import BudgetMultiplier
from .base import Agent, generator_state, restore_generator
from .ddpg import DDPGAgentConfig, successors


@dataclass(frozen=True)
class AutoQConfig(DDPGAgentConfig):
    final_noise_sigma: float = 0.025  # 0.5 * 0.99**300: where the paper's 300 decayed episodes end
    constant_noise_fraction: float = 0.25  # the paper's 100 of 400 episodes
    warmup_fraction: float = 0.05  # random episodes before learning (fills the replay buffers)
    goal_mix: float = 0.5  # LLC reward = goal_mix * goal completion + (1 - goal_mix) * extrinsic
    hlc_updates_per_layer: int = 1
    llc_updates_per_layer: int = 4
    kernel_noise_scale: float = 0.5  # LLC exploration noise relative to the HLC's
    kernel_credit: float = 1.0  # weight of the per-kernel Fisher credit in the LLC's reward
    budget_multiplier: float = 0.0  # lambda's start: reward lost per unit of relative overshoot of a proposal
    budget_lr: float = 0.1  # dual step size of lambda
    budget_clip: float = 0.1  # the constraint residual is clipped to +-budget_clip (lambda moves <= lr * clip)

    @property
    def warmup_episodes(self) -> int:
        return max(1, round(self.episodes * self.warmup_fraction))

    def noise(self) -> NoiseSchedule:
        learning = max(1, self.episodes - self.warmup_episodes)
        constant = round(learning * self.constant_noise_fraction)
        return NoiseSchedule.decaying_to(self.noise_sigma, self.final_noise_sigma, constant, max(1, learning - constant - 1))


class AutoQAgent(Agent):
    name: ClassVar[str] = "autoq"
    budget_scheduled: ClassVar[bool] = True

    @property
    def warmup_episodes(self) -> int:
        return self.config.warmup_episodes

    @classmethod
    def for_search(cls, episodes: int, num_layers: int, seed: int) -> "AutoQAgent":
        return cls(AutoQConfig(episodes), num_layers, seed)

    def __init__(self, config: AutoQConfig, num_layers: int, seed: int) -> None:
        self.config = config
        # Learn as soon as two episodes' worth of layer decisions exist; a 5-layer net would otherwise wait 13 episodes.
        self.hlc = ActorCritic(config.actor_critic(LAYER_OBS_DIM, 2, gamma=1.0, learning_starts=min(config.batch_size, 2 * num_layers)))
        self.llc = ActorCritic(config.actor_critic(KERNEL_OBS_DIM, 1, gamma=0.0, learning_starts=config.batch_size))
        self.noise = config.noise()
        self.rng = np.random.default_rng(seed)
        self.budget = BudgetMultiplier(config.budget_multiplier, config.budget_lr, config.budget_clip)

    def propose(self, env: QuantEnv, episode: int) -> Proposal:
        cfg = self.config
        learning = episode >= cfg.warmup_episodes
        sigma = self.noise.sigma_at(episode - cfg.warmup_episodes)
        layer_states: list[np.ndarray] = []
        layer_actions: list[np.ndarray] = []
        kernel_states: list[np.ndarray] = []
        kernel_actions: list[np.ndarray] = []
        observation = env.reset()
        while True:
            if learning:
                layer_action = truncated_normal(self.hlc.act(observation)[0], sigma, self.rng)
            else:
                layer_action = self.rng.uniform(size=2)
            act_action, goal_action = layer_action
            kernels = env.kernel_observations(goal_action, act_action)
            if learning:
                offsets = truncated_normal(self.llc.act(kernels)[:, 0], sigma * cfg.kernel_noise_scale, self.rng)
            else:
                offsets = self.rng.uniform(size=len(kernels))
            layer_states.append(observation)
            layer_actions.append(layer_action)
            kernel_states.append(kernels)
            kernel_actions.append(offsets)
            result = env.step(act_action, self.weight_actions(goal_action, offsets), scored=False)
            if result.proposal is not None:
                return dataclasses.replace(result.proposal, memo=(layer_states, layer_actions, kernel_states, kernel_actions))
            assert result.observation is not None  # set on every step but the last
            observation = result.observation

    def learn(self, env: QuantEnv, episode: int, proposal: Proposal, outcome: EpisodeOutcome) -> None:
        cfg = self.config
        layer_states = proposal.memo[0]
        self._remember(env, outcome, *proposal.memo)
        if episode >= cfg.warmup_episodes:
            for _ in range(cfg.hlc_updates_per_layer * len(layer_states)):
                self.hlc.update(self.rng)
            for _ in range(cfg.llc_updates_per_layer * len(layer_states)):
                self.llc.update(self.rng)

    @staticmethod
    def weight_actions(goal_action: float, offsets: np.ndarray) -> np.ndarray:
        """Kernel weight actions from the LLC's outputs, which are offsets from the goal (0.5 = the goal itself)."""
        return np.clip(goal_action + offsets - 0.5, 0.0, 1.0)

    def _remember(self, env, outcome, layer_states, layer_actions, kernel_states, kernel_actions) -> None:
        """Store the episode's transitions, rewarded with the Lagrangian at the current lambda, then take lambda's
        dual step on this outcome (once per outcome, in episode order: ``BudgetMultiplier``'s contract)."""
        cfg = self.config
        assert outcome.proposed_cost is not None  # QuantEnv.evaluate sets it
        extrinsic = cfg.reward_scale * self.budget.lagrangian(env.objective, outcome.reward, outcome.proposed_cost)
        states = np.stack(layer_states)
        self.hlc.remember(states, np.stack(layer_actions), extrinsic, *successors(states))
        span = env.max_bits - env.min_bits
        for i, (layer_plan, layer_action, kernels, actions) in enumerate(
                zip(outcome.proposed.layers, layer_actions, kernel_states, kernel_actions)):
            goal = env.goal_of(layer_action[1])
            goal_completion = -abs(goal - layer_plan.mean_weight_bits) / span if span else 0.0
            credit = self.kernel_credit(env, i, np.array(layer_plan.weight_bits))
            reward = cfg.goal_mix * goal_completion + (1.0 - cfg.goal_mix) * (extrinsic + cfg.kernel_credit * credit)
            self.llc.remember(kernels, actions[:, None], reward, kernels, 1.0)
        self.budget.update(env.objective, outcome.proposed_cost)

    @staticmethod
    def kernel_credit(env: QuantEnv, i: int, bits: np.ndarray) -> np.ndarray:
        """Per-kernel difference term of layer ``i``: minus each kernel's estimated loss at ``bits`` above the layer's
        mean, in units of the layer's mean estimated loss at the narrowest bits (0 for a layer with no loss)."""
        loss = env.sensitivity.kernel_loss(i, bits)
        scale = float(env.sensitivity.kernel_loss(i, np.full(len(bits), env.min_bits)).mean())
        if not scale > 0:
            return np.zeros(len(bits))
        return -(loss - loss.mean()) / scale

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "hlc": self.hlc.state_dict(), "llc": self.llc.state_dict(),
                "rng": generator_state(self.rng), "budget_multiplier": self.budget.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hlc.load_state_dict(state["hlc"])
        self.llc.load_state_dict(state["llc"])
        restore_generator(self.rng, state["rng"])
        self.budget.value = float(state["budget_multiplier"])
