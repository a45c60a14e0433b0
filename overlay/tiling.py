"""Row tiling of a layer's weight matrix: which output channels share a Dm-row tile of the array.

A tile runs ``max(weight bits in it) * act_bits`` bit-plane passes, so kernel-wise bit-widths only pay off when
rows of equal width share tiles. ``tile_rows(..., grouped=True)`` sorts rows by bit-width (descending, stable)
before cutting them into Dm-row tiles, which minimises the total passes: the k-th largest tile maximum can never
be below the (k*Dm)-th largest row width, and descending chunks reach exactly that bound. ``grouped=False`` keeps
the natural channel order (what a scheduler unaware of per-kernel bits would do).

Sorted widest first, a grouped tiling's tile sizes and maxima depend only on the histogram of the rows' widths
(``grouped_tiles_at_least`` counts its tiles per maximum from histograms, vectorised over many row sets), which is
what lets a cost model score a layer by its histogram.

Imports only numpy: this runs on the board.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from autoq.common.errors import AutoQError


class OperandError(AutoQError, ValueError):
    """Operands of the bit-serial engine (bit-widths, values, shapes) are out of range or inconsistent."""


class RowTiling(NamedTuple):
    """How the ``M`` rows of one weight matrix are cut into tiles of at most ``dm`` rows.

    ``order[p]`` is the original row processed at position ``p``; tiles cover consecutive positions,
    ``tile_rows[t]`` of them for tile ``t``; ``tile_bits[t]`` is the largest weight bit-width in tile ``t``, so a
    tiling costs ``tile_bits.sum()`` weight bit-plane passes per activation bit-plane and column block.
    """

    order: np.ndarray
    tile_rows: np.ndarray
    tile_bits: np.ndarray


def check_bit_widths(bits: Sequence[int] | np.ndarray, what: str, max_bits: int = 64) -> np.ndarray:
    """``bits`` as a 1-D int64 array; raises ``OperandError`` naming the first entry outside ``[1, max_bits]``."""
    array = np.asarray(bits)
    if array.ndim != 1 or array.size == 0:
        raise OperandError(f"{what} must be a non-empty 1-D sequence of bit-widths, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise OperandError(f"{what} must hold integers, got dtype {array.dtype}")
    bad = np.flatnonzero((array < 1) | (array > max_bits))
    if bad.size:
        raise OperandError(f"{what}[{bad[0]}] = {array[bad[0]]} is outside [1, {max_bits}]")
    return array.astype(np.int64)


PACKED_BINARY_BITS = 2
"""Width a binary (1-bit {-1, +1}) row is stored and run at in a packed depthwise tile: a 2-bit two's complement
row that is zero outside the row's own span of ``K_eff`` (``overlay.layout`` packs it so)."""


def packed_row_bits(weight_bits: np.ndarray) -> np.ndarray:
    """The widths the rows of a packed depthwise layer run at: their own, binary rows at ``PACKED_BINARY_BITS``.
    The map is monotone, so the tile maxima of a grouped tiling map the same way."""
    return np.maximum(np.asarray(weight_bits, dtype=np.int64), PACKED_BINARY_BITS)


def tile_rows(weight_bits: Sequence[int] | np.ndarray, dm: int, grouped: bool = True) -> RowTiling:
    """Cut rows with the given weight bit-widths into tiles of ``dm`` rows (the last may be shorter).

    ``grouped``: rows sorted by bit-width, widest first (stable, so equal widths keep channel order);
    otherwise natural order.
    """
    bits = check_bit_widths(weight_bits, "weight_bits")
    if isinstance(dm, bool) or not isinstance(dm, (int, np.integer)) or dm < 1:
        raise OperandError(f"dm (rows per tile) must be a positive int, got {dm!r}")
    rows = bits.size
    order = np.argsort(-bits, kind="stable") if grouped else np.arange(rows)
    order = order.astype(np.int64)
    sizes = tile_sizes(rows, dm)
    starts = np.arange(sizes.size, dtype=np.int64) * dm
    tile_bits = np.maximum.reduceat(bits[order], starts)
    return RowTiling(order, sizes, tile_bits.astype(np.int64))


def tile_sizes(rows: int, dm: int) -> np.ndarray:
    """Rows of each tile when ``rows`` rows are cut into tiles of ``dm`` (the last may be shorter)."""
    n_tiles = -(-rows // dm)
    sizes = np.full(n_tiles, dm, dtype=np.int64)
    sizes[-1] = rows - dm * (n_tiles - 1)
    return sizes


def grouped_tiles_at_least(counts: np.ndarray, dm: int) -> np.ndarray:
    """How many tiles of the grouped tilings of many row sets have a maximum of at least ``b``, from their bit-width
    histograms alone.

    ``counts[s, b]`` is the number of rows of width ``b`` in row set ``s`` (column 0 unused). Sorted widest first,
    tile ``t`` starts at position ``t * dm``, so its maximum is at least ``b`` exactly when ``t * dm`` is below the
    number of rows of width ``>= b``. Returns ``[s, j]``: the tiles of set ``s`` whose maximum is at least
    ``counts.shape[1] - 1 - j`` (widest first, so the last column is every tile of the set).
    """
    return -(-np.cumsum(np.asarray(counts, dtype=np.int64)[:, :0:-1], axis=1) // dm)
