"""Bit-exact reference engine: conv and linear layers executed tile by tile as the overlay schedule runs them.

A layer becomes ``groups`` matrix products (im2col); weight rows (signed, per-output-channel bit-widths) and
activation columns (unsigned, one bit-width) are packed into ``Dk``-padded bit-planes (``bitserial``); then every
tile of ``schedule.layer_tiles`` is executed as a bit-serial product of its rows (``wbits`` planes) and columns
(``abits`` planes), its output written back to the tile's original channels (undoing the grouping permutation),
and its stage cycles counted. Tiles write disjoint outputs, so tiles of equal shape are multiplied as one numpy
batch. The cycle counter is ``schedule.sum_tiles`` over the executed tiles, which equals ``schedule.layer_cycles``.

Packed depthwise tiles (``PACKED_GROUPS``: one channel from each of several groups) are the block-diagonal product
of the schedule; each row is multiplied with its own group's im2col block, which is that product without the zero
blocks (a binary {-1, +1} weight row has no zero, so its -popcount(a) correction covers its own block only).

This is the golden model of the RTL engine (``hls/rtl``, checked in simulation) and the emulated board. Imports
only numpy.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import NamedTuple, Sequence

import numpy as np

from autoq.common.network import LayerSpec, as_pair, conv_kind

from .bitserial import BitPlanes, bitplane_product, pack_bitplanes
from .manifest import OverlayConfig
from .schedule import PACKED_GROUPS, LayerCycles, ScheduleParams, TileWork, layer_tiles, sum_tiles
from .tiling import OperandError, packed_row_bits

_GATHER_CHUNK_WORDS = 1 << 22
"""Bound on the uint64 words gathered for one batch of equal-shaped tiles."""


class EngineResult(NamedTuple):
    """Exact int64 layer output and the cycles the schedule charges for the tiles that produced it
    (``schedule.sum_tiles``: stage totals, overhead, total and bound; ``dram_bytes``/``binary_ops`` stay 0)."""

    output: np.ndarray
    cycles: LayerCycles


def _integer_array(values: np.ndarray, ndim: int | tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise OperandError(f"{what} must be a {ndim}-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise OperandError(f"{what} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def im2col(x: np.ndarray, layer: LayerSpec) -> np.ndarray:
    """Columns of every group, ``(groups, K, N)``: ``K`` ordered (channel, ky, kx) like a reshaped weight row,
    ``N`` ordered (batch, out_y, out_x); zero padding."""
    batch, channels = x.shape[:2]
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = layer.kernel, layer.stride, layer.padding, layer.out_hw
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    patches = np.stack(
        [padded[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw] for ky in range(kh) for kx in range(kw)],
        axis=2,
    )  # (B, C, kh*kw, OH, OW)
    per_group = channels // layer.groups
    patches = patches.reshape(batch, layer.groups, per_group * kh * kw, oh * ow)
    return patches.transpose(1, 2, 0, 3).reshape(layer.groups, per_group * kh * kw, batch * oh * ow)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis (zero padding on both sides)."""
    return (size + 2 * padding - kernel) // stride + 1


def _output_hw(layer: LayerSpec) -> tuple[int, int]:
    """Output height and width that the layer's input size, kernel, stride and padding give."""
    height, width = map(conv_output_size, layer.in_hw, layer.kernel, layer.stride, layer.padding)
    return height, width


def _check_layer_operands(layer: LayerSpec, x: np.ndarray, w: np.ndarray) -> None:
    (h, wd), (kh, kw) = layer.in_hw, layer.kernel
    if x.shape[1:] != (layer.c_in, h, wd):
        raise OperandError(f"layer {layer.name!r}: input must be (batch, {layer.c_in}, {h}, {wd}), got {x.shape}")
    if x.shape[0] < 1:
        raise OperandError(f"layer {layer.name!r}: input batch is empty")
    expected = (layer.c_out, layer.c_in // layer.groups, kh, kw)
    if w.shape != expected:
        raise OperandError(f"layer {layer.name!r}: weights must be {expected}, got {w.shape}")
    out_hw = _output_hw(layer)
    if out_hw != layer.out_hw:
        raise OperandError(f"layer {layer.name!r}: kernel/stride/padding give a {out_hw} output, the layer says {layer.out_hw}")


def run_layer(
    layer: LayerSpec,
    x_int: np.ndarray,
    w_int: np.ndarray,
    weight_bits: Sequence[int] | np.ndarray,
    act_bits: int,
    overlay: OverlayConfig,
    params: ScheduleParams = ScheduleParams(),
    grouped: bool = True,
) -> EngineResult:
    """Run ``layer`` on unsigned activations ``x_int`` (B, c_in, H, W) with signed weights ``w_int``
    (c_out, c_in/groups, kh, kw) of per-channel ``weight_bits``; output (B, c_out, OH, OW).

    A linear layer also takes ``x_int`` (B, c_in) and ``w_int`` (c_out, c_in) and then returns (B, c_out).
    """
    flat = layer.kind == "linear" and np.ndim(x_int) == 2
    x = _integer_array(x_int, 2 if flat else 4, f"layer {layer.name!r}: input")
    w = _integer_array(w_int, (2, 4) if layer.kind == "linear" else 4, f"layer {layer.name!r}: weights")
    if flat:
        x = x[:, :, None, None]
    if w.ndim == 2:
        w = w[:, :, None, None]
    _check_layer_operands(layer, x, w)
    batch = x.shape[0]
    groups, m, k, n = layer.gemm(batch)
    columns = im2col(x, layer)
    name = f"layer {layer.name!r}"
    activations = pack_bitplanes(
        columns.transpose(0, 2, 1).reshape(groups * n, k), act_bits, signed=False, dk=overlay.dk,
        what=f"{name}: activations (group * N, K)",
    )
    weights = pack_bitplanes(w.reshape(layer.c_out, k), weight_bits, signed=True, dk=overlay.dk, what=f"{name}: weights")
    tiles = list(layer_tiles(layer, weights.bits, act_bits, overlay, params, batch, grouped))
    output = _execute_tiles(tiles, weights, _per_group(activations, groups), m, n)
    oh, ow = layer.out_hw
    result = output.reshape(layer.c_out, batch, oh, ow).transpose(1, 0, 2, 3)
    return EngineResult(result[:, :, 0, 0] if flat else result, sum_tiles(tiles, params))


def _per_group(planes: BitPlanes, groups: int) -> BitPlanes:
    """(groups * N)-row planes as a batch of ``groups`` operands of N rows each."""
    return BitPlanes(planes.words.reshape((groups, -1) + planes.words.shape[1:]), planes.bits.reshape(groups, -1),
                     planes.signed, planes.k)


def _execute_tiles(tiles: Sequence[TileWork], weights: BitPlanes, activations: BitPlanes, rows_per_group: int,
                   columns: int) -> np.ndarray:
    """Output ``(c_out, N)`` of the tiles: each tile is the bit-serial product of its weight rows (``wbits`` planes)
    and its group's activation columns.

    A packed depthwise tile is one single-row product per row, against that row's own group.
    """
    items: dict[tuple[int, int, int], list[tuple[np.ndarray, int, int]]] = defaultdict(list)
    for tile in tiles:
        widest = weights.bits[tile.rows].max()
        if tile.group == PACKED_GROUPS:
            widest = packed_row_bits(widest)  # binary rows of a packed tile run as 2-bit rows (``tiling``)
        if widest != tile.wbits or tile.abits != activations.planes:
            raise RuntimeError(f"a {tile.wbits}x{tile.abits}-bit tile does not match its rows' or activations' widths")
        shape = (tile.col_stop - tile.col_start, tile.wbits)
        if tile.group == PACKED_GROUPS:
            for row in tile.rows:
                items[(1,) + shape].append((np.array([row]), int(row) // rows_per_group, tile.col_start))
        else:
            items[(len(tile.rows),) + shape].append((tile.rows, tile.group, tile.col_start))
    output = np.zeros((weights.words.shape[0], columns), dtype=np.int64)
    covered = np.zeros(output.shape, dtype=bool)
    covered_count = 0
    for (n_rows, width, wbits), batch in items.items():
        per_item = n_rows * wbits * weights.words.shape[-1] + width * activations.words[0, 0].size
        step = max(1, _GATHER_CHUNK_WORDS // per_item)
        for chunk in (batch[start:start + step] for start in range(0, len(batch), step)):
            rows = np.stack([item[0] for item in chunk])
            groups = np.array([item[1] for item in chunk])
            cols = np.array([item[2] for item in chunk])[:, None] + np.arange(width)
            tile_weights = BitPlanes(weights.words[rows][:, :, :wbits], weights.bits[rows], True, weights.k)
            tile_acts = BitPlanes(activations.words[groups[:, None], cols], activations.bits[groups[:, None], cols],
                                  False, activations.k)
            where = (rows[:, :, None], cols[:, None, :])
            output[where] = bitplane_product(tile_weights, tile_acts)
            covered[where] = True
            covered_count += rows.size * width
    if covered_count != output.size or not covered.all():
        raise RuntimeError("the schedule's tiles do not cover every output of the layer exactly once")
    return output


def conv2d(
    x_int: np.ndarray,
    w_int: np.ndarray,
    weight_bits: Sequence[int] | np.ndarray,
    act_bits: int,
    overlay: OverlayConfig,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    params: ScheduleParams = ScheduleParams(),
    grouped: bool = True,
) -> EngineResult:
    """Convolution (B, C_in, H, W) * (C_out, C_in/groups, kh, kw) -> (B, C_out, OH, OW); depthwise when
    ``groups == C_in``. See ``run_layer``."""
    x = _integer_array(x_int, 4, "conv2d input")
    w = _integer_array(w_int, 4, "conv2d weights")
    kind = conv_kind(x.shape[1], groups)
    pair_stride, pair_padding = as_pair(stride, "layer 'conv2d': stride"), as_pair(padding, "layer 'conv2d': padding")
    shape_only = LayerSpec("conv2d", kind, x.shape[1], w.shape[0], w.shape[2:], pair_stride, pair_padding, groups, x.shape[2:])
    out_hw = _output_hw(shape_only)
    if min(out_hw) < 1:
        raise OperandError(f"conv2d: a {w.shape[2]}x{w.shape[3]} kernel does not fit the padded {x.shape[2:]} input")
    return run_layer(replace(shape_only, out_hw=out_hw), x, w, weight_bits, act_bits, overlay, params, grouped)


def matmul(
    x_int: np.ndarray,
    w_int: np.ndarray,
    weight_bits: Sequence[int] | np.ndarray,
    act_bits: int,
    overlay: OverlayConfig,
    *,
    params: ScheduleParams = ScheduleParams(),
    grouped: bool = True,
) -> EngineResult:
    """Linear layer: unsigned ``x_int`` (B, K) times signed ``w_int`` (M, K) transposed -> (B, M)."""
    x = _integer_array(x_int, 2, "matmul input")
    w = _integer_array(w_int, 2, "matmul weights")
    layer = LayerSpec("matmul", "linear", x.shape[1], w.shape[0])
    return run_layer(layer, x, w, weight_bits, act_bits, overlay, params, grouped)
