"""``NetworkSpec`` of an ONNX graph, read with the ``onnx`` package alone.

``Conv`` nodes give conv/depthwise layers; ``Gemm`` and ``MatMul`` with a constant weight give linear layers.
Sizes come from ONNX shape inference. A layer is named after its weight initializer minus ``.weight``, so a
torch model exported with ``torch.onnx.export`` gets the same spec as ``spec_from_torch`` gives. Where the
exporter renamed the weight (the legacy exporter folds BatchNorm into the conv and calls the result
``onnx::Conv_N``) the torch module path is recovered from the node's scope name instead.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import onnx
from onnx import helper, shape_inference

from autoq.common.errors import SpecError
from autoq.common.network import LayerSpec, NetworkSpec, conv_kind

UNSUPPORTED_OPS = frozenset({"ConvTranspose", "ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulInteger"})
# Ops that pass a constant weight through unchanged on its way to a Conv/Gemm/MatMul.
_PASS_THROUGH_OPS = frozenset({"Identity", "Cast", "DequantizeLinear"})


def _load(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, source.graph.name or "onnx-model"
    path = Path(source)
    if not path.is_file():
        raise SpecError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))  # also reads weights kept beside it (model.onnx.data)
    except Exception as exc:
        raise SpecError(f"cannot read ONNX model {path}: {type(exc).__name__}: {exc}") from None
    if not model.graph.node:
        raise SpecError(f"{path} is not an ONNX model (no graph nodes)")
    return model, path.name.removesuffix(".onnx")


def _static_dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


class _Graph:
    """Shapes, constants and producers of an ONNX graph, for looking things up by value name."""

    def __init__(self, model: onnx.ModelProto, label: str, nodes_of: onnx.GraphProto | None = None) -> None:
        """``nodes_of``: walk that graph's nodes (the caller's own objects) instead of the shape-inferred copy's."""
        self.label = label
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as exc:
            raise SpecError(f"{label}: ONNX shape inference failed: {type(exc).__name__}: {exc}") from None
        self.graph = nodes_of if nodes_of is not None else inferred.graph
        model = inferred
        self.constants: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in self.graph.node:
            for output in node.output:
                self.producer[output] = node
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = tuple(node.attribute[0].t.dims)
        graph = model.graph
        self.shapes = {v.name: _static_dims(v) for v in (*graph.input, *graph.value_info, *graph.output)}

    def input_shape(self) -> tuple[int, int, int]:
        inputs = [v for v in self.graph.input if v.name not in self.constants]
        if len(inputs) != 1:
            raise SpecError(f"{self.label}: expected one graph input, found {len(inputs)}: {[v.name for v in inputs]}")
        dims = _static_dims(inputs[0])
        if len(dims) != 4 or None in dims[1:]:
            shown = ["?" if d is None else d for d in dims]
            raise SpecError(f"{self.label}: input {inputs[0].name!r} must be (N, C, H, W) with static C, H, W; got {shown}")
        return dims[1:]  # type: ignore[return-value]

    def weight(self, value: str) -> tuple[str, tuple[int, ...]] | None:
        """(initializer name, dims as consumed) of a constant weight input, following Identity/Transpose; None if not constant."""
        node = self.producer.get(value)
        if value in self.constants:
            return value, self.constants[value]
        if node is None or not node.input:
            return None
        if node.op_type in _PASS_THROUGH_OPS:
            return self.weight(node.input[0])
        if node.op_type == "Transpose":
            found = self.weight(node.input[0])
            if found is None:
                return None
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None) or list(range(len(found[1])))[::-1]
            return found[0], tuple(found[1][p] for p in perm)
        return None

    def spatial(self, value: str, node: onnx.NodeProto) -> tuple[int, int]:
        dims = self.shapes.get(value, ())
        if len(dims) != 4 or None in dims[2:]:
            raise SpecError(f"{self.label}: node {node.name or node.op_type!r}: size of {value!r} unknown after shape "
                            f"inference (got {list(dims)}); export the model with static input sizes")
        return dims[2], dims[3]  # type: ignore[return-value]


def _scope_path(node_name: str) -> str | None:
    """Torch module path from a legacy-exporter node name: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``."""
    parts = node_name.split("/")
    if len(parts) < 3 or parts[0]:
        return None
    path = ""
    previous = ""
    for part in parts[1:-1]:
        # children of containers appear as "parent.index"; attributes as their bare name
        step = part[len(previous) + 1:] if previous and part.startswith(previous + ".") else part
        path = f"{path}.{step}" if path else step
        previous = part
    return path or None


def _namespace_path(node: onnx.NodeProto) -> str | None:
    """Torch module path from the dynamo exporter's ``namespace`` metadata (last Conv2d/Linear module on it)."""
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    for entry in reversed(namespace.split("/")[1:]):
        path, _, cls = entry.partition(": ")
        if cls.endswith((".Conv2d", ".Linear")):
            return path
    return None


def _layer_name(node: onnx.NodeProto, weight: str) -> str:
    if weight.endswith(".weight"):
        return weight.removesuffix(".weight")
    return _scope_path(node.name) or _namespace_path(node) or node.name or weight


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:  # an attribute is an int, float, bytes, list, tensor...
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(g: _Graph, node: onnx.NodeProto, name: str, w: tuple[int, ...]) -> LayerSpec:
    if len(w) != 4:
        raise SpecError(f"{g.label}: layer {name!r}: only 2-D convolutions are supported, weight has shape {list(w)}")
    attrs = _attrs(node)
    groups = int(attrs.get("group", 1))
    c_out, c_in = w[0], w[1] * groups
    in_hw, out_hw = g.spatial(node.input[0], node), g.spatial(node.output[0], node)
    stride = tuple(attrs.get("strides", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        dilation = tuple(attrs.get("dilations", (1, 1)))
        totals = [max((o - 1) * s + d * (k - 1) + 1 - i, 0) for o, s, d, k, i in zip(out_hw, stride, dilation, w[2:], in_hw)]
        padding = tuple(t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals)
    else:
        padding = tuple(attrs.get("pads", (0, 0, 0, 0))[:2])  # leading (top, left) pads
    kind = conv_kind(c_in, groups)
    return LayerSpec(name, kind, c_in, c_out, w[2:], stride, padding, groups, in_hw, out_hw)


def _linear(g: _Graph, node: onnx.NodeProto, name: str, w: tuple[int, ...]) -> LayerSpec:
    if len(w) != 2:
        raise SpecError(f"{g.label}: layer {name!r}: a linear weight must be 2-D, got shape {list(w)}")
    if node.op_type == "Gemm":
        c_out, c_in = w if _attrs(node).get("transB", 0) else w[::-1]
        positions = 1
    else:  # MatMul: x (B, ..., K) @ W (K, N)
        c_in, c_out = w
        dims = g.shapes.get(node.input[0], ())
        positions = math.prod(d or 0 for d in dims[1:-1]) if len(dims) > 2 else 1
        if positions < 1:
            raise SpecError(f"{g.label}: layer {name!r}: input size unknown after shape inference ({list(dims)})")
    return LayerSpec(name, "linear", c_in, c_out, in_hw=(positions, 1), out_hw=(positions, 1))


class WeightLayer(NamedTuple):
    """A Conv/Gemm/MatMul node with a constant weight: its layer name, the node, and the weight's source initializer
    (or Constant output) with its dims as the node consumes it."""

    name: str
    node: onnx.NodeProto
    weight: str
    dims: tuple[int, ...]


def _weight_layers(g: _Graph, label: str) -> list[WeightLayer]:
    layers: list[WeightLayer] = []
    used_by: dict[str, str] = {}
    for node in g.graph.node:
        if node.op_type in UNSUPPORTED_OPS:
            raise SpecError(f"{label}: node {node.name or node.op_type!r} ({node.op_type}) is not supported; "
                            "only float Conv, Gemm and MatMul layers are")
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        found = g.weight(node.input[1])
        if found is None:
            if node.op_type == "MatMul":  # a product of two activations has no weights to quantize
                continue
            raise SpecError(f"{label}: {node.op_type} node {node.name!r} has a weight {node.input[1]!r} that is not a constant")
        weight, dims = found
        layer_name = _layer_name(node, weight)
        if weight in used_by:
            raise SpecError(f"{label}: weight {weight!r} is used by two layers ({used_by[weight]!r} and "
                            f"{layer_name!r}); shared weights are not supported")
        used_by[weight] = layer_name
        layers.append(WeightLayer(layer_name, node, weight, dims))
    if not layers:
        raise SpecError(f"{label} has no Conv, Gemm or MatMul layers")
    return layers


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """The weight layers of ``model`` in graph order, named as ``spec_from_onnx`` names them (nodes of ``model`` itself)."""
    label = f"ONNX model {model.graph.name or 'onnx-model'!r}"
    return _weight_layers(_Graph(model, label, model.graph), label)


def spec_from_onnx(source: str | Path | onnx.ModelProto, name: str | None = None) -> NetworkSpec:
    """Spec of an ONNX model (a path, with or without a ``.onnx.data`` side file, or a loaded ``ModelProto``)."""
    model, default_name = _load(source)
    label = f"ONNX model {default_name if isinstance(source, onnx.ModelProto) else str(source)!r}"
    g = _Graph(model, label)
    input_shape = g.input_shape()
    layers = [(_conv if layer.node.op_type == "Conv" else _linear)(g, layer.node, layer.name, layer.dims)
              for layer in _weight_layers(g, label)]
    return NetworkSpec(name or default_name, tuple(layers), input_shape)
