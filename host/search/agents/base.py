"""The interface every search agent implements, so one runner drives RL agents and plain baselines alike."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..env import EpisodeOutcome, QuantEnv

#: The agents ``autoq search --agent`` offers (built by ``autoq.host.search.runner.make_agent``).
AGENTS: tuple[str, ...] = ("autoq", "haq", "random", "uniform", "greedy")


class Agent(ABC):
    """Plays one episode at a time on a ``QuantEnv`` and learns from it; its whole state round-trips through
    ``state_dict`` so a resumed search continues exactly."""

    name: ClassVar[str]

    @abstractmethod
    def run_episode(self, env: QuantEnv, episode: int) -> EpisodeOutcome:
        """Choose a plan (through ``env.step`` or ``env.evaluate``), learn from its outcome, return the outcome."""

    def finished(self) -> bool:
        """True once the agent has nothing left to try (e.g. a baseline that enumerated its candidates)."""
        return False

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def restore_generator(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state
