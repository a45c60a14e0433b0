"""Deterministic stand-ins for the evaluator and the cost backend, for the search tests only.

The toy cost follows the overlay's rule (kernels sorted by bit-width into ``TILE_ROWS``-row tiles, a tile costs its
widest kernel's bits times the activation bits), so kernel-wise plans can really be cheaper; the toy accuracy
loses ``importance * 4**-bits`` per kernel and activation, so some kernels matter more than others.
"""
from __future__ import annotations

import os
import signal
import sys
import types

import numpy as np

from autoq.common.backend import BackendInfo
from autoq.common.measurement import LayerCost, Measurement, Provenance
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import MAX_BITS, QuantPlan

TILE_ROWS = 4


def toy_network() -> NetworkSpec:
    return NetworkSpec(
        "toy",
        (
            LayerSpec("conv1", "conv", 1, 8, 3, 1, 1, 1, (8, 8), (8, 8)),
            LayerSpec("conv2", "conv", 8, 16, 3, 2, 1, 1, (8, 8), (4, 4)),
            LayerSpec("dw", "depthwise", 16, 16, 3, 1, 1, 16, (4, 4), (4, 4)),
            LayerSpec("fc", "linear", 16, 10),
        ),
        (1, 8, 8),
    )


def toy_kernel_scales(network: NetworkSpec) -> dict[str, np.ndarray]:
    """Fixed per-kernel importances: a few kernels in each layer matter much more than the rest."""
    rng = np.random.default_rng(1234)
    return {layer.name: rng.lognormal(0.0, 1.0, layer.c_out) for layer in network}


class ToyEvaluator:
    def __init__(self, network: NetworkSpec, full_accuracy: float = 0.95) -> None:
        self.network = network
        self.full = full_accuracy
        self.scales = toy_kernel_scales(network)
        self.calls = 0
        self.cache: dict[tuple[str, int], float] = {}

    def full_precision_accuracy(self) -> float:
        return self.full

    def accuracy(self, plan: QuantPlan, finetune_steps: int = 0) -> float:
        """Cached by (plan hash, fine-tune steps), as the real evaluator's; ``calls`` counts the evaluations."""
        key = (plan.hash, finetune_steps)
        if key not in self.cache:
            self.cache[key] = self._score(plan)
        return self.cache[key]

    def _score(self, plan: QuantPlan) -> float:
        plan.check(self.network)
        self.calls += 1
        loss = 0.0
        for layer, lp in zip(self.network, plan.layers):
            s = self.scales[layer.name] ** 2
            loss += 6.0 * float((s / s.sum() * 4.0 ** -np.array(lp.weight_bits, float)).sum())
            loss += 3.0 * 4.0 ** -lp.act_bits
        return max(0.0, self.full - loss)


class ToyBackend:
    def __init__(self, power_w: float = 2.0) -> None:
        self.power_w = power_w
        self.calls = 0
        self.closed = False

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        plan.check(network)
        self.calls += 1
        layers = []
        for layer, lp in zip(network, plan.layers):
            g = layer.gemm(batch)
            bits = np.sort(np.array(lp.weight_bits))[::-1]
            tiles = [int(bits[i : i + TILE_ROWS].max()) for i in range(0, len(bits), TILE_ROWS)]
            cycles = sum(t * lp.act_bits for t in tiles) * g.k * g.n / 16 + 200
            latency = cycles / 100e6
            layers.append(LayerCost(layer.name, latency, latency * self.power_w, "execute", {"execute": int(cycles)}))
        latency = sum(l.latency_s for l in layers)
        return Measurement(network.hash, plan.hash, batch, latency, latency * self.power_w, self.power_w, 0.5,
                           tuple(layers), Provenance("model", "toy", calibrated=False))

    def describe(self) -> BackendInfo:
        return BackendInfo("toy", "model", types.SimpleNamespace(dm=TILE_ROWS, max_bits=MAX_BITS), ("latency", "energy"), "test double")

    def close(self) -> None:
        self.closed = True


def toy_env(setting, **kwargs):
    from autoq.host.search.env import QuantEnv

    network = toy_network()
    return QuantEnv(network, ToyEvaluator(network), ToyBackend(), setting,
                    kernel_scales=kwargs.pop("kernel_scales", toy_kernel_scales(network)), **kwargs)


class KillingEvaluator(ToyEvaluator):
    """Sends SIGKILL to its own process on its ``kill_at``-th call: the middle of an episode (the agent has acted;
    nothing of the episode is learned or checkpointed yet)."""

    def __init__(self, network: NetworkSpec, kill_at: int) -> None:
        super().__init__(network)
        self.kill_at = kill_at

    def _score(self, plan: QuantPlan) -> float:
        if self.calls + 1 == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._score(plan)


def run_toy_search(agent_name: str, episodes: int, checkpoint: str, resume: bool = False, kill_at: int = 0, seed: int = 3):
    """A whole toy search through ``SearchRunner`` with a 0.4x latency budget; returns the history."""
    from autoq.host.search.checkpoint import seed_everything
    from autoq.host.search.env import QuantEnv
    from autoq.host.search.rewards import BudgetSpec, RewardSetting
    from autoq.host.search.runner import SearchRunner, make_agent

    seed_everything(seed)
    network = toy_network()
    setting = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.4x"))
    env = QuantEnv(network, KillingEvaluator(network, kill_at), ToyBackend(), setting, kernel_scales=toy_kernel_scales(network))
    agent = make_agent(agent_name, episodes, len(network), seed)
    settings = {"agent": agent_name, "episodes": episodes, "seed": seed}
    return SearchRunner(env, agent, episodes, checkpoint, settings).run(resume=resume, progress=False)


if __name__ == "__main__":  # the SIGKILL test runs a toy search in a child process: AGENT EPISODES CHECKPOINT KILL_AT
    import torch

    torch.set_num_threads(1)
    run_toy_search(sys.argv[1], int(sys.argv[2]), sys.argv[3], kill_at=int(sys.argv[4]))
