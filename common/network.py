"""Network shape model: one ``LayerSpec`` per conv/linear layer, in execution order.

A layer runs on the overlay as ``groups`` independent matrix products
``(M x K) @ (K x N)`` with ``M = c_out/groups`` (output channels per group),
``K = c_in/groups * kh * kw`` and ``N = batch * out_h * out_w``.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, NamedTuple

from .errors import SpecError

LayerKind = Literal["conv", "depthwise", "linear"]
LAYER_KINDS: tuple[str, ...] = ("conv", "depthwise", "linear")


class GemmShape(NamedTuple):
    """The matrix product one group of a layer runs: (M x K) @ (K x N)."""

    groups: int
    m: int
    k: int
    n: int


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    try:
        a, b = value
        return (int(a), int(b))
    except (TypeError, ValueError):
        raise SpecError(f"{what} must be an int or a pair of ints, got {value!r}") from None


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
        for attr in ("kernel", "stride", "padding", "in_hw", "out_hw"):
            object.__setattr__(self, attr, _pair(getattr(self, attr), f"layer {self.name!r}: {attr}"))
        if not self.name:
            raise SpecError("layer name must not be empty")
        if self.kind not in LAYER_KINDS:
            raise SpecError(f"layer {self.name!r}: kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        for attr in ("c_in", "c_out", "groups"):
            if not isinstance(getattr(self, attr), int) or getattr(self, attr) < 1:
                raise SpecError(f"layer {self.name!r}: {attr} must be a positive int, got {getattr(self, attr)!r}")
        if self.c_in % self.groups or self.c_out % self.groups:
            raise SpecError(
                f"layer {self.name!r}: groups={self.groups} must divide c_in={self.c_in} and c_out={self.c_out}"
            )
        if self.kind == "depthwise" and not (self.groups == self.c_in and self.groups > 1):
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
        try:
            return cls(**data)
        except TypeError as exc:
            raise SpecError(f"bad layer description {data!r}: {exc}") from None


@dataclass(frozen=True)
class NetworkSpec:
    """Ordered layers of a network plus its input shape (C, H, W); ``hash`` identifies the structure."""

    name: str
    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, int, int]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
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
        try:
            spec = cls(data["name"], tuple(LayerSpec.from_dict(l) for l in data["layers"]), tuple(data["input_shape"]))
        except KeyError as exc:
            raise SpecError(f"network description lacks field {exc}") from None
        if "hash" in data and data["hash"] != spec.hash:
            raise SpecError(f"network {spec.name!r}: stored hash {data['hash']} does not match its layers ({spec.hash})")
        return spec

