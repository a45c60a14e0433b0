"""Network shape model: one ``LayerSpec`` per conv/linear layer, in execution order.

A layer runs on the overlay as ``groups`` independent matrix products
``(M x K) @ (K x N)`` with ``M = c_out/groups`` (output channels per group),
``K = c_in/groups * kh * kw`` and ``N = batch * out_h * out_w``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import numbers
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, NamedTuple

from .errors import SpecError

LayerKind = Literal["conv", "depthwise", "linear"]
LAYER_KINDS: tuple[str, ...] = ("conv", "depthwise", "linear")


def conv_kind(c_in: int, groups: int) -> LayerKind:
    """The kind of a convolution: ``depthwise`` when every input channel is its own group (``groups == c_in > 1``,
    any channel multiplier), else ``conv``. The one rule every importer and decoder uses."""
    return "depthwise" if groups == c_in > 1 else "conv"


class GemmShape(NamedTuple):
    """The matrix product one group of a layer runs: (M x K) @ (K x N)."""

    groups: int
    m: int
    k: int
    n: int


def _is_int(value: Any) -> bool:
    """An integer that is not a bool (numpy integers count; floats and strings do not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_pair(value: Any, what: str) -> tuple[int, int]:
    """``value`` (an int or two ints) as a pair of ints; raises ``SpecError`` naming ``what`` otherwise."""
    if _is_int(value):
        return (int(value), int(value))
    if not isinstance(value, (str, bytes, Mapping)) and isinstance(value, Iterable):
        items = tuple(value)
        if len(items) == 2 and all(_is_int(v) for v in items):
            return (int(items[0]), int(items[1]))
    raise SpecError(f"{what} must be an int or a pair of ints, got {reprlib.repr(value)}")


def _input_shape(value: Any, what: str) -> tuple[int, int, int]:
    """Three positive ints (C, H, W)."""
    if not isinstance(value, (str, bytes, Mapping)) and isinstance(value, Iterable):
        items = tuple(value)
        if len(items) == 3 and all(_is_int(v) and v >= 1 for v in items):
            return tuple(int(v) for v in items)  # type: ignore[return-value]
    raise SpecError(f"{what} must be three positive ints (C, H, W), got {reprlib.repr(value)}")


@dataclass(frozen=True)
class LayerSpec:
    """Shape of one conv or linear layer (batch excluded). Linear layers are 1x1 convs on a 1x1 map."""

    name: str
    kind: LayerKind
    c_in: int
    c_out: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"layer name must be a non-empty string, got {reprlib.repr(self.name)}")
        for attr in ("kernel", "stride", "padding", "in_hw", "out_hw"):
            object.__setattr__(self, attr, as_pair(getattr(self, attr), f"layer {self.name!r}: {attr}"))
        if self.kind not in LAYER_KINDS:
            raise SpecError(f"layer {self.name!r}: kind must be one of {LAYER_KINDS}, got {reprlib.repr(self.kind)}")
        for attr in ("c_in", "c_out", "groups"):
            if not isinstance(getattr(self, attr), int) or isinstance(getattr(self, attr), bool) or getattr(self, attr) < 1:
                raise SpecError(f"layer {self.name!r}: {attr} must be a positive int, got {reprlib.repr(getattr(self, attr))}")
        if self.c_in % self.groups or self.c_out % self.groups:
            raise SpecError(
                f"layer {self.name!r}: groups={self.groups} must divide c_in={self.c_in} and c_out={self.c_out}"
            )
        if self.kind == "depthwise" and conv_kind(self.c_in, self.groups) != "depthwise":
            raise SpecError(f"layer {self.name!r}: depthwise needs groups == c_in > 1")
        if min(*self.kernel, *self.stride, *self.in_hw, *self.out_hw) < 1 or min(self.padding) < 0:
            raise SpecError(f"layer {self.name!r}: kernel/stride/sizes must be >= 1 and padding >= 0")

    @property
    def weights(self) -> int:
        """Number of weights (biases excluded)."""
        return self.c_out * (self.c_in // self.groups) * self.kernel[0] * self.kernel[1]

    @property
    def kernel_size(self) -> int:
        """Weights in one output-channel kernel: c_in/groups * kh * kw."""
        return (self.c_in // self.groups) * self.kernel[0] * self.kernel[1]

    def macs(self, batch: int = 1) -> int:
        """Multiply-accumulates for ``batch`` inputs."""
        return self.weights * self.out_hw[0] * self.out_hw[1] * batch

    def gemm(self, batch: int = 1) -> GemmShape:
        return GemmShape(self.groups, self.c_out // self.groups, self.kernel_size, batch * self.out_hw[0] * self.out_hw[1])

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"a layer description must be an object, got {reprlib.repr(data)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise SpecError(f"bad layer description {reprlib.repr(data)}: {exc}") from None


@dataclass(frozen=True)
class NetworkSpec:
    """Ordered layers of a network plus its input shape (C, H, W); ``hash`` identifies the structure."""

    name: str
    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, int, int]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise SpecError(f"network name must be a string, got {reprlib.repr(self.name)}")
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input_shape", _input_shape(self.input_shape, f"network {self.name!r}: input_shape"))
        if not self.layers:
            raise SpecError(f"network {self.name!r} has no conv or linear layers")
        index: dict[str, int] = {}
        for i, layer in enumerate(self.layers):
            if layer.name in index:
                raise SpecError(f"network {self.name!r}: duplicate layer name {layer.name!r}")
            index[layer.name] = i
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerSpec]:
        return iter(self.layers)

    def __getitem__(self, key: int | str) -> LayerSpec:
        if isinstance(key, str):
            if key not in self._index:
                raise SpecError(f"network {self.name!r} has no layer {key!r}")
            return self.layers[self._index[key]]
        return self.layers[key]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def index(self, name: str) -> int:
        self[name]
        return self._index[name]

    @property
    def total_weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    def total_macs(self, batch: int = 1) -> int:
        return sum(layer.macs(batch) for layer in self.layers)

    @functools.cached_property
    def hash(self) -> str:
        """Stable hash of the structure (layer names and shapes, input shape), not of the display name."""
        body = json.dumps({"input": list(self.input_shape), "layers": [l.to_dict() for l in self.layers]}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "hash": self.hash,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetworkSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"a network description must be an object, got {type(data).__name__}")
        if "layers" in data and not isinstance(data["layers"], list):
            raise SpecError(f"network description: 'layers' must be a list, got {type(data['layers']).__name__}")
        try:
            spec = cls(data["name"], tuple(LayerSpec.from_dict(l) for l in data["layers"]), data["input_shape"])
        except KeyError as exc:
            raise SpecError(f"network description lacks field {exc}") from None
        if "hash" in data and data["hash"] != spec.hash:
            raise SpecError(f"network {spec.name!r}: stored hash {data['hash']} does not match its layers ({spec.hash})")
        return spec

