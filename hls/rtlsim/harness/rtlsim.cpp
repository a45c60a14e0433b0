// Cycle-accurate harness around a Verilated `bitserial_engine`: an AXI-Lite master for its registers and a model
// of the Zynq-7000 HP port (AXI3 slave) in front of a DDR arena owned by the caller. C API for ctypes (rtlsim.h).
//
// Clocking: each cycle evaluates the model with clk low (combinational outputs settle against the inputs this
// harness drives), samples every handshake (valid && ready) and the payloads, raises clk (the DUT's registers take
// the same handshakes), then updates the harness state and drives its outputs for the next cycle. Every output of
// the harness is therefore a register: the memory model is a Moore machine, as an AXI slave may be.
//
// Memory model (per direction, one AXI ID, in-order):
//   read:  an AR accepted at edge e delivers its first beat at edge e + read_latency at the earliest; beats
//          follow back to back subject to the bandwidth; bursts pipeline up to max_reads outstanding (an AR is
//          accepted while fewer than max_reads bursts have not returned their last beat).
//   write: W beats are accepted only for an accepted AW (the slave may wait for the address); the B response comes
//          write_latency edges after the last W beat; at most max_writes bursts between AW and B.
//   bandwidth: a byte budget (fixed point) refilled by `bandwidth` bytes per cycle and spent per beat, separately
//          for reads and writes; a beat may go while the budget is not negative, and the budget saturates at one
//          cycle's refill, so the long-run rate is `bandwidth` and the peak one beat per cycle.
// Checks (recorded as errors, the simulation goes on): burst type other than INCR, beat size above the 64-bit
// bus, unaligned start, a burst crossing a 4 KiB boundary (AXI3 forbids it), WLAST on the wrong beat, and an
// access outside the arena (answered with SLVERR, no data moved).
#include "rtlsim.h"

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "Vbitserial_engine.h"
#include "verilated.h"

namespace {

constexpr uint32_t kBusBytes = 8;
constexpr size_t kMaxErrorRecords = 256;
constexpr int64_t kCreditScale = 1 << 16;  // budget units per byte

struct Burst {
    uint64_t address = 0;  // start address as issued
    uint32_t beats = 0;
    uint32_t size = 0;  // bytes per beat
    uint32_t id = 0;
    bool bad = false;  // out of arena (or unsupported size): SLVERR, no data moved
    uint32_t next = 0;  // next beat to deliver / accept
    uint64_t ready_edge = 0;  // first edge at which the first beat (read) or the B response (write) may be sampled
    bool wlast_error = false;

    uint64_t beat_address(uint32_t beat) const {
        uint64_t aligned = address & ~static_cast<uint64_t>(size - 1);
        return beat == 0 ? address : aligned + static_cast<uint64_t>(beat) * size;
    }
};

struct LiteSample {
    bool aw = false, w = false, b = false, ar = false, r = false;
    uint32_t bresp = 0, rresp = 0, rdata = 0;
};

struct Sim {
    std::unique_ptr<VerilatedContext> context;
    std::unique_ptr<Vbitserial_engine> top;
    uint8_t* arena = nullptr;
    uint64_t base = 0, size = 0;
    uint32_t read_latency = 1, write_latency = 1, max_reads = 1, max_writes = 1;
    int64_t refill = 8 * kCreditScale;  // budget per cycle
    uint32_t addr_mask = 0xFFFF;

    uint64_t edge = 0;  // clock edges since reset
    std::deque<Burst> reads;  // accepted AR, not yet fully returned (front: the one delivering)
    std::deque<Burst> writes;  // accepted AW, W beats not complete (front: the one receiving)
    std::deque<Burst> responses;  // W complete, waiting for / presenting B
    int64_t read_credit = 0, write_credit = 0;

    // Registered outputs of the harness.
    bool arready = false, awready = false, wready = false;
    bool rvalid = false, bvalid = false;
    uint64_t counters[RTLSIM_COUNTERS] = {};
    std::vector<rtlsim_error_t> errors;

    void record(uint32_t kind, uint32_t is_write, const Burst& burst) {
        counters[RTLSIM_C_ERRORS] += 1;
        if (errors.size() < kMaxErrorRecords) {
            errors.push_back({kind, is_write, burst.address, burst.beats, burst.size, edge});
        }
    }

    Burst accept(uint64_t address, uint32_t len, uint32_t size_code, uint32_t burst_type, uint32_t id, bool is_write) {
        Burst burst;
        burst.address = address;
        burst.beats = len + 1;
        burst.size = 1u << size_code;
        burst.id = id;
        if (burst_type != 1) record(RTLSIM_E_BURST_TYPE, is_write, burst);
        if (burst.size > kBusBytes) {
            record(RTLSIM_E_BEAT_SIZE, is_write, burst);
            burst.size = kBusBytes;
            burst.bad = true;
        }
        if (address % burst.size) record(RTLSIM_E_UNALIGNED, is_write, burst);
        uint64_t end = (address & ~static_cast<uint64_t>(burst.size - 1)) + static_cast<uint64_t>(burst.beats) * burst.size;
        if ((address & ~0xFFFull) != ((end - 1) & ~0xFFFull)) record(RTLSIM_E_BOUNDARY_4K, is_write, burst);
        if (address < base || end > base + size) {
            record(RTLSIM_E_OUT_OF_ARENA, is_write, burst);
            burst.bad = true;
        }
        return burst;
    }

    void drive_read_beat() {
        const Burst& burst = reads.front();
        uint64_t window = burst.beat_address(burst.next) & ~static_cast<uint64_t>(kBusBytes - 1);
        uint64_t data = 0;
        if (!burst.bad) std::memcpy(&data, arena + (window - base), kBusBytes);
        top->m_axi_rdata = data;
        top->m_axi_rresp = burst.bad ? 2 : 0;
        top->m_axi_rlast = burst.next + 1 == burst.beats;
        top->m_axi_rid = burst.id;
    }

    void write_beat(Burst& burst, uint64_t data, uint32_t strb, bool last) {
        bool expected_last = burst.next + 1 == burst.beats;
        if (last != expected_last && !burst.wlast_error) {
            burst.wlast_error = true;
            record(RTLSIM_E_WLAST, 1, burst);
        }
        if (!burst.bad) {
            uint64_t window = burst.beat_address(burst.next) & ~static_cast<uint64_t>(kBusBytes - 1);
            uint8_t* target = arena + (window - base);
            for (uint32_t lane = 0; lane < kBusBytes; ++lane) {
                if (strb >> lane & 1) {
                    target[lane] = static_cast<uint8_t>(data >> (8 * lane));
                    counters[RTLSIM_C_BYTES_WRITTEN] += 1;
                }
            }
        }
        counters[RTLSIM_C_WRITE_BEATS] += 1;
        burst.next += 1;
    }

    // One clock cycle; returns the AXI-Lite handshakes sampled at its rising edge.
    LiteSample step() {
        top->clk = 0;
        top->eval();
        LiteSample lite;
        lite.aw = top->s_axil_awvalid && top->s_axil_awready;
        lite.w = top->s_axil_wvalid && top->s_axil_wready;
        lite.b = top->s_axil_bvalid && top->s_axil_bready;
        lite.ar = top->s_axil_arvalid && top->s_axil_arready;
        lite.r = top->s_axil_rvalid && top->s_axil_rready;
        lite.bresp = top->s_axil_bresp;
        lite.rresp = top->s_axil_rresp;
        lite.rdata = top->s_axil_rdata;

        bool ar_fire = arready && top->m_axi_arvalid;
        bool r_fire = rvalid && top->m_axi_rready;
        bool aw_fire = awready && top->m_axi_awvalid;
        bool w_fire = wready && top->m_axi_wvalid;
        bool b_fire = bvalid && top->m_axi_bready;
        uint64_t araddr = top->m_axi_araddr, awaddr = top->m_axi_awaddr, wdata = top->m_axi_wdata;
        uint32_t arlen = top->m_axi_arlen, arsize = top->m_axi_arsize, arburst = top->m_axi_arburst, arid = top->m_axi_arid;
        uint32_t awlen = top->m_axi_awlen, awsize = top->m_axi_awsize, awburst = top->m_axi_awburst, awid = top->m_axi_awid;
        uint32_t wstrb = top->m_axi_wstrb;
        bool wlast = top->m_axi_wlast;
        bool busy = !reads.empty() || !writes.empty() || !responses.empty();

        top->clk = 1;
        top->eval();
        edge += 1;
        counters[RTLSIM_C_CYCLES] = edge;
        if (busy) counters[RTLSIM_C_MEMORY_BUSY_CYCLES] += 1;

        if (r_fire) {
            Burst& burst = reads.front();
            counters[RTLSIM_C_READ_BEATS] += 1;
            if (!burst.bad) counters[RTLSIM_C_BYTES_READ] += burst.size;
            burst.next += 1;
            if (burst.next == burst.beats) reads.pop_front();
        }
        if (ar_fire) {
            Burst burst = accept(araddr, arlen, arsize, arburst, arid, false);
            burst.ready_edge = edge + read_latency;
            reads.push_back(burst);
            counters[RTLSIM_C_READ_BURSTS] += 1;
            if (reads.size() > counters[RTLSIM_C_MAX_READS_INFLIGHT]) counters[RTLSIM_C_MAX_READS_INFLIGHT] = reads.size();
        }
        if (w_fire) {
            Burst& burst = writes.front();
            write_beat(burst, wdata, wstrb, wlast);
            write_credit -= static_cast<int64_t>(burst.size) * kCreditScale;
            if (burst.next == burst.beats) {
                burst.ready_edge = edge + write_latency;
                responses.push_back(burst);
                writes.pop_front();
            }
        }
        if (aw_fire) {
            writes.push_back(accept(awaddr, awlen, awsize, awburst, awid, true));
            counters[RTLSIM_C_WRITE_BURSTS] += 1;
            uint64_t inflight = writes.size() + responses.size();
            if (inflight > counters[RTLSIM_C_MAX_WRITES_INFLIGHT]) counters[RTLSIM_C_MAX_WRITES_INFLIGHT] = inflight;
        }
        if (b_fire) responses.pop_front();

        read_credit = read_credit + refill > refill ? refill : read_credit + refill;
        write_credit = write_credit + refill > refill ? refill : write_credit + refill;

        // Outputs for the next edge.
        if (!(rvalid && !r_fire)) {
            rvalid = false;
            if (!reads.empty() && edge + 1 >= reads.front().ready_edge && read_credit >= 0) {
                read_credit -= static_cast<int64_t>(reads.front().size) * kCreditScale;
                rvalid = true;
                drive_read_beat();
            }
        }
        if (!(bvalid && !b_fire)) {
            bvalid = false;
            if (!responses.empty() && edge + 1 >= responses.front().ready_edge) {
                bvalid = true;
                top->m_axi_bresp = responses.front().bad ? 2 : 0;
                top->m_axi_bid = responses.front().id;
            }
        }
        arready = reads.size() < max_reads;
        awready = writes.size() + responses.size() < max_writes;
        wready = !writes.empty() && write_credit >= 0;
        top->m_axi_arready = arready;
        top->m_axi_rvalid = rvalid;
        top->m_axi_awready = awready;
        top->m_axi_wready = wready;
        top->m_axi_bvalid = bvalid;
        return lite;
    }

    bool memory_quiet() const { return reads.empty() && writes.empty() && responses.empty(); }
};

void clear_inputs(Vbitserial_engine* top) {
    top->clk = 0;
    top->rst = 0;
    top->s_axil_awaddr = 0;
    top->s_axil_awvalid = 0;
    top->s_axil_wdata = 0;
    top->s_axil_wstrb = 0;
    top->s_axil_wvalid = 0;
    top->s_axil_bready = 0;
    top->s_axil_araddr = 0;
    top->s_axil_arvalid = 0;
    top->s_axil_rready = 0;
    top->m_axi_arready = 0;
    top->m_axi_rid = 0;
    top->m_axi_rdata = 0;
    top->m_axi_rresp = 0;
    top->m_axi_rlast = 0;
    top->m_axi_rvalid = 0;
    top->m_axi_awready = 0;
    top->m_axi_wready = 0;
    top->m_axi_bid = 0;
    top->m_axi_bresp = 0;
    top->m_axi_bvalid = 0;
}

}  // namespace

extern "C" {

int rtlsim_abi(void) { return RTLSIM_ABI; }

void* rtlsim_create(uint8_t* arena, uint64_t base, uint64_t size, uint32_t read_latency, uint32_t write_latency,
                    uint32_t max_reads, uint32_t max_writes, double bandwidth, uint32_t addr_mask, uint32_t reset_cycles) {
    if (!arena || read_latency < 1 || write_latency < 1 || max_reads < 1 || max_writes < 1 || !(bandwidth > 0.0)) {
        return nullptr;
    }
    auto* sim = new Sim;
    sim->context = std::make_unique<VerilatedContext>();
    sim->top = std::make_unique<Vbitserial_engine>(sim->context.get(), "top");
    sim->arena = arena;
    sim->base = base;
    sim->size = size;
    sim->read_latency = read_latency;
    sim->write_latency = write_latency;
    sim->max_reads = max_reads;
    sim->max_writes = max_writes;
    sim->refill = static_cast<int64_t>(bandwidth * kCreditScale + 0.5);
    sim->addr_mask = addr_mask;
    clear_inputs(sim->top.get());
    sim->top->rst = 1;
    for (uint32_t i = 0; i < (reset_cycles ? reset_cycles : 1); ++i) sim->step();
    sim->top->rst = 0;
    sim->top->clk = 0;
    sim->top->eval();
    sim->edge = 0;
    std::memset(sim->counters, 0, sizeof sim->counters);
    sim->errors.clear();
    sim->reads.clear();
    sim->writes.clear();
    sim->responses.clear();
    return sim;
}

void rtlsim_destroy(void* handle) {
    auto* sim = static_cast<Sim*>(handle);
    if (!sim) return;
    sim->top->final();
    delete sim;
}

int rtlsim_axil_write(void* handle, uint32_t offset, uint32_t value, uint32_t timeout_cycles) {
    auto* sim = static_cast<Sim*>(handle);
    Vbitserial_engine* top = sim->top.get();
    top->s_axil_awaddr = offset & sim->addr_mask;
    top->s_axil_awvalid = 1;
    top->s_axil_wdata = value;
    top->s_axil_wstrb = 0xF;
    top->s_axil_wvalid = 1;
    top->s_axil_bready = 1;
    for (uint32_t i = 0; i < timeout_cycles; ++i) {
        LiteSample lite = sim->step();
        if (lite.aw) top->s_axil_awvalid = 0;
        if (lite.w) top->s_axil_wvalid = 0;
        if (lite.b) {
            top->s_axil_awvalid = 0;
            top->s_axil_wvalid = 0;
            top->s_axil_bready = 0;
            return static_cast<int>(lite.bresp & 3);
        }
    }
    top->s_axil_awvalid = 0;
    top->s_axil_wvalid = 0;
    top->s_axil_bready = 0;
    return -1;
}

int rtlsim_axil_read(void* handle, uint32_t offset, uint32_t* value, uint32_t timeout_cycles) {
    auto* sim = static_cast<Sim*>(handle);
    Vbitserial_engine* top = sim->top.get();
    top->s_axil_araddr = offset & sim->addr_mask;
    top->s_axil_arvalid = 1;
    top->s_axil_rready = 1;
    for (uint32_t i = 0; i < timeout_cycles; ++i) {
        LiteSample lite = sim->step();
        if (lite.ar) top->s_axil_arvalid = 0;
        if (lite.r) {
            top->s_axil_arvalid = 0;
            top->s_axil_rready = 0;
            *value = lite.rdata;
            return static_cast<int>(lite.rresp & 3);
        }
    }
    top->s_axil_arvalid = 0;
    top->s_axil_rready = 0;
    return -1;
}

uint64_t rtlsim_run_until(void* handle, int condition, uint64_t max_cycles) {
    auto* sim = static_cast<Sim*>(handle);
    uint64_t done = 0;
    for (; done < max_cycles; ++done) {
        if (condition == RTLSIM_UNTIL_INTERRUPT && sim->top->RTLSIM_IRQ) break;
        if (condition == RTLSIM_UNTIL_MEMORY_QUIET && sim->memory_quiet()) break;
        sim->step();
    }
    return done;
}

int rtlsim_interrupt(void* handle) { return static_cast<Sim*>(handle)->top->RTLSIM_IRQ ? 1 : 0; }

uint64_t rtlsim_cycles(void* handle) { return static_cast<Sim*>(handle)->edge; }

int rtlsim_memory_quiet(void* handle) { return static_cast<Sim*>(handle)->memory_quiet() ? 1 : 0; }

void rtlsim_counters(void* handle, uint64_t* out) {
    std::memcpy(out, static_cast<Sim*>(handle)->counters, sizeof(uint64_t) * RTLSIM_COUNTERS);
}

uint64_t rtlsim_error_count(void* handle) { return static_cast<Sim*>(handle)->errors.size(); }

int rtlsim_error_at(void* handle, uint64_t index, rtlsim_error_t* out) {
    auto* sim = static_cast<Sim*>(handle);
    if (index >= sim->errors.size()) return -1;
    *out = sim->errors[index];
    return 0;
}

}  // extern "C"
