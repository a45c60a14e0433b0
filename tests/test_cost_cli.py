"""``autoq cost``: the command-line face of every cost backend."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autoq.common.backend import open_backend
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.cli import main
from autoq.host.models.resolve import spec_for


def cost_json(capsys, *argv: str) -> dict:
    assert main(["cost", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def resnet18():
    return spec_for("resnet18")


def test_resnet18_uniform_plans(capsys, resnet18):
    high = cost_json(capsys, "resnet18", "--uniform", "8/8")
    low = cost_json(capsys, "resnet18", "--uniform", "4/4")
    assert high["network_hash"] == resnet18.hash and len(high["layers"]) == len(resnet18)
    assert high["provenance"] == {**high["provenance"], "source": "model", "calibrated": True}  # timing fitted on rtlsim
    assert low["totals"]["latency_ms"] < high["totals"]["latency_ms"] < 4 * low["totals"]["latency_ms"]
    assert low["totals"]["energy_mj"] < high["totals"]["energy_mj"]
    for entry in high["layers"]:
        assert set(entry) >= {"name", "kind", "wbits_min", "wbits_max", "abits", "latency_ms", "energy_mj", "bound"}
    ratio = {h["name"]: h["latency_ms"] / l["latency_ms"] for h, l in zip(high["layers"], low["layers"])}
    assert ratio["fc"] < 2.5  # the classifier moves weights: far less than wbits*abits (4x)
    assert high["layers"][-1]["bound"] == "fetch"
    assert min(ratio.values()) > 1.0  # every layer gets slower with more bits


def test_depthwise_layers_grow_far_less_than_bits(capsys):
    high = cost_json(capsys, "mobilenet_v2", "--uniform", "8/8")
    low = cost_json(capsys, "mobilenet_v2", "--uniform", "4/4")
    depthwise = [(h, l) for h, l in zip(high["layers"], low["layers"]) if h["kind"] == "depthwise"]
    assert len(depthwise) == 17
    for h, l in depthwise:
        assert h["bound"] == "fetch" and h["latency_ms"] / l["latency_ms"] < 2.5


def test_table_output_and_kernel_wise_plan(capsys, tmp_path, resnet18):
    rng = np.random.default_rng(3)
    plan = QuantPlan.uniform(resnet18, 8, 8)
    layer = resnet18["layer3.0.conv2"]
    mixed = tuple(int(b) for b in rng.choice([2, 8], layer.c_out))
    plan = plan.replace(layer.name, LayerPlan(layer.name, mixed, 8))
    plan.save(tmp_path / "plan.json")
    assert main(["cost", "resnet18", "--plan", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "UNCALIBRATED" not in out and "layer3.0.conv2" in out and " 2-8 " in out
    assert out.strip().splitlines()[-1].startswith("total: latency")
    report = cost_json(capsys, "resnet18", "--plan", str(tmp_path / "plan.json"), "--batch", "2")
    assert report["batch"] == 2


def test_works_through_any_backend_uri(capsys, tmp_path, resnet18):
    """A recorded trace replayed through ``--backend replay:...`` prints what the model printed."""
    from autoq.host.traces import TraceStore

    direct = cost_json(capsys, "resnet18", "--uniform", "4/4")
    backend = open_backend("model")
    plan = QuantPlan.uniform(resnet18, 4, 4)
    with TraceStore(tmp_path / "trace.sqlite") as store:
        store.record_backend(backend.describe())
        store.append(resnet18, plan, backend.measure(resnet18, plan), "model")
    replayed = cost_json(capsys, "resnet18", "--uniform", "4/4", "--backend", f"replay:{tmp_path / 'trace.sqlite'}")
    assert replayed["provenance"]["source"] == "replay"
    assert replayed["totals"] == direct["totals"] and replayed["layers"] == direct["layers"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--uniform", "8x8"], "expected W/A such as 8/8"),
        (["--uniform", "0/8"], "bit-widths must be in [1, 8]"),
        (["--uniform", "8/8", "--backend", "warp://x"], "unknown cost backend 'warp://x'"),
        (["--uniform", "8/8", "--backend", "model:/nonexistent/cal.json"], "cannot read calibration /nonexistent/cal.json"),
        (["--plan", "/nonexistent/plan.json"], "cannot read plan /nonexistent/plan.json"),
        (["--uniform", "8/8", "--batch", "0"], "expected a positive integer"),
    ],
)
def test_bad_input_is_a_clear_error(capsys, argv, message):
    try:
        code = main(["cost", "resnet18", *argv])
    except SystemExit as exc:  # argparse rejects malformed options itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_plan_for_another_network_is_rejected(capsys, tmp_path):
    QuantPlan.uniform(spec_for("digits"), 4, 4).save(tmp_path / "digits_plan.json")
    assert main(["cost", "resnet18", "--plan", str(tmp_path / "digits_plan.json")]) == 2
    assert "plan does not fit network 'resnet18'" in capsys.readouterr().err
