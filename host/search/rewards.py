"""Reward settings of the search (AutoQ section 3): resource-constrained and accuracy-guaranteed.

* resource-constrained: a latency or energy budget, absolute (``3ms``, ``40mJ``) or a fraction of the uniform
  max-bit plan's cost (``0.5x``); reward = psi_acc * (accuracy - kl_weight * KL). An agent that learns to meet the
  budget itself learns from the Lagrangian ``reward - lambda * max(0, proposal_cost / budget - 1)`` with a
  multiplier it adapts by dual ascent (``BudgetMultiplier``); the environment enforces the budget only on proposals
  that still miss.
* accuracy-guaranteed: reward = psi_acc * (accuracy - kl_weight * KL) - psi_l * latency / latency_8bit
  - psi_e * energy / energy_8bit, with psi_acc = 2 and cost weights below 1 by default.

Accuracies are fractions in [0, 1]; KL is the mean KL divergence (nats) of the quantized model's predictions from
the float model's on the validation split: top-1 on a few hundred images moves in coarse steps, the KL does not.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from autoq.common.errors import AutoQError
from autoq.common.measurement import Measurement

METRICS: tuple[str, ...] = ("latency", "energy")
_UNITS: dict[str, dict[str, float]] = {
    "latency": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9},
    "energy": {"j": 1.0, "mj": 1e-3, "uj": 1e-6},
}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


#: Weight of the KL divergence to the float model beside top-1 in the reward's accuracy term.
DEFAULT_KL_WEIGHT = 0.5


class SearchError(AutoQError, ValueError):
    """A search cannot start or continue as asked (impossible budget, missing or mismatched checkpoint...)."""


class CostPoint(NamedTuple):
    latency_s: float
    energy_j: float

    @classmethod
    def of(cls, measurement: Measurement) -> "CostPoint":
        return cls(measurement.latency_s, measurement.energy_j)

    def get(self, metric: str) -> float:
        return self.latency_s if metric == "latency" else self.energy_j


def format_cost(metric: str, value: float) -> str:
    if metric == "latency":
        return f"{value * 1e3:.4g} ms"
    return f"{value * 1e3:.4g} mJ"


@dataclass(frozen=True)
class BudgetSpec:
    """A budget on ``metric``: ``value`` in seconds/joules, or, if ``relative``, a fraction of the max-bit plan's cost."""

    metric: str
    value: float
    relative: bool

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise SearchError(f"budget metric must be one of {METRICS}, got {self.metric!r}")
        if not self.value > 0:
            raise SearchError(f"{self.metric} budget must be positive, got {self.value}")

    @classmethod
    def parse(cls, metric: str, text: str) -> "BudgetSpec":
        """``0.5x`` (fraction of the uniform max-bit plan) or a number with a unit: ``3ms``, ``250us`` / ``40mJ``, ``0.1J``."""
        units = _UNITS.get(metric)
        if units is None:
            raise SearchError(f"budget metric must be one of {METRICS}, got {metric!r}")
        match = _BUDGET_RE.match(str(text))
        unit = match.group(2).lower() if match else ""
        if not match or (unit != "x" and unit not in units):
            raise SearchError(
                f"cannot read {metric} budget {text!r}: give a fraction of the 8-bit plan like '0.5x' "
                f"or a value with a unit ({', '.join(units)})"
            )
        value = float(match.group(1))
        if unit == "x":
            return cls(metric, value, True)
        return cls(metric, value * units[unit], False)

    def limit(self, reference: CostPoint) -> float:
        return self.value * reference.get(self.metric) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.metric} <= {self.value:g}x the max-bit plan" if self.relative else f"{self.metric} <= {format_cost(self.metric, self.value)}"


@dataclass(frozen=True)
class RewardSetting:
    """What the search optimises; ``budget`` set = resource-constrained, ``None`` = accuracy-guaranteed."""

    budget: BudgetSpec | None = None
    psi_acc: float = 2.0
    psi_latency: float = 0.5
    psi_energy: float = 0.5
    kl_weight: float = DEFAULT_KL_WEIGHT

    def __post_init__(self) -> None:
        if not self.psi_acc > 0 or self.psi_latency < 0 or self.psi_energy < 0:
            raise SearchError(
                f"reward weights need psi_acc > 0 and psi_latency, psi_energy >= 0; got "
                f"{self.psi_acc}, {self.psi_latency}, {self.psi_energy}"
            )
        if self.kl_weight < 0:
            raise SearchError(f"kl_weight must be >= 0, got {self.kl_weight}")

    @classmethod
    def resource_constrained(cls, budget: BudgetSpec, kl_weight: float = DEFAULT_KL_WEIGHT) -> "RewardSetting":
        return cls(budget, psi_acc=1.0, psi_latency=0.0, psi_energy=0.0, kl_weight=kl_weight)

    @classmethod
    def accuracy_guaranteed(cls, psi_acc: float = 2.0, psi_latency: float = 0.5, psi_energy: float = 0.5,
                            kl_weight: float = DEFAULT_KL_WEIGHT) -> "RewardSetting":
        return cls(None, psi_acc, psi_latency, psi_energy, kl_weight)

    @property
    def constrained(self) -> bool:
        return self.budget is not None

    def describe(self) -> str:
        acc = f"acc - {self.kl_weight:g}*KL" if self.kl_weight else "acc"
        if self.budget is not None:
            return (f"resource-constrained: {self.budget}; reward = {acc}, "
                    "learned with - lambda*max(0, proposal/budget - 1)")
        return (
            f"accuracy-guaranteed: reward = {self.psi_acc:g}*({acc}) - {self.psi_latency:g}*latency/latency_8bit "
            f"- {self.psi_energy:g}*energy/energy_8bit"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RewardSetting":
        budget = data.get("budget")
        return cls(BudgetSpec(**budget) if budget else None, data["psi_acc"], data["psi_latency"], data["psi_energy"],
                   data.get("kl_weight", 0.0))

    def resolve(self, reference: CostPoint, floor: CostPoint, full_accuracy: float, floor_label: str) -> "Objective":
        """Bind the setting to one network and backend; an unreachable budget is a ``SearchError`` here, before any search."""
        limit = None
        if self.budget is not None:
            metric = self.budget.metric
            limit = self.budget.limit(reference)
            if limit < floor.get(metric):
                raise SearchError(
                    f"{metric} budget {format_cost(metric, limit)} ({self.budget}) cannot be met: the cheapest plan the "
                    f"search can reach ({floor_label}) needs {format_cost(metric, floor.get(metric))}"
                )
        return Objective(self, reference, floor, full_accuracy, limit)


@dataclass(frozen=True)
class Objective:
    """A reward setting bound to its reference costs (uniform max-bit and min-bit plans) and full-precision accuracy."""

    setting: RewardSetting
    reference: CostPoint
    floor: CostPoint
    full_accuracy: float
    limit: float | None

    def fits(self, cost: CostPoint) -> bool:
        budget = self.setting.budget
        return budget is None or cost.get(budget.metric) <= self.limit  # type: ignore[operator]

    def cost_terms(self, cost: CostPoint) -> tuple[float, float]:
        """The reward's cost terms: psi_l * latency / latency_8bit and psi_e * energy / energy_8bit (both 0 under a
        budget, whose setting has zero cost weights)."""
        s = self.setting
        return s.psi_latency * cost.latency_s / self.reference.latency_s, s.psi_energy * cost.energy_j / self.reference.energy_j

    def reward(self, accuracy: float, cost: CostPoint, kl: float = 0.0) -> float:
        """psi_acc * (accuracy - kl_weight * kl) - psi_l * latency / latency_8bit - psi_e * energy / energy_8bit (the
        paper's accuracy-guaranteed reward with the KL term; psi_acc * (accuracy - kl_weight * kl) under a budget)."""
        latency, energy = self.cost_terms(cost)
        return self.setting.psi_acc * (accuracy - self.setting.kl_weight * kl) - latency - energy

    def overshoot(self, cost: CostPoint) -> float:
        """How far ``cost`` is over the budget, relative to it: max(0, cost / budget - 1); 0 without a budget."""
        budget = self.setting.budget
        if budget is None:
            return 0.0
        return max(0.0, cost.get(budget.metric) / self.limit - 1.0)  # type: ignore[operator]

    def penalty(self, cost: CostPoint) -> float:
        """The cost the search trades accuracy against: under a budget, the budgeted metric; otherwise the reward's
        cost terms in units of accuracy, so that ``reward == psi_acc * (accuracy - penalty)``."""
        budget = self.setting.budget
        if budget is not None:
            return cost.get(budget.metric)
        latency, energy = self.cost_terms(cost)
        return (latency + energy) / self.setting.psi_acc


@dataclass
class BudgetMultiplier:
    """The Lagrange multiplier ``value`` (lambda) of the budget, learned by projected dual (sub)gradient ascent.

    An agent learns from the Lagrangian reward ``lagrangian``: the scored plan's reward minus lambda times its
    proposal's relative overshoot max(0, proposal_cost / budget - 1), so a proposal within the budget is worth its
    reward. After learning from an outcome it takes one dual step, ``update``: lambda <- max(0, lambda + lr *
    clip(proposal_cost / budget - 1, -clip, clip)): lambda grows while proposals miss the budget and shrinks while
    they leave it unused, so the penalty settles where the proposals meet the budget, neither so soft that they
    overshoot nor so hard that they fall far below it. The constraint residual is clipped so that one wild proposal
    of an exploring agent moves lambda by at most ``lr * clip``. Without a budget lambda stays put (and no proposal
    overshoots).

    Contract for batched search: ``update`` is called exactly once per outcome, in episode order, when the agent
    learns from it (never while a plan is being scored), so that scoring K plans at once and learning from them in
    order gives the same multiplier, and the same search, as one plan at a time. ``value`` is part of the agent's
    checkpointed state.
    """

    value: float
    lr: float
    clip: float

    def __post_init__(self) -> None:
        if self.value < 0 or self.lr < 0 or not self.clip > 0:
            raise SearchError(f"budget multiplier and its lr must be >= 0 and its clip > 0, "
                              f"got {self.value}, {self.lr}, {self.clip}")

    def lagrangian(self, objective: Objective, reward: float, proposed: CostPoint) -> float:
        """``reward`` minus lambda times the relative overshoot of the proposal that cost ``proposed``."""
        return reward - self.value * objective.overshoot(proposed)

    def update(self, objective: Objective, proposed: CostPoint) -> None:
        """One dual step on the outcome of a proposal that cost ``proposed`` (see the class docstring)."""
        budget = objective.setting.budget
        if budget is None:
            return
        residual = proposed.get(budget.metric) / objective.limit - 1.0  # type: ignore[operator]
        self.value = max(0.0, self.value + self.lr * min(max(residual, -self.clip), self.clip))


def haq_reward(accuracy: float, full_accuracy: float) -> float:
    """HAQ's reward, 0.1 per percentage point of accuracy against full precision."""
    return 0.1 * 100.0 * (accuracy - full_accuracy)
