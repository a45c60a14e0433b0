"""Fixed-size FIFO replay buffer over numpy arrays; sampling uses the caller's generator so runs are reproducible."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Batch(NamedTuple):
    """A minibatch of transitions, one row per transition."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    dones: np.ndarray


class ReplayBuffer:
    """Keeps the newest ``capacity`` transitions; ``add`` takes one transition or a stack of them."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._states = np.zeros((capacity, state_dim), np.float32)
        self._actions = np.zeros((capacity, action_dim), np.float32)
        self._rewards = np.zeros(capacity, np.float32)
        self._next_states = np.zeros((capacity, state_dim), np.float32)
        self._dones = np.zeros(capacity, np.float32)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, states: Any, actions: Any, rewards: Any, next_states: Any, dones: Any) -> None:
        states = np.atleast_2d(np.asarray(states, np.float32))
        count = len(states)
        actions = np.asarray(actions, np.float32).reshape(count, -1)
        rewards = np.broadcast_to(np.asarray(rewards, np.float32), (count,))
        next_states = np.atleast_2d(np.asarray(next_states, np.float32))
        dones = np.broadcast_to(np.asarray(dones, np.float32), (count,))
        if states.shape[1] != self._states.shape[1] or actions.shape[1] != self._actions.shape[1]:
            raise ValueError(
                f"transition shapes {states.shape[1:]}/{actions.shape[1:]} do not match the buffer "
                f"({self._states.shape[1]} state, {self._actions.shape[1]} action dims)"
            )
        # Only the newest ``capacity`` rows can survive; write them in FIFO order.
        start = max(0, count - self.capacity)
        rows = (self._next + np.arange(count - start)) % self.capacity
        self._states[rows] = states[start:]
        self._actions[rows] = actions[start:]
        self._rewards[rows] = rewards[start:]
        self._next_states[rows] = np.broadcast_to(next_states, states.shape)[start:]
        self._dones[rows] = dones[start:]
        self._next = int((self._next + count - start) % self.capacity)
        self._size = min(self.capacity, self._size + count - start)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        return self.rows(self.sample_indices(batch_size, rng))

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Rows of a uniform minibatch drawn with ``rng`` (what ``sample`` returns the transitions of)."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return rng.integers(0, self._size, size=batch_size)

    def rows(self, idx: np.ndarray) -> Batch:
        return Batch(self._states[idx], self._actions[idx], self._rewards[idx], self._next_states[idx], self._dones[idx])

    def state_dict(self) -> dict[str, Any]:
        n = self._size
        return {
            "states": self._states[:n].copy(),
            "actions": self._actions[:n].copy(),
            "rewards": self._rewards[:n].copy(),
            "next_states": self._next_states[:n].copy(),
            "dones": self._dones[:n].copy(),
            "next": self._next,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(state["rewards"])
        if n > self.capacity:
            raise ValueError(f"saved replay buffer holds {n} transitions, more than the capacity {self.capacity}")
        for name in ("states", "actions", "rewards", "next_states", "dones"):
            getattr(self, f"_{name}")[:n] = state[name]
        self._size = n
        self._next = int(state["next"])
