// C API of the Verilator harness (rtlsim.cpp), loaded from Python with ctypes (autoq.hls.rtlsim.sim).
// Keep the numbers here and in sim.py in step; RTLSIM_ABI changes whenever the API does.
#pragma once
#include <stdint.h>

#define RTLSIM_ABI 1

// run_until conditions
#define RTLSIM_RUN_CYCLES 0
#define RTLSIM_UNTIL_INTERRUPT 1
#define RTLSIM_UNTIL_MEMORY_QUIET 2

// error kinds
#define RTLSIM_E_BOUNDARY_4K 1
#define RTLSIM_E_OUT_OF_ARENA 2
#define RTLSIM_E_BURST_TYPE 3
#define RTLSIM_E_BEAT_SIZE 4
#define RTLSIM_E_UNALIGNED 5
#define RTLSIM_E_WLAST 6

// counters, in this order
#define RTLSIM_C_CYCLES 0
#define RTLSIM_C_BYTES_READ 1
#define RTLSIM_C_BYTES_WRITTEN 2
#define RTLSIM_C_READ_BURSTS 3
#define RTLSIM_C_WRITE_BURSTS 4
#define RTLSIM_C_READ_BEATS 5
#define RTLSIM_C_WRITE_BEATS 6
#define RTLSIM_C_ERRORS 7
#define RTLSIM_C_MAX_READS_INFLIGHT 8
#define RTLSIM_C_MAX_WRITES_INFLIGHT 9
#define RTLSIM_C_MEMORY_BUSY_CYCLES 10
#define RTLSIM_COUNTERS 11

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint32_t kind;
    uint32_t is_write;
    uint64_t address;
    uint32_t beats;
    uint32_t size;
    uint64_t cycle;
} rtlsim_error_t;

int rtlsim_abi(void);
void* rtlsim_create(uint8_t* arena, uint64_t base, uint64_t size, uint32_t read_latency, uint32_t write_latency,
                    uint32_t max_reads, uint32_t max_writes, double bandwidth, uint32_t addr_mask,
                    uint32_t reset_cycles);
void rtlsim_destroy(void* handle);
// AXI-Lite transactions: the response code (0 OKAY, 2 SLVERR, 3 DECERR), or -1 when none came in timeout_cycles.
int rtlsim_axil_write(void* handle, uint32_t offset, uint32_t value, uint32_t timeout_cycles);
int rtlsim_axil_read(void* handle, uint32_t offset, uint32_t* value, uint32_t timeout_cycles);
// Clock until the condition holds (checked before each cycle) or max_cycles passed; returns the cycles advanced.
uint64_t rtlsim_run_until(void* handle, int condition, uint64_t max_cycles);
int rtlsim_interrupt(void* handle);
uint64_t rtlsim_cycles(void* handle);
int rtlsim_memory_quiet(void* handle);
void rtlsim_counters(void* handle, uint64_t* out);
uint64_t rtlsim_error_count(void* handle);
int rtlsim_error_at(void* handle, uint64_t index, rtlsim_error_t* out);

#ifdef __cplusplus
}
#endif
