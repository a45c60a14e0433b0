"""Test helpers shared by the trace, replay and results tests: random plans for boardkit's networks, and a
deterministic backend.

``ToyBackend`` is a test double (a cost proportional to bit-planes, optional multiplicative noise drawn from a
seeded RNG so repeated measurements of one plan differ like board measurements do).
"""
from __future__ import annotations

import random

import numpy as np

from autoq.common.backend import BackendInfo
from autoq.common.measurement import LayerCost, Measurement, Provenance
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.manifest import OverlayConfig
from boardkit import kernel_wise_plan

OVERLAY = OverlayConfig(
    name="toy", dm=4, dn=4, dk=32, clock_mhz=100.0, lhs_mem_words=256, rhs_mem_words=256, result_mem_words=64,
    dram_ports=1, dram_width_bits=64, max_bits=8, acc_bits=32, regmap_version=2, vlnv="test:toy:engine:1.0", part="toy",
)


def some_plans(network: NetworkSpec, count: int, seed: int = 0) -> list[QuantPlan]:
    """``count`` random kernel-wise plans (activations at 2..8 bits), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [kernel_wise_plan(network, rng, min_act_bits=2) for _ in range(count)]


class ToyBackend:
    def __init__(self, noise: float = 0.0, seed: int = 0, source: str = "emulated") -> None:
        self.noise = noise
        self.rng = random.Random(seed)
        self.source = source
        self.calls = 0

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        self.calls += 1
        layers = []
        for spec, lp in zip(network, plan.layers):
            latency = 1e-6 * spec.macs(batch) * max(lp.weight_bits) * lp.act_bits / 64 * (1 + self.noise * self.rng.random())
            layers.append(LayerCost(spec.name, latency, 2.0 * latency, "execute", {"execute": int(latency * 1e8)}))
        latency = sum(l.latency_s for l in layers)
        return Measurement(
            network.hash, plan.hash, batch, latency, 2.0 * latency, 2.0, 1.5, tuple(layers),
            Provenance(self.source, OVERLAY.build_hash, board_id="toy-0"),
            resources={"lut": 1234.0}, samples={"latency_s": [latency, latency * 1.01]},
        )

    def describe(self) -> BackendInfo:
        return BackendInfo("toy://", self.source, OVERLAY, ("latency", "energy", "power"), "test double")

    def close(self) -> None:
        pass
