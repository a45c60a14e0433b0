"""Analytic cost model: latency, energy, power and resources of a plan, from the schedule model and calibration.

Latency is the schedule's cycles at the overlay clock; energy is ``idle_power * time + energy_per_binary_op *
binary ops + energy_per_dram_byte * DRAM bytes`` (the ops and bytes come from the schedule too). A calibration file
(``CalibrationParams``) holds the free parameters with their provenance, and, when it was fitted for another overlay
(e.g. a third-party table), that overlay.

Imports only numpy: the emulated device runs this.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

from autoq.common.measurement import LayerCost, Measurement, Provenance, predicted_by
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import MAX_BITS, QuantPlan
from autoq.overlay.calibration_params import (
    CalibrationError,
    CalibrationParams,
)
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.resources import estimate
from autoq.overlay.schedule import STAGES, LayerEntry, TableCycles, TiledEntry, table_cycles, tile_table
from autoq.overlay.tiling import grouped_tile_bits, histogram_tiling

def grid_entries(layers: Sequence[LayerSpec], wbits: Iterable[int], abits: Iterable[int]) -> list[LayerEntry]:
    """Every layer at every uniform (weight bits, activation bits) pair, layer-major then wbits then abits."""
    wbits, abits = list(wbits), list(abits)
    return [LayerEntry(layer, np.full(layer.c_out, w), a) for layer in layers for w in wbits for a in abits]


MEMO_LAYERS = 8192
"""Per-layer results an ``AnalyticCostModel`` keeps: a search re-measures plans that differ in a few layers."""


class _Scored(NamedTuple):
    """One layer's cost as a ``Measurement`` reports it (``cost``), with its seconds and joules for the totals."""

    cost: LayerCost
    seconds: float
    joules: float


class _Structure(NamedTuple):
    """How one network's kernels fall into row sets (one per group; one per layer when it has one group or is
    packed depthwise), each tiled on its own, and which tiles belong to which layer."""

    bins: np.ndarray  # per kernel, in plan order: its row set * (MAX_BITS + 1), the histogram row it counts in
    row_sets: int
    set_rows: list[list[int]]  # per layer: rows of each of its row sets
    tile_span: list[tuple[int, int]]  # per layer: its tiles in ``grouped_tile_bits``'s order


def _structure(network: NetworkSpec, dm: int) -> _Structure:
    set_rows = []
    for layer in network.layers:
        groups, m = layer.gemm(1)[:2]
        set_rows.append([layer.c_out] if groups == 1 or m == 1 else [m] * groups)
    rows = np.array([r for layer in set_rows for r in layer], dtype=np.int64)
    tiles = np.cumsum([0] + [sum(-(-r // dm) for r in layer) for layer in set_rows])
    bins = np.repeat(np.arange(rows.size, dtype=np.int64) * (MAX_BITS + 1), rows)
    return _Structure(bins, rows.size, set_rows, list(zip(tiles[:-1].tolist(), tiles[1:].tolist())))


class AnalyticCostModel:
    """Scores plans on ``overlay`` with ``params``; cheap enough to call thousands of times a second.

    With grouped tiles a layer's cost depends only on its activation bits and its row tilings' tile maxima, which
    follow from the histogram of its weight bits (``tiling.grouped_tile_bits``): ``measure`` computes the
    histograms and tile maxima of all layers in one numpy pass, takes the layers already scored under the same
    (layer, activation bits, tile maxima, batch) from a memo, and schedules the others in one vectorised pass.
    ``measure_direct`` is the definition it equals: every layer tiled from its per-kernel bits, nothing memoised.
    """

    def __init__(self, overlay: OverlayConfig, params: CalibrationParams):
        if params.overlay_build_hash != overlay.build_hash:
            raise CalibrationError(
                f"calibration {params.id!r} was made for overlay build {params.overlay_build_hash}, "
                f"not for {overlay.name!r} (build {overlay.build_hash})"
            )
        self.overlay = overlay
        self.params = params
        self.resources = estimate(overlay)
        self._resources = self.resources.to_dict()
        self._memo: dict[tuple, _Scored] = {}
        self._structures: dict[tuple[str, int], tuple[int, _Structure]] = {}

    def _score(self, layers: Sequence[LayerSpec], cycles: TableCycles) -> list[_Scored]:
        """Per-layer costs from their cycles: latency at the overlay clock, energy by the calibration's formula."""
        seconds = cycles.total / self.overlay.clock_hz
        joules = self.params.energy.total_j(seconds, cycles.binary_ops, cycles.dram_bytes)
        stages = np.stack([cycles.fetch, cycles.execute, cycles.result, cycles.overhead, cycles.total], 1).astype(np.int64)
        return [
            _Scored(LayerCost(spec.name, float(seconds[i]), float(joules[i]), STAGES[int(cycles.bound[i])],
                              dict(zip(("fetch", "execute", "result", "overhead", "total"), stages[i].tolist()))),
                    float(seconds[i]), float(joules[i]))
            for i, spec in enumerate(layers)
        ]

    def _schedule(self, entries: Sequence[LayerEntry | TiledEntry], batch: int, grouped: bool) -> list[_Scored]:
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, grouped, schedule.per_image_convs)
        return self._score([e.layer for e in entries], table_cycles(table, self.overlay, schedule))

    def _measurement(self, network: NetworkSpec, plan: QuantPlan, batch: int, scored: Sequence[_Scored]) -> Measurement:
        latency = float(np.array([s.seconds for s in scored]).sum())
        energy = float(np.array([s.joules for s in scored]).sum())
        return Measurement(
            network_hash=network.hash,
            plan_hash=plan.hash,
            batch=batch,
            latency_s=latency,
            energy_j=energy,
            avg_power_w=energy / latency,
            idle_power_w=self.params.energy.idle_power_w,
            layers=tuple(s.cost for s in scored),
            provenance=Provenance(
                source="model", overlay_build_hash=self.overlay.build_hash, calibration_id=self.params.id,
                calibrated=self.params.calibrated,
            ),
            resources=dict(self._resources),
            predicted=predicted_by(self.params.id),
        )

    def measure_direct(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        """``measure`` without histograms or memo: every layer tiled from its per-kernel bits."""
        plan.check(network)
        entries = [LayerEntry(spec, lp.weight_bits, lp.act_bits) for spec, lp in zip(network.layers, plan.layers)]
        return self._measurement(network, plan, batch, self._schedule(entries, batch, grouped))

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        plan.check(network)
        bits = np.frombuffer(b"".join(lp.bits_bytes for lp in plan.layers), np.uint8)
        if not grouped or bits.max() > self.overlay.max_bits:  # natural order; or bits the overlay refuses (say which)
            return self.measure_direct(network, plan, batch, grouped)
        context = (network.hash, batch)
        if context not in self._structures:
            self._structures[context] = (len(self._structures), _structure(network, self.overlay.dm))
        number, structure = self._structures[context]
        counts = np.bincount(structure.bins + bits, minlength=structure.row_sets * (MAX_BITS + 1))
        tile_bits = grouped_tile_bits(counts.reshape(structure.row_sets, MAX_BITS + 1), self.overlay.dm)[1]
        tile_bytes = tile_bits.astype(np.uint8).tobytes()
        keys = [(number, i, lp.act_bits, tile_bytes[a:b]) for i, (lp, (a, b)) in enumerate(zip(plan.layers, structure.tile_span))]
        memo = self._memo
        scored = [memo.get(key) for key in keys]
        missing = [i for i, found in enumerate(scored) if found is None]
        if missing:
            dm = self.overlay.dm
            entries = []
            for i in missing:
                start, tilings = structure.tile_span[i][0], []
                for rows in structure.set_rows[i]:
                    count = -(-rows // dm)
                    tilings.append(histogram_tiling(tile_bits[start:start + count], rows, dm))
                    start += count
                entries.append(TiledEntry(network.layers[i], tilings, plan.layers[i].act_bits))
            if len(memo) + len(missing) > MEMO_LAYERS:
                memo.clear()
            for i, new in zip(missing, self._schedule(entries, batch, True)):
                scored[i] = memo[keys[i]] = new
        return self._measurement(network, plan, batch, scored)  # type: ignore[arg-type]

    def layer_table(self, layers: Sequence[LayerSpec], batch: int = 1, max_bits: int | None = None) -> np.ndarray:
        """Cycles of every layer at every uniform bit pair: array ``[layer, wbits - 1, abits - 1]``."""
        top = max_bits or self.overlay.max_bits
        entries = grid_entries(layers, range(1, top + 1), range(1, top + 1))
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, True, schedule.per_image_convs)
        cycles = table_cycles(table, self.overlay, schedule)
        return cycles.total.reshape(len(layers), top, top)
