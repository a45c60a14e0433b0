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
from typing import Any, Callable, Iterator, NamedTuple, Sequence, cast

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
    together in one lhs region, each column tile's activations fetched once for them): a chunk's pass over a later
    column tile costs the slowest of its steps' executes or results, the activations' fetch and the two-region
    fetch/execute loop; its first column tile the requester's chain of table entries, multiplies and weights as
    far as the previous chunk's last passes leave it exposed, or with one or two column tiles the requester's own
    loop. The efficiencies and tile/pass overheads are then unused. Its inputs: the HP port's
    ``read_latency_cycles``, ``read_outstanding`` bursts, ``write_latency_cycles``, ``write_outstanding`` bursts and
    ``port_bytes_per_cycle`` (each direction; the rtlsim ``HPPortModel``'s fields). Everything else is derived
    from the RTL but these constants: ``layer_overhead_cycles`` (fitted: the controller's setup sequence and the
    start/finish handshakes beyond the table check's read latency and the last write response), ``row_cycles``
    (fitted: per row of a row tile, the bit length of its channel index in the requester's channel-offset
    multiply), ``result_burst_cycles`` (fitted: per write burst) and ``write_slot_cycles`` (fitted: a write
    burst's hold of an outstanding slot beyond latency and beats); ``row_tile_cycles`` (per row tile in the
    requester) and ``step_sync_cycles`` (in the rhs regions' loop) are extra slack the RTL does not have: 0.
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
    row_cycles: float = 2.6
    result_burst_cycles: float = 2.2
    write_slot_cycles: float = 0.7

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
    # result: one burst per row and run of columns inside one image (linear: every column is its own image), of
    # (odd start + int32s + 1) // 2 beats: two int32 a beat and half a beat more per burst where the alignment varies
    ohw = ohw[:, None]
    crossings = np.where(ohw == 1, width - 1, np.where(ohw % dn == 0, 0, (width - 1) / np.maximum(ohw, 1)))
    row_bursts = 1 + crossings + width * overlay.acc_bits / 8 / 4096
    odd = np.where((ohw == 1) | (ohw % 2 == 1) | (dn % 2 == 1), 0.5, 0.0)
    row_beats = width * overlay.acc_bits / beat_bits + odd * row_bursts
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


class _TileTerms(NamedTuple):
    """A row tile's terms in the RTL pipeline (``_tile_terms``), which know nothing of weight chunks: arrays over row
    tiles, ``(row tiles, 1)`` or ``(row tiles, 4)`` over the column-tile kinds (any numeric array field; ``_ChunkTerms``
    sums and picks every field). ``fetch``, ``execute``, ``result`` and ``period`` are its cells' cycles where it
    does not start a chunk (unrounded)."""

    fetch: np.ndarray
    execute: np.ndarray
    result: np.ndarray
    period: np.ndarray
    issue: np.ndarray  # passes * kwords
    base: np.ndarray  # the larger of the step's execute and result
    act: np.ndarray  # the column tile's activations streamed (steady state)
    act_wait: np.ndarray  # the column tile's activations from an idle DMA
    chain: np.ndarray  # the requester's loop per row tile: weights, then the next entry, multiplies, state changes
    chain_acts: np.ndarray  # what the first column tile's activations, read behind the weights, add to ``chain``
    acts_in: np.ndarray  # from the weights' read to the first column tile's activations in
    weights_in: np.ndarray  # from the weights' read to the weights in
    multiplies: np.ndarray  # the requester's sequential multiplies and state changes for the row tile's entry
    reread: np.ndarray  # reading the entry again and its first multiply (a chunk cut where this row tile did not fit)
    entry_wait: np.ndarray  # one table entry from an idle DMA
    last_write: np.ndarray  # the step's write-back when no later step follows (a layer's last step)
    cells: np.ndarray  # column tiles of each kind
    check: np.ndarray  # the tile-table check's share of the row tile's entry beats, paid by its first step


class _ChunkTerms(NamedTuple):
    """Per weight chunk: every ``_TileTerms`` field summed over its row tiles, of its first and of its last row tile,
    its row tiles and whether it follows a chunk of its layer (arrays ``(chunks, 1)`` or ``(chunks, 4)``)."""

    sum: _TileTerms
    first: _TileTerms
    last: _TileTerms
    tiles: np.ndarray  # (chunks, 1)
    after: np.ndarray  # (chunks, 1) bool: not its layer's first chunk


class _StepCycles(NamedTuple):
    """Unrounded (fetch, execute, result, pipeline) cycles of cells."""

    fetch: np.ndarray
    execute: np.ndarray
    result: np.ndarray
    period: np.ndarray


def _port(overlay: OverlayConfig, params: ScheduleParams) -> tuple[float, float, float, float, float]:
    """The HP port as the RTL sees it: (beats per cycle, read latency, write latency, reads and writes in flight)."""
    beat_bytes = overlay.dram_width_bits / 8
    return (min(params.port_bytes_per_cycle, beat_bytes) / beat_bytes, params.read_latency_cycles,
            params.write_latency_cycles, min(params.read_outstanding, RTL_READ_BURSTS),
            min(params.write_outstanding, RTL_WRITE_BURSTS))


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bits of the whole ``values`` >= 0 (0 for 0): the cycles the RTL's shift-and-add ``SeqMul`` takes beyond 3."""
    return np.frexp(values)[1]


def _tile_terms(table: TileTable, overlay: OverlayConfig, params: ScheduleParams) -> _TileTerms:
    """Every row tile's ``_TileTerms`` (see ``_pipeline_cycles``)."""
    rho, lat, wlat, reads, writes = _port(overlay, params)

    def stream(beats: np.ndarray, bursts: np.ndarray) -> np.ndarray:
        n = np.ceil(beats / RTL_BURST_BEATS)
        full = np.gcd(n.astype(np.int64), max(int(round(reads)), 1)) > 1  # the slots can keep to full bursts
        held = beats + full * (RTL_BURST_BEATS * n - beats)
        return np.maximum(beats / rho, (bursts * lat + held / rho) / reads)

    def wait(beats: np.ndarray, bursts: np.ndarray, last: float | None = None) -> np.ndarray:
        # from an idle DMA: a wave of bursts per free slot, each one read latency after the wave before; ``last``:
        # the beats of the last burst (a table entry), the others of equal size
        waves = np.maximum(np.ceil(np.floor(bursts) / reads), 1)
        tail = waves - 1 + bursts - (waves - 1) * reads  # the bursts on the critical path
        if last is None:
            tail_beats = tail * beats / np.maximum(bursts, 1)
        else:
            tail_beats = (tail - 1) * (beats - last) / np.maximum(bursts - 1, 1) + last
        return np.maximum(lat + beats / rho, waves * (lat + 1) - 1 + tail_beats / rho) - 1 / rho

    rows, count = table.rows, table.entry.size
    dm, entry = overlay.dm, 1 + overlay.dm  # beats of one tile-table entry (2 + 2 Dm uint32)
    issue = table.passes * table.kwords
    execute = issue + dm + 5
    act = stream(table.act_beats, table.act_bursts)
    per_burst = table.result_beats / np.maximum(table.result_bursts, 1)
    # a burst's beats go one a cycle while the write budget lasts (it refills to one cycle's worth between bursts)
    beats = per_burst + np.maximum(0, (per_burst - 1) * (1 / rho - 1) - 0.5)
    written = 2 * rows + table.result_bursts * (beats + params.result_burst_cycles) + 1
    slot = wlat + params.write_slot_cycles + per_burst
    result = np.maximum(written, table.result_bursts * slot / writes)
    base = np.maximum(execute, result)
    weights = stream(table.weight_beats, table.weight_bursts)
    # every row tile's first step fetches its weights and adds the tile-table check's share of its entry's beats
    check = np.full((count, 1), np.maximum(entry / rho, (entry / RTL_BURST_BEATS * lat + entry / rho) / reads))
    one = np.ones((count, 1))
    words = table.kwords * overlay.dk / overlay.dram_width_bits  # beats per bit-plane of a row or column
    bits = np.rint(table.weight_beats / (rows * words))
    multiplies = (18 + _bit_length(table.kwords) + 2 * _bit_length(words) + _bit_length(bits * words)
                  + _bit_length(table.passes / bits * words) + 3 * rows + params.row_tile_cycles + params.row_cycles * rows)
    w, wb, a, ab = table.weight_beats, table.weight_bursts, table.act_beats[:, :1], table.act_bursts[:, :1]
    behind = wait(w + entry, wb + 1, entry)
    entry_wait = wait(entry * one, one, entry)
    return _TileTerms(
        _KIND_FIRST * (weights + entry / rho), execute, result, base + _KIND_FIRST * check, issue, base, act,
        wait(table.act_beats, table.act_bursts), behind + multiplies + 3, wait(w + a + entry, wb + ab + 1, entry) - behind,
        wait(w + a, wb + ab), wait(w, wb), multiplies, entry_wait + _bit_length(table.kwords) + 9, entry_wait,
        np.maximum(written, (table.result_bursts / writes - 1) * slot),
        np.broadcast_to(table.cell_tiles, base.shape).astype(np.float64), check)


def _term_matrix(terms: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The fields of ``terms`` side by side in one float matrix (row tiles, columns), and each field's columns."""
    rows = len(terms[0])
    parts = [np.broadcast_to(np.asarray(values, dtype=np.float64), (rows, np.shape(values)[1])) for values in terms]
    edges = np.cumsum([0] + [part.shape[1] for part in parts]).tolist()
    return np.concatenate(parts, axis=1), tuple(slice(a, b) for a, b in zip(edges[:-1], edges[1:]))


def _terms_of(matrix: np.ndarray, columns: tuple[slice | None, ...], missing: Any = None) -> _TileTerms:
    """The ``_TileTerms`` whose fields lie in ``columns`` of the (rows, columns) ``matrix`` (None: ``missing``)."""
    return _TileTerms._make([missing if at is None else matrix[:, at] for at in columns])


_COARSE, _FINE = 2.0 ** -20, 2.0 ** -52


def _split(values: np.ndarray) -> np.ndarray:
    """``values`` as whole numbers of ``_COARSE`` and of ``_FINE`` (stacked on a new last but one axis), which float64 sums
    exactly in any order (of up to 2^33 / ``_COARSE`` in all; terms of at least 1 split exactly)."""
    coarse = np.round(values / _COARSE)
    return np.stack([coarse, np.round((values - coarse * _COARSE) / _FINE)], axis=-2)


def _joined(parts: np.ndarray) -> np.ndarray:
    """Sums of ``_split`` parts as floats: the exact sum of the split terms, rounded once."""
    return parts[..., 0, :] * _COARSE + parts[..., 1, :] * _FINE


def _chunk_terms(terms: _TileTerms, chunk_first: np.ndarray, entry: np.ndarray) -> _ChunkTerms:
    """The ``_ChunkTerms`` of consecutive row tiles cut into chunks where ``chunk_first``; ``entry``: each row tile's
    layer entry. Sums are exact sums rounded once, so that ``HistogramSchedule`` may add them in any order."""
    matrix, columns = _term_matrix(terms)
    starts = np.flatnonzero(chunk_first)
    ends = np.r_[starts[1:], chunk_first.size] - 1
    sums = _joined(np.add.reduceat(_split(matrix), starts, axis=0))
    return _ChunkTerms(_terms_of(sums, columns), _terms_of(matrix[starts], columns), _terms_of(matrix[ends], columns),
                       (ends + 1 - starts)[:, None], np.r_[False, entry[1:] == entry[:-1]][starts, None])


class _HeadSteps(NamedTuple):
    """What ``_chunk_steps`` takes of a chunk's first row tile and whether the chunk follows one of its layer alone
    (``_head_steps``)."""

    fill: np.ndarray  # from the requester's start on the chunk to its first activations in
    reread: np.ndarray  # reading the first entry again (one column tile, after a chunk of its layer)
    stretched: np.ndarray  # the first column tile's pass is the requester's stretch, not one step
    hidden: np.ndarray  # three or more column tiles after a chunk of its layer: the requester runs ahead
    unwritten: np.ndarray  # a layer's first chunk: its first step's result, beyond its execute, overlaps nothing
    acts: np.ndarray  # the requester's share of the later column tiles' activations
    first_tiles: np.ndarray  # the first column tiles that share the first kind's cost
    fetch: np.ndarray  # the cells' fetch
    check: np.ndarray  # the tile-table check's share, paid by the first step


class _TailSteps(NamedTuple):
    """What ``_chunk_steps`` takes of a chunk's last row tile alone (``_tail_steps``)."""

    backlog: np.ndarray  # the rest of the last step, or the result stage's backlog, before execute needs the fill
    end: np.ndarray  # the last step's write-back when no later step follows


def _head_steps(head: _TileTerms, after: np.ndarray, overlay: OverlayConfig, params: ScheduleParams) -> _HeadSteps:
    """``_HeadSteps`` of chunks' first row tiles ``head``, ``after`` a chunk of their layer or not."""
    cells = head.cells
    later = cells[:, 1:].sum(axis=1, keepdims=True)  # column tiles after the first
    # the chunk's fill, from the requester's start on it to its first activations in: the first entry (behind the
    # previous chunk's last activations), its multiplies, its weights and activations; with one column tile a chunk
    # after another reads its first entry again (the previous chunk was cut where it did not fit)
    reread = head.reread * (after & (later == 0))
    wait = np.maximum(head.act_wait[:, 2:3], head.act_wait[:, 3:4]) + (1 + overlay.dm) / _port(overlay, params)[0]
    fill = np.where(after, wait, head.entry_wait + 2) + 5 + head.multiplies + head.acts_in + reread
    # one column tile: the requester's loop carries the next chunk's fill; a layer's first chunk (``~after``, also
    # standing for its last) has its first step's execute but not its result
    first = ~after
    return _HeadSteps(fill, reread, (later >= 1) | first, after & (later >= 2), first * (head.base[:, :1] - head.execute),
                      (cells[:, 1:] * (head.act[:, 1:] + 3)).sum(axis=1, keepdims=True), np.maximum(cells[:, :1], 1),
                      head.act + head.fetch, _KIND_FIRST * head.check)


def _tail_steps(last: _TileTerms, overlay: OverlayConfig) -> _TailSteps:
    """``_TailSteps`` of chunks' last row tiles ``last``."""
    e, i, r = last.execute, last.issue, last.result[:, 3:4]
    return _TailSteps(np.maximum(e - i, 3 * r - e - i - overlay.dm - 1),
                      np.where(last.cells[:, 3:4] > 0, last.last_write[:, 3:4], last.last_write[:, :1]))


def _chunk_steps(chunk: _ChunkTerms, overlay: OverlayConfig, params: ScheduleParams, opening: _HeadSteps | None = None,
                 closing: _TailSteps | None = None) -> _StepCycles:
    """The cells of every chunk's first row tile (see ``_pipeline_cycles``); ``opening`` and ``closing``: its first
    and last row tiles' ``_head_steps`` and ``_tail_steps`` where known."""
    head, total, last, after = chunk.first, chunk.sum, chunk.last, chunk.after
    own = _head_steps(head, after, overlay, params) if opening is None else opening
    ends = _tail_steps(last, overlay) if closing is None else closing
    cells = head.cells
    # a later column tile: the chunk's executes or results, the activations' stream or the two rhs regions' loop
    steps = np.maximum(total.execute, total.result)
    loop = (head.act_wait + total.issue + (chunk.tiles - 1) * (overlay.dm + 5) + 2 + params.step_sync_cycles) / 2
    passes = np.maximum(np.maximum(steps + 1, head.act), loop)
    later_work = (cells[:, 1:] * passes[:, 1:]).sum(axis=1, keepdims=True)
    # the first column tile: from its activations in, each later row tile runs once the requester's chain has its
    # weights in (``stretch``, with the last step's execute: ``stretch_e``)
    chain = total.chain - last.chain + head.chain_acts + last.weights_in - head.acts_in + 1
    step = steps[:, :1] + 1
    stretch = np.maximum(step, chain + last.base[:, :1])
    stretch_e = np.maximum(total.execute + 1, chain + last.execute)
    # three or more column tiles: the requester starts the chunk once it has the previous chunk's last activations,
    # two passes before execute needs the fill (plus the rest of that step, or the result stage's backlog)
    hidden = np.maximum(passes[:, 1:2], passes[:, 2:3]) + passes[:, 3:4] + ends.backlog
    behind = step + np.maximum(0, own.fill + stretch_e - hidden - steps[:, :1] - 1)
    # a layer's first chunk adds its fill and its last write-back; the others cost at least the requester's loop
    work = np.where(own.hidden, behind, np.where(own.stretched, stretch, step)) + later_work - own.unwritten
    requester = total.chain + head.chain_acts + own.reread + own.acts
    cost = np.where(~after, work + own.fill + ends.end, np.maximum(work, requester))
    period = np.where(_KIND_FIRST, (cost - later_work) / own.first_tiles, passes) - (total.base - head.base)
    return _StepCycles(own.fetch, head.execute, head.result, period + own.check)


def _pipeline_cycles(table: TileTable, overlay: OverlayConfig, params: ScheduleParams,
                     whole: Callable[[np.ndarray], np.ndarray] = np.ceil) -> tuple[np.ndarray, ...]:
    """Per-step (fetch, execute, result, pipeline) cycles of every cell in the RTL engine (``params.pipeline``).

    Derived from ``hls/rtl`` (see its ``__init__``; traced cycle by cycle in Amaranth's simulator against the
    rtlsim HP-port model) with the port's latency ``L``, outstanding bursts ``O`` (at most the DMA's 8) and ``rho``
    beats per cycle. Bursts return in order: a stream of ``b`` beats in ``n`` bursts takes ``max(b / rho,
    (n L + b / rho) / O)`` in steady state; from an idle DMA its last beat comes after ``max(L + b / rho,
    w (L + 1) - 1 + b' / rho) - 1 / rho`` in ``w = ceil(n / O)`` waves, ``b'`` the beats of the bursts on the
    critical path (one per later wave and those of the first). Per step: execute ``passes * kwords + Dm + 5``
    (issue, flush, drain, hand-over); result ``2 * rows + bursts * (t + c_b) + 1``, ``t`` a burst's beats at one a
    cycle while the write budget lasts (``b + max(0, (b - 1)(1 / rho - 1) - 1/2)``), or its writes'
    outstanding-slot limit ``bursts * (L_w + c_w + beats per burst) / O_w``.

    Per weight chunk (``TileTable.chunk_first``, the RTL's greedy cut) of ``R`` row tiles and ``C`` column tiles:

    * a later column tile's pass costs the slowest of the chunk's executes or results (summed, plus the pass's
      hand-over), the activations' stream and the loop of each of the two rhs regions, ``(wait(b) + sum(passes
      * kwords) + (R - 1)(Dm + 5) + 2 + c_s) / 2``;
    * the requester's chain per row tile: it waits for the row tile's entry (read behind the previous weights),
      multiplies (``18 + bit lengths of kwords, 2x beats per plane, the weight and activation beats per row + 3
      rows + c_t + c_r rows``, the last the rows' channel offsets), issues the weights: ``wait(w + entry) +
      multiplies + 3``; the first column tile's activations follow the first row tile's weights;
    * the first column tile's pass: each later row tile runs once its weights are in, the larger of the steps and
      the chain from the activations in to the last step's end;
    * its fill, from the requester's start on the chunk to its activations in: the first entry (behind the previous
      chunk's last activations), multiplies, weights and activations; with ``C >= 3`` the requester starts two
      passes (plus the rest of the step, or the result stage's backlog) before execute needs it, which hide the
      fill and the chain; with ``C <= 2`` the chunk costs at least the requester's own loop (its chain and the
      later column tiles' activations, all through the one DMA), which then carries the next chunk's fill (with
      one column tile a chunk after another reads its first entry again: the previous one was cut where it did
      not fit);
    * a layer's first chunk adds its fill, has its first step's execute but not its write-back (nothing earlier to
      overlap) and pays the last step's write-back, ``max(result, (bursts / O_w - 1)(L_w + c_w + beats per
      burst))``, standing for the layer's last chunk; every row tile's first step adds the tile-table check's share
      of its entry's beats.

    The chunk's first row tile carries what its column tiles cost beyond its other row tiles' steps.

    In three parts, which ``HistogramSchedule`` shares: ``_tile_terms`` (per row tile), ``_chunk_terms`` (their sums,
    first and last per chunk) and ``_chunk_steps`` (a chunk's first row tile's cells from those, with what it takes of
    the first and of the last row tile alone in ``_head_steps`` and ``_tail_steps``); the other row tiles cost their
    own ``_TileTerms`` cells.
    """
    terms = _tile_terms(table, overlay, params)
    chunk_first = _chunk_first(table)
    heads = _chunk_steps(_chunk_terms(terms, chunk_first, table.entry), overlay, params)
    seg = np.cumsum(chunk_first) - 1
    cell = lambda own, head: whole(np.broadcast_to(np.where(chunk_first[:, None], head[seg], own), table.cell_tiles.shape))
    return tuple(cell(own, head) for own, head in zip(terms[:4], heads))


def _chunk_first(table: TileTable) -> np.ndarray:
    """Per row tile: it starts an RTL weight chunk (every row tile where the table does not say)."""
    if table.chunk_first is None:
        return np.ones(table.entry.size, dtype=bool)
    return np.asarray(table.chunk_first, dtype=bool)


def _pipeline_overhead(params: ScheduleParams) -> float:
    """Per-layer cycles of the RTL pipeline beyond its steps: setup (fitted), the table check's read latency and the
    last write response."""
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
    adding them is exact.

    Under ``ScheduleParams.pipeline`` the probes are ``_tile_terms`` (per block shape, activation bits, width, full
    or last tile) and a plan's RTL weight chunks follow from its histograms too: ``_walk_chunks`` runs the greedy
    cut of ``_chunk_starts`` over a block's widths, all blocks at once. Every chunk costs what its first row tile's
    cells (``_chunk_steps`` of its ``_ChunkTerms``) add to its tiles' own cells; the chunks that hold one width
    only cost the same for the same (shape, activation bits, width, lhs region), so they are probed once too, and
    per plan the chunk formula runs on the other chunks only (at most one per block and width, and the last), with
    their first and last row tiles' ``_head_steps`` and ``_tail_steps`` and their first row tile's fetch, execute and
    result cells (its own alone) probed, so that only its pipeline cells are left to evaluate.
    """

    def __init__(self, layers: Sequence[LayerSpec], overlay: OverlayConfig, params: ScheduleParams, batch: int = 1):
        _check_batch(batch)
        self.overlay, self.params = overlay, params
        top = overlay.max_bits
        blocks = [(i, block) for i, layer in enumerate(layers) for block in _blocks(layer, batch, params.per_image_convs)]
        shapes: dict[tuple[int, ...], int] = {}
        kind = np.array([shapes.setdefault((b.group == PACKED_GROUPS,) + tuple(b[1:]), len(shapes)) for _, b in blocks])
        shape = np.array(list(shapes), dtype=np.int64).T  # per kind: packed, rows, k, n, images, ohw
        self._layer = np.array([i for i, _ in blocks])
        self._kind, self._kind_base = kind, kind * top - 1  # plus a layer's activation bits: its probes' row
        self._tiles = (-(-shape[1] // overlay.dm))[kind]
        self._bins = np.repeat(np.arange(len(blocks)) * (top + 1), shape[1][kind])
        starts = np.flatnonzero(np.r_[True, self._layer[1:] != self._layer[:-1]])
        self._layer_starts = starts if starts.size < len(blocks) else None
        if params.pipeline:
            self._probe_chunks(shape)
        else:
            self._probe_stage_totals(shape)

    def _probe_stage_totals(self, shape: np.ndarray) -> None:
        overlay, params, kind = self.overlay, self.params, self._kind
        dm, dk, dn, top, rhs = overlay.dm, overlay.dk, overlay.dn, overlay.max_bits, overlay.rhs_mem_words
        packed, block_rows, k, n, images, ohw = shape
        packed = packed.astype(bool)
        tiles = -(-block_rows // dm)
        first_kwords = -(-np.where(packed, np.minimum(block_rows, dm) * k, k) // dk)

        # probes: kind, activation bits, tile maximum (widest first), full or last tile, first of its block or not
        ci, ai, bi, last, later = np.indices((packed.size, top, top, 2, 2)).reshape(5, -1)
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
        probe = np.stack(sums, axis=-1).reshape(packed.size * top, top, 2, 2, len(sums))
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
        self._words, self._shared = first_kwords[kind], ~packed[kind]

    def _probe_chunks(self, shape: np.ndarray) -> None:
        """The pipeline mode's probes: the row tiles' terms and own cells, the greedy cut's constants, and what chunks
        of one width cost."""
        overlay, params, kind = self.overlay, self.params, self._kind
        dm, dk, dn, top, lhs = overlay.dm, overlay.dk, overlay.dn, overlay.max_bits, overlay.lhs_mem_words
        packed, block_rows, k, n, images, ohw = shape
        packed = packed.astype(bool)
        kinds, tiles = packed.size, -(-block_rows // dm)
        last_rows = block_rows - dm * (tiles - 1)
        # probes: kind, activation bits, tile width (widest first), full or last tile
        ci, ai, bi, last = np.indices((kinds, top, top, 2)).reshape(4, -1)
        bits = np.where(packed[ci], packed_row_bits(top - bi), top - bi)
        rows = np.where(last == 1, last_rows[ci], dm)
        k_eff = np.where(packed[ci], rows * k[ci], k[ci])
        kwords = -(-k_eff // dk)
        _, width, count = _column_kinds(n[ci], dn, -(-n[ci] // dn))
        count = count * images[ci][:, None]
        table = _tile_table(np.arange(ci.size), ci.size, count, np.zeros(count.shape), rows, kwords, k_eff, bits, ai + 1,
                            width, ohw[ci], overlay, params.per_image_convs)
        terms = _tile_terms(table, overlay, params)
        values, columns = _term_matrix(terms)
        own = (np.ceil(np.stack([np.broadcast_to(cells, count.shape) for cells in terms[:4]])) * count).sum(axis=2).T
        moved = [(_pipeline_moved(table._replace(chunk_first=np.full(ci.size, head)), overlay) * count).sum(axis=1)
                 for head in (False, True)]
        # per probe: its own cells (where it does not start a chunk: fetch, execute, result, period, bytes moved) and
        # binary ops; and as a chunk's first tile, those cells less the bytes it moves beyond (what its chunk's replace)
        own = np.column_stack([own, moved[0], (table.binary_ops * count).sum(axis=1)])
        self._head_own = np.column_stack([own[:, :4], moved[0] - moved[1]])
        block_count = count.reshape(kinds, top * top * 2, 4)[:, 0]
        self._count = block_count[kind]

        # the greedy cut (``_walk_chunks``), per lhs region (half the buffer, or all of it for a layer with a tile of
        # more than half) and kind, per width: the words a tile takes of a chunk (at most all) and the tiles a chunk holds
        self._regions = np.array([lhs // 2, lhs])
        slots = np.where(packed, 1, rtl_chunk_slots(overlay))  # packed tiles are chunks of their own
        words = (kwords * bits).reshape(kinds, top, top, 2)[:, 0]
        # (widths, region and kind), so that a plan's blocks gather them width by width as ``_walk_chunks`` walks them
        self._fill = np.minimum(words[None, :, :, 0], self._regions[:, None, None]).reshape(2 * kinds, top).T.copy()
        per_chunk = np.minimum(slots[:, None], np.maximum(1, self._regions[:, None, None] // words[None, :, :, 0]))
        self._per_chunk, self._slots = per_chunk.reshape(2 * kinds, top).T.copy(), slots[kind]
        self._first_words = np.where((tiles == 1)[:, None], words[..., 1], words[..., 0])  # of a block's widest tile
        self._partial = (last_rows != dm)[kind]  # the block's last tile has fewer rows than the others
        self._some_partial = bool(self._partial.any())
        self._layer_first = np.r_[True, self._layer[1:] != self._layer[:-1]]
        self._kinds, self._index, self._widths = kinds, np.arange(kind.size), np.arange(top + 1)  # and a block's end
        self._before_end = self._widths[:top] < self._widths[:, None]

        # chunks of one width, per probe row, width, region, following a chunk of their layer or not; evaluating the
        # chunk formula on them finds the fields it reads of each aggregate, which plans then aggregate alone
        grid = (kinds * top, top, 2, 2)
        flat = lambda values: np.broadcast_to(values, grid + values.shape[4:]).reshape((-1,) + values.shape[4:])
        held = per_chunk.transpose(1, 2, 0)[np.repeat(np.arange(kinds), top), :, :, None, None]
        parts = _split(values).reshape(kinds * top, top, 2, 2, -1)
        sums = _joined(held[..., None] * parts[:, :, None, None, 0])
        head = _terms_of(flat(values.reshape(kinds * top, top, 2, 1, -1)[:, :, :1]), columns)
        after = flat(np.array([False, True]).reshape(1, 1, 1, 2, 1))
        reads = [_FieldReads(terms) for terms in (_terms_of(flat(sums), columns), head, head)]
        chunk = _ChunkTerms(*cast(tuple[_TileTerms, _TileTerms, _TileTerms], reads), flat(held), after)
        cells = self._head_cells(chunk, np.empty((len(chunk.tiles), 4, 4)), _head_steps(head, after, overlay, params),
                                 _tail_steps(head, overlay))
        full_head_own = flat(self._head_own.reshape(kinds * top, top, 2, 1, -1)[:, :, :1])
        uniform = np.column_stack([(cells * flat(np.repeat(block_count, top, axis=0)[:, None, None, None])[:, None]).sum(axis=2)
                                   - full_head_own[:, :4], -full_head_own[:, 4]]).reshape(grid + (5,))
        (sum_columns, self._sum_at), (head_columns, self._head_at), (tail_columns, self._tail_at) = (
            _read_columns(columns, read.names) for read in reads)
        # (row, width, tile, parts: each field's two split terms side by side)
        self._sum_parts = parts[..., sum_columns].swapaxes(3, 4).reshape(kinds * top, top, 2, -1)
        # and every probe's ``_head_steps`` (after a chunk of its layer or not: row ``2 * probe + after``) and
        # ``_tail_steps``, beside the fields read of it
        probes = _terms_of(values, columns)
        opening = _head_steps(_TileTerms._make(np.repeat(field, 2, axis=0) for field in probes),
                              np.tile([[False], [True]], (len(values), 1)), overlay, params)
        self._head_values, self._opening_at = _beside(np.repeat(values[:, head_columns], 2, axis=0), opening)
        self._tail_values, self._closing_at = _beside(values[:, tail_columns], _tail_steps(probes, overlay))
        # (fields, probes): a plan's chunks gather columns, and each field of theirs is then contiguous for the formula
        self._head_values, self._tail_values = self._head_values.T.copy(), self._tail_values.T.copy()
        # a chunk's first row tile's fetch, execute and result cells are its own alone: per probe, what they add to its
        # own cells, less its own pipeline cells and the bytes it moves beyond (plans add its pipeline cells)
        alone = _ChunkTerms(probes, probes, probes, np.ones((len(values), 1)), np.zeros((len(values), 1), dtype=bool))
        fixed = (self._head_cells(alone, np.empty((len(values), 4, 4)))[:, :3] * count[:, None]).sum(axis=2)
        self._head_fixed = np.column_stack([fixed - self._head_own[:, :3], -self._head_own[:, 3:]])
        self._unread = np.full((kind.size * (top + 1), 1), np.nan)  # stands in for the fields the formula does not read
        # per probe row and region, per width: a tile's own cells and binary ops, what a chunk of it alone adds after its
        # layer's first chunk, the last tile's own cells, and what a chunk of it alone adds instead as the layer's first
        own = own.reshape(kinds * top, 1, top, 2, 6)
        added = np.concatenate([uniform.transpose(0, 2, 1, 3, 4), np.zeros(grid[:1] + (2, top, 2, 1))], axis=4)
        per_width = [own[..., 0, :], added[..., 1, :], own[..., 1, :], added[..., 0, :] - added[..., 1, :]]
        self._per_width = np.concatenate(np.broadcast_arrays(*per_width), axis=2).reshape(kinds * top * 2, 4 * top, 6)

    def _head_cells(self, chunk: _ChunkTerms, cells: np.ndarray, opening: _HeadSteps | None = None,
                    closing: _TailSteps | None = None) -> np.ndarray:
        """The cycles of every chunk's first row tile's cells (``_chunk_steps``, rounded) into ``cells`` (chunks,
        stages, column-tile kinds)."""
        for stage, cycles in enumerate(_chunk_steps(chunk, self.overlay, self.params, opening, closing)):
            cells[:, stage] = cycles
        return np.ceil(cells, out=cells)

    def cycles(self, bits: np.ndarray, act_bits: np.ndarray) -> TableCycles:
        """Cycles of every layer: ``bits`` holds every kernel's weight bit-width, layer after layer, ``act_bits``
        every layer's activation bits, all within ``[1, overlay.max_bits]`` (not checked here)."""
        if self.params.pipeline:
            return self._chunk_cycles(bits, act_bits)
        overlay, top = self.overlay, self.overlay.max_bits
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

    def _chunk_cycles(self, bits: np.ndarray, act_bits: np.ndarray) -> TableCycles:
        """``cycles`` under ``ScheduleParams.pipeline``."""
        top, blocks, widths, index = self.overlay.max_bits, self._tiles.size, self._widths, self._index
        counts = np.bincount(self._bins + bits, minlength=blocks * (top + 1)).reshape(blocks, top + 1)
        at_least = grouped_tiles_at_least(counts, self.overlay.dm)
        n = at_least.copy()
        n[:, 1:] -= at_least[:, :-1]  # tiles per width, widest first
        first, last = (n > 0).argmax(axis=1), (at_least < self._tiles[:, None]).sum(axis=1)
        row, partial = self._kind_base + act_bits[self._layer], self._partial
        big = self._first_words[self._kind, first] > self._regions[0]
        if self._layer_starts is not None:
            big = np.bincount(self._layer, big)[self._layer] > 0
        cut = self._kind + big * self._kinds
        per_chunk = self._per_chunk[:, cut].T
        taken, opens = _walk_chunks(n, self._fill[:, cut].T, per_chunk, self._regions[big.astype(np.intp)], self._slots)
        closes = n > taken
        more = np.maximum((n - taken - 1) // per_chunk, 0)  # the whole chunks the rest of each width fills
        full = n  # tiles of each width with all rows
        if self._some_partial:
            full = n.copy()
            full[index, last] -= partial

        # the chunks that may hold several widths: per block, the one open before each width where that closes it (not
        # at the block's first width: none is open), and the block's last (at ``top``); the width whose rest opened each
        real = np.ones((blocks, top + 1), dtype=bool)
        real[:, :top] = closes & (widths[:top] > first[:, None])
        opened = np.full((blocks, top + 1), -1)
        np.maximum.accumulate(np.where(closes, widths[:top], -1), axis=1, out=opened[:, 1:])
        opening = opens[index[:, None], opened]
        if self._some_partial:
            opening[:, top] -= partial & (opened[:, top] == last)  # the block's last tile apart
        # their tiles and sums: the rest of the width that opened each, the widths between and what the closing one takes
        composition = ((widths[:top] > opened[..., None]) & self._before_end) * full[:, None, :]
        composition[:, widths[:top], widths[:top]] = taken
        composition[index[:, None], widths, opened] = opening  # (elsewhere only where not ``real``)
        parts = np.matmul(composition.astype(np.float64), self._sum_parts[row, :, 0])
        if self._some_partial:
            parts[:, top] += partial[:, None] * self._sum_parts[row, last, 1]
        block, end = np.nonzero(real)
        start, held, parts, probe = opened[block, end], composition[block, end], parts[block, end], row[block] * top
        tiles, narrowest = held.sum(axis=1), top - 1 - (held[:, ::-1] > 0).argmax(axis=1)  # the chunk's tiles, last width
        head, tail = (probe + start) * 2, (probe + narrowest) * 2
        if self._some_partial:
            alone = (end == top) & partial[block]  # the chunk holds the block's last tile
            tiles += alone
            shorter = (probe + last[block]) * 2 + 1
            head = np.where(alone & (tiles == 1), shorter, head)  # that tile in a chunk of its own
            tail = np.where(alone, shorter, tail)
        offsets = np.searchsorted(block, index)  # every block ends with a chunk
        after = np.ones(block.size, dtype=bool)
        after[offsets] = ~(self._layer_first & (more[index, first] == 0))
        unread = self._unread[:block.size]
        firsts, lasts = self._head_values.take(head * 2 + after, axis=1).T, self._tail_values.take(tail, axis=1).T
        sums = _joined(np.ascontiguousarray(parts.T).reshape(-1, 2, block.size)).T  # each field contiguous, as in firsts
        chunk = _ChunkTerms(_terms_of(sums, self._sum_at, unread),
                            _terms_of(firsts, self._head_at, unread), _terms_of(lasts, self._tail_at, unread),
                            tiles[:, None], after[:, None])
        period = _chunk_steps(chunk, self.overlay, self.params, _HeadSteps._make(firsts[:, at] for at in self._opening_at),
                              _TailSteps._make(lasts[:, at] for at in self._closing_at)).period
        added = self._head_fixed[head]
        added[:, 3] += (np.ceil(period) * self._count[block]).sum(axis=1)
        heads = np.add.reduceat(added, offsets, axis=0)

        # the tiles' own cells, the chunks of one width (following a chunk of their layer but maybe its first one) and
        # the last tile's own cells
        weights = np.zeros((blocks, 4 * top))
        weights[:, :top], weights[:, top:2 * top] = full, more
        if self._some_partial:
            weights[index, 2 * top + last] = partial
        weights[index, 3 * top + first] = self._layer_first & (more[index, first] > 0)
        totals = np.matmul(weights[:, None, :], self._per_width[row * 2 + big])[:, 0]
        totals[:, :5] += heads
        if self._layer_starts is not None:
            totals = np.add.reduceat(totals, self._layer_starts, axis=0)
        return _entry_cycles(totals[:, :3].T, totals[:, 3], totals[:, 4], totals[:, 5], self.params, np.ceil)


class _FieldReads:
    """Stands in for a ``_TileTerms`` and notes the fields read of it (``HistogramSchedule`` aggregates only those)."""

    def __init__(self, terms: _TileTerms):
        self.terms, self.names = terms, set[str]()

    def __getattr__(self, name: str) -> np.ndarray:
        self.names.add(name)
        return getattr(self.terms, name)


def _beside(values: np.ndarray, terms: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``values`` (rows, columns) and the fields of ``terms`` (``_term_matrix``) side by side, and each field's columns."""
    matrix, columns = _term_matrix(terms)
    offset = values.shape[1]
    return np.concatenate([values, matrix], axis=1), tuple(slice(c.start + offset, c.stop + offset) for c in columns)


def _read_columns(columns: tuple[slice, ...], names: set[str]) -> tuple[np.ndarray, tuple[slice | None, ...]]:
    """The value-matrix ``columns`` of the fields ``names`` (``_term_matrix``), and where each field lies among them
    (None: not read)."""
    picked: list[int] = []
    at: list[slice | None] = []
    for name, field in zip(_TileTerms._fields, columns):
        at.append(slice(len(picked), len(picked) + field.stop - field.start) if name in names else None)
        picked += range(field.start, field.stop) if name in names else []
    return np.array(picked, dtype=np.intp), tuple(at)


def _walk_chunks(n: np.ndarray, fill: np.ndarray, per_chunk: np.ndarray, region: np.ndarray,
                 slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_chunk_starts``' greedy cut of many blocks' row tiles, widest first, from their tiles of each width ``n``
    (blocks, widths), the words each takes of a chunk (``fill``, at most the ``region``'s words) and the tiles a
    chunk of that width alone holds (``per_chunk``), with ``slots`` per block. Per width, the chunk open before it
    takes what still fits; the rest fill ``per_chunk`` at a time, and the remainder stays open. Returns per block and
    width the tiles the chunk open before it takes and, where some are left, how many of them stay open."""
    counts, fill, per_chunk = (np.ascontiguousarray(values.T) for values in (n, fill, per_chunk))  # width by width
    # per width, its tiles beyond the first, its words and what a chunk of one of its tiles leaves
    beyond, spent, closed = counts - 1, counts * fill, region - fill
    left, room, scratch, last_slot = slots.copy(), np.zeros_like(slots), np.empty_like(slots), slots - 1
    closes = np.empty(slots.shape, dtype=bool)
    taken, opens = np.zeros(counts.shape, dtype=np.int64), np.zeros(counts.shape, dtype=np.int64)
    present = np.flatnonzero(counts.any(axis=1)).tolist()
    for width in present:
        words, take, extra = fill[width], taken[width], opens[width]
        if width != present[0]:  # no chunk is open before the first width
            np.minimum(np.floor_divide(room, words, out=take), left, out=take)  # not yet capped by the width's tiles
        np.greater_equal(np.subtract(beyond[width], take, out=extra), 0, out=closes)
        np.remainder(extra, per_chunk[width], out=extra)  # where it closes, the tiles that stay open, less one
        if width == present[-1]:
            break
        left -= counts[width]
        room -= spent[width]
        np.copyto(left, np.subtract(last_slot, extra, out=scratch), where=closes)
        np.copyto(room, np.subtract(closed[width], np.multiply(extra, words, out=scratch), out=scratch), where=closes)
    np.minimum(taken, counts, out=taken)
    opens += 1
    return taken.T, opens.T


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
