"""ONNX export of a model quantized with a plan.

The exported graph holds the fake-quantized weights as float initializers (integer level x per-kernel scale) and
quantizes each layer's input with ops onnxruntime runs: ``Div(scale) -> Round -> Clip(low, high) -> Mul(scale)``
(signed 1-bit inputs: ``Where(x >= 0, 1, -1) -> Mul(scale)``). ONNX ``Round`` rounds half to even, as ``torch.round``
does, so the graph computes what the torch model computes.

The weights are folded on a copy of the model whose quantized layers are plain layers holding the fake-quantized
weights, with activation-quantizing forward pre-hooks. The copy is exported with torch's TorchScript-based
exporter (``dynamo=False``): tracing runs the forward with its hooks as they are and writes one self-contained
file in about a second. The dynamo exporter (onnxscript) gives the same outputs on this model but took ~6x longer,
had to fall back to strict ``torch.export`` (the hooks read each scale as a Python float), and writes the weights
to a side ``.onnx.data`` file.
"""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_bytes
from autoq.common.plan import QuantPlan
from autoq.host.quant.quantizer import QuantizedModel

if TYPE_CHECKING:
    from autoq.host.quant.onnx_quant import OnnxQuantizedModel

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def _plain_layer(module: nn.Conv2d | nn.Linear, weight: torch.Tensor) -> nn.Conv2d | nn.Linear:
    """A fresh, unparametrized layer like ``module`` holding ``weight`` and ``module``'s bias."""
    if isinstance(module, nn.Conv2d):
        # torch types _ConvNd's sizes as tuple[int, ...]; a Conv2d's are pairs, as its constructor wants
        plain: nn.Conv2d | nn.Linear = nn.Conv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,  # type: ignore[arg-type]
            module.dilation, module.groups, module.bias is not None, module.padding_mode,  # type: ignore[arg-type]
        )
    else:
        plain = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if module.bias is not None:
            assert plain.bias is not None  # made with bias=True
            plain.bias.copy_(module.bias)
    return plain


def folded_copy(qmodel: QuantizedModel) -> nn.Module:
    """An eval-mode copy of the model in which each quantized layer is a plain layer holding its fake-quantized
    weight under the current plan, with a forward pre-hook quantizing its input (a copy of its quantizer)."""
    model = copy.deepcopy(qmodel.model).eval()
    for name in qmodel.quantized_layers:
        # torch's remove_parametrizations would edit the parametrized class the copy shares with the original.
        module = model.get_submodule(name)
        assert isinstance(module, (nn.Conv2d, nn.Linear))  # the only layers QuantizedModel quantizes
        parametrized: Any = module  # torch types dynamic children (the parametrization lists) as Tensor | Module
        quantizer = parametrized.parametrizations.weight[0]
        with torch.no_grad():
            plain = _plain_layer(module, module.weight)
        plain.register_forward_pre_hook(quantizer.quantize_input)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


def export_quantized_onnx(qmodel: QuantizedModel | OnnxQuantizedModel, plan: QuantPlan, path: str | Path) -> Path:
    """Apply ``plan`` to ``qmodel`` (it keeps the plan) and write the quantized model to ``path`` (dynamic batch)."""
    if not qmodel.calibrated:
        raise AutoQError("cannot export: the quantized model's activations are not calibrated; call calibrate() first")
    if not isinstance(qmodel, QuantizedModel):  # an ONNX model (quant.onnx_quant): its own quantized graph
        return qmodel.export(plan, path)
    qmodel.apply(plan)
    model = folded_copy(qmodel)
    example = torch.zeros((1, *qmodel.network.input_shape))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
        torch.onnx.export(
            # torch's stub says str | PathLike, but the TorchScript exporter (dynamo=False) writes to a file object
            model, (example,), buffer, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
