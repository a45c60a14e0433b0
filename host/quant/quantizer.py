"""Kernel-wise fake quantization of a torch model, driven by a ``QuantPlan``.

Each quantized ``Conv2d``/``Linear`` (matched to a ``NetworkSpec`` layer by qualified module name) gets a
``LayerQuantizer``, registered in place as a ``torch.nn.utils.parametrize`` parametrization of its weight and as a
forward pre-hook on its input, so the modules keep their identity and changing the plan only writes tensors.

Weights: symmetric linear, per output channel (kernel). A ``b``-bit kernel (``b >= 2``) takes integer levels in
``[-(2^(b-1)-1), 2^(b-1)-1]`` times a per-kernel scale whose clip (``scale * (2^(b-1)-1)``) minimises the
quantization MSE over a grid of clip ratios (all kernels searched at once). A 1-bit kernel is ``sign(w) * mean|w|``
(bipolar levels +-1, the MSE-optimal scale).

Activations (the input of each quantized layer): one scale per layer and bit-width, calibrated on data by the same
MSE search. Inputs that are never negative in the calibration data (ReLU outputs) are quantized unsigned to
``[0, 2^b-1]``; inputs with negative values (the raw image, linear bottlenecks) signed to ``[-(2^(b-1)-1),
2^(b-1)-1]`` (bipolar +-1 at 1 bit).

Training goes through a straight-through estimator (STE): the forward pass sees quantized values, the gradient
reaches the float weights unchanged and the activations where they are inside the clip range.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Iterator, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autoq.common.errors import AutoQError, SpecError
from autoq.common.network import NetworkSpec
from autoq.common.plan import MAX_BITS, LayerPlan, QuantPlan
from autoq.host.quant.policy import EDGE_POLICIES, KEPT_BITS, EdgePolicy
# Bounds the memory of the vectorised clip search: ratios x kernel rows x kernel size per chunk.
SEARCH_CHUNK_ELEMENTS = 1 << 22


class QuantizerError(AutoQError, RuntimeError):
    """The quantizer was used in a way it cannot serve (uncalibrated, unknown layer, wrapped twice)."""


@dataclass(frozen=True)
class QuantizerConfig:
    """What is quantized and how.

    ``layers``: names of the layers to quantize (``None``: every layer of the network); the others stay float.
    ``first_layer`` / ``last_layer``: ``"plan"`` follows the plan; ``"act8"`` keeps the layer's input activations at
    8 bits (e.g. the raw image) and follows the plan for its weights; ``"keep8"`` keeps weights and input at 8 bits.
    ``clip_ratios``: size of the grid of clip ratios (fractions of the largest magnitude) the MSE search tries.
    ``calibration_values``: activation values kept per layer for the activation clip search (seeded subsample).
    """

    layers: tuple[str, ...] | None = None
    first_layer: EdgePolicy = "plan"
    last_layer: EdgePolicy = "plan"
    clip_ratios: int = 32
    calibration_values: int = 1 << 16
    seed: int = 0

    def __post_init__(self) -> None:
        for edge in ("first_layer", "last_layer"):
            if getattr(self, edge) not in EDGE_POLICIES:
                raise QuantizerError(f"{edge} policy must be one of {EDGE_POLICIES}, got {getattr(self, edge)!r}")
        if self.clip_ratios < 1 or self.calibration_values < 1:
            raise QuantizerError("clip_ratios and calibration_values must be positive")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))


class IntegerWeights(NamedTuple):
    """A layer's weights as integers (int32, the weight's shape) and one float scale per output channel."""

    values: torch.Tensor
    scale: torch.Tensor


def clip_ratio_grid(size: int) -> torch.Tensor:
    """Clip ratios ``1/size, 2/size, ..., 1``: fractions of the largest magnitude the MSE search tries."""
    return torch.arange(1, size + 1, dtype=torch.float32) / size


def weight_levels(bits: torch.Tensor) -> torch.Tensor:
    """Largest integer level of a symmetric ``bits``-bit kernel (0 for 1-bit, which is bipolar)."""
    return (2 ** (bits - 1) - 1).to(torch.float32)


def integer_weight_values(rows: torch.Tensor, scale: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Integer levels (as floats) of weight ``rows`` (C, K) with per-row ``scale`` (C,) and ``bits`` (C,)."""
    levels = weight_levels(bits)[:, None]
    q = torch.round(rows / scale[:, None]).clamp_(-levels, levels)
    one_bit = bits == 1
    if bool(one_bit.any()):
        q = torch.where(one_bit[:, None], torch.where(rows >= 0, 1.0, -1.0), q)
    return q


def mse_optimal_weight_scales(rows: torch.Tensor, bits: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """Per-row scale minimising ``||rows - q(rows)||^2``: grid search over clip ratios, mean |w| for 1-bit rows."""
    absmax = rows.abs().amax(1).clamp_min(torch.finfo(rows.dtype).tiny)
    levels = weight_levels(bits).clamp_min(1)
    best = torch.empty_like(absmax)
    chunk = max(1, SEARCH_CHUNK_ELEMENTS // (len(ratios) * rows.shape[1]))
    for start in range(0, rows.shape[0], chunk):
        part, part_levels = rows[start : start + chunk], levels[start : start + chunk, None]
        scales = ratios[:, None] * (absmax[start : start + chunk] / part_levels[:, 0])[None]  # (R, c)
        q = torch.round(part[None] / scales[..., None]).clamp(-part_levels, part_levels) * scales[..., None]
        error = (q - part[None]).square().sum(-1)
        best[start : start + chunk] = scales.gather(0, error.argmin(0)[None])[0]
    return torch.where(bits == 1, rows.abs().mean(1), best)


def activation_levels(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit activation: unsigned ``[0, 2^b-1]``; signed ``[-(2^(b-1)-1), 2^(b-1)-1]``,
    except signed 1-bit, which is bipolar: levels -1 and +1."""
    if signed and bits == 1:
        return -1, 1
    if signed:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


def integer_activation_values(x: torch.Tensor, scale: float, bits: int, signed: bool) -> torch.Tensor:
    """Integer levels (as floats) of activations ``x``; signed 1-bit is bipolar (+-1)."""
    if signed and bits == 1:
        return torch.where(x >= 0, 1.0, -1.0)
    low, high = activation_levels(bits, signed)
    return torch.round(x / scale).clamp_(low, high)


def mse_optimal_activation_scales(values: torch.Tensor, signed: bool, ratios: torch.Tensor) -> torch.Tensor:
    """Scale per bit-width 1..MAX_BITS (index ``bits - 1``) minimising the quantization MSE of ``values`` (1-D)."""
    absmax = float(values.abs().max().clamp_min(torch.finfo(values.dtype).tiny))
    table = torch.empty(MAX_BITS)
    for bits in range(1, MAX_BITS + 1):
        if signed and bits == 1:
            table[0] = values.abs().mean().clamp_min(torch.finfo(values.dtype).tiny)
            continue
        low, high = activation_levels(bits, signed)
        scales = ratios * absmax / high
        q = torch.round(values[None] / scales[:, None]).clamp(low, high) * scales[:, None]
        table[bits - 1] = scales[(q - values[None]).square().sum(1).argmin()]
    return table


def kernel_absmax(weight: torch.Tensor) -> np.ndarray:
    """Largest absolute value of each kernel (output channel, axis 0) of ``weight``, as float64."""
    return weight.detach().flatten(1).abs().amax(1).double().numpy()


def effective_plan(plan: QuantPlan, network: NetworkSpec, quantized: Collection[str], config: QuantizerConfig) -> QuantPlan:
    """``plan`` with ``config``'s first/last-layer policies applied and the layers not in ``quantized`` at 8/8."""
    plan.check(network)
    edges = ((0, config.first_layer), (len(network) - 1, config.last_layer))
    layers = []
    for index, layer in enumerate(plan.layers):
        policies = {p for i, p in edges if i == index} if layer.name in quantized else {"keep8"}
        if "keep8" in policies:
            layer = LayerPlan(layer.name, (KEPT_BITS,) * len(layer.weight_bits), KEPT_BITS)
        elif "act8" in policies:
            layer = LayerPlan(layer.name, layer.weight_bits, KEPT_BITS)
        layers.append(layer)
    return QuantPlan(tuple(layers))


class ActivationSampler:
    """A seeded subsample (``config.calibration_values``) of each layer's float inputs over calibration batches;
    ``fit`` gives each layer's ``LayerQuantizer`` its activation scales. Shared by the torch and ONNX paths."""

    def __init__(self, names: Iterable[str], config: QuantizerConfig) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.samples: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def add(self, name: str, x: torch.Tensor) -> None:
        """Keep a subsample of one batch of layer ``name``'s input."""
        values = x.detach().flatten().float()
        keep = self.config.calibration_values
        if values.numel() > keep:
            values = values[torch.randint(values.numel(), (keep,), generator=self.generator)]
        self.samples[name].append(values)

    def fit(self, quantizers: Mapping[str, "LayerQuantizer"]) -> None:
        for name, quantizer in quantizers.items():
            if not self.samples[name]:
                raise QuantizerError(f"calibration saw no input for layer {name!r} (empty data, or the layer is not used)")
            values = torch.cat(self.samples[name])
            if values.numel() > self.config.calibration_values:
                values = values[torch.randperm(values.numel(), generator=self.generator)[: self.config.calibration_values]]
            quantizer.set_activation_calibration(values)


class LayerQuantizer(nn.Module):
    """Quantization state of one layer: the weight parametrization and the input pre-hook.

    ``weight_bits`` (one per output channel) is a buffer the plan writes into. In inference (no gradient) the
    quantized weight is cached until the float weight or the bits change (tracked by tensor version counters).
    """

    # buffers (register_buffer in __init__), declared for the type checker
    weight_bits: torch.Tensor
    act_scales: torch.Tensor
    ratios: torch.Tensor

    def __init__(self, name: str, out_channels: int, clip_ratios: int) -> None:
        super().__init__()
        self.name = name
        self.register_buffer("weight_bits", torch.full((out_channels,), KEPT_BITS, dtype=torch.int64), persistent=False)
        self.register_buffer("act_scales", torch.zeros(MAX_BITS), persistent=False)
        self.register_buffer("ratios", clip_ratio_grid(clip_ratios), persistent=False)
        self.act_bits = KEPT_BITS
        self.act_signed = False
        self.calibrated = False
        self.active = True
        self._scale_table: tuple[tuple[int, int], torch.Tensor] | None = None
        self._cached_weight: tuple[tuple[int, int, int], torch.Tensor] | None = None
        self._training_scale: tuple[int, torch.Tensor] | None = None

    # -- weights --------------------------------------------------------------------------------------------------
    def scale_table(self, weight: torch.Tensor) -> torch.Tensor:
        """(MAX_BITS, c_out) MSE-optimal kernel scales, row ``b - 1`` for ``b`` bits; rows for the bit-widths in use are
        searched when first needed and kept until the weight changes."""
        key = (weight._version, weight.data_ptr())
        if self._scale_table is None or self._scale_table[0] != key:
            self._scale_table = (key, torch.full((MAX_BITS, len(self.weight_bits)), float("nan")))
        table = self._scale_table[1]
        for bits in self.weight_bits.unique().tolist():
            if torch.isnan(table[bits - 1, 0]):
                with torch.no_grad():
                    rows = weight.detach().flatten(1)
                    table[bits - 1] = mse_optimal_weight_scales(rows, torch.full_like(self.weight_bits, bits), self.ratios)
        return table

    def weight_scale(self, weight: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Per-kernel scale at the current bits.

        In inference it is MSE-optimal for the current weight. In ``training`` (the weight changes every step) each
        kernel keeps the scale searched when training started, until the bits change.
        """
        if training and self._training_scale is not None and self._training_scale[0] == self.weight_bits._version:
            return self._training_scale[1]
        scale = self.scale_table(weight).gather(0, (self.weight_bits - 1)[None])[0]
        if training:
            self._training_scale = (self.weight_bits._version, scale)
        return scale

    def integer_weights(self, weight: torch.Tensor) -> IntegerWeights:
        with torch.no_grad():
            scale = self.weight_scale(weight)
            values = integer_weight_values(weight.detach().flatten(1), scale, self.weight_bits)
        return IntegerWeights(values.to(torch.int32).reshape(weight.shape), scale)

    def _fake_quantized(self, weight: torch.Tensor, training: bool) -> torch.Tensor:
        with torch.no_grad():
            scale = self.weight_scale(weight, training)
            values = integer_weight_values(weight.detach().flatten(1), scale, self.weight_bits)
            return values.mul_(scale[:, None]).reshape(weight.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Parametrization: the float weight -> its fake-quantized value (STE when it needs a gradient)."""
        if not self.active:
            return weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return weight + (self._fake_quantized(weight, training=True) - weight).detach()
        key = (weight._version, weight.data_ptr(), self.weight_bits._version)
        if self._cached_weight is None or self._cached_weight[0] != key:
            self._cached_weight = (key, self._fake_quantized(weight, training=False))
        return self._cached_weight[1]

    # -- activations ----------------------------------------------------------------------------------------------
    def set_activation_calibration(self, values: torch.Tensor) -> None:
        """Fit the per-bit-width activation scales to a sample of this layer's float inputs."""
        self.act_signed = bool((values < 0).any())
        self.act_scales.copy_(mse_optimal_activation_scales(values, self.act_signed, self.ratios))
        self.calibrated = True

    @property
    def act_scale(self) -> float:
        return float(self.act_scales[self.act_bits - 1])

    def quantize_input(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        """Forward pre-hook: fake-quantize the layer input (clipped STE when it needs a gradient)."""
        if not self.active:
            return None
        if not self.calibrated:
            raise QuantizerError(f"layer {self.name!r}: activations are not calibrated; call calibrate() first")
        x, scale = args[0], self.act_scale
        with torch.no_grad():
            quantized = integer_activation_values(x, scale, self.act_bits, self.act_signed).mul_(scale)
        if torch.is_grad_enabled() and x.requires_grad:
            low, high = activation_levels(self.act_bits, self.act_signed)
            clipped = x.clamp(low * scale, high * scale)
            quantized = clipped + (quantized - clipped).detach()
        return (quantized, *args[1:])


class QuantizedModel:
    """A torch model whose conv/linear layers follow a ``QuantPlan``; wraps ``model`` in place.

    Until a plan is applied every quantized layer runs at 8/8. Activations must be calibrated (``calibrate``)
    before a quantized forward pass; ``float_mode()`` runs the original float model.
    """

    def __init__(self, model: nn.Module, network: NetworkSpec, config: QuantizerConfig = QuantizerConfig()) -> None:
        self.model = model
        self.network = network
        self.config = config
        names = config.layers if config.layers is not None else network.names
        for name in names:
            network[name]  # raises SpecError naming an unknown layer
        modules = dict(model.named_modules())
        targets: list[tuple[str, int, nn.Module]] = []
        for spec in network:
            if spec.name not in names:
                continue
            module = modules.get(spec.name)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                found = "nothing" if module is None else type(module).__name__
                raise SpecError(f"layer {spec.name!r} of network {network.name!r} is {found} in the model, not Conv2d/Linear")
            if parametrize.is_parametrized(module, "weight"):
                raise QuantizerError(f"layer {spec.name!r} is already quantized or parametrized")
            targets.append((spec.name, spec.c_out, module))
        self.quantizers: dict[str, LayerQuantizer] = {}
        for name, out_channels, module in targets:  # checked first, so a bad model is left untouched
            quantizer = LayerQuantizer(name, out_channels, config.clip_ratios)
            parametrize.register_parametrization(module, "weight", quantizer)
            module.register_forward_pre_hook(quantizer.quantize_input)
            self.quantizers[name] = quantizer
        self.plan = QuantPlan.uniform(network, KEPT_BITS, KEPT_BITS)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

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
        """Switch to ``plan`` (validated against the network): writes bit-width tensors, rebuilds nothing."""
        effective = self.effective_plan(plan)
        for layer in effective.layers:
            quantizer = self.quantizers.get(layer.name)
            if quantizer is not None:
                quantizer.weight_bits.copy_(torch.as_tensor(layer.weight_bits, dtype=torch.int64))
                quantizer.act_bits = layer.act_bits
        self.plan = plan

    def calibrate(self, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]]) -> None:
        """Fit every quantized layer's activation scales on the float model's inputs to it over ``batches``.

        ``batches`` yields input tensors or (input, label, ...) tuples, as a DataLoader does.
        """
        sampler = ActivationSampler(self.quantizers, self.config)
        modules = dict(self.model.named_modules())

        def collector(name: str):
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                sampler.add(name, args[0])

            return hook

        handles = [modules[name].register_forward_pre_hook(collector(name)) for name in self.quantizers]
        try:
            with self.float_mode(), torch.no_grad():
                for batch in batches:
                    self.model(batch if isinstance(batch, torch.Tensor) else batch[0])
        finally:
            for handle in handles:
                handle.remove()
        sampler.fit(self.quantizers)

    def kernel_scales(self) -> dict[str, np.ndarray]:
        """Each quantized layer's largest absolute float weight per kernel (c_out,), float64."""
        return {name: kernel_absmax(self._float_weight(name)) for name in self.quantizers}

    @contextmanager
    def float_mode(self) -> Iterator[None]:
        """Run the float model inside the block (weights and activations unquantized)."""
        previous = {name: q.active for name, q in self.quantizers.items()}
        for quantizer in self.quantizers.values():
            quantizer.active = False
        try:
            yield
        finally:
            for name, quantizer in self.quantizers.items():
                quantizer.active = previous[name]

    # -- integer view (for checking the hardware reference engine) ------------------------------------------------
    def _quantizer(self, name: str) -> LayerQuantizer:
        if name not in self.quantizers:
            self.network[name]
            raise QuantizerError(f"layer {name!r} is not quantized (QuantizerConfig.layers leaves it float)")
        return self.quantizers[name]

    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _float_weight(self, name: str) -> torch.Tensor:
        """Layer ``name``'s float weight, under its quantizing parametrization."""
        layer: Any = self._module(name)  # torch types a module's dynamic children (parametrizations) as Tensor | Module
        return layer.parametrizations.weight.original

    def integer_weights(self, name: str) -> IntegerWeights:
        """Layer ``name``'s weights under the current plan: int32 values (c_out, ...) and per-channel scales (c_out,)."""
        quantizer = self._quantizer(name)
        return quantizer.integer_weights(self._float_weight(name))

    def integer_activation_scale(self, name: str) -> float:
        """Scale of layer ``name``'s quantized input: input = integer level * scale."""
        quantizer = self._quantizer(name)
        if not quantizer.calibrated:
            raise QuantizerError(f"layer {name!r}: activations are not calibrated; call calibrate() first")
        return quantizer.act_scale

    def activation_signed(self, name: str) -> bool:
        """Whether layer ``name``'s input is quantized signed (it had negative values at calibration)."""
        self.integer_activation_scale(name)
        return self._quantizer(name).act_signed

    def integer_activations(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Float input ``x`` of layer ``name`` as int32 levels under the current plan."""
        quantizer = self._quantizer(name)
        scale = self.integer_activation_scale(name)
        return integer_activation_values(x, scale, quantizer.act_bits, quantizer.act_signed).to(torch.int32)
