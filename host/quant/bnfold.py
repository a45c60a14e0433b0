"""Fold inference-mode BatchNorm into the convolution before it, in a torch model and in an ONNX graph.

A conv ``y = W * x + b`` followed by ``BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta`` is one conv with
``W' = W * s`` (per output channel) and ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``; quantizing
``W'`` is what an accelerator runs. Both functions are pure: they return a folded copy and leave their input as it
was. A pair is folded only when the BatchNorm is the conv's sole consumer and normalises over its output channels.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from autoq.common.errors import AutoQError

if TYPE_CHECKING:
    import onnx


class BatchNormFoldError(AutoQError, RuntimeError):
    """A model's BatchNorm layers cannot be located for folding (e.g. torch.fx cannot trace the model)."""


def fold_arrays(weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Weight (C_out, ...) and bias (C_out,) of the conv that computes BN(conv(x)); computed in float64, returned in
    the weight's dtype."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    b = np.zeros(len(scale)) if bias is None else np.asarray(bias, np.float64)
    folded_w = np.asarray(weight, np.float64) * scale.reshape(-1, *([1] * (np.ndim(weight) - 1)))
    folded_b = (b - np.asarray(mean, np.float64)) * scale + np.asarray(beta, np.float64)
    return folded_w.astype(weight.dtype), folded_b.astype(weight.dtype)


# ---------------------------------------------------------------- torch

def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, batchnorm) qualified module names where the BatchNorm2d consumes only that Conv2d's output, found
    with a torch.fx trace of the forward pass; ``[]`` for a model without BatchNorm2d."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return []
    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:
        raise BatchNormFoldError(f"cannot locate the BatchNorm layers to fold: torch.fx cannot trace the model "
                                 f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":  # its target is the module's qualified name
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv_name, bn_name = str(source.target), str(node.target)
        conv, bn = modules[conv_name], modules[bn_name]
        if (isinstance(conv, nn.Conv2d) and calls[conv_name] == 1 and calls[bn_name] == 1
                and bn.track_running_stats and bn.num_features == conv.out_channels):
            pairs.append((conv_name, bn_name))
    return pairs


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` in which every foldable Conv2d -> BatchNorm2d pair is one Conv2d with a bias
    (the BatchNorm becomes ``nn.Identity``); module names stay, so the model's ``NetworkSpec`` still applies."""
    pairs = batchnorm_pairs(model)
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # what batchnorm_pairs pairs
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None  # batchnorm_pairs keeps BatchNorms that track running stats
        weight, bias = fold_arrays(
            conv.weight.detach().numpy(), None if conv.bias is None else conv.bias.detach().numpy(),
            (bn.weight if bn.affine else torch.ones(bn.num_features)).detach().numpy(),
            (bn.bias if bn.affine else torch.zeros(bn.num_features)).detach().numpy(),
            mean.numpy(), var.numpy(), bn.eps,
        )
        # torch types _ConvNd's sizes as tuple[int, ...]; a Conv2d's are pairs, as its constructor wants
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                          conv.dilation, conv.groups, True, conv.padding_mode)  # type: ignore[arg-type]
        assert plain.bias is not None  # made with bias=True
        with torch.no_grad():
            plain.weight.copy_(torch.from_numpy(weight))
            plain.bias.copy_(torch.from_numpy(bias))
        _set_module(folded, conv_name, plain.eval())
        _set_module(folded, bn_name, nn.Identity())
    return folded


# ---------------------------------------------------------------- ONNX

def fold_batchnorm_onnx(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy of ``model`` in which every inference-mode ``BatchNormalization`` fed only by a ``Conv`` with constant
    (initializer) weights is folded into it: the conv's weight initializer keeps its name and gets the folded values,
    the conv gets a bias, takes over the BatchNorm's output name, and the BatchNorm node is removed."""
    import onnx
    from onnx import helper, numpy_helper

    folded = copy.deepcopy(model)
    graph = folded.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {v.name for v in graph.output}
    producer = {out: node for node in graph.node for out in node.output}
    removed = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        conv = producer.get(bn.input[0])
        if (attrs.get("training_mode", 0) or conv is None or conv.op_type != "Conv" or consumers.get(bn.input[0]) != 1
                or bn.input[0] in graph_outputs or not all(name in inits for name in bn.input[1:])
                or conv.input[1] not in inits or consumers.get(conv.input[1]) != 1
                or (len(conv.input) > 2 and conv.input[2] and (conv.input[2] not in inits or consumers.get(conv.input[2]) != 1))):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[name]) for name in bn.input[1:])
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if len(gamma) != weight.shape[0]:
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        bias = numpy_helper.to_array(inits[conv.input[2]]) if has_bias else None
        new_w, new_b = fold_arrays(weight, bias, gamma, beta, mean, var, float(attrs.get("epsilon", 1e-5)))
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(new_w, conv.input[1]))
        if has_bias:
            inits[conv.input[2]].CopyFrom(numpy_helper.from_array(new_b, conv.input[2]))
        else:
            bias_name = f"{conv.input[1]}.bn_folded_bias"
            graph.initializer.append(numpy_helper.from_array(new_b, bias_name))
            inits[bias_name] = graph.initializer[-1]
            del conv.input[2:]
            conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        removed.append(bn)
    for bn in removed:
        graph.node.remove(bn)
    used = {name for node in graph.node for name in node.input}
    dropped = {name for bn in removed for name in bn.input[1:]} - used  # the BatchNorms' parameters
    for tensor in [t for t in graph.initializer if t.name in dropped]:
        graph.initializer.remove(tensor)
    for value in [v for v in graph.input if v.name in dropped]:
        graph.input.remove(value)
    for value in [v for v in graph.value_info if v.name in {bn.input[0] for bn in removed}]:
        graph.value_info.remove(value)
    onnx.checker.check_model(folded)
    return folded
