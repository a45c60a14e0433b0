"""Settings shared by the DDPG-based agents (AutoQ's controllers and HAQ): the papers' hyperparameters, which are
``ActorCriticConfig``'s defaults, the exploration noise and the reward scale."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoq.host.rl.actor_critic import ActorCriticConfig


@dataclass(frozen=True)
class DDPGAgentConfig:
    episodes: int
    hidden: tuple[int, ...] = ActorCriticConfig.hidden
    actor_lr: float = ActorCriticConfig.actor_lr
    critic_lr: float = ActorCriticConfig.critic_lr
    batch_size: int = ActorCriticConfig.batch_size
    buffer_size: int = ActorCriticConfig.buffer_size
    tau: float = ActorCriticConfig.tau
    baseline_alpha: float = 0.5  # AMC/HAQ's moving-average reward baseline
    noise_sigma: float = 0.5
    reward_scale: float = 10.0  # extrinsic reward x 10 = HAQ's 0.1 per accuracy percentage point

    def actor_critic(self, state_dim: int, action_dim: int, *, gamma: float, learning_starts: int) -> ActorCriticConfig:
        """A DDPG actor-critic with these hyperparameters."""
        return ActorCriticConfig.ddpg(
            state_dim, action_dim, hidden=self.hidden, actor_lr=self.actor_lr, critic_lr=self.critic_lr,
            batch_size=self.batch_size, buffer_size=self.buffer_size, tau=self.tau, gamma=gamma,
            baseline_alpha=self.baseline_alpha, learning_starts=learning_starts,
        )


def successors(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next states and done flags of one episode's consecutive states: the last state ends the episode."""
    next_states = np.concatenate([states[1:], np.zeros_like(states[:1])])
    dones = np.zeros(len(states))
    dones[-1] = 1.0
    return next_states, dones
