"""The schedule model's RTL pipeline (``ScheduleParams.pipeline``) fitted on rtlsim cycle counts: the bundled RTL
calibrations, the sweep they are fitted on (``calibration/data/rtl_sweep.csv``, measured by
``tests/benchmarks/rtl_timing_sweep.py``) and refitting from it, the emulated device counting with them, and the fit
against the RTL simulation on layers that were not in the fitting sweep."""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoq.common.network import LayerSpec
from autoq.common.plan import QuantPlan
from autoq.host.models.resolve import spec_for
from autoq.overlay.board import Board
from autoq.overlay.calibration_params import load_default_calibration
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import ScheduleParams, layer_cycles

MAPE_BOUND, MAX_BOUND = 5.0, 15.0  # percent: the fit's stated error (in-sample and leave-one-shape-out MAPE < 5%)
SWEEP = Path(__file__).resolve().parents[1] / "calibration" / "data" / "rtl_sweep.csv"
SWEEP_NAME = "calibration/data/rtl_sweep.csv"
UNSEEN = (  # shapes and sizes the fitting sweep does not contain
    LayerSpec("conv3x3_c24", "conv", 24, 12, 3, 1, 1, 1, (7, 7), (7, 7)),
    LayerSpec("conv5x5_s2", "conv", 8, 10, 5, 2, 2, 1, (11, 11), (6, 6)),
    LayerSpec("grouped2", "conv", 12, 8, 3, 1, 1, 2, (6, 6), (6, 6)),
    LayerSpec("linear_96", "linear", 96, 20),
)


@pytest.mark.parametrize("overlay", ["rtl_small", "pynq_z1"])
def test_rtl_calibrations_are_fits_on_rtlsim(overlay):
    calibration = load_default_calibration(overlay)
    assert calibration.calibrated and calibration.schedule.pipeline
    assert calibration.source.startswith("fitted on rtlsim measurements")
    assert calibration.fit["latency_leave_one_shape_out"]["mape_percent"] < MAPE_BOUND


@pytest.mark.parametrize("overlay", ["rtl_small", "pynq_z1"])
def test_rtl_calibrations_name_the_shipped_sweep(overlay):
    calibration = load_default_calibration(overlay)
    digest = hashlib.sha256(SWEEP.read_bytes()).hexdigest()
    fitted_on = calibration.fit["fitted_on"]
    assert (fitted_on["file"], fitted_on["sha256"], fitted_on["measured_by"]) == (SWEEP_NAME, digest, "rtlsim")
    assert f"sweep {SWEEP_NAME} (sha256 {digest})" in calibration.source


def _sweep_module():
    """``tests/benchmarks/rtl_timing_sweep.py``, the sweep's reader and runner (a script, not a package module)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
    try:
        import rtl_timing_sweep
    finally:
        sys.path.pop(0)
    return rtl_timing_sweep


def _sweep_runs():
    return _sweep_module().load_runs(SWEEP, "rtl_small")


def test_shipped_sweep_refits_to_the_bundled_constants_and_every_shape_fits():
    """The bundled constants are the fit of the shipped rtlsim sweep (``bench_rtl_model.py --csv``), and with them
    every shape of it, the linear ones (one step per row tile) included, is predicted within a few percent."""
    from autoq.calibration.fit import (_PIPELINE_START, PIPELINE_PARAMETERS, _fit_pipeline_x, _PipelinePredictor,
                                       error_figures)

    runs, overlay = _sweep_runs(), load_overlay("rtl_small")
    assert len(runs) == 1008  # every run of the default sweep came back bit-exact
    predictor = _PipelinePredictor(runs, overlay)
    measured = np.array([run.cycles for run in runs])
    refit = _fit_pipeline_x(predictor, measured, np.ones(len(runs), dtype=bool), _PIPELINE_START)
    bundled = load_default_calibration("rtl_small").schedule
    np.testing.assert_allclose(refit, [getattr(bundled, name) for name in PIPELINE_PARAMETERS], rtol=1e-3, atol=1e-3)
    predicted = np.array([layer_cycles(run.layer, run.weight_bits, run.act_bits, overlay,
                                       replace(bundled, **dict(zip(("read_latency_cycles", "read_outstanding",
                                                                    "write_latency_cycles", "write_outstanding",
                                                                    "port_bytes_per_cycle"), run.port))),
                                       run.batch).total for run in runs])
    assert error_figures(predicted, measured).mape < 1.5
    shapes = np.array([run.layer.name for run in runs])
    for name in set(shapes.tolist()):
        figures = error_figures(predicted[shapes == name], measured[shapes == name])
        assert figures.mape < 3.0 and figures.max_ape < 10.0, (name, figures)


def test_calibrate_fits_the_rtl_pipeline_and_the_port_on_rtlsim_runs(tmp_path, capsys):
    """``autoq calibrate`` on RTL-simulation runs at an HP port other than the bundled calibration's assumed one (the
    shipped sweep's runs at read latency 80, as a measurement CSV) fits the RTL's step pipeline and the port's read
    latency and bandwidth by default: it finds the read latency, and predicts the runs, every layer shape held out in
    turn, several times better than the same fit with the assumed port kept, or a fit of the stage totals."""
    from autoq.calibration.measurements import write_measurements_csv
    from autoq.host.cli import main

    overlay = load_overlay("rtl_small")
    runs = [run for run in _sweep_runs() if run.port == (80.0, 8.0, 30.0, 8.0, 6.4)]
    assert len(runs) == 144 and load_default_calibration("rtl_small").schedule.read_latency_cycles == 40.0
    write_measurements_csv(_sweep_module().runs_as_measurements(runs, overlay.clock_hz).samples, tmp_path / "rtlsim.csv")
    reports = {}
    for options in ((), ("--keep-port",), ("--schedule", "stage-totals")):
        assert main(["calibrate", str(tmp_path / "rtlsim.csv"), "--overlay", "rtl_small", "-o", str(tmp_path / "c.json"),
                     "--json", *options]) == 0
        reports[options[-1] if options else "default"] = json.loads(capsys.readouterr().out)
    fitted = reports["default"]
    assert fitted["calibrated"] and fitted["schedule"]["pipeline"] and not reports["stage-totals"]["schedule"]["pipeline"]
    assert fitted["schedule"]["read_latency_cycles"] == pytest.approx(80.0, rel=0.1)
    assert reports["--keep-port"]["schedule"]["read_latency_cycles"] == 40.0
    assert any(note.startswith("schedule model pipeline=true: fitted layer_overhead_cycles, row_cycles, result_burst_cycles, "
                               "write_slot_cycles, read_latency_cycles") for note in fitted["notes"])
    held_out = {name: report["fit"]["latency_leave_one_layer_out"]["mape_percent"] for name, report in reports.items()}
    assert held_out["default"] < 2.0, held_out
    assert min(held_out["--keep-port"], held_out["stage-totals"]) > 3 * held_out["default"], held_out


def test_linear_layers_pay_one_read_latency_per_row_tile():
    """One column tile: the requester's loop (the table entry behind the previous row tile's weights, its
    multiplies, the next weights) is the period, one read latency per row tile, and one more per weight chunk (16
    one-bit row tiles of 256 inputs here), whose first entry is read again, as the RTL simulation counts it
    (Amaranth trace with the rtlsim HP-port model, 1/2 bits, 8 outstanding: 256 -> 64 minus 256 -> 32 channels,
    per row tile, +31.875 cycles from read latency 10 to 40 and +42.5 from 40 to 80)."""
    overlay, schedule = load_overlay("rtl_small"), load_default_calibration("rtl_small").schedule
    per_tile = {}
    for latency in (10.0, 40.0, 80.0):
        at = replace(schedule, read_latency_cycles=latency)
        small, big = (layer_cycles(LayerSpec("fc", "linear", 256, c_out), np.ones(c_out, dtype=int), 2, overlay, at).total
                      for c_out in (32, 64))
        per_tile[latency] = (big - small) / 16
    assert per_tile[40.0] - per_tile[10.0] == pytest.approx(30.0 * 17 / 16, abs=1.0)
    assert per_tile[80.0] - per_tile[40.0] == pytest.approx(40.0 * 17 / 16, abs=1.0)


def test_emulated_rtl_small_counts_with_the_rtlsim_fit():
    network = spec_for("digits")
    plan = QuantPlan.uniform(network, 4, 4)
    overlay, schedule = load_overlay("rtl_small"), load_default_calibration("rtl_small").schedule
    board = Board.emulated("rtl_small")
    try:
        measured = board.measure(network, plan)
    finally:
        board.close()
    stage_model = replace(schedule, pipeline=False)
    for layer, got in zip(network.layers, measured.layers):
        bits = np.full(layer.c_out, 4)
        assert got.cycles["total"] == layer_cycles(layer, bits, 4, overlay, schedule).total
        assert got.cycles["total"] != layer_cycles(layer, bits, 4, overlay, stage_model).total


def test_pipeline_follows_the_port_settings():
    layer, overlay = UNSEEN[0], load_overlay("rtl_small")
    bits = np.full(layer.c_out, 2)
    base = load_default_calibration("rtl_small").schedule
    cycles = {lat: layer_cycles(layer, bits, 2, overlay, replace(base, read_latency_cycles=lat)).total
              for lat in (10.0, 40.0, 80.0)}
    assert cycles[10.0] < cycles[40.0] < cycles[80.0]  # a fetch-latency-bound layer
    fewer = layer_cycles(layer, bits, 2, overlay, replace(base, read_outstanding=2.0, write_outstanding=2.0)).total
    assert fewer > cycles[40.0]


@pytest.fixture(scope="module")
def rtl_small_build():
    from autoq.hls.rtlsim import RtlSimBuildError, build, find_toolchain
    from autoq.hls.rtlsim.board import engine_verilog

    try:
        find_toolchain()
    except RtlSimBuildError as exc:
        pytest.skip(f"no Verilator toolchain here: {exc}")
    overlay = load_overlay("rtl_small")
    text = engine_verilog(overlay)
    build(text)
    return overlay, text


@pytest.mark.slow
def test_the_shipped_sweep_is_the_current_rtls(rtl_small_build):
    """The runs the bundled calibrations are fitted on, run again on today's RTL (the whole default sweep, its
    seeded operands), count the same cycles in every stage and come back as bit-exact: a change
    to the RTL's timing fails here until the sweep is measured again and the calibrations refitted, instead of
    leaving them fitted on an RTL that no longer exists (the overlay's build hash covers its parameters, not the
    RTL's revision)."""
    import csv

    sweep_module = _sweep_module()
    with SWEEP.open(newline="") as handle:
        shipped = {sweep_module._run_key(row): row for row in csv.DictReader(handle)}
    counters = ("rtl_fetch", "rtl_execute", "rtl_result", "rtl_total", "exact")
    rerun = list(sweep_module.sweep("rtl_small", sweep_module.SHAPES, sweep_module.BITS,
                                    sweep_module.memory_settings(sweep_module.MEMORY), (1, 2)))
    assert len(rerun) == len(shipped) == 1008
    for row in rerun:
        old = shipped[sweep_module._run_key({k: str(v) for k, v in row.items()})]
        assert [str(row[c]) for c in counters] == [old[c] for c in counters], (
            f"{row['layer']} {row['wbits_spec']}/{row['act_bits']} batch {row['batch']}: the RTL counts "
            f"{[row[c] for c in counters]}, the shipped sweep {[old[c] for c in counters]}: measure the sweep again "
            "(tests/benchmarks/rtl_timing_sweep.py) and refit the calibrations (bench_rtl_model.py --write-calibration)")


@pytest.mark.slow
def test_fit_tracks_rtlsim_on_layers_outside_the_sweep(rtl_small_build):
    from autoq.hls.rtlsim import HPPortModel
    from autoq.hls.rtlsim.check import check_layer, open_engine
    from autoq.overlay.bitserial import value_range

    overlay, text = rtl_small_build
    fitted = load_default_calibration("rtl_small").schedule
    rng = np.random.default_rng(7)
    errors = []
    for latency, outstanding in ((40, 8), (80, 2)):
        engine = open_engine(overlay, HPPortModel(read_latency=latency, read_outstanding=outstanding,
                                                  write_outstanding=outstanding), verilog=text)
        at = replace(fitted, read_latency_cycles=float(latency), read_outstanding=float(outstanding),
                     write_outstanding=float(outstanding))
        try:
            for layer in UNSEEN:
                bits = rng.integers(2, 9, layer.c_out)
                abits = int(rng.integers(2, 9))
                low, high = value_range(bits, signed=True)
                w = rng.integers(low[:, None], high[:, None] + 1, (layer.c_out, layer.kernel_size))
                w = w.reshape(layer.c_out, layer.c_in // layer.groups, *layer.kernel)
                x = rng.integers(0, 1 << abits, (1, layer.c_in, *layer.in_hw))
                check = check_layer(engine, layer, x, w, bits, abits, ScheduleParams())
                assert check.exact, (layer.name, check.rejected, check.mismatches)
                model = layer_cycles(layer, bits, abits, overlay, at).total
                errors.append(100 * abs(model / check.rtl_cycles[3] - 1))
        finally:
            engine.close()
    assert np.mean(errors) <= MAPE_BOUND and max(errors) <= MAX_BOUND, errors
