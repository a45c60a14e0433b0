"""``autoq eval``: float and quantized accuracy from the command line, and clear errors for bad plans and data."""
import json

import numpy as np
import pytest

from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.cli import main
from autoq.host.tasks import digits, load_task


def run_json(capsys, *argv):
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_uniform_and_plan_file_agree(capsys, tmp_path):
    report = run_json(capsys, "--uniform", "3/3")
    record = json.loads((digits.weights_path().parent / digits.RECORD_FILE).read_text())["test_accuracy"]
    assert report["float_accuracy"] == pytest.approx(record["float"], abs=1e-4)
    assert report["quantized_accuracy"] == pytest.approx(record["3/3"], abs=1e-4)
    assert report["average_weight_bits"] == 3 and report["test_samples"] == digits.TEST_SIZE
    assert report["split"] == "test"

    network = load_task().network
    QuantPlan.uniform(network, 3, 3).save(tmp_path / "plan.json")
    from_file = run_json(capsys, "digits", "--plan", str(tmp_path / "plan.json"))
    assert from_file["quantized_accuracy"] == report["quantized_accuracy"]
    assert from_file["plan_hash"] == report["plan_hash"]


def test_text_output_edge_policy_and_finetune(capsys):
    assert main(["eval", "--uniform", "2/2", "--first-layer", "keep8", "--finetune", "3"]) == 0
    out = capsys.readouterr().out
    assert "float accuracy" in out and "quantized accuracy" in out and "fine-tune 3 steps" in out
    weights = 32 * 9 * 8 + sum(l.weights for l in load_task().network.layers[1:]) * 2
    assert f"avg weight bits {weights / load_task().network.total_weights:.2f}" in out


def test_user_npz_data(capsys, tmp_path):
    test = digits.clean_splits().test
    np.savez(tmp_path / "d.npz", x=test.x.numpy(), y=test.y.numpy())
    report = run_json(capsys, "--data", str(tmp_path / "d.npz"), "--uniform", "8/8")
    assert report["task"] == "digits@d.npz" and report["test_samples"] == round(len(test) * 0.25)
    assert report["quantized_accuracy"] > 0.9


def test_plan_that_does_not_fit_names_the_layer(capsys, tmp_path):
    network = load_task().network
    plan = QuantPlan.uniform(network, 4, 4)
    plan.replace("conv3", LayerPlan("conv3", (4,) * 63, 4)).save(tmp_path / "short.json")
    assert main(["eval", "--plan", str(tmp_path / "short.json")]) == 2
    err = capsys.readouterr().err
    assert "autoq eval: error:" in err and "layer 'conv3'" in err and "63 kernel bit-widths" in err and "64" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--plan", "{missing}"], "cannot read plan"),
        (["--plan", "{malformed}"], "not valid JSON"),
        (["--uniform", "4/4", "--data", "{missing}"], "does not exist"),
        (["nosuchmodel", "--uniform", "4/4"], "unknown model 'nosuchmodel'"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, tmp_path, argv, message):
    (tmp_path / "bad.json").write_text("{ not json")
    paths = {"{missing}": str(tmp_path / "absent"), "{malformed}": str(tmp_path / "bad.json")}
    assert main(["eval", *(paths.get(a, a) for a in argv)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter announces its deprecation
def test_onnx_model_has_no_torch_module_to_evaluate(capsys, tmp_path):
    import torch

    torch.onnx.export(digits.build_model(), (torch.zeros(1, *digits.INPUT_SHAPE),), tmp_path / "m.onnx", dynamo=False)
    assert main(["eval", str(tmp_path / "m.onnx"), "--uniform", "4/4"]) == 2
    assert "has no torch module" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--uniform", "4"], ["--uniform", "4/4", "--finetune", "-1"], []])
def test_bad_arguments_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["eval", *argv])
    assert exc.value.code == 2
    assert "autoq eval: error" in capsys.readouterr().err
