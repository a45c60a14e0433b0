"""ONNX path: a plan applied to an ONNX graph in onnxruntime computes what the torch quantizer computes."""
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from autoq.common.errors import AutoQError
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.evaluate import Evaluator
from autoq.host.network.onnx_import import spec_from_onnx
from autoq.host.quant.onnx_quant import OnnxQuantizedModel
from autoq.host.quant.quantizer import LayerQuantizer, QuantizedModel
from autoq.host.tasks import Task, digits


def export(model: torch.nn.Module, shape, path) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=False, opset_version=17)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The digits model as a torch QuantizedModel and as an OnnxQuantizedModel, both calibrated on the calib split."""
    splits = digits.load_splits()
    graph = export(digits.build_model(), digits.INPUT_SHAPE, tmp_path_factory.mktemp("onnx") / "digits.onnx")
    network = spec_from_onnx(graph, name="digits")
    torch_model = QuantizedModel(digits.build_model(), network)
    onnx_model = OnnxQuantizedModel(graph, network)
    torch_model.calibrate([splits.calib.x])
    onnx_model.calibrate([splits.calib.x])
    return torch_model, onnx_model, splits.test.x


def test_same_calibration_and_weights_as_the_torch_path(pair):
    torch_model, onnx_model, _ = pair
    assert onnx_model.quantized_layers == torch_model.quantized_layers
    for name, quantizer in torch_model.quantizers.items():
        assert quantizer.act_signed == onnx_model.quantizers[name].act_signed
        assert torch.allclose(quantizer.act_scales, onnx_model.quantizers[name].act_scales, rtol=1e-5, atol=0)
    network = torch_model.network
    plan = QuantPlan.uniform(network, 4, 4).replace("conv2", LayerPlan("conv2", (1, 2, 3, 8) * 16, 3))
    torch_model.apply(plan)
    onnx_model.apply(plan)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx_model.quantized_graph().graph.initializer}
    for name in torch_model.quantized_layers:
        with torch.no_grad():  # (with a gradient, the straight-through estimator's w + (q - w) is 1 ulp off q)
            expected = torch_model.model.get_submodule(name).weight.numpy()
        np.testing.assert_array_equal(weights[f"autoq_q/{name}/weight"], expected)  # the very same quantizer
    for name, scales in onnx_model.kernel_scales().items():
        np.testing.assert_array_equal(scales, torch_model.kernel_scales()[name])


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_logits_match_the_torch_path(pair, bits):
    torch_model, onnx_model, x = pair
    plan = QuantPlan.uniform(torch_model.network, bits, bits)  # 1 bit: bipolar (Where) input of the signed conv1
    torch_model.apply(plan)
    onnx_model.apply(plan)
    with torch.no_grad():
        expected = torch_model(x)
    got = onnx_model(x)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.99
    assert float((got - expected).abs().max()) < 0.05 * float(expected.abs().max())
    with onnx_model.float_mode(), torch_model.float_mode(), torch.no_grad():
        assert torch.allclose(onnx_model(x), torch_model(x), atol=1e-4, rtol=0)


def test_evaluator_on_an_onnx_task_scores_plans_and_refuses_to_fine_tune(pair, tmp_path):
    _, onnx_model, _ = pair
    splits = digits.load_splits()
    graph = export(digits.build_model(), digits.INPUT_SHAPE, tmp_path / "d.onnx")
    task = Task("d", graph, onnx_model.network, digits.INPUT_SHAPE, *splits)
    evaluator = Evaluator.for_task(task)
    assert not evaluator.trainable
    torch_evaluator = Evaluator.for_task(Task("d", digits.build_model(), onnx_model.network, digits.INPUT_SHAPE, *splits))
    plan = QuantPlan.uniform(task.network, 8, 8)
    assert abs(evaluator.accuracy(plan) - torch_evaluator.accuracy(plan)) <= 1 / len(splits.val)
    with pytest.raises(AutoQError, match="ONNX graph: it cannot be fine-tuned"):
        evaluator.accuracy(plan, finetune_steps=1)
    path = evaluator.qmodel.export(plan, tmp_path / "q.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Clip"} <= ops


def linear_graph(op: str) -> tuple[onnx.ModelProto, np.ndarray]:
    """x (B, 6, 1, 1) -> Flatten -> linear layer with a (K=6, N=4) weight: MatMul, or Gemm without transB."""
    weight = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node(op, ["f", "fc.weight"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(weight, "fc.weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_kernels_of_a_k_by_n_weight_are_its_columns(op):
    graph, weight = linear_graph(op)
    network = spec_from_onnx(graph)
    model = OnnxQuantizedModel(graph, network)
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(32, 6, 1, 1)).astype(np.float32))
    model.calibrate([x])
    plan = QuantPlan((LayerPlan("fc", (1, 2, 3, 4), 8),))
    model.apply(plan)
    got = {t.name: numpy_helper.to_array(t) for t in model.quantized_graph().graph.initializer}["autoq_q/fc/weight"]
    reference = LayerQuantizer("fc", 4, 32)
    reference.weight_bits.copy_(torch.tensor([1, 2, 3, 4]))
    with torch.no_grad():
        expected = reference(torch.from_numpy(weight.T.copy())).numpy().T  # one row per output channel
    np.testing.assert_array_equal(got, expected)
    assert model(x).shape == (32, 4)  # the batch dimension was made symbolic
