"""DDR layout of an engine job: the row tiles it packs are the schedule's, in the schedule's processing order."""
from __future__ import annotations

import numpy as np
import pytest

from autoq.common.network import LayerSpec
from autoq.overlay.bitserial import BitPlanes, unpack_bitplanes
from autoq.overlay.layout import (
    NO_CHANNEL,
    build_job,
    operand_layout,
    row_tile_words,
    schedule_blocks,
    stored_weight_bits,
    timing_job,
)
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import PACKED_GROUPS, ScheduleParams, layer_tiles
from autoq.overlay.tiling import OperandError

from boardkit import MINI_MOBILENET, TINY

PYNQ = load_overlay("pynq_z1")
TIGHT = PYNQ.with_changes(name="tight", dm=4, dn=4, dk=64, lhs_mem_words=16, rhs_mem_words=16)
LAYERS = TINY.layers + MINI_MOBILENET.layers + (LayerSpec("wide", "conv", 64, 200, 3, 1, 1, 4, (10, 10), (10, 10)),)


def blocks_in_execution_order(layer, bits, act_bits, overlay, batch):
    """(group, [(channels, bits), ...]) per block, each row tile once, as ``layer_tiles`` first reaches it."""
    blocks: dict[int, dict[int, tuple[list[int], int]]] = {}
    for tile in layer_tiles(layer, bits, act_bits, overlay, ScheduleParams(), batch):
        blocks.setdefault(tile.group, {}).setdefault(int(tile.rows[0]), (tile.rows.tolist(), tile.wbits))
    return [(group, list(tiles.values())) for group, tiles in blocks.items()]


@pytest.mark.parametrize("overlay", [PYNQ, TIGHT], ids=lambda o: o.name)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: l.name)
def test_schedule_blocks_are_the_row_tiles_layer_tiles_executes(layer, overlay):
    """... at the widths the layout stores (a packed layer's binary channels as 2-bit rows, which also moves them
    among the 2-bit channels: the schedule must tile packed layers on ``stored_weight_bits`` too)."""
    rng = np.random.default_rng(layer.c_out)
    for batch, act_bits in ((1, 3), (3, 8)):
        bits = rng.integers(1, 9, layer.c_out)
        blocks = schedule_blocks(layer, bits, overlay)
        got = [(b.group, [(t.channels.tolist(), t.bits) for t in b.row_tiles]) for b in blocks]
        stored = stored_weight_bits(layer, bits)
        assert got == blocks_in_execution_order(layer, stored, act_bits, overlay, batch)


def test_operand_layout_places_operands_back_to_back():
    layer = TINY["dw"]
    blocks = schedule_blocks(layer, np.arange(layer.c_out) % 8 + 1, PYNQ)
    layout = operand_layout(layer, blocks, 4, 2, PYNQ.dk)
    assert blocks[0].group == PACKED_GROUPS
    for buffer, total in (("weights", layout.weight_words), ("activations", layout.activation_words)):
        placed = [op for op in layout.operands if op.buffer == buffer]
        assert [op.offset for op in placed] == list(np.cumsum([0] + [op.words for op in placed[:-1]]))
        assert sum(op.words for op in placed) == total
    # packed: one weight and one activation operand per row tile, K_eff = rows * K
    weights = [op for op in layout.operands if op.buffer == "weights"]
    assert [op.k for op in weights] == [op.rows * layer.kernel_size for op in weights]
    assert len(layout.operands) == 2 * len(blocks[0].row_tiles)


def test_schedule_blocks_names_bad_bit_widths():
    with pytest.raises(OperandError, match=r"layer 'conv1': weight_bits\[2\] = 9 is outside \[1, 8\]"):
        schedule_blocks(TINY["conv1"], [4, 4, 9, 4, 4, 4, 4, 4], PYNQ)
    with pytest.raises(OperandError, match="layer 'conv1': 3 weight bit-widths for 8 output channels"):
        schedule_blocks(TINY["conv1"], [4, 4, 4], PYNQ)


def test_packed_binary_rows_are_stored_as_two_bit_rows():
    """In a packed tile a binary row is 2-bit two's complement: plane 0 set inside its K span, plane 1 where the
    weight is -1, nothing outside; the table says 2. Binary rows of an unpacked layer stay 1-bit."""
    dw = LayerSpec("dw", "depthwise", 5, 5, 3, 1, 1, 5, (4, 4), (4, 4))
    bits = np.array([1, 3, 1, 2, 1])
    rng = np.random.default_rng(0)
    w = np.stack([rng.choice([-1, 1], (1, 3, 3)) if b == 1 else rng.integers(-(1 << (b - 1)), 1 << (b - 1), (1, 3, 3))
                  for b in bits])
    x = rng.integers(0, 4, (1, 5, 4, 4))
    assert stored_weight_bits(dw, bits).tolist() == [2, 3, 2, 2, 2]
    job = build_job(dw, x, w, bits, 2, TIGHT)
    entries = job.buffers["tiles"].reshape(-1, row_tile_words(TIGHT.dm)).astype(np.int64)
    # stored widths, widest first, then channel order: binary channels 0, 2, 4 sort with 2-bit channel 3
    assert entries[:, :2].tolist() == [[3, 4], [2, 1]]
    assert entries[0, 2:].tolist() == [1, 0, 2, 3, 3, 2, 2, 2]
    assert entries[1, 2:].tolist() == [4] + [NO_CHANNEL] * 3 + [2, 0, 0, 0]
    k = dw.kernel_size
    blocks = schedule_blocks(dw, bits, TIGHT)
    weights = [op for op in operand_layout(dw, blocks, 2, 1, TIGHT.dk).operands if op.buffer == "weights"]
    flat = w.reshape(5, k)
    for op in weights:
        words = job.buffers["weights"][op.offset:op.offset + op.words].reshape(op.rows, op.planes, -1)
        raw = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[..., :op.k]
        for s, channel in enumerate(op.tile.channels):
            span = np.zeros(op.k, dtype=bool)
            span[s * k:(s + 1) * k] = True
            if bits[channel] == 1:
                assert (raw[s, 0] == span).all() and not raw[s, 2:].any()
                assert (raw[s, 1][span] == (flat[channel] == -1)).all() and not raw[s, 1][~span].any()
            else:
                assert not raw[s][:, ~span].any()
        # what the emulated device decodes with the table's widths: the weights inside each span, 0 outside
        values = unpack_bitplanes(BitPlanes(words, stored_weight_bits(dw, bits)[op.tile.channels], True, op.k))
        for s, channel in enumerate(op.tile.channels):
            expected = np.zeros(op.k, dtype=np.int64)
            expected[s * k:(s + 1) * k] = flat[channel]
            assert (values[s] == expected).all()
    conv = LayerSpec("conv", "conv", 4, 2, 3, 1, 1, 2, (4, 4), (4, 4))  # m = 1 per group but 2 groups: packed
    assert stored_weight_bits(conv, [1, 1]).tolist() == [2, 2]
    conv = LayerSpec("conv", "conv", 4, 4, 3, 1, 1, 2, (4, 4), (4, 4))  # m = 2: one block per group, binary rows
    assert stored_weight_bits(conv, [1, 5, 1, 1]).tolist() == [1, 5, 1, 1]
    assert timing_job(conv, [1, 5, 1, 1], 2, TIGHT, 1).buffers["tiles"][2 + TIGHT.dm:][:2].tolist() == [5, 1]
