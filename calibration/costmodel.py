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
from autoq.common.plan import MAX_BITS, QuantPlan
from autoq.overlay.calibration_params import (
    CalibrationError,
    CalibrationParams,
)
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.resources import estimate
from autoq.overlay.schedule import STAGES, HistogramSchedule, LayerEntry, TableCycles, table_cycles, tile_table


def grid_entries(layers: Sequence[LayerSpec], wbits: Iterable[int], abits: Iterable[int]) -> list[LayerEntry]:
    """Every layer at every uniform (weight bits, activation bits) pair, layer-major then wbits then abits."""
    wbits, abits = list(wbits), list(abits)
    return [LayerEntry(layer, np.full(layer.c_out, w), a) for layer in layers for w in wbits for a in abits]


class AnalyticCostModel:
    """Scores plans on ``overlay`` with ``params``; cheap enough to call thousands of times a second.

    ``measure`` scores a plan's grouped tiles from its per-layer weight-bit histograms through one
    ``schedule.HistogramSchedule`` per (network, batch), all layers in one vectorised pass. ``measure_direct`` is the
    definition it equals: every layer tiled from its per-kernel bits.
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
        self._schedules: dict[tuple[str, int], HistogramSchedule] = {}

    def _measurement(self, network: NetworkSpec, plan: QuantPlan, batch: int, cycles: TableCycles) -> Measurement:
        """The measurement of ``plan`` from its layers' cycles: latency at the overlay clock, energy by the
        calibration's formula."""
        seconds = cycles.total / self.overlay.clock_hz
        joules = self.params.energy.total_j(seconds, cycles.binary_ops, cycles.dram_bytes)
        stages = np.array([cycles.fetch, cycles.execute, cycles.result, cycles.total, cycles.total])
        # overhead as a board reports it (``Board._assemble``): the cycles the slowest stage does not explain
        stages[3] -= np.maximum.reduce(stages[:3])
        latency, energy = float(np.add.reduce(seconds)), float(np.add.reduce(joules))
        return Measurement(
            network_hash=network.hash,
            plan_hash=plan.hash,
            batch=batch,
            latency_s=latency,
            energy_j=energy,
            avg_power_w=energy / latency,
            idle_power_w=self.params.energy.idle_power_w,
            layers=tuple([
                LayerCost(spec.name, s, j, STAGES[b], {"fetch": f, "execute": e, "result": r, "overhead": o, "total": t})
                for spec, s, j, b, f, e, r, o, t in zip(network.layers, seconds.tolist(), joules.tolist(),
                                                        cycles.bound.tolist(), *stages.astype(np.int64).tolist())
            ]),
            provenance=Provenance(
                source="model", overlay_build_hash=self.overlay.build_hash, calibration_id=self.params.id,
                calibrated=self.params.calibrated,
            ),  # every figure predicted by the calibration (Measurement's default labels)
            resources=dict(self._resources),
        )

    def measure_direct(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        """``measure`` without histograms: every layer tiled from its per-kernel bits."""
        plan.check(network)
        entries = [LayerEntry(spec, lp.weight_bits, lp.act_bits) for spec, lp in zip(network.layers, plan.layers)]
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, grouped, schedule.per_image_convs)
        return self._measurement(network, plan, batch, table_cycles(table, self.overlay, schedule))

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        plan.check(network)
        acts = np.frombuffer(bytes([lp.act_bits for lp in plan.layers]), np.uint8)
        bits = np.frombuffer(plan.bits_bytes, np.uint8)
        top = self.overlay.max_bits
        if not grouped or top < MAX_BITS and max(bits.max(), acts.max()) > top:  # natural order, or bits the
            return self.measure_direct(network, plan, batch, grouped)  # overlay refuses: the direct path names them
        key = (network.hash, batch)
        if key not in self._schedules:
            self._schedules[key] = HistogramSchedule(network.layers, self.overlay, self.params.schedule, batch)
        return self._measurement(network, plan, batch, self._schedules[key].cycles(bits, acts))

    def layer_table(self, layers: Sequence[LayerSpec], batch: int = 1, max_bits: int | None = None) -> np.ndarray:
        """Cycles of every layer at every uniform bit pair: array ``[layer, wbits - 1, abits - 1]``."""
        top = max_bits or self.overlay.max_bits
        entries = grid_entries(layers, range(1, top + 1), range(1, top + 1))
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, True, schedule.per_image_convs)
        cycles = table_cycles(table, self.overlay, schedule)
        return cycles.total.reshape(len(layers), top, top)
