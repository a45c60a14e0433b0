"""Board side under hostile requests: bounded work per request, no leaked DDR buffers, checked geometry, and no
``internal`` answers from the daemon for bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoq.common.errors import SpecError
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.board import EMULATED_SETTINGS, Board, BoardError, LimitError, RequestLimits, check_geometry, emulated_factory
from autoq.overlay.daemon import Daemon
from autoq.overlay.emulated import DDR_ALIGN, EmulatedDDR, EmulationError
from autoq.overlay.layout import timing_shape
from autoq.overlay.manifest import load_overlay
from autoq.overlay.protocol import ERROR_CODES, Message, make_message
from autoq.overlay.regmap import RegisterMap

from boardkit import TINY, kernel_wise_plan

OVERLAY = load_overlay()


def ddr_of(board: Board) -> EmulatedDDR:
    """The emulated DDR behind a board's driver (the emulated factory's bus is the device)."""
    return board.session.driver._bus.ddr


def conv(name: str, c: int = 8, hw: int = 8, **kw) -> LayerSpec:
    return LayerSpec(name, "conv", c, c, 3, 1, 1, 1, (hw, hw), (hw, hw), **kw)


def chain(n: int, c: int = 8, hw: int = 8) -> NetworkSpec:
    return NetworkSpec(f"deep{n}", tuple(conv(f"c{i}", c, hw) for i in range(n)), (c, hw, hw))


@pytest.fixture(scope="module")
def board():
    board = Board.emulated()
    yield board
    board.close()


# -- emulated DDR ------------------------------------------------------------------------------------------------
def test_emulated_ddr_finds_live_buffers_and_refuses_freed_ones():
    ddr = EmulatedDDR()
    buffers = [ddr.allocate(n, np.uint32) for n in (1, 1024, 1025, 3, 5000)]
    for i, b in enumerate(buffers):
        b[:] = i + 1
    assert len(ddr) == 5 and ddr.mapped_bytes == 4 * (1 + 1024 + 1025 + 3 + 5000)
    assert [b.device_address % DDR_ALIGN for b in buffers] == [0] * 5
    for i, b in enumerate(buffers):
        assert (ddr.array_at(b.device_address, np.uint32, b.size) == i + 1).all()
        assert ddr.bytes_at(b.device_address + b.nbytes - 4, 1)[0] == i + 1  # little-endian low byte of the last word
        with pytest.raises(EmulationError, match="not inside one allocated buffer"):
            ddr.bytes_at(b.device_address + 4, b.nbytes)  # runs past its end
    for b in buffers[::2]:
        b.freebuffer()
    assert len(ddr) == 2 and ddr.mapped_bytes == 4 * (1024 + 3)
    for b in buffers[::2]:
        with pytest.raises(EmulationError):
            ddr.bytes_at(b.device_address, 1)
    assert (ddr.array_at(buffers[3].device_address, np.uint32, 3) == 4).all()
    many = [ddr.allocate(8, np.uint8) for _ in range(500)]  # enough frees to compact the sorted starts
    for b in many[:-1]:
        b.freebuffer()
    assert len(ddr) == 3 and ddr.bytes_at(many[-1].device_address, 8).size == 8
    with pytest.raises(EmulationError):
        ddr.bytes_at(many[0].device_address, 1)
    ddr.release()
    assert len(ddr) == 0 and ddr.mapped_bytes == 0


def test_emulated_ddr_capacity_refuses_allocations_beyond_it():
    ddr = EmulatedDDR(capacity=1000)
    kept = ddr.allocate(600, np.uint8)
    with pytest.raises(EmulationError, match="cannot allocate 600 bytes, 600 of its 1000 bytes are in use"):
        ddr.allocate(600, np.uint8)
    kept.freebuffer()
    assert ddr.allocate(1000, np.uint8).nbytes == 1000


def test_many_layers_measure_like_one_layer_repeated():
    """5,000 layers (quadratic in the DDR scan before: ~100-200 s; now a few seconds) measure as one layer x 5,000."""
    n = 5000
    board = Board.emulated(limits=RequestLimits(max_layers=n))
    one = board.measure(chain(1), QuantPlan.uniform(chain(1), 4, 4))
    many = board.measure(chain(n), QuantPlan.uniform(chain(n), 4, 4))
    assert many.latency_s == pytest.approx(n * one.latency_s, rel=1e-9) and len(ddr_of(board)) == 0
    board.close()


# -- limits ------------------------------------------------------------------------------------------------------
def test_default_limits_take_resnet50_sized_requests(board):
    """ResNet-50's widest and largest layers at batch 16 and 8 bits pass every limit."""
    wide = LayerSpec("fc", "linear", 2048, 1000)
    stem = LayerSpec("stem", "conv", 3, 64, 7, 2, 3, 1, (224, 224), (112, 112))
    net = NetworkSpec("r50ish", (stem, conv("b", 256, 56), wide), (3, 224, 224))
    RequestLimits().check_request(net, 16)
    RequestLimits().check_ddr([timing_shape(l, [8] * l.c_out, 8, OVERLAY, 16) for l in net])


@pytest.mark.parametrize("network, batch, message", [
    (TINY, 257, "batch 257 exceeds the limit max_batch=256"),
    (TINY, 10**9, "batch 1000000000 exceeds the limit max_batch=256"),
    (chain(1025), 1, "has 1025 layers, the limit is max_layers=1024"),
    (NetworkSpec("w", (LayerSpec("fc", "linear", 1 << 17, 10),), (1 << 17, 1, 1)), 1,
     r"c_in=131072 exceeds the limit max_channels=65536"),
    (NetworkSpec("p", (LayerSpec("c", "conv", 3, 8, 3, 1, 2**31, 1, (8, 8), (8, 8)),), (3, 8, 8)), 1,
     r"padding=\(2147483648, 2147483648\) exceeds the limit max_window=64"),
    (NetworkSpec("s", (LayerSpec("c", "conv", 3, 8, 1, 1, 0, 1, (2**40, 1), (2**40, 1)),), (3, 8, 8)), 1,
     r"in_hw=\(1099511627776, 1\) exceeds the limit max_spatial=16384"),
    (NetworkSpec("k", (LayerSpec("c", "conv", 3, 8, 65, 1, 32, 1, (8, 8), (8, 8)),), (3, 8, 8)), 1,
     r"kernel=\(65, 65\) exceeds the limit max_window=64"),
    # within every per-field limit, but 4 GiB and more of buffers
    (NetworkSpec("big", (conv("c", 64, 4096),), (64, 4096, 4096)), 16,
     r"needs \d+ bytes of DDR buffers, the limit is max_ddr_bytes=2147483648"),
])
def test_requests_beyond_the_limits_are_refused_before_allocating(board, network, batch, message):
    plan = kernel_wise_plan(network)
    with pytest.raises(LimitError, match=message) as exc:
        board.measure(network, plan, batch)
    assert exc.value.code == "bad_request" and len(ddr_of(board)) == 0


def test_limits_fit_the_descriptor_registers():
    regmap = RegisterMap.from_overlay(OVERLAY)
    RequestLimits().check_registers(regmap)
    with pytest.raises(BoardError, match="admit in_h up to 4294967296, its register has 32 bits"):
        RequestLimits(max_spatial=1 << 32).check_registers(regmap)
    with pytest.raises(BoardError, match="max_batch must be a positive int"):
        RequestLimits(max_batch=0)


# -- geometry ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [
    LayerSpec("same_even", "conv", 4, 4, 4, 1, 1, 1, (8, 8), (8, 8)),  # torch padding="same", even kernel
    LayerSpec("dilated", "conv", 4, 4, 3, 1, 6, 1, (16, 16), (16, 16)),  # dilation 6, padding 6
    LayerSpec("strided", "conv", 3, 8, 7, 2, 3, 1, (224, 224), (112, 112)),
    LayerSpec("fc", "linear", 64, 10, in_hw=(49, 1), out_hw=(49, 1)),
], ids=lambda l: l.name)
def test_geometry_of_real_layers_passes(layer):
    check_geometry(layer)


@pytest.mark.parametrize("layer, message", [
    (LayerSpec("big_out", "conv", 4, 4, 3, 1, 1, 1, (8, 8), (10, 8)), r"out_hw=\(10, 8\) is larger than .* at most \(9, 9\)"),
    (LayerSpec("fc", "linear", 4, 4, in_hw=(1, 1), out_hw=(1000, 1000)), r"out_hw=\(1000, 1000\) is larger"),
    (LayerSpec("no_fit", "conv", 4, 4, 9, 1, 0, 1, (4, 4), (1, 1)), r"a \(9, 9\) kernel with padding \(0, 0\) does not fit"),
], ids=["big_out", "linear_out", "kernel_too_big"])
def test_inconsistent_geometry_is_a_spec_error(board, layer, message):
    net = NetworkSpec("g", (layer,), (layer.c_in, *layer.in_hw))
    with pytest.raises(SpecError, match=message):
        board.measure(net, QuantPlan.uniform(net, 4, 4))


# -- no leaks ----------------------------------------------------------------------------------------------------
def test_a_measurement_failing_midway_frees_every_buffer():
    """A DDR too small for the whole request fails while preparing a later layer (at several points, also inside
    one layer's buffers): whatever was allocated before is freed, and the board measures again afterwards."""
    net = TINY
    plan = kernel_wise_plan(net)
    sizes = [timing_shape(l, lp.weight_bits, lp.act_bits, OVERLAY, 1).nbytes for l, lp in zip(net, plan.layers)]
    board = Board(emulated_factory(ddr_bytes=sum(sizes)), "emulated", settings=EMULATED_SETTINGS)
    ddr = ddr_of(board)
    for capacity in (sizes[0] + 8, sizes[0] + sizes[1] - 8, sum(sizes) - 8):
        ddr.capacity = capacity
        with pytest.raises(EmulationError, match="cannot allocate"):
            board.measure(net, plan)
        assert len(ddr) == 0 and ddr.mapped_bytes == 0
    ddr.capacity = sum(sizes)
    assert board.measure(net, plan).latency_s > 0 and len(ddr) == 0
    board.close()


def test_failed_requests_through_the_daemon_leave_no_buffers(board):
    daemon = Daemon(board)
    ok = NetworkSpec("ok", (conv("a", 64, 64),), (64, 64, 64))
    bad = NetworkSpec("bad", (conv("a", 64, 64), conv("b", 64, 8192)), (64, 64, 64))  # layer b: > 2 GiB at batch 16
    for i in range(5):
        answer = daemon.handle(make_message({"type": "measure", "id": i},
                                            {"network": bad.to_dict(), "plan": QuantPlan.uniform(bad, 8, 8).to_dict(), "batch": 16}))
        assert answer.header["code"] == "bad_request" and "max_ddr_bytes" in answer.header["message"]
        assert len(ddr_of(board)) == 0
    answer = daemon.handle(make_message({"type": "measure", "id": 9}, {"network": ok.to_dict(), "plan": QuantPlan.uniform(ok, 4, 4).to_dict()}))
    assert answer.type == "result" and len(ddr_of(board)) == 0


# -- hostile payloads --------------------------------------------------------------------------------------------
def _layer(**changes):
    base = {"name": "c", "kind": "conv", "c_in": 3, "c_out": 4, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
            "groups": 1, "in_hw": [8, 8], "out_hw": [8, 8]}
    return {**base, **changes}


def _payload(layers=None, input_shape=(3, 8, 8), batch=1, plan=None, **network):
    layers = [_layer()] if layers is None else layers
    net = {"name": "n", "input_shape": list(input_shape) if isinstance(input_shape, tuple) else input_shape,
           "layers": layers, **network}
    if plan is None:
        plan = {"layers": [{"name": l.get("name") if isinstance(l, dict) else "c", "act_bits": 4,
                            "weight_bits": [4] * (l.get("c_out") if isinstance(l, dict) and isinstance(l.get("c_out"), int)
                                                  and 0 < l.get("c_out") < 10**5 else 4)} for l in (layers if isinstance(layers, list) else [])]}
    return {"network": net, "plan": plan, "batch": batch}


NAN, INF = math.nan, math.inf
BAD_PAYLOADS = [
    None, [], "measure", 3, {"network": 3, "plan": {}}, {"network": {}, "plan": {}},
    _payload(input_shape=["a", "b"]), _payload(input_shape=3), _payload(input_shape=[3, "8", 8]),
    _payload(input_shape=[True, 8, 8]), _payload(input_shape=[NAN, 8, 8]), _payload(input_shape=[INF, 8, 8]),
    _payload(input_shape=[3, 8]), _payload(input_shape={"c": 3}), _payload(input_shape=None), _payload(input_shape=[-3, 8, 8]),
    _payload(layers=3), _payload(layers={"a": 1}), _payload(layers="layers"), _payload(layers=[3]), _payload(layers=[[1, 2]]),
    _payload(layers=[]), _payload(layers=[_layer(), _layer()]),
    _payload(layers=[_layer(c_in="3")]), _payload(layers=[_layer(c_in=True)]), _payload(layers=[_layer(c_in=3.5)]),
    _payload(layers=[_layer(c_in=NAN)]), _payload(layers=[_layer(c_in=2**40)]), _payload(layers=[_layer(c_out=2**40)]),
    _payload(layers=[_layer(c_in=-3)]), _payload(layers=[_layer(groups=0)]), _payload(layers=[_layer(groups=2)]),
    _payload(layers=[_layer(kernel=["a", "b"])]), _payload(layers=[_layer(kernel=[1, 2, 3])]),
    _payload(layers=[_layer(kernel=[INF, 1])]), _payload(layers=[_layer(kernel=[NAN, 1])]), _payload(layers=[_layer(kernel="33")]),
    _payload(layers=[_layer(kernel=True)]), _payload(layers=[_layer(kernel=[3.0, 3.0])]), _payload(layers=[_layer(kernel=None)]),
    _payload(layers=[_layer(kernel={"h": 3})]), _payload(layers=[_layer(padding=2**31)]), _payload(layers=[_layer(padding=2**64)]),
    _payload(layers=[_layer(stride=0)]), _payload(layers=[_layer(in_hw=[2**40, 2**40], out_hw=[2**40, 2**40])]),
    _payload(layers=[_layer(out_hw=[10**12, 1])]), _payload(layers=[_layer(out_hw=[10, 10])]), _payload(layers=[_layer(kernel=[99, 99])]),
    _payload(layers=[_layer(name=5)]), _payload(layers=[_layer(name=["c"])]), _payload(layers=[_layer(name="")]),
    _payload(layers=[_layer(kind=3)]), _payload(layers=[_layer(kind=["conv"])]), _payload(layers=[_layer(kind="depthwise")]),
    _payload(layers=[_layer(extra=1)]), _payload(layers=[{"name": "c"}]), _payload(name=["n"]), _payload(name=None),
    _payload(hash=[1]), _payload(hash="0" * 16),
    _payload(batch=10**9), _payload(batch=2**70), _payload(batch=0), _payload(batch=-1), _payload(batch="2"),
    _payload(batch=True), _payload(batch=2.5), _payload(batch=None), _payload(batch=NAN),
    _payload(plan=3), _payload(plan=[]), _payload(plan={"layers": 3}), _payload(plan={"layers": [3]}),
    _payload(plan={"layers": [{"name": "c", "act_bits": 4, "weight_bits": "4444"}]}),
    _payload(plan={"layers": [{"name": "c", "act_bits": "4", "weight_bits": [4] * 4}]}),
    _payload(plan={"layers": [{"name": "c", "act_bits": 4, "weight_bits": [4.5] * 4}]}),
    _payload(plan={"layers": [{"name": ["c"], "act_bits": 4, "weight_bits": [4] * 4}]}),
    _payload(plan={"layers": [{"name": "c", "act_bits": 4, "weight_bits": [4] * 5}]}),
    _payload(plan={"layers": [{"name": "c", "act_bits": 99, "weight_bits": [4] * 4}]}),
    # 4 GiB and more of buffers from a few hundred bytes
    _payload(layers=[_layer(c_in=64, c_out=64, in_hw=[4096, 4096], out_hw=[4096, 4096])], input_shape=(64, 4096, 4096), batch=16),
    _payload(layers=[_layer(name=f"c{i}") for i in range(1100)]),
]


def test_no_bad_measure_payload_is_answered_internal(board):
    daemon = Daemon(board)
    for i, body in enumerate(BAD_PAYLOADS):
        # raw JSON (NaN and Infinity included, as a hostile client may send them); no payload for None
        request = Message({"type": "measure", "id": i}, b"" if body is None else json.dumps(body).encode())
        answer = daemon.handle(request)
        assert answer.type == "error", (i, body)
        code = answer.header["code"]
        assert code in ERROR_CODES and code not in ("internal", "device_error"), (i, json.dumps(body)[:200], answer.header)
    assert len(ddr_of(board)) == 0
    # and the board still measures
    good = daemon.handle(make_message({"type": "measure", "id": "ok"}, _payload()))
    assert good.type == "result", good.header
