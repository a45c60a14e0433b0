"""BatchNorm folding: torch (``fold_batchnorm``) and ONNX (``fold_batchnorm_onnx``) keep the outputs and their input."""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from autoq.host.models import zoo
from autoq.host.quant.bnfold import batchnorm_pairs, fold_batchnorm, fold_batchnorm_onnx


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


class Shared(nn.Module):
    """conv_a -> bn_a, but conv_a's output is also used raw: not foldable. conv_b (with bias) -> bn_b: foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.conv_a(x)
        return self.bn_b(self.conv_b(torch.relu(self.bn_a(a)) + a))


def test_torch_fold_keeps_outputs_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = randomise_batchnorms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 5, 1), nn.BatchNorm2d(5),
    ))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 12, 12)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "Identity", "ReLU"] * 2 + ["Conv2d", "Identity"]
    assert all(folded[i].bias is not None for i in (0, 3, 6))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # pure: the input is untouched
    assert isinstance(model[1], nn.BatchNorm2d)


def test_torch_fold_skips_a_conv_whose_output_is_used_elsewhere():
    model = randomise_batchnorms(Shared())
    assert batchnorm_pairs(model) == [("conv_b", "bn_b")]
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn_a, nn.BatchNorm2d) and isinstance(folded.bn_b, nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)


def test_torch_fold_of_a_builtin_resnet():
    model = randomise_batchnorms(zoo.build("resnet18"))
    assert len(batchnorm_pairs(model)) == 20  # every BatchNorm of ResNet-18, downsample branches included
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        assert torch.allclose(folded(x), reference, atol=1e-4 * float(reference.abs().max()), rtol=0)


def conv_bn_graph(with_bias: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f32(6, 3, 3, 3), "conv.weight"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "bn.weight"),
             numpy_helper.from_array(f32(6), "bn.bias"), numpy_helper.from_array(f32(6), "bn.running_mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "bn.running_var")]
    conv_inputs = ["x", "conv.weight"]
    if with_bias:
        inits.append(numpy_helper.from_array(f32(6), "conv.bias"))
        conv_inputs.append("conv.bias")
    graph = helper.make_graph(
        [helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                          ["b"], epsilon=1e-3, name="bn"),
         helper.make_node("Relu", ["b"], ["y"])],
        "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("with_bias", [False, True])
def test_onnx_fold_keeps_outputs_and_leaves_the_graph_alone(with_bias):
    model = conv_bn_graph(with_bias)
    original = model.SerializeToString()
    folded = fold_batchnorm_onnx(model)
    assert model.SerializeToString() == original
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    assert len(folded.graph.node[0].input) == 3 and not any(t.name.startswith("bn.") for t in folded.graph.initializer)
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x), run(model, x), atol=1e-5, rtol=0)


def test_onnx_fold_leaves_a_training_mode_batchnorm():
    model = conv_bn_graph(False)
    model.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    assert [n.op_type for n in fold_batchnorm_onnx(model).graph.node] == ["Conv", "BatchNormalization", "Relu"]
