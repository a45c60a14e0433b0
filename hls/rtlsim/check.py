"""Layers through the RTL simulation next to the numpy reference engine and the schedule model.

``open_engine(overlay, memory)`` attaches a ``BusEngine`` to an ``RtlSimDevice`` of the RTL for ``overlay``;
``check_layer`` packs one layer (``layout.build_job``), runs it on the RTL, compares its results bit for bit with
``engine.run_layer`` and puts the RTL's cycle counters (measured) next to ``schedule.layer_cycles`` (the model).
``autoq hls sim`` and ``tests/benchmarks/bench_rtl_model.py`` drive it.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from autoq.common.network import LayerSpec
from autoq.overlay.calibration_params import default_calibration_path, load_default_calibration
from autoq.overlay.driver import BusEngine, DriverError
from autoq.overlay.engine import run_layer
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


class RtlLayerCheck(NamedTuple):
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
                weight_bits: Sequence[int] | np.ndarray, act_bits: int, params: ScheduleParams | None = None) -> RtlLayerCheck:
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
            return RtlLayerCheck(layer, bits, int(act_bits), batch, 0, (0, 0, 0, 0), model,
                                 engine.device.cycles - start, rejection_reason(engine.driver.read_register("status")))
        sim_cycles = engine.device.cycles - start
        results = engine.driver.results(prepared)
    finally:
        engine.driver.release(prepared)
    reference = run_layer(layer, x_int, w_int, weight_bits, act_bits, overlay, params).output.reshape(results.shape)
    mismatches = int(np.count_nonzero(results.astype(np.int64) != reference))
    cycles = (counters.fetch, counters.execute, counters.result, counters.total)
    return RtlLayerCheck(layer, bits, int(act_bits), batch, mismatches, cycles, model, sim_cycles)
