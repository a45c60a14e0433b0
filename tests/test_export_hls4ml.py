"""hls4ml export of the bundled digits model under a kernel-wise plan, checked against hls4ml's g++ C simulation.

Tolerance. Weights, activation levels and accumulators are bit-exact in the exported project (integer domain, see
``autoq.host.export.hls4ml_export``); per-kernel scales and biases carry 24 significant bits and every real-domain
value 24 fractional bits, so a logit differs from the float32 torch model by ~1e-5 (float32 rounding on both sides),
unless a value fell within ~2^-24 of a rounding boundary of the next layer's activation quantizer, where the C
simulation may pick the neighbouring level (one step of that layer's activations; it shifts every logit of that image
by up to a few hundredths). We assert: (a) at least 98% of the logits agree within ``CSIM_CLOSE`` = 1e-4, i.e. at most
~2 of the 100 images saw such a flip; (b) the top-1 class agrees on at least 99% of the images; (c) no logit is off by
more than ``FAR`` = 5% of the logit range (a one-level flip moves a logit by less; a wrong precision, a lost scale or a
scrambled channel order by far more). Measured: all logits within 1e-5, identical top-1.
"""
import random

import pytest
import torch

from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.evaluate import Evaluator
from autoq.host.export.hls4ml_export import HlsExportError, check_csim, export_hls4ml, integer_domain_model
from autoq.host.tasks import load_task

FAR = 0.05
IMAGES = 100


def kernel_wise_plan(network, seed=0):
    rng = random.Random(seed)
    return QuantPlan.for_network(
        network,
        (LayerPlan(l.name, tuple(rng.choice((2, 3, 4, 5, 6, 8)) for _ in range(l.c_out)), rng.choice((3, 4, 5, 6, 8))) for l in network),
    )


@pytest.fixture(scope="module")
def quantized():
    task = load_task("digits")
    evaluator = Evaluator.for_task(task)
    plan = kernel_wise_plan(task.network)
    evaluator.qmodel.apply(plan)
    return task, evaluator.qmodel, plan


def test_precisions_follow_the_plan(quantized, tmp_path):
    task, qmodel, plan = quantized
    _, precisions = integer_domain_model(qmodel, torch.zeros((1, *task.input_shape)))
    assert [p.name for p in precisions.values()] == list(task.network.names)
    for p, lp in zip(precisions.values(), plan.layers):
        assert p.weight == f"ap_int<{max(lp.weight_bits)}>", "rounded up to the layer's widest kernel"
        signed = qmodel.activation_signed(lp.name)
        bits = lp.act_bits
        assert p.input == (f"ap_fixed<{bits},{bits},AP_RND_CONV,AP_SAT_SYM>" if signed else f"ap_ufixed<{bits},{bits},AP_RND_CONV,AP_SAT>")
        values, _ = qmodel.integer_weights(lp.name)
        largest = float(values.flatten(1).abs().sum(1).max()) * (2 ** (bits - 1) - 1 if signed else 2**bits - 1)
        acc = int(p.accumulator[len("ap_int<") : -1])
        assert 2 ** (acc - 1) > largest >= 2 ** (acc - 3), "accumulator exact and not wider than needed"
    assert qmodel.activation_signed(plan.layers[0].name), "the normalised image is signed"


@pytest.mark.slow  # one g++ build of the C simulation: ~20 s of CPU
def test_csim_matches_the_quantized_torch_model(quantized, tmp_path):
    task, qmodel, plan = quantized
    export = export_hls4ml(qmodel, plan, tmp_path / "project")
    check = check_csim(export, qmodel, task.test.x[:IMAGES])
    print(check.describe())
    assert check.images == IMAGES
    assert check.within_close >= 0.98
    assert check.top1_agreement >= 0.99
    assert check.max_abs_diff <= FAR * check.logit_range
    assert (export.output_dir / "autoq_precisions.json").exists()
    assert (export.output_dir / "firmware" / "autoq_model.cpp").exists()


def test_signed_one_bit_input_is_refused(quantized, tmp_path):
    task, qmodel, plan = quantized
    first = plan.layers[0]
    one_bit = plan.replace(first.name, LayerPlan(first.name, first.weight_bits, 1))
    qmodel.apply(one_bit)
    try:
        with pytest.raises(HlsExportError, match=f"layer '{first.name}': a signed 1-bit input is bipolar"):
            integer_domain_model(qmodel, torch.zeros((1, *task.input_shape)))
    finally:
        qmodel.apply(plan)


def test_export_command_fine_tunes_and_writes_onnx_and_hls4ml(tmp_path, capsys):
    import json

    import onnxruntime

    from autoq.host.cli import main

    task = load_task("digits")
    plan = kernel_wise_plan(task.network, seed=1)
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "model.onnx"
    project = tmp_path / "hls"
    assert main(["export", "--plan", str(tmp_path / "plan.json"), "--onnx", str(out), "--hls4ml", str(project),
                 "--finetune-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"hls4ml project: {project}" in printed
    chosen = json.loads((project / "autoq_precisions.json").read_text())
    assert chosen["plan_hash"] == plan.hash
    assert [v["weight"] for v in chosen["layers"].values()] == [f"ap_int<{max(l.weight_bits)}>" for l in plan.layers]
    assert (project / "firmware" / "autoq_model.cpp").exists() and (project / "build_prj.tcl").exists()
    assert f"plan {plan.hash} on digits: test accuracy" in printed and "after 3 fine-tune steps" in printed
    session = onnxruntime.InferenceSession(str(out))
    x = task.test.x[:64].numpy()
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    accuracy = float((logits.argmax(1) == task.test.y[:64].numpy()).mean())
    reported_after = float(printed.split("-> ")[1].split()[0])
    assert abs(accuracy - reported_after) < 0.1, "the ONNX model is the fine-tuned quantized model"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to export: give --onnx OUT.onnx and/or --hls4ml DIR"),
        (["--onnx", "x.onnx", "--finetune-steps", "-1"], "--finetune-steps must be >= 0"),
        (["--onnx", "x.onnx", "--csim", "5"], "--csim checks the hls4ml project: give --hls4ml DIR too"),
        (["--onnx", "x.onnx", "--plan", "missing.json"], "cannot read plan missing.json"),
        (["--onnx", "x.onnx", "--plan", "small.json"], "plan does not fit network"),
    ],
)
def test_export_command_bad_input(tmp_path, capsys, monkeypatch, quantized, args, message):
    from autoq.host.cli import main

    monkeypatch.chdir(tmp_path)
    network = quantized[0].network
    QuantPlan.uniform(network, 4, 4).save("plan.json")
    QuantPlan(QuantPlan.uniform(network, 4, 4).layers[:2]).save("small.json")
    assert main(["export", "--plan", "plan.json", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoq export: error:") and message in err and len(err.splitlines()) == 1


def test_finalize_writes_the_final_folder(tmp_path):
    import json

    from autoq.host.export.finalize import finalize

    task = load_task("digits")
    evaluator = Evaluator.for_task(task)
    plan = kernel_wise_plan(task.network, seed=2)
    result = finalize(tmp_path, evaluator, plan, finetune_steps=2)
    final = tmp_path / "final"
    assert QuantPlan.load(final / "plan.json") == plan
    assert (final / "model.onnx").stat().st_size > 10_000 and not (final / "hls4ml").exists()
    summary = json.loads((final / "final.json").read_text())
    assert summary["plan_hash"] == plan.hash and summary["finetune_steps"] == 2 and summary["accuracy_split"] == "test"
    assert summary["accuracy_after_finetune"] == result.accuracy_after == evaluator.accuracy(plan, split="test")


def test_flatten_of_a_spatial_map_is_refused():
    from torch import nn

    from autoq.host.network.trace import spec_from_torch
    from autoq.host.quant.quantizer import QuantizedModel

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    network = spec_from_torch(model, (1, 6, 6), name="flat")
    qmodel = QuantizedModel(model, network)
    qmodel.calibrate([torch.randn(8, 1, 6, 6)])
    with pytest.raises(HlsExportError, match=r"flattens a \(4, 6, 6\) map"):
        integer_domain_model(qmodel, torch.zeros(1, 1, 6, 6))
