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
def test_onnx_model_of_digits_size_runs_on_the_digits_data(capsys, digits_onnx_and_npz):
    """Without --data a model taking digits-sized inputs is scored on the bundled digits splits."""
    onnx_8 = run_json(capsys, digits_onnx_and_npz[0], "--uniform", "8/8")
    torch_8 = run_json(capsys, "digits", "--uniform", "8/8")
    assert onnx_8["test_samples"] == torch_8["test_samples"] == digits.TEST_SIZE
    assert abs(onnx_8["quantized_accuracy"] - torch_8["quantized_accuracy"]) <= 1 / digits.TEST_SIZE


@pytest.mark.parametrize("argv", [["--uniform", "4"], ["--uniform", "4/4", "--finetune", "-1"], []])
def test_bad_arguments_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["eval", *argv])
    assert exc.value.code == 2
    assert "autoq eval: error" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_onnx_and_npz(tmp_path_factory):
    """The bundled digits model exported to ONNX, and the clean digits test images as a user's .npz."""
    import warnings

    import torch

    folder = tmp_path_factory.mktemp("user")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(digits.build_model(), (torch.zeros(1, *digits.INPUT_SHAPE),), str(folder / "digits.onnx"),
                          dynamo=False, opset_version=17)
    clean = digits.clean_splits()
    x = np.concatenate([clean.val.x.numpy(), clean.test.x.numpy()])
    y = np.concatenate([clean.val.y.numpy(), clean.test.y.numpy()])
    np.savez(folder / "data.npz", x=x, y=y)
    return str(folder / "digits.onnx"), str(folder / "data.npz")


def test_onnx_model_evaluates_like_the_torch_model(capsys, digits_onnx_and_npz):
    onnx_path, data = digits_onnx_and_npz
    onnx_8 = run_json(capsys, onnx_path, "--data", data, "--uniform", "8/8")
    torch_8 = run_json(capsys, "digits", "--data", data, "--uniform", "8/8")
    assert onnx_8["task"] == "digits@data.npz" and onnx_8["trained_weights"] is True
    assert onnx_8["test_samples"] == torch_8["test_samples"] == round(450 * 0.25)
    assert abs(onnx_8["quantized_accuracy"] - torch_8["quantized_accuracy"]) <= 1 / onnx_8["test_samples"]
    assert onnx_8["float_accuracy"] == torch_8["float_accuracy"] > 0.9
    onnx_4 = run_json(capsys, onnx_path, "--data", data, "--uniform", "4/4")
    assert onnx_4["average_weight_bits"] == 4 and onnx_4["quantized_accuracy"] > 0.8
    assert main(["eval", onnx_path, "--data", data, "--uniform", "4/4", "--finetune", "2"]) == 2
    assert "cannot be fine-tuned" in capsys.readouterr().err


def test_builtin_model_without_data_says_what_data_it_needs(capsys):
    assert main(["eval", "resnet18", "--uniform", "4/4"]) == 2
    err = capsys.readouterr().err
    assert "model 'resnet18' needs data" in err and "(3, 224, 224)" in err and "1000 outputs" in err
    assert "--data DIR" in err and "--data FILE.npz" in err and "(N, 3, 224, 224)" in err


def test_data_the_model_cannot_take_says_what_it_needs(capsys, tmp_path):
    np.savez(tmp_path / "gray.npz", x=np.zeros((8, 1, 32, 32), np.uint8), y=np.arange(8))
    assert main(["eval", "squeezenet1_1", "--data", str(tmp_path / "gray.npz"), "--uniform", "8/8"]) == 2
    err = capsys.readouterr().err
    assert "has inputs (1, 32, 32), which model 'squeezenet1_1' cannot take" in err and "(3, 224, 224)" in err


def test_untrained_builtin_model_warns_and_is_flagged(capsys, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), y=np.arange(8))
    assert main(["eval", "squeezenet1_1", "--data", str(tmp_path / "rgb.npz"), "--uniform", "8/8", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["trained_weights"] is False
    assert "warning: model 'squeezenet1_1@rgb.npz' has random, untrained weights" in captured.err
    assert "--arch" in captured.err and captured.err.count("untrained") == 1  # once, not also as a Python warning
    digits_report = run_json(capsys, "--uniform", "8/8")
    assert digits_report["trained_weights"] is True and "untrained" not in capsys.readouterr().err
