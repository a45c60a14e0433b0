"""DDR layout of one engine run: the ``LayerJob`` the host hands the HLS engine (``hls/src``) through the driver.

Everything the engine reads is packed here by the pure numpy functions (``engine.im2col``,
``bitserial.pack_bitplanes``) in the order the schedule runs it (``schedule.layer_tiles``):

- **descriptor**: the conv geometry, ``batch``, ``abits`` and ``num_tiles`` (row tiles in the tile table). The
  engine derives ``groups`` products ``(m x k) @ (k x n)`` from it. A layer is *packed* (depthwise-like) when
  ``m == 1 and groups > 1``: then all its channels form one block of block-diagonal row tiles, else each group is
  a block. The engine chooses each block's loop order and operand reuse itself, by the rules of ``schedule``.
- **tiles** (uint32): per row tile, block by block in processing order,
  ``[tile bits, rows, channel_0 .. channel_{Dm-1}, bits_0 .. bits_{Dm-1}]``: the original output channel of each
  array row and its own weight bit-width (the per-channel bit-count table; unused slots ``NO_CHANNEL`` / 0).
- **weights** (uint64): per row tile, ``rows x tile bits x kwords*Dk/64`` words: each row's bit-planes at its own
  width (``pack_bitplanes``: the MSB plane of a row of ``b >= 2`` bits weighs ``-2^(b-1)``, a 1-bit row is binary
  {-1, +1}; planes above a row's width are zero). A packed tile's row ``s`` holds its channel's ``K`` weights at
  ``s*K .. (s+1)*K`` of ``K_eff = rows*K`` (zero bits elsewhere).
- **activations** (uint64): per block (per row tile when packed), ``n x abits x kwords*Dk/64`` words: column ``j``
  of the block's im2col matrix (packed: its channels' blocks stacked) as unsigned bit-planes.
- **results** (int32): ``(batch, c_out, out_h, out_w)``, original channel order (the engine undoes the grouping).

Imports only numpy and board-side modules: the driver on the board builds jobs with it.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from autoq.common.network import LayerSpec

from .bitserial import WORD_BITS, pack_bitplanes
from .driver import LayerJob
from .engine import im2col
from .manifest import ManifestError, OverlayConfig
from .schedule import PACKED_GROUPS, ScheduleParams, layer_tiles
from .tiling import OperandError

NO_CHANNEL = 0xFFFFFFFF
ROW_TILE_HEADER_WORDS = 2


def row_tile_words(dm: int) -> int:
    """uint32 words of one row-tile entry of the tile table."""
    return ROW_TILE_HEADER_WORDS + 2 * dm


class RowTile(NamedTuple):
    channels: np.ndarray  # original output channels, in array-row order
    bits: int  # planes the tile runs: the widest of its rows


class Block(NamedTuple):
    """Row tiles sharing one activation operand (a group), or all packed depthwise tiles (``group`` PACKED_GROUPS)."""

    group: int
    row_tiles: tuple[RowTile, ...]


def schedule_blocks(layer: LayerSpec, weight_bits: Sequence[int] | np.ndarray, act_bits: int, overlay: OverlayConfig,
                    batch: int) -> tuple[Block, ...]:
    """The schedule's blocks with their row tiles in processing order."""
    row_tiles: dict[int, dict[int, RowTile]] = {}
    for tile in layer_tiles(layer, weight_bits, act_bits, overlay, ScheduleParams(), batch):
        block = row_tiles.setdefault(tile.group, {})
        block.setdefault(int(tile.rows[0]), RowTile(tile.rows.astype(np.int64), tile.wbits))
    return tuple(Block(group, tuple(tiles.values())) for group, tiles in row_tiles.items())


def _kwords(k: int, dk: int) -> int:
    return -(-k // dk)


def check_overlay(overlay: OverlayConfig) -> None:
    """Raise ``ManifestError`` unless the engine's DDR layout works for ``overlay`` (Dk-bit words of uint64s)."""
    if overlay.dk % WORD_BITS:
        raise ManifestError(f"overlay {overlay.name!r}: the engine needs dk to be a multiple of {WORD_BITS}, "
                            f"got {overlay.dk}")


def _check_buffers(layer: LayerSpec, blocks: Sequence[Block], k: int, act_bits: int, overlay: OverlayConfig) -> None:
    for block in blocks:
        for tile in block.row_tiles:
            k_eff = k * tile.channels.size if block.group == PACKED_GROUPS else k
            kwords = _kwords(k_eff, overlay.dk)
            if kwords * tile.bits > overlay.lhs_mem_words or kwords * act_bits > overlay.rhs_mem_words:
                raise OperandError(
                    f"layer {layer.name!r}: a tile needs {kwords * tile.bits} weight and {kwords * act_bits} activation "
                    f"words of {overlay.dk} bits, the engine buffers hold {overlay.lhs_mem_words} and {overlay.rhs_mem_words}"
                )


def tile_table(blocks: Sequence[Block], weight_bits: np.ndarray, dm: int) -> np.ndarray:
    """The uint32 tile table of ``blocks`` (see the module docstring)."""
    entries = []
    for block in blocks:
        for tile in block.row_tiles:
            entry = np.zeros(row_tile_words(dm), dtype=np.uint32)
            rows = tile.channels.size
            entry[:ROW_TILE_HEADER_WORDS] = (tile.bits, rows)
            entry[ROW_TILE_HEADER_WORDS:ROW_TILE_HEADER_WORDS + dm] = NO_CHANNEL
            entry[ROW_TILE_HEADER_WORDS:ROW_TILE_HEADER_WORDS + rows] = tile.channels
            entry[ROW_TILE_HEADER_WORDS + dm:ROW_TILE_HEADER_WORDS + dm + rows] = weight_bits[tile.channels]
            entries.append(entry)
    return np.concatenate(entries)


def descriptor(layer: LayerSpec, act_bits: int, batch: int, num_tiles: int) -> dict[str, int]:
    """Descriptor register values of one layer run."""
    return {
        "c_in": layer.c_in, "c_out": layer.c_out, "groups": layer.groups, "kh": layer.kernel[0], "kw": layer.kernel[1],
        "stride_h": layer.stride[0], "stride_w": layer.stride[1], "pad_h": layer.padding[0], "pad_w": layer.padding[1],
        "in_h": layer.in_hw[0], "in_w": layer.in_hw[1], "out_h": layer.out_hw[0], "out_w": layer.out_hw[1],
        "batch": batch, "abits": act_bits, "num_tiles": num_tiles,
    }


def build_job(layer: LayerSpec, x_int: np.ndarray, w_int: np.ndarray, weight_bits: Sequence[int] | np.ndarray,
              act_bits: int, overlay: OverlayConfig) -> LayerJob:
    """The engine job of ``layer`` on unsigned ``x_int`` (B, c_in, H, W) (linear: (B, c_in)) with signed ``w_int``
    (c_out, c_in/groups, kh, kw) (linear: (c_out, c_in)) of per-channel ``weight_bits``."""
    check_overlay(overlay)
    x = np.asarray(x_int)
    if layer.kind == "linear" and x.ndim == 2:
        x = x[:, :, None, None]
    if x.ndim != 4 or x.shape[1:] != (layer.c_in, *layer.in_hw):
        raise OperandError(f"layer {layer.name!r}: input must be (batch, {layer.c_in}, {layer.in_hw[0]}, "
                           f"{layer.in_hw[1]}), got {np.shape(x_int)}")
    batch = x.shape[0]
    groups, m, k, n = layer.gemm(batch)
    w = np.asarray(w_int)
    if w.size != layer.c_out * k:
        raise OperandError(f"layer {layer.name!r}: weights must hold {layer.c_out} x {k} values, got shape {w.shape}")
    w = w.reshape(layer.c_out, k).astype(np.int64)
    bits = np.asarray(weight_bits, dtype=np.int64)
    blocks = schedule_blocks(layer, bits, act_bits, overlay, batch)
    _check_buffers(layer, blocks, k, act_bits, overlay)
    columns = im2col(x.astype(np.int64), layer)  # (groups, K, N)
    name = f"layer {layer.name!r}"
    weight_parts, act_parts = [], []
    for block in blocks:
        if block.group != PACKED_GROUPS:
            acts = pack_bitplanes(columns[block.group].T, act_bits, False, overlay.dk, f"{name}: activations")
            act_parts.append(acts.words)
        for tile in block.row_tiles:
            rows = tile.channels
            if block.group == PACKED_GROUPS:
                # outside its own span of K_eff a row holds bit code 0: value 0, or -1 for a binary {-1, +1} row
                diagonal = np.where(bits[rows, None] == 1, -1, 0) * np.ones((1, rows.size * k), dtype=np.int64)
                for s, channel in enumerate(rows):
                    diagonal[s, s * k:(s + 1) * k] = w[channel]
                values = diagonal
                stacked = columns[rows // m].reshape(rows.size * k, n)
                act_parts.append(pack_bitplanes(stacked.T, act_bits, False, overlay.dk, f"{name}: activations").words)
            else:
                values = w[rows]
            weight_parts.append(pack_bitplanes(values, bits[rows], True, overlay.dk, f"{name}: weights").words)
    buffers = {
        "weights": np.concatenate([p.reshape(-1) for p in weight_parts]).astype(np.uint64),
        "activations": np.concatenate([p.reshape(-1) for p in act_parts]).astype(np.uint64),
        "results": np.zeros((batch, layer.c_out, *layer.out_hw), dtype=np.int32),
        "tiles": tile_table(blocks, bits, overlay.dm),
    }
    num_tiles = sum(len(block.row_tiles) for block in blocks)
    return LayerJob(layer.name, descriptor(layer, act_bits, batch, num_tiles), buffers)
