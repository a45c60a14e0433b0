"""Analytic cost model: latency, energy, power and resources of a plan, from the schedule model and calibration.

Latency is the schedule's cycles at the overlay clock; energy is ``idle_power * time + energy_per_binary_op *
binary ops + energy_per_dram_byte * DRAM bytes`` (the ops and bytes come from the schedule too). A calibration file
(``CalibrationParams``) holds the free parameters with their provenance, and, when it was fitted for another overlay
(e.g. a third-party table), that overlay.

Imports only numpy: the emulated device runs this.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from autoq.common.measurement import LayerCost, Measurement, Provenance
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.calibration_params import (
    CalibrationError,
    CalibrationParams,
)
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.resources import estimate
from autoq.overlay.schedule import STAGES, LayerEntry, table_cycles, tile_table

def grid_entries(layers: Sequence[LayerSpec], wbits: Iterable[int], abits: Iterable[int]) -> list[LayerEntry]:
    """Every layer at every uniform (weight bits, activation bits) pair, layer-major then wbits then abits."""
    wbits, abits = list(wbits), list(abits)
    return [LayerEntry(layer, np.full(layer.c_out, w), a) for layer in layers for w in wbits for a in abits]


MEMO_LAYERS = 8192
"""Per-layer results an ``AnalyticCostModel`` keeps: a search re-measures plans that differ in a few layers."""


class AnalyticCostModel:
    """Scores plans on ``overlay`` with ``params``; cheap enough to call once per searched plan.

    Layers are scheduled in one vectorised pass per plan; layers already scored under the same bits (and batch,
    grouping) are taken from a memo, so re-measuring a plan with one layer changed costs about one layer.
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
        self._memo: dict[tuple, np.ndarray] = {}

    def _layer_cycles(self, entries: Sequence[LayerEntry], batch: int, grouped: bool) -> np.ndarray:
        """Rows of (fetch, execute, result, overhead, total, bound index, DRAM bytes, binary ops), one per entry."""
        keys = [(e.layer, tuple(e.weight_bits), int(e.act_bits), batch, grouped) for e in entries]
        found = {key: self._memo[key] for key in keys if key in self._memo}
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            schedule = self.params.schedule
            table = tile_table([entries[i] for i in missing], self.overlay, batch, grouped, schedule.per_image_convs)
            c = table_cycles(table, self.overlay, schedule)
            rows = np.stack([c.fetch, c.execute, c.result, c.overhead, c.total, c.bound, c.dram_bytes, c.binary_ops], 1)
            scored = {keys[i]: row for i, row in zip(missing, rows)}
            if len(self._memo) + len(scored) > MEMO_LAYERS:
                self._memo.clear()
            self._memo.update(scored)
            found.update(scored)
        return np.stack([found[key] for key in keys])

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        plan.check(network)
        entries = [LayerEntry(spec, lp.weight_bits, lp.act_bits) for spec, lp in zip(network.layers, plan.layers)]
        fetch, execute, result, overhead, total, bound, dram_bytes, binary_ops = self._layer_cycles(entries, batch, grouped).T
        seconds = total / self.overlay.clock_hz
        energy = self.params.energy
        joules = energy.total_j(seconds, binary_ops, dram_bytes)
        layers = tuple(
            LayerCost(
                spec.name, float(seconds[i]), float(joules[i]), STAGES[int(bound[i])],
                {"fetch": int(fetch[i]), "execute": int(execute[i]), "result": int(result[i]),
                 "overhead": int(overhead[i]), "total": int(total[i])},
            )
            for i, spec in enumerate(network.layers)
        )
        latency, total_energy = float(seconds.sum()), float(joules.sum())
        return Measurement(
            network_hash=network.hash,
            plan_hash=plan.hash,
            batch=batch,
            latency_s=latency,
            energy_j=total_energy,
            avg_power_w=total_energy / latency,
            idle_power_w=energy.idle_power_w,
            layers=layers,
            provenance=Provenance(
                source="model", overlay_build_hash=self.overlay.build_hash, calibration_id=self.params.id,
                calibrated=self.params.calibrated,
            ),
            resources=self.resources.to_dict(),
        )

    def layer_table(self, layers: Sequence[LayerSpec], batch: int = 1, max_bits: int | None = None) -> np.ndarray:
        """Cycles of every layer at every uniform bit pair: array ``[layer, wbits - 1, abits - 1]``."""
        top = max_bits or self.overlay.max_bits
        entries = grid_entries(layers, range(1, top + 1), range(1, top + 1))
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, True, schedule.per_image_convs)
        cycles = table_cycles(table, self.overlay, schedule)
        return cycles.total.reshape(len(layers), top, top)
