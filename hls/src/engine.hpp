// Bit-serial (BISMO-style) conv engine for Vitis HLS: a class template over the overlay configuration struct
// (aq::Config, generated from the manifest into engine_config.hpp).
//
// A layer runs as `groups` products (m x k) @ (k x n) whose operands the host packed (autoq.overlay.layout):
// weight rows as signed bit-planes at each output channel's own width, im2col activation columns as unsigned
// bit-planes, both padded to whole Dk-bit words. The tile table lists each block's row tiles (Dm rows of output
// channels grouped by bit-width, with the per-channel bit-count table).
// For every (row tile, column tile) step the engine
//   fetch:   moves the tile's weight / activation bit-planes from DDR into the lhs / rhs buffers unless they are
//            still resident there (the reuse rules of autoq.overlay.schedule),
//   execute: runs one pass per (weight plane, activation plane) pair: acc += w_i * 2^j * popcount(lhs & rhs),
//            w_i = 2^i, the MSB plane of a row negated, a 1-bit row binary {-1,+1} (2*popcount - popcount(a)),
//   result:  writes the Dm x Dn accumulators to the rows' original channels,
// and charges each stage the cycles of the schedule's per-tile formulas, so its counters equal
// autoq.overlay.schedule.layer_tiles tile by tile (tested bit-exact against the numpy engine with g++ C-sim).
#pragma once

#include <ap_int.h>

#include <cmath>

#include "engine_config.hpp"

namespace aq {

// DDR words: packed bit-planes (uint64, as autoq.overlay.bitserial packs them), tile table, int32 results.
typedef ap_uint<64> word_t;
typedef ap_uint<32> table_t;
typedef ap_int<32> result_t;

// Schedule parameters the counters charge. Synthesis uses the generated values; the C-sim test bench may set
// others to compare with autoq.overlay.schedule under any parameters.
struct Timing {
#define AQ_TIMING_MEMBER(field) double field;
    AQ_TIMING_FIELDS(AQ_TIMING_MEMBER)
#undef AQ_TIMING_MEMBER
};

#ifdef __SYNTHESIS__
inline Timing engine_timing() {
    const Timing t = {AQ_TIMING_DEFAULTS};
    return t;
}
#else
inline Timing& engine_timing() {
    static Timing t = {AQ_TIMING_DEFAULTS};
    return t;
}
#endif

struct Counters {
    unsigned long long fetch;
    unsigned long long execute;
    unsigned long long result;
    unsigned long long tiles;
};

// The layer as the descriptor registers give it, plus what the engine derives from it.
struct Layer {
    unsigned c_in, c_out, groups, kh, kw, stride_h, stride_w, pad_h, pad_w, in_h, in_w, out_h, out_w, batch, abits;
    unsigned num_tiles;
    unsigned m, k, n, out_hw;
    bool packed;  // depthwise-like (m == 1, groups > 1): all channels in one block of block-diagonal row tiles
    unsigned blocks, tiles_per_block, col_tiles;
};

// Where one step's operands live in DDR and in the on-chip buffers, and whether it fetches them.
struct Step {
    unsigned col_start, width, kwords;
    unsigned long long weights_ddr, acts_ddr;  // word offsets of the row tile's weights and the step's activations
    unsigned lhs_base, rhs_base;
    bool fetch_weights, fetch_acts;
};

// One block (a group, or all tiles of a packed layer) and the buffer-fit facts its reuse rules depend on.
struct Block {
    unsigned first_tile;
    unsigned long long weights_ddr, acts_ddr;
    unsigned act_words;     // rhs words one column tile's activations take per array column
    unsigned weight_words;  // lhs words all the block's row tiles take together per array row
};

template <int W>
inline unsigned popcount(const ap_uint<W>& x) {
#ifdef __SYNTHESIS__
    unsigned count = 0;
    for (int i = 0; i < W; ++i) {
#pragma HLS UNROLL
        count += x[i];
    }
    return count;
#else
    unsigned count = 0;
    for (int lo = 0; lo < W; lo += 64) count += __builtin_popcountll((x >> lo).to_uint64());
    return count;
#endif
}

inline unsigned ceil_div(unsigned a, unsigned b) { return (a + b - 1) / b; }

// Weight of bit-plane `plane` of a row of `bits` bits (autoq.overlay.bitserial.plane_encoding).
inline int plane_weight(unsigned bits, unsigned plane) {
    if (bits == 1) return plane == 0 ? 2 : 0;
    if (plane >= bits) return 0;
    const int magnitude = 1 << plane;
    return plane + 1 == bits ? -magnitude : magnitude;
}

// The engine for one overlay configuration `Cfg` (array dims DM x DN x DK, buffer depths, accumulator width):
// stateless functions over the on-chip buffers the top function owns.
template <class Cfg>
struct Engine {
    typedef Cfg cfg;
    static_assert(cfg::WORD_BITS == 64 && cfg::RESULT_BITS == 32, "DDR words are uint64, results int32");
    static_assert(cfg::DK % cfg::WORD_BITS == 0, "a Dk-bit word must be whole DDR words");
    typedef ap_uint<cfg::DK> dkword_t;
    typedef ap_int<cfg::ACC_BITS> acc_t;
    static const unsigned WORDS_PER_DK = cfg::DK / cfg::WORD_BITS;
    static const unsigned ROW_TILE_WORDS = layout::ROW_TILE_HEADER_WORDS + 2 * cfg::DM;

    // The on-chip buffers: per array row its weight words, per array column its activation words, the
    // accumulators. The top function declares them (partitioned across rows / columns) and hands them down.
    typedef dkword_t lhs_t[cfg::DM][cfg::LHS_MEM_WORDS];
    typedef dkword_t rhs_t[cfg::DN][cfg::RHS_MEM_WORDS];
    typedef acc_t accs_t[cfg::DM][cfg::DN];

    struct RowTile {
        unsigned bits;  // planes the tile runs (its widest row)
        unsigned rows;
        unsigned channel[cfg::DM];
        unsigned row_bits[cfg::DM];
    };

    // Ones at the bit positions [lo, hi) of K that fall into Dk-bit word `word`.
    static dkword_t segment_mask(unsigned word, unsigned lo, unsigned hi) {
        dkword_t mask = 0;
        for (unsigned part = 0; part < WORDS_PER_DK; ++part) {
            const unsigned base = word * cfg::DK + part * cfg::WORD_BITS;
            const unsigned from = lo > base ? lo - base : 0;
            const unsigned to = hi > base ? (hi - base < cfg::WORD_BITS ? hi - base : cfg::WORD_BITS) : 0;
            if (from < to) {
                const unsigned long long ones = (to - from == 64) ? ~0ULL : ((1ULL << (to - from)) - 1) << from;
                mask |= dkword_t(ones) << (part * cfg::WORD_BITS);
            }
        }
        return mask;
    }

    static dkword_t load_dkword(const word_t* ddr, unsigned long long offset) {
        dkword_t value = 0;
        for (unsigned part = 0; part < WORDS_PER_DK; ++part) {
    #pragma HLS PIPELINE II = 1
            value |= dkword_t(ddr[offset + part]) << (part * cfg::WORD_BITS);
        }
        return value;
    }

    static unsigned describe(unsigned c_in, unsigned c_out, unsigned groups, unsigned kh, unsigned kw,
                             unsigned stride_h, unsigned stride_w, unsigned pad_h, unsigned pad_w, unsigned in_h,
                             unsigned in_w, unsigned out_h, unsigned out_w, unsigned batch, unsigned abits,
                             unsigned num_tiles, Layer& layer) {
        if (!c_in || !c_out || !groups || !kh || !kw || !stride_h || !stride_w || !in_h || !in_w || !out_h || !out_w ||
            !batch || abits < 1 || abits > cfg::MAX_BITS || c_in % groups || c_out % groups)
            return layout::STATUS_BAD_DESCRIPTOR;
        if (in_h + 2 * pad_h < kh || in_w + 2 * pad_w < kw || (in_h + 2 * pad_h - kh) / stride_h + 1 != out_h ||
            (in_w + 2 * pad_w - kw) / stride_w + 1 != out_w)
            return layout::STATUS_BAD_DESCRIPTOR;
        layer = Layer{c_in,  c_out, groups, kh,    kw,    stride_h, stride_w, pad_h,
                      pad_w, in_h,  in_w,   out_h, out_w, batch,    abits,    num_tiles};
        layer.m = c_out / groups;
        layer.k = c_in / groups * kh * kw;
        layer.out_hw = out_h * out_w;
        layer.n = batch * layer.out_hw;
        layer.packed = layer.m == 1 && groups > 1;
        layer.blocks = layer.packed ? 1 : groups;
        layer.tiles_per_block = ceil_div(layer.packed ? c_out : layer.m, cfg::DM);
        layer.col_tiles = ceil_div(layer.n, cfg::DN);
        if (num_tiles != layer.blocks * layer.tiles_per_block) return layout::STATUS_BAD_TABLE;
        return layout::STATUS_OK;
    }

    static void read_row_tile(const table_t* table, unsigned index, RowTile& tile) {
        const unsigned base = index * ROW_TILE_WORDS;
        tile.bits = table[base];
        tile.rows = table[base + 1];
        for (unsigned r = 0; r < cfg::DM; ++r) {
            tile.channel[r] = table[base + layout::ROW_TILE_HEADER_WORDS + r];
            tile.row_bits[r] = table[base + layout::ROW_TILE_HEADER_WORDS + cfg::DM + r];
        }
    }

    // Dk-bit words per row / column of a tile's product (a packed tile stacks its channels' k).
    static unsigned tile_kwords(const Layer& layer, const RowTile& tile) {
        return ceil_div(layer.packed ? tile.rows * layer.k : layer.k, cfg::DK);
    }

    // Everything is checked before any DDR write, so a rejected run leaves the results buffer untouched.
    static unsigned check_table(const Layer& layer, const table_t* table) {
        for (unsigned b = 0; b < layer.blocks; ++b) {
            const unsigned block_rows = layer.packed ? layer.c_out : layer.m;
            const unsigned first_channel = layer.packed ? 0 : b * layer.m;
            for (unsigned t = 0; t < layer.tiles_per_block; ++t) {
                RowTile tile;
                read_row_tile(table, b * layer.tiles_per_block + t, tile);
                const unsigned expected_rows = t + 1 < layer.tiles_per_block ? cfg::DM : block_rows - t * cfg::DM;
                if (tile.bits < 1 || tile.bits > cfg::MAX_BITS || tile.rows != expected_rows)
                    return layout::STATUS_BAD_TABLE;
                unsigned widest = 0;
                for (unsigned r = 0; r < tile.rows; ++r) {
                    if (tile.channel[r] < first_channel || tile.channel[r] >= first_channel + block_rows ||
                        tile.row_bits[r] < 1 || tile.row_bits[r] > tile.bits)
                        return layout::STATUS_BAD_TABLE;
                    widest = tile.row_bits[r] > widest ? tile.row_bits[r] : widest;
                }
                if (widest != tile.bits) return layout::STATUS_BAD_TABLE;
                const unsigned kwords = tile_kwords(layer, tile);
                if (kwords * tile.bits > cfg::LHS_MEM_WORDS || kwords * layer.abits > cfg::RHS_MEM_WORDS)
                    return layout::STATUS_BUFFER_OVERFLOW;
            }
        }
        return layout::STATUS_OK;
    }

    static void fetch(lhs_t lhs, rhs_t rhs, const Layer& layer, const RowTile& tile, const Step& s,
                      const word_t* weights, const word_t* acts) {
        if (s.fetch_weights)
            for (unsigned r = 0; r < tile.rows; ++r)
                for (unsigned i = 0; i < tile.bits; ++i)
                    for (unsigned w = 0; w < s.kwords; ++w)
                        lhs[r][s.lhs_base + i * s.kwords + w] = load_dkword(
                            weights,
                            s.weights_ddr + ((unsigned long long)(r * tile.bits + i) * s.kwords + w) * WORDS_PER_DK);
        if (s.fetch_acts)
            for (unsigned c = 0; c < s.width; ++c)
                for (unsigned j = 0; j < layer.abits; ++j)
                    for (unsigned w = 0; w < s.kwords; ++w)
                        rhs[c][s.rhs_base + j * s.kwords + w] = load_dkword(
                            acts,
                            s.acts_ddr +
                                (((unsigned long long)(s.col_start + c) * layer.abits + j) * s.kwords + w) * WORDS_PER_DK);
    }

    static void execute(const lhs_t lhs, const rhs_t rhs, accs_t acc, const Layer& layer, const RowTile& tile,
                        const Step& s) {
        for (unsigned r = 0; r < cfg::DM; ++r)
            for (unsigned c = 0; c < cfg::DN; ++c) acc[r][c] = 0;
        for (unsigned i = 0; i < tile.bits; ++i)
            for (unsigned j = 0; j < layer.abits; ++j)
                for (unsigned w = 0; w < s.kwords; ++w) {
    #pragma HLS PIPELINE II = 1
                    for (unsigned r = 0; r < cfg::DM; ++r) {
                        if (r >= tile.rows) continue;
                        const int weight = plane_weight(tile.row_bits[r], i);
                        const dkword_t lhs_word = lhs[r][s.lhs_base + i * s.kwords + w];
                        for (unsigned c = 0; c < cfg::DN; ++c) {
                            if (c >= s.width) continue;
                            const acc_t count = popcount(lhs_word & rhs[c][s.rhs_base + j * s.kwords + w]);
                            acc[r][c] += weight * (count << j);
                        }
                    }
                }
        // Binary rows: value = 2*bit - 1, so subtract popcount(a) over the row's own span of K.
        for (unsigned r = 0; r < tile.rows; ++r) {
            if (tile.row_bits[r] != 1) continue;
            const unsigned lo = layer.packed ? r * layer.k : 0;
            for (unsigned j = 0; j < layer.abits; ++j)
                for (unsigned w = 0; w < s.kwords; ++w) {
                    const dkword_t mask = segment_mask(w, lo, lo + layer.k);
                    for (unsigned c = 0; c < s.width; ++c)
                        acc[r][c] -= acc_t(popcount(mask & rhs[c][s.rhs_base + j * s.kwords + w])) << j;
                }
        }
    }

    static void write_results(const accs_t acc, const Layer& layer, const RowTile& tile, const Step& s,
                              result_t* results) {
        for (unsigned r = 0; r < tile.rows; ++r)
            for (unsigned c = 0; c < s.width; ++c) {
                const unsigned column = s.col_start + c;
                const unsigned image = column / layer.out_hw, pixel = column % layer.out_hw;
                results[((unsigned long long)image * layer.c_out + tile.channel[r]) * layer.out_hw + pixel] = acc[r][c];
            }
    }

    static double fetch_bytes(const Layer& layer, const RowTile& tile, const Step& s) {
        const double weight_bytes = double((unsigned long long)tile.rows * s.kwords * cfg::DK * tile.bits) / 8;
        const double act_bytes = double((unsigned long long)s.width * s.kwords * cfg::DK * layer.abits) / 8;
        return weight_bytes * (s.fetch_weights ? 1.0 : 0.0) + act_bytes * (s.fetch_acts ? 1.0 : 0.0);
    }

    // The schedule's per-tile stage cycles of what this step moved and ran (autoq.overlay.schedule._cell_cycles).
    static void charge(const Layer& layer, const RowTile& tile, const Step& s, const Timing& t, Counters& counters) {
        const double dram_bytes_per_cycle = double(cfg::DRAM_PORTS * cfg::DRAM_WIDTH_BITS) / 8;
        const double result_bytes = double((unsigned long long)tile.rows * s.width * cfg::ACC_BITS) / 8;
        const double fetched = fetch_bytes(layer, tile, s);
        counters.fetch += (unsigned long long)std::ceil(fetched / (dram_bytes_per_cycle * t.dram_efficiency));
        const unsigned passes = tile.bits * layer.abits;
        counters.execute += (unsigned long long)std::ceil((s.kwords + t.pass_overhead_cycles) * passes);
        counters.result += (unsigned long long)std::ceil(result_bytes / (dram_bytes_per_cycle * t.result_efficiency));
        counters.tiles += 1;
    }

    // One (row tile, column tile) step: moves and runs it when `real`, else only adds up what it would fetch.
    static double step(bool real, lhs_t lhs, rhs_t rhs, accs_t acc, const Layer& layer, const RowTile& tile,
                       const Step& s, const word_t* weights, const word_t* acts, result_t* results, const Timing& t,
                       Counters& counters) {
        if (real) {
            fetch(lhs, rhs, layer, tile, s, weights, acts);
            execute(lhs, rhs, acc, layer, tile, s);
            write_results(acc, layer, tile, s, results);
            charge(layer, tile, s, t, counters);
        }
        return fetch_bytes(layer, tile, s);
    }

    static Step make_step(const Layer& layer, const RowTile& tile, unsigned column_tile) {
        Step s;
        s.col_start = column_tile * cfg::DN;
        s.width = layer.n - s.col_start < cfg::DN ? layer.n - s.col_start : cfg::DN;
        s.kwords = tile_kwords(layer, tile);
        return s;
    }

    // Weight-stationary: runs of consecutive row tiles whose weights fit the lhs buffer together (greedy); per
    // run, every column tile streams past the run's row tiles. Weights are fetched with the first column tile;
    // activations once per block if all column tiles fit the rhs buffer, else once per run (always when packed).
    static double weight_stationary(bool real, lhs_t lhs, rhs_t rhs, accs_t acc, const Layer& layer, const Block& block,
                                    const table_t* table, const word_t* weights, const word_t* acts, result_t* results,
                                    const Timing& t, Counters& counters) {
        const bool weights_fit = block.weight_words <= cfg::LHS_MEM_WORDS;
        const bool acts_fit = layer.col_tiles * block.act_words <= cfg::RHS_MEM_WORDS;
        double bytes = 0;
        unsigned long long run_weights = block.weights_ddr, run_acts = block.acts_ddr;
        for (unsigned run_start = 0; run_start < layer.tiles_per_block;) {
            unsigned run_stop = run_start + 1;
            RowTile tile;
            read_row_tile(table, block.first_tile + run_start, tile);
            unsigned used = tile_kwords(layer, tile) * tile.bits;
            for (; run_stop < layer.tiles_per_block; ++run_stop) {
                read_row_tile(table, block.first_tile + run_stop, tile);
                const unsigned need = tile_kwords(layer, tile) * tile.bits;
                if (!weights_fit && used + need > cfg::LHS_MEM_WORDS) break;
                used += need;
            }
            unsigned long long tile_weights = run_weights, tile_acts = run_acts;
            for (unsigned c = 0; c < layer.col_tiles; ++c) {
                tile_weights = run_weights, tile_acts = run_acts;
                unsigned lhs_base = 0;
                for (unsigned r = run_start; r < run_stop; ++r) {
                    read_row_tile(table, block.first_tile + r, tile);
                    Step s = make_step(layer, tile, c);
                    s.weights_ddr = tile_weights;
                    s.acts_ddr = layer.packed ? tile_acts : block.acts_ddr;
                    s.lhs_base = lhs_base;
                    s.rhs_base = !layer.packed && acts_fit ? c * block.act_words : 0;
                    s.fetch_weights = c == 0;
                    s.fetch_acts = layer.packed || r == 0 || (!acts_fit && r == run_start);
                    bytes += step(real, lhs, rhs, acc, layer, tile, s, weights, acts, results, t, counters);
                    tile_weights += (unsigned long long)tile.rows * tile.bits * s.kwords * WORDS_PER_DK;
                    tile_acts += (unsigned long long)layer.n * layer.abits * s.kwords * WORDS_PER_DK;
                    lhs_base += s.kwords * tile.bits;
                }
            }
            run_weights = tile_weights, run_acts = tile_acts, run_start = run_stop;
        }
        return bytes;
    }

    // Activation-stationary (shared activations only): column blocks of as many column tiles as fit the rhs
    // buffer; per column block, every row tile runs against each of its column tiles. Activations are fetched
    // with the first row tile; weights with the first column tile, again per column block unless all fit.
    static double activation_stationary(bool real, lhs_t lhs, rhs_t rhs, accs_t acc, const Layer& layer,
                                        const Block& block, const table_t* table, const word_t* weights,
                                        const word_t* acts, result_t* results, const Timing& t, Counters& counters) {
        const bool weights_fit = block.weight_words <= cfg::LHS_MEM_WORDS;
        const unsigned per_block = cfg::RHS_MEM_WORDS / block.act_words > 1 ? cfg::RHS_MEM_WORDS / block.act_words : 1;
        double bytes = 0;
        for (unsigned first_col = 0; first_col < layer.col_tiles; first_col += per_block) {
            const unsigned stop_col = first_col + per_block < layer.col_tiles ? first_col + per_block : layer.col_tiles;
            unsigned long long tile_weights = block.weights_ddr;
            unsigned lhs_base = 0;
            for (unsigned r = 0; r < layer.tiles_per_block; ++r) {
                RowTile tile;
                read_row_tile(table, block.first_tile + r, tile);
                unsigned kwords = 0;
                for (unsigned c = first_col; c < stop_col; ++c) {
                    Step s = make_step(layer, tile, c);
                    s.weights_ddr = tile_weights;
                    s.acts_ddr = block.acts_ddr;
                    s.lhs_base = weights_fit ? lhs_base : 0;
                    s.rhs_base = (c - first_col) * block.act_words;
                    s.fetch_weights = c == 0 || (c == first_col && !weights_fit);
                    s.fetch_acts = r == 0;
                    bytes += step(real, lhs, rhs, acc, layer, tile, s, weights, acts, results, t, counters);
                    kwords = s.kwords;
                }
                tile_weights += (unsigned long long)tile.rows * tile.bits * kwords * WORDS_PER_DK;
                lhs_base += kwords * tile.bits;
            }
        }
        return bytes;
    }

    // Runs every block of a checked layer, each in the loop order that fetches fewer bytes (weight-stationary
    // on a tie; packed blocks, whose activations are never shared, always weight-stationary).
    static void run_layer(lhs_t lhs, rhs_t rhs, accs_t acc, const Layer& layer, const table_t* table,
                          const word_t* weights, const word_t* acts, result_t* results, const Timing& t,
                          Counters& counters) {
        Block block = {0, 0, 0, 0, 0};
        for (unsigned b = 0; b < layer.blocks; ++b) {
            block.first_tile = b * layer.tiles_per_block;
            block.weight_words = 0;
            unsigned long long weight_ddr_words = 0, act_ddr_words = 0;
            for (unsigned r = 0; r < layer.tiles_per_block; ++r) {
                RowTile tile;
                read_row_tile(table, block.first_tile + r, tile);
                const unsigned kwords = tile_kwords(layer, tile);
                if (r == 0) block.act_words = kwords * layer.abits;
                block.weight_words += kwords * tile.bits;
                weight_ddr_words += (unsigned long long)tile.rows * tile.bits * kwords * WORDS_PER_DK;
                if (layer.packed || r == 0)
                    act_ddr_words += (unsigned long long)layer.n * layer.abits * kwords * WORDS_PER_DK;
            }
            bool stationary_acts = false;
            if (!layer.packed) {  // dry runs: the order that fetches fewer bytes
                const double acts_bytes =
                    activation_stationary(false, lhs, rhs, acc, layer, block, table, weights, acts, results, t, counters);
                const double weights_bytes =
                    weight_stationary(false, lhs, rhs, acc, layer, block, table, weights, acts, results, t, counters);
                stationary_acts = acts_bytes < weights_bytes;
            }
            if (stationary_acts)
                activation_stationary(true, lhs, rhs, acc, layer, block, table, weights, acts, results, t, counters);
            else
                weight_stationary(true, lhs, rhs, acc, layer, block, table, weights, acts, results, t, counters);
            block.weights_ddr += weight_ddr_words;
            block.acts_ddr += act_ddr_words;
        }
    }
};

}  // namespace aq
