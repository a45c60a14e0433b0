"""Schedule model of the bit-serial overlay: the one place where cycle formulas live.

A layer runs as ``groups`` matrix products ``(M x K) @ (K x N)`` (``LayerSpec.gemm(batch)``). Rows (output
channels) are cut into row tiles of at most ``Dm`` rows by ``tiling.tile_rows`` (sorted by weight bit-width when
``grouped``; a tile runs at the largest width in it); columns into column tiles of ``Dn``; ``K`` into ``Dk``-bit
words. Every (row tile, column tile) pair is one *tile* and passes through three overlapping stages:

* **fetch**: weight and activation bit-planes move from DRAM at ``overlay.dram_bytes_per_cycle *
  params.dram_efficiency``. Operands travel as BISMO lays them out: every row/column is padded to whole ``Dk``-bit
  words, one copy per bit-plane. Weights are ``rows * kwords * Dk * wbits`` bits, activations
  ``cols * kwords * Dk * abits`` bits.
* **execute**: ``(kwords + pass_overhead) * wbits_tile * abits`` cycles: one pass per pair of bit-planes, each
  streaming ``kwords`` words through the array plus the pipeline latency of one execute instruction.
* **result**: the ``rows x cols`` accumulators (``overlay.acc_bits`` each) are written back at
  ``overlay.dram_bytes_per_cycle * params.result_efficiency``.

Reuse (decided per group, deterministically, from buffer sizes only):

* *weight-stationary* (row tiles outer): consecutive row tiles whose weights fit the lhs buffer together
  (``sum(kwords * wbits_tile) <= lhs_mem_words``) form a run; the run's weights are fetched with the first column
  tile and stay while all column tiles stream past. A column tile's activations are fetched once per run, or once
  for the whole group if all of them fit the rhs buffer (``col_tiles * kwords * abits <= rhs_mem_words``).
* *activation-stationary* (column tiles outer): as many column tiles as fit the rhs buffer
  (``kwords * abits`` words each) form a column block, fetched once; every row tile's weights are fetched once per
  column block, or once in all if the group's weights fit the lhs buffer together.

A row tile whose weights alone exceed the lhs buffer is streamed again for every column tile (likewise a column
tile's activations for every row tile). The order that moves fewer bytes is used (weight-stationary on a tie).

Depthwise-like layers (one output channel per group, ``groups > 1``) would leave ``Dm - 1`` rows of the array idle
and fetch a nearly empty ``Dk``-bit word per column and group. They are *packed*: up to ``Dm`` channels (one from
each of as many groups) share a row tile as a block-diagonal product with ``K_eff = rows * K`` (the im2col
columns of those channels stacked), so a row tile's activations are its own and are never reused across row tiles.
These layers come out bound by moving activations, as on BISMO.

A layer's cycles are ``max(fetch, execute, result)`` stage totals (the stages overlap) plus
``layer_overhead + tiles * tile_overhead``. ``layer_tiles`` yields the tiles in execution order (the reference
engine, the HLS C-sim and the emulated device execute and count these); ``layer_cycles`` is the closed form,
vectorised over row tiles and over the four kinds of column tile (see ``TileTable``), and equals the sum over
``layer_tiles`` exactly. ``tile_table``/``table_cycles`` do the same for many layers at once and separate the
parameter-free part (bytes, passes, tile counts) from the timing parameters, which calibration fits.
``HistogramSchedule`` gives ``table_cycles``' figures for one network under one set of parameters from the
histograms of the layers' weight bits alone (grouped tiles), thousands of plans a second.

Imports only numpy (and the numpy-only tiling): this runs on the board.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from autoq.common.errors import AutoQError
from autoq.common.network import LayerSpec

from .manifest import OverlayConfig
from .tiling import RowTiling, check_bit_widths, grouped_tiles_at_least, packed_row_bits, tile_rows

STAGES: tuple[str, ...] = ("fetch", "execute", "result")
PACKED_GROUPS = -1
"""``TileWork.group`` of a packed depthwise tile, whose rows come from several groups."""


_FLAGS = ("per_image_convs", "pipeline")
RTL_READ_BURSTS = 8  # bursts the RTL's read DMA keeps in flight (hls/rtl/engine.py READ_OUTSTANDING)
RTL_WRITE_BURSTS = 16  # and its result stage (WRITE_OUTSTANDING)
RTL_BURST_BEATS = 16  # AXI3 INCR bursts of up to 16 beats, never across 4 KiB
RTL_PAGE_BEATS = 512
RTL_CHUNK_SLOTS = 32  # tile-table entries per lhs region of the RTL (hls/rtl/common.py MAX_CHUNK_SLOTS)


def rtl_chunk_slots(overlay: OverlayConfig) -> int:
    """Row tiles one RTL weight chunk holds at most (``hls/rtl/common.chunk_slots``)."""
    return max(1, min(RTL_CHUNK_SLOTS, overlay.lhs_mem_words // 2))


class ScheduleError(AutoQError, ValueError):
    """Schedule parameters or a layer's bit-widths are invalid."""


@dataclass(frozen=True)
class ScheduleParams:
    """The free global timing parameters of the schedule (what calibration fits).

    ``dram_efficiency``: achieved fraction of the overlay's peak DRAM bytes/cycle for fetching operands.
    ``result_efficiency``: the result stage's write bandwidth as a multiple of the overlay's DRAM bytes/cycle (it
    writes through its own port, so it may exceed 1; a large value means write-back costs next to nothing).
    ``layer_overhead_cycles``: fixed cost per layer (descriptor setup, start/finish handshake, pipeline drain).
    ``tile_overhead_cycles``: fixed cost per tile (instruction issue and token synchronisation between stages).
    ``pass_overhead_cycles``: execute-pipeline latency paid once per pair of bit-planes in a tile.
    ``per_image_convs``: how the runtime lowers a batch. False: a conv layer is one product over all
    ``batch * out_h * out_w`` columns. True: one product per image (im2col per image; weights fetched again for
    every image, the last column tile of each image partial); linear layers always take the batch as columns.

    ``pipeline``: False: the stage-total model above (``max`` of the three stage totals plus overheads). True: the
    RTL engine's step pipeline (``hls/rtl``, see ``_pipeline_cycles``) over its weight chunks (row tiles resident
    together in one lhs region, each column tile's activations fetched once for them): a chunk's pass over one
    column tile costs the slowest of its steps' execute and result, the activations' fetch and the two-region
    fetch/execute loop, its first column tile also the chunk's table round trips and weights; the efficiencies and tile/pass overheads are then unused and
    ``layer_overhead_cycles`` is the setup and drain beyond the memory latencies. Its inputs: the HP port's
    ``read_latency_cycles``, ``read_outstanding`` bursts, ``write_latency_cycles``, ``write_outstanding`` bursts and
    ``port_bytes_per_cycle`` (each direction; the rtlsim ``HPPortModel``'s fields); its fitted constants:
    ``step_sync_cycles`` (token hand-over in the fetch/execute loop), ``row_tile_cycles`` and ``row_cycles``
    (a row tile's table decode and sequential multiplies: fixed and per row), ``boundary_overlap`` (periods of
    the previous steps that hide a row tile's bubble), ``result_burst_cycles`` (per write burst),
    ``write_slot_cycles`` (a write burst's hold of an outstanding slot beyond latency and beats) and
    ``table_beat_cycles`` (per tile-table beat of the check pass).
    """

    dram_efficiency: float = 0.8
    result_efficiency: float = 0.8
    layer_overhead_cycles: float = 2000.0
    tile_overhead_cycles: float = 8.0
    pass_overhead_cycles: float = 2.0
    per_image_convs: bool = False
    pipeline: bool = False
    read_latency_cycles: float = 40.0
    read_outstanding: float = 8.0
    write_latency_cycles: float = 30.0
    write_outstanding: float = 8.0
    port_bytes_per_cycle: float = 6.4
    step_sync_cycles: float = 0.0
    row_tile_cycles: float = 0.0
    row_cycles: float = 3.0
    boundary_overlap: float = 3.0
    result_burst_cycles: float = 2.0
    write_slot_cycles: float = 0.0
    table_beat_cycles: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FLAGS:
                if not isinstance(value, bool):
                    raise ScheduleError(f"schedule parameter {f.name} must be true or false, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ScheduleError(f"schedule parameter {f.name} must be a finite number, got {value!r}")
            if value < 0:
                raise ScheduleError(f"schedule parameter {f.name} must be >= 0, got {value!r}")
        if not 0 < self.dram_efficiency <= 1:
            raise ScheduleError(f"dram_efficiency must be in (0, 1], got {self.dram_efficiency!r}")
        if self.result_efficiency <= 0:
            raise ScheduleError(f"result_efficiency must be > 0, got {self.result_efficiency!r}")
        for name in ("read_outstanding", "write_outstanding"):
            if getattr(self, name) < 1:
                raise ScheduleError(f"{name} must be >= 1 burst, got {getattr(self, name)!r}")
        if self.port_bytes_per_cycle <= 0:
            raise ScheduleError(f"port_bytes_per_cycle must be > 0, got {self.port_bytes_per_cycle!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScheduleParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScheduleError(f"unknown schedule parameters {unknown}; known: {sorted(known)}")
        try:
            values: dict[str, Any] = {k: v if k in _FLAGS else float(v) for k, v in data.items()}
        except (TypeError, ValueError):
            raise ScheduleError(f"schedule parameters must be numbers (per_image_convs, pipeline true/false), "
                                f"got {data!r}") from None
        return cls(**values)


class TileWork(NamedTuple):
    """One tile in execution order.

    ``rows``: the layer's output channels (indices in ``0..c_out-1``, row ``r`` belongs to group
    ``r // (c_out // groups)``) in array-row order; ``group``: their group, or ``PACKED_GROUPS`` for a packed
    depthwise tile (one row per group). Columns ``col_start:col_stop`` of ``N = batch * out_h * out_w``.
    """

    group: int
    rows: np.ndarray
    col_start: int
    col_stop: int
    wbits: int
    abits: int
    fetch: int
    execute: int
    result: int
    cycles: int = 0  # the step's pipeline cycles (``ScheduleParams.pipeline``; 0 in the stage-total model)


class LayerCycles(NamedTuple):
    """Stage totals, fixed overhead and total cycles of one layer; ``bound`` is the slowest stage.

    ``dram_bytes`` (fetched plus written back) and ``binary_ops`` (2 per AND+popcount bit the array processes)
    feed the energy model.
    """

    fetch: int
    execute: int
    result: int
    overhead: int
    total: int
    bound: str
    dram_bytes: int = 0
    binary_ops: int = 0


class LayerEntry(NamedTuple):
    """One layer under one (kernel-wise) bit assignment: a row of a ``TileTable``."""

    layer: LayerSpec
    weight_bits: Sequence[int] | np.ndarray
    act_bits: int


class TileTable(NamedTuple):
    """Tile costs of many layer entries that do not depend on ``ScheduleParams``, grouped into cells.

    A cell is one row tile with one of four column-tile kinds (the first column tile; later tiles that start a
    column block; later tiles that do not; the last, possibly partial, tile): every tile of a cell costs the same.
    Arrays are ``(row tiles, 4)``, or ``(row tiles, 1)`` where the kind does not matter.
    """

    entry: np.ndarray  # entry index of each row tile (row tiles,)
    cell_tiles: np.ndarray  # tiles in each cell (not ``count``: that would shadow ``tuple.count``)
    fetch_bytes: np.ndarray
    result_bytes: np.ndarray
    kwords: np.ndarray  # (row tiles, 1)
    passes: np.ndarray  # wbits_tile * abits, (row tiles, 1)
    binary_ops: np.ndarray
    entries: int
    per_image_convs: bool
    # the RTL's transfers per step (``ScheduleParams.pipeline``): it fetches a step's activations every step and a
    # row tile's weights with its first column tile; 64-bit beats and burst counts (expected values where the
    # address alignment is not known here)
    act_beats: np.ndarray
    act_bursts: np.ndarray
    weight_beats: np.ndarray  # (row tiles, 1)
    weight_bursts: np.ndarray  # (row tiles, 1)
    rows: np.ndarray  # (row tiles, 1)
    result_beats: np.ndarray
    result_bursts: np.ndarray
    # the RTL's weight chunks (``ScheduleParams.pipeline``): True where a row tile starts one (consecutive row tiles
    # of a block whose weights fit one lhs region together); None: every row tile is a chunk of its own
    chunk_first: Any = None


class _Layout(NamedTuple):
    """Row tiles of row blocks (one group each, or one packed depthwise layer) and the loop order chosen for each."""

    block_group: np.ndarray
    block_order: list[np.ndarray]  # original channels of each block in processing order
    row_block: np.ndarray  # block of each row tile
    rows: np.ndarray
    bits: np.ndarray
    activation_stationary: np.ndarray  # per block
    columns_per_block: np.ndarray  # per block (column tiles per column block when activation-stationary)
    row_block_first: np.ndarray  # per row tile: starts a row block (weight-stationary)
    column_tiles: np.ndarray  # per block
    images: int  # products run one after the other, one per image (1: the batch is one product)


_KIND_FIRST = np.array([True, False, False, False])


def _column_kinds(n: np.ndarray, dn: int, per_block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts a column block, width, count) of the four column-tile kinds for each block: arrays (blocks, 4)."""
    tiles = -(-n // dn)
    middle = np.maximum(tiles - 2, 0)
    middle_block_firsts = middle // per_block
    several = tiles > 1
    block_first = np.stack([np.ones_like(several), np.ones_like(several), np.zeros_like(several),
                            several & ((tiles - 1) % per_block == 0)], axis=1)
    width = np.stack([np.minimum(n, dn), np.full_like(n, dn), np.full_like(n, dn), n - dn * (tiles - 1)], axis=1)
    count = np.stack([np.ones_like(n), middle_block_firsts, middle - middle_block_firsts, several.astype(np.int64)], axis=1)
    return block_first, width, count


def _block_starts(words: np.ndarray, block_of_row: np.ndarray, capacity: int, needs_cut: np.ndarray) -> np.ndarray:
    """Greedy cut of each block's consecutive row tiles into runs whose buffer words fit ``capacity``.

    True where a run starts. A row tile larger than the buffer is a run of its own (its weights are streamed again
    for every column tile). Only blocks flagged in ``needs_cut`` are walked; the others are one run.
    """
    starts = np.r_[True, block_of_row[1:] != block_of_row[:-1]]
    cut_rows = np.flatnonzero(needs_cut[block_of_row])
    used = 0
    for r, need, first in zip(cut_rows.tolist(), words[cut_rows].tolist(), starts[cut_rows].tolist()):
        if first or used + need > capacity:
            starts[r], used = True, need
        else:
            used += need
    return starts


def _chunk_starts(words: np.ndarray, block_of_row: np.ndarray, capacity: np.ndarray, alone: np.ndarray,
                  slots: int) -> np.ndarray:
    """The RTL's greedy cut of each block's row tiles into weight chunks (``hls/rtl/fetch.py``): True where a chunk
    starts. A chunk takes row tiles while their words fit ``capacity`` (per row tile) and it has fewer than
    ``slots``; ``alone`` row tiles (packed) are chunks of their own."""
    starts = np.r_[True, block_of_row[1:] != block_of_row[:-1]] | alone
    used, count = 0, 0
    for r, (need, first, cap) in enumerate(zip(words.tolist(), starts.tolist(), capacity.tolist())):
        if first or count == slots or used + need > cap:
            starts[r], used, count = True, need, 1
        else:
            used, count = used + need, count + 1
    return starts


def _check_act_bits(layer: LayerSpec, act_bits: Any, overlay: OverlayConfig) -> None:
    if isinstance(act_bits, bool) or not isinstance(act_bits, (int, np.integer)) or not 1 <= act_bits <= overlay.max_bits:
        raise ScheduleError(f"layer {layer.name!r}: act_bits must be an int in [1, {overlay.max_bits}], got {act_bits!r}")


class _Block(NamedTuple):
    """One row block of a layer: one group's ``rows`` output channels, or all of a packed depthwise layer's."""

    group: int  # PACKED_GROUPS for a packed layer
    rows: int
    k: int  # the product's K (a packed tile's K_eff is its rows times this)
    n: int
    images: int
    ohw: int  # output pixels per image (1 for a linear layer: every column is its own image)


def _blocks(layer: LayerSpec, batch: int, per_image_convs: bool) -> list[_Block]:
    images = batch if per_image_convs and layer.kind != "linear" else 1
    groups, m, k, n = layer.gemm(batch // images)
    ohw = 1 if layer.kind == "linear" else layer.out_hw[0] * layer.out_hw[1]
    if m == 1 and groups > 1:
        return [_Block(PACKED_GROUPS, groups, k, n, images, ohw)]
    return [_Block(g, m, k, n, images, ohw) for g in range(groups)]


def _entry_tilings(entry: LayerEntry, overlay: OverlayConfig, grouped: bool, blocks: list[_Block]) -> list[RowTiling]:
    """Row tilings of one entry's blocks; bad bit-widths raise naming the layer."""
    layer = entry.layer
    bits = check_bit_widths(entry.weight_bits, f"layer {layer.name!r}: weight_bits", overlay.max_bits)
    if bits.size != layer.c_out:
        raise ScheduleError(f"layer {layer.name!r}: {bits.size} weight bit-widths for {layer.c_out} output channels")
    _check_act_bits(layer, entry.act_bits, overlay)
    if blocks[0].group == PACKED_GROUPS:
        return [tile_rows(packed_row_bits(bits), overlay.dm, grouped)]
    m = blocks[0].rows
    return [tile_rows(bits[b.group * m:(b.group + 1) * m], overlay.dm, grouped) for b in blocks]


def _as_fetched(first_row: np.ndarray, weights_stay: np.ndarray, block_first: np.ndarray, cut: np.ndarray,
                act_words: np.ndarray, rhs: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights, activations) fetched per cell, activation-stationary; arguments per row tile (``block_first``
    with its four column-tile kinds, ``cut``: its block's weights do not fit the lhs buffer together)."""
    weights = _KIND_FIRST | (block_first & cut[:, None]) | ~weights_stay[:, None]
    return weights, (first_row | (act_words > rhs))[:, None]


def _ws_fetched(first_row: np.ndarray, weights_stay: np.ndarray, run_first: np.ndarray, shared: np.ndarray,
                act_words: np.ndarray, column_tiles: np.ndarray, rhs: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights, activations) fetched per cell, weight-stationary; arguments per row tile (``run_first``: it starts a
    run of row tiles whose weights share the lhs buffer)."""
    refetched = (column_tiles * act_words > rhs) & (run_first | (act_words > rhs))
    return _KIND_FIRST | ~weights_stay[:, None], (~shared | first_row | refetched)[:, None]


def _fetch_bytes(rows: np.ndarray, kwords: np.ndarray, bits: np.ndarray, abits: np.ndarray, width: np.ndarray,
                 fetched: tuple[np.ndarray, np.ndarray], dk: int) -> np.ndarray:
    """Bytes each cell fetches: its row tile's weights and its columns' activations, where ``fetched`` says so."""
    weight_bytes = (rows * kwords * dk * bits / 8)[:, None]
    act_bytes = width * kwords[:, None] * dk * abits[:, None] / 8
    return weight_bytes * fetched[0] + act_bytes * fetched[1]


def _tile_table(entry: np.ndarray, entries: int, count: np.ndarray, fetch_bytes: np.ndarray, rows: np.ndarray,
                kwords: np.ndarray, k_eff: np.ndarray, bits: np.ndarray, abits: np.ndarray, width: np.ndarray,
                ohw: np.ndarray, overlay: OverlayConfig, per_image_convs: bool) -> TileTable:
    """The ``TileTable`` of row tiles given per row tile (``entry``, ``rows``, ``kwords``, ``k_eff``, ``bits``,
    ``abits``, ``ohw``) and per cell (``count``, ``fetch_bytes``, ``width``)."""
    dk, dn = overlay.dk, overlay.dn
    passes = bits[:, None] * abits[:, None]
    beat_bits = overlay.dram_width_bits
    act_beats = width * kwords[:, None] * dk * abits[:, None] / beat_bits
    weight_beats = (rows * kwords * dk * bits / beat_bits)[:, None]
    bursts = lambda beats: np.ceil(beats / RTL_BURST_BEATS) + beats / RTL_PAGE_BEATS
    # result: one burst per row and run of columns inside one image (linear: every column is its own image), an odd
    # int32 start costs half a beat on average where the alignment varies
    ohw = ohw[:, None]
    crossings = np.where(ohw == 1, width - 1, np.where(ohw % dn == 0, 0, (width - 1) / np.maximum(ohw, 1)))
    row_bursts = 1 + crossings + width * overlay.acc_bits / 8 / 4096
    odd = np.where(ohw == 1, 1.0, np.where((ohw % 2 == 1) | (dn % 2 == 1), 0.5, 0.0))
    row_beats = width * overlay.acc_bits / 2 / beat_bits + odd * row_bursts
    return TileTable(
        entry, count, fetch_bytes,
        rows[:, None] * width * overlay.acc_bits / 8,
        kwords[:, None], passes,
        2 * rows[:, None] * width * k_eff[:, None] * passes,
        entries,
        per_image_convs,
        act_beats, bursts(act_beats), weight_beats, bursts(weight_beats), rows[:, None],
        rows[:, None] * row_beats, rows[:, None] * row_bursts,
    )


def _check_batch(batch: Any) -> None:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ScheduleError(f"batch must be a positive int, got {batch!r}")


def _layout_and_table(entries: Sequence[LayerEntry], overlay: OverlayConfig, batch: int, grouped: bool,
                      per_image_convs: bool) -> tuple[_Layout, TileTable]:
    _check_batch(batch)
    if not entries:
        raise ScheduleError("no layers to schedule")
    dk, dn = overlay.dk, overlay.dn
    b_entry, b_block, b_order, b_abits = [], [], [], []
    r_rows, r_bits, r_keff = [], [], []
    for index, entry in enumerate(entries):
        blocks = _blocks(entry.layer, batch, per_image_convs)
        for block, tiling in zip(blocks, _entry_tilings(entry, overlay, grouped, blocks)):
            packed = block.group == PACKED_GROUPS
            b_entry.append(index)
            b_block.append(block)
            b_order.append(tiling.order if packed else tiling.order + block.group * block.rows)
            b_abits.append(int(entry.act_bits))
            r_rows.append(tiling.tile_rows)
            r_bits.append(tiling.tile_bits)
            r_keff.append(tiling.tile_rows * block.k if packed else np.full(tiling.tile_rows.size, block.k, dtype=np.int64))
    blocks_of = np.array(b_block, dtype=np.int64)
    group, n, images, ohw = blocks_of[:, 0], blocks_of[:, 3], blocks_of[:, 4], blocks_of[:, 5]
    sizes = np.array([r.size for r in r_rows])
    row_block = np.repeat(np.arange(sizes.size), sizes)
    rows, bits, k_eff = np.concatenate(r_rows), np.concatenate(r_bits), np.concatenate(r_keff)
    shared, abits = group != PACKED_GROUPS, np.array(b_abits, dtype=np.int64)
    kwords = -(-k_eff // dk)
    weight_words = kwords * bits
    first_row = np.r_[True, row_block[1:] != row_block[:-1]]
    block_start = np.flatnonzero(first_row)
    act_words = kwords[block_start] * abits  # per array column, shared activations
    column_tiles = -(-n // dn)
    weights_stay = weight_words <= overlay.lhs_mem_words
    cut = np.add.reduceat(weight_words, block_start) > overlay.lhs_mem_words
    rhs = overlay.rhs_mem_words
    row_abits = abits[row_block]

    def fetch_bytes(activation_stationary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        per_block = np.maximum(1, rhs // act_words) if activation_stationary else column_tiles
        block_first, width, count = _column_kinds(n, dn, per_block)
        if activation_stationary:
            row_run_first = first_row
            fetched = _as_fetched(first_row, weights_stay, block_first[row_block], cut[row_block], act_words[row_block], rhs)
        else:
            row_run_first = _block_starts(weight_words, row_block, overlay.lhs_mem_words, cut)
            fetched = _ws_fetched(first_row, weights_stay, row_run_first, shared[row_block], act_words[row_block],
                                  column_tiles[row_block], rhs)
        total = _fetch_bytes(rows, kwords, bits, row_abits, width[row_block], fetched, dk)
        return total, width[row_block], count[row_block], row_run_first, per_block

    ws_bytes, ws_width, ws_count, ws_runs, ws_per_block = fetch_bytes(False)
    as_bytes, as_width, as_count, _, as_per_block = fetch_bytes(True)
    per_block_total = lambda cells, count: np.bincount(row_block, (cells * count).sum(axis=1), minlength=sizes.size)
    use_as = shared & (per_block_total(as_bytes, as_count) < per_block_total(ws_bytes, ws_count))
    row_as = use_as[row_block][:, None]
    width = np.where(row_as, as_width, ws_width)
    # the RTL's weight chunks: greedy over each block's row tiles in one lhs region (the whole buffer for a layer with
    # a tile of more than half), packed tiles one each
    half = overlay.lhs_mem_words // 2
    entry_of_row = np.array(b_entry)[row_block]
    big = np.bincount(entry_of_row, weight_words > half, minlength=len(entries)) > 0
    chunk_first = _chunk_starts(weight_words, row_block, np.where(big, overlay.lhs_mem_words, half)[entry_of_row],
                                ~shared[row_block], rtl_chunk_slots(overlay))
    layout = _Layout(
        group, b_order, row_block, rows, bits, use_as,
        np.where(use_as, as_per_block, ws_per_block), np.where(use_as[row_block], first_row, ws_runs), column_tiles,
        int(images[0]),
    )
    table = _tile_table(
        np.array(b_entry)[row_block], len(entries), np.where(row_as, as_count, ws_count) * images[row_block][:, None],
        np.where(row_as, as_bytes, ws_bytes), rows, kwords, k_eff, bits, row_abits, width, ohw[row_block], overlay,
        per_image_convs,
    )._replace(chunk_first=chunk_first)
    return layout, table


def tile_table(entries: Sequence[LayerEntry], overlay: OverlayConfig, batch: int = 1, grouped: bool = True,
               per_image_convs: bool = False) -> TileTable:
    """The tile costs of ``entries`` that do not depend on the timing parameters; evaluate them under any
    ``ScheduleParams`` with the same ``per_image_convs`` with ``table_cycles``."""
    return _layout_and_table(entries, overlay, batch, grouped, per_image_convs)[1]


def _cell_cycles(table: TileTable, overlay: OverlayConfig, params: ScheduleParams,
                 whole: Callable[[np.ndarray], np.ndarray] = np.ceil) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile (fetch, execute, result) cycles of every cell: the stage formulas (``whole`` rounds to cycles)."""
    fetch = whole(table.fetch_bytes / (overlay.dram_bytes_per_cycle * params.dram_efficiency))
    execute = whole((table.kwords + params.pass_overhead_cycles) * table.passes)
    result = whole(table.result_bytes / (overlay.dram_bytes_per_cycle * params.result_efficiency))
    return fetch, np.broadcast_to(execute, fetch.shape), result


def _pipeline_cycles(table: TileTable, overlay: OverlayConfig, params: ScheduleParams,
                     whole: Callable[[np.ndarray], np.ndarray] = np.ceil) -> tuple[np.ndarray, ...]:
    """Per-step (fetch, execute, result, pipeline) cycles of every cell in the RTL engine (``params.pipeline``).

    Derived from ``hls/rtl`` (see its ``__init__``) with the HP port's latency ``L``, outstanding bursts ``O``
    (at most the DMA's 8) and ``rho`` beats per cycle: a stream of ``b`` beats in ``n`` bursts takes
    ``max(b / rho, (n * L + b / rho) / O)``. Per step: execute ``passes * kwords + Dm + 5`` (issue, flush,
    drain, hand-over); result ``2 * rows + beats + c_b * bursts + 1``, or its writes' outstanding-slot limit
    ``bursts * (L_w + c_w + beats per burst) / O_w``. Per weight chunk (``TileTable.chunk_first``, the RTL's greedy
    cut) and column tile, one pass: the larger of the steps' execute and result, summed over the chunk's row tiles;
    the activations' stream; the loop of each of the two rhs regions (fetch issued when execute frees it after the
    chunk's last row tile, data back after ``L``, execute issues again):
    ``(L + b / rho + sum(passes * kwords) + (R - 1)(Dm + 5) + c_s) / 2``. The pass costs the slowest; the chunk's
    first row tile carries what the pass costs beyond its other row tiles' steps. A chunk's first column tile adds
    its bubble: the requester waits for the first row tile's table entry and multiplies before it issues its
    weights, ``f = L + entry / rho + weights + c_t + c_r * rows``, then the activations, ``L + 2 b / rho``; each
    later row tile runs once its weights are in, adding ``max(0, sum(f of the later tiles) - sum(steps but the
    last))``; less ``boundary_overlap`` passes of the previous chunk that the buffered steps hide (none before a
    layer's first chunk); every row tile's first step adds the tile-table check's share of its entry's beats.
    """
    beat_bytes = overlay.dram_width_bits / 8
    rho = min(params.port_bytes_per_cycle, beat_bytes) / beat_bytes
    lat, wlat = params.read_latency_cycles, params.write_latency_cycles
    reads = min(params.read_outstanding, RTL_READ_BURSTS)
    writes = min(params.write_outstanding, RTL_WRITE_BURSTS)

    def stream(beats: np.ndarray, bursts: np.ndarray) -> np.ndarray:
        n = np.ceil(beats / RTL_BURST_BEATS)
        full = np.gcd(n.astype(np.int64), max(int(round(reads)), 1)) > 1  # the slots can keep to full bursts
        held = beats + full * (RTL_BURST_BEATS * n - beats)
        return np.maximum(beats / rho, (bursts * lat + held / rho) / reads)

    def wait(beats: np.ndarray, bursts: np.ndarray) -> np.ndarray:
        waves = np.maximum(np.ceil(np.floor(bursts) / reads), 1)
        tail = waves - 1 + bursts - (waves - 1) * reads
        return np.maximum(lat + beats / rho, waves * lat + tail * beats / np.maximum(bursts, 1) / rho)

    issue = table.passes * table.kwords
    execute = np.broadcast_to(issue + overlay.dm + 5, table.act_beats.shape)
    act = stream(table.act_beats, table.act_bursts)
    per_burst = table.result_beats / np.maximum(table.result_bursts, 1)
    result = np.maximum(2 * table.rows + table.result_beats + params.result_burst_cycles * table.result_bursts + 1,
                        table.result_bursts * (wlat + params.write_slot_cycles + per_burst) / writes)
    entry = 1 + overlay.dm  # beats of one tile-table entry (2 + 2 Dm uint32)
    weights = stream(table.weight_beats, table.weight_bursts)
    # weight chunks: a column tile's activations are fetched once for the chunk's row tiles, which execute one
    # after the other; the chunk's first row tile's step carries the column tile's pass beyond its others' steps
    chunk_first = _chunk_first(table)
    starts = np.flatnonzero(chunk_first)
    seg = np.cumsum(chunk_first) - 1
    length = np.diff(np.r_[starts, chunk_first.size])
    base = np.maximum(execute, result)
    chunk = lambda values: np.add.reduceat(values, starts, axis=0)[seg]
    chunk_base = chunk(base)
    loop = (lat + table.act_beats / rho + chunk(issue) + (length[seg, None] - 1) * (overlay.dm + 5)
            + params.step_sync_cycles) / 2
    whole_pass = np.maximum.reduce([chunk_base, act, loop])
    head = chunk_first[:, None]
    period = np.where(head, whole_pass - (chunk_base - base), base)
    # a chunk's first column tile adds its bubble: the requester waits for the first row tile's table entry and its
    # multiplies before it issues the weights, then the activations; each later row tile runs once its own entry
    # and weights are in (what of their fill the earlier steps do not cover adds); less ``boundary_overlap`` passes
    # of the previous chunk that the buffered steps hide (none before a layer's first chunk); every row tile adds
    # the tile-table check's share of its entry's beats
    fill = lat + entry / rho + weights + params.row_tile_cycles + params.row_cycles * table.rows
    after = np.r_[False, table.entry[1:] == table.entry[:-1]][:, None]  # a layer's first chunk follows nothing
    last_base = base[np.r_[starts[1:], chunk_first.size] - 1][seg]
    late = np.maximum(chunk(fill) - fill - (chunk_base - last_base), 0)  # later row tiles not in before they run
    bubble = fill + lat + 2 * table.act_beats / rho + late - params.boundary_overlap * whole_pass * after
    check = np.maximum(entry / rho, (entry / RTL_BURST_BEATS * lat + entry / rho) / reads) + params.table_beat_cycles * entry
    first = _KIND_FIRST[None, :]
    period = period + first * (head * np.maximum(bubble, 0) + check)
    fetch = act * head + first * (weights + entry / rho)
    return whole(fetch), whole(execute), whole(result), whole(period)


def _chunk_first(table: TileTable) -> np.ndarray:
    """Per row tile: it starts an RTL weight chunk (every row tile where the table does not say)."""
    if table.chunk_first is None:
        return np.ones(table.entry.size, dtype=bool)
    return np.asarray(table.chunk_first, dtype=bool)


def _pipeline_overhead(params: ScheduleParams) -> float:
    """Per-layer cycles of the RTL pipeline beyond its steps: setup, the table check's latency, the last writes."""
    return params.layer_overhead_cycles + params.read_latency_cycles + params.write_latency_cycles


def _relaxed(cycles: np.ndarray) -> np.ndarray:
    """Continuous stand-in for ``ceil``: the expected value of ceil(x) over x's fractional part."""
    return cycles + 0.5


class TableCycles(NamedTuple):
    """Per-entry stage totals of a ``TileTable`` as float arrays (exact integers); ``bound`` indexes ``STAGES``."""

    fetch: np.ndarray
    execute: np.ndarray
    result: np.ndarray
    overhead: np.ndarray
    total: np.ndarray
    bound: np.ndarray
    dram_bytes: np.ndarray
    binary_ops: np.ndarray


def _pipeline_moved(table: TileTable, overlay: OverlayConfig) -> np.ndarray:
    """Bytes each cell moves in the RTL pipeline: its activations, a row tile's weights with its first column tile,
    its results."""
    return ((table.act_beats * _chunk_first(table)[:, None] + _KIND_FIRST * table.weight_beats) * overlay.dram_width_bits / 8
            + table.result_bytes)


def _entry_cycles(stages: np.ndarray, steps: np.ndarray, moved: np.ndarray, binary_ops: np.ndarray,
                  params: ScheduleParams, whole: Callable[[np.ndarray], np.ndarray]) -> TableCycles:
    """Entries' cycles from their stage totals ``(3, entries)``, ``steps`` (the pipeline's step cycles where
    ``params.pipeline``, else the tiles, which pay the tile overhead), bytes moved and binary ops."""
    if params.pipeline:
        overhead = whole(np.full(stages.shape[1], _pipeline_overhead(params)))
        total = steps + overhead
    else:
        overhead = whole(params.layer_overhead_cycles + steps * params.tile_overhead_cycles)
        total = stages.max(axis=0) + overhead
    return TableCycles(stages[0], stages[1], stages[2], overhead, total, np.argmax(stages, axis=0), np.ceil(moved),
                       binary_ops)


def table_cycles(table: TileTable, overlay: OverlayConfig, params: ScheduleParams, relaxed: bool = False) -> TableCycles:
    """Cycles of every entry of ``table`` under ``params``, vectorised over all tiles of all entries.

    ``relaxed`` replaces the rounding to whole cycles by a smooth stand-in, so that the cycles are differentiable in
    ``params`` (for fitting; the exact figures are the unrelaxed ones).
    """
    if table.per_image_convs != params.per_image_convs:
        raise ScheduleError("tile table was built with per_image_convs="
                            f"{table.per_image_convs} but the parameters say {params.per_image_convs}")
    whole = _relaxed if relaxed else np.ceil
    cells = np.broadcast_to(table.entry[:, None], table.cell_tiles.shape).ravel()
    count = table.cell_tiles.ravel()
    per_entry = lambda cycles: np.bincount(cells, np.broadcast_to(cycles, table.cell_tiles.shape).ravel() * count,
                                           minlength=table.entries)
    if params.pipeline:
        fetch, execute, result, period = _pipeline_cycles(table, overlay, params, whole)
        steps, moved = per_entry(period), _pipeline_moved(table, overlay)
    else:
        fetch, execute, result = _cell_cycles(table, overlay, params, whole)
        steps, moved = per_entry(np.ones(table.cell_tiles.shape)), table.fetch_bytes + table.result_bytes
    stages = np.stack([per_entry(fetch), per_entry(execute), per_entry(result)])
    return _entry_cycles(stages, steps, per_entry(moved), per_entry(table.binary_ops), params, whole)


def _run_starts(at_least: list[int], words: int, capacity: int) -> list[int]:
    """``_block_starts``' greedy cut of one block's row tiles, from how many of them are at least each width (widest
    first, ``grouped_tiles_at_least``; ``words`` lhs buffer words per bit of width). Returns, per width (widest
    first), how many tiles that are neither the block's first nor its last start a run, then, per width, 1 where the
    last tile has that width and starts a run."""
    starts = [0] * (2 * len(at_least))
    used, before, last, final = -1, 0, 0, 0  # used < 0: the first tile opens the first run
    need = words * len(at_least)
    for i, upto in enumerate(at_least):
        count = upto - before
        if count:
            before, final = upto, i
            if used < 0:
                used, count = need, count - 1
            room = (capacity - used) // need if used < capacity else 0  # tiles the open run still takes
            if room >= count:
                used, last = used + count * need, 0
            else:
                count -= room
                per_run = capacity // need or 1  # a tile wider than the buffer is a run of its own
                runs = -(-count // per_run)
                used = need * (count - (runs - 1) * per_run)
                starts[i], last = runs, int(used == need)
        need -= words
    starts[final] -= last
    starts[len(at_least) + final] = last
    return starts


class HistogramSchedule:
    """The cycles of one network's layers at one batch under one ``ScheduleParams``, from per-kernel bit-widths
    through their histograms: ``cycles(bits, act_bits)`` equals ``table_cycles`` of the grouped ``tile_table``.

    Sorted widest first, a row block's tiles are all of ``Dm`` rows but the last, and the number of them whose
    maximum is at least ``b`` follows from the block's histogram (``tiling.grouped_tiles_at_least``). All cells of
    a tile cost the same wherever it has the same rows, width, activation bits, place (its block's first tile or
    not) and fetches (activation-stationary: whether the block's weights fit the lhs buffer together;
    weight-stationary: whether it starts a run of row tiles that share it). So the constructor probes every block
    shape once for every (activation bits, width, full or last tile, place, fetch variant) through the very
    formulas ``table_cycles`` uses, and a plan costs its histograms, one product of the tiles' counts with the
    probes' sums per block, the first and last tiles' corrections, and, only where weight-stationary runs change
    what a block fetches and the loop order depends on it, a greedy walk over a block's widths (``_run_starts``).
    The probes' sums are whole numbers or eighths (with a power-of-two DRAM width) in float64, so any order of
    adding them is exact. Under ``ScheduleParams.pipeline`` the RTL's weight chunks depend on the order of a
    block's tile widths (a greedy cut), so plans are costed through their ``tile_table`` instead (slower).
    """

    def __init__(self, layers: Sequence[LayerSpec], overlay: OverlayConfig, params: ScheduleParams, batch: int = 1):
        _check_batch(batch)
        self.overlay, self.params = overlay, params
        self._layers, self._batch = list(layers), batch
        if params.pipeline:
            # the RTL's weight chunks depend on the order of a block's tile widths beyond their histogram (the
            # greedy cut of ``_chunk_starts``): pipeline plans are costed through their tile table
            return
        dm, dk, dn, top, rhs = overlay.dm, overlay.dk, overlay.dn, overlay.max_bits, overlay.rhs_mem_words
        blocks = [(i, block) for i, layer in enumerate(layers) for block in _blocks(layer, batch, params.per_image_convs)]
        shapes: dict[tuple[int, ...], int] = {}
        kind = np.array([shapes.setdefault((b.group == PACKED_GROUPS,) + tuple(b[1:]), len(shapes)) for _, b in blocks])
        packed, block_rows, k, n, images, ohw = np.array(list(shapes), dtype=np.int64).T
        packed = packed.astype(bool)
        tiles = -(-block_rows // dm)
        first_kwords = -(-np.where(packed, np.minimum(block_rows, dm) * k, k) // dk)

        # probes: kind, activation bits, tile maximum (widest first), full or last tile, first of its block or not
        ci, ai, bi, last, later = np.indices((len(shapes), top, top, 2, 2)).reshape(5, -1)
        abits, bits = ai + 1, np.where(packed[ci], packed_row_bits(top - bi), top - bi)
        rows = np.where(last == 1, block_rows[ci] - dm * (tiles[ci] - 1), dm)
        k_eff = np.where(packed[ci], rows * k[ci], k[ci])
        kwords = -(-k_eff // dk)
        act_words, column_tiles, first = first_kwords[ci] * abits, -(-n[ci] // dn), later == 0
        stay = kwords * bits <= overlay.lhs_mem_words
        _, ws_width, ws_count = _column_kinds(n[ci], dn, column_tiles)
        as_first, as_width, as_count = _column_kinds(n[ci], dn, np.maximum(1, rhs // act_words))
        ws_count, as_count = ws_count * images[ci][:, None], as_count * images[ci][:, None]
        flags = [np.zeros(ci.size, dtype=bool), np.ones(ci.size, dtype=bool)]
        fetched = ([_ws_fetched(first, stay, run, ~packed[ci], act_words, column_tiles, rhs) for run in flags]
                   + [_as_fetched(first, stay, as_first, cut, act_words, rhs) for cut in flags])
        variants = [(_fetch_bytes(rows, kwords, bits, abits, width, f, dk), count)
                    for f, width, count in zip(fetched, [ws_width] * 2 + [as_width] * 2, [ws_count] * 2 + [as_count] * 2)]
        table = _tile_table(np.arange(ci.size), ci.size, ws_count, variants[0][0], rows, kwords, k_eff, bits, abits,
                            ws_width, ohw[ci], overlay, params.per_image_convs)
        total = lambda cells, count=ws_count: (np.broadcast_to(cells, count.shape) * count).sum(axis=1)
        # the sums of the stage-total model, with the fetch cycles (0) and bytes (in 4, with the results') chosen per
        # plan from those of each variant (7 on, cycles and bytes): weight-stationary without and with a run
        # start, activation-stationary with the block's weights fitting the lhs buffer together and not; and
        # the weight words (6), which say whether they do
        _, execute, result = _cell_cycles(table, overlay, params)
        sums = [np.zeros(ci.size), total(execute), total(result), total(1.0), total(table.result_bytes),
                total(table.binary_ops), (kwords * bits).astype(np.float64)]
        for fetch_bytes, count in variants:
            sums += [total(_cell_cycles(table._replace(fetch_bytes=fetch_bytes), overlay, params)[0], count),
                     total(fetch_bytes, count)]
        probe = np.stack(sums, axis=-1).reshape(len(shapes) * top, top, 2, 2, len(sums))
        single = np.repeat(tiles == 1, top)[:, None, None]
        normal = probe[:, :, 0, 1]
        first = np.where(single, probe[:, :, 1, 0], probe[:, :, 0, 0]) - normal  # the widest tile's correction
        last = np.where(single, 0.0, probe[:, :, 1, 1] - normal)  # the narrowest's
        # per width, what one more tile at least that wide adds (sum_j at_least_j * (normal_j - normal_j+1) over the
        # tiles), and the corrections as steps at the widest tile and the narrowest (1 from there on)
        increments = lambda sums: sums - np.concatenate([sums[:, 1:], np.zeros_like(sums[:, :1])], axis=1)
        self._table = np.concatenate([increments(normal), increments(first), increments(last)], axis=1)
        # what starting a weight-stationary run adds to a tile's fetch, and where it can (a tile other than the
        # first and last of each width; the last tile of each width: ``_run_starts``)
        self._run = np.concatenate([normal[..., 9:11] - normal[..., 7:9],
                                    probe[:, :, 1, 1, 9:11] - probe[:, :, 1, 1, 7:9]], axis=1)
        self._runs_matter = (self._run != 0).any(axis=(1, 2))
        self._layer = np.array([i for i, _ in blocks])
        self._kind_base = kind * top - 1  # plus a layer's activation bits: its probes' row
        self._tiles, self._words, self._shared = tiles[kind], first_kwords[kind], ~packed[kind]
        self._bins = np.repeat(np.arange(len(blocks)) * (top + 1), block_rows[kind])
        starts = np.flatnonzero(np.r_[True, self._layer[1:] != self._layer[:-1]])
        self._layer_starts = starts if starts.size < len(blocks) else None

    def cycles(self, bits: np.ndarray, act_bits: np.ndarray) -> TableCycles:
        """Cycles of every layer: ``bits`` holds every kernel's weight bit-width, layer after layer, ``act_bits``
        every layer's activation bits, all within ``[1, overlay.max_bits]`` (not checked here)."""
        overlay, top = self.overlay, self.overlay.max_bits
        if self.params.pipeline:
            ends = np.cumsum([layer.c_out for layer in self._layers])
            entries = [LayerEntry(layer, b, int(a)) for layer, b, a in
                       zip(self._layers, np.split(np.asarray(bits), ends[:-1]), np.asarray(act_bits).tolist())]
            table = tile_table(entries, overlay, self._batch, True, self.params.per_image_convs)
            return table_cycles(table, overlay, self.params)
        counts = np.bincount(self._bins + bits, minlength=len(self._tiles) * (top + 1))
        at_least = grouped_tiles_at_least(counts.reshape(len(self._tiles), top + 1), overlay.dm)
        row = self._kind_base + act_bits[self._layer]
        weights = np.concatenate([at_least, np.minimum(at_least, 1), at_least >= self._tiles[:, None]], axis=1)
        sums = np.matmul(weights[:, None, :], self._table[row])[:, 0]
        lhs = overlay.lhs_mem_words
        cut = sums[:, 6] > lhs
        ws, activation_stationary = sums[:, 7:9], np.where(cut[:, None], sums[:, 13:15], sums[:, 11:13])
        walk = np.flatnonzero(cut & self._runs_matter[row] & (activation_stationary[:, 1] >= ws[:, 1]))
        if walk.size:
            starts = [_run_starts(a, w, lhs) for a, w in zip(at_least[walk].tolist(), self._words[walk].tolist())]
            ws[walk] += np.matmul(np.array(starts, dtype=np.float64)[:, None, :], self._run[row[walk]])[:, 0]
        fetch = np.where((self._shared & (activation_stationary[:, 1] < ws[:, 1]))[:, None], activation_stationary, ws)
        sums[:, 0] = fetch[:, 0]
        sums[:, 4] += fetch[:, 1]
        if self._layer_starts is not None:
            sums = np.add.reduceat(sums, self._layer_starts, axis=0)
        return _entry_cycles(sums[:, :3].T, sums[:, 3], sums[:, 4], sums[:, 5], self.params, np.ceil)


def combine_stages(fetch: int, execute: int, result: int, tiles: int, params: ScheduleParams,
                   dram_bytes: int = 0, binary_ops: int = 0, steps: int = 0) -> LayerCycles:
    """Layer cycles from stage totals: the stages overlap, the fixed overheads add. In the pipeline model
    (``params.pipeline``) the total is the steps' pipeline cycles ``steps`` plus the layer overhead."""
    stages = (int(fetch), int(execute), int(result))
    slowest = int(np.argmax(stages))
    if params.pipeline:
        overhead = int(np.ceil(_pipeline_overhead(params)))
        return LayerCycles(*stages, overhead, int(steps) + overhead, STAGES[slowest], int(dram_bytes), int(binary_ops))
    overhead = int(np.ceil(params.layer_overhead_cycles + tiles * params.tile_overhead_cycles))
    return LayerCycles(*stages, overhead, stages[slowest] + overhead, STAGES[slowest], int(dram_bytes), int(binary_ops))


def network_cycles(entries: Sequence[LayerEntry], overlay: OverlayConfig, params: ScheduleParams, batch: int = 1,
                   grouped: bool = True) -> list[LayerCycles]:
    """``layer_cycles`` of many layers at once (one vectorised pass)."""
    cycles = table_cycles(tile_table(entries, overlay, batch, grouped, params.per_image_convs), overlay, params)
    return [
        LayerCycles(int(cycles.fetch[i]), int(cycles.execute[i]), int(cycles.result[i]), int(cycles.overhead[i]),
                    int(cycles.total[i]), STAGES[int(cycles.bound[i])], int(cycles.dram_bytes[i]), int(cycles.binary_ops[i]))
        for i in range(len(entries))
    ]


def layer_cycles(layer: LayerSpec, weight_bits: Sequence[int] | np.ndarray, act_bits: int, overlay: OverlayConfig,
                 params: ScheduleParams, batch: int = 1, grouped: bool = True) -> LayerCycles:
    """Closed-form cycles of one layer (equal to summing ``layer_tiles``), vectorised over tiles."""
    return network_cycles([LayerEntry(layer, weight_bits, act_bits)], overlay, params, batch, grouped)[0]


def layer_tiles(layer: LayerSpec, weight_bits: Sequence[int] | np.ndarray, act_bits: int, overlay: OverlayConfig,
                params: ScheduleParams, batch: int = 1, grouped: bool = True) -> Iterator[TileWork]:
    """Every tile of the layer in execution order, with its per-stage cycles.

    Images in order when ``params.per_image_convs`` lowers a conv layer image by image (columns of image ``i`` are
    ``i * out_h * out_w`` onwards), then groups (row blocks) in order. Weight-stationary: for each run of row tiles whose weights share the lhs buffer,
    for each column tile, each row tile of the run. Activation-stationary: for each column block, for each row
    tile, each column tile of the block.
    """
    layout, table = _layout_and_table([LayerEntry(layer, weight_bits, act_bits)], overlay, batch, grouped,
                                      params.per_image_convs)
    if params.pipeline:
        fetch, execute, result, period = _pipeline_cycles(table, overlay, params)
    else:
        fetch, execute, result = _cell_cycles(table, overlay, params)
        period = np.zeros(fetch.shape)
    n, dn = layer.gemm(batch // layout.images).n, overlay.dn
    block_start = np.r_[0, np.cumsum(np.bincount(layout.row_block))]
    blocks = [(image, block, order) for image in range(layout.images) for block, order in enumerate(layout.block_order)]
    for image, block, order in blocks:
        first, stop = int(block_start[block]), int(block_start[block + 1])
        offsets = np.r_[0, np.cumsum(layout.rows[first:stop])]
        col_tiles, per_block = int(layout.column_tiles[block]), int(layout.columns_per_block[block])

        # this block's values bound now (tile() runs only within this iteration, but a closure reads them late)
        def tile(r: int, c: int, image: int = image, block: int = block, order: np.ndarray = order, first: int = first,
                 offsets: np.ndarray = offsets, col_tiles: int = col_tiles, per_block: int = per_block) -> TileWork:
            kind = 0 if c == 0 else 3 if c == col_tiles - 1 else 1 if c % per_block == 0 else 2
            cell = first + r
            return TileWork(
                int(layout.block_group[block]), order[offsets[r]:offsets[r + 1]],
                image * n + c * dn, image * n + min(n, (c + 1) * dn),
                int(layout.bits[cell]), int(table.passes[cell, 0] // layout.bits[cell]),
                int(fetch[cell, kind]), int(execute[cell, kind]), int(result[cell, kind]), int(period[cell, kind]),
            )

        if params.pipeline:  # the RTL's order: weight chunks, for each column tile each row tile of the chunk
            chunks = np.flatnonzero(_chunk_first(table)[first:stop]).tolist() + [stop - first]
            for chunk_start, chunk_stop in zip(chunks[:-1], chunks[1:]):
                for c in range(col_tiles):
                    for r in range(chunk_start, chunk_stop):
                        yield tile(r, c)
        elif layout.activation_stationary[block]:
            for first_col in range(0, col_tiles, per_block):
                for r in range(stop - first):
                    for c in range(first_col, min(col_tiles, first_col + per_block)):
                        yield tile(r, c)
        else:
            runs = np.flatnonzero(layout.row_block_first[first:stop]).tolist() + [stop - first]
            for run_start, run_stop in zip(runs[:-1], runs[1:]):
                for c in range(col_tiles):
                    for r in range(run_start, run_stop):
                        yield tile(r, c)


def sum_tiles(tiles: Sequence[TileWork] | Iterator[TileWork], params: ScheduleParams) -> LayerCycles:
    """Layer cycles from executed tiles (what a cycle counter accumulates); ``dram_bytes``/``binary_ops`` stay 0."""
    fetch = execute = result = count = steps = 0
    for tile in tiles:
        fetch, execute, result, count = fetch + tile.fetch, execute + tile.execute, result + tile.result, count + 1
        steps += tile.cycles
    return combine_stages(fetch, execute, result, count, params, steps=steps)
