"""The strong non-RL baseline: per-kernel Fisher sensitivity and an exact allocation under the budget (HAWQ-style).

Each layer offers a set of candidate configurations, each costed by the backend (the layer's own cost in a measured
plan, so the cost model's per-layer cost as a function of the tile bits) and scored by the estimated loss of the
environment's ``Sensitivity`` (kernels' and activations' Fisher-estimated loss):

* ``oracle`` (kernel-wise): for every activation width, the layer's kernels sorted by sensitivity and cut into the
  overlay's Dm-row tiles; starting from every tile at the widest bits, the tile whose next bit down adds the least
  estimated loss loses it, down to every tile at the narrowest bits. Tiles of one layer cost the same per bit, and
  the loss of a kernel is convex in its bits, so this chain holds the least-loss tile configuration at every total
  of tile bits.
* ``oracle-layer`` (layer-wise): every (weight bits, activation bits) pair, one width for the whole layer.

Then a multiple-choice knapsack picks one candidate per layer minimising the summed estimated loss subject to the
budget, exactly by dynamic programming over the budget cut into ``resolution`` steps (costs rounded up, so the
result fits the budget under the per-layer costs). A backend whose total is not the sum of its layers is handled by
measuring the chosen plan and shrinking the budget until it fits. Under a budget it runs one episode. In the
accuracy-guaranteed setting it plans for a sweep of budgets between the narrowest and widest plans, one per episode
(at most ``GUARANTEED_SWEEP``), and the search keeps the one with the highest reward.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np

from autoq.common.plan import LayerPlan, QuantPlan

from ..env import Proposal, QuantEnv
from ..rewards import CostPoint
from .base import Agent

DEFAULT_RESOLUTION = 4000
GUARANTEED_SWEEP = 12


class Candidate:
    """One configuration of one layer: kernel bits, activation bits, estimated loss; its cost is filled in later."""

    __slots__ = ("weight_bits", "act_bits", "loss", "cost")

    def __init__(self, weight_bits: np.ndarray, act_bits: int, loss: float) -> None:
        self.weight_bits, self.act_bits, self.loss, self.cost = weight_bits, act_bits, loss, math.inf


def knapsack(costs: Sequence[np.ndarray], losses: Sequence[np.ndarray], limit: float, resolution: int = DEFAULT_RESOLUTION) -> list[int] | None:
    """One index per group minimising the summed loss with the summed cost <= ``limit``, exact on costs rounded up to
    multiples of ``limit / resolution`` (so the choice fits ``limit``); None if no choice fits."""
    if not limit > 0:
        return None
    step = limit / resolution
    dp = np.full(resolution + 1, np.inf)
    dp[0] = 0.0
    choices = []
    for group_costs, group_losses in zip(costs, losses):
        bins = np.ceil(np.asarray(group_costs, np.float64) / step - 1e-9).astype(np.int64)
        new = np.full(resolution + 1, np.inf)
        choice = np.full(resolution + 1, -1, np.int64)
        for j, (b, loss) in enumerate(zip(bins, group_losses)):
            if b > resolution:
                continue
            shifted = np.full(resolution + 1, np.inf)
            shifted[b:] = dp[: resolution + 1 - b] + loss
            better = shifted < new
            new[better], choice[better] = shifted[better], j
        dp = new
        choices.append((choice, bins))
    end = int(np.argmin(dp))
    if not np.isfinite(dp[end]):
        return None
    picked = []
    for choice, bins in reversed(choices):
        j = int(choice[end])
        picked.append(j)
        end -= int(bins[j])
    return picked[::-1]


class OracleAgent(Agent):
    """Kernel-wise: sensitivity-sorted Dm tiles, exact knapsack under the budget (see the module docstring)."""

    name: ClassVar[str] = "oracle"
    layer_wise: ClassVar[bool] = False

    def __init__(self, resolution: int = DEFAULT_RESOLUTION, sweep: int = GUARANTEED_SWEEP) -> None:
        self.resolution = resolution
        self.sweep = max(1, sweep)
        self._episodes_done = 0
        self._constrained: bool | None = None  # known at the first episode

    @classmethod
    def for_search(cls, episodes: int, num_layers: int, seed: int) -> "OracleAgent":
        return cls(sweep=min(episodes, GUARANTEED_SWEEP))

    def finished(self) -> bool:
        return self._episodes_done >= (1 if self._constrained else self.sweep)

    def propose(self, env: QuantEnv, episode: int) -> Proposal:
        objective = env.objective
        self._constrained = objective.setting.constrained
        if self._constrained:
            limit, metric = float(objective.limit), objective.setting.budget.metric  # type: ignore[union-attr, arg-type]
        else:  # a sweep of latency budgets from the widest plan down towards the narrowest
            metric = "latency"
            top, floor = objective.reference.latency_s, objective.floor.latency_s
            share = 1.0 - self._episodes_done / self.sweep
            limit = floor + (top - floor) * share
        plan = self.allocate(env, limit, metric)
        self._episodes_done += 1
        return Proposal(plan, layer_wise=self.layer_wise)

    # -- allocation -----------------------------------------------------------------------------------------------
    def candidates(self, env: QuantEnv, i: int) -> list[Candidate]:
        """Layer ``i``'s candidate configurations (see the module docstring)."""
        sens, lo, hi = env.sensitivity, env.min_bits, env.max_bits
        c_out = env.network[i].c_out
        out = []
        if self.layer_wise:
            for w in range(hi, lo - 1, -1):
                bits = np.full(c_out, w)
                weight_loss = float(sens.kernel_loss(i, bits).sum())
                out += [Candidate(bits, a, weight_loss + float(sens.act_loss[i, a - 1])) for a in range(hi, lo - 1, -1)]
            return out
        tiles = env.tiles[i]
        chain, bits = [np.full(c_out, hi)], np.full(c_out, hi)
        while True:
            steps = [(float((sens.weight_loss[i][t, bits[t] - 2] - sens.weight_loss[i][t, bits[t] - 1]).sum()), k)
                     for k, t in enumerate(tiles) if bits[t[0]] > lo]
            if not steps:
                break
            _, k = min(steps)
            bits = bits.copy()
            bits[tiles[k]] -= 1
            chain.append(bits)
        for bits in chain:
            weight_loss = float(sens.kernel_loss(i, bits).sum())
            out += [Candidate(bits, a, weight_loss + float(sens.act_loss[i, a - 1])) for a in range(hi, lo - 1, -1)]
        return out

    def allocate(self, env: QuantEnv, limit: float, metric: str) -> QuantPlan:
        """The least estimated-loss plan whose ``metric`` cost (summed over layers) is at most ``limit``."""
        network = env.network
        groups = [self.candidates(env, i) for i in range(len(network))]
        # cost all layers' j-th candidates in one measured plan, every j in one call
        columns = range(max(len(g) for g in groups))
        measurements = env.measure_many([_plan(network, [g[min(j, len(g) - 1)] for g in groups]) for j in columns])
        for j, measurement in zip(columns, measurements):
            for group, layer_cost in zip(groups, measurement.layers):
                if j < len(group):
                    group[j].cost = layer_cost.latency_s if metric == "latency" else layer_cost.energy_j
        pruned = [_pareto(g) for g in groups]
        widest = env.measure(_plan(network, [g[0] for g in groups]))
        offset = CostPoint.of(widest).get(metric) - sum(g[0].cost for g in groups)  # what is not in any layer
        budget = limit - offset
        plan = _plan(network, [g[-1] for g in pruned])  # the cheapest: resolve() checked it fits
        for _ in range(12):
            picked = knapsack([np.array([c.cost for c in g]) for g in pruned], [np.array([c.loss for c in g]) for g in pruned],
                              budget, self.resolution)
            if picked is None:
                break
            candidate = _plan(network, [g[j] for g, j in zip(pruned, picked)])
            if CostPoint.of(env.measure(candidate)).get(metric) <= limit:
                plan = candidate
                break
            budget *= 0.98  # the backend's total is not the sum of its layers: tighten and solve again
        return plan

    def state_dict(self) -> dict[str, Any]:
        return {"episodes_done": self._episodes_done, "constrained": self._constrained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._episodes_done = int(state["episodes_done"])
        self._constrained = None if state["constrained"] is None else bool(state["constrained"])


class LayerOracleAgent(OracleAgent):
    """Layer-wise: one weight width per layer, the same exact knapsack (see the module docstring)."""

    name: ClassVar[str] = "oracle-layer"
    layer_wise: ClassVar[bool] = True


def _plan(network, chosen: Sequence[Candidate]) -> QuantPlan:
    return QuantPlan(tuple(LayerPlan(l.name, tuple(int(b) for b in c.weight_bits), int(c.act_bits)) for l, c in zip(network, chosen)))


def _pareto(group: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both cost and loss, the most expensive first and the cheapest last."""
    kept: list[Candidate] = []
    for c in sorted(group, key=lambda c: (c.cost, c.loss)):
        if not kept or c.loss < kept[-1].loss:
            kept.append(c)
    return kept[::-1]
