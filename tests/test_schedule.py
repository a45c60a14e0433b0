"""The schedule model: tiles cover the layer exactly once, their cycles sum to the closed form, the stages behave."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoq.common.network import LayerSpec
from autoq.overlay.manifest import OverlayConfig, load_overlay
from autoq.overlay.tiling import OperandError, packed_row_bits
from autoq.overlay.schedule import (
    PACKED_GROUPS,
    STAGES,
    _block_starts,
    _run_starts,
    HistogramSchedule,
    LayerEntry,
    ScheduleError,
    ScheduleParams,
    layer_cycles,
    layer_tiles,
    network_cycles,
    sum_tiles,
    table_cycles,
    tile_table,
)

PARAMS = ScheduleParams(dram_efficiency=0.7, result_efficiency=1.3, layer_overhead_cycles=300.0, tile_overhead_cycles=3.5,
                        pass_overhead_cycles=1.5)
PER_IMAGE = ScheduleParams(**{**PARAMS.to_dict(), "per_image_convs": True})
PIPELINE = ScheduleParams(**{**PARAMS.to_dict(), "pipeline": True, "step_sync_cycles": 3.0, "row_tile_cycles": 7.0,
                             "row_cycles": 1.5, "write_slot_cycles": 2.0})


def small_overlay(**changes) -> OverlayConfig:
    base = load_overlay().with_changes(name="small", dm=4, dn=4, dk=64, lhs_mem_words=24, rhs_mem_words=40)
    return base.with_changes(**changes) if changes else base


@st.composite
def layers_and_bits(draw):
    kind = draw(st.sampled_from(["conv", "depthwise", "linear", "grouped"]))
    if kind == "linear":
        layer = LayerSpec("l", "linear", draw(st.integers(1, 300)), draw(st.integers(1, 40)))
    else:
        groups = 1
        if kind == "depthwise":
            groups = c_in = c_out = draw(st.integers(2, 20))
        elif kind == "grouped":
            groups = draw(st.integers(2, 4))
            c_in, c_out = groups * draw(st.integers(1, 6)), groups * draw(st.integers(2, 6))
            kind = "conv"
        else:
            c_in, c_out = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        k, hw = draw(st.integers(1, 3)), draw(st.integers(1, 9))
        layer = LayerSpec("l", kind, c_in, c_out, k, 1, k // 2, groups, (hw, hw), (hw, hw))
    bits = draw(st.lists(st.integers(1, 8), min_size=layer.c_out, max_size=layer.c_out))
    return layer, np.array(bits), draw(st.integers(1, 8)), draw(st.integers(1, 3)), draw(st.booleans())


@settings(max_examples=80, deadline=None)
@given(layers_and_bits(), st.sampled_from([small_overlay(), small_overlay(lhs_mem_words=8, rhs_mem_words=8), load_overlay()]),
       st.sampled_from([PARAMS, PER_IMAGE]))
def test_tiles_sum_to_closed_form_and_cover_layer_once(case, overlay, params):
    layer, bits, abits, batch, grouped = case
    tiles = list(layer_tiles(layer, bits, abits, overlay, params, batch=batch, grouped=grouped))
    closed = layer_cycles(layer, bits, abits, overlay, params, batch=batch, grouped=grouped)
    assert sum_tiles(tiles, params)[:6] == closed[:6]
    n = layer.gemm(batch).n
    covered = np.zeros((layer.c_out, n), dtype=np.int64)
    m = layer.c_out // layer.groups
    for tile in tiles:
        assert 1 <= len(tile.rows) <= overlay.dm and 0 <= tile.col_start < tile.col_stop <= n
        assert tile.col_stop - tile.col_start <= overlay.dn
        widest = bits[tile.rows].max()
        assert tile.wbits == (packed_row_bits(widest) if tile.group == PACKED_GROUPS else widest) and tile.abits == abits
        if tile.group == PACKED_GROUPS:
            assert m == 1 and layer.groups > 1
        else:
            assert set((tile.rows // m).tolist()) == {tile.group}
        covered[np.ix_(tile.rows, np.arange(tile.col_start, tile.col_stop))] += 1
    assert (covered == 1).all()


def test_execute_stage_matches_bismo_formula():
    overlay = small_overlay(lhs_mem_words=4096, rhs_mem_words=4096)
    layer = LayerSpec("c", "conv", 16, 10, 3, 1, 1, 1, (6, 6), (6, 6))  # M=10, K=144, N=36*2
    cycles = layer_cycles(layer, [5] * 10, 3, overlay, PARAMS, batch=2)
    row_tiles, col_tiles, kwords = 3, 18, 3
    assert cycles.execute == row_tiles * col_tiles * int(np.ceil((kwords + PARAMS.pass_overhead_cycles) * 5 * 3))
    assert cycles.overhead == int(np.ceil(PARAMS.layer_overhead_cycles + row_tiles * col_tiles * PARAMS.tile_overhead_cycles))
    assert cycles.total == max(cycles.fetch, cycles.execute, cycles.result) + cycles.overhead
    # everything fits the buffers: every weight and activation bit moves exactly once
    expected_bytes = 10 * kwords * 64 * 5 / 8 + 72 * kwords * 64 * 3 / 8 + 10 * 72 * overlay.acc_bits / 8
    assert cycles.dram_bytes == expected_bytes


def test_per_image_lowering_repeats_conv_products_but_batches_linear_layers():
    overlay = small_overlay()
    conv = LayerSpec("c", "conv", 8, 8, 3, 1, 1, 1, (5, 5), (5, 5))  # 25 columns per image: a partial tile each
    one = layer_cycles(conv, [4] * 8, 4, overlay, PER_IMAGE, batch=1)
    three = layer_cycles(conv, [4] * 8, 4, overlay, PER_IMAGE, batch=3)
    assert three.execute == 3 * one.execute and three.fetch == 3 * one.fetch
    assert three.execute > layer_cycles(conv, [4] * 8, 4, overlay, PARAMS, batch=3).execute  # 3 partial tiles, not 1
    starts = [t.col_start for t in layer_tiles(conv, [4] * 8, 4, overlay, PER_IMAGE, batch=2)]
    assert starts == sorted(starts, key=lambda s: s // 25) and 25 in starts
    fc = LayerSpec("fc", "linear", 64, 10)
    assert layer_cycles(fc, [4] * 10, 4, overlay, PER_IMAGE, batch=8) == layer_cycles(fc, [4] * 10, 4, overlay, PARAMS, batch=8)


def test_small_buffers_refetch_and_cost_more():
    layer = LayerSpec("c", "conv", 64, 32, 3, 1, 1, 1, (8, 8), (8, 8))
    roomy = layer_cycles(layer, [8] * 32, 8, small_overlay(lhs_mem_words=4096, rhs_mem_words=4096), PARAMS)
    tight = layer_cycles(layer, [8] * 32, 8, small_overlay(lhs_mem_words=16, rhs_mem_words=16), PARAMS)
    assert tight.dram_bytes > 2 * roomy.dram_bytes and tight.fetch > 2 * roomy.fetch
    assert tight.execute == roomy.execute


def test_depthwise_and_classifier_are_memory_bound():
    overlay = load_overlay()
    dw = LayerSpec("dw", "depthwise", 96, 96, 3, 2, 1, 96, (112, 112), (56, 56))
    fc = LayerSpec("fc", "linear", 512, 1000)
    for layer in (dw, fc):
        low = layer_cycles(layer, [2] * layer.c_out, 2, overlay, PARAMS)
        high = layer_cycles(layer, [8] * layer.c_out, 8, overlay, PARAMS)
        assert high.bound == "fetch"
        assert high.total / low.total < 0.5 * 16  # far below the wbits*abits ratio


def test_depthwise_channels_are_packed_into_row_tiles():
    overlay = load_overlay()
    dw = LayerSpec("dw", "depthwise", 32, 32, 3, 1, 1, 32, (10, 10), (10, 10))
    tiles = list(layer_tiles(dw, [4] * 32, 4, overlay, PARAMS))
    assert {len(t.rows) for t in tiles} == {overlay.dm} and {t.group for t in tiles} == {PACKED_GROUPS}
    assert len(tiles) == (32 // overlay.dm) * -(-100 // overlay.dn)


def test_grouping_by_bits_beats_natural_order():
    overlay = load_overlay()
    layer = LayerSpec("c", "conv", 64, 64, 3, 1, 1, 1, (14, 14), (14, 14))
    bits = np.tile([2, 8], 32)  # alternating: every natural-order tile contains an 8-bit kernel
    grouped = layer_cycles(layer, bits, 4, overlay, PARAMS, grouped=True)
    natural = layer_cycles(layer, bits, 4, overlay, PARAMS, grouped=False)
    assert grouped.execute < 0.7 * natural.execute
    low = layer_cycles(layer, [2] * 64, 4, overlay, PARAMS)
    high = layer_cycles(layer, [8] * 64, 4, overlay, PARAMS)
    assert low.total < grouped.total < high.total


def test_mixed_bits_cost_between_min_and_max_bits():
    overlay = load_overlay()
    layer = LayerSpec("c", "conv", 128, 128, 3, 1, 1, 1, (28, 28), (28, 28))
    rng = np.random.default_rng(1)
    bits = rng.integers(3, 7, 128)
    mixed = layer_cycles(layer, bits, 6, overlay, PARAMS)
    assert layer_cycles(layer, [3] * 128, 6, overlay, PARAMS).total < mixed.total
    assert mixed.total < layer_cycles(layer, [6] * 128, 6, overlay, PARAMS).total


@pytest.mark.parametrize(
    "bits, abits, batch, error, message",
    [
        ([4] * 3, 4, 1, ScheduleError, "3 weight bit-widths for 8 output channels"),
        ([4] * 8, 9, 1, ScheduleError, "act_bits must be an int in"),
        ([4] * 8, 4, 0, ScheduleError, "batch must be a positive int"),
        ([0] + [4] * 7, 4, 1, OperandError, r"layer 'c': weight_bits\[0\] = 0 is outside \[1, 8\]"),
        ([9] + [4] * 7, 4, 1, OperandError, r"weight_bits\[0\] = 9 is outside \[1, 8\]"),
        ([4.0] * 8, 4, 1, OperandError, "must hold integers"),
    ],
)
def test_bad_input(bits, abits, batch, error, message):
    layer = LayerSpec("c", "conv", 4, 8, 1)
    with pytest.raises(error, match=message):
        layer_cycles(layer, bits, abits, load_overlay(), PARAMS, batch=batch)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(dram_efficiency=0.0), "dram_efficiency"), (dict(tile_overhead_cycles=-1.0), ">= 0"),
     (dict(pass_overhead_cycles=float("nan")), "finite")],
)
def test_bad_params(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        ScheduleParams(**kwargs)
    with pytest.raises(ScheduleError, match="unknown schedule parameters"):
        ScheduleParams.from_dict({"dram_eff": 1.0})
    assert ScheduleParams.from_dict(PARAMS.to_dict()) == PARAMS


def test_network_table_matches_layer_by_layer_and_relaxation_is_close():
    overlay = small_overlay()
    rng = np.random.default_rng(5)
    layers = [LayerSpec("a", "conv", 8, 12, 3, 1, 1, 1, (7, 7), (7, 7)),
              LayerSpec("b", "depthwise", 12, 12, 3, 2, 1, 12, (7, 7), (4, 4)),
              LayerSpec("c", "linear", 192, 10)]
    entries = [LayerEntry(l, rng.integers(1, 9, l.c_out), int(rng.integers(1, 9))) for l in layers]
    for params in (PARAMS, PER_IMAGE):
        together = network_cycles(entries, overlay, params, batch=2)
        assert together == [layer_cycles(e.layer, e.weight_bits, e.act_bits, overlay, params, batch=2) for e in entries]
        table = tile_table(entries, overlay, 2, True, params.per_image_convs)
        exact, relaxed = table_cycles(table, overlay, params), table_cycles(table, overlay, params, relaxed=True)
        assert np.all(np.abs(relaxed.total / exact.total - 1) < 0.1)
    with pytest.raises(ScheduleError, match="per_image_convs=False but the parameters say True"):
        table_cycles(tile_table(entries, overlay, 2), overlay, PER_IMAGE)
    with pytest.raises(ScheduleError, match="no layers to schedule"):
        network_cycles([], overlay, PARAMS)


@st.composite
def wide_convs(draw):
    """Convs of many row tiles on many column tiles: weight-stationary runs refetch activations."""
    c_out, hw = draw(st.integers(12, 64)), draw(st.integers(3, 12))
    layer = LayerSpec("w", "conv", draw(st.integers(4, 48)), c_out, 3, 1, 1, 1, (hw, hw), (hw, hw))
    bits = draw(st.lists(st.integers(1, 8), min_size=c_out, max_size=c_out))
    return layer, np.array(bits), draw(st.integers(1, 8)), draw(st.integers(1, 3)), True


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(layers_and_bits(), wide_convs()), min_size=1, max_size=4),
       st.sampled_from([small_overlay(), small_overlay(lhs_mem_words=8, rhs_mem_words=8), load_overlay()]),
       st.sampled_from([PARAMS, PER_IMAGE, PIPELINE, ScheduleParams(**{**PIPELINE.to_dict(), "per_image_convs": True})]))
def test_histogram_schedule_equals_the_tiles_it_summarises(cases, overlay, params):
    """The histogram path (probes, tile counts, greedy runs from counts) against the layer's explicit tiles."""
    layers = [case[0] for case in cases]
    bits, abits, batch = [case[1] for case in cases], np.array([case[2] for case in cases]), cases[0][3]
    cycles = HistogramSchedule(layers, overlay, params, batch).cycles(np.concatenate(bits), abits)
    for i, (layer, b, a) in enumerate(zip(layers, bits, abits.tolist())):
        tiles = sum_tiles(layer_tiles(layer, b, a, overlay, params, batch=batch), params)
        closed = layer_cycles(layer, b, a, overlay, params, batch=batch)
        assert [int(f[i]) for f in cycles[:5]] == list(tiles[:5]) and cycles.bound[i] == STAGES.index(tiles.bound)
        assert (int(cycles.dram_bytes[i]), int(cycles.binary_ops[i])) == (closed.dram_bytes, closed.binary_ops)


def test_histogram_schedule_walks_weight_stationary_runs():
    """A block whose weights do not fit the lhs buffer together, weight-stationary runs refetching activations: the
    last tile alone starts the second run (9 tiles of 8 bits, 7 of 5, 5 words per bit, 512 words)."""
    layer = LayerSpec("c", "conv", 128, 128, 3, 1, 1, 1, (28, 28), (28, 28))
    bits = np.repeat([8, 5], [72, 56])
    for params in (PARAMS, PIPELINE):
        cycles = HistogramSchedule([layer], load_overlay(), params).cycles(bits, np.array([3]))
        assert [int(f[0]) for f in cycles[:5]] == list(layer_cycles(layer, bits, 3, load_overlay(), params)[:5])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=60), st.integers(1, 30), st.integers(1, 300))
def test_runs_from_tile_counts_are_the_greedy_cut(widths, words, capacity):
    """``_run_starts`` (from counts per width) finds the run starts ``_block_starts`` cuts tile by tile."""
    widths = sorted(widths, reverse=True)
    cut = _block_starts(np.array(widths) * words, np.zeros(len(widths), dtype=np.int64), capacity, np.array([True]))
    expected = [0] * 16
    for t in range(1, len(widths)):
        if cut[t]:
            expected[8 - widths[t] + (8 if t == len(widths) - 1 else 0)] += 1
    assert _run_starts([sum(w >= b for w in widths) for b in range(8, 0, -1)], words, capacity) == expected
