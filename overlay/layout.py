"""DDR layout of one engine run: the ``LayerJob`` the host hands the engine (``hls/rtl``) through the driver.

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
  ``s*K .. (s+1)*K`` of ``K_eff = rows*K`` (zero bits elsewhere: value 0).
- **packed binary rows**: a binary row's ``{-1, +1}`` has no code for the 0 outside its span, so in a packed layer
  a 1-bit channel is stored and run as a 2-bit two's complement row (``stored_weight_bits``: plane 0 set inside the
  span, plane 1 set where the weight is -1, both zero outside) and the tile table records 2 for it. The packed
  layer is tiled on these stored widths (``schedule_blocks``): its tiles run ``max(2, ...)`` planes, and 1- and
  2-bit channels sort as equals (channel order). The results are the same; the engine never sees a 1-bit row
  in a packed tile (a table with one is not this layout's: ``BAD_TABLE``).
- **activations** (uint64): per block (per row tile when packed), ``n x abits x kwords*Dk/64`` words: column ``j``
  of the block's im2col matrix (packed: its channels' blocks stacked) as unsigned bit-planes.
- **results** (int32): ``(batch, c_out, out_h, out_w)``, original channel order (the engine undoes the grouping).

Imports only numpy and board-side modules: the driver on the board builds jobs with it.
"""
from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import numpy as np

from autoq.common.network import LayerSpec

from .bitserial import WORD_BITS, pack_bitplanes, padded_words
from .driver import LayerJob
from .engine import im2col
from .manifest import ManifestError, OverlayConfig
from .schedule import PACKED_GROUPS
from .tiling import OperandError, check_bit_widths, packed_row_bits, tile_rows

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


def is_packed(layer: LayerSpec) -> bool:
    """Whether ``layer`` runs as one block of packed (block-diagonal) row tiles: ``m == 1`` and ``groups > 1``."""
    return layer.c_out // layer.groups == 1 and layer.groups > 1


def stored_weight_bits(layer: LayerSpec, weight_bits: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per output channel, the width its weights are stored and run at: its own, except a binary (1-bit) channel
    of a packed layer, stored as a 2-bit two's complement row (see the module docstring)."""
    bits = np.asarray(weight_bits, dtype=np.int64)
    return packed_row_bits(bits) if is_packed(layer) else bits


def schedule_blocks(layer: LayerSpec, weight_bits: Sequence[int] | np.ndarray,
                    overlay: OverlayConfig) -> tuple[Block, ...]:
    """The schedule's blocks with their row tiles in processing order.

    Cut as ``schedule.layer_tiles`` cuts them (``tiling.tile_rows`` per group, or once over all channels of a
    packed depthwise-like layer, on their ``stored_weight_bits``), whose loops first reach every block's row tiles
    in this order (``tests/test_layout.py`` holds the two to each other).
    """
    bits = check_bit_widths(weight_bits, f"layer {layer.name!r}: weight_bits", overlay.max_bits)
    if bits.size != layer.c_out:
        raise OperandError(f"layer {layer.name!r}: {bits.size} weight bit-widths for {layer.c_out} output channels")
    groups, m = layer.groups, layer.c_out // layer.groups
    packed = is_packed(layer)
    bits = stored_weight_bits(layer, bits)
    blocks = []
    for group, first in [(PACKED_GROUPS, 0)] if packed else [(g, g * m) for g in range(groups)]:
        tiling = tile_rows(bits if packed else bits[first:first + m], overlay.dm)
        channels = np.split(tiling.order + first, np.cumsum(tiling.tile_rows)[:-1])
        blocks.append(Block(group, tuple(RowTile(c, int(b)) for c, b in zip(channels, tiling.tile_bits))))
    return tuple(blocks)


class Operand(NamedTuple):
    """One packed operand of a job, in DDR order: ``rows`` rows of ``planes`` bit-planes over ``k`` values
    (``padded_words(k, dk)`` uint64 words per plane), ``words`` words from word ``offset`` of its ``buffer``.

    Weights are one row tile's (``tile``); activations are a group's im2col columns (``tile`` None) or, in a packed
    block, the stacked columns of ``tile``'s channels.
    """

    buffer: Literal["weights", "activations"]
    group: int
    tile: RowTile | None
    rows: int
    planes: int
    k: int
    offset: int
    words: int


class OperandLayout(NamedTuple):
    """Every operand of a job in DDR order, and the uint64 words of the weight and activation buffers."""

    operands: tuple[Operand, ...]
    weight_words: int
    activation_words: int


def operand_layout(layer: LayerSpec, blocks: Sequence[Block], act_bits: int, batch: int, dk: int) -> OperandLayout:
    """Where each operand of ``blocks`` lies in the weight and activation buffers (see the module docstring)."""
    _, _, k, n = layer.gemm(batch)
    used = {"weights": 0, "activations": 0}
    operands = []

    def add(buffer: Literal["weights", "activations"], group: int, tile: RowTile | None, rows: int, planes: int,
            k_eff: int) -> None:
        words = rows * planes * padded_words(k_eff, dk)
        operands.append(Operand(buffer, group, tile, rows, planes, k_eff, used[buffer], words))
        used[buffer] += words

    for block in blocks:
        packed = block.group == PACKED_GROUPS
        if not packed:
            add("activations", block.group, None, n, act_bits, k)
        for tile in block.row_tiles:
            k_eff = k * tile.channels.size if packed else k
            add("weights", block.group, tile, tile.channels.size, tile.bits, k_eff)
            if packed:
                add("activations", block.group, tile, n, act_bits, k_eff)
    return OperandLayout(tuple(operands), used["weights"], used["activations"])


def check_overlay(overlay: OverlayConfig) -> None:
    """Raise ``ManifestError`` unless the engine's DDR layout works for ``overlay`` (Dk-bit words of uint64s)."""
    if overlay.dk % WORD_BITS:
        raise ManifestError(f"overlay {overlay.name!r}: dk={overlay.dk} must be a multiple of the {WORD_BITS}-bit DDR "
                            "word (the engine packs bit-planes into uint64 words)")


def _check_buffers(layer: LayerSpec, layout: OperandLayout, act_bits: int, overlay: OverlayConfig) -> None:
    for operand in layout.operands:
        kwords = -(-operand.k // overlay.dk)
        if operand.buffer == "weights" and (kwords * operand.planes > overlay.lhs_mem_words
                                            or kwords * act_bits > overlay.rhs_mem_words):
            raise OperandError(
                f"layer {layer.name!r}: a tile needs {kwords * operand.planes} weight and {kwords * act_bits} activation "
                f"words of {overlay.dk} bits, the engine buffers hold {overlay.lhs_mem_words} and {overlay.rhs_mem_words}"
            )


def tile_table(blocks: Sequence[Block], weight_bits: np.ndarray, dm: int) -> np.ndarray:
    """The uint32 tile table of ``blocks`` (see the module docstring); ``weight_bits``: the channels'
    ``stored_weight_bits``."""
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


def _job(layer: LayerSpec, blocks: Sequence[Block], weight_bits: np.ndarray, act_bits: int, batch: int, dm: int,
         weights: np.ndarray, activations: np.ndarray) -> LayerJob:
    buffers = {
        "weights": weights,
        "activations": activations,
        "results": np.zeros((batch, layer.c_out, *layer.out_hw), dtype=np.int32),
        "tiles": tile_table(blocks, weight_bits, dm),
    }
    num_tiles = sum(len(block.row_tiles) for block in blocks)
    return LayerJob(layer.name, descriptor(layer, act_bits, batch, num_tiles), buffers)


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
    _, m, k, n = layer.gemm(batch)
    w = np.asarray(w_int)
    if w.size != layer.c_out * k:
        raise OperandError(f"layer {layer.name!r}: weights must hold {layer.c_out} x {k} values, got shape {w.shape}")
    w = w.reshape(layer.c_out, k).astype(np.int64)
    bits = np.asarray(weight_bits, dtype=np.int64)
    blocks = schedule_blocks(layer, bits, overlay)
    bits = stored_weight_bits(layer, bits)
    layout = operand_layout(layer, blocks, act_bits, batch, overlay.dk)
    _check_buffers(layer, layout, act_bits, overlay)
    columns = im2col(x.astype(np.int64), layer)  # (groups, K, N)
    buffers = {"weights": np.zeros(layout.weight_words, np.uint64),
               "activations": np.zeros(layout.activation_words, np.uint64)}
    for operand in layout.operands:
        if operand.buffer == "weights":
            assert operand.tile is not None  # a weights operand is always one row tile's
            rows = operand.tile.channels
            if operand.group == PACKED_GROUPS:
                # a row is 0 outside its own span of K_eff (its binary weights are stored as 2-bit values)
                values = np.zeros((rows.size, operand.k), dtype=np.int64)
                for s, channel in enumerate(rows):
                    values[s, s * k:(s + 1) * k] = w[channel]
            else:
                values = w[rows]
            planes = pack_bitplanes(values, bits[rows], True, overlay.dk, f"layer {layer.name!r}: weights")
        else:
            if operand.tile is None:
                values = columns[operand.group].T
            else:
                values = columns[operand.tile.channels // m].reshape(operand.k, n).T
            planes = pack_bitplanes(values, act_bits, False, overlay.dk, f"layer {layer.name!r}: activations")
        buffers[operand.buffer][operand.offset:operand.offset + operand.words] = planes.words.reshape(-1)
    return _job(layer, blocks, bits, act_bits, batch, overlay.dm, buffers["weights"], buffers["activations"])


class TimingShape(NamedTuple):
    """What ``timing_job`` will pack for one layer, worked out before any buffer exists (so a caller can bound it)."""

    layer: LayerSpec
    weight_bits: np.ndarray  # the channels' stored_weight_bits (what the tile table records)
    act_bits: int
    batch: int
    blocks: tuple[Block, ...]
    layout: OperandLayout
    dm: int

    @property
    def nbytes(self) -> int:
        """DDR bytes of the job's four buffers (weights, activations, results, tile table)."""
        oh, ow = self.layer.out_hw
        tiles = sum(len(block.row_tiles) for block in self.blocks)
        return (8 * (self.layout.weight_words + self.layout.activation_words)
                + 4 * self.batch * self.layer.c_out * oh * ow + 4 * tiles * row_tile_words(self.dm))

    def job(self) -> LayerJob:
        return _job(self.layer, self.blocks, self.weight_bits, self.act_bits, self.batch, self.dm,
                    np.zeros(self.layout.weight_words, np.uint64), np.zeros(self.layout.activation_words, np.uint64))


def timing_shape(layer: LayerSpec, weight_bits: Sequence[int] | np.ndarray, act_bits: int, overlay: OverlayConfig,
                 batch: int) -> TimingShape:
    """The blocks, operand layout and DDR bytes of ``timing_job``, without allocating its buffers."""
    blocks = schedule_blocks(layer, weight_bits, overlay)
    bits = stored_weight_bits(layer, weight_bits)
    layout = operand_layout(layer, blocks, act_bits, batch, overlay.dk)
    return TimingShape(layer, bits, act_bits, batch, blocks, layout, overlay.dm)


def timing_job(layer: LayerSpec, weight_bits: Sequence[int] | np.ndarray, act_bits: int, overlay: OverlayConfig,
               batch: int) -> LayerJob:
    """A ``LayerJob`` with the descriptor and tile table of ``build_job`` and zeroed operand buffers of the sizes it
    packs: what a cost measurement runs (the engine's timing does not depend on operand values)."""
    return timing_shape(layer, weight_bits, act_bits, overlay, batch).job()
