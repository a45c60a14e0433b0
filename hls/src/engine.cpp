// Top function of the bit-serial engine: AXI-Lite registers (offsets pinned by the generated header to
// autoq.overlay.regmap) and AXI masters to DDR for weights, activations, results and the tile table.
#include "engine.hpp"

typedef aq::Engine<aq::Config> Engine;

void bitserial_engine(AQ_TOP_PARAMS) {
    AQ_INTERFACE_PRAGMAS
    AQ_WRITE_ID_BLOCK
    if (command == aq::layout::CMD_IDENTIFY) {
        *status = aq::layout::STATUS_OK;
        return;
    }
    if (command != aq::layout::CMD_RUN) {
        *status = aq::layout::STATUS_BAD_COMMAND;
        return;
    }
    aq::Layer layer;
    unsigned code = Engine::describe(c_in, c_out, groups, kh, kw, stride_h, stride_w, pad_h, pad_w, in_h, in_w,
                                     out_h, out_w, batch, abits, num_tiles, layer);
    if (code == aq::layout::STATUS_OK) code = Engine::check_table(layer, tiles_addr);
    *status = code;
    if (code != aq::layout::STATUS_OK) return;

    static Engine::lhs_t lhs;
#pragma HLS ARRAY_PARTITION variable = lhs type = complete dim = 1
    static Engine::rhs_t rhs;
#pragma HLS ARRAY_PARTITION variable = rhs type = complete dim = 1
    Engine::accs_t acc;
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 0
    aq::Counters counters = {0, 0, 0, 0};
    const aq::Timing timing = aq::engine_timing();
    Engine::run_layer(lhs, rhs, acc, layer, tiles_addr, weights_addr, activations_addr, results_addr, timing, counters);

    const double overhead = std::ceil(timing.layer_overhead_cycles + counters.tiles * timing.tile_overhead_cycles);
    unsigned long long slowest = counters.fetch;
    if (counters.execute > slowest) slowest = counters.execute;
    if (counters.result > slowest) slowest = counters.result;
    *cycles_fetch = counters.fetch;
    *cycles_execute = counters.execute;
    *cycles_result = counters.result;
    *cycles_total = slowest + (unsigned long long)overhead;
}
