// C-simulation test bench: plays the AXI master. It loads a job directory written by autoq.hls.csim
//   registers.txt   "name value" per line: the scalar registers a driver writes (descriptor, command)
//   timing.txt      "name value" per line: schedule parameters the counters charge (optional)
//   weights.bin, activations.bin, tiles.bin, results.bin   the DDR buffers, raw little-endian
// calls the top function with the buffers as its DDR, writes results.bin back and prints every register the
// engine writes ("name value") on stdout.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "engine.hpp"

void bitserial_engine(AQ_TOP_PARAMS);

namespace {

struct Registers {
    AQ_TOP_FIELDS
};

std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "csim: cannot read %s\n", path.c_str());
        std::exit(3);
    }
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T, typename Raw>
std::vector<T> load(const std::string& path) {
    const std::vector<unsigned char> bytes = read_file(path);
    if (bytes.size() % sizeof(Raw)) {
        std::fprintf(stderr, "csim: %s is not a whole number of %zu-byte words\n", path.c_str(), sizeof(Raw));
        std::exit(3);
    }
    std::vector<T> words(bytes.size() / sizeof(Raw));
    for (size_t i = 0; i < words.size(); ++i) {
        Raw raw;
        std::memcpy(&raw, &bytes[i * sizeof(Raw)], sizeof(Raw));
        words[i] = raw;
    }
    return words;
}

bool set_register(Registers& regs, const std::string& name, unsigned long long value) {
#define AQ_SET(reg)        \
    if (name == #reg) {    \
        regs.reg = value;  \
        return true;       \
    }
    AQ_WRITABLE_SCALARS(AQ_SET)
#undef AQ_SET
    return false;
}

bool set_timing(aq::Timing& timing, const std::string& name, double value) {
#define AQ_SET(field)         \
    if (name == #field) {     \
        timing.field = value; \
        return true;          \
    }
    AQ_TIMING_FIELDS(AQ_SET)
#undef AQ_SET
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s JOB_DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    Registers regs = {};
    std::ifstream registers(dir + "/registers.txt");
    std::string name;
    unsigned long long value;
    while (registers >> name >> value)
        if (!set_register(regs, name, value)) {
            std::fprintf(stderr, "csim: no writable register %s\n", name.c_str());
            return 3;
        }
    std::ifstream timing(dir + "/timing.txt");
    double parameter;
    while (timing >> name >> parameter)
        if (!set_timing(aq::engine_timing(), name, parameter)) {
            std::fprintf(stderr, "csim: unknown schedule parameter %s\n", name.c_str());
            return 3;
        }

    std::vector<aq::word_t> weights = load<aq::word_t, unsigned long long>(dir + "/weights.bin");
    std::vector<aq::word_t> activations = load<aq::word_t, unsigned long long>(dir + "/activations.bin");
    std::vector<aq::table_t> tiles = load<aq::table_t, unsigned>(dir + "/tiles.bin");
    std::vector<aq::result_t> results = load<aq::result_t, int>(dir + "/results.bin");
    regs.weights_addr = weights.data();
    regs.activations_addr = activations.data();
    regs.tiles_addr = tiles.data();
    regs.results_addr = results.data();

    bitserial_engine(AQ_TOP_ARGS(regs));

    std::vector<int> raw(results.size());
    for (size_t i = 0; i < results.size(); ++i) raw[i] = results[i].to_int();
    std::ofstream out(dir + "/results.bin", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(raw.data()), raw.size() * sizeof(int));
#define AQ_PRINT(reg) std::printf("%s %llu\n", #reg, (unsigned long long)regs.reg.to_uint64());
    AQ_READABLE_OUTPUTS(AQ_PRINT)
#undef AQ_PRINT
    return 0;
}
