"""Calibration: measurement inputs, the global fit with cross-validation, and ``autoq calibrate``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.overlay.calibration_params import CalibrationParams, EnergyParams, load_default_calibration
from autoq.calibration.fit import FitError, fit
from autoq.calibration.measurements import (
    Dataset,
    MeasurementError,
    Sample,
    load_samples,
    read_measurements_csv,
    samples_from_lookup_table,
    write_measurements_csv,
)
from autoq.common.backend import open_backend
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.cli import main
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import ScheduleParams, layer_cycles

TRUTH = ScheduleParams(dram_efficiency=0.6, result_efficiency=1.5, layer_overhead_cycles=3000.0,
                       tile_overhead_cycles=4.0, pass_overhead_cycles=1.0)
TRUE_ENERGY = EnergyParams(idle_power_w=2.0, energy_per_binary_op_j=3e-13, energy_per_dram_byte_j=2e-10)
STAGE_TOTAL = ScheduleParams()
"""The stage-total schedule (``pipeline`` false), which ``autoq calibrate --schedule stage-totals`` fits; by default it
fits the bundled calibration's model, the RTL's step pipeline."""
LAYERS = (
    LayerSpec("conv", "conv", 16, 32, 3, 1, 1, 1, (16, 16), (16, 16)),
    LayerSpec("wide", "conv", 64, 64, 3, 2, 1, 1, (16, 16), (8, 8)),
    LayerSpec("dw", "depthwise", 32, 32, 3, 1, 1, 32, (16, 16), (16, 16)),
    LayerSpec("pw", "conv", 32, 48, 1, 1, 0, 1, (16, 16), (16, 16)),
    LayerSpec("fc", "linear", 256, 100),
)


def synthetic(overlay, params=TRUTH, noise=0.0, seed=0) -> Dataset:
    """Layers measured by the model itself with known parameters (kernel-wise bits included), optional noise."""
    rng = np.random.default_rng(seed)
    samples = []
    for layer in LAYERS:
        for wbits, abits, batch in [(2, 2, 1), (4, 4, 1), (8, 8, 1), (8, 2, 2), (2, 8, 2), (5, 3, 1)]:
            bits = tuple(int(b) for b in rng.integers(max(1, wbits - 1), wbits + 1, layer.c_out))
            cycles = layer_cycles(layer, bits, abits, overlay, params, batch)
            seconds = cycles.total / overlay.clock_hz * (1 + noise * rng.standard_normal())
            energy = (TRUE_ENERGY.idle_power_w * seconds + TRUE_ENERGY.energy_per_binary_op_j * cycles.binary_ops
                      + TRUE_ENERGY.energy_per_dram_byte_j * cycles.dram_bytes)
            samples.append(Sample(layer, bits, abits, batch, seconds, energy, f"net/{layer.name}"))
    return Dataset(tuple(samples), "synthetic")


def test_fit_recovers_known_parameters_and_cross_validates():
    overlay = load_overlay()
    result = fit(synthetic(overlay), overlay, folds=3)
    assert result.in_sample.mape < 1.0 and result.kfold.mape < 2.0 and result.leave_one_layer_out.mape < 3.0
    assert result.schedule.dram_efficiency == pytest.approx(TRUTH.dram_efficiency, rel=0.05)
    assert result.energy is not None and result.energy_in_sample.mape < 2.0
    naive = result.baselines["c*MACs*wbits*abits (1 global c)"]["mape_percent"]
    assert naive > 5 * result.in_sample.mape


def test_noisy_measurements_still_fit_within_the_noise():
    overlay = load_overlay()
    result = fit(synthetic(overlay, noise=0.05, seed=1), overlay, folds=3)
    assert result.in_sample.mape < 8.0 and result.leave_one_layer_out.mape < 12.0


def test_structure_search_finds_the_array_that_produced_the_data():
    template = load_overlay()
    truth = template.with_changes(name="truth", dm=16, dn=4, dk=128, dram_ports=2)
    data = synthetic(truth, ScheduleParams(1.0, 1.0, 0.0, 0.0, 0.0))
    result = fit(data, template, search_overlay=True, folds=2)
    found = result.structure.overlay
    assert result.in_sample.mape < 2.0
    assert (found.dm, found.dn, found.dk) == (16, 4, 128)
    # only the achieved bandwidth is identifiable: port width x efficiency
    assert found.dram_bytes_per_cycle * result.schedule.dram_efficiency == pytest.approx(16, rel=0.03)


def test_csv_round_trip_and_calibrate_cli(tmp_path, capsys):
    overlay = load_overlay()
    data = synthetic(overlay)
    csv_path = tmp_path / "measured.csv"
    write_measurements_csv(data.samples, csv_path)
    again = read_measurements_csv(csv_path)
    assert [(s.layer, s.weight_bits, s.act_bits, s.batch, s.key) for s in again.samples] == \
           [(s.layer.__class__(**{**s.layer.__dict__, "padding": (0, 0)}), s.weight_bits, s.act_bits, s.batch, s.key)
            for s in data.samples]
    assert all(math.isclose(a.latency_s, b.latency_s) for a, b in zip(again.samples, data.samples))

    out = tmp_path / "board.json"
    assert main(["calibrate", str(csv_path), "-o", str(out), "--folds", "3", "--schedule", "stage-totals"]) == 0
    printed = capsys.readouterr().out
    assert "leave-one-layer-out" in printed and "baseline c_layer*wbits*abits" in printed
    assert "schedule model pipeline=false: fitted dram_efficiency, result_efficiency" in printed
    calibration = CalibrationParams.load(out)
    assert not calibration.schedule.pipeline
    assert calibration.calibrated and calibration.id == "board" and calibration.overlay is None
    assert calibration.overlay_build_hash == overlay.build_hash and calibration.source == "CSV measured.csv"
    assert calibration.fit["latency_leave_one_layer_out"]["mape_percent"] < 3.0
    backend = open_backend(f"model:{out}")
    net = NetworkSpec("n", LAYERS[:2], (16, 16, 16))
    m = backend.measure(net, QuantPlan.uniform(net, 4, 4))
    assert m.provenance.calibrated and m.provenance.calibration_id == "board"


def stage_total_model(tmp_path) -> str:
    """``model:`` URI of the default calibration with the ``STAGE_TOTAL`` schedule."""
    path = tmp_path / "stage_total.json"
    load_default_calibration().with_changes(id="stage_total", schedule=STAGE_TOTAL).save(path)
    return f"model:{path}"


def test_trace_database_is_an_input(tmp_path):
    from autoq.host.traces import TraceStore

    net = NetworkSpec("n", LAYERS, (16, 16, 16))
    backend = open_backend(stage_total_model(tmp_path))
    with TraceStore(tmp_path / "t.sqlite") as store:
        for w, a in [(2, 2), (4, 8), (8, 8), (3, 5)]:
            plan = QuantPlan.uniform(net, w, a)
            store.append(net, plan, backend.measure(net, plan), "model")
    data = load_samples(tmp_path / "t.sqlite")
    assert len(data.samples) == 4 * len(LAYERS) and data.layer_keys == tuple(f"n/{l.name}" for l in LAYERS)
    result = fit(data, load_overlay(), folds=2)
    assert result.in_sample.mape < 1.0  # the stage-total model reproduces itself


def test_lookup_table_samples_and_shape_check(tmp_path):
    layers = LAYERS
    table = np.arange(1, len(layers) * 8 * 8 + 1, dtype=np.int64).reshape(len(layers), 8, 8)
    np.save(tmp_path / "ok.npy", table)
    data = samples_from_lookup_table(tmp_path / "ok.npy", layers, 16, 2e8, "net")
    assert len(data.samples) == len(layers) * 64
    first = data.samples[8 * 2 + 3]  # layer 0, wbits 3, abits 4
    assert (first.weight_bits[0], first.act_bits, first.batch, first.latency_s) == (3, 4, 16, table[0, 2, 3] / 2e8)
    np.save(tmp_path / "short.npy", table[:-1])
    with pytest.raises(MeasurementError, match=r"has shape \(4, 8, 8\), but 'net' needs \(5, WBITS, ABITS\)"):
        samples_from_lookup_table(tmp_path / "short.npy", layers, 16, 2e8, "net")
    np.save(tmp_path / "neg.npy", -table)
    with pytest.raises(MeasurementError, match="positive finite"):
        samples_from_lookup_table(tmp_path / "neg.npy", layers, 16, 2e8, "net")


def test_lookup_table_of_the_wrong_shape_for_the_arch_via_cli(tmp_path, capsys):
    np.save(tmp_path / "t.npy", np.ones((52, 8, 8)))
    assert main(["calibrate", "--lookup-table", str(tmp_path / "t.npy"), "--arch", "mobilenet_v2", "--batch", "16",
                 "-o", str(tmp_path / "o.json")]) == 2
    assert "has shape (52, 8, 8), but 'mobilenet_v2' needs (53, WBITS, ABITS)" in capsys.readouterr().err
    assert main(["calibrate", "--lookup-table", str(tmp_path / "t.npy"), "--arch", "no_such_net", "--batch", "16",
                 "-o", str(tmp_path / "o.json")]) == 2
    assert "unknown model 'no_such_net'" in capsys.readouterr().err
    assert main(["calibrate", "--lookup-table", str(tmp_path / "t.npy"), "-o", str(tmp_path / "o.json")]) == 2
    assert "--lookup-table needs --arch NAME and --batch N" in capsys.readouterr().err
    assert main(["calibrate", "-o", str(tmp_path / "o.json")]) == 2
    assert "give measurement inputs" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


HEADER = "network,layer,c_in,c_out,kernel,stride,groups,in_h,in_w,out_h,out_w,batch,wbits,abits,latency_s"


@pytest.mark.parametrize(
    "text, message",
    [
        ("network,layer,c_in\nn,a,3\n", "CSV columns: missing ['c_out'"),
        (HEADER + ",speed\n", "unknown ['speed']"),
        (HEADER + "\nn,a,4,8,3,1,1,8,8,8,8,1,4,4,fast\n", "data row 1: could not convert string to float: 'fast'"),
        (HEADER + "\nn,a,4,8,3,1,1,8,8,8,8,1,4;4,4,0.001\n", "data row 1: 2 kernel bit-widths for 8 output channels"),
        (HEADER + "\nn,a,4,8,3,1,3,8,8,8,8,1,4,4,0.001\n", "data row 1: layer 'a': groups=3 must divide"),
        (HEADER + "\nn,a,4,8,3,1,1,8,8\n", "data row 1 has 9 fields, the header has 15"),
        (HEADER + "\nn,a,4,8,3,1,1,8,8,8,8,1,4,4,-1\n", "latency_s a positive number"),
        (HEADER + "\n", "no measurements"),
    ],
)
def test_malformed_csv_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(MeasurementError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        read_measurements_csv(path)


def test_unknown_inputs_are_clear_errors(tmp_path):
    with pytest.raises(MeasurementError, match="unknown measurement file type '.txt'"):
        load_samples(tmp_path / "m.txt")
    with pytest.raises(MeasurementError, match="a lookup table needs its network"):
        load_samples(tmp_path / "m.npy")
    with pytest.raises(MeasurementError, match="cannot read measurements"):
        load_samples(tmp_path / "missing.csv")
    with pytest.raises(MeasurementError, match="does not exist"):
        load_samples(tmp_path / "missing.sqlite")


def test_too_little_data_is_refused():
    overlay = load_overlay()
    data = synthetic(overlay)
    with pytest.raises(FitError, match="too few"):
        fit(Dataset(data.samples[:4], "tiny"), overlay)
    with pytest.raises(FitError, match=r"8 measurements are too few to fit 6 parameters \(layer_overhead_cycles, .*"
                                       r"port_bytes_per_cycle; with the HP port kept, 4\)"):
        fit(Dataset(data.samples[:8], "small"), overlay, pipeline=load_default_calibration().schedule)
    one_layer = Dataset(tuple(s for s in data.samples if s.key == "net/conv") * 3, "one layer")
    with pytest.raises(FitError, match="at least two different layers"):
        fit(one_layer, overlay)


def test_fitted_calibration_for_another_overlay_is_carried(tmp_path):
    template = load_overlay()
    truth = template.with_changes(name="truth", dm=16, dn=4, dk=128, dram_ports=2)
    data = synthetic(truth, ScheduleParams(1.0, 1.0, 0.0, 0.0, 0.0))
    write_measurements_csv(data.samples, tmp_path / "m.csv")
    out = tmp_path / "other.json"
    assert main(["calibrate", str(tmp_path / "m.csv"), "-o", str(out), "--search-overlay", "--folds", "2", "--json"]) == 0
    calibration = CalibrationParams.load(out)
    assert calibration.overlay is not None and calibration.overlay.dm == 16
    model = AnalyticCostModel(calibration.overlay, calibration)
    assert model.overlay.build_hash == calibration.overlay_build_hash
    assert (model.overlay.dm, model.overlay.dn, model.overlay.dk) == (truth.dm, truth.dn, truth.dk)
    assert json.loads(out.read_text())["fit"]["structure"].startswith("Dm=16 Dn=4 Dk=128")
    assert load_default_calibration().overlay_build_hash != calibration.overlay_build_hash


def _record_uniform_costs(trace, runs, backend: str) -> None:
    for model, bits in runs:
        assert main(["cost", model, "--uniform", bits, "--backend", backend, "--record", str(trace)]) == 0


@pytest.mark.parametrize("schedule", ["stage-totals", "pipeline"])
def test_trace_csv_export_is_a_calibration_input(tmp_path, capsys, schedule):
    """`autoq trace --export csv` rows are whole-network samples: a model's own costs (the stage totals', or the
    bundled calibration's pipeline), fitted back with that model, are predicted again, and the stage totals'
    parameters recovered: the plumbing of whole-network samples, a model checked against itself."""
    trace, exported, out = tmp_path / "t.sqlite", tmp_path / "t.csv", tmp_path / "cal.json"
    recorded = stage_total_model(tmp_path) if schedule == "stage-totals" else "model"
    _record_uniform_costs(trace, [(model, bits) for model in ("digits", "squeezenet1_1")
                                  for bits in ("2/2", "4/4", "8/8", "3/5", "6/2")], recorded)
    assert main(["trace", str(trace), "--export", "csv", "-o", str(exported)]) == 0
    capsys.readouterr()
    data = load_samples(exported)
    assert len(data.samples) == 10 and data.layer_keys == ("digits", "squeezenet1_1")
    assert data.samples[0].parts[0][0].name == "conv1" and len(data.samples[0].parts) == 5  # every digits layer
    # ten network totals are too few for the port's read latency and bandwidth as well: kept
    keep = ["--keep-port"] if schedule == "pipeline" else []
    assert main(["calibrate", str(exported), "-o", str(out), "--json", "--folds", "2", "--schedule", schedule, *keep]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "trace export t.csv" and report["schedule"]["pipeline"] == (schedule == "pipeline")
    assert report["fit"]["latency_in_sample"]["mape_percent"] < 1.0 and report["fit"]["energy_in_sample"]["mape_percent"] < 1.0
    # ten network totals do not identify the pipeline's constants, which decide a few percent of them at most
    # (``test_rtl_timing``'s per-layer rtlsim runs do): only the stage totals' are compared
    for name in ("dram_efficiency", "layer_overhead_cycles") if schedule == "stage-totals" else ():
        assert report["schedule"][name] == pytest.approx(getattr(STAGE_TOTAL, name), rel=0.05), name


def test_pipeline_options_that_do_not_apply_are_refused(tmp_path, capsys):
    write_measurements_csv(synthetic(load_overlay()).samples, tmp_path / "m.csv")
    out = tmp_path / "o.json"
    assert main(["calibrate", str(tmp_path / "m.csv"), "-o", str(out), "--search-overlay", "--schedule", "pipeline"]) == 2
    assert "the overlay structure is searched with the stage-total model only" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "m.csv"), "-o", str(out), "--schedule", "stage-totals", "--keep-port"]) == 2
    assert "--keep-port keeps the HP port of a pipeline fit; this fit is of the stage totals" in capsys.readouterr().err
    assert not out.exists()


def test_trace_csv_rows_calibrate_cannot_rebuild_are_clear_errors(tmp_path, capsys):
    from autoq.host.models.resolve import spec_for

    trace, exported = tmp_path / "t.sqlite", tmp_path / "t.csv"
    network = spec_for("digits")
    mixed = QuantPlan.layerwise(network, [(8, 8)] + [(4, 4)] * (len(network) - 1))
    mixed.save(tmp_path / "mixed.json")
    assert main(["cost", "digits", "--plan", str(tmp_path / "mixed.json"), "--record", str(trace)]) == 0
    assert main(["trace", str(trace), "--export", "csv", "-o", str(exported)]) == 0
    with pytest.raises(MeasurementError, match=f"data row 1 .*plan {mixed.hash} is not uniform.*trace database"):
        load_samples(exported)
    exported.write_text(exported.read_text().replace(network.hash, "0" * 16))
    with pytest.raises(MeasurementError, match="network 'digits' was recorded with hash 0000000000000000"):
        load_samples(exported)


def test_bundled_lookup_table_by_name(tmp_path, capsys):
    out = str(tmp_path / "o.json")
    # the name resolves to the packaged table and sets --arch/--batch: loading succeeds, the fit's checks run next
    assert main(["calibrate", "--lookup-table", "haq-mobilenet-v2", "--folds", "1", "-o", out]) == 2
    assert "folds must be between 2 and the number of measurements (3392), got 1" in capsys.readouterr().err
    assert main(["calibrate", "--lookup-table", "haq-mobilenet-v2", "--arch", "resnet18", "-o", out]) == 2
    assert "measures mobilenet_v2 at batch 16, not resnet18 at batch 16" in capsys.readouterr().err
    assert main(["calibrate", "--lookup-table", "haq-resnet", "--arch", "resnet18", "--batch", "1", "-o", out]) == 2
    assert "lookup table haq-resnet not found; bundled tables: haq-mobilenet-v2" in capsys.readouterr().err


def test_output_folder_is_checked_before_fitting(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--lookup-table", "haq-mobilenet-v2", "-o", str(tmp_path / "absent" / "o.json")])
    assert exit_info.value.code == 2
    assert f"cannot write {tmp_path / 'absent' / 'o.json'}: folder {tmp_path / 'absent'} does not exist" in capsys.readouterr().err
