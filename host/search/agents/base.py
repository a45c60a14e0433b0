"""The interface every search agent implements, so one runner drives RL agents and plain baselines alike, and the
registry of the agents a search can run (``AGENTS``; what ``autoq search --agent`` offers and ``make_agent`` builds)."""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..env import EpisodeOutcome, Proposal, QuantEnv
from ..rewards import SearchError

#: The agents a search can run: name -> ``module:Class`` under ``autoq.host.search.agents``, imported when used
#: (so the CLI lists them without importing torch). Each class's ``name`` is its key here.
AGENTS: dict[str, str] = {
    "autoq": "autoq:AutoQAgent",
    "haq": "haq:HAQAgent",
    "random": "baselines:RandomAgent",
    "uniform": "baselines:UniformAgent",
    "greedy": "baselines:GreedyAgent",
    "oracle": "oracle:OracleAgent",
    "oracle-layer": "oracle:LayerOracleAgent",
}


class Agent(ABC):
    """Plays episodes on a ``QuantEnv`` and learns from them; its whole state round-trips through ``state_dict`` so
    a resumed search continues exactly.

    An episode is three steps: ``propose`` (roll the current policy through the environment: a plan and the agent's
    memo, consuming the agent's generator), ``QuantEnv.evaluate`` (the environment scores the plan; no agent state
    is involved) and ``learn`` (the agent stores the episode's transitions and updates). ``run_episode`` does the
    three in turn; a batched search (``autoq.host.search.parallel``) proposes K plans, scores them at once and
    learns from them in episode order, which is the same as ``run_episode`` for K = 1.
    """

    name: ClassVar[str]
    #: whether the agent's warm-up and exploration noise are spread over the episode budget (so a search whose
    #: budget is extended differs from an uninterrupted one of the extended length)
    budget_scheduled: ClassVar[bool] = False

    @classmethod
    def for_search(cls, episodes: int, num_layers: int, seed: int) -> "Agent":
        """The agent with its default settings for a search of ``episodes`` episodes on ``num_layers`` layers."""
        return cls()

    @property
    def warmup_episodes(self) -> int:
        """Episodes of random exploration at the start: the search never selects its plan from them."""
        return 0

    @abstractmethod
    def propose(self, env: QuantEnv, episode: int) -> Proposal | None:
        """The plan of ``episode`` (through ``env.step(..., scored=False)``, or a whole plan), None when the agent has
        nothing left to try. Proposals of later episodes may come before the agent has learnt from this one."""

    def learn(self, env: QuantEnv, episode: int, proposal: Proposal, outcome: EpisodeOutcome) -> None:
        """Learn from the scored ``outcome`` of ``proposal`` (called once per proposal, in episode order); an agent
        that does not learn from outcomes keeps this."""
        return None

    def run_episode(self, env: QuantEnv, episode: int) -> EpisodeOutcome:
        """Propose a plan, score it, learn from its outcome; return the outcome."""
        proposal = self.propose(env, episode)
        if proposal is None:
            raise SearchError(f"the {self.name} agent has nothing left to try")
        outcome = env.evaluate(proposal.plan, proposal.layer_wise)
        self.learn(env, episode, proposal, outcome)
        return outcome

    def finished(self) -> bool:
        """True once the agent has nothing left to try (e.g. a baseline that enumerated its candidates)."""
        return False

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


def restore_generator(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state


def agent_class(name: str) -> type[Agent]:
    """The class registered as ``name`` in ``AGENTS``."""
    if name not in AGENTS:
        raise SearchError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
    module, _, attribute = AGENTS[name].partition(":")
    cls = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    if cls.name != name:
        raise SearchError(f"agent registry: {AGENTS[name]} is named {cls.name!r}, registered as {name!r}")
    return cls


def make_agent(name: str, episodes: int, num_layers: int, seed: int) -> Agent:
    """The agent ``name`` for a search of ``episodes`` episodes on a network of ``num_layers`` layers."""
    return agent_class(name).for_search(episodes, num_layers, seed)
