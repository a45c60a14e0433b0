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


MANY = 256  # plans per histogram pass of ``AnalyticCostModel.measure_many``


class AnalyticCostModel:
    """Scores plans on ``overlay`` with ``params``; cheap enough to call thousands of times a second.

    ``measure`` scores a plan's grouped tiles from its per-layer weight-bit histograms through one
    ``schedule.HistogramSchedule`` per (network, batch), all layers in one vectorised pass; ``measure_many`` scores
    many plans in one pass, several times faster per plan. ``measure_direct`` is the definition both equal: every
    layer tiled from its per-kernel bits.
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
        self._schedules: dict[tuple[str, int, int], HistogramSchedule] = {}

    def _measurements(self, network: NetworkSpec, plans: Sequence[QuantPlan], batch: int,
                      cycles: TableCycles) -> list[Measurement]:
        """The measurements of ``plans`` from their layers' cycles (``len(network)`` entries per plan, plan after plan;
        any after the last plan's are not read): latency at the overlay clock, energy by the calibration's formula."""
        layers, entries = len(network.layers), len(plans) * len(network.layers)
        seconds = cycles.total[:entries] / self.overlay.clock_hz
        joules = self.params.energy.total_j(seconds, cycles.binary_ops[:entries], cycles.dram_bytes[:entries])
        stages = np.array([cycles.fetch, cycles.execute, cycles.result, cycles.total, cycles.total])[:, :entries]
        # overhead as a board reports it (``Board._assemble``): the cycles the slowest stage does not explain
        stages[3] -= np.maximum.reduce(stages[:3])
        latencies = np.add.reduce(seconds.reshape(-1, layers), axis=1).tolist()
        energies = np.add.reduce(joules.reshape(-1, layers), axis=1).tolist()
        costs = [
            LayerCost(name, s, j, STAGES[b], {"fetch": f, "execute": e, "result": r, "overhead": o, "total": t})
            for name, s, j, b, f, e, r, o, t in zip(network.names * len(plans), seconds.tolist(), joules.tolist(),
                                                    cycles.bound[:entries].tolist(), *stages.astype(np.int64).tolist())
        ]
        provenance = Provenance(source="model", overlay_build_hash=self.overlay.build_hash,
                                calibration_id=self.params.id, calibrated=self.params.calibrated)
        return [
            Measurement(
                network_hash=network.hash, plan_hash=plan.hash, batch=batch, latency_s=latency, energy_j=energy,
                avg_power_w=energy / latency, idle_power_w=self.params.energy.idle_power_w,
                layers=tuple(costs[k * layers:(k + 1) * layers]), provenance=provenance,
                resources=dict(self._resources),
            )  # every figure predicted by the calibration (Measurement's default labels)
            for k, (plan, latency, energy) in enumerate(zip(plans, latencies, energies))
        ]

    def measure_direct(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        """``measure`` without histograms: every layer tiled from its per-kernel bits."""
        plan.check(network)
        entries = [LayerEntry(spec, lp.weight_bits, lp.act_bits) for spec, lp in zip(network.layers, plan.layers)]
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, grouped, schedule.per_image_convs)
        return self._measurements(network, [plan], batch, table_cycles(table, self.overlay, schedule))[0]

    def _histograms_serve(self, network: NetworkSpec, plan: QuantPlan, grouped: bool) -> bool:
        """Whether ``plan`` (checked against ``network``) is scored from histograms: its tiles grouped and its bits
        within the overlay's (else the direct path names the bits the overlay refuses)."""
        plan.check(network)
        top = self.overlay.max_bits
        return grouped and (top >= MAX_BITS or max(np.frombuffer(plan.bits_bytes, np.uint8).max(),
                                                   max(lp.act_bits for lp in plan.layers)) <= top)

    def _schedule(self, network: NetworkSpec, batch: int, copies: int = 1) -> HistogramSchedule:
        """The histogram schedule of ``copies`` copies of ``network`` side by side (``copies`` plans in one pass)."""
        key = (network.hash, batch, copies)
        if key not in self._schedules:
            self._schedules[key] = HistogramSchedule(list(network.layers) * copies, self.overlay, self.params.schedule, batch)
        return self._schedules[key]

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1, grouped: bool = True) -> Measurement:
        if not self._histograms_serve(network, plan, grouped):
            return self.measure_direct(network, plan, batch, grouped)
        acts = np.frombuffer(bytes([lp.act_bits for lp in plan.layers]), np.uint8)
        cycles = self._schedule(network, batch).cycles(np.frombuffer(plan.bits_bytes, np.uint8), acts)
        return self._measurements(network, [plan], batch, cycles)[0]

    def measure_many(self, network: NetworkSpec, plans: Sequence[QuantPlan], batch: int = 1,
                     grouped: bool = True) -> list[Measurement]:
        """``measure`` of every plan of ``plans``, equal to it plan by plan: up to ``MANY`` plans in one histogram
        pass over as many copies of the network (a power of two of them, the last plan repeated to fill it, so that
        a network has a few such schedules)."""
        measured: dict[int, Measurement] = {}
        served = []
        for i, plan in enumerate(plans):
            if self._histograms_serve(network, plan, grouped):
                served.append(i)
            else:
                measured[i] = self.measure_direct(network, plan, batch, grouped)
        for start in range(0, len(served), MANY):
            group = [plans[i] for i in served[start:start + MANY]]
            copies = 1 << (len(group) - 1).bit_length()
            padded = group + group[-1:] * (copies - len(group))
            bits = np.frombuffer(b"".join([plan.bits_bytes for plan in padded]), np.uint8)
            acts = np.frombuffer(bytes([lp.act_bits for plan in padded for lp in plan.layers]), np.uint8)
            cycles = self._schedule(network, batch, copies).cycles(bits, acts)
            measured.update(zip(served[start:start + MANY], self._measurements(network, group, batch, cycles)))
        return [measured[i] for i in range(len(plans))]

    def layer_table(self, layers: Sequence[LayerSpec], batch: int = 1, max_bits: int | None = None) -> np.ndarray:
        """Cycles of every layer at every uniform bit pair: array ``[layer, wbits - 1, abits - 1]``."""
        top = max_bits or self.overlay.max_bits
        entries = grid_entries(layers, range(1, top + 1), range(1, top + 1))
        schedule = self.params.schedule
        table = tile_table(entries, self.overlay, batch, True, schedule.per_image_convs)
        cycles = table_cycles(table, self.overlay, schedule)
        return cycles.total.reshape(len(layers), top, top)
