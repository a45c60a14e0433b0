"""One deterministic-policy actor-critic (TD3 family); DDPG is a configuration of it, as in stable-baselines3.

TD3 = twin critics + delayed policy updates + target policy smoothing; DDPG = one critic, no delay, no smoothing.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .buffer import ReplayBuffer
from .networks import Actor, Critic


@dataclass(frozen=True)
class ActorCriticConfig:
    state_dim: int
    action_dim: int
    hidden: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    batch_size: int = 64
    buffer_size: int = 2000
    tau: float = 0.01
    gamma: float = 1.0
    n_critics: int = 1
    policy_delay: int = 1
    target_noise: float = 0.0
    target_noise_clip: float = 0.5
    learning_starts: int = 64  # transitions in the buffer before the first update
    baseline_alpha: float = 0.0  # > 0: subtract a moving average of batch mean rewards (AMC/HAQ's reward baseline)

    @classmethod
    def ddpg(cls, state_dim: int, action_dim: int, **overrides: Any) -> "ActorCriticConfig":
        return cls(state_dim, action_dim, **overrides)

    @classmethod
    def td3(cls, state_dim: int, action_dim: int, **overrides: Any) -> "ActorCriticConfig":
        return cls(state_dim, action_dim, **{"n_critics": 2, "policy_delay": 2, "target_noise": 0.2, **overrides})

    def with_changes(self, **changes: Any) -> "ActorCriticConfig":
        return replace(self, **changes)


class UpdateStats(NamedTuple):
    critic_loss: float
    actor_loss: float | None


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.mul_(1.0 - tau).add_(s, alpha=tau)


class ActorCritic:
    """Networks, targets, optimisers and replay buffer of one agent; the caller owns exploration noise."""

    def __init__(self, config: ActorCriticConfig) -> None:
        self.config = config
        self.actor = Actor(config.state_dim, config.action_dim, config.hidden)
        self.critics = nn.ModuleList(Critic(config.state_dim, config.action_dim, config.hidden) for _ in range(config.n_critics))
        self.actor_target = copy.deepcopy(self.actor)
        self.critics_target = copy.deepcopy(self.critics)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critics.parameters(), lr=config.critic_lr)
        self.buffer = ReplayBuffer(config.buffer_size, config.state_dim, config.action_dim)
        self.updates = 0
        self.reward_baseline: float | None = None

    def act(self, states: np.ndarray) -> np.ndarray:
        """Deterministic actions for a stack of states, shape (n, action_dim), in one forward pass."""
        with torch.no_grad():
            return self.actor(torch.as_tensor(np.atleast_2d(states), dtype=torch.float32)).numpy().astype(np.float64)

    def remember(self, states: Any, actions: Any, rewards: Any, next_states: Any, dones: Any) -> None:
        self.buffer.add(states, actions, rewards, next_states, dones)

    def update(self, rng: np.random.Generator) -> UpdateStats | None:
        """One gradient step on a minibatch drawn with ``rng``; ``None`` until ``learning_starts`` transitions are stored."""
        cfg = self.config
        if len(self.buffer) < max(1, cfg.learning_starts):
            return None
        s, a, r, s2, d = (torch.as_tensor(x) for x in self.buffer.sample(cfg.batch_size, rng))
        if cfg.baseline_alpha > 0:
            batch_mean = float(r.mean())
            if self.reward_baseline is None:
                self.reward_baseline = batch_mean
            self.reward_baseline += cfg.baseline_alpha * (batch_mean - self.reward_baseline)
            r = r - self.reward_baseline
        with torch.no_grad():
            next_actions = self.actor_target(s2)
            if cfg.target_noise > 0:
                smoothing = (torch.randn_like(next_actions) * cfg.target_noise).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
                next_actions = (next_actions + smoothing).clamp(0.0, 1.0)
            next_q = torch.stack([c(s2, next_actions) for c in self.critics_target]).min(dim=0).values
            target = r + cfg.gamma * (1.0 - d) * next_q
        critic_loss = sum(nn.functional.mse_loss(c(s, a), target) for c in self.critics)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        self.updates += 1
        actor_loss = None
        if self.updates % cfg.policy_delay == 0:
            loss = -self.critics[0](s, self.actor(s)).mean()
            self.actor_optim.zero_grad()
            loss.backward()
            self.actor_optim.step()
            soft_update(self.actor_target, self.actor, cfg.tau)
            soft_update(self.critics_target, self.critics, cfg.tau)
            actor_loss = float(loss.detach())
        return UpdateStats(float(critic_loss.detach()), actor_loss)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy: torch's state dicts alias live tensors, which later updates would change)."""
        return copy.deepcopy({
            "config": asdict(self.config),
            "actor": self.actor.state_dict(),
            "critics": self.critics.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critics_target": self.critics_target.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "buffer": self.buffer.state_dict(),
            "updates": self.updates,
            "reward_baseline": self.reward_baseline,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
        if saved != asdict(self.config):
            raise ValueError(f"saved actor-critic was built with {saved}, this one with {asdict(self.config)}")
        for name in ("actor", "critics", "actor_target", "critics_target", "actor_optim", "critic_optim", "buffer"):
            getattr(self, name).load_state_dict(state[name])
        self.updates = int(state["updates"])
        self.reward_baseline = state["reward_baseline"]
