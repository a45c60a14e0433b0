"""``NetworkSpec`` of a torch model, taken from one traced forward pass.

Forward hooks on every ``nn.Conv2d`` and ``nn.Linear`` record the layers in execution order, named by their
qualified module name (``layer1.0.conv1``), with input/output sizes read from the tensors the hooks see.
The model may live on the ``meta`` device: only shapes are needed, so tracing a big model costs no arithmetic.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from autoq.common.errors import SpecError
from autoq.common.network import LayerSpec, NetworkSpec, conv_kind

# Weight layers the spec cannot describe: tracing past them would silently drop their cost.
UNSUPPORTED_LAYERS = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``input_shape`` as a (C, H, W) tuple of positive ints, or a SpecError naming what is wrong."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise SpecError(f"input shape must be three positive ints (C, H, W), got {input_shape!r}")
    return shape


def _hw(values: Sequence[int]) -> tuple[int, int]:
    """The (height, width) pair of a 2-D conv's sizes (torch types them as tuples of any length)."""
    return values[0], values[1]


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    """Leading (top, left) zero padding; torch's 'same' pads any odd remainder at the end, as ONNX export does."""
    padding = module.padding
    if padding == "valid":
        return (0, 0)
    if isinstance(padding, str):  # "same": torch accepts no other string
        return _hw([d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size)])
    return _hw(padding)


def _layer(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerSpec:
    if isinstance(module, nn.Conv2d):
        kind = conv_kind(module.in_channels, module.groups)
        return LayerSpec(name, kind, module.in_channels, module.out_channels, _hw(module.kernel_size), _hw(module.stride),
                         _conv_padding(module), module.groups, _hw(x.shape[-2:]), _hw(y.shape[-2:]))
    assert isinstance(module, nn.Linear)  # only Conv2d and Linear layers are traced
    # A linear layer applied at several positions (input (B, ..., F)) runs as a 1x1 conv over them.
    positions = math.prod(x.shape[1:-1]) if x.dim() > 2 else 1
    return LayerSpec(name, "linear", module.in_features, module.out_features,
                     in_hw=(positions, 1), out_hw=(positions, 1))


def _example_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros on the model's device, in its floating dtype."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return torch.zeros(shape, device=tensor.device, dtype=tensor.dtype)
    return torch.zeros(shape)


def spec_from_torch(model: nn.Module, input_shape: Sequence[int], name: str, batch: int = 1) -> NetworkSpec:
    """Trace one forward pass of ``model`` (in eval mode, without gradients) on a ``batch`` x ``input_shape`` input."""
    shape = check_input_shape(input_shape)
    if not isinstance(batch, int) or batch < 1:
        raise SpecError(f"batch must be a positive int, got {batch!r}")
    traced: dict[nn.Module, str] = {m: (n or type(m).__name__.lower()) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    unsupported = [f"{n or '<root>'} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, UNSUPPORTED_LAYERS)]
    if unsupported:
        raise SpecError(f"model {name!r} has layers the spec cannot describe (only Conv2d and Linear): {', '.join(unsupported)}")
    if not traced:
        raise SpecError(f"model {name!r} has no Conv2d or Linear layers")

    layers: list[LayerSpec] = []
    calls: dict[str, int] = dict.fromkeys(traced.values(), 0)

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        layer_name = traced[module]
        calls[layer_name] += 1
        if calls[layer_name] == 1:
            x = args[0] if args else next(iter(kwargs.values()))
            layers.append(_layer(layer_name, module, x, output))

    handles = [module.register_forward_hook(record, with_kwargs=True) for module in traced]
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(_example_input(model, (batch, *shape)))
    except SpecError:
        raise
    except Exception as exc:  # the model rejected the input: report it as a spec problem, not a crash
        raise SpecError(f"forward pass of model {name!r} on an input of shape {(batch, *shape)} failed: "
                        f"{type(exc).__name__}: {exc}") from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    repeated = [f"{n} ({c} calls)" for n, c in calls.items() if c > 1]
    if repeated:
        raise SpecError(f"model {name!r}: layers called more than once per forward pass (shared weights "
                        f"are not supported): {', '.join(repeated)}")
    unused = [n for n, c in calls.items() if c == 0]
    if unused:
        raise SpecError(f"model {name!r}: layers never called in the forward pass: {', '.join(unused)}")
    return NetworkSpec(name, tuple(layers), shape)
