"""``autoq search`` on a user's ONNX model and .npz data: searched in onnxruntime, exported without fine-tuning."""
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from autoq.host.cli import main
from autoq.host.tasks import digits


def test_search_on_an_onnx_model_completes_and_exports(tmp_path, capsys, one_torch_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(digits.build_model(), (torch.zeros(1, *digits.INPUT_SHAPE),), str(tmp_path / "m.onnx"),
                          dynamo=False, opset_version=17)
    clean = digits.clean_splits()
    np.savez(tmp_path / "d.npz", x=clean.test.x.numpy(), y=clean.test.y.numpy())
    out = tmp_path / "run"
    assert main(["search", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--episodes", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert "2 episodes" in capsys.readouterr().out
    final = json.loads((out / "final" / "final.json").read_text())
    assert final["finetune_steps"] == 0  # an ONNX graph is not fine-tuned
    assert final["accuracy_before_finetune"] == final["accuracy_after_finetune"] > 0.5
    exported = onnx.load(str(out / "final" / "model.onnx"))
    assert "QuantizeLinear" in {n.op_type for n in exported.graph.node}
    for option, refusal in ((["--hls4ml"], "hls4ml export needs a torch model; 'm' is an ONNX graph"),
                            (["--finetune-steps", "3"], "model 'm' is an ONNX graph: it cannot be fine-tuned")):
        refused = tmp_path / option[0].strip("-")
        assert main(["search", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--episodes", "2",
                     "--out", str(refused), "--no-progress", *option]) != 0
        assert refusal in capsys.readouterr().err
        assert not refused.exists()  # refused before the search wrote anything
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: clean.test.x[:4].numpy()})[0]
    assert logits.shape == (4, 10)
