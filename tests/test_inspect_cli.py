"""``autoq inspect``: table and JSON output for built-in, bundled and file models; bad input exits 2 with a message."""
import json
import warnings

import pytest
import torch

from autoq.host.cli import main
from autoq.host.models import zoo


def run_json(capsys, *args):
    assert main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_resnet18_json(capsys):
    report = run_json(capsys, "resnet18")
    assert report["network"] == "resnet18" and report["batch"] == 1 and report["input_shape"] == [3, 224, 224]
    assert len(report["layers"]) == 21
    assert report["totals"] == {"layers": 21, "conv": 20, "depthwise": 0, "linear": 1,
                                "macs": sum(l["macs"] for l in report["layers"]), "weights": 11_678_912}
    assert report["totals"]["macs"] == pytest.approx(1.82e9, rel=0.01)
    first = report["layers"][0]
    assert first == {"name": "conv1", "kind": "conv", "c_in": 3, "c_out": 64, "kernel": [7, 7], "stride": [2, 2],
                     "padding": [3, 3], "groups": 1, "in_hw": [224, 224], "out_hw": [112, 112],
                     "macs": 118_013_952, "weights": 9408}
    assert len(report["hash"]) == 16


def test_mobilenet_v2_batch_scales_macs(capsys):
    one = run_json(capsys, "mobilenet_v2")
    sixteen = run_json(capsys, "mobilenet_v2", "--batch", "16")
    assert len(one["layers"]) == 53 and one["totals"]["depthwise"] == 17 and one["totals"]["linear"] == 1
    assert sixteen["totals"]["macs"] == 16 * one["totals"]["macs"] and sixteen["hash"] == one["hash"]


def test_table(capsys):
    assert main(["inspect", "mobilenet_v2", "--input-shape", "3,96,96"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("network mobilenet_v2  input 3x96x96 (CxHxW)  hash ")
    assert lines[1].split() == ["name", "kind", "c_in", "c_out", "kernel", "stride", "groups", "in", "out", "MACs", "weights"]
    assert len(lines) == 2 + 53 + 1
    assert lines[3].split() == ["features.1.conv.0.0", "depthwise", "32", "32", "3x3", "1x1", "32", "48x48", "48x48",
                                f"{32 * 9 * 48 * 48:,}", "288"]
    assert lines[-1].startswith("total: 53 layers (35 conv, 17 depthwise, 1 linear), ") and "MACs at batch 1" in lines[-1]


def test_bundled_task(capsys):
    report = run_json(capsys, "digits")
    assert report["network"] == "digits" and report["totals"]["conv"] >= 4


def test_onnx_file(tmp_path, capsys):
    path = tmp_path / "sq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo.build("squeezenet1_1"), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False)
    from_onnx = run_json(capsys, str(path))
    builtin = run_json(capsys, "squeezenet1_1", "--input-shape", "3x64x64")
    assert from_onnx["hash"] == builtin["hash"] and from_onnx["layers"] == builtin["layers"]


def test_state_dict_with_arch(tmp_path, capsys):
    torch.save(zoo.build("squeezenet1_1", num_classes=5).state_dict(), tmp_path / "sq5.pt")
    report = run_json(capsys, str(tmp_path / "sq5.pt"), "--arch", "squeezenet1_1")
    assert report["layers"][-1]["c_out"] == 5


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown model 'nope': give a built-in name (resnet18"),
    (["missing.onnx"], "model file not found: missing.onnx"),
    (["BAD"], "bad.onnx is not an ONNX model"),
    (["resnet18", "--input-shape", "3,224"], "input shape must be three positive ints"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07\x12\x04junk" * 3)
    args = [str(tmp_path / "bad.onnx") if a == "BAD" else a for a in args]
    assert main(["inspect", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("autoq inspect: error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["resnet18", "--batch", "0"], ["resnet18", "--input-shape", "a,b,c"], []])
def test_bad_arguments_are_usage_errors(capsys, args):
    with pytest.raises(SystemExit) as info:
        main(["inspect", *args])
    assert info.value.code == 2 and "usage: autoq inspect" in capsys.readouterr().err
