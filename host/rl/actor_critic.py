"""One deterministic-policy actor-critic (TD3 family); DDPG is a configuration of it, as in stable-baselines3.

TD3 = twin critics + delayed policy updates + target policy smoothing; DDPG = one critic, no delay, no smoothing.

An actor-critic with ``gamma == 0`` (one-step transitions, e.g. AutoQ's low-level controller) has no target
networks: its critic's target is the reward itself, so they would never be read.

Checkpointing: ``state_dict`` returns the last full snapshot (networks, targets, optimisers, buffer) and a journal of
what happened since (transitions added, minibatch rows drawn), both ``Sealed``, so a search checkpoint writes the
~3 MB snapshot once per ``snapshot_every`` calls and a few kB per call otherwise; ``load_state_dict`` loads the
snapshot and replays the journal, which repeats the same updates on the same rows and reaches the same weights.
"""
from __future__ import annotations

import copy
import functools
import operator
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .buffer import ReplayBuffer
from .networks import Actor, Critic
from .sealed import Sealed

SNAPSHOT_EVERY = 50
"""``state_dict`` calls (a search makes one per episode) between full snapshots; at most this many episodes of
updates are replayed on resume."""


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
    """target <- (1 - tau) * target + tau * source, parameter by parameter (the same two ops on all at once)."""
    with torch.no_grad():
        targets: list[torch.Tensor] = list(target.parameters())
        sources: list[torch.Tensor] = list(source.parameters())
        torch._foreach_mul_(targets, 1.0 - tau)
        torch._foreach_add_(targets, sources, alpha=tau)


class ActorCritic:
    """Networks, targets, optimisers and replay buffer of one agent; the caller owns exploration noise."""

    def __init__(self, config: ActorCriticConfig, snapshot_every: int | None = None) -> None:
        self.config = config
        self.actor = Actor(config.state_dim, config.action_dim, config.hidden)
        self.critics = nn.ModuleList(Critic(config.state_dim, config.action_dim, config.hidden) for _ in range(config.n_critics))
        bootstraps = config.gamma != 0
        self.actor_target = copy.deepcopy(self.actor) if bootstraps else None
        self.critics_target = copy.deepcopy(self.critics) if bootstraps else None
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critics.parameters(), lr=config.critic_lr)
        self.buffer = ReplayBuffer(config.buffer_size, config.state_dim, config.action_dim)
        self.updates = 0
        self.reward_baseline: float | None = None
        self.snapshot_every = max(1, SNAPSHOT_EVERY if snapshot_every is None else snapshot_every)
        self._snapshot: Sealed | None = None
        self._journal: list[Sealed] = []
        self._ops: list[tuple[Any, ...]] = []  # since the last state_dict: ("add", arrays) / ("update", rows, noise)

    def act(self, states: np.ndarray) -> np.ndarray:
        """Deterministic actions for a stack of states, shape (n, action_dim), in one forward pass."""
        with torch.no_grad():
            return self.actor(torch.as_tensor(np.atleast_2d(states), dtype=torch.float32)).numpy().astype(np.float64)

    def remember(self, states: Any, actions: Any, rewards: Any, next_states: Any, dones: Any) -> None:
        arrays = [np.array(x, np.float32) for x in (states, actions, rewards)]
        following = None if next_states is states else np.array(next_states, np.float32)  # one-step: the same rows
        self._ops.append(("add", *arrays, following, np.array(dones, np.float32)))
        self.buffer.add(states, actions, rewards, next_states, dones)

    def update(self, rng: np.random.Generator) -> UpdateStats | None:
        """One gradient step on a minibatch drawn with ``rng``; ``None`` until ``learning_starts`` transitions are stored."""
        cfg = self.config
        if len(self.buffer) < max(1, cfg.learning_starts):
            return None
        rows = self.buffer.sample_indices(cfg.batch_size, rng)
        noise = None
        if cfg.target_noise > 0 and self.actor_target is not None:
            noise = (torch.randn(cfg.batch_size, cfg.action_dim) * cfg.target_noise).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
        self._ops.append(("update", rows.astype(np.int32), noise))
        return self._learn(rows, noise)

    def _learn(self, rows: np.ndarray, noise: torch.Tensor | None) -> UpdateStats:
        cfg = self.config
        s, a, r, s2, d = (torch.as_tensor(x) for x in self.buffer.rows(rows))
        if cfg.baseline_alpha > 0:
            batch_mean = float(r.mean())
            if self.reward_baseline is None:
                self.reward_baseline = batch_mean
            self.reward_baseline += cfg.baseline_alpha * (batch_mean - self.reward_baseline)
            r = r - self.reward_baseline
        if self.actor_target is None or self.critics_target is None:
            target = r  # gamma 0: r + 0 * (1 - d) * Q' is r
        else:
            with torch.no_grad():
                next_actions = self.actor_target(s2)
                if noise is not None:
                    next_actions = (next_actions + noise).clamp(0.0, 1.0)
                next_q = torch.stack([c(s2, next_actions) for c in self.critics_target]).min(dim=0).values
                target = r + cfg.gamma * (1.0 - d) * next_q
        # summed left to right like sum(), without its int start that would type the loss as Tensor | int
        critic_loss = functools.reduce(operator.add, (nn.functional.mse_loss(c(s, a), target) for c in self.critics))
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        self.updates += 1
        actor_loss = None
        if self.updates % cfg.policy_delay == 0:
            critic = self.critics[0]
            critic.requires_grad_(False)  # the actor's loss needs gradients through the critic, not for its weights
            loss = -critic(s, self.actor(s)).mean()
            self.actor_optim.zero_grad()
            loss.backward()
            critic.requires_grad_(True)
            self.actor_optim.step()
            if self.actor_target is not None and self.critics_target is not None:
                soft_update(self.actor_target, self.actor, cfg.tau)
                soft_update(self.critics_target, self.critics, cfg.tau)
            actor_loss = float(loss.detach())
        return UpdateStats(float(critic_loss.detach()), actor_loss)

    _MODULES = ("actor", "critics", "actor_target", "critics_target", "actor_optim", "critic_optim", "buffer")

    def _full_state(self) -> dict[str, Any]:
        """A deep copy (torch's state dicts alias live tensors, which later updates would change)."""
        parts = {name: getattr(self, name).state_dict() for name in self._MODULES if getattr(self, name) is not None}
        return copy.deepcopy({**parts, "updates": self.updates, "reward_baseline": self.reward_baseline})

    def state_dict(self) -> dict[str, Any]:
        """The last snapshot and the journal since, sealed (see the module docstring)."""
        if self._ops:
            self._journal.append(Sealed(tuple(self._ops)))
            self._ops = []
        if self._snapshot is None or len(self._journal) >= self.snapshot_every:
            self._snapshot, self._journal = Sealed(self._full_state()), []
        return {"config": asdict(self.config), "snapshot": self._snapshot, "journal": list(self._journal)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
        if saved != asdict(self.config):
            raise ValueError(f"saved actor-critic was built with {saved}, this one with {asdict(self.config)}")
        if "snapshot" not in state:
            raise ValueError("saved actor-critic state has no snapshot and journal: it was saved by an older autoq")
        full = state["snapshot"].value
        for name in self._MODULES:
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(full[name])
        self.updates = int(full["updates"])
        self.reward_baseline = full["reward_baseline"]
        for chunk in state["journal"]:
            for op in chunk.value:
                if op[0] == "add":
                    states, actions, rewards, following, dones = op[1:]
                    self.buffer.add(states, actions, rewards, states if following is None else following, dones)
                else:
                    self._learn(op[1].astype(np.int64), op[2])
        self._snapshot, self._journal, self._ops = state["snapshot"], list(state["journal"]), []
