"""The engine's AXI-Lite register map, derived from the overlay manifest (board side: standard library only).

The layout keeps Vitis HLS's ``s_axilite`` conventions (what pynq's ``DefaultIP`` users expect); the RTL engine's
register slave (``hls/rtl/axi.py``) decodes exactly these offsets, elaborated from this map:

- ``0x00`` control (``ap_start``/``ap_done``/``ap_idle``/``ap_ready``/``auto_restart`` bits), ``0x04`` global
  interrupt enable, ``0x08`` interrupt enable, ``0x0C`` interrupt status;
- then the arguments, each 32-bit one in an 8-byte slot (data word + a reserved word) and each 64-bit one in a
  12-byte slot (low word, high word, reserved word), in this order: the header (``magic``, ``regmap_version``,
  ``command``, ``status``: at fixed offsets, so a driver can identify any build), the rest of the
  hardware-config/ID block, the layer descriptor, the DDR buffer addresses, and the per-stage cycle and stall
  counters.

The ID block and the counters are output registers: they hold what the engine wrote on its last run, so a driver
runs ``command = CMD_IDENTIFY`` once (no DDR traffic) before reading the ID block. There is one version, 2 (v1 was
the retired HLS engine's, whose manifests ``OverlayConfig`` refuses).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterator, Literal, Mapping

from autoq.overlay.manifest import ManifestError, OverlayConfig

REGMAP_VERSION = 2
MAGIC = 0x41514253  # "AQBS": AutoQ bit-serial engine

CMD_IDENTIFY = 0
CMD_RUN = 1


class Status(IntEnum):
    """Values of the ``status`` register after a run."""

    OK = 0
    BAD_COMMAND = 1
    BAD_DESCRIPTOR = 2
    BAD_TABLE = 3
    BUFFER_OVERFLOW = 4


_STATUS_REASONS: dict[int, str] = {
    Status.BAD_COMMAND: "bad command",
    Status.BAD_DESCRIPTOR: "bad layer descriptor",
    Status.BAD_TABLE: "bad tile table",
    Status.BUFFER_OVERFLOW: "a layer operand overflows the on-chip buffers",
}


def rejection_reason(status: int) -> str:
    """Why the engine rejected a run that ended with ``status`` (not ``Status.OK``), for error messages."""
    return _STATUS_REASONS.get(status, f"unknown status {status}")


# Bits of the control register at 0x00, as Vitis HLS lays them out.
AP_START = 1 << 0
AP_DONE = 1 << 1
AP_IDLE = 1 << 2
AP_READY = 1 << 3
AUTO_RESTART = 1 << 7

Access = Literal["ro", "rw", "wo"]
Section = Literal["control", "header", "id", "descriptor", "buffers", "counters"]

ARGS_BASE = 0x10
SLOT_BYTES = {32: 8, 64: 12}


@dataclass(frozen=True)
class Register:
    """One AXI-Lite register. 64-bit registers span two 32-bit words, low word first."""

    name: str
    offset: int
    width: int
    access: Access
    section: Section
    doc: str

    @functools.cached_property
    def word_offsets(self) -> tuple[int, ...]:
        return tuple(self.offset + 4 * i for i in range(self.width // 32))

    def split(self, value: int) -> tuple[int, ...]:
        """The 32-bit words to write for ``value``, in ``word_offsets`` order."""
        if not 0 <= value < 1 << self.width:
            raise ValueError(f"register {self.name}: {value!r} does not fit in {self.width} unsigned bits")
        return tuple((value >> (32 * i)) & 0xFFFFFFFF for i in range(self.width // 32))

    def join(self, words: tuple[int, ...] | list[int]) -> int:
        """The value read back from ``words`` (in ``word_offsets`` order)."""
        if len(words) != self.width // 32:
            raise ValueError(f"register {self.name}: expected {self.width // 32} words, got {len(words)}")
        return sum((w & 0xFFFFFFFF) << (32 * i) for i, w in enumerate(words))


# The block-level registers, at Vitis HLS's fixed offsets.
_CONTROL = (
    Register("control", 0x00, 32, "rw", "control",
             "ap_start (bit 0), ap_done (1, clear on read), ap_idle (2), ap_ready (3), auto_restart (7)"),
    Register("gie", 0x04, 32, "rw", "control", "global interrupt enable (bit 0)"),
    Register("ier", 0x08, 32, "rw", "control", "interrupt enable: ap_done (bit 0), ap_ready (bit 1)"),
    Register("isr", 0x0C, 32, "rw", "control", "interrupt status, toggle on write"),
)
# The arguments, (name, width, access, section, doc) in address order; offsets follow from the slot sizes
# (``RegisterMap.from_overlay``). ``cycles_*`` are per-stage active cycles and ``cycles_total`` a real cycle count;
# each stage's active plus stall cycles lie within ``cycles_total``.
_ARGS: tuple[tuple[str, int, Access, Section, str], ...] = (
    ("magic", 32, "ro", "header", f"constant {MAGIC:#010x} ('AQBS') once the engine has run"),
    ("regmap_version", 32, "ro", "header", "version of this register layout"),
    ("command", 32, "rw", "header",
     f"{CMD_IDENTIFY} = identify (write the ID block only), {CMD_RUN} = run the described layer"),
    ("status", 32, "ro", "header", "0 when the last run completed, else the ``Status`` code of what it rejected"),
    ("dm", 32, "ro", "id", "rows (output channels) of the dot-product array"),
    ("dn", 32, "ro", "id", "columns (output pixels) of the dot-product array"),
    ("dk", 32, "ro", "id", "bits ANDed and popcounted per unit per cycle"),
    ("max_bits", 32, "ro", "id", "largest weight/activation bit-width the engine accepts"),
    ("acc_bits", 32, "ro", "id", "accumulator width in bits"),
    ("lhs_mem_words", 32, "ro", "id", "weight buffer depth per array row, in dk-bit words"),
    ("rhs_mem_words", 32, "ro", "id", "activation buffer depth per array column, in dk-bit words"),
    ("result_mem_words", 32, "ro", "id", "result buffer depth per unit"),
    ("build_hash_lo", 32, "ro", "id", "build hash (16 hex digits), low 32 bits"),
    ("build_hash_hi", 32, "ro", "id", "build hash (16 hex digits), high 32 bits"),
    ("c_in", 32, "rw", "descriptor", "input channels"),
    ("c_out", 32, "rw", "descriptor", "output channels"),
    ("groups", 32, "rw", "descriptor", "convolution groups (c_in for depthwise)"),
    ("kh", 32, "rw", "descriptor", "kernel height"),
    ("kw", 32, "rw", "descriptor", "kernel width"),
    ("stride_h", 32, "rw", "descriptor", "vertical stride"),
    ("stride_w", 32, "rw", "descriptor", "horizontal stride"),
    ("pad_h", 32, "rw", "descriptor", "zero padding above and below"),
    ("pad_w", 32, "rw", "descriptor", "zero padding left and right"),
    ("in_h", 32, "rw", "descriptor", "input height"),
    ("in_w", 32, "rw", "descriptor", "input width"),
    ("out_h", 32, "rw", "descriptor", "output height"),
    ("out_w", 32, "rw", "descriptor", "output width"),
    ("batch", 32, "rw", "descriptor", "images per run"),
    ("abits", 32, "rw", "descriptor", "activation bit-width (unsigned)"),
    ("num_tiles", 32, "rw", "descriptor", "entries (row tiles) in the tile table"),
    ("weights_addr", 64, "rw", "buffers", "DDR address of the packed weight bit-planes, row tile by row tile (uint64)"),
    ("activations_addr", 64, "rw", "buffers", "DDR address of the activations (uint8, NCHW)"),
    ("results_addr", 64, "rw", "buffers", "DDR address of the results (int32, NCHW, original channel order)"),
    ("tiles_addr", 64, "rw", "buffers", "DDR address of the tile table (uint32): per row tile its group, bits, channels"),
    ("cycles_fetch", 64, "ro", "counters", "cycles the fetch stage made progress on the last run (AXI reads, buffer fills)"),
    ("cycles_execute", 64, "ro", "counters", "cycles the execute stage made progress on the last run (passes, drain)"),
    ("cycles_result", 64, "ro", "counters", "cycles the result stage made progress on the last run (AXI writes)"),
    ("cycles_total", 64, "ro", "counters",
     "free-running cycle counter at done minus its value at start: the whole run, setup and checks included"),
    ("stall_fetch", 64, "ro", "counters", "cycles the fetch stage waited for a free buffer region or for DDR data"),
    ("stall_execute", 64, "ro", "counters", "cycles the execute stage waited for operands or a free result buffer"),
    ("stall_result", 64, "ro", "counters", "cycles the result stage waited for results or for the AXI write channels"),
)


@dataclass(frozen=True)
class RegisterMap:
    """The register layout of one overlay build plus the values its ID block reports."""

    version: int
    registers: tuple[Register, ...]
    id_values: Mapping[str, int]
    _by_name: dict[str, Register] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {reg.name: reg for reg in self.registers})

    @classmethod
    def from_overlay(cls, cfg: OverlayConfig) -> "RegisterMap":
        """The map for ``cfg`` (deterministic: equal manifests give equal maps)."""
        if cfg.regmap_version != REGMAP_VERSION:
            raise ManifestError(f"overlay {cfg.name!r}: regmap_version {cfg.regmap_version} is not supported here "
                                f"(this driver speaks v{REGMAP_VERSION})")
        registers = list(_CONTROL)
        offset = ARGS_BASE
        for name, width, access, section, doc in _ARGS:
            registers.append(Register(name, offset, width, access, section, doc))
            offset += SLOT_BYTES[width]
        return cls(cfg.regmap_version, tuple(registers), _id_values(cfg))

    def __getitem__(self, name: str) -> Register:
        if name not in self._by_name:
            raise KeyError(f"register map v{self.version} has no register {name!r}")
        return self._by_name[name]

    def __iter__(self) -> Iterator[Register]:
        return iter(self.registers)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def offset(self, name: str) -> int:
        return self[name].offset

    def section(self, section: Section) -> tuple[Register, ...]:
        return tuple(reg for reg in self.registers if reg.section == section)

    @property
    def span(self) -> int:
        """Bytes of address space the map occupies (last slot included), rounded up to a power of two."""
        last = self.registers[-1]
        end = last.offset + SLOT_BYTES[last.width]
        return 1 << (end - 1).bit_length()


def _id_values(cfg: OverlayConfig) -> dict[str, int]:
    try:
        build_hash = int(cfg.build_hash, 16)
    except ValueError:
        raise ManifestError(f"overlay {cfg.name!r}: build_hash {cfg.build_hash!r} is not hexadecimal") from None
    if build_hash >= 1 << 64:
        raise ManifestError(f"overlay {cfg.name!r}: build_hash {cfg.build_hash!r} is longer than 64 bits")
    return {
        "magic": MAGIC,
        "regmap_version": cfg.regmap_version,
        "dm": cfg.dm,
        "dn": cfg.dn,
        "dk": cfg.dk,
        "max_bits": cfg.max_bits,
        "acc_bits": cfg.acc_bits,
        "lhs_mem_words": cfg.lhs_mem_words,
        "rhs_mem_words": cfg.rhs_mem_words,
        "result_mem_words": cfg.result_mem_words,
        "build_hash_lo": build_hash & 0xFFFFFFFF,
        "build_hash_hi": build_hash >> 32,
    }
