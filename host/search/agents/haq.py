"""HAQ's layer-wise agent (Wang et al., CVPR 2019), the baseline AutoQ is compared with.

One DDPG actor-critic, two steps per layer (weight QBN, then activation QBN; a flag in the state tells them apart,
and the previous action is part of the state). Every transition of an episode gets the final reward, HAQ's
``0.1 * (acc_quant - acc_full)`` per percentage point in the resource-constrained setting (the extrinsic reward
otherwise), with a moving-average reward baseline; gamma 1, tau 0.01, hidden 300/300; random warm-up episodes,
then truncated-normal noise sigma 0.5 decayed 0.99 per episode. The paper's 600-episode schedule (20 warm-up) is
compressed into the episodes the search has. Budget enforcement is the environment's (HAQ's rule).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from autoq.host.rl.actor_critic import ActorCritic
from autoq.host.rl.noise import NoiseSchedule, truncated_normal

from ..env import LAYER_OBS_DIM, EpisodeOutcome, Proposal, QuantEnv
from ..rewards import haq_reward
from .base import Agent, generator_state, restore_generator
from .ddpg import DDPGAgentConfig, successors

PAPER_EPISODES = 600
PAPER_WARMUP = 20


@dataclass(frozen=True)
class HAQConfig(DDPGAgentConfig):
    """HAQ's settings; ``reward_scale`` applies only to the accuracy-guaranteed setting (HAQ's own reward otherwise)."""

    noise_decay: float = 0.99  # per paper episode

    @property
    def warmup_episodes(self) -> int:
        return max(1, round(self.episodes * PAPER_WARMUP / PAPER_EPISODES))

    def noise(self) -> NoiseSchedule:
        return NoiseSchedule(self.noise_sigma, 0, self.noise_decay ** (PAPER_EPISODES / self.episodes))


class HAQAgent(Agent):
    name: ClassVar[str] = "haq"
    budget_scheduled: ClassVar[bool] = True
    STATE_DIM = LAYER_OBS_DIM + 2  # + weight/activation flag + previous action

    def __init__(self, config: HAQConfig, num_layers: int, seed: int) -> None:
        self.config = config
        self.ddpg = ActorCritic(config.actor_critic(self.STATE_DIM, 1, gamma=1.0, learning_starts=min(config.batch_size, 4 * num_layers)))
        self.noise = config.noise()
        self.rng = np.random.default_rng(seed)

    @property
    def warmup_episodes(self) -> int:
        return self.config.warmup_episodes

    @classmethod
    def for_search(cls, episodes: int, num_layers: int, seed: int) -> "HAQAgent":
        return cls(HAQConfig(episodes), num_layers, seed)

    def _action(self, state: np.ndarray, learning: bool, sigma: float) -> float:
        if not learning:
            return float(self.rng.uniform())
        return float(truncated_normal(self.ddpg.act(state)[0], sigma, self.rng)[0])

    def propose(self, env: QuantEnv, episode: int) -> Proposal:
        learning = episode >= self.config.warmup_episodes
        sigma = self.noise.sigma_at(episode - self.config.warmup_episodes)
        states: list[np.ndarray] = []
        actions: list[float] = []
        observation, previous = env.reset(), 1.0
        while True:
            weight_state = np.concatenate([observation, [0.0, previous]]).astype(np.float32)
            weight_action = self._action(weight_state, learning, sigma)
            act_state = np.concatenate([observation, [1.0, weight_action]]).astype(np.float32)
            act_action = self._action(act_state, learning, sigma)
            states += [weight_state, act_state]
            actions += [weight_action, act_action]
            previous = act_action
            result = env.step(act_action, weight_action, scored=False)
            if result.proposal is not None:
                return dataclasses.replace(result.proposal, memo=(states, actions))
            assert result.observation is not None  # set on every step but the last
            observation = result.observation

    def learn(self, env: QuantEnv, episode: int, proposal: Proposal, outcome: EpisodeOutcome) -> None:
        states, actions = proposal.memo
        if env.objective.setting.constrained:
            reward = haq_reward(outcome.accuracy, env.objective.full_accuracy)
        else:
            reward = self.config.reward_scale * outcome.reward
        stacked = np.stack(states)
        self.ddpg.remember(stacked, np.array(actions)[:, None], reward, *successors(stacked))
        if episode >= self.config.warmup_episodes:
            for _ in range(len(stacked)):
                self.ddpg.update(self.rng)

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "ddpg": self.ddpg.state_dict(), "rng": generator_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ddpg.load_state_dict(state["ddpg"])
        restore_generator(self.rng, state["rng"])
