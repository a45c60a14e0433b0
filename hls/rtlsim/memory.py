"""Settings of the simulated Zynq-7000 HP port (``HPPortModel``), also parsed from URI query strings.

Defaults and where they come from:

- ``bandwidth = 6.4`` bytes per PL cycle per direction. Sadri, Weis, Wehn, Benini, "Energy and performance
  exploration of accelerator coherency port using Xilinx ZYNQ", FPGAworld 2013 (abstract:
  https://cris.unibo.it/handle/11585/307125; summary: embedded.com "Performance exploration of the Accelerator
  Coherency Port using Xilinx ZYNQ", 2013): accelerators on the HP and ACP ports of an XC7Z020-1 reach a full-duplex
  bandwidth of "over 1.6 GBytes/s" at 125 MHz, i.e. 0.8 GB/s each way = 6.4 B per cycle, 80% of the 64-bit port's
  8 B/cycle. Consistent with UG585 v1.11 section 22.3.2 (p. 653): the DDR controller "was designed to have a
  maximum efficiency of approximately 75%". Not modelled: reads and writes sharing the DRAM. (From memory of
  Digilent's PYNQ-Z1 reference manual, to confirm there: its DDR3 is 16 bit at 1050 Mb/s, 2.1 GB/s peak, about
  1.6 GB/s at 75%, which at a 200 MHz PL clock caps reads + writes together near 7.9 B/cycle.)
- ``read_latency = 40`` and ``write_latency = 30`` PL cycles: **assumptions**. No published measurement of the
  Zynq-7000 HP round trip in PL cycles was found (searched: UG585, Sadri et al., PYNQ and Xilinx forum threads);
  40 cycles is 200 ns at the 200 MHz overlay clock, a typical DDR3 round trip through the PS interconnect.
- ``read_outstanding = write_outstanding = 8`` bursts: **assumption**. UG1085 (Zynq UltraScale+ TRM, "AXI Interface
  Programming") gives its HP FIFO interface a read and write command acceptance capability of eight; the
  Zynq-7000 figures of UG585 ("High-Performance AXI" section) were not retrieved here. Confirm there.

Query keys (``read_latency=40&write_latency=30&outstanding=8&bandwidth=8``): ``read_latency``,
``write_latency``, ``outstanding`` (both directions), ``read_outstanding``, ``write_outstanding``, ``bandwidth``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping
from urllib.parse import parse_qsl

from autoq.common.errors import AutoQError

BUS_BYTES = 8  # the 64-bit HP port
MAX_OUTSTANDING = 256


class MemoryModelError(AutoQError, ValueError):
    """HP-port model settings that are malformed or out of range."""


@dataclass(frozen=True)
class HPPortModel:
    """Timing of the simulated HP port, in PL clock cycles (see the module docstring for the sources)."""

    read_latency: int = 40  # AR accepted -> first R beat
    write_latency: int = 30  # last W beat -> B response
    read_outstanding: int = 8  # read bursts between AR and their last beat
    write_outstanding: int = 8  # write bursts between AW and B
    bandwidth: float = 6.4  # bytes per cycle, each direction

    def __post_init__(self) -> None:
        for name in ("read_latency", "write_latency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
                raise MemoryModelError(f"HP port {name} must be an integer number of cycles in 1..1000000, got {value!r}")
        for name in ("read_outstanding", "write_outstanding"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_OUTSTANDING:
                raise MemoryModelError(f"HP port {name} must be an integer in 1..{MAX_OUTSTANDING}, got {value!r}")
        bw = self.bandwidth
        if isinstance(bw, bool) or not isinstance(bw, (int, float)) or not math.isfinite(bw) or not 0 < bw <= BUS_BYTES:
            raise MemoryModelError(f"HP port bandwidth must be in (0, {BUS_BYTES}] bytes per cycle (the 64-bit port), got {bw!r}")
        object.__setattr__(self, "bandwidth", float(bw))

    @classmethod
    def from_query(cls, query: str | Mapping[str, str], base: "HPPortModel | None" = None) -> "HPPortModel":
        """Settings from ``read_latency=40&outstanding=8&...`` (or a mapping), over ``base`` (default: defaults);
        an unknown or repeated key is an error naming it."""
        if isinstance(query, str):
            text = query.lstrip("?")
            try:
                pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
            except ValueError:
                raise MemoryModelError(f"HP port settings {query!r} are not key=value pairs joined by '&'") from None
        else:
            pairs = list(query.items())
        known = {"read_latency", "write_latency", "outstanding", "read_outstanding", "write_outstanding", "bandwidth"}
        unknown = sorted({key for key, _ in pairs if key not in known})
        if unknown:
            raise MemoryModelError(f"unknown HP port setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        seen: set[str] = set()
        changes: dict[str, Any] = {}  # int or float per field; __post_init__ checks each
        for key, text in pairs:
            if key in seen:
                raise MemoryModelError(f"HP port setting {key} given twice")
            seen.add(key)
            try:
                value: object = float(text) if key == "bandwidth" else int(text)
            except ValueError:
                kind = "a number" if key == "bandwidth" else "an integer"
                raise MemoryModelError(f"HP port setting {key}={text!r} is not {kind}") from None
            if key == "outstanding":
                changes.setdefault("read_outstanding", value)
                changes.setdefault("write_outstanding", value)
            else:
                changes[key] = value
        if "outstanding" in seen and seen & {"read_outstanding", "write_outstanding"}:
            raise MemoryModelError("HP port: give either outstanding or read_outstanding/write_outstanding, not both")
        return replace(base or cls(), **changes)

    def to_query(self) -> str:
        return "&".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))
