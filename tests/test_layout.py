"""DDR layout of an engine job: the row tiles it packs are the schedule's, in the schedule's processing order."""
from __future__ import annotations

import numpy as np
import pytest

from autoq.common.network import LayerSpec
from autoq.overlay.layout import operand_layout, schedule_blocks
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
    rng = np.random.default_rng(layer.c_out)
    for batch, act_bits in ((1, 3), (3, 8)):
        bits = rng.integers(1, 9, layer.c_out)
        blocks = schedule_blocks(layer, bits, overlay)
        got = [(b.group, [(t.channels.tolist(), t.bits) for t in b.row_tiles]) for b in blocks]
        assert got == blocks_in_execution_order(layer, bits, act_bits, overlay, batch)


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
