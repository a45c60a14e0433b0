"""spec_from_onnx gives exactly the spec spec_from_torch gives, for both torch exporters; bad files fail clearly."""
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from autoq.common.errors import SpecError
from autoq.common.network import LayerSpec
from autoq.host.models import zoo
from autoq.host.network.onnx_import import spec_from_onnx
from autoq.host.network.trace import spec_from_torch
from test_network_trace import EdgeNet


def export(model: torch.nn.Module, shape: tuple[int, int, int], path, dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), str(path), dynamo=dynamo, verbose=False)


pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.")


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("mobilenet_v2", 64), ("squeezenet1_1", 96)])
def test_zoo_models_legacy_export_round_trip(tmp_path, name, size):
    """The legacy exporter folds BatchNorm into the convs (weights renamed onnx::Conv_N): names come from scopes."""
    model = zoo.build(name)
    expected = spec_from_torch(model, (3, size, size), name)
    export(model, (3, size, size), tmp_path / f"{name}.onnx", dynamo=False)
    spec = spec_from_onnx(tmp_path / f"{name}.onnx", name=name)
    assert spec == expected and spec.hash == expected.hash


@pytest.mark.parametrize("dynamo", [False, True])
def test_edge_model_round_trip_both_exporters(tmp_path, dynamo):
    model = EdgeNet()
    expected = spec_from_torch(model, (3, 16, 18), "edge")
    path = tmp_path / "edge.onnx"
    export(model, (3, 16, 18), path, dynamo=dynamo)
    spec = spec_from_onnx(path)
    assert spec.name == "edge" and spec == expected and spec.hash == expected.hash
    if dynamo:  # the dynamo exporter keeps weights beside the graph; the loaded model is accepted too
        assert (tmp_path / "edge.onnx.data").is_file()
        assert spec_from_onnx(onnx.load(str(path)), name="edge") == expected
        (tmp_path / "edge.onnx.data").unlink()
        with pytest.raises(SpecError, match="cannot read ONNX model"):
            spec_from_onnx(path)


def test_dynamo_export_of_a_zoo_model(tmp_path):
    model = zoo.build("squeezenet1_1")
    export(model, (3, 64, 64), tmp_path / "sq.onnx", dynamo=True)
    assert spec_from_onnx(tmp_path / "sq.onnx", name="squeezenet1_1") == spec_from_torch(model, (3, 64, 64), "squeezenet1_1")


def _graph_model(nodes, initializers, input_dims=(1, 8), output="y"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_dims))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(shape, np.float32), name) for name, shape in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gemm_trans_b_and_matmul_through_transpose():
    model = _graph_model(
        [helper.make_node("Conv", ["x", "c.weight"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=1),
         helper.make_node("Flatten", ["h"], ["f"]),
         helper.make_node("Gemm", ["f", "fc1.weight"], ["g"], transB=0),        # weight stored (in, out)
         helper.make_node("Gemm", ["g", "fc2.weight"], ["k"], transB=1),        # weight stored (out, in)
         helper.make_node("Transpose", ["fc3.weight"], ["w3t"], perm=[1, 0]),
         helper.make_node("MatMul", ["k", "w3t"], ["y"])],
        [("c.weight", (4, 2, 3, 3)), ("fc1.weight", (64, 6)), ("fc2.weight", (5, 6)), ("fc3.weight", (3, 5))],
        input_dims=("batch", 2, 4, 4))
    spec = spec_from_onnx(model, name="m")
    assert spec.input_shape == (2, 4, 4)
    assert spec["c"] == LayerSpec("c", "conv", 2, 4, 3, 1, 1, 1, (4, 4), (4, 4))
    assert [(l.name, l.c_in, l.c_out) for l in spec.layers[1:]] == [("fc1", 64, 6), ("fc2", 6, 5), ("fc3", 5, 3)]


def test_auto_pad_same_upper():
    model = _graph_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
                         [("w", (4, 2, 3, 3))], input_dims=(1, 2, 7, 7))
    layer = spec_from_onnx(model).layers[0]
    assert layer.name == "w" and layer.out_hw == (4, 4) and layer.padding == (1, 1)


def test_activation_matmul_is_not_a_layer_and_shared_weights_are_rejected():
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("MatMul", ["f", "f2"], ["a"]),
             helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)]
    model = _graph_model(nodes, [("w", (8, 8))], input_dims=(8, 2, 2, 2))
    model.graph.input.append(helper.make_tensor_value_info("f2", TensorProto.FLOAT, [8, 8]))
    with pytest.raises(SpecError, match="expected one graph input, found 2"):
        spec_from_onnx(model)
    model.graph.input.pop()
    model.graph.node.insert(1, helper.make_node("Transpose", ["f"], ["f2"]))
    assert spec_from_onnx(model).names == ("w",)  # f @ f.T multiplies activations: no layer
    model.graph.node.append(helper.make_node("Gemm", ["y", "w"], ["z"], transB=1))
    with pytest.raises(SpecError, match="weight 'w' is used by two layers"):
        spec_from_onnx(model)


def test_bad_files(tmp_path):
    with pytest.raises(SpecError, match="ONNX file not found"):
        spec_from_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffthis is not protobuf" * 10)
    with pytest.raises(SpecError, match="cannot read ONNX model|not an ONNX model"):
        spec_from_onnx(tmp_path / "junk.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(SpecError, match="not an ONNX model"):
        spec_from_onnx(tmp_path / "empty.onnx")
    good = tmp_path / "good.onnx"
    export(zoo.build("squeezenet1_1"), (3, 64, 64), good, dynamo=False)
    (tmp_path / "cut.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SpecError, match="cannot read ONNX model"):
        spec_from_onnx(tmp_path / "cut.onnx")


def test_unsupported_graphs():
    dynamic = _graph_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])], [("w", (4, 2, 1, 1))],
                           input_dims=("n", 2, "h", "w"))
    with pytest.raises(SpecError, match=r"must be \(N, C, H, W\) with static C, H, W; got \['\?', 2, '\?', '\?'\]"):
        spec_from_onnx(dynamic)
    transposed = _graph_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[2, 2])],
                              [("w", (2, 4, 2, 2))], input_dims=(1, 2, 4, 4))
    with pytest.raises(SpecError, match="ConvTranspose.*not supported"):
        spec_from_onnx(transposed)
    conv1d = _graph_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3])], [("w", (4, 2, 3))],
                          input_dims=(1, 2, 4, 4))
    with pytest.raises(SpecError, match="only 2-D convolutions"):
        spec_from_onnx(conv1d)
    no_layers = _graph_model([helper.make_node("Relu", ["x"], ["y"])], [], input_dims=(1, 2, 4, 4))
    with pytest.raises(SpecError, match="has no Conv, Gemm or MatMul layers"):
        spec_from_onnx(no_layers)


def test_weight_layers_name_the_nodes_as_the_spec_does(tmp_path):
    import warnings

    import onnx
    import torch

    from autoq.host.models import zoo
    from autoq.host.network.onnx_import import spec_from_onnx, weight_layers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo.build("squeezenet1_1"), (torch.zeros(1, 3, 32, 32),), str(tmp_path / "s.onnx"), dynamo=False)
    model = onnx.load(str(tmp_path / "s.onnx"))
    layers = weight_layers(model)
    assert [layer.name for layer in layers] == list(spec_from_onnx(model).names)
    assert all(any(layer.node is node for node in model.graph.node) for layer in layers)  # the model's own nodes
