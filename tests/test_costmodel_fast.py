"""The fast cost model (histograms through ``schedule.HistogramSchedule``) equals the direct one on random
kernel-wise plans in both schedule models, and plan hashes equal the JSON formula stored plan files and traces carry."""
import dataclasses
import hashlib
import json
import pickle

import numpy as np
import pytest

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.common.errors import PlanError
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.models.resolve import spec_for
from autoq.overlay.calibration_params import load_default_calibration
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import (HistogramSchedule, LayerEntry, ScheduleError, ScheduleParams, TableCycles,
                                    _chunk_starts, _layout_and_table, _walk_chunks, table_cycles, tile_table)
from autoq.overlay.tiling import OperandError, grouped_tiles_at_least, tile_rows


def random_plans(network, count, seed, low=1):
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(count):
        layers = []
        for layer in network.layers:
            palette = rng.choice(np.arange(low, 9), size=int(rng.integers(1, 4)), replace=False)  # few or many widths
            layers.append(LayerPlan(layer.name, tuple(int(b) for b in rng.choice(palette, layer.c_out)), int(rng.integers(1, 9))))
        plans.append(QuantPlan(tuple(layers)))
    return plans


def grouped_net():
    return NetworkSpec("grouped", (LayerSpec("g", "conv", 32, 48, 3, 1, 1, 4, (16, 16), (16, 16)),
                                   LayerSpec("fc", "linear", 48, 10)), (32, 16, 16))


def calibrations():
    """The bundled calibration and the same with the stage-total schedule model (published-figure parameters)."""
    params = load_default_calibration()
    return [params, dataclasses.replace(params, schedule=ScheduleParams(pipeline=not params.schedule.pipeline))]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "digits", "grouped"])
def test_measure_equals_the_direct_path_on_random_kernel_wise_plans(arch):
    network = grouped_net() if arch == "grouped" else spec_for(arch)
    overlay = load_overlay()
    for params in calibrations():
        model = AnalyticCostModel(overlay, params)  # one model: its schedule serves later plans
        for batch in (1, 3):
            for plan in random_plans(network, 4, seed=batch):
                fast = model.measure(network, plan, batch)
                direct = AnalyticCostModel(overlay, params).measure_direct(network, plan, batch)
                assert dataclasses.replace(fast, provenance=direct.provenance) == direct
                assert fast.latency_s == direct.latency_s and fast.energy_j == direct.energy_j  # bit for bit


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "grouped"])
def test_measure_many_equals_measure_plan_by_plan(arch, monkeypatch):
    import autoq.calibration.costmodel as costmodel
    monkeypatch.setattr(costmodel, "MANY", 4)  # 7 plans: a pass of 4 copies, then one of 3 padded to 4
    network = grouped_net() if arch == "grouped" else spec_for(arch)
    overlay = load_overlay()
    stamp = lambda m: dataclasses.replace(m, provenance=dataclasses.replace(m.provenance, timestamp=0.0))
    for params in calibrations():
        for batch in (1, 2):
            plans = random_plans(network, 7, seed=batch)
            model = AnalyticCostModel(overlay, params)
            many = model.measure_many(network, plans, batch)
            assert [stamp(m) for m in many] == [stamp(model.measure(network, plan, batch)) for plan in plans]
            assert {copies for _, _, copies in model._schedules} == {1, 4}
    assert AnalyticCostModel(overlay, params).measure_many(network, []) == []


def test_measure_many_takes_the_direct_path_for_a_plan_the_histograms_do_not_serve():
    network = grouped_net()
    model = AnalyticCostModel(load_overlay(), load_default_calibration())
    plans = random_plans(network, 3, seed=0)
    many = model.measure_many(network, plans, grouped=False)
    assert [m.latency_s for m in many] == [model.measure_direct(network, p, grouped=False).latency_s for p in plans]
    assert not model._schedules
    model.overlay = dataclasses.replace(model.overlay, max_bits=4)
    with pytest.raises(OperandError, match=r"weight_bits\[0\] = 8 is outside \[1, 4\]"):
        model.measure_many(network, [QuantPlan.uniform(network, 3, 3), QuantPlan.uniform(network, 8, 3)])


def test_bits_the_overlay_cannot_run_raise_as_before():
    network = grouped_net()
    overlay = load_overlay()
    model = AnalyticCostModel(overlay, load_default_calibration())
    plan = QuantPlan.uniform(network, 8, 8)
    narrow = dataclasses.replace(overlay, max_bits=4)
    model.overlay = narrow
    with pytest.raises(OperandError, match=r"weight_bits\[0\] = 8 is outside \[1, 4\]"):
        model.measure(network, plan)
    with pytest.raises(ScheduleError, match="act_bits must be an int in \\[1, 4\\]"):
        model.measure(network, QuantPlan.uniform(network, 3, 8))


def test_tile_counts_from_histograms_equal_the_sorted_tiling():
    rng = np.random.default_rng(0)
    for _ in range(300):
        dm = int(rng.integers(1, 20))
        sets = [rng.integers(1, 9, int(rng.integers(1, 70))) for _ in range(int(rng.integers(1, 5)))]
        at_least = grouped_tiles_at_least(np.stack([np.bincount(b, minlength=9) for b in sets]), dm)
        for row, bits in zip(at_least, sets):
            maxima = tile_rows(bits, dm).tile_bits
            assert row.tolist() == [int((maxima >= b).sum()) for b in range(8, 0, -1)]


def test_plan_hash_is_the_json_formula_and_survives_pickling():
    rng = np.random.default_rng(1)
    for names in (["conv1", "fc"], ['q"uote', "back\\slash", "ünï名"]):
        plan = QuantPlan(tuple(LayerPlan(n, tuple(int(b) for b in rng.integers(1, 9, int(rng.integers(1, 300)))),
                                         int(rng.integers(1, 9))) for n in names))
        body = json.dumps([[l.name, l.act_bits, list(l.weight_bits)] for l in plan.layers], separators=(",", ":"))
        assert plan.hash == hashlib.sha256(body.encode()).hexdigest()[:16]
        again = pickle.loads(pickle.dumps(plan))
        assert again == plan and again.hash == plan.hash and "bits_bytes" not in pickle.loads(pickle.dumps(plan.layers[0])).__dict__
        assert QuantPlan.from_json(plan.to_json()).hash == plan.hash


def test_the_hash_of_a_plan_that_fits_a_network_is_the_json_formula():
    rng = np.random.default_rng(2)
    big = wide_net().layers[0]
    for network in (grouped_net(), wide_net(), NetworkSpec("big", (big,), (64, 6, 6)),  # a name, other kernel counts
                    NetworkSpec("big", (dataclasses.replace(big, c_out=5),), (64, 6, 6))):
        for _ in range(3):  # the first plan of a network lays its hash body out, the others reuse the layout
            layers = [LayerPlan(l.name, tuple(int(b) for b in rng.integers(1, 9, l.c_out)), int(rng.integers(1, 9)))
                      for l in network.layers]
            body = json.dumps([[l.name, l.act_bits, list(l.weight_bits)] for l in layers], separators=(",", ":"))
            fitted = QuantPlan.for_network(network, layers)
            assert fitted.hash == QuantPlan(tuple(layers)).hash == hashlib.sha256(body.encode()).hexdigest()[:16]
    assert QuantPlan(()).hash == hashlib.sha256(b"[]").hexdigest()[:16]


def test_layer_plan_checks_its_bits_in_one_pass_and_names_the_first_bad_one():
    assert LayerPlan("a", np.array([3, 8], dtype=np.int64), 2).bits_bytes == bytes([3, 8])  # numpy integers
    for bits, message in (((3, 0, 9), r"weight_bits\[1\] = 0 is out of range"), ((3, 9), r"weight_bits\[1\] = 9"),
                          ((3, 2.0), r"weight_bits\[1\] must be an integer"), ((3, 300), r"weight_bits\[1\] = 300"),
                          ((3, "4"), r"weight_bits\[1\] must be an integer"), ((), "weight_bits is empty")):
        with pytest.raises(PlanError, match=message):
            LayerPlan("a", bits, 2)
    with pytest.raises(PlanError, match=r"weight_bits\[1\] must be an integer, got True"):
        QuantPlan.from_json('{"layers": [{"name": "a", "act_bits": 2, "weight_bits": [3, true]}]}')


def small_buffers():
    """rtl_small with small lhs/rhs buffers: chunks cut often, whole-buffer regions and row tiles of their own."""
    return dataclasses.replace(load_overlay("rtl_small"), lhs_mem_words=24, rhs_mem_words=32)


def wide_net():
    """Layers whose row tiles outgrow small buffers, with a partial last tile, a grouped and a depthwise conv."""
    return NetworkSpec("wide", (LayerSpec("big", "conv", 64, 21, 3, 1, 1, 1, (6, 6), (6, 6)),
                                LayerSpec("grouped", "conv", 21, 12, 3, 1, 1, 3, (6, 6), (6, 6)),
                                LayerSpec("dw", "conv", 12, 12, 3, 1, 1, 12, (6, 6), (6, 6)),
                                LayerSpec("fc", "linear", 432, 37)), (64, 6, 6))


def kernel_wise_entries(network, rng, low=1):
    """A random kernel-wise plan as ``LayerEntry``s: per layer a few widths (so chunks straddle widths) or many."""
    entries = []
    for layer in network.layers:
        palette = rng.choice(np.arange(low, 9), size=int(rng.integers(1, 9)), replace=False)
        entries.append(LayerEntry(layer, rng.choice(palette, layer.c_out), int(rng.integers(1, 9))))
    return entries


def pipeline_params(**changes):
    """The bundled calibration's pipeline parameters, made odd so that no term is a whole number by chance."""
    params = load_default_calibration().schedule
    params = params if params.pipeline else ScheduleParams(pipeline=True)
    return dataclasses.replace(params, read_latency_cycles=37.3, write_latency_cycles=29.1, port_bytes_per_cycle=5.3,
                               row_cycles=2.7, result_burst_cycles=1.9, write_slot_cycles=0.6, **changes)


def chunk_stats(entries, overlay, batch=1, per_image_convs=False):
    """(chunks after the first of their block, chunks of several widths, chunks holding a block's last, shorter tile
    with others) of the grouped tile table of ``entries``."""
    layout, table = _layout_and_table(entries, overlay, batch, True, per_image_convs)
    starts = np.flatnonzero(table.chunk_first)
    stops = np.r_[starts[1:], table.chunk_first.size]
    rows = table.rows[:, 0]
    mixed = sum(np.unique(table.passes[a:b, 0]).size > 1 for a, b in zip(starts, stops))
    shorter = sum(b - a > 1 and rows[b - 1] < rows[a] for a, b in zip(starts, stops))
    block_first = np.r_[True, layout.row_block[1:] != layout.row_block[:-1]]
    return int((~block_first & table.chunk_first).sum()), mixed, shorter


@pytest.mark.parametrize("arch", ["resnet18", "fashion", "digits", "mobilenet_v2", "wide"])
def test_histogram_schedule_equals_the_tile_table_on_random_kernel_wise_plans(arch):
    network = wide_net() if arch == "wide" else spec_for(arch)
    overlays = [load_overlay("pynq_z1"), load_overlay("rtl_small"), small_buffers()]
    rng = np.random.default_rng(sum(map(ord, arch)))
    stats = np.zeros(3, dtype=np.int64)
    for overlay in overlays:
        for params in (pipeline_params(), pipeline_params(per_image_convs=True), ScheduleParams(),
                       ScheduleParams(per_image_convs=True, dram_efficiency=0.7)):
            for batch in (1, 2):
                schedule = HistogramSchedule(network.layers, overlay, params, batch)
                for _ in range(2):
                    entries = kernel_wise_entries(network, rng)
                    table = tile_table(entries, overlay, batch, True, params.per_image_convs)
                    fast = schedule.cycles(np.concatenate([e.weight_bits for e in entries]),
                                           np.array([e.act_bits for e in entries]))
                    direct = table_cycles(table, overlay, params)
                    for name, got, want in zip(TableCycles._fields, fast, direct):
                        assert np.array_equal(got, want), (arch, overlay.name, params, batch, name)
                    stats += chunk_stats(entries, overlay, batch, params.per_image_convs)
    several, mixed, shorter = stats
    assert several > 0 and mixed > 0 and (shorter > 0 or arch in ("resnet18", "mobilenet_v2"))  # the walk matters


def test_the_chunk_walk_equals_the_greedy_cut_of_the_tile_sequence():
    """``_walk_chunks`` per width equals ``_chunk_starts`` over the explicit widest-first sequence of row tiles."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        blocks, widths = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        n = rng.integers(0, 12, (blocks, widths)) * (rng.random((blocks, widths)) < 0.7)
        n[:, int(rng.integers(widths))] += 1  # every block has a tile
        region, slots = rng.integers(4, 64, blocks), rng.integers(1, 9, blocks)
        words = np.sort(rng.integers(1, 40, (blocks, widths)), axis=1)[:, ::-1]  # wider tiles take more words
        fill, per_chunk = np.minimum(words, region[:, None]), np.minimum(slots[:, None], np.maximum(1, region[:, None] // words))
        taken, opens = _walk_chunks(n, fill, per_chunk, region, slots)
        for b in range(blocks):
            sequence = np.repeat(words[b], n[b])
            starts = _chunk_starts(sequence, np.zeros(sequence.size, dtype=np.int64), np.full(sequence.size, region[b]),
                                   np.zeros(sequence.size, dtype=bool), int(slots[b]))
            sizes, open_tiles = [], 0
            for j in range(widths):  # the walk's chunks: the open one takes, the rest fills whole chunks, one stays open
                if n[b, j] == 0:
                    continue
                open_tiles += taken[b, j]
                if n[b, j] > taken[b, j]:
                    whole = (n[b, j] - taken[b, j] - opens[b, j]) // per_chunk[b, j]
                    sizes += ([open_tiles] if open_tiles else []) + [int(per_chunk[b, j])] * int(whole)
                    open_tiles = opens[b, j]
            sizes.append(open_tiles)
            assert sizes == np.diff(np.r_[np.flatnonzero(starts), sequence.size]).tolist()


def test_pipeline_chunks_straddle_widths_and_outgrow_the_buffer():
    """A layer whose chunks mix widths, whose last chunk holds the shorter last tile, and whose widest tiles need the
    whole lhs buffer or more: the fast path still equals the tile table."""
    overlay, params = small_buffers(), pipeline_params()
    layer = LayerSpec("c", "conv", 24, 13, 3, 1, 1, 1, (5, 5), (5, 5))
    # 4 words a bit: tiles of 8, 8, 5, 4, 2, 2 and 1 (one row) bits in chunks [8] [8] [5] [4 2] [2 1]
    bits = np.array([8] * 4 + [5] * 2 + [4] * 2 + [2] * 4 + [1])
    table = tile_table([LayerEntry(layer, bits, 3)], overlay)
    several, mixed, shorter = chunk_stats([LayerEntry(layer, bits, 3)], overlay)
    assert several and mixed and shorter
    fast = HistogramSchedule([layer], overlay, params).cycles(bits, np.array([3]))
    assert fast == table_cycles(table, overlay, params)
