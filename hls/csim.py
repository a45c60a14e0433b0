"""g++ C-simulation of the HLS engine, checked against the numpy reference engine and the schedule model.

``build(overlay)`` renders the overlay's config header (``codegen``) next to a compiled test bench
(``hls/src/csim_tb.cpp`` + ``engine.cpp``, g++ -O2 against the ``ap_types`` headers hls4ml ships) in a cache folder
keyed by the hash of every input, so each overlay compiles once. ``run_job`` plays the AXI master: it writes a
``LayerJob`` (``autoq.overlay.layout``) as the DDR image and register values, runs the top function on it and
reads back the results and every register the engine wrote. ``check_layer`` runs one layer through C-sim and the
reference engine and compares outputs bit for bit and cycle counters with ``schedule.layer_cycles`` (exactly: the
engine charges each step it executes with the schedule's per-tile formulas, in the same floating-point operations).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from autoq.common.errors import AutoQError
from autoq.common.network import LayerSpec
from autoq.overlay.bitserial import value_range
from autoq.overlay.driver import COUNTERS, LayerJob
from autoq.overlay.engine import conv_output_size, run_layer
from autoq.overlay.layout import build_job
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.regmap import CMD_RUN, Status
from autoq.overlay.schedule import LayerCycles, ScheduleParams, layer_cycles

from .codegen import CONFIG_HEADER, TIMING_FIELDS, check_timing, hls_dir, render_config_header

SOURCES = ("engine.hpp", "engine.cpp", "csim_tb.cpp")
CXXFLAGS = ("-O2", "-std=c++14", "-Wno-unknown-pragmas")
BUFFER_DTYPES = {"weights": "<u8", "activations": "<u8", "tiles": "<u4", "results": "<i4"}


class CsimError(AutoQError, RuntimeError):
    """The C-simulation could not be built or run (no compiler, no ap_types headers, a failed run)."""


def ap_types_include() -> Path:
    """The ``ap_types`` headers (``ap_int.h``) shipped by hls4ml."""
    try:
        import hls4ml
    except ImportError:
        raise CsimError("the C-sim needs the ap_types headers hls4ml ships: pip install 'autoq-hil[host]'") from None
    path = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
    if not (path / "ap_int.h").exists():
        raise CsimError(f"hls4ml at {path.parent.parent.parent} does not ship templates/vivado/ap_types/ap_int.h")
    return path


def compiler() -> str:
    name = os.environ.get("CXX", "g++")
    found = shutil.which(name)
    if not found:
        raise CsimError(f"no C++ compiler {name!r} on PATH (set CXX) to build the HLS C-simulation")
    return found


def cache_root() -> Path:
    """Where C-sim builds are cached: ``$AUTOQ_HLS_CACHE`` or ``~/.cache/autoq/hls``."""
    return Path(os.environ.get("AUTOQ_HLS_CACHE") or Path.home() / ".cache" / "autoq" / "hls")


@dataclass(frozen=True)
class CsimBuild:
    """A compiled C-sim test bench for one overlay."""

    binary: Path
    overlay: OverlayConfig


def build(overlay: OverlayConfig, cache: Path | None = None) -> CsimBuild:
    """Compile (or reuse) the C-sim of ``overlay``; the cache key hashes sources, header, flags and compiler."""
    cxx, include = compiler(), ap_types_include()
    source_dir = hls_dir() / "src"
    header = render_config_header(overlay)
    digest = hashlib.sha256()
    for part in [header, cxx, *CXXFLAGS, str(include)] + [(source_dir / name).read_text() for name in SOURCES]:
        digest.update(part.encode() + b"\0")
    folder = (cache or cache_root()) / f"{overlay.name}-{digest.hexdigest()[:16]}"
    binary = folder / "csim"
    if binary.exists():
        return CsimBuild(binary, overlay)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_HEADER).write_text(header)
    partial = folder / f".csim.{os.getpid()}.tmp"
    command = [cxx, *CXXFLAGS, f"-I{include}", f"-I{folder}", f"-I{source_dir}",
               str(source_dir / "engine.cpp"), str(source_dir / "csim_tb.cpp"), "-o", str(partial)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        partial.unlink(missing_ok=True)
        raise CsimError(f"g++ failed to build the C-sim of overlay {overlay.name!r}:\n{done.stderr[-4000:]}")
    os.replace(partial, binary)  # atomic: concurrent builders of the same key end with one complete binary
    return CsimBuild(binary, overlay)


class CsimRun(NamedTuple):
    """What the engine wrote: the results buffer (the job's shape) and every output register."""

    results: np.ndarray
    registers: Mapping[str, int]


def _write_lines(path: Path, values: Mapping[str, object]) -> None:
    path.write_text("".join(f"{name} {value}\n" for name, value in values.items()))


def run_job(csim: CsimBuild, job: LayerJob, params: ScheduleParams = ScheduleParams(), command: int = CMD_RUN,
            timeout_s: float = 120.0) -> CsimRun:
    """Run one job through the C-sim: registers as a driver writes them, buffers as DDR."""
    check_timing(params)
    with tempfile.TemporaryDirectory(prefix="autoq-csim-") as tmp:
        folder = Path(tmp)
        _write_lines(folder / "registers.txt", {**job.descriptor, "command": command})
        _write_lines(folder / "timing.txt", {name: repr(float(getattr(params, name))) for name in TIMING_FIELDS})
        for name, dtype in BUFFER_DTYPES.items():
            if name not in job.buffers:
                raise CsimError(f"job {job.name!r} has no {name} buffer")
            (folder / f"{name}.bin").write_bytes(np.ascontiguousarray(job.buffers[name], dtype=dtype).tobytes())
        try:
            done = subprocess.run([str(csim.binary), str(folder)], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise CsimError(f"C-sim of {job.name!r} ran longer than {timeout_s:g} s") from None
        if done.returncode:
            raise CsimError(f"C-sim of {job.name!r} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        registers = {name: int(value) for name, value in (line.split() for line in done.stdout.splitlines())}
        raw = np.frombuffer((folder / "results.bin").read_bytes(), dtype="<i4")
    return CsimRun(raw.reshape(np.shape(job.buffers["results"])).astype(np.int32), registers)


class LayerCheck(NamedTuple):
    """One layer through the C-sim next to the reference engine and the schedule model."""

    layer: LayerSpec
    weight_bits: tuple[int, ...]
    act_bits: int
    batch: int
    mismatches: int  # outputs that differ from the reference engine
    csim_cycles: tuple[int, int, int, int]  # fetch, execute, result, total as the engine counted them
    model_cycles: LayerCycles

    @property
    def exact(self) -> bool:
        return self.mismatches == 0

    @property
    def cycles_agree(self) -> bool:
        model = self.model_cycles
        return self.csim_cycles == (model.fetch, model.execute, model.result, model.total)

    @property
    def passed(self) -> bool:
        return self.exact and self.cycles_agree


def check_layer(csim: CsimBuild, layer: LayerSpec, x_int: np.ndarray, w_int: np.ndarray,
                weight_bits: Sequence[int] | np.ndarray, act_bits: int, params: ScheduleParams = ScheduleParams()) -> LayerCheck:
    """Run ``layer`` through the C-sim and the reference engine; compare outputs and cycle counters."""
    overlay = csim.overlay
    job = build_job(layer, x_int, w_int, weight_bits, act_bits, overlay)
    run = run_job(csim, job, params)
    if run.registers.get("status") != Status.OK:
        raise CsimError(f"layer {layer.name!r}: the engine rejected the run with status {run.registers.get('status')}")
    reference = run_layer(layer, x_int, w_int, weight_bits, act_bits, overlay, params).output
    reference = reference.reshape(run.results.shape)
    batch = int(np.shape(x_int)[0])
    fetch, execute, result, total = (run.registers[name] for name in COUNTERS)
    # the model at the widths the engine runs (a packed layer's binary rows are 2-bit rows: layout)
    return LayerCheck(
        layer, tuple(int(b) for b in weight_bits), act_bits, batch,
        int(np.count_nonzero(run.results.astype(np.int64) != reference)),
        (fetch, execute, result, total),
        layer_cycles(layer, weight_bits, act_bits, overlay, params, batch),
    )


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
