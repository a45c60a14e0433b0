"""Bit-plane packing and the bit-serial matrix product, bit-exact (BISMO-style), in pure numpy.

An integer matrix with ``R`` rows of ``K`` values is stored as bit-planes: plane ``i`` of row ``r`` holds bit ``i``
of every value of that row, packed along ``K`` into uint64 words (``K`` zero-padded to a multiple of ``dk``).
The product of two packed operands is ``sum_i sum_j weight_i * 2^j * popcount(wplane_i & aplane_j)``.

Value encodings (``plane_encoding``):

* unsigned, ``b`` bits: ``[0, 2^b - 1]``, plane ``i`` weighs ``2^i``;
* signed, ``b >= 2`` bits: two's complement ``[-2^(b-1), 2^(b-1) - 1]``; the MSB plane weighs ``-2^(b-1)``;
* signed, 1 bit: **binary {-1, +1}** (the quantizer's 1-bit weights are sign x scale), stored as
  ``bit = (value + 1) / 2``, i.e. ``value = 2*bit - 1``. Its product is ``2*popcount(w & a) - popcount(a)``:
  plane 0 weighs 2 and every value carries an offset of -1, applied through the activation column sums (the
  array's popcount of ``a`` against an all-ones row). BISMO's own 1-bit signed range {-1, 0} is not used.

Activations are unsigned. Imports only numpy: this runs on the board.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .tiling import OperandError, check_bit_widths

WORD_BITS = 64
MAX_OPERAND_BITS = 16
_PACK_CHUNK_BYTES = 1 << 24
_PRODUCT_CHUNK_WORDS = 1 << 21
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class BitPlanes(NamedTuple):
    """``words[r, i, w]``: word ``w`` of bit-plane ``i`` of row ``r`` (planes at or above a row's width are zero).

    ``words`` may carry leading batch axes ``(..., R, P, W)`` with ``bits`` ``(..., R)``: a batch of independent
    operands of equal shape (the engine multiplies many tiles at once this way).
    """

    words: np.ndarray
    bits: np.ndarray
    signed: bool
    k: int

    @property
    def planes(self) -> int:
        return self.words.shape[-2]


def popcount_lookup(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 word through a byte lookup table (works on every numpy)."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    return _BYTE_POPCOUNT[words.view(np.uint8)].reshape(words.shape + (8,)).sum(axis=-1, dtype=np.int64)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 word, as int64 (``np.bitwise_count`` on numpy >= 2, else a byte lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).astype(np.int64)
    return popcount_lookup(words)


def value_range(bits: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest representable value for each bit-width (see the module docstring)."""
    bits = np.asarray(bits, dtype=np.int64)
    if not signed:
        return np.zeros_like(bits), (np.int64(1) << bits) - 1
    half = np.int64(1) << (bits - 1)
    return np.where(bits == 1, -1, -half), np.where(bits == 1, 1, half - 1)


def plane_encoding(bits: np.ndarray, signed: bool, planes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the weight of each of ``planes`` (default: the widest row's) bit-planes, ``(..., R, planes)``, and
    the constant offset ``(..., R)``. A row's value is ``sum_i weight[i] * bit_i + offset``.
    """
    bits = np.asarray(bits, dtype=np.int64)[..., None]
    plane = np.arange(int(bits.max()) if planes is None else planes, dtype=np.int64)
    weights = np.where(plane < bits, np.int64(1) << plane, 0)
    offsets = np.zeros(bits.shape[:-1], dtype=np.int64)
    if signed:
        weights = np.where(plane == bits - 1, -weights, weights)
        binary = bits[..., 0] == 1
        weights[binary, 0] = 2
        offsets[binary] = -1
    return weights, offsets


def padded_words(k: int, dk: int) -> int:
    """uint64 words per bit-plane of a ``k``-long row: ``k`` zero-padded to a multiple of ``dk``, then to whole words."""
    return -(-(-(-k // dk) * dk) // WORD_BITS)


def _row_bits(bits: int | Sequence[int] | np.ndarray, rows: int) -> np.ndarray:
    array = check_bit_widths(np.full(rows, bits) if np.ndim(bits) == 0 else np.asarray(bits), "bits", MAX_OPERAND_BITS)
    if array.size != rows:
        raise OperandError(f"got {array.size} bit-widths for {rows} rows")
    return array


def _check_values(values: np.ndarray, bits: np.ndarray, signed: bool, what: str) -> None:
    low, high = value_range(bits, signed)
    bad = (values < low[:, None]) | (values > high[:, None])
    if signed:
        bad |= (bits[:, None] == 1) & (values == 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        kind = "signed" if signed else "unsigned"
        allowed = "{-1, +1} (binary)" if signed and bits[r] == 1 else f"[{low[r]}, {high[r]}]"
        raise OperandError(f"{what}[{r}, {c}] = {values[r, c]} does not fit row {r}'s {bits[r]}-bit {kind} range {allowed}")


def pack_bitplanes(
    values: np.ndarray, bits: int | Sequence[int] | np.ndarray, signed: bool, dk: int = WORD_BITS, what: str = "operand"
) -> BitPlanes:
    """Pack ``values`` (R, K) with per-row (or one) bit-width into bit-planes along K, K zero-padded to ``dk``."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise OperandError(f"{what} must be a 2-D (rows, K) integer array, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise OperandError(f"{what} must hold integers, got dtype {values.dtype}")
    if isinstance(dk, bool) or not isinstance(dk, (int, np.integer)) or dk < 1:
        raise OperandError(f"dk must be a positive int, got {dk!r}")
    values = values.astype(np.int64)
    rows, k = values.shape
    if k == 0:
        raise OperandError(f"{what} has no columns (K = 0)")
    row_bits = _row_bits(bits, rows)
    _check_values(values, row_bits, signed, what)
    if signed:
        codes = np.where(row_bits[:, None] == 1, (values + 1) >> 1, values & ((np.int64(1) << row_bits[:, None]) - 1))
    else:
        codes = values
    planes = int(row_bits.max())
    words = np.zeros((rows, planes, padded_words(k, dk)), dtype=np.uint64)
    used_words = -(-k // WORD_BITS)
    shifts = np.arange(planes, dtype=np.int64)[None, :, None]
    chunk = max(1, _PACK_CHUNK_BYTES // (planes * used_words * WORD_BITS))
    for start in range(0, rows, chunk):
        bit_matrix = np.zeros((min(chunk, rows - start), planes, used_words * WORD_BITS), dtype=np.uint8)
        bit_matrix[:, :, :k] = (codes[start:start + chunk, None, :] >> shifts) & 1
        packed = np.packbits(bit_matrix, axis=-1, bitorder="little")
        words[start:start + chunk, :, :used_words] = np.ascontiguousarray(packed).view("<u8")
    return BitPlanes(words, row_bits, bool(signed), k)


def unpack_bitplanes(planes: BitPlanes) -> np.ndarray:
    """The int64 (R, K) values ``planes`` encode (inverse of ``pack_bitplanes``)."""
    raw = np.ascontiguousarray(planes.words.astype("<u8")).view(np.uint8)
    bit_matrix = np.unpackbits(raw, axis=-1, bitorder="little")[..., : planes.k].astype(np.int64)
    weights, offsets = plane_encoding(planes.bits, planes.signed, planes.planes)
    return np.einsum("...rpk,...rp->...rk", bit_matrix, weights) + offsets[..., None]


def bitplane_product(weights: BitPlanes, activations: BitPlanes) -> np.ndarray:
    """``W @ A.T`` as int64 ``(..., Rw, Ra)`` from packed weight rows and packed (unsigned) activation columns.

    Each pair of planes contributes ``weight_i * 2^j * popcount(wplane_i & aplane_j)``. Loops over weight planes
    (and over chunks of a large batch); batch, rows, columns, activation planes and words are vectorised.
    """
    if activations.signed:
        raise OperandError("activations must be unsigned")
    w, a = weights.words, activations.words
    if weights.k != activations.k or w.shape[-1] != a.shape[-1] or w.shape[:-3] != a.shape[:-3]:
        raise OperandError(
            f"weights {w.shape} (K={weights.k}) and activations {a.shape} (K={activations.k}) do not match"
        )
    w_weights, w_offsets = plane_encoding(weights.bits, weights.signed, weights.planes)
    a_weights, _ = plane_encoding(activations.bits, False, activations.planes)
    batch = w.shape[:-3]
    w, w_weights, w_offsets = _flat_batch(w, 3), _flat_batch(w_weights, 2), _flat_batch(w_offsets, 1)
    a, a_weights = _flat_batch(a, 3), _flat_batch(a_weights, 2)
    result = np.zeros((w.shape[0], w.shape[1], a.shape[1]), dtype=np.int64)
    step = max(1, _PRODUCT_CHUNK_WORDS // max(1, w.shape[1] * a[0].size))
    for part in (slice(start, start + step) for start in range(0, w.shape[0], step)):
        for i in range(w.shape[2]):
            counts = popcount(w[part, :, i, None, None, :] & a[part, None]).sum(axis=-1)  # (batch, R, C, Pa)
            result[part] += w_weights[part, :, i, None] * np.einsum("trcj,tcj->trc", counts, a_weights[part])
    if w_offsets.any():
        column_sums = np.einsum("tcj,tcj->tc", popcount(a).sum(axis=-1), a_weights)
        result += w_offsets[:, :, None] * column_sums[:, None, :]
    return result.reshape(batch + result.shape[1:])


def _flat_batch(array: np.ndarray, core_dims: int) -> np.ndarray:
    """``array`` with its leading batch axes merged into one (added if there are none)."""
    return array.reshape((-1,) + array.shape[array.ndim - core_dims:])


def bitserial_matmul(
    w_int: np.ndarray,
    weight_bits: Sequence[int] | np.ndarray,
    a_int: np.ndarray,
    act_bits: int,
    dk: int = WORD_BITS,
) -> np.ndarray:
    """Exact int64 product ``w_int (M, K) @ a_int (K, N)``: signed weights with per-row bit-widths, unsigned activations."""
    a_int = np.asarray(a_int)
    if a_int.ndim != 2:
        raise OperandError(f"activations must be a 2-D (K, N) array, got shape {a_int.shape}")
    w_planes = pack_bitplanes(w_int, weight_bits, signed=True, dk=dk, what="weights")
    a_planes = pack_bitplanes(a_int.T, act_bits, signed=False, dk=dk, what="activations.T")
    return bitplane_product(w_planes, a_planes)
