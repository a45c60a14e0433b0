"""Non-RL baselines driven by the same runner: uniform, random search, and a greedy sensitivity allocator."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from autoq.common.plan import LayerPlan, QuantPlan

from ..env import EpisodeOutcome, Proposal, QuantEnv
from ..rewards import CostPoint
from .base import Agent, generator_state, restore_generator


class UniformAgent(Agent):
    """One uniform plan (w bits for every kernel, a bits for every activation) per episode, from the widest down.

    Under a budget it skips plans over the budget and plans dominated by a budget-meeting plan already tried
    (fewer weight and activation bits cannot be more accurate), so it ends with the best uniform plan that fits.
    """

    name: ClassVar[str] = "uniform"

    def __init__(self) -> None:
        self._candidates: list[tuple[int, int]] | None = None
        self._cursor = 0
        self._fitting: list[tuple[int, int]] = []

    def _viable(self, env: QuantEnv, weight_bits: int, act_bits: int) -> bool:
        if not env.objective.setting.constrained:
            return True
        if any(w >= weight_bits and a >= act_bits for w, a in self._fitting):
            return False
        return env.objective.fits(CostPoint.of(env.measure(QuantPlan.uniform(env.network, weight_bits, act_bits))))

    def _advance(self, env: QuantEnv) -> None:
        if self._candidates is None:
            bits = range(env.max_bits, env.min_bits - 1, -1)
            self._candidates = sorted(((w, a) for w in bits for a in bits), key=lambda wa: (-sum(wa), -wa[0]))
        while self._cursor < len(self._candidates) and not self._viable(env, *self._candidates[self._cursor]):
            self._cursor += 1

    def propose(self, env: QuantEnv, episode: int) -> Proposal | None:
        self._advance(env)
        if self.finished():
            return None
        weight_bits, act_bits = self._candidates[self._cursor]  # type: ignore[index]
        self._cursor += 1
        return Proposal(QuantPlan.uniform(env.network, weight_bits, act_bits), memo=(weight_bits, act_bits))

    def learn(self, env: QuantEnv, episode: int, proposal: Proposal, outcome: EpisodeOutcome) -> None:
        if outcome.fits:
            self._fitting.append(proposal.memo)
        self._advance(env)

    def finished(self) -> bool:
        return self._candidates is not None and self._cursor >= len(self._candidates)

    def state_dict(self) -> dict[str, Any]:
        return {"candidates": self._candidates, "cursor": self._cursor, "fitting": list(self._fitting)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._candidates = None if state["candidates"] is None else [tuple(c) for c in state["candidates"]]
        self._cursor = int(state["cursor"])
        self._fitting = [tuple(f) for f in state["fitting"]]


class RandomAgent(Agent):
    """Random search: every layer's activation action and every kernel's weight action uniform in [0, 1]."""

    name: ClassVar[str] = "random"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    @classmethod
    def for_search(cls, episodes: int, num_layers: int, seed: int) -> "RandomAgent":
        return cls(seed)

    def propose(self, env: QuantEnv, episode: int) -> Proposal:
        env.reset()
        while True:
            result = env.step(self.rng.uniform(), self.rng.uniform(size=env.layer.c_out), scored=False)
            if result.proposal is not None:
                return result.proposal

    def state_dict(self) -> dict[str, Any]:
        return {"rng": generator_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_generator(self.rng, state["rng"])


def noise_share(bits: np.ndarray | int, low: int, high: int) -> np.ndarray:
    """Quantization noise at ``bits`` as a fraction of the noise at ``low`` bits (noise power ~ 4**-bits); 0 at ``high``."""
    return (4.0 ** -np.asarray(bits, np.float64) - 4.0**-high) / (4.0**-low - 4.0**-high)


class GreedyAgent(Agent):
    """Greedy sensitivity-based allocation in one episode.

    Sensitivity: with every other layer at the widest bits, the accuracy lost when one layer's weights (or its
    activations) drop to the narrowest bits, one evaluator call each; within a layer, a kernel's share of the
    weight sensitivity is proportional to its squared weight scale (its quantization error; equal shares when no
    scales are given). Estimated loss of a plan = sum of sensitivity x noise share of its bit-widths. Starting
    from the widest plan, it repeatedly takes the move with the least estimated loss per unit of cost saved (the
    cost measured by the backend): one activation bit off a layer, or one weight bit off the least important
    ``tile_rows`` kernels among a layer's widest (the overlay groups kernels into tiles of that many rows, so a
    tile's cost drops only when all of its rows do). Under a budget it stops when the plan fits; in the
    accuracy-guaranteed setting, when no move raises the estimated reward.
    """

    name: ClassVar[str] = "greedy"

    def __init__(self, tile_rows: int | None = None) -> None:
        self.tile_rows = tile_rows
        self._done = False

    def finished(self) -> bool:
        return self._done

    def propose(self, env: QuantEnv, episode: int) -> Proposal:
        plan = self.allocate(env)
        self._done = True
        return Proposal(plan)

    def sensitivities(self, env: QuantEnv) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy lost per layer with its weights, and with its activations, at ``env.min_bits``."""
        widest = QuantPlan.uniform(env.network, env.max_bits, env.max_bits)
        base = env.accuracy(widest)
        weight_loss, act_loss = [], []
        for layer_plan in widest.layers:
            narrow_w = LayerPlan(layer_plan.name, (env.min_bits,) * len(layer_plan.weight_bits), env.max_bits)
            narrow_a = LayerPlan(layer_plan.name, layer_plan.weight_bits, env.min_bits)
            weight_loss.append(max(0.0, base - env.accuracy(widest.replace(layer_plan.name, narrow_w))))
            act_loss.append(max(0.0, base - env.accuracy(widest.replace(layer_plan.name, narrow_a))))
        return np.array(weight_loss), np.array(act_loss)

    def allocate(self, env: QuantEnv) -> QuantPlan:
        weight_loss, act_loss = self.sensitivities(env)
        shares = []
        for scales in env.kernel_scales:
            energy = scales**2
            shares.append(energy / energy.sum() if energy.sum() > 0 else np.full(len(scales), 1.0 / len(scales)))
        rows = self.tile_rows or _tile_rows(env)
        lo, hi = env.min_bits, env.max_bits
        acts = [hi] * len(env.network)
        weights = [np.full(layer.c_out, hi) for layer in env.network]

        def estimated_loss(i: int) -> float:
            return float(act_loss[i] * noise_share(acts[i], lo, hi) + weight_loss[i] * (shares[i] * noise_share(weights[i], lo, hi)).sum())

        def plan() -> QuantPlan:
            return QuantPlan(tuple(LayerPlan(l.name, tuple(int(b) for b in w), a) for l, w, a in zip(env.network, weights, acts)))

        objective = env.objective
        setting = objective.setting
        penalty = objective.penalty  # the cost the search minimises, in the reward's own terms

        cost = CostPoint.of(env.measure(plan()))
        while not (setting.constrained and objective.fits(cost)):
            best = None
            for i in range(len(acts)):
                for kind in ("act", "weight"):
                    undo = self._apply(kind, i, acts, weights, shares[i], rows, lo)
                    if undo is None:
                        continue
                    loss_after = estimated_loss(i)
                    candidate_cost = CostPoint.of(env.measure(plan()))
                    undo()
                    saving = penalty(cost) - penalty(candidate_cost)
                    added_loss = loss_after - estimated_loss(i)
                    if saving <= 0:
                        continue
                    score = added_loss / saving if setting.constrained else added_loss - saving
                    if best is None or score < best[0]:
                        best = (score, kind, i, candidate_cost)
            if best is None or (not setting.constrained and best[0] >= 0):
                break
            _, kind, i, cost = best
            self._apply(kind, i, acts, weights, shares[i], rows, lo)
        return plan()

    @staticmethod
    def _apply(kind: str, i: int, acts: list[int], weights: list[np.ndarray], share: np.ndarray, rows: int, lo: int):
        """Make one move in place; return a function that undoes it, or None if the move is impossible."""
        if kind == "act":
            if acts[i] <= lo:
                return None
            acts[i] -= 1

            def undo_act() -> None:
                acts[i] += 1

            return undo_act
        widest = weights[i].max()
        if widest <= lo:
            return None
        candidates = np.flatnonzero(weights[i] == widest)
        chosen = candidates[np.argsort(share[candidates], kind="stable")[:rows]]
        weights[i][chosen] -= 1

        def undo_weight() -> None:
            weights[i][chosen] += 1

        return undo_weight

    def state_dict(self) -> dict[str, Any]:
        return {"done": self._done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._done = bool(state["done"])


def _tile_rows(env: QuantEnv) -> int:
    """Rows per tile of the backend's overlay (``dm``), 1 if the backend does not say."""
    overlay = getattr(env.backend.describe(), "overlay", None)
    return int(getattr(overlay, "dm", 1) or 1)
