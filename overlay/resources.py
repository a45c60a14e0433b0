"""FPGA resource estimate of an overlay build, fitted to open synthesis of the RTL engine (``autoq.hls.rtl``).

Fitted on Yosys 0.70 ``synth_xilinx -family xc7`` (``autoq hls synth``, ``autoq.hls.synth``; LUT = LUT1..6 + INV
+ LUTRAM at the LUTs it occupies) of five builds, 2x2x64 and 4x4x64 with 128-word buffers, 2x2x256, 4x4x128 and
4x4x256 with 512-word buffers (LUTs 7,274 .. 19,729):

* LUTs: ``LUT_CONTROL + LUT_PER_POPCOUNT_BIT * (Dm * Dn + Dn) * Dk + LUT_PER_UNIT * Dm * Dn``. Each of the
  ``Dm x Dn`` units ANDs and popcounts ``Dk`` bits (as does each column's ``colsum`` unit for binary rows, hence
  ``+ Dn``); the per-unit term is the shift, conditional negate, accumulator, binary-row correction and drain mux;
  the control term is the AXI-Lite register slave, the controller (with its sequential multiplier and divider),
  the read DMA, and the fetch and result stages. Error of the fit: -1.2 .. +0.9% on the five builds, -2.7 .. +1.9%
  leave-one-out. Fitted on the RTL whose popcount was an adder tree over 32-bit chunks; ``Dm = 8`` is an
  extrapolation (no 8-row build was synthesised), and the compressor-tree popcount that ``hls/rtl/dpa.py`` uses
  since (``common.compress``) needs a refit: ``autoq hls synth --set dm=.. --set dn=.. --set dk=..`` per size.
* FFs: ``FF_CONTROL + FF_PER_POPCOUNT_BIT * (Dm * Dn + Dn) * Dk + FF_PER_UNIT * Dm * Dn`` (within 0.3%).
* BRAM36: each of the ``Dm`` weight and ``Dn`` activation buffers is ``Dk`` bits wide and maps to 64-bit x 512-word
  BRAM36 slices (SDP 72-bit mode): ``ceil(Dk / 64) * (Dm * ceil(lhs_mem_words / 512) + Dn * ceil(rhs_mem_words /
  512))``, exact on all five builds. The result buffer (``2 Dm`` words of ``Dn`` int32) and the chunk entry memory
  (``2 * chunk_slots`` words of ``hls.rtl.common.EntryLayout``, RAM64M) are LUTRAM (in the LUT count);
  ``result_mem_words`` is not used by the RTL.
* DSP: none (shift and conditional negate; the controller's multiplier is sequential), 0 in every build.

The prior was BISMO's published model (Umuroglu et al., TRETS 2019), kept as ``BISMO_*``: LUT per unit
``1.17 Dk + 44.1`` plus 120.1 per unit for its accumulator, BRAM ``ceil(Dk / 32) * (Dm Bm + Dn Bn) / 1024``. Our
adder-tree popcount cost 2.14 LUTs per bit where BISMO's generated compressor trees cost 1.17, so the fitted
array is about 1.8x BISMO's at ``Dk = 256``. Checked against flattened Yosys runs of the compressor-tree RTL
(``autoq hls synth --flatten``, 2026-12-02), not refitted: 8x8x256 59,514 LUTs (the model says 3.3% fewer), 8x8x128
37,628 (0.6% more), 8x4x256 33,369 (5.4% fewer); BRAM36 exact (64, 32, 48). After the weight chunks (the chunk
entry memory, 1d495a6): 8x8x128 flattened 37,823 LUTs (the model says 0.04% more; LUTRAM +456, 452 of it the entry
memory's 113 RAM64M, logic LUTs -261), 11,826 FF (2.4% more); hierarchical 2x2x64 7,225 (0.5% fewer).

``SHELL_RESERVE`` is an allowance for what the block design adds around the engine and is not in its netlist: two
SmartConnects (GP0 -> the AXI-Lite slave, in PG247's low-area mode; the engine's AXI3 master -> HP0) and a
processor system reset; the PS7 itself is hard logic. It is an estimate (no Vivado run here), to be replaced by
Vivado's utilisation report of a real build. ``fits`` checks the estimate plus the shell against the device's
capacity; ``within_margin`` against ``MARGIN`` of it (what a build should stay under to place and route at its
clock).

Imports only numpy: this runs on the board.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .manifest import ManifestError, OverlayConfig

LUT_CONTROL = 5_583.3
LUT_PER_POPCOUNT_BIT = 2.138
LUT_PER_UNIT = 196.1
FF_CONTROL = 4_515.7
FF_PER_POPCOUNT_BIT = 0.198
FF_PER_UNIT = 90.2
BRAM36_SLICE_BITS = 64
BRAM36_SLICE_WORDS = 512

BISMO_LUT_PER_DPU_PER_DK_BIT = 1.17
BISMO_LUT_PER_DPU_FIXED = 44.1
BISMO_LUT_PER_UNIT_ACCUMULATOR = 120.1
BRAM36_BITS = 36 * 1024


class DeviceCapacity(NamedTuple):
    lut: int
    bram36: int
    dsp: int
    ff: int = 0


DEVICES: dict[str, DeviceCapacity] = {
    "xc7z020": DeviceCapacity(53_200, 140, 220, 106_400),  # Zynq-7020 (PYNQ-Z1, PYNQ-Z2)
    "xcvu9p": DeviceCapacity(1_182_240, 2_160, 6_840, 2_364_480),  # Virtex UltraScale+ VU9P (BISMO's "cloud" size)
}
SHELL_RESERVE = DeviceCapacity(lut=3_000, bram36=0, dsp=0, ff=4_000)
"""Allowance for the AXI shell around the engine (SmartConnects, reset; an estimate, see the module docstring)."""
MARGIN = {"lut": 0.80, "bram36": 0.90, "dsp": 1.0}
"""Fraction of the device that engine + shell should stay under (``within_margin``)."""


class Resources(NamedTuple):
    lut: int
    bram36: int
    dsp: int
    fits: bool
    utilisation: dict[str, float]
    ff: int = 0

    def to_dict(self) -> dict[str, float]:
        """Flat figures for ``Measurement.resources``."""
        return {"lut": float(self.lut), "bram36": float(self.bram36), "dsp": float(self.dsp), "ff": float(self.ff),
                "fits": float(self.fits), **{f"{k}_util": v for k, v in self.utilisation.items()}}


def device_capacity(part: str) -> DeviceCapacity:
    for prefix, capacity in DEVICES.items():
        if part.lower().startswith(prefix):
            return capacity
    raise ManifestError(f"no resource capacity known for FPGA part {part!r}; known families: {sorted(DEVICES)}")


def estimate(overlay: OverlayConfig) -> Resources:
    """LUT/FF/BRAM36/DSP of ``overlay``'s engine, and whether it fits its part with the shell reserve."""
    units = overlay.dm * overlay.dn
    popcount_bits = (units + overlay.dn) * overlay.dk
    lut = math.ceil(LUT_CONTROL + LUT_PER_POPCOUNT_BIT * popcount_bits + LUT_PER_UNIT * units)
    ff = math.ceil(FF_CONTROL + FF_PER_POPCOUNT_BIT * popcount_bits + FF_PER_UNIT * units)
    slices = math.ceil(overlay.dk / BRAM36_SLICE_BITS)
    bram36 = slices * (overlay.dm * math.ceil(overlay.lhs_mem_words / BRAM36_SLICE_WORDS)
                       + overlay.dn * math.ceil(overlay.rhs_mem_words / BRAM36_SLICE_WORDS))
    dsp = 0
    capacity = device_capacity(overlay.part)
    used = (lut + SHELL_RESERVE.lut, bram36 + SHELL_RESERVE.bram36, dsp + SHELL_RESERVE.dsp)
    fits = all(u <= c for u, c in zip(used, capacity))
    utilisation = {"lut": lut / capacity.lut, "bram36": bram36 / capacity.bram36, "dsp": dsp / capacity.dsp}
    return Resources(lut, bram36, dsp, fits, utilisation, ff)


def within_margin(overlay: OverlayConfig) -> bool:
    """Whether engine + ``SHELL_RESERVE`` stay within ``MARGIN`` of the part's LUTs, BRAM36 and DSPs."""
    res, capacity = estimate(overlay), device_capacity(overlay.part)
    return all(used + getattr(SHELL_RESERVE, name) <= MARGIN[name] * getattr(capacity, name)
               for name, used in (("lut", res.lut), ("bram36", res.bram36), ("dsp", res.dsp)))


def bismo_lut(overlay: OverlayConfig) -> int:
    """LUTs of the array by BISMO's published model (the prior of the fit, for comparison)."""
    per_unit = BISMO_LUT_PER_DPU_PER_DK_BIT * overlay.dk + BISMO_LUT_PER_DPU_FIXED + BISMO_LUT_PER_UNIT_ACCUMULATOR
    return math.ceil(overlay.dm * overlay.dn * per_unit)
