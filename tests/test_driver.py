"""The engine driver against pynq's real classes: ``DefaultIP`` built from a description dict on a scripted
register device that asserts every bus transaction, and on the emulated device behind pynq's ``Device`` seam."""
from __future__ import annotations

import collections
import struct
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pynq

from autoq.overlay.calibration_params import load_default_calibration
from autoq.common.network import LayerSpec
from autoq.overlay.driver import BitSerialEngine, BusEngine, DriverError, LayerJob, known_vlnvs
from autoq.overlay.emulated import EmulatedEngine, EmulatedPynqDevice
from autoq.overlay.engine import run_layer
from autoq.overlay.layout import build_job
from autoq.overlay.manifest import ManifestError, load_overlay
from autoq.overlay.regmap import AP_DONE, AP_IDLE, AP_START, CMD_IDENTIFY, CMD_RUN, RegisterMap, Status

BASE = 0x4000_0000
OVERLAY = load_overlay()
REGS = RegisterMap.from_overlay(OVERLAY)


class ScriptedDevice(pynq.Device):
    """A REGISTER_RW pynq device that replays a script of ('r'|'w', address, value) transactions, in order."""

    def __init__(self):
        super().__init__("scripted")
        self.capabilities = {"REGISTER_RW": True}
        self.script: collections.deque = collections.deque()
        self.addresses = iter(range(0x2000_0000, 0x3000_0000, 0x10000))
        self.flushed: list[int] = []

    def expect(self, transactions):
        self.script = collections.deque(transactions)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            assert not self.script, f"transactions not performed: {list(self.script)[:5]}"

    def read_registers(self, address, length):
        assert self.script, f"unexpected read at {address:#x}"
        kind, expected, value = self.script.popleft()
        assert (kind, address, length) == ("r", expected, 4), f"got read {address:#x}, expected {kind} {expected:#x}"
        return struct.pack("<I", value)

    def write_registers(self, address, data):
        assert self.script, f"unexpected write at {address:#x}"
        kind, expected, value = self.script.popleft()
        assert (kind, address, bytes(data)) == ("w", expected, struct.pack("<I", value)), (
            f"got write {bytes(data).hex()} at {address:#x}, expected {kind} {value:#x} at {expected:#x}"
        )

    def allocate(self, shape, dtype, **kwargs):
        # pynq 4.0's PynqBuffer cannot be built on numpy >= 2 (ndarray.device is read-only): a stand-in with its API
        buffer = np.zeros(shape, dtype).view(ContiguousBuffer)
        buffer.device_address, buffer.flushed = next(self.addresses), self.flushed
        return buffer


class ContiguousBuffer(np.ndarray):
    """PynqBuffer's interface the driver uses: device_address, flush, invalidate, freebuffer."""

    def flush(self):
        self.flushed.append(self.nbytes)

    def invalidate(self):
        pass

    def freebuffer(self):
        pass


def reads(name, value):
    reg = REGS[name]
    return [("r", BASE + o, w) for o, w in zip(reg.word_offsets, reg.split(value))]


def writes(name, value):
    reg = REGS[name]
    return [("w", BASE + o, w) for o, w in zip(reg.word_offsets, reg.split(value))]


def start_and_done(polls_busy=0):
    return (
        reads("control", AP_IDLE) + writes("control", AP_START)
        + reads("control", AP_START) * polls_busy + reads("control", AP_DONE | AP_IDLE)
    )


def identify_script(ids=None):
    ids = dict(REGS.id_values if ids is None else ids)
    script = writes("command", CMD_IDENTIFY) + start_and_done(polls_busy=2)
    script += reads("magic", ids["magic"]) + reads("regmap_version", ids["regmap_version"])
    for reg in REGS.section("id"):
        script += reads(reg.name, ids[reg.name])
    return script


@pytest.fixture
def engine():
    device = ScriptedDevice()
    return BitSerialEngine({"phys_addr": BASE, "addr_range": REGS.span, "device": device}), device


def test_driver_binds_to_the_manifest_vlnv():
    assert OVERLAY.vlnv in known_vlnvs() and BitSerialEngine.bindto == known_vlnvs()
    from pynq.overlay import _ip_drivers  # pynq's registry that Overlay uses to pick a driver by VLNV

    assert _ip_drivers[OVERLAY.vlnv] is BitSerialEngine


def test_identify_reads_the_id_block_and_accepts_a_matching_build(engine):
    driver, device = engine
    with device.expect(identify_script()):
        hardware = driver.attach(OVERLAY)
    assert hardware.build_hash == OVERLAY.build_hash and hardware.values["dm"] == OVERLAY.dm


def test_refuses_bitstream_whose_build_hash_differs(engine):
    driver, device = engine
    ids = dict(REGS.id_values, build_hash_lo=REGS.id_values["build_hash_lo"] ^ 1)
    with device.expect(identify_script(ids)), pytest.raises(ManifestError, match="does not match manifest .* Refusing"):
        driver.attach(OVERLAY)
    with pytest.raises(DriverError, match="attach"):
        driver.read_register("status")


def test_refuses_a_device_without_the_engine_magic(engine):
    driver, device = engine
    script = writes("command", CMD_IDENTIFY) + start_and_done() + reads("magic", 0xDEADBEEF)
    with device.expect(script), pytest.raises(DriverError, match="no bit-serial engine answers here"):
        driver.attach(OVERLAY)


def test_wait_times_out_with_a_clear_error(engine):
    driver, device = engine
    driver.timeout_s = 0.05
    device.expect(writes("command", CMD_IDENTIFY) + reads("control", AP_IDLE) + writes("control", AP_START)
                  + reads("control", AP_START) * 100_000)
    driver._regs = REGS
    with pytest.raises(DriverError, match=r"identify: engine did not finish within 0.05 s \(control=0x1\)"):
        driver.attach(OVERLAY)


def test_run_writes_descriptor_and_buffers_then_reads_counters(engine):
    driver, device = engine
    with device.expect(identify_script()):
        driver.attach(OVERLAY)
    job = LayerJob(
        "l0",
        {reg.name: i + 1 for i, reg in enumerate(REGS.section("descriptor"))},
        {"weights": np.arange(6, dtype=np.uint64), "activations": np.ones(4, np.uint64),
         "results": np.zeros((1, 2), np.int32), "tiles": np.arange(3, dtype=np.uint32)},
    )
    prepared = driver.prepare(job)
    assert np.array_equal(prepared.buffers["weights"], np.arange(6)) and device.flushed == [48, 32, 8, 12]
    stalls = {"stall_fetch": 4, "stall_execute": 5, "stall_result": 6}
    counters = {"cycles_fetch": 11, "cycles_execute": 22, "cycles_result": 33, "cycles_total": (1 << 33) + 5}
    script = []
    for name, value in job.descriptor.items():
        script += writes(name, value)
    for name in ("weights", "activations", "results", "tiles"):
        script += writes(f"{name}_addr", prepared.buffers[name].device_address)
    script += writes("command", CMD_RUN) + start_and_done(polls_busy=1) + reads("status", 0)
    for name, value in {**stalls, **counters}.items():
        script += reads(name, value)
    with device.expect(script):
        result = driver.run(prepared)
    assert result[:4] == (11, 22, 33, (1 << 33) + 5) and result.stalls == stalls


def test_run_reports_a_rejected_job(engine):
    driver, device = engine
    with device.expect(identify_script()):
        driver.attach(OVERLAY)
    job = LayerJob("bad", {"c_in": 1}, {n: np.zeros(1, np.uint32) for n in ("weights", "activations", "results", "tiles")})
    prepared = driver.prepare(job)
    script = writes("c_in", 1)
    for name in ("weights", "activations", "results", "tiles"):
        script += writes(f"{name}_addr", prepared.buffers[name].device_address)
    script += writes("command", CMD_RUN) + start_and_done() + reads("status", Status.BAD_TABLE)
    with device.expect(script), pytest.raises(DriverError, match="layer 'bad': the engine rejected the run: bad tile table"):
        driver.run(prepared)


def test_engine_not_idle_is_refused(engine):
    driver, device = engine
    driver._regs = REGS
    with device.expect(writes("command", CMD_IDENTIFY) + reads("control", AP_START)):
        with pytest.raises(DriverError, match="not idle"):
            driver.attach(OVERLAY)


def random_operands(layer: LayerSpec, rng: np.random.Generator, batch: int = 2):
    bits = rng.integers(1, 9, layer.c_out)
    low = np.where(bits == 1, -1, -(1 << (bits - 1)))
    high = np.where(bits == 1, 1, (1 << (bits - 1)) - 1)
    w = rng.integers(low[:, None], high[:, None] + 1, size=(layer.c_out, layer.kernel_size))
    w = np.where((bits[:, None] == 1) & (w == 0), 1, w).reshape(layer.c_out, layer.c_in // layer.groups, *layer.kernel)
    x = rng.integers(0, 8, size=(batch, layer.c_in, *layer.in_hw))
    return x, w, bits


LAYERS = [
    LayerSpec("conv", "conv", 6, 12, 3, 1, 1, 1, (7, 7), (7, 7)),
    LayerSpec("grouped", "conv", 8, 12, 3, 2, 1, 2, (7, 7), (4, 4)),
    LayerSpec("dw", "depthwise", 12, 12, 3, 2, 1, 12, (7, 7), (4, 4)),
    LayerSpec("fc", "linear", 40, 10),
]


@pytest.mark.parametrize("layer", LAYERS, ids=[l.name for l in LAYERS])
def test_pynq_driver_on_emulated_device_is_bit_exact(layer):
    """pynq's MMIO and allocate drive the emulated FPGA; results and cycle counters equal the reference engine."""
    calibration = load_default_calibration()
    device = EmulatedPynqDevice(EmulatedEngine(OVERLAY, calibration, compute=True), base=BASE)
    driver = BitSerialEngine({"phys_addr": BASE, "addr_range": REGS.span, "device": device})
    driver.attach(OVERLAY)
    x, w, bits = random_operands(layer, np.random.default_rng(len(layer.name)))
    prepared = driver.prepare(build_job(layer, x, w, bits, 3, OVERLAY))
    counters = driver.run(prepared)
    reference = run_layer(layer, x, w, bits, 3, OVERLAY, calibration.schedule)
    assert np.array_equal(driver.results(prepared), reference.output)
    assert counters.total == reference.cycles.total and counters.execute == reference.cycles.execute


def test_emulated_device_rejects_a_corrupted_tile_table():
    device = EmulatedEngine(OVERLAY, load_default_calibration())
    driver = BusEngine(device, device.allocate)
    driver.attach(OVERLAY)
    layer = LAYERS[0]
    x, w, bits = random_operands(layer, np.random.default_rng(1))
    job = build_job(layer, x, w, bits, 3, OVERLAY)
    table = job.buffers["tiles"].copy()
    table[2] = table[3]  # the same channel twice
    with pytest.raises(DriverError, match="bad tile table"):
        driver.run(driver.prepare(LayerJob(job.name, job.descriptor, {**job.buffers, "tiles": table})))
    assert driver.run(driver.prepare(job)).total > 0  # the device keeps working
