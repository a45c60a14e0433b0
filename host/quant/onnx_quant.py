"""Kernel-wise fake quantization of an ONNX model, run in onnxruntime: a ``QuantPlan`` without a torch module.

The same quantizer as the torch path (``quantizer.LayerQuantizer``: per-kernel MSE-optimal clip, 1-bit kernels
``sign(w) * mean|w|``, per-layer activation scales calibrated on data with ``ActivationSampler``), applied to the
graph instead of a module: BatchNorm is folded into the convs first (``bnfold.fold_batchnorm_onnx``); under a plan,
each quantized Conv/Gemm/MatMul reads its fake-quantized weight from a new initializer and its input through
``Clip(low*s, high*s) -> QuantizeLinear(s) -> DequantizeLinear(s)`` (uint8 for never-negative inputs, int8 for
signed ones; a signed 1-bit input is ``Where(x >= 0, s, -s)``), so onnxruntime computes what the torch path does
(up to float rounding in the convs; the graph runs unoptimised, see ``_session``). Layers are matched to the
``NetworkSpec`` by the names ``spec_from_onnx`` gives them. The batch dimension of the graph's input and output is
made symbolic; a graph that bakes its batch size in runs one sample at a time.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from autoq.common.errors import SpecError
from autoq.common.fileio import atomic_write_bytes
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.network.onnx_import import weight_layers
from autoq.host.quant.bnfold import fold_batchnorm_onnx
from autoq.host.quant.policy import KEPT_BITS
from autoq.host.quant.quantizer import (ActivationSampler, LayerQuantizer, QuantizerConfig, QuantizerError,
                                        activation_levels, effective_plan, kernel_absmax)

#: Opset the inserted ops need (GreaterOrEqual, Clip with min/max inputs, QuantizeLinear); older graphs are converted.
MIN_OPSET = 13
_PREFIX = "autoq_q"


class _Layer(NamedTuple):
    node_index: int
    axis: int  # output-channel axis of the weight as the node consumes it
    shape: tuple[int, ...]  # that consumed weight's shape
    rows: torch.Tensor  # (c_out, K) float32: the consumed weight, one row per kernel


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _consumed_weight(graph: onnx.GraphProto, value: str) -> np.ndarray:
    """The constant a node reads as ``value``: an initializer or Constant, through Identity/Cast/Transpose."""
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    if value in inits:
        return numpy_helper.to_array(inits[value])
    node = producers.get(value)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    if node is not None and node.op_type in ("Identity", "Cast"):
        return _consumed_weight(graph, node.input[0])
    if node is not None and node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return np.transpose(_consumed_weight(graph, node.input[0]), perm)
    raise SpecError(f"weight {value!r} comes from a {node.op_type if node is not None else 'graph input'} node: "
                    "only float initializers (through Identity/Cast/Transpose) can be quantized")


def _output_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 1  # MatMul: x @ W (K, N)


def _symbolic_batch(model: onnx.ModelProto) -> None:
    """Make dim 0 of the graph's data input and outputs symbolic and drop stale intermediate shapes (in place)."""
    inits = {t.name for t in model.graph.initializer}
    for value in [*[v for v in model.graph.input if v.name not in inits], *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]


class OnnxQuantizedModel:
    """An ONNX model whose conv/linear layers follow a ``QuantPlan``; the interface of ``QuantizedModel`` that the
    evaluator uses (``apply``, ``calibrate``, ``float_mode``, ``effective_plan``, ``__call__`` on a batch)."""

    def __init__(self, model: onnx.ModelProto, network: NetworkSpec, config: QuantizerConfig = QuantizerConfig()) -> None:
        self.network = network
        self.config = config
        if _opset(model) < MIN_OPSET:
            from onnx import version_converter

            try:
                model = version_converter.convert_version(model, MIN_OPSET)
            except Exception as exc:
                raise SpecError(f"ONNX model {network.name!r} has opset {_opset(model)}; converting it to {MIN_OPSET} "
                                f"failed: {type(exc).__name__}: {exc}") from None
        self.base = fold_batchnorm_onnx(model)
        _symbolic_batch(self.base)
        inputs = [v for v in self.base.graph.input if v.name not in {t.name for t in self.base.graph.initializer}]
        if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
            raise SpecError(f"ONNX model {network.name!r}: expected one float32 input, found "
                            f"{[(v.name, TensorProto.DataType.Name(v.type.tensor_type.elem_type)) for v in inputs]}")
        self.input_name = inputs[0].name
        names = config.layers if config.layers is not None else network.names
        for name in names:
            network[name]  # raises SpecError naming an unknown layer
        found = {layer.name: layer for layer in weight_layers(self.base)}
        if set(found) != set(network.names):
            raise SpecError(f"ONNX model {network.name!r}: its layers {sorted(set(found) ^ set(network.names))[:6]} "
                            "do not match the network spec")
        index = {id(node): i for i, node in enumerate(self.base.graph.node)}
        self.quantizers: dict[str, LayerQuantizer] = {}
        self._layers: dict[str, _Layer] = {}
        for spec in network:
            if spec.name not in names:
                continue
            node = found[spec.name].node
            weight = _consumed_weight(self.base.graph, node.input[1]).astype(np.float32)
            axis = _output_axis(node)
            rows = torch.from_numpy(np.ascontiguousarray(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)))
            self._layers[spec.name] = _Layer(index[id(node)], axis, weight.shape, rows)
            self.quantizers[spec.name] = LayerQuantizer(spec.name, spec.c_out, config.clip_ratios)
        self.plan = QuantPlan.uniform(network, KEPT_BITS, KEPT_BITS)
        self._float = False
        # "float" / plan key -> (onnxruntime session, untyped; batch ok: None until the first batch tells)
        self._sessions: dict[str, tuple[Any, bool | None]] = {}

    # -- the QuantizedModel interface ------------------------------------------------------------------------------
    @property
    def quantized_layers(self) -> tuple[str, ...]:
        return tuple(self.quantizers)

    @property
    def calibrated(self) -> bool:
        return all(q.calibrated for q in self.quantizers.values())

    def effective_plan(self, plan: QuantPlan) -> QuantPlan:
        """``plan`` with the first/last-layer policies applied and float layers at 8/8 (what runs, and what to cost)."""
        return effective_plan(plan, self.network, self.quantizers, self.config)

    def apply(self, plan: QuantPlan) -> None:
        """Switch to ``plan`` (validated against the network); the graph is rebuilt at the next forward pass."""
        for layer in self.effective_plan(plan).layers:
            quantizer = self.quantizers.get(layer.name)
            if quantizer is not None:
                quantizer.weight_bits.copy_(torch.as_tensor(layer.weight_bits, dtype=torch.int64))
                quantizer.act_bits = layer.act_bits
        self.plan = plan

    @contextmanager
    def float_mode(self) -> Iterator[None]:
        """Run the float (BatchNorm-folded) graph inside the block."""
        previous, self._float = self._float, True
        try:
            yield
        finally:
            self._float = previous

    def kernel_scales(self) -> dict[str, np.ndarray]:
        """Each quantized layer's largest absolute float weight per kernel (c_out,), float64."""
        return {name: kernel_absmax(layer.rows) for name, layer in self._layers.items()}

    def calibrate(self, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]]) -> None:
        """Fit every quantized layer's activation scales on the float graph's inputs to it over ``batches``."""
        graph = copy.deepcopy(self.base)
        taps: dict[str, str] = {}
        outputs = {v.name for v in graph.graph.output}
        for name, layer in self._layers.items():
            value = graph.graph.node[layer.node_index].input[0]
            taps[name] = value
            if value != self.input_name and value not in outputs:
                graph.graph.output.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, None))
                outputs.add(value)
        fetch = [v.name for v in graph.graph.output]
        session = self._session(graph)
        sampler = ActivationSampler(self.quantizers, self.config)
        for batch in batches:
            x = (batch if isinstance(batch, torch.Tensor) else batch[0]).numpy()
            results = dict(zip(fetch, session.run(fetch, {self.input_name: x})))
            results[self.input_name] = x
            for name in self.quantizers:
                sampler.add(name, torch.from_numpy(results[taps[name]]))
        sampler.fit(self.quantizers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the batch ``x`` under the current plan (or float, in ``float_mode``)."""
        key = "float" if self._float else self._plan_key()
        if key not in self._sessions:
            self._sessions = {k: v for k, v in self._sessions.items() if k == "float"}  # one quantized graph at a time
            graph = self.base if self._float else self.quantized_graph()
            self._sessions[key] = (self._session(graph), None)
        session, batch_ok = self._sessions[key]
        data = x.detach().numpy().astype(np.float32, copy=False)
        if batch_ok is None:
            try:
                out = session.run(None, {self.input_name: data})[0]
                self._sessions[key] = (session, True)
                return torch.from_numpy(out)
            except Exception:
                if len(data) == 1:
                    raise
                self._sessions[key] = (session, False)
                batch_ok = False
        if batch_ok:
            return torch.from_numpy(session.run(None, {self.input_name: data})[0])
        return torch.from_numpy(np.concatenate([session.run(None, {self.input_name: data[i:i + 1]})[0]
                                                for i in range(len(data))]))

    # -- the quantized graph ---------------------------------------------------------------------------------------
    def _plan_key(self) -> str:
        return ";".join(f"{n}:{q.act_bits}:{q.weight_bits.tolist()}" for n, q in self.quantizers.items())

    def quantized_graph(self) -> onnx.ModelProto:
        """The BatchNorm-folded graph with the current plan's fake-quantized weights and input quantizers."""
        if not self.calibrated:
            raise QuantizerError(f"model {self.network.name!r}: activations are not calibrated; call calibrate() first")
        model = copy.deepcopy(self.base)
        graph = model.graph
        inserted: dict[int, list[onnx.NodeProto]] = {}
        with torch.no_grad():
            for name, layer in self._layers.items():
                quantizer = self.quantizers[name]
                node = graph.node[layer.node_index]
                rows = quantizer(layer.rows).numpy()
                moved = (layer.shape[layer.axis], *(d for i, d in enumerate(layer.shape) if i != layer.axis))
                weight = np.moveaxis(rows.reshape(moved), 0, layer.axis)
                weight_name = f"{_PREFIX}/{name}/weight"
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
                node.input[1] = weight_name
                nodes, node.input[0] = self._input_quantizer(graph, name, quantizer, node.input[0])
                inserted[layer.node_index] = nodes
        ordered: list[onnx.NodeProto] = []
        for i, node in enumerate(graph.node):
            ordered.extend(inserted.get(i, ()))
            ordered.append(node)
        del graph.node[:]
        graph.node.extend(ordered)
        return model

    @staticmethod
    def _input_quantizer(graph: onnx.GraphProto, name: str, quantizer: LayerQuantizer,
                         x: str) -> tuple[list[onnx.NodeProto], str]:
        """Nodes that quantize value ``x`` as ``quantizer`` does at its current bits, and the quantized value."""
        scale, bits, signed = np.float32(quantizer.act_scale), quantizer.act_bits, quantizer.act_signed
        p = f"{_PREFIX}/{name}/act"

        def const(suffix: str, value: np.ndarray | np.generic) -> str:
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"{p}/{suffix}"))  # a scalar: 0-d
            return f"{p}/{suffix}"

        if signed and bits == 1:
            return [
                helper.make_node("GreaterOrEqual", [x, const("zero", np.array(0, np.float32))], [f"{p}/nonneg"]),
                helper.make_node("Where", [f"{p}/nonneg", const("pos", scale), const("neg", -scale)], [f"{p}/q"]),
            ], f"{p}/q"
        low, high = activation_levels(bits, signed)
        zero = np.array(0, np.int8 if signed else np.uint8)
        s, z = const("scale", np.array(scale, np.float32)), const("zero_point", zero)
        return [
            helper.make_node("Clip", [x, const("low", np.array(low * scale, np.float32)),
                                      const("high", np.array(high * scale, np.float32))], [f"{p}/clipped"]),
            helper.make_node("QuantizeLinear", [f"{p}/clipped", s, z], [f"{p}/int"]),
            helper.make_node("DequantizeLinear", [f"{p}/int", s, z], [f"{p}/q"]),
        ], f"{p}/q"

    @staticmethod
    def _session(model: onnx.ModelProto):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # onnxruntime's graph optimisations (even the basic level) rewrite the Q/DQ pattern: on the digits model at
        # 8/8 they moved logits 0.12 away from the torch path's (3 of 1,797 predictions), unoptimised 0.03 (none)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about the symbolic batch dimension
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def export(self, plan: QuantPlan, path: str | Path) -> Path:
        """Apply ``plan`` (kept) and write the quantized graph to ``path``."""
        self.apply(plan)
        path = Path(path)
        atomic_write_bytes(path, self.quantized_graph().SerializeToString())
        return path
