"""FPGA resource estimate of an overlay build, from BISMO's published resource model (Umuroglu et al., TRETS 2019).

* LUTs of one dot-product unit: ``1.17 * Dk + 44.1``; the array: ``Dm * Dn * (LUT_DPU + 120.1)`` (the 120.1 is the
  accumulator and shift logic around each unit).
* BRAM36: the lhs/rhs buffers are ``Dk`` bits wide, built from 32-bit x 1024-word BRAM36 columns:
  ``ceil(Dk / 32) * (Dm * lhs_mem_words + Dn * rhs_mem_words) / 1024``, plus the result buffer
  (``Dm * Dn * acc_bits * result_mem_words`` bits).
* DSP: none; the array is popcount and add logic.

``fits`` checks the estimate plus a reserve for the rest of the design (AXI interconnect and DMA of the fetch and
result stages, control registers, the Zynq PS glue) against the device's capacity.

Imports only numpy: this runs on the board.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .manifest import ManifestError, OverlayConfig

LUT_PER_DPU_PER_DK_BIT = 1.17
LUT_PER_DPU_FIXED = 44.1
LUT_PER_UNIT_ACCUMULATOR = 120.1
BRAM36_BITS = 36 * 1024


class DeviceCapacity(NamedTuple):
    lut: int
    bram36: int
    dsp: int


DEVICES: dict[str, DeviceCapacity] = {
    "xc7z020": DeviceCapacity(53_200, 140, 220),  # Zynq-7020 (PYNQ-Z1, PYNQ-Z2)
    "xcvu9p": DeviceCapacity(1_182_240, 2_160, 6_840),  # Virtex UltraScale+ VU9P (BISMO's "cloud" size)
}
SHELL_RESERVE = DeviceCapacity(lut=9_000, bram36=8, dsp=0)
"""Resources kept free for the fetch/result DMA, AXI interconnect and control around the array."""


class Resources(NamedTuple):
    lut: int
    bram36: int
    dsp: int
    fits: bool
    utilisation: dict[str, float]

    def to_dict(self) -> dict[str, float]:
        """Flat figures for ``Measurement.resources``."""
        return {"lut": float(self.lut), "bram36": float(self.bram36), "dsp": float(self.dsp), "fits": float(self.fits),
                **{f"{k}_util": v for k, v in self.utilisation.items()}}


def device_capacity(part: str) -> DeviceCapacity:
    for prefix, capacity in DEVICES.items():
        if part.lower().startswith(prefix):
            return capacity
    raise ManifestError(f"no resource capacity known for FPGA part {part!r}; known families: {sorted(DEVICES)}")


def estimate(overlay: OverlayConfig) -> Resources:
    """LUT/BRAM36/DSP of ``overlay``'s array and buffers, and whether it fits its part with the shell reserve."""
    lut_per_dpu = LUT_PER_DPU_PER_DK_BIT * overlay.dk + LUT_PER_DPU_FIXED
    lut = math.ceil(overlay.dm * overlay.dn * (lut_per_dpu + LUT_PER_UNIT_ACCUMULATOR))
    operand_bram = math.ceil(overlay.dk / 32) * (overlay.dm * overlay.lhs_mem_words + overlay.dn * overlay.rhs_mem_words) / 1024
    result_bram = overlay.dm * overlay.dn * overlay.acc_bits * overlay.result_mem_words / BRAM36_BITS
    bram36 = math.ceil(operand_bram + result_bram)
    dsp = 0
    capacity = device_capacity(overlay.part)
    used = (lut + SHELL_RESERVE.lut, bram36 + SHELL_RESERVE.bram36, dsp + SHELL_RESERVE.dsp)
    fits = all(u <= c for u, c in zip(used, capacity))
    utilisation = {"lut": lut / capacity.lut, "bram36": bram36 / capacity.bram36, "dsp": dsp / capacity.dsp}
    return Resources(lut, bram36, dsp, fits, utilisation)
