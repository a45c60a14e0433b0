"""``QuantEnv``: the search as a pure state machine over layers and, within a layer, their kernels.

An episode visits the network's layers in order. At each layer the agent gives one continuous action in [0, 1]
for the activation bits and one per kernel (output channel) for the weight bits; the environment projects them
to bit-widths (HAQ's ``round(b_min - 0.5 + a * (b_max - b_min + 1))``). Per-kernel bits are snapped to the tiles
the overlay runs: the layer's kernels, sorted by sensitivity (``Sensitivity``), are cut into ``tile_rows``-row tiles
(the overlay's Dm) and each tile takes the rounded mean of its kernels' bits, so a proposal never pays a tile's
widest kernel for kernels that asked for less. After the last layer it builds the ``QuantPlan`` and scores it.

The outcome keeps the proposal's own cost (``proposed_cost``), so an agent can learn to meet the budget itself (AutoQ
learns from a Lagrangian reward, ``rewards.BudgetMultiplier``). Only as a last resort is an over-budget proposal
lowered until it fits: a layer-wise proposal by HAQ's rule (from the last layer, activations
first, then all the layer's kernels), a kernel-wise one by the cheapest estimated loss per cost saved, which lowers
a layer's least sensitive tile first. A kernel-wise proposal that fits with budget to spare is raised by the
inverse rule (most loss removed per cost added, a layer's most sensitive tile first) until nothing more fits
(``spend_slack``), so no episode is scored on budget it left unused. The plan that fits is what is evaluated
(accuracy, loss and KL to the float model with the injected evaluator, cost with the injected ``CostBackend``) and
recorded. Proposing and scoring are
apart: ``step(..., scored=False)`` ends an episode with its ``Proposal`` alone, agents that pick whole plans propose
them directly, and ``evaluate`` scores a proposal without touching any agent state, so a batch of proposals can be
scored at once (``scoring_with``: one shallow copy per plan, each with its own backend and evaluator handles).

The bit range defaults to [``min_bits``, the backend overlay's ``max_bits``], within the plan type's limits. Plans
are validated where they enter (``evaluate``, the backends' own boundary); accuracies are cached by the evaluator.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from autoq.common.backend import CostBackend
from autoq.common.measurement import Measurement
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import MAX_BITS, MIN_BITS, LayerPlan, QuantPlan

from .rewards import CostPoint, Objective, RewardSetting, SearchError
from .sensitivity import Sensitivity, scales_by_layer


#: The split every episode is scored on: a fixed, seeded subset of the validation split (``autoq.host.evaluate``);
#: the search re-scores its best candidates on the whole validation split (``autoq.host.results.select_plan``).
SEARCH_SPLIT = "val_subset"


class Evaluator(Protocol):
    """Accuracy on held-out data the search selects plans by (never the test split it reports on).

    Deterministic (the same plan and settings always give the same accuracy) and cached by plan hash and settings:
    the search's one accuracy memo (``autoq.host.evaluate.Evaluator``, whose ``score(plan, finetune_steps, split)``
    the environment calls with ``SEARCH_SPLIT`` when it has one)."""

    def accuracy(self, plan: QuantPlan, finetune_steps: int = 0) -> float: ...

    def full_precision_accuracy(self) -> float: ...


class PlanScore(NamedTuple):
    """What an evaluator says of a plan on a split: top-1, mean cross-entropy, mean KL(float || quantized)."""

    accuracy: float
    loss: float = 0.0
    kl: float = 0.0


#: Static per-layer features, each min-max normalised over the network's layers (HAQ's state).
LAYER_FEATURES: tuple[str, ...] = (
    "layer_index", "c_in", "c_out", "kernel_size", "stride", "feature_map", "depthwise", "linear", "weights",
)
#: Layer observation = static features + the previous layer's activation and mean weight actions.
LAYER_OBS_DIM = len(LAYER_FEATURES) + 2
#: Kernel observation = static layer features + kernel index, kernel weight scale, kernel sensitivity (log Fisher,
#: min-max over the network), its sensitivity rank in the layer (0 = most sensitive), the layer's goal and activation action.
KERNEL_OBS_DIM = len(LAYER_FEATURES) + 6


def _raw_layer_features(index: int, layer: LayerSpec) -> list[float]:
    return [
        index, layer.c_in, layer.c_out, layer.kernel[0] * layer.kernel[1], layer.stride[0],
        layer.in_hw[0] * layer.in_hw[1], float(layer.kind == "depthwise"), float(layer.kind == "linear"), layer.weights,
    ]


def _min_max(table: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1]; a constant column becomes 0."""
    low, high = table.min(axis=0), table.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (table - low) / span


def check_bit_range(min_bits: int, max_bits: int | None) -> None:
    """Refuse a search bit range outside the plan type's limits [``MIN_BITS``, ``MAX_BITS``]; ``max_bits`` None
    (the overlay's, not known yet) checks ``min_bits`` alone."""
    if not MIN_BITS <= min_bits <= (MAX_BITS if max_bits is None else max_bits) <= MAX_BITS:
        top = "the overlay's max_bits" if max_bits is None else max_bits
        raise SearchError(f"bit range must satisfy {MIN_BITS} <= min_bits <= max_bits <= {MAX_BITS}, got [{min_bits}, {top}]")


def overlay_max_bits(backend: CostBackend) -> int:
    """The widest bit-width the backend's overlay computes (its ``OverlayConfig.max_bits``)."""
    return int(backend.describe().overlay.max_bits)


@dataclass(frozen=True)
class EpisodeOutcome:
    """One scored plan: ``plan`` is what was evaluated (after budget enforcement), ``proposed`` what the agent chose.

    The environment leaves ``episode`` and ``agent`` unset; the runner stamps them (``placed``) when the outcome
    enters the search history, which is what the results folder is written from."""

    plan: QuantPlan
    proposed: QuantPlan
    accuracy: float
    measurement: Measurement
    reward: float
    cost: CostPoint
    fits: bool
    episode: int | None = None
    agent: str = ""
    kl: float = 0.0  # KL(float || quantized) of ``plan`` on the validation split
    loss: float = 0.0  # cross-entropy of ``plan`` on the validation split
    proposed_cost: CostPoint | None = None  # the proposal's cost (before enforcement)

    @property
    def proposal_fits(self) -> bool:
        """Whether the agent's own proposal met the budget: enforcement lowered none of its bits (spending the
        slack of a proposal that fits only raises them)."""
        return all(final.act_bits >= own.act_bits and all(f >= o for f, o in zip(final.weight_bits, own.weight_bits))
                   for final, own in zip(self.plan.layers, self.proposed.layers))

    def placed(self, episode: int, agent: str) -> "EpisodeOutcome":
        """This outcome as episode ``episode`` of ``agent``'s search."""
        return dataclasses.replace(self, episode=episode, agent=agent)


@dataclass(frozen=True)
class Proposal:
    """A plan to score (``QuantEnv.evaluate``) and the agent's memo of how it chose it (its states and actions, to
    learn from the outcome). ``layer_wise`` picks the budget-enforcement rule (None: whether every layer of ``plan``
    has one weight bit-width)."""

    plan: QuantPlan
    layer_wise: bool | None = None
    memo: Any = None


class StepResult(NamedTuple):
    observation: np.ndarray | None  # the next layer's observation; None once the episode is over
    act_bits: int
    weight_bits: tuple[int, ...]
    outcome: EpisodeOutcome | None  # set on the last layer's step, unless it was taken with ``scored=False``
    proposal: Proposal | None = None  # set on the last layer's step


class QuantEnv:
    def __init__(
        self,
        network: NetworkSpec,
        evaluator: Evaluator,
        backend: CostBackend,
        setting: RewardSetting,
        *,
        min_bits: int = 2,
        max_bits: int | None = None,
        finetune_steps: int = 0,
        kernel_scales: Mapping[str, Sequence[float] | np.ndarray] | None = None,
        batch: int = 1,
        sensitivity: Sensitivity | None = None,
        tile_rows: int | None = None,
        snap_tiles: bool = True,
        spend_slack: bool = True,
    ) -> None:
        max_bits = overlay_max_bits(backend) if max_bits is None else max_bits
        check_bit_range(min_bits, max_bits)
        if finetune_steps < 0 or batch < 1:
            raise SearchError(f"finetune_steps must be >= 0 and batch >= 1, got {finetune_steps} and {batch}")
        self.network = network
        self.evaluator = evaluator
        self.backend = backend
        self.min_bits, self.max_bits = min_bits, max_bits
        self.finetune_steps = finetune_steps
        self.batch = batch
        self._layer_table = _min_max(np.array([_raw_layer_features(i, l) for i, l in enumerate(network)], np.float64))
        self.kernel_scales = self._checked_scales(kernel_scales or {})
        self._kernel_features = [_min_max(scales[:, None])[:, 0] for scales in self.kernel_scales]
        self.sensitivity = sensitivity or Sensitivity.from_scales(network, scales_by_layer(network, dict(zip(network.names, self.kernel_scales))))
        self.sensitivity.check(network)
        self.tile_rows = int(tile_rows or backend_tile_rows(backend))
        self.snap_tiles = snap_tiles
        self.spend_slack = spend_slack
        self.tiles = [self.sensitivity.tiles(i, self.tile_rows) for i in range(len(network))]
        log_fisher = [np.log(np.maximum(f, 1e-30)) for f in self.sensitivity.fisher]
        every = np.concatenate(log_fisher)
        low, span = every.min(), max(float(every.max() - every.min()), 1e-12)
        self._sensitivity_features = [(lf - low) / span for lf in log_fisher]
        self._rank_features = []
        for i, layer in enumerate(network):
            rank = np.empty(layer.c_out)
            rank[self.sensitivity.order(i)] = np.arange(layer.c_out) / max(1, layer.c_out - 1)
            self._rank_features.append(rank)
        self.reset()
        reference = CostPoint.of(self.measure(QuantPlan.uniform(network, max_bits, max_bits)))
        floor = CostPoint.of(self.measure(QuantPlan.uniform(network, min_bits, min_bits)))
        self.objective: Objective = setting.resolve(
            reference, floor, evaluator.full_precision_accuracy(), f"all weights and activations at {min_bits} bits"
        )
        from autoq.host.advice import warn_unconstraining_budget  # a budget the widest plan meets: say so
        warn_unconstraining_budget(self.objective, f"all weights and activations at {max_bits} bits")

    def _checked_scales(self, scales: Mapping[str, Sequence[float] | np.ndarray]) -> tuple[np.ndarray, ...]:
        """Per-kernel weight scales by layer (zeros where not given), e.g. each kernel's largest absolute weight."""
        unknown = sorted(set(scales) - set(self.network.names))
        if unknown:
            raise SearchError(f"kernel scales name layers the network lacks: {unknown[:5]}")
        out = []
        for layer in self.network:
            values = np.asarray(scales.get(layer.name, np.zeros(layer.c_out)), np.float64)
            if values.shape != (layer.c_out,):
                raise SearchError(f"layer {layer.name!r}: {values.size} kernel scales for {layer.c_out} kernels")
            out.append(values)
        return tuple(out)

    # -- projection between actions in [0, 1] and bit-widths ---------------------------------------------------
    def bits_of(self, actions: Any) -> np.ndarray:
        lo, hi = self.min_bits, self.max_bits
        return np.clip(np.round(lo - 0.5 + np.asarray(actions, np.float64) * (hi - lo + 1)), lo, hi).astype(int)

    def action_of(self, bits: Any) -> np.ndarray:
        """The action at the centre of each bit-width's interval (inverse of ``bits_of``)."""
        lo, hi = self.min_bits, self.max_bits
        return (np.asarray(bits, np.float64) - lo + 0.5) / (hi - lo + 1)

    def goal_of(self, action: float) -> float:
        """A goal action as a target average weight bit-width (continuous, not rounded)."""
        lo, hi = self.min_bits, self.max_bits
        return float(np.clip(lo - 0.5 + action * (hi - lo + 1), lo, hi))

    # -- the state machine ------------------------------------------------------------------------------------
    @property
    def layer_index(self) -> int:
        return self._position

    @property
    def layer(self) -> LayerSpec:
        if self.done:
            raise SearchError("the episode is over; call reset()")
        return self.network[self._position]

    @property
    def done(self) -> bool:
        return self._position >= len(self.network)

    def reset(self) -> np.ndarray:
        self._position = 0
        self._act_bits: list[int] = []
        self._weight_bits: list[tuple[int, ...]] = []
        self._previous = (1.0, 1.0)
        self._kernel_wise = False
        return self.observation()

    def observation(self) -> np.ndarray:
        """Current layer's observation, shape ``(LAYER_OBS_DIM,)``, every entry in [0, 1]."""
        return np.concatenate([self._layer_table[self._position], self._previous]).astype(np.float32)

    def kernel_observations(self, goal_action: float, act_action: float) -> np.ndarray:
        """One row per kernel of the current layer, shape ``(c_out, KERNEL_OBS_DIM)``, every entry in [0, 1]."""
        c_out = self.layer.c_out
        rows = np.empty((c_out, KERNEL_OBS_DIM), np.float32)
        rows[:, : len(LAYER_FEATURES)] = self._layer_table[self._position]
        rows[:, -6] = np.arange(c_out) / max(1, c_out - 1)
        rows[:, -5] = self._kernel_features[self._position]
        rows[:, -4] = self._sensitivity_features[self._position]
        rows[:, -3] = self._rank_features[self._position]
        rows[:, -2] = np.clip(goal_action, 0.0, 1.0)
        rows[:, -1] = np.clip(act_action, 0.0, 1.0)
        return rows

    def step(self, act_action: float, weight_actions: Any, *, scored: bool = True) -> StepResult:
        """Set the current layer's bits; ``weight_actions`` has one entry per kernel, or a single one for all. The
        last layer's step builds the proposal and, with ``scored``, evaluates it."""
        layer = self.layer
        weight_actions = np.asarray(weight_actions, np.float64).reshape(-1)
        if weight_actions.size == 1:
            weight_actions = np.repeat(weight_actions, layer.c_out)
        else:
            self._kernel_wise = True
        if weight_actions.size != layer.c_out:
            raise SearchError(f"layer {layer.name!r}: {weight_actions.size} weight actions for {layer.c_out} kernels")
        act_bits = int(self.bits_of(act_action))
        bits = self.bits_of(weight_actions)
        if self.snap_tiles:
            bits = self.snapped(self._position, bits)
        weight_bits = tuple(int(b) for b in bits)
        self._act_bits.append(act_bits)
        self._weight_bits.append(weight_bits)
        self._previous = (float(self.action_of(act_bits)), float(self.action_of(np.mean(weight_bits))))
        self._position += 1
        if not self.done:
            return StepResult(self.observation(), act_bits, weight_bits, None)
        proposal = Proposal(QuantPlan.for_network(
            self.network, (LayerPlan(l.name, w, a) for l, w, a in zip(self.network, self._weight_bits, self._act_bits))
        ), layer_wise=not self._kernel_wise)
        outcome = self.evaluate(proposal.plan, proposal.layer_wise) if scored else None
        return StepResult(None, act_bits, weight_bits, outcome, proposal)

    def snapped(self, i: int, bits: np.ndarray) -> np.ndarray:
        """Layer ``i``'s kernel bits with each sensitivity-sorted tile at the rounded mean of its kernels' bits."""
        out = np.array(bits, dtype=int)
        for tile in self.tiles[i]:
            out[tile] = int(np.floor(out[tile].mean() + 0.5))
        return out

    # -- scoring --------------------------------------------------------------------------------------------------
    def scoring_with(self, backend: CostBackend, evaluator: Evaluator) -> "QuantEnv":
        """This environment scoring with ``backend`` and ``evaluator`` instead (a shallow copy sharing the objective,
        sensitivity and tables), so that several plans can be evaluated at once, each on its own copy."""
        scorer = copy.copy(self)
        scorer.backend, scorer.evaluator = backend, evaluator
        return scorer

    def measure(self, plan: QuantPlan) -> Measurement:
        return self.backend.measure(self.network, plan, self.batch)

    def measure_many(self, plans: Sequence[QuantPlan]) -> list[Measurement]:
        """``measure`` of each plan, in one call where the backend scores many at once (``ModelBackend.measure_many``);
        a backend without it (a board, a recording) measures them one by one."""
        many = getattr(self.backend, "measure_many", None)
        if many is None:
            return [self.measure(plan) for plan in plans]
        return list(many(self.network, plans, self.batch))

    def evaluate(self, plan: QuantPlan, layer_wise: bool | None = None) -> EpisodeOutcome:
        """Score ``plan`` against the budget, enforce the budget on it if it must be, then score the plan that fits:
        accuracy, loss, KL, cost, reward. ``layer_wise`` picks the enforcement rule (default: whether every layer of
        ``plan`` has one weight bit-width). Ends the episode."""
        plan.check(self.network)
        proposed = self.measure(plan)
        if layer_wise is None:
            layer_wise = all(len(set(lp.weight_bits)) == 1 for lp in plan.layers)
        final, measurement = self.enforce_budget(plan, proposed, layer_wise=layer_wise)
        cost = CostPoint.of(measurement)
        score = self.score(final)
        self._position = len(self.network)
        reward = self.objective.reward(score.accuracy, cost, score.kl)
        return EpisodeOutcome(
            final, plan, score.accuracy, measurement, reward, cost, self.objective.fits(cost), kl=score.kl,
            loss=score.loss, proposed_cost=CostPoint.of(proposed),
        )

    def accuracy(self, plan: QuantPlan) -> float:
        """The accuracy of ``plan`` on the search split with this search's fine-tune setting (``score``)."""
        return self.score(plan).accuracy

    def score(self, plan: QuantPlan) -> PlanScore:
        """The evaluator's accuracy, loss and KL of ``plan`` on ``SEARCH_SPLIT`` (cached by the evaluator); an
        evaluator without ``score`` gives its accuracy alone."""
        score = getattr(self.evaluator, "score", None)
        if score is None:
            return PlanScore(float(self.evaluator.accuracy(plan, finetune_steps=self.finetune_steps)))
        return PlanScore(*score(plan, finetune_steps=self.finetune_steps, split=SEARCH_SPLIT))

    def enforce_budget(self, plan: QuantPlan, measurement: Measurement | None = None,
                       layer_wise: bool = True) -> tuple[QuantPlan, Measurement]:
        """``plan`` if it meets the budget; otherwise lowered until it does (``layer_wise``: HAQ's rule, see
        ``_enforce_layer_wise``; else ``_enforce_by_sensitivity``), measuring after every change. Under a budget a
        kernel-wise ``plan`` that fits is raised to it (``_spend_slack``); a reward without a budget has no slack."""
        measurement = self.measure(plan) if measurement is None else measurement
        if self.objective.fits(CostPoint.of(measurement)):
            if self.spend_slack and not layer_wise and self.objective.setting.budget is not None:
                return self._spend_slack(plan, measurement)
            return plan, measurement
        if layer_wise:
            return self._enforce_layer_wise(plan)
        return self._enforce_by_sensitivity(plan, measurement)

    def _enforce_by_sensitivity(self, plan: QuantPlan, measurement: Measurement) -> tuple[QuantPlan, Measurement]:
        """Repeatedly take the lowering move (``_one_bit_moves``) with the least estimated loss added per estimated
        cost saved, measuring after each, until the plan fits; within a layer the least sensitive tile at a given
        width goes first."""
        acts = [l.act_bits for l in plan.layers]
        weights = [np.array(l.weight_bits) for l in plan.layers]
        while True:
            moves = self._one_bit_moves(acts, weights, measurement, -1)
            if not moves:  # every bit at the floor, which resolve() checked fits; only a drifting backend gets here
                return plan, measurement
            _, i, j = min(moves)
            acts[i], weights[i] = self._moved(acts[i], weights[i], i, j, -1)
            plan = plan.replace(plan.layers[i].name, LayerPlan(plan.layers[i].name, tuple(int(b) for b in weights[i]), acts[i]))
            measurement = self.measure(plan)
            if self.objective.fits(CostPoint.of(measurement)):
                return plan, measurement

    def _spend_slack(self, plan: QuantPlan, measurement: Measurement) -> tuple[QuantPlan, Measurement]:
        """The inverse of ``_enforce_by_sensitivity`` for a plan that fits: repeatedly take the raising move with the
        most estimated loss removed per estimated cost added and keep it if the plan still fits; a move that breaks
        the budget is not tried again (the others only add cost). Nothing is left of the budget a tile could use."""
        acts = [l.act_bits for l in plan.layers]
        weights = [np.array(l.weight_bits) for l in plan.layers]
        refused: set[tuple[int, int]] = set()
        while True:
            moves = [move for move in self._one_bit_moves(acts, weights, measurement, +1) if move[1:] not in refused]
            if not moves:
                return plan, measurement
            _, i, j = max(moves, key=lambda move: move[0])
            new_acts, new_weights = self._moved(acts[i], weights[i], i, j, +1)
            name = plan.layers[i].name
            raised = plan.replace(name, LayerPlan(name, tuple(int(b) for b in new_weights), new_acts))
            raised_measurement = self.measure(raised)
            if self.objective.fits(CostPoint.of(raised_measurement)):
                plan, measurement, acts[i], weights[i] = raised, raised_measurement, new_acts, new_weights
            else:
                refused.add((i, j))

    def _one_bit_moves(self, acts: list[int], weights: list[np.ndarray], measurement: Measurement,
                       step: int) -> list[tuple[float, int, int]]:
        """Every move of one bit in direction ``step`` (-1 lowers, +1 raises) within [``min_bits``, ``max_bits``]:
        one activation bit of a layer (tile index -1), or one bit of one tile of a layer (its sensitivity-sorted Dm
        kernels, all set to the tile's widest bits plus ``step``), as (estimated loss added, for a lowering, or
        removed, for a raising, per estimated cost changed; layer; tile index). A layer's cost is taken as
        proportional to its activation bits and to the sum of its tiles' widest bits (its share of ``measurement``)."""
        metric = self.objective.setting.budget.metric if self.objective.setting.budget else "latency"
        per_layer = _layer_costs(measurement, metric, len(acts))
        sens, moves = self.sensitivity, []
        for i in range(len(acts)):
            tile_tops = [int(weights[i][t].max()) for t in self.tiles[i]]
            if self.min_bits <= acts[i] + step <= self.max_bits:
                change = step * (sens.act_loss[i, acts[i] - 1] - sens.act_loss[i, acts[i] + step - 1])
                moves.append((max(change, 0.0) / max(per_layer[i] / acts[i], 1e-30), i, -1))
            for j, (tile, top) in enumerate(zip(self.tiles[i], tile_tops)):
                if not self.min_bits <= top + step <= self.max_bits:
                    continue
                old = weights[i][tile]
                new = _tile_moved(old, step)
                change = step * float((sens.weight_loss[i][tile, old - 1] - sens.weight_loss[i][tile, new - 1]).sum())
                moves.append((max(change, 0.0) / max(per_layer[i] / sum(tile_tops), 1e-30), i, j))
        return moves

    def _moved(self, act_bits: int, weights: np.ndarray, i: int, j: int, step: int) -> tuple[int, np.ndarray]:
        """Layer ``i``'s activation bits and kernel bits after the move of ``_one_bit_moves`` on tile ``j``."""
        if j < 0:
            return act_bits + step, weights
        moved = weights.copy()
        moved[self.tiles[i][j]] = _tile_moved(weights[self.tiles[i][j]], step)
        return act_bits, moved

    def _enforce_layer_wise(self, plan: QuantPlan) -> tuple[QuantPlan, Measurement]:
        """HAQ's rule: sweep layers from the last, each time first the activation bits by one, then the layer's
        widest kernels by one, measuring after every change."""
        measurement = self.measure(plan)
        layers = list(plan.layers)
        acts = [l.act_bits for l in layers]
        weights = [np.array(l.weight_bits) for l in layers]
        while True:
            changed = False
            for i in reversed(range(len(acts))):
                for lower in (self._lower_act, self._lower_widest):
                    if not lower(acts, weights, i):
                        continue
                    changed = True
                    layers[i] = LayerPlan(layers[i].name, tuple(int(b) for b in weights[i]), acts[i])  # only layer i changed
                    plan = QuantPlan(tuple(layers))
                    measurement = self.measure(plan)
                    if self.objective.fits(CostPoint.of(measurement)):
                        return plan, measurement
            if not changed:  # every bit at the floor, which resolve() checked fits; only a drifting backend gets here
                return plan, measurement

    def _lower_act(self, acts: list[int], weights: list[np.ndarray], i: int) -> bool:
        if acts[i] <= self.min_bits:
            return False
        acts[i] -= 1
        return True

    def _lower_widest(self, acts: list[int], weights: list[np.ndarray], i: int) -> bool:
        widest = weights[i].max()
        if widest <= self.min_bits:
            return False
        weights[i][weights[i] == widest] -= 1
        return True

    # -- checkpointing --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self._position,
            "act_bits": list(self._act_bits),
            "weight_bits": [list(w) for w in self._weight_bits],
            "previous": list(self._previous),
            "kernel_wise": self._kernel_wise,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._position = int(state["position"])
        self._act_bits = [int(a) for a in state["act_bits"]]
        self._weight_bits = [tuple(int(b) for b in w) for w in state["weight_bits"]]
        self._previous = (float(state["previous"][0]), float(state["previous"][1]))
        self._kernel_wise = bool(state.get("kernel_wise", False))


def backend_tile_rows(backend: CostBackend) -> int:
    """Rows per tile of the backend's overlay (``dm``), 1 if the backend does not say."""
    overlay = getattr(backend.describe(), "overlay", None)
    return int(getattr(overlay, "dm", 1) or 1)


def _tile_moved(bits: np.ndarray, step: int) -> np.ndarray:
    """A tile's kernel bits one bit narrower (``step`` -1: its widest kernels lose a bit) or wider (+1: every kernel
    at its widest bits plus one)."""
    top = int(bits.max())
    return np.minimum(bits, top - 1) if step < 0 else np.maximum(bits, top + 1)


def _layer_costs(measurement: Measurement, metric: str, layers: int) -> np.ndarray:
    """Each layer's measured latency or energy (the total split evenly if the backend gives no per-layer figures)."""
    if len(measurement.layers) == layers:
        return np.array([l.latency_s if metric == "latency" else l.energy_j for l in measurement.layers])
    total = measurement.latency_s if metric == "latency" else measurement.energy_j
    return np.full(layers, total / layers)
