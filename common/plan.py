"""Kernel-wise quantization plans: per layer, one weight bit-width per output channel and one activation bit-width.

Validation happens at the boundaries, once: a ``LayerPlan`` checks its bit-widths when it is built, and
``QuantPlan.check(network)`` checks the fit to a network the first time it is asked for that network (a plan
remembers the network it fits, so the backends, quantizer and results that check again at their own boundary cost
a comparison, not a second validation).

A plan's ``hash`` is the SHA-256 of its JSON body (``[[name, act_bits, [weight_bits...]], ...]``, compact). It is
built from the plan's weight bits as one byte per kernel (``bits_bytes``, which the cost model reads too): bit-widths
are single digits (``MAX_BITS`` < 10), so one numpy pass writes every ``digit,`` pair of the body. The rest of the
body (names, brackets, where each layer's digits go) is kept per network, for the plans that fit it.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import PlanError
from .fileio import atomic_write_text, read_text
from .network import NetworkSpec

MIN_BITS = 1
MAX_BITS = 8
_BIT_WIDTHS = bytes(range(MIN_BITS, MAX_BITS + 1))


def _check_bits(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{what} must be an integer, got {value!r}")
    if not MIN_BITS <= value <= MAX_BITS:
        raise PlanError(f"{what} = {value} is out of range [{MIN_BITS}, {MAX_BITS}]")
    return value


_ACT_BITS = tuple(b",%d,[" % bits for bits in range(MAX_BITS + 1))  # a hash body's text after a layer's name
_HashLayout = tuple[list[bytes], list[slice]]
_HASH_LAYOUTS: dict[str, _HashLayout] = {}  # see _hash_layout
_MAX_HASH_LAYOUTS = 64  # networks


@functools.lru_cache(maxsize=4096)
def _json_string(name: str) -> bytes:
    return json.dumps(name).encode()


def _hash_layout(layers: Sequence[LayerPlan], network_hash: str | None) -> _HashLayout:
    """The hash body of a plan of ``layers`` in pieces, with empty places for what differs between plans: ``[``, per
    layer ``[name`` (``,[name`` after the first), a place for its ``,act_bits,[``, one for its weight digits, and
    ``]]``, then ``]``; and per layer the slice of the plan's ``digit,`` pairs that holds its digits. Kept by
    ``network_hash``, the structure hash of the network the plan fits (``None``: none known), as the plans that fit a
    network share its layers' names and kernel counts."""
    layout = _HASH_LAYOUTS.get(network_hash) if network_hash else None
    if layout is None:
        parts, digits, start, open_entry = [b"["], [], 0, b"["
        for l in layers:
            stop = start + 2 * len(l.weight_bits)
            parts += (open_entry + _json_string(l.name), b"", b"", b"]]")
            digits.append(slice(start, stop - 1))  # less the comma after the layer's last digit
            start, open_entry = stop, b",["
        parts.append(b"]")
        layout = parts, digits
        if network_hash:
            if len(_HASH_LAYOUTS) >= _MAX_HASH_LAYOUTS:
                _HASH_LAYOUTS.clear()
            _HASH_LAYOUTS[network_hash] = layout
    return layout


@dataclass(frozen=True, init=False)
class LayerPlan:
    """Bit-widths of one layer: ``weight_bits[c]`` for output channel ``c``; ``act_bits`` for its input activations.

    ``weight_bits`` are checked in one pass as bytes: any integers ``bytes()`` takes (numpy integers too, and bools
    as 0 and 1, which ``QuantPlan.from_dict`` refuses in files); ``act_bits`` must be an ``int``.
    """

    name: str
    weight_bits: tuple[int, ...]
    act_bits: int

    def __init__(self, name: str, weight_bits: tuple[int, ...], act_bits: int) -> None:
        bits = weight_bits if type(weight_bits) is tuple else tuple(weight_bits)
        if not bits:
            raise PlanError(f"layer {name!r}: weight_bits is empty")
        try:  # integers (what bytes() takes, one byte each) within [MIN_BITS, MAX_BITS]; else say which is not
            packed = bytes(bytearray(bits))  # bytearray reads a tuple of ints faster than bytes does
        except (TypeError, ValueError):
            packed = b""  # bits is not empty: the loop below names the bad value
        if not packed or packed.translate(None, _BIT_WIDTHS):
            for c, value in enumerate(bits):
                _check_bits(value, f"layer {name!r}: weight_bits[{c}]")
        if type(act_bits) is not int or not MIN_BITS <= act_bits <= MAX_BITS:
            _check_bits(act_bits, f"layer {name!r}: act_bits")
        fields = self.__dict__  # frozen: the fields are written once, here (faster than object.__setattr__)
        fields["name"], fields["weight_bits"], fields["act_bits"], fields["bits_bytes"] = name, bits, act_bits, packed

    @property
    def mean_weight_bits(self) -> float:
        return sum(self.weight_bits) / len(self.weight_bits)

    # a memo, not a field: not compared, hashed or pickled
    @functools.cached_property
    def bits_bytes(self) -> bytes:
        """``weight_bits`` as one byte per kernel."""
        return bytes(self.weight_bits)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "bits_bytes"}


@dataclass(frozen=True)
class QuantPlan:
    """A validated plan for every layer of one network, in the network's order."""

    layers: tuple[LayerPlan, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise PlanError(f"plan names a layer twice: {sorted(n for n in set(names) if names.count(n) > 1)}")

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def for_network(cls, network: NetworkSpec, layers: Iterable[LayerPlan]) -> "QuantPlan":
        plan = cls(tuple(layers))
        plan.check(network)
        return plan

    @classmethod
    def uniform(cls, network: NetworkSpec, weight_bits: int, act_bits: int) -> "QuantPlan":
        return cls.layerwise(network, [(weight_bits, act_bits)] * len(network))

    @classmethod
    def layerwise(cls, network: NetworkSpec, bits: Sequence[tuple[int, int]]) -> "QuantPlan":
        """One (weight_bits, act_bits) pair per layer, applied to every kernel of the layer."""
        if len(bits) != len(network):
            raise PlanError(f"layer-wise plan has {len(bits)} entries but network {network.name!r} has {len(network)} layers")
        return cls.for_network(
            network, (LayerPlan(l.name, (w,) * l.c_out, a) for l, (w, a) in zip(network.layers, bits))
        )

    def check(self, network: NetworkSpec) -> None:
        """Raise ``PlanError`` naming the first mismatch between this plan and ``network``; a plan that fitted
        ``network`` (by structure hash) once is not validated again."""
        if self.__dict__.get("_fits") == network.hash:
            return
        plan_names = [layer.name for layer in self.layers]
        if plan_names != list(network.names):
            missing = [n for n in network.names if n not in plan_names]
            unknown = [n for n in plan_names if n not in network.names]
            detail = []
            if missing:
                detail.append(f"missing layers {missing[:5]}")
            if unknown:
                detail.append(f"unknown layers {unknown[:5]}")
            if not detail:
                detail.append("layers are in a different order")
            raise PlanError(f"plan does not fit network {network.name!r}: " + "; ".join(detail))
        for lp, spec in zip(self.layers, network.layers):
            if len(lp.weight_bits) != spec.c_out:
                raise PlanError(
                    f"layer {spec.name!r}: plan has {len(lp.weight_bits)} kernel bit-widths but the layer has {spec.c_out} output channels"
                )
        object.__setattr__(self, "_fits", network.hash)  # a memo, not a field: not compared, hashed or pickled

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fits", "bits_bytes")}

    # -- access -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: int | str) -> LayerPlan:
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise PlanError(f"plan has no layer {key!r}")
        return self.layers[key]

    def replace(self, name: str, layer: LayerPlan) -> "QuantPlan":
        self[name]
        return QuantPlan(tuple(layer if l.name == name else l for l in self.layers))

    # -- summary figures ----------------------------------------------------------------------------------------
    def size_bits(self, network: NetworkSpec) -> int:
        """Model size in bits: every kernel's weights at that kernel's bit-width."""
        self.check(network)
        return sum(spec.kernel_size * sum(lp.weight_bits) for lp, spec in zip(self.layers, network.layers))

    def average_weight_bits(self, network: NetworkSpec) -> float:
        """Average weight bit-width, weighted by weight count."""
        return self.size_bits(network) / network.total_weights

    def average_act_bits(self) -> float:
        return sum(l.act_bits for l in self.layers) / len(self.layers)

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "autoq-plan/1",
            "hash": self.hash,
            "layers": [{"name": l.name, "act_bits": l.act_bits, "weight_bits": list(l.bits_bytes)} for l in self.layers],
        }

    @functools.cached_property
    def bits_bytes(self) -> bytes:
        """Every kernel's weight bit-width, layer after layer, one byte each."""
        return b"".join([l.bits_bytes for l in self.layers])

    @functools.cached_property
    def hash(self) -> str:
        """First 16 hex digits of the SHA-256 of ``json.dumps([[name, act_bits, list(weight_bits)], ...],
        separators=(",", ":"))``."""
        template, digits = _hash_layout(self.layers, self.__dict__.get("_fits"))
        parts: list[bytes | memoryview] = list(template)
        parts[2::4] = [_ACT_BITS[l.act_bits] for l in self.layers]
        pairs = np.add(np.frombuffer(self.bits_bytes, np.uint8), ord(",") << 8 | ord("0"), dtype="<u2").data.cast("B")
        parts[3::4] = map(pairs.__getitem__, digits)
        return hashlib.sha256(b"".join(parts)).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantPlan":
        if not isinstance(data, Mapping) or not isinstance(data.get("layers"), list):
            raise PlanError("plan JSON must be an object with a 'layers' list")
        layers = []
        for i, entry in enumerate(data["layers"]):
            if not isinstance(entry, Mapping) or not {"name", "act_bits", "weight_bits"} <= entry.keys():
                raise PlanError(f"plan layer #{i} must have 'name', 'act_bits' and 'weight_bits', got {entry!r}")
            if not isinstance(entry["weight_bits"], list):
                raise PlanError(f"plan layer {entry['name']!r}: 'weight_bits' must be a list")
            for c, value in enumerate(entry["weight_bits"]):
                if type(value) is not int:  # a JSON true/false, a number with a fraction: say so (LayerPlan takes bools)
                    _check_bits(value, f"layer {entry['name']!r}: weight_bits[{c}]")
            layers.append(LayerPlan(str(entry["name"]), tuple(entry["weight_bits"]), entry["act_bits"]))
        plan = cls(tuple(layers))
        if "hash" in data and data["hash"] != plan.hash:
            raise PlanError(f"plan hash {data['hash']!r} does not match its contents ({plan.hash}): the file was edited or corrupted")
        return plan

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "QuantPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "QuantPlan":
        text = read_text(path, PlanError, "plan")
        try:
            return cls.from_json(text)
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from None
