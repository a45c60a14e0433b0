"""Layers through the RTL simulation next to the numpy reference engine and the schedule model.

``open_engine(overlay, memory)`` attaches a ``BusEngine`` to an ``RtlSimDevice`` of the RTL for ``overlay``;
``check_layer`` packs one layer (``layout.build_job``), runs it on the RTL, compares its results bit for bit with
``engine.run_layer`` and puts the RTL's cycle counters (measured) next to ``schedule.layer_cycles`` (the model).
``random_case`` draws the random layers ``autoq hls sim`` runs; it and ``tests/benchmarks/bench_rtl_model.py`` drive
``check_layer``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from autoq.common.network import LayerSpec
from autoq.overlay.calibration_params import default_calibration_path, load_default_calibration
from autoq.overlay.driver import BusEngine, DriverError
from autoq.overlay.bitserial import value_range
from autoq.overlay.engine import conv_output_size, run_layer
from autoq.overlay.layout import build_job
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.regmap import Status, rejection_reason
from autoq.overlay.schedule import LayerCycles, ScheduleParams, layer_cycles

from .board import ARENA_BYTES, RUN_TIMEOUT_S, engine_verilog
from .device import RtlSimDevice
from .memory import HPPortModel
from .sim import RtlSimError


class RtlEngine(NamedTuple):
    device: RtlSimDevice
    driver: BusEngine

    def close(self) -> None:
        self.device.close()


def open_engine(overlay: OverlayConfig, memory: HPPortModel = HPPortModel(), verilog: str | None = None,
                cache: Path | None = None, arena_bytes: int = ARENA_BYTES // 4) -> RtlEngine:
    """The RTL of ``overlay`` (or the given ``verilog`` text) under simulation, identified and attached."""
    text = verilog if verilog is not None else engine_verilog(overlay, cache)
    device = RtlSimDevice(overlay, text, memory, arena_bytes=arena_bytes, cache=cache)
    try:
        driver = BusEngine(device, device.allocate, timeout_s=RUN_TIMEOUT_S)
        driver.attach(overlay)
    except BaseException:
        device.close()
        raise
    return RtlEngine(device, driver)


def schedule_params(overlay: OverlayConfig) -> ScheduleParams:
    """The schedule model's parameters for ``overlay``: its bundled calibration's, else the defaults."""
    if default_calibration_path(overlay.name).is_file():
        return load_default_calibration(overlay.name).schedule
    return ScheduleParams()


class LayerCheck(NamedTuple):
    """One layer on the RTL next to the reference engine (outputs) and the schedule model (cycles)."""

    layer: LayerSpec
    weight_bits: tuple[int, ...]
    act_bits: int
    batch: int
    mismatches: int  # outputs that differ from the reference engine
    rtl_cycles: tuple[int, int, int, int]  # fetch, execute, result (active cycles), total, as the RTL counted them
    model_cycles: LayerCycles
    sim_cycles: int  # clock cycles the simulation advanced for the run (AXI-Lite set-up and polling included)
    rejected: str = ""  # why the RTL refused the run (then nothing was compared), else ""

    @property
    def exact(self) -> bool:
        return not self.rejected and self.mismatches == 0

    @property
    def model_error(self) -> float:
        """(model - RTL) / RTL of the total cycles (NaN for a rejected run)."""
        if self.rejected:
            return float("nan")
        return (self.model_cycles.total - self.rtl_cycles[3]) / self.rtl_cycles[3]


def check_layer(engine: RtlEngine, layer: LayerSpec, x_int: np.ndarray, w_int: np.ndarray,
                weight_bits: Sequence[int] | np.ndarray, act_bits: int, params: ScheduleParams | None = None) -> LayerCheck:
    """Run ``layer`` on the RTL and on the reference engine; compare outputs, put the model's cycles beside."""
    overlay = engine.driver.overlay
    if overlay is None:
        raise RtlSimError("the RTL engine is not attached to an overlay")
    params = params or schedule_params(overlay)
    job = build_job(layer, x_int, w_int, weight_bits, act_bits, overlay)
    batch = int(np.shape(x_int)[0])
    model = layer_cycles(layer, weight_bits, act_bits, overlay, params, batch)
    bits = tuple(int(b) for b in weight_bits)
    prepared = engine.driver.prepare(job)
    start = engine.device.cycles
    try:
        try:
            counters = engine.driver.run(prepared)
        except DriverError:
            if engine.driver.read_register("status") == Status.OK:
                raise  # not a rejection: the engine misbehaved
            return LayerCheck(layer, bits, int(act_bits), batch, 0, (0, 0, 0, 0), model,
                                 engine.device.cycles - start, rejection_reason(engine.driver.read_register("status")))
        sim_cycles = engine.device.cycles - start
        results = engine.driver.results(prepared)
    finally:
        engine.driver.release(prepared)
    reference = run_layer(layer, x_int, w_int, weight_bits, act_bits, overlay, params).output.reshape(results.shape)
    mismatches = int(np.count_nonzero(results.astype(np.int64) != reference))
    cycles = (counters.fetch, counters.execute, counters.result, counters.total)
    return LayerCheck(layer, bits, int(act_bits), batch, mismatches, cycles, model, sim_cycles)


class LayerCase(NamedTuple):
    layer: LayerSpec
    x_int: np.ndarray
    w_int: np.ndarray
    weight_bits: np.ndarray
    act_bits: int


def random_case(rng: np.random.Generator, name: str, kind: str | None = None, max_bits: int = 8,
                max_linear_k: int = 300) -> LayerCase:
    """A random small layer (conv, grouped, depthwise or linear; stride, padding, batch) with mixed kernel bits
    in ``1..max_bits`` and operands over their full ranges (1-bit weights binary {-1, +1}); conv kernels have
    ``K <= 125``."""
    kind = kind or str(rng.choice(["conv", "grouped", "depthwise", "linear"]))
    batch = int(rng.integers(1, 3))
    if kind == "linear":
        c_in, c_out = int(rng.integers(1, max_linear_k + 1)), int(rng.integers(1, 40))
        groups, kernel, stride, pad, size = 1, 1, 1, 0, 1
    else:
        groups = {"conv": 1, "grouped": int(rng.integers(2, 4)), "depthwise": 0}[kind]
        kernel, stride, pad = int(rng.choice([1, 3, 5])), int(rng.integers(1, 3)), int(rng.integers(0, 3))
        size = int(rng.integers(max(kernel - 2 * pad, 1), 10))
        if kind == "depthwise":
            c_in = c_out = groups = int(rng.integers(2, 20))
        else:
            c_in, c_out = groups * int(rng.integers(1, 6)), groups * int(rng.integers(1, 14))
    out = conv_output_size(size, kernel, stride, pad)
    layer = LayerSpec(name, "linear" if kind == "linear" else "depthwise" if kind == "depthwise" else "conv",
                      c_in, c_out, (kernel, kernel), (stride, stride), (pad, pad), groups, (size, size), (out, out))
    pool = rng.integers(1, max_bits + 1, size=3)  # a few widths, so tiles mix equal and different kernels
    weight_bits = rng.choice(pool, size=c_out)
    act_bits = int(rng.integers(1, max_bits + 1))
    low, high = value_range(weight_bits, signed=True)
    shape = (c_out, c_in // groups, kernel, kernel)
    w = rng.integers(low[:, None], high[:, None] + 1, size=(c_out, layer.kernel_size)).reshape(shape)
    w = np.where((weight_bits == 1)[:, None, None, None] & (w == 0), 1, w)
    x = rng.integers(0, 1 << act_bits, size=(batch, c_in, size, size))
    return LayerCase(layer, x, w, weight_bits, act_bits)
