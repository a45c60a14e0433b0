"""Export a plan-quantized torch model to an hls4ml project whose C simulation reproduces it.

hls4ml has one precision per layer tensor, not per output channel. Of the two ways to map a kernel-wise plan onto
it — split each layer into one layer per bit-width group, or give the layer its widest kernel's width — this export
**rounds up to the layer's maximum**, and loses nothing by it: each layer runs in the *integer domain*, where a
``b``-bit kernel's integer levels (``|q| <= 2^(b-1)-1``) are exactly representable in ``ap_int<B>`` for any
``B >= b``. The narrower kernels' saving is a property of the bit-serial overlay (fewer bit-planes), not of a
dataflow HLS design whose multipliers are sized per layer anyway; splitting would multiply the layers and add a
concatenation and a channel permutation for no change in the numbers.

Each quantized conv/linear layer becomes three hls4ml layers:

1. ``<layer>_quant`` (BatchNormalization, scale ``1/s_x``): the input activation quantizer. Its result type is
   ``ap_ufixed<a,a,AP_RND_CONV,AP_SAT>`` (unsigned inputs) or ``ap_fixed<a,a,AP_RND_CONV,AP_SAT_SYM>`` (signed),
   i.e. the integer level ``clamp(round_half_even(x/s_x))`` the torch quantizer computes.
2. ``<layer>_int`` (Conv2D/Dense): the integer weight levels in ``ap_int<B>``, ``B = max(2, max kernel bits)``
   (1-bit kernels are bipolar +-1, which needs two bits), no bias; accumulator and result ``ap_int<n>`` with ``n``
   from the largest possible ``sum |q| * max|level|`` of any kernel, so the integer product is exact.
3. ``<layer>_scale`` (BatchNormalization): the per-kernel scales ``w_scale[c] * s_x`` and the float bias, in
   ``ap_fixed`` with ``SCALE_SIGNIFICANT_BITS`` (24) significant bits; the result is rounded to
   ``RESULT_FRACTION_BITS`` (24) fractional bits with enough integer bits for the largest reachable value.

So weights, activation levels and accumulators are bit-exact; the only inexact steps are the fixed-point scales,
biases and real-domain values (relative error ~2^-24, like float32 itself). They can only matter for a value that
lies within that distance of a rounding boundary of the *next* layer's activation quantizer, which the C simulation
may then put on the neighbouring level: rare, and one level. (With 16 fractional bits, truncated, about 5e-4 of the
activation levels flipped on the digits model; with 24, rounded, none did.) The tolerance the test states follows.

Pooling between layers stays in the real domain (``adaptive_avg_pool2d(x, 1)``, which hls4ml does not parse,
becomes an ``AvgPool2d`` over the whole map); its precision is ``DEFAULT_PRECISION``. A flatten of a 1x1 map is
dropped and the linear layers after it run as 1x1 convolutions, so the project's output is ``(N, classes, 1, 1)``
(the same values in the same order): hls4ml's streamed flatten scrambles the stream.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from autoq.common.errors import AutoQError
from autoq.common.plan import QuantPlan

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

    from autoq.host.quant.onnx_quant import OnnxQuantizedModel
    from autoq.host.quant.quantizer import QuantizedModel

HLS_BACKEND = "Vivado"
PYNQ_Z1_PART = "xc7z020clg400-1"
PROJECT_NAME = "autoq_model"
# io_stream: line-buffer convolutions. io_parallel generates explicit im2col code per output pixel (~2 MB of C++
# for the digits CNN), which takes g++ minutes to compile; io_stream compiles in ~20 s of CPU.
IO_TYPE = "io_stream"
SCALE_SIGNIFICANT_BITS = 24
RESULT_FRACTION_BITS = 24
# Real-domain values between layers (ReLU, pooling) and the network input keep 24 fractional bits as well: a
# truncation there, scaled up by the next quantizer's 1/s_x, would move values across rounding boundaries.
DEFAULT_PRECISION = "ap_fixed<48,24>"
INPUT_PRECISION = "ap_fixed<36,12>"
CSIM_CLOSE = 1e-4  # logits closer than this to torch's count as equal (see the module docstring and its test)


class HlsExportError(AutoQError, RuntimeError):
    """The model or plan cannot be exported to hls4ml (unsupported layer, activation mode, or hls4ml failure)."""


@dataclass(frozen=True)
class LayerPrecision:
    """The ap types chosen for one quantized layer (see the module docstring)."""

    name: str
    input_scale: str  # 1/s_x of the quantize layer
    input: str  # the activation levels
    weight: str
    accumulator: str
    scale: str  # w_scale * s_x of the scale layer
    bias: str
    result: str


def _integer_bits(magnitude: float) -> int:
    """Integer bits (sign included) of a signed fixed-point type that holds +-``magnitude``."""
    return max(1, math.floor(math.log2(magnitude)) + 2) if magnitude > 0 else 1


def _fixed_with_significant_bits(values: "torch.Tensor", significant: int) -> str:
    """An ap_fixed type holding every value in ``values`` with ``significant`` bits of relative precision."""
    magnitudes = values.abs()
    nonzero = magnitudes[magnitudes > 0]
    if not len(nonzero):
        return "ap_fixed<2,1>"
    integer = _integer_bits(float(nonzero.max()))
    fraction = max(0, significant - math.floor(math.log2(float(nonzero.min()))) - 1)
    return f"ap_fixed<{integer + fraction},{integer}>"


def _activation_type(bits: int, signed: bool, layer: str) -> str:
    if signed and bits == 1:
        raise HlsExportError(
            f"layer {layer!r}: a signed 1-bit input is bipolar (sign(x)), which no ap_fixed rounding mode expresses; "
            "give this layer's input 2 bits or more"
        )
    if signed:
        return f"ap_fixed<{bits},{bits},AP_RND_CONV,AP_SAT_SYM>"
    return f"ap_ufixed<{bits},{bits},AP_RND_CONV,AP_SAT>"


def _batchnorm(channels: int, spatial: bool, scale: "torch.Tensor", bias: "torch.Tensor") -> "nn.Module":
    """A BatchNorm computing ``x * scale + bias`` exactly (mean 0, variance 1, epsilon 0)."""
    import torch
    from torch import nn

    bn = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels, eps=0.0).eval()
    with torch.no_grad():
        bn.weight.copy_(scale)
        bn.bias.copy_(bias)
    return bn


def integer_domain_model(qmodel: "QuantizedModel", example: "torch.Tensor") -> tuple["fx.GraphModule", dict[str, LayerPrecision]]:
    """The quantized model rewritten as quant -> integer layer -> scale for every quantized layer (module docstring).

    Returns the rewritten ``GraphModule`` — hls4ml's input: its quantize layers only scale, because the rounding and
    clamping live in the result types of the precisions, so running it in torch does *not* quantize activations —
    and the precisions chosen per layer, keyed by hls4ml layer name prefix.
    """
    import torch
    from torch import fx, nn
    from torch.fx.passes.shape_prop import ShapeProp

    from autoq.host.quant.quantizer import activation_levels

    if not qmodel.calibrated:
        raise HlsExportError("the quantized model's activations are not calibrated; calibrate it before exporting")
    with qmodel.float_mode():
        try:
            traced = fx.symbolic_trace(qmodel.model)
        except Exception as exc:  # torch.fx raises many types for untraceable control flow
            raise HlsExportError(f"cannot trace the model for hls4ml export: {exc}") from exc  # its traceback locates the code
        with torch.no_grad():
            ShapeProp(traced).propagate(example)

    graph = fx.Graph()
    root = nn.Module()
    env: dict[fx.Node, fx.Node] = {}
    precisions: dict[str, LayerPrecision] = {}
    modules = dict(traced.named_modules())
    one_by_one: set[fx.Node] = set()  # flattened 1x1 maps, kept as (N, C, 1, 1)

    def add(name: str, module: nn.Module, arg: fx.Node) -> fx.Node:
        root.add_module(name, module)
        return graph.call_module(name, (arg,))

    for node in traced.graph.nodes:
        if node.op == "call_module" and node.target in qmodel.quantizers:
            name = node.target
            safe = name.replace(".", "_")
            source = modules[name]
            quantizer = qmodel.quantizers[name]
            bits, signed = quantizer.act_bits, quantizer.act_signed
            act_type = _activation_type(bits, signed, name)
            act_scale = qmodel.integer_activation_scale(name)
            values, w_scale = qmodel.integer_weights(name)
            spatial = isinstance(source, nn.Conv2d) or node.args[0] in one_by_one
            c_in = source.in_channels if isinstance(source, nn.Conv2d) else source.in_features
            c_out = len(w_scale)

            max_level = max(abs(v) for v in activation_levels(bits, signed))
            weight_bits = max(2, int(quantizer.weight_bits.max()))
            row_bound = values.flatten(1).abs().sum(1).double() * max_level  # largest |accumulator| per kernel
            acc_bits = _integer_bits(float(row_bound.max()))
            scale = w_scale.double() * act_scale
            bias = source.bias.detach().double() if source.bias is not None else torch.zeros(c_out, dtype=torch.float64)
            result_bound = float((row_bound * scale.abs() + bias.abs()).max())
            result_integer = _integer_bits(result_bound)

            integer: nn.Conv2d | nn.Linear
            if isinstance(source, nn.Conv2d):
                integer = nn.Conv2d(  # torch types _ConvNd's sizes as tuple[int, ...]; a Conv2d's are pairs
                    c_in, c_out, source.kernel_size, source.stride, source.padding, source.dilation, source.groups, bias=False  # type: ignore[arg-type]
                )
            elif spatial:  # a Linear on a flattened 1x1 map runs as a 1x1 convolution on the map
                integer = nn.Conv2d(c_in, c_out, 1, bias=False)
            else:
                integer = nn.Linear(c_in, c_out, bias=False)
            with torch.no_grad():
                integer.weight.copy_(values.to(torch.float32).reshape(integer.weight.shape))

            quant = add(f"{safe}_quant", _batchnorm(c_in, spatial, torch.full((c_in,), 1.0 / act_scale), torch.zeros(c_in)), env[node.args[0]])
            acc = add(f"{safe}_int", integer, quant)
            env[node] = add(f"{safe}_scale", _batchnorm(c_out, spatial, scale.float(), bias.float()), acc)
            if spatial and not isinstance(source, nn.Conv2d):
                one_by_one.add(node)
            precisions[safe] = LayerPrecision(
                name=name,
                input_scale=_fixed_with_significant_bits(torch.tensor([1.0 / act_scale]), SCALE_SIGNIFICANT_BITS),
                input=act_type,
                weight=f"ap_int<{weight_bits}>",
                accumulator=f"ap_int<{acc_bits}>",
                scale=_fixed_with_significant_bits(scale, SCALE_SIGNIFICANT_BITS),
                bias=_fixed_with_significant_bits(bias, SCALE_SIGNIFICANT_BITS),
                result=f"ap_fixed<{result_integer + RESULT_FRACTION_BITS},{result_integer},AP_RND>",
            )
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            raise HlsExportError(f"layer {node.target!r} is not quantized; the hls4ml export needs every conv/linear layer quantized")
        elif _is_global_average_pool(node, modules):
            height, width = node.args[0].meta["tensor_meta"].shape[-2:]
            env[node] = add(f"global_pool_{len(env)}", nn.AvgPool2d((height, width)), env[node.args[0]])
        elif _is_flatten(node, modules) and tuple(node.args[0].meta["tensor_meta"].shape[-2:]) == (1, 1):
            # hls4ml's io_stream flatten (a transpose and a reshape) mangles the stream; a 1x1 map needs neither
            env[node] = env[node.args[0]]
            one_by_one.add(node)
        elif _is_flatten(node, modules):
            shape = tuple(node.args[0].meta["tensor_meta"].shape)
            raise HlsExportError(
                f"the model flattens a {shape[1:]} map; hls4ml's streamed flatten is only reproducible for 1x1 maps "
                "(pool to 1x1 before the classifier)"
            )
        elif node.op == "get_attr":
            raise HlsExportError(f"the model reads tensor {node.target!r} directly; the hls4ml export supports layers only")
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
            if node.op == "call_module":
                name = node.target.replace(".", "_")
                root.add_module(name, modules[node.target])
                env[node].target = name
            if any(arg in one_by_one for arg in node.all_input_nodes):
                one_by_one.add(node)  # elementwise ops (ReLU, dropout) keep the 1x1 map
    for new in graph.nodes:
        new.type = None  # string annotations (``from __future__ import annotations``) break pickling, which hls4ml does
    return fx.GraphModule(root, graph), precisions


def _is_global_average_pool(node: "fx.Node", modules: dict[str, Any]) -> bool:
    import torch.nn.functional as F
    from torch import nn

    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
    elif node.op == "call_module" and isinstance(modules[str(node.target)], nn.AdaptiveAvgPool2d):  # target: a name
        size = modules[str(node.target)].output_size
    else:
        return False
    return size in (1, (1, 1), [1, 1])


@dataclass(frozen=True)
class HlsExport:
    """An exported hls4ml project: the hls4ml model (``compile()``/``predict()`` run its C simulation), the
    integer-domain torch model it was converted from, and the precisions chosen per quantized layer."""

    hls_model: Any
    integer_model: "fx.GraphModule"
    precisions: dict[str, LayerPrecision]
    output_dir: Path


class CsimCheck(NamedTuple):
    """How the compiled C simulation compares with the quantized torch model on some images."""

    images: int
    within_close: float  # fraction of logits within CSIM_CLOSE of torch's
    top1_agreement: float  # fraction of images with the same top-1 class
    max_abs_diff: float
    logit_range: float

    def describe(self) -> str:
        return (f"C simulation vs torch on {self.images} images: {self.within_close:.2%} of logits within {CSIM_CLOSE:g}, "
                f"top-1 agreement {self.top1_agreement:.2%}, max |diff| {self.max_abs_diff:.3g} (logit range {self.logit_range:.3g})")


def check_csim(export: HlsExport, qmodel: "QuantizedModel", x: "torch.Tensor") -> CsimCheck:
    """Compile the project's C simulation with g++ (hls4ml ``compile()``) and compare its outputs on ``x`` with the
    quantized torch model's, under the plan it was exported for (``qmodel`` must still hold that plan)."""
    import numpy as np
    import torch

    try:
        export.hls_model.compile()
    except Exception as exc:  # hls4ml raises bare Exceptions when g++ fails
        raise HlsExportError(f"the C simulation of {export.output_dir} does not build: {exc}") from None
    with torch.no_grad():
        expected = qmodel(x).numpy()
    got = np.asarray(export.hls_model.predict(np.ascontiguousarray(x.numpy(), dtype=np.float32))).reshape(expected.shape)
    difference = np.abs(got - expected)
    return CsimCheck(
        len(x), float((difference <= CSIM_CLOSE).mean()), float((got.argmax(1) == expected.argmax(1)).mean()),
        float(difference.max()), float(np.ptp(expected)),
    )


def hls4ml_config(integer_model: "fx.GraphModule", precisions: dict[str, LayerPrecision], input_shape: tuple[int, ...]) -> dict:
    """hls4ml's per-layer configuration with the precisions of ``precisions`` (module docstring)."""
    import hls4ml

    config = hls4ml.utils.config_from_pytorch_model(
        integer_model, input_shape, granularity="name", default_precision=DEFAULT_PRECISION, backend=HLS_BACKEND
    )
    layers = config["LayerName"]
    for prefix, p in precisions.items():
        layers[f"{prefix}_quant"]["Precision"] = {"scale": p.input_scale, "bias": "ap_fixed<2,1>", "result": p.input}
        layers[f"{prefix}_int"]["Precision"] = {"weight": p.weight, "bias": "ap_int<2>", "accum": p.accumulator, "result": p.accumulator}
        layers[f"{prefix}_scale"]["Precision"] = {"scale": p.scale, "bias": p.bias, "result": p.result}
    for node in integer_model.graph.nodes:
        if node.op == "placeholder":
            layers[node.name]["Precision"]["result"] = INPUT_PRECISION
    return config


def check_hls4ml_exportable(qmodel: "QuantizedModel | OnnxQuantizedModel") -> "QuantizedModel":
    """``qmodel`` if hls4ml can convert it; an ONNX graph (``quant.onnx_quant``) has no torch module: refused."""
    from autoq.host.quant.quantizer import QuantizedModel

    if not isinstance(qmodel, QuantizedModel):
        raise AutoQError(f"hls4ml export needs a torch model; {qmodel.network.name!r} is an ONNX graph "
                         "(give it as a .pt state dict with --arch)")
    return qmodel


def export_hls4ml(qmodel: "QuantizedModel | OnnxQuantizedModel", plan: QuantPlan, output_dir: str | Path, *, part: str = PYNQ_Z1_PART) -> HlsExport:
    """Apply ``plan`` to ``qmodel`` and write an hls4ml project for it into ``output_dir`` (not compiled: call
    ``result.hls_model.compile()`` for the C simulation, or run the vendor tools on the project)."""
    import contextlib
    import io
    import json

    import torch

    qmodel = check_hls4ml_exportable(qmodel)
    qmodel.apply(plan)
    output = Path(output_dir)
    example = torch.zeros((1, *qmodel.network.input_shape))
    integer_model, precisions = integer_domain_model(qmodel, example)
    log = io.StringIO()
    try:
        import hls4ml

        with contextlib.redirect_stdout(log):
            config = hls4ml_config(integer_model, precisions, qmodel.network.input_shape)
            hls_model = hls4ml.converters.convert_from_pytorch_model(
                integer_model, hls_config=config, output_dir=str(output), project_name=PROJECT_NAME,
                backend=HLS_BACKEND, io_type=IO_TYPE, part=part,
            )
            hls_model.write()
    except HlsExportError:
        raise
    except Exception as exc:  # hls4ml reports unsupported graphs with bare Exceptions
        raise HlsExportError(f"hls4ml could not convert the model: {exc}\n{log.getvalue()[-2000:]}") from exc
    from autoq.common.fileio import atomic_write_text

    atomic_write_text(
        output / "autoq_precisions.json",
        json.dumps(
            {"plan_hash": plan.hash, "rule": "per layer: the widest kernel's bits (see autoq.host.export.hls4ml_export)",
             "layers": {p.name: asdict(p) for p in precisions.values()}},
            indent=1,
        ) + "\n",
    )
    return HlsExport(hls_model, integer_model, precisions, output)


def _is_flatten(node: "fx.Node", modules: dict[str, Any]) -> bool:
    import torch
    from torch import nn

    if node.op == "call_function":
        return node.target is torch.flatten
    if node.op == "call_method":
        return node.target == "flatten"
    return node.op == "call_module" and isinstance(modules[str(node.target)], nn.Flatten)  # target: a module name
