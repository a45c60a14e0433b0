"""ONNX export of a kernel-wise quantized model: onnxruntime reproduces torch's outputs."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autoq.common.errors import AutoQError
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.export.onnx_export import INPUT_NAME, export_quantized_onnx
from autoq.host.quant.quantizer import QuantizedModel, QuantizerConfig
from autoq.host.tasks import load_task

# Weights are folded bit-exactly and both sides round half to even, so only the float summation order of the
# convolutions differs; that can move an activation across a rounding boundary (one level) in rare cases.
OUTPUT_ATOL = 1e-4
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def qmodel():
    task = load_task()
    qmodel = QuantizedModel(task.model, task.network, QuantizerConfig(last_layer="act8"))
    qmodel.calibrate([task.calib.x])
    return qmodel, task


def kernelwise_plan(network, seed=0):
    g = torch.Generator().manual_seed(seed)
    return QuantPlan.for_network(network, [
        LayerPlan(l.name, tuple(torch.randint(1, 9, (l.c_out,), generator=g).tolist()), int(torch.randint(1, 9, (1,), generator=g)))
        for l in network])


def test_onnxruntime_matches_torch_on_test_inputs(qmodel, tmp_path):
    qmodel, task = qmodel
    plan = kernelwise_plan(task.network)
    plan = plan.replace("conv1", LayerPlan("conv1", plan["conv1"].weight_bits, 1))  # signed 1-bit input: bipolar
    assert {1, 8} <= set(plan["conv3"].weight_bits)
    path = export_quantized_onnx(qmodel, plan, tmp_path / "q.onnx")
    assert qmodel.plan == plan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # one self-contained file

    graph = onnx.load(path).graph
    ops = {node.op_type for node in graph.node}
    assert {"Round", "Clip", "Div", "Mul", "Where", "Conv", "Gemm"} <= ops
    assert not ops & {"Abs", "ArgMin", "ReduceMax", "ReduceMean"}  # the weight clip search is not in the graph
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    conv2 = next(v for v in initializers.values() if v.shape == (64, 32, 3, 3))
    values, scale = qmodel.integer_weights("conv2")
    np.testing.assert_array_equal(conv2, (values.float() * scale[:, None, None, None]).numpy())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = task.test.x[:200]
    onnx_out = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        torch_out = qmodel(x).numpy()
    assert onnx_out.shape == torch_out.shape == (200, 10)
    close = np.isclose(onnx_out, torch_out, rtol=0, atol=OUTPUT_ATOL).all(axis=1)
    assert close.mean() >= MIN_AGREEMENT, np.abs(onnx_out - torch_out).max()
    assert (onnx_out.argmax(1) == torch_out.argmax(1)).mean() >= MIN_AGREEMENT

    with torch.no_grad(), qmodel.float_mode():
        float_out = qmodel(x).numpy()
    assert np.abs(onnx_out - float_out).max() > 100 * OUTPUT_ATOL  # the export is quantized, not the float model


def test_export_needs_calibration_and_a_fitting_plan(tmp_path):
    task = load_task()
    qmodel = QuantizedModel(task.model, task.network)
    with pytest.raises(AutoQError, match="not calibrated"):
        export_quantized_onnx(qmodel, QuantPlan.uniform(task.network, 4, 4), tmp_path / "q.onnx")
    qmodel.calibrate([task.calib.x[:20]])
    wrong = QuantPlan(tuple(LayerPlan(l.name, (4,), 4) for l in task.network))
    with pytest.raises(AutoQError, match="layer 'conv1'"):
        export_quantized_onnx(qmodel, wrong, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
