"""Fit the analytic model's *global* parameters to per-layer measurements, and say how well it predicts.

The timing parameters (``ScheduleParams``: DRAM and result efficiencies, per-layer/per-tile/per-pass overheads)
are fitted by robust least squares (``scipy.optimize.least_squares``, ``soft_l1`` loss on the log of
predicted/measured latency), on the schedule's smooth relaxation of its per-tile rounding (the exact cost is a
staircase in the parameters), from the best points of a coarse grid; errors are reported on the exact model. Never
one parameter per layer. Optionally (``search_overlay``) the overlay's structure is searched too: array dims Dm, Dn,
Dk, DRAM bytes/cycle and the batch lowering (``per_image_convs``), by coordinate descent over a discrete grid (plus
coupled steps), each candidate screened at a few timing settings; for data from another overlay, such as a published
lookup table. The structure is chosen once on all data; cross-validation refits the timing parameters. Only the
achieved bandwidth (port width x efficiency) is identifiable, not the two apart.

With ``pipeline`` (the RTL's step pipeline, ``ScheduleParams.pipeline``) the fit is of that model's constants
instead (``PIPELINE_PARAMETERS``, least squares on the log ratio from ``_PIPELINE_START``), and of the HP port's
read latency and bandwidth (``PORT_FITTED``, from the given ones) unless they are kept; the port's other fields are
kept; no structure search. ``fit_pipeline`` fits the constants on RTL-simulation runs
under several known port settings.

Errors are absolute percentage errors of latency: in-sample, k-fold over samples, and leave-one-layer-out (every
measurement of one layer held out together). Baselines are printed beside them: ``c * MACs * wbits * abits`` with
one global ``c``, and ``c_layer * wbits * abits`` with one constant per layer (the naive table scaling).
Energy, when measured, is fitted after latency by non-negative least squares on relative error:
``E = idle_power * t + e_op * binary_ops + e_byte * dram_bytes``.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np
from scipy.optimize import least_squares, nnls

from autoq.common.errors import AutoQError
from autoq.common.network import LayerSpec
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.resources import DEVICES, estimate
from autoq.overlay.schedule import LayerEntry, ScheduleError, ScheduleParams, table_cycles, tile_table
from autoq.overlay.tiling import OperandError

from autoq.overlay.calibration_params import CalibrationParams, EnergyParams, today
from .measurements import Dataset

FREE_PARAMETERS = ("dram_efficiency", "result_efficiency", "layer_overhead_cycles", "tile_overhead_cycles",
                   "pass_overhead_cycles")
# least-squares coordinates: efficiencies in log space, the layer overhead in thousands of cycles, the others in cycles
# (finite-difference steps are relative to max(1, |x|))
_LAYER_OVERHEAD_UNIT = 1000.0
_LOWER = np.array([math.log(0.02), math.log(0.02), 0.0, 0.0, 0.0])
_UPPER = np.array([0.0, math.log(1e4), 1e4, 1e4, 64.0])
_START_GRID = [np.array([math.log(d), math.log(r), 0.0, 0.0, p])
               for d in (1.0, 0.7, 0.5, 0.3) for r in (0.5, 1.0, 3.0, 1e3) for p in (0.0, 1.0, 3.0)]
_STARTS_KEPT = 3  # least-squares runs from the best grid points
_SCREEN_GRID = [np.array([math.log(d), math.log(r), 0.0, 0.0, p]) for d in (1.0, 0.5) for r in (1.0, 1e3) for p in (0.0, 1.0)]
STRUCTURE_GRID = {  # in the order coordinate descent visits them: bandwidth first, it decides what is memory-bound
    "dram_ports": (1, 2, 4, 8, 16),
    "per_image_convs": (False, True),
    "dk": (32, 64, 128, 256, 512),
    "dm": (4, 8, 16, 32, 64),
    "dn": (4, 8, 16, 32, 64),
}
SOFT_L1_SCALE = 0.05  # residuals (log ratio) beyond ~5% count linearly, not squared


class FitError(AutoQError, ValueError):
    """The measurements cannot be fitted (too few, or they do not fit the overlay)."""


class ErrorFigures(NamedTuple):
    mape: float  # mean absolute percentage error, in percent
    max_ape: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"mape_percent": round(self.mape, 4), "max_ape_percent": round(self.max_ape, 4), "samples": self.n}


def error_figures(predicted: np.ndarray, measured: np.ndarray) -> ErrorFigures:
    ape = np.abs(predicted / measured - 1) * 100
    return ErrorFigures(float(ape.mean()), float(ape.max()), int(ape.size))


class Structure(NamedTuple):
    overlay: OverlayConfig
    per_image_convs: bool

    def describe(self) -> str:
        o = self.overlay
        return (f"Dm={o.dm} Dn={o.dn} Dk={o.dk} dram={o.dram_bytes_per_cycle:g}B/cycle "
                f"lowering={'per-image' if self.per_image_convs else 'batched'}")


class _Predictor:
    """Tile tables of every sample under one structure; predicts all samples' cycles for any timing parameters."""

    def __init__(self, dataset: Dataset, structure: Structure):
        self.structure = structure
        by_batch: dict[int, list[int]] = defaultdict(list)
        for i, sample in enumerate(dataset.samples):
            by_batch[sample.batch].append(i)
        self.parts = []
        for batch, indices in sorted(by_batch.items()):
            # one entry per layer a sample covers (a whole-network sample covers several); owner: its sample
            entries = [LayerEntry(*part) for i in indices for part in dataset.samples[i].parts]
            owner = np.array([i for i in indices for _ in dataset.samples[i].parts])
            try:
                table = tile_table(entries, structure.overlay, batch, True, structure.per_image_convs)
            except (ScheduleError, OperandError) as exc:
                raise FitError(f"measurements do not fit overlay {structure.overlay.name!r}: {exc}") from None
            self.parts.append((owner, table))
        self.size = len(dataset.samples)

    def cycles(self, params: ScheduleParams, relaxed: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(total cycles, binary ops, DRAM bytes) per sample; ``relaxed``: smooth in ``params`` (see table_cycles)."""
        total, ops, dram = np.zeros(self.size), np.zeros(self.size), np.zeros(self.size)
        for owner, table in self.parts:
            cycles = table_cycles(table, self.structure.overlay, params, relaxed)
            np.add.at(total, owner, cycles.total)
            np.add.at(ops, owner, cycles.binary_ops)
            np.add.at(dram, owner, cycles.dram_bytes)
        return total, ops, dram

    def seconds(self, params: ScheduleParams, relaxed: bool = False) -> np.ndarray:
        return self.cycles(params, relaxed)[0] / self.structure.overlay.clock_hz


def _params(x: np.ndarray, per_image_convs: bool) -> ScheduleParams:
    return ScheduleParams(float(min(1.0, math.exp(x[0]))), float(math.exp(x[1])), float(x[2]) * _LAYER_OVERHEAD_UNIT,
                          float(x[3]), float(x[4]), per_image_convs)


def _vector(params: ScheduleParams) -> np.ndarray:
    return np.array([math.log(params.dram_efficiency), math.log(params.result_efficiency),
                     params.layer_overhead_cycles / _LAYER_OVERHEAD_UNIT, params.tile_overhead_cycles,
                     params.pass_overhead_cycles])


def _best_starts(predictor: "_Predictor", measured: np.ndarray, train: np.ndarray, count: int) -> list[np.ndarray]:
    """The ``count`` points of the coarse start grid with the lowest training MAPE."""
    per_image = predictor.structure.per_image_convs
    scored = sorted(((error_figures(predictor.seconds(_params(x, per_image))[train], measured[train]).mape, i)
                     for i, x in enumerate(_START_GRID)))
    return [_START_GRID[i] for _, i in scored[:count]]


def _fit_timing(predictor: _Predictor, measured: np.ndarray, train: np.ndarray, starts: Sequence[np.ndarray],
                max_nfev: int) -> tuple[ScheduleParams, float]:
    """Best timing parameters on the ``train`` samples over the given starting points, with their training MAPE."""
    per_image = predictor.structure.per_image_convs
    log_measured = np.log(measured[train])

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(predictor.seconds(_params(x, per_image), relaxed=True)[train]) - log_measured

    best: tuple[ScheduleParams, float] | None = None
    for x0 in starts:
        # fitted on the relaxed (smooth) cycles; judged below on the exact ones
        solution = least_squares(residuals, np.clip(x0, _LOWER, _UPPER), bounds=(_LOWER, _UPPER), loss="soft_l1",
                                 f_scale=SOFT_L1_SCALE, diff_step=1e-3, max_nfev=max_nfev, x_scale="jac")
        params = _params(solution.x, per_image)
        mape = error_figures(predictor.seconds(params)[train], measured[train]).mape
        if best is None or mape < best[1]:
            best = (params, mape)
    assert best is not None
    return best


def _fit_energy(measured_energy: np.ndarray, seconds: np.ndarray, ops: np.ndarray, dram: np.ndarray) -> EnergyParams | None:
    have = np.isfinite(measured_energy)
    if have.sum() < 3:
        return None
    design = np.stack([seconds[have], ops[have], dram[have]], axis=1) / measured_energy[have, None]
    scale = design.max(axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(design / scale, np.ones(int(have.sum())))
    idle, e_op, e_byte = solution / scale
    return EnergyParams(float(idle), float(e_op), float(e_byte))


def _baselines(dataset: Dataset, measured: np.ndarray) -> dict[str, dict[str, float]]:
    """Naive scalings, each fitted in log space (the geometric mean of measured/basis)."""
    wa = np.array([sum(np.mean(w) * a for _, w, a in s.parts) for s in dataset.samples])
    macs_wa = np.array([sum(layer.macs(s.batch) * np.mean(w) * a for layer, w, a in s.parts) for s in dataset.samples])
    global_c = math.exp(float(np.mean(np.log(measured / macs_wa))))
    keys = np.array([s.key for s in dataset.samples])
    per_layer = np.empty_like(measured)
    for key in np.unique(keys):
        mask = keys == key
        per_layer[mask] = math.exp(float(np.mean(np.log(measured[mask] / wa[mask])))) * wa[mask]
    return {
        "c*MACs*wbits*abits (1 global c)": error_figures(global_c * macs_wa, measured).to_dict(),
        "c_layer*wbits*abits (1 c per layer)": error_figures(per_layer, measured).to_dict(),
    }


def _with_structure(template: OverlayConfig, choice: dict) -> Structure:
    overlay = template.with_changes(dm=choice["dm"], dn=choice["dn"], dk=choice["dk"], dram_ports=choice["dram_ports"])
    if not estimate(overlay).fits:  # a bigger array than the template's part: the smallest listed device that holds it
        for family in DEVICES:
            candidate = overlay.with_changes(part=family)
            if estimate(candidate).fits:
                overlay = candidate
                break
    return Structure(overlay, choice["per_image_convs"])


def search_structure(dataset: Dataset, template: OverlayConfig, per_image_convs: bool,
                     progress: Callable[[str], None] = lambda _: None, max_sweeps: int = 4) -> tuple[Structure, list[dict]]:
    """Coordinate descent over ``STRUCTURE_GRID`` from the template; a candidate's score is its best MAPE over the
    timing parameters of a small screening grid (cheap: no fit per candidate)."""
    measured = np.array([s.latency_s for s in dataset.samples])
    choice = {"dm": template.dm, "dn": template.dn, "dk": template.dk, "dram_ports": template.dram_ports,
              "per_image_convs": per_image_convs}
    scores: dict[tuple, float] = {}
    log: list[dict] = []

    def score(candidate: dict) -> float:
        key = tuple(candidate[k] for k in STRUCTURE_GRID)
        if key not in scores:
            structure = _with_structure(template, candidate)
            predictor = _Predictor(dataset, structure)
            mape = min(error_figures(predictor.seconds(_params(x, candidate["per_image_convs"])), measured).mape
                       for x in _SCREEN_GRID)
            scores[key] = mape
            log.append({"structure": structure.describe(), "part": structure.overlay.part, "mape_percent": round(mape, 3)})
            progress(f"  {structure.describe():60s} MAPE {mape:7.2f}%")
        return scores[key]

    def neighbours(choice: dict, axis: str) -> list[dict]:
        """Every value of one axis, or a coupled step: ``shape`` changes the array's aspect ratio at equal size
        (Dm/2 x 2Dn, 2Dm x Dn/2); ``word`` scales Dk and the DRAM bandwidth together (equal fetch time per word)."""
        if axis == "shape":
            steps = [{"dm": choice["dm"] // 2, "dn": choice["dn"] * 2}, {"dm": choice["dm"] * 2, "dn": choice["dn"] // 2}]
        elif axis == "word":
            steps = [{"dk": choice["dk"] // 2, "dram_ports": choice["dram_ports"] // 2},
                     {"dk": choice["dk"] * 2, "dram_ports": choice["dram_ports"] * 2}]
        else:
            steps = [{axis: value} for value in STRUCTURE_GRID[axis]]
        return [{**choice, **step} for step in steps if all(v in STRUCTURE_GRID[k] for k, v in step.items())]

    best = score(choice)
    for _ in range(max_sweeps):
        improved = False
        for axis in (*STRUCTURE_GRID, "shape", "word"):
            for candidate in neighbours(choice, axis):
                if (mape := score(candidate)) < best - 1e-9:
                    best, choice, improved = mape, candidate, True
        if not improved:
            break
    return _with_structure(template, choice), log


@dataclass(frozen=True)
class FitResult:
    structure: Structure
    schedule: ScheduleParams
    energy: EnergyParams | None
    in_sample: ErrorFigures
    kfold: ErrorFigures
    leave_one_layer_out: ErrorFigures
    energy_in_sample: ErrorFigures | None
    baselines: dict[str, dict[str, float]]
    folds: int
    search_log: tuple[dict, ...]
    fitted: tuple[str, ...]  # the ``schedule`` fields fitted; the others as given

    def figures(self) -> dict:
        return {
            "latency_in_sample": self.in_sample.to_dict(),
            f"latency_{self.folds}fold": self.kfold.to_dict(),
            "latency_leave_one_layer_out": self.leave_one_layer_out.to_dict(),
            "energy_in_sample": self.energy_in_sample.to_dict() if self.energy_in_sample else None,
            "baselines": self.baselines,
            "structure": self.structure.describe(),
            "structure_search": list(self.search_log),
            "fitted_parameters": list(self.fitted),
        }


def fit(dataset: Dataset, template: OverlayConfig, search_overlay: bool = False, per_image_convs: bool = False,
        folds: int = 5, seed: int = 0, progress: Callable[[str], None] = lambda _: None,
        pipeline: ScheduleParams | None = None, fit_port: bool = True) -> FitResult:
    """Fit ``dataset`` (see the module docstring). ``template`` is the overlay (or the search's starting point).
    ``pipeline``: fit the RTL step pipeline's constants (``PIPELINE_PARAMETERS``) and, if ``fit_port``, the HP
    port's ``PORT_FITTED`` instead of the stage-total parameters, every other field kept from ``pipeline``."""
    keys = dataset.layer_keys
    free = FREE_PARAMETERS if pipeline is None else PIPELINE_PARAMETERS + (PORT_FITTED if fit_port else ())
    if pipeline is not None and not pipeline.pipeline:
        raise FitError("the schedule whose pipeline constants are to be fitted is a stage-total one (pipeline: false)")
    if pipeline is not None and search_overlay:
        raise FitError("the overlay structure is searched with the stage-total model only: the pipeline model is the "
                       "RTL's own, fitted on measurements of that RTL's overlay")
    if len(dataset.samples) < 2 * len(free):
        raise FitError(f"{len(dataset.samples)} measurements are too few to fit {len(free)} parameters"
                       + (f" ({', '.join(free)}; with the HP port kept, {len(PIPELINE_PARAMETERS)})"
                          if pipeline is not None and fit_port else ""))
    if len(keys) < 2:
        raise FitError("measurements of at least two different layers (or, measured whole, networks) are needed "
                       "(leave-one-layer-out)")
    if folds < 2 or folds > len(dataset.samples):
        raise FitError(f"folds must be between 2 and the number of measurements ({len(dataset.samples)}), got {folds}")
    measured = np.array([s.latency_s for s in dataset.samples])
    log: list[dict] = []
    if search_overlay:
        progress("searching the overlay structure (coordinate descent, candidates screened at a few timing settings):")
        structure, log = search_structure(dataset, template, per_image_convs, progress)
    else:
        structure = Structure(template, per_image_convs)
    predictor = _Predictor(dataset, structure)
    everything = np.ones(measured.size, dtype=bool)
    model = "stage-total" if pipeline is None else "pipeline"
    progress(f"fitting the {model} timing parameters on {measured.size} measurements ({structure.describe()})")
    refit: Callable[[np.ndarray], ScheduleParams]
    if pipeline is None:
        starts = _best_starts(predictor, measured, everything, _STARTS_KEPT)
        params, _ = _fit_timing(predictor, measured, everything, starts, max_nfev=60)
        warm = (_vector(params),)
        refit = lambda train: _fit_timing(predictor, measured, train, warm, max_nfev=25)[0]
    else:
        steps = _DatasetPipeline(predictor, dataclasses.replace(pipeline, per_image_convs=per_image_convs), free)
        cycles = measured * structure.overlay.clock_hz
        start = np.r_[_PIPELINE_START, [getattr(pipeline, name) for name in free[len(PIPELINE_PARAMETERS):]]]
        x = _fit_pipeline_x(steps, cycles, everything, start, *_pipeline_bounds(free))
        params = steps.params(x)
        refit = lambda train: steps.params(_fit_pipeline_x(steps, cycles, train, x, *_pipeline_bounds(free)))
    seconds = predictor.seconds(params)

    held_out = np.empty_like(measured)
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(measured.size) % folds
    for fold in range(folds):
        test = fold_of == fold
        held_out[test] = predictor.seconds(refit(~test))[test]
    kfold = error_figures(held_out, measured)
    progress(f"{folds}-fold cross-validation: MAPE {kfold.mape:.2f}%")

    sample_keys = np.array([s.key for s in dataset.samples])
    for key in keys:
        test = sample_keys == key
        held_out[test] = predictor.seconds(refit(~test))[test]
    lolo = error_figures(held_out, measured)
    progress(f"leave-one-layer-out ({len(keys)} layers): MAPE {lolo.mape:.2f}%")

    _, ops, dram = predictor.cycles(params)
    measured_energy = np.array([s.energy_j for s in dataset.samples])
    energy = _fit_energy(measured_energy, measured, ops, dram)
    energy_figures = None
    if energy is not None:
        have = np.isfinite(measured_energy)
        predicted_energy = energy.total_j(seconds, ops, dram)
        energy_figures = error_figures(predicted_energy[have], measured_energy[have])
    return FitResult(structure, params, energy, error_figures(seconds, measured), kfold, lolo, energy_figures,
                     _baselines(dataset, measured), folds, tuple(log), free)


def pipeline_to_fit(base: CalibrationParams, stage_totals: bool | None = None) -> ScheduleParams | None:
    """``fit``'s ``pipeline`` for a fit on top of calibration ``base``: ``base``'s step pipeline (its HP port's
    settings), or a default one if ``base`` has the stage totals; None (fit the stage totals) if ``stage_totals``,
    which defaults to whether ``base`` has them."""
    if base.schedule.pipeline if stage_totals is None else not stage_totals:
        return base.schedule if base.schedule.pipeline else ScheduleParams(pipeline=True)
    return None


def calibration_from_fit(result: FitResult, dataset: Dataset, base: CalibrationParams, calibration_id: str,
                         bundled: OverlayConfig | None) -> CalibrationParams:
    """The calibration file of a fit. ``calibrated`` only when every latency of ``dataset`` was measured (hardware,
    RTL simulation, an external measurement file), else false with the reason in ``notes`` and ``fit``. Energy
    parameters not measured are kept from ``base`` (and say so); the fitted overlay is carried in the file unless it
    is the ``bundled`` one."""
    overlay = result.structure.overlay
    carried = None if bundled is not None and overlay.build_hash == bundled.build_hash else overlay.with_changes(
        name=f"{calibration_id}-overlay")
    calibrated = not dataset.predicted
    kinds = "/".join(dataset.measured_by) or "no"
    if calibrated:
        notes = [f"calibrated: latency fitted on {kinds} measurements ({dataset.source}): {len(dataset.samples)} "
                 f"measurements of {len(dataset.layer_keys)} layers"]
    else:
        notes = [f"NOT calibrated: {dataset.predicted}; a fit on a model's predictions reproduces that model, it "
                 f"measures nothing (fitted on {dataset.source})"]
    schedule = result.schedule
    notes.append(f"schedule model pipeline={str(schedule.pipeline).lower()}: fitted {', '.join(result.fitted)}")
    if schedule.pipeline:
        kept = {name: getattr(schedule, name) for name in PORT_PARAMETERS if name not in result.fitted}
        origin = (f"kept from calibration {base.id!r}" if all(getattr(base.schedule, k) == v for k, v in kept.items())
                  else "as given to the fit")
        notes.append(f"the HP port's settings not fitted, {origin} (assumptions unless that calibration measured "
                     "them): " + ", ".join(f"{k} {v:g}" for k, v in kept.items()))
    if result.energy is None:
        notes.append(f"energy parameters not measured: kept from calibration {base.id!r} (calibrated={base.calibrated})")
    figures = result.figures()
    figures["fitted_on"] = {"measured_by": list(dataset.measured_by), "predicted": dataset.predicted,
                            "calibrated": calibrated}
    return CalibrationParams(
        id=calibration_id,
        source=dataset.source,
        overlay_build_hash=overlay.build_hash,
        date=today(),
        calibrated=calibrated,
        schedule=schedule,
        energy=result.energy or base.energy,
        overlay=carried,
        fit=figures,
        notes=tuple(notes),
    )


# ---- the RTL engine's step pipeline (ScheduleParams.pipeline), fitted on RTL-simulation cycle counts -------------

PIPELINE_PARAMETERS = ("layer_overhead_cycles", "row_cycles", "result_burst_cycles", "write_slot_cycles")
"""The constants ``fit_pipeline`` fits; the rest of the pipeline model is derived from the RTL (``row_tile_cycles``
and ``step_sync_cycles`` stay 0, see ``ScheduleParams``)."""
PORT_PARAMETERS = ("read_latency_cycles", "read_outstanding", "write_latency_cycles", "write_outstanding",
                   "port_bytes_per_cycle")
_PIPELINE_START = np.array([150.0, 3.0, 2.0, 2.0])
_PIPELINE_UPPER = np.array([1e5, 1e3, 64.0, 1e3])
PORT_FITTED = ("read_latency_cycles", "port_bytes_per_cycle")
"""The HP-port fields a dataset fit (``fit``) fits beside the pipeline constants. Kept: the write latency, which the
model cannot tell from ``layer_overhead_cycles`` and ``write_slot_cycles`` (it adds to one per layer and to the
other per write burst), and the outstanding bursts (whole numbers in the model; the RTL keeps at most 8 reads and 16
writes in flight whatever the port allows)."""
_PORT_BOUNDS = {"read_latency_cycles": (0.0, 1e4), "port_bytes_per_cycle": (0.1, 64.0)}


def _pipeline_bounds(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares bounds of ``PIPELINE_PARAMETERS`` followed by port fields ``names[4:]``."""
    port = [_PORT_BOUNDS[name] for name in names[len(PIPELINE_PARAMETERS):]]
    return (np.r_[np.zeros(len(PIPELINE_PARAMETERS)), [low for low, _ in port]],
            np.r_[_PIPELINE_UPPER, [high for _, high in port]])


class PipelineRun(NamedTuple):
    """One layer run on the RTL under one HP-port setting (``port``: ``PORT_PARAMETERS`` values) and its
    measured ``cycles`` (the engine's ``cycles_total``)."""

    layer: LayerSpec
    weight_bits: tuple[int, ...]
    act_bits: int
    batch: int
    port: tuple[float, float, float, float, float]
    cycles: float


class _PipelinePredictor:
    """Tile tables of the runs, one per (port setting, batch); cycles of all runs under the fitted constants."""

    def __init__(self, runs: Sequence[PipelineRun], overlay: OverlayConfig):
        self.overlay, self.n = overlay, len(runs)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, run in enumerate(runs):
            groups[(run.port, run.batch)].append(i)
        self.groups = []
        for (port, batch), index in groups.items():
            entries = [LayerEntry(runs[i].layer, runs[i].weight_bits, runs[i].act_bits) for i in index]
            self.groups.append((np.array(index), dict(zip(PORT_PARAMETERS, port)), tile_table(entries, overlay, batch)))

    def cycles(self, x: np.ndarray, relaxed: bool = False) -> np.ndarray:
        out = np.empty(self.n)
        constants: dict[str, Any] = dict(zip(PIPELINE_PARAMETERS, (float(v) for v in x)))
        for index, port, table in self.groups:
            params = ScheduleParams(pipeline=True, **constants, **port)
            out[index] = table_cycles(table, self.overlay, params, relaxed).total
        return out


class _PipelineCycles(Protocol):
    def cycles(self, x: np.ndarray, relaxed: bool = False) -> np.ndarray: ...


class _DatasetPipeline:
    """A dataset's cycles (``_Predictor``, whole-network samples summed) under the pipeline schedule ``base`` with
    its fields ``names`` set to ``x``."""

    def __init__(self, predictor: _Predictor, base: ScheduleParams, names: Sequence[str]):
        self.predictor, self.base, self.names = predictor, base, names

    def params(self, x: np.ndarray) -> ScheduleParams:
        fields: dict[str, Any] = dict(zip(self.names, (float(v) for v in x)))
        return dataclasses.replace(self.base, **fields)

    def cycles(self, x: np.ndarray, relaxed: bool = False) -> np.ndarray:
        return self.predictor.cycles(self.params(x), relaxed)[0]


def _fit_pipeline_x(predictor: _PipelineCycles, measured: np.ndarray, train: np.ndarray, x0: np.ndarray,
                    lower: np.ndarray | None = None, upper: np.ndarray | None = None) -> np.ndarray:
    """Least squares on the log of predicted/measured cycles from ``x0`` within ``lower``..``upper`` (default: those
    of ``PIPELINE_PARAMETERS``)."""
    residual = lambda x: np.log(predictor.cycles(x, relaxed=True)[train] / measured[train])
    bounds = (np.zeros_like(x0) if lower is None else lower, _PIPELINE_UPPER if upper is None else upper)
    return least_squares(residual, np.clip(x0, *bounds), bounds=bounds, x_scale=np.maximum(x0, 1.0)).x


class PipelineFit(NamedTuple):
    """The fitted pipeline constants and how well they predict the runs (exact model, not the relaxation)."""

    params: ScheduleParams  # pipeline=True, the constants fitted, the port fields at their defaults
    predicted: np.ndarray
    in_sample: ErrorFigures
    kfold: ErrorFigures
    leave_one_shape_out: ErrorFigures
    by_shape: dict[str, ErrorFigures]
    shape_out: dict[str, ErrorFigures]  # each shape's error when held out of the fit

    def figures(self) -> dict:
        return {"latency_in_sample": self.in_sample.to_dict(), "latency_kfold": self.kfold.to_dict(),
                "latency_leave_one_shape_out": self.leave_one_shape_out.to_dict(),
                "by_shape": {k: v.to_dict() for k, v in self.by_shape.items()},
                "shape_held_out": {k: v.to_dict() for k, v in self.shape_out.items()}}


def fit_pipeline(runs: Sequence[PipelineRun], overlay: OverlayConfig, folds: int = 5, seed: int = 0) -> PipelineFit:
    """Least squares on the log of predicted/measured cycles for ``PIPELINE_PARAMETERS``; errors in-sample,
    ``folds``-fold and leaving out each layer shape (every run of one ``layer.name``) in turn."""
    if len(runs) < len(PIPELINE_PARAMETERS) + 1:
        raise FitError(f"{len(runs)} runs cannot fit {len(PIPELINE_PARAMETERS)} pipeline constants")
    predictor = _PipelinePredictor(runs, overlay)
    measured = np.array([run.cycles for run in runs], dtype=float)
    everything = np.ones(len(runs), dtype=bool)
    x = _fit_pipeline_x(predictor, measured, everything, _PIPELINE_START)
    predicted = predictor.cycles(x)
    fold = np.random.default_rng(seed).permutation(len(runs)) % folds
    kfold = np.empty(len(runs))
    for k in range(folds):
        kfold[fold == k] = predictor.cycles(_fit_pipeline_x(predictor, measured, fold != k, x))[fold == k]
    shapes = np.array([run.layer.name for run in runs])
    held = np.empty(len(runs))
    for name in dict.fromkeys(shapes.tolist()):
        held[shapes == name] = predictor.cycles(_fit_pipeline_x(predictor, measured, shapes != name, x))[shapes == name]
    names = sorted(set(shapes.tolist()))
    fitted: dict[str, Any] = dict(zip(PIPELINE_PARAMETERS, (round(float(v), 4) for v in x)))
    params = ScheduleParams(pipeline=True, **fitted)
    return PipelineFit(
        params, predicted, error_figures(predicted, measured), error_figures(kfold, measured),
        error_figures(held, measured),
        {n: error_figures(predicted[shapes == n], measured[shapes == n]) for n in names},
        {n: error_figures(held[shapes == n], measured[shapes == n]) for n in names},
    )
