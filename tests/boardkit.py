"""Test helpers shared by the engine, board and daemon tests (and the board transport benchmark): small networks
that cover every layer kind, random kernel-wise plans, the bit-exact check of one layer through a board's driver,
and the master end of a pty pair as a byte link."""
from __future__ import annotations

import os
import random
import select

import numpy as np

from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.overlay.driver import Counters, EngineDriver
from autoq.overlay.engine import run_layer
from autoq.overlay.layout import build_job
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.protocol import MAGIC

TINY = NetworkSpec(
    "tiny",
    (
        LayerSpec("conv1", "conv", 3, 8, 3, 1, 1, 1, (8, 8), (8, 8)),
        LayerSpec("grouped", "conv", 8, 16, 3, 1, 1, 2, (8, 8), (8, 8)),
        LayerSpec("dw", "depthwise", 16, 16, 3, 2, 1, 16, (8, 8), (4, 4)),
        LayerSpec("fc", "linear", 256, 10),
    ),
    (3, 8, 8),
)
"""Conv, grouped conv, depthwise (packed) and linear layers on an 8x8 input."""

MINI_MOBILENET = NetworkSpec(
    "mini",
    (
        LayerSpec("stem", "conv", 3, 16, 3, 2, 1, 1, (12, 12), (6, 6)),
        LayerSpec("dw", "depthwise", 16, 16, 3, 1, 1, 16, (6, 6), (6, 6)),
        LayerSpec("pw", "conv", 16, 24, 1, 1, 0, 1, (6, 6), (6, 6)),
        LayerSpec("fc", "linear", 24, 10),
    ),
    (3, 12, 12),
)
"""A MobileNet-like stack: strided stem, depthwise, pointwise, classifier."""


def kernel_wise_plan(network: NetworkSpec, rng: int | np.random.Generator = 0, min_act_bits: int = 1) -> QuantPlan:
    """A random kernel-wise plan: weight bits uniform in 1..8 per kernel, activation bits in ``min_act_bits``..8 per
    layer (``rng``: a seed, or a generator the caller goes on drawing from)."""
    rng = np.random.default_rng(rng)
    return QuantPlan.for_network(
        network,
        [
            LayerPlan(l.name, tuple(int(b) for b in rng.integers(1, 9, l.c_out)), int(rng.integers(min_act_bits, 9)))
            for l in network
        ],
    )


def assert_bit_exact(driver: EngineDriver, config: OverlayConfig, layer: LayerSpec, batch: int, act_bits: int,
                     bits: list[int] | np.ndarray, seed: int = 0) -> Counters:
    """Run ``layer`` with random operands over their full ranges (1-bit kernels binary {-1, +1}) through
    ``driver`` (attached to ``config``: the FPGA, the RTL simulation, the emulation) and assert its results equal
    the reference engine's; returns the run's counters."""
    rng = np.random.default_rng(seed)
    bits = np.asarray(bits)
    fan_in = (layer.c_in // layer.groups, *layer.kernel)
    x = rng.integers(0, 1 << act_bits, (batch, layer.c_in, *layer.in_hw))
    w = np.stack([rng.choice([-1, 1], fan_in) if b == 1 else rng.integers(-(1 << (b - 1)), 1 << (b - 1), fan_in)
                  for b in bits])
    prepared = driver.prepare(build_job(layer, x, w, bits, act_bits, config))
    try:
        counters = driver.run(prepared)
        results = driver.results(prepared)
    finally:
        driver.release(prepared)
    reference = run_layer(layer, x, w, bits, act_bits, config).output.reshape(results.shape)
    assert np.array_equal(results, reference), f"layer {layer.name!r}: results differ from the reference engine"
    return counters


class PtyMasterLink:
    """The master end of a pty pair as a link (``recv``: ``TimeoutError`` when idle; ``send``); its slave end is the
    real tty that pyserial opens."""

    def __init__(self, fd: int):
        self.fd = fd

    def recv(self, size: int) -> bytes:
        if not select.select([self.fd], [], [], 0.1)[0]:
            raise TimeoutError
        return os.read(self.fd, size)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        """The test owns the descriptor and closes it."""


def junk(size: int) -> bytes:
    """Seeded random bytes without the frame magic's first byte, so none of them can start a frame (a trailing b"A"
    of os.urandom is kept as a possible frame start, and ``replace(MAGIC, b"")`` can join a new magic)."""
    return bytes(b for b in random.Random(size).randbytes(2 * size) if b != MAGIC[0])[:size]
