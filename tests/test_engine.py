"""The reference engine equals integer conv/matmul (torch float64 conv as the independent reference: exact here,
every partial sum is far below 2^53) and its cycle counter equals the schedule's closed form."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoq.common.errors import SpecError
from autoq.common.network import LayerSpec
from autoq.overlay import bitserial, engine
from autoq.overlay.bitserial import value_range
from autoq.overlay.engine import EngineResult, conv2d, matmul, run_layer
from autoq.overlay.manifest import load_overlay
from autoq.overlay.schedule import LayerEntry, ScheduleError, ScheduleParams, layer_cycles, network_cycles
from autoq.overlay.tiling import OperandError

from boardkit import MINI_MOBILENET, kernel_wise_plan

PYNQ_Z1 = load_overlay("pynq_z1")


def random_weights(rng: np.random.Generator, bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Signed weights over each output channel's full range; 1-bit channels are binary {-1, +1}."""
    low, high = value_range(bits, signed=True)
    expand = (slice(None),) + (None,) * (len(shape) - 1)
    values = rng.integers(low[expand], high[expand] + 1, size=shape)
    return np.where((bits[expand] == 1) & (values == 0), 1, values)


def reference_conv(x, w, stride, padding, groups) -> np.ndarray:
    as_float = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))
    out = torch.nn.functional.conv2d(as_float(x), as_float(w), stride=stride, padding=padding, groups=groups)
    return out.numpy().astype(np.int64)


def assert_cycles_match_schedule(result: EngineResult, layer: LayerSpec, bits, act_bits, overlay, params, batch, grouped):
    closed = layer_cycles(layer, bits, act_bits, overlay, params, batch, grouped)
    assert result.cycles[:6] == closed[:6], (result.cycles, closed)


overlays = st.builds(
    lambda dm, dn, dk, lhs, rhs: PYNQ_Z1.with_changes(dm=dm, dn=dn, dk=dk, lhs_mem_words=lhs, rhs_mem_words=rhs),
    st.integers(1, 8),
    st.integers(1, 8),
    st.sampled_from([1, 8, 64, 256]),
    st.sampled_from([1, 4, 32, 512]),
    st.sampled_from([1, 4, 32, 512]),
)
schedule_params = st.builds(
    ScheduleParams,
    dram_efficiency=st.floats(0.2, 1.0),
    result_efficiency=st.floats(0.2, 4.0),
    layer_overhead_cycles=st.floats(0, 3000),
    tile_overhead_cycles=st.floats(0, 20),
    pass_overhead_cycles=st.floats(0, 4),
    per_image_convs=st.booleans(),
)


@st.composite
def conv_cases(draw):
    depthwise = draw(st.booleans())
    groups = draw(st.integers(2, 6)) if depthwise else draw(st.integers(1, 3))
    c_in = groups if depthwise else groups * draw(st.integers(1, 4))
    c_out = groups * draw(st.integers(1, 2) if depthwise else st.integers(1, 5))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    hw = tuple(max(1, k - 2 * p) + draw(st.integers(0, 5)) for k, p in zip(kernel, padding))
    return dict(
        batch=draw(st.integers(1, 3)), c_in=c_in, c_out=c_out, kernel=kernel, stride=stride, padding=padding,
        groups=groups, hw=hw, weight_bits=np.array(draw(st.lists(st.integers(1, 8), min_size=c_out, max_size=c_out))),
        act_bits=draw(st.integers(1, 8)), seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=60, deadline=None)
@given(conv_cases(), overlays, schedule_params)
def test_conv_equals_integer_conv_and_schedule_cycles(case, overlay, params):
    rng = np.random.default_rng(case["seed"])
    x = rng.integers(0, 2 ** case["act_bits"], size=(case["batch"], case["c_in"], *case["hw"]))
    w = random_weights(rng, case["weight_bits"], (case["c_out"], case["c_in"] // case["groups"], *case["kernel"]))
    conv = dict(stride=case["stride"], padding=case["padding"], groups=case["groups"])
    expected = reference_conv(x, w, **conv)
    for grouped in (True, False):
        result = conv2d(x, w, case["weight_bits"], case["act_bits"], overlay, params=params, grouped=grouped, **conv)
        assert result.output.dtype == np.int64
        np.testing.assert_array_equal(result.output, expected)
        kind = "depthwise" if case["groups"] == case["c_in"] > 1 else "conv"
        layer = LayerSpec("conv2d", kind, case["c_in"], case["c_out"], case["kernel"], case["stride"], case["padding"],
                          case["groups"], case["hw"], expected.shape[2:])
        assert_cycles_match_schedule(result, layer, case["weight_bits"], case["act_bits"], overlay, params, case["batch"], grouped)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 70), st.integers(1, 20), st.integers(1, 8), overlays, st.integers(0, 2**32 - 1))
def test_matmul_equals_integer_matmul(batch, k, m, act_bits, overlay, seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 9, size=m)
    w = random_weights(rng, bits, (m, k))
    x = rng.integers(0, 2**act_bits, size=(batch, k))
    result = matmul(x, w, bits, act_bits, overlay)
    np.testing.assert_array_equal(result.output, np.einsum("bk,mk->bm", x, w))
    assert_cycles_match_schedule(result, LayerSpec("matmul", "linear", k, m), bits, act_bits, overlay, ScheduleParams(), batch, True)


def test_run_layer_on_network_layers_and_linear_shapes():
    rng = np.random.default_rng(3)
    dw = LayerSpec("dw", "depthwise", 8, 8, 3, 2, 1, 8, (9, 9), (5, 5))
    bits = rng.integers(1, 9, size=8)
    x, w = rng.integers(0, 16, size=(2, 8, 9, 9)), random_weights(rng, bits, (8, 1, 3, 3))
    result = run_layer(dw, x, w, bits, 4, PYNQ_Z1)
    np.testing.assert_array_equal(result.output, reference_conv(x, w, 2, 1, 8))
    assert result.cycles.bound == "fetch", "depthwise layers are bound by moving activations"
    fc = LayerSpec("fc", "linear", 40, 10)
    bits = rng.integers(1, 9, size=10)
    x, w = rng.integers(0, 256, size=(3, 40)), random_weights(rng, bits, (10, 40))
    flat = run_layer(fc, x, w, bits, 8, PYNQ_Z1)
    as_conv = run_layer(fc, x[:, :, None, None], w[:, :, None, None], bits, 8, PYNQ_Z1)
    np.testing.assert_array_equal(flat.output, x @ w.T)
    np.testing.assert_array_equal(as_conv.output[:, :, 0, 0], flat.output)
    assert flat.cycles == as_conv.cycles


def test_network_under_a_kernel_wise_plan_matches_schedule_per_layer():
    """A small MobileNet-like network, batch 2, random kernel-wise plan: every layer exact, every counter equal."""
    net = MINI_MOBILENET
    rng = np.random.default_rng(6)
    plan = kernel_wise_plan(net, rng, min_act_bits=2)
    params = ScheduleParams(per_image_convs=True)
    closed = network_cycles([LayerEntry(l, p.weight_bits, p.act_bits) for l, p in zip(net, plan.layers)], PYNQ_Z1, params, 2)
    for layer, lp, expected_cycles in zip(net, plan.layers, closed):
        bits = np.array(lp.weight_bits)
        x = rng.integers(0, 2**lp.act_bits, size=(2, layer.c_in, *layer.in_hw))
        w = random_weights(rng, bits, (layer.c_out, layer.c_in // layer.groups, *layer.kernel))
        result = run_layer(layer, x, w, bits, lp.act_bits, PYNQ_Z1, params)
        np.testing.assert_array_equal(result.output, reference_conv(x, w, layer.stride, layer.padding, layer.groups))
        assert result.cycles[:6] == expected_cycles[:6], layer.name


def test_grouping_by_bits_cuts_engine_execute_cycles():
    rng = np.random.default_rng(4)
    bits = np.tile([8, 2], 16)  # alternating widths: every natural-order tile runs at 8 bits
    x, w = rng.integers(0, 16, size=(1, 16, 8, 8)), random_weights(rng, bits, (32, 16, 3, 3))
    grouped = conv2d(x, w, bits, 4, PYNQ_Z1, padding=1)
    natural = conv2d(x, w, bits, 4, PYNQ_Z1, padding=1, grouped=False)
    np.testing.assert_array_equal(grouped.output, natural.output)
    assert grouped.cycles.execute < 0.7 * natural.cycles.execute


def test_wrong_msb_sign_breaks_conv_equality(monkeypatch):
    rng = np.random.default_rng(5)
    bits = np.array([3, 8, 5, 2])
    x, w = rng.integers(1, 8, size=(1, 3, 5, 5)), random_weights(rng, bits, (4, 3, 3, 3))
    w[:, 0, 0, 0] = -(1 << (bits - 1))
    expected = reference_conv(x, w, 1, 0, 1)
    np.testing.assert_array_equal(conv2d(x, w, bits, 3, PYNQ_Z1).output, expected)
    original = bitserial.plane_encoding
    monkeypatch.setattr(bitserial, "plane_encoding", lambda b, s, p=None: (np.abs(original(b, s, p)[0]), original(b, s, p)[1]))
    assert not np.array_equal(conv2d(x, w, bits, 3, PYNQ_Z1).output, expected)


def test_engine_rejects_a_schedule_that_misses_outputs(monkeypatch):
    real_tiles = engine.layer_tiles
    monkeypatch.setattr(engine, "layer_tiles", lambda *args: list(real_tiles(*args))[:-1])
    with pytest.raises(RuntimeError, match="do not cover every output"):
        conv2d(np.ones((1, 2, 4, 4), dtype=int), np.ones((3, 2, 1, 1), dtype=int), [2, 2, 2], 1, PYNQ_Z1)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(x=np.zeros((1, 3, 5, 5))), OperandError, "input must hold integers"),
        (dict(x=np.zeros((3, 5, 5), dtype=int)), OperandError, "input must be a 4-D array"),
        (dict(w=np.zeros((4, 2, 3, 3), dtype=int)), OperandError, r"weights must be \(4, 3, 3, 3\)"),
        (dict(bits=[4, 4, 4]), OperandError, "3 bit-widths for 4 rows"),
        (dict(bits=[4, 4, 4, 9]), OperandError, r"weight_bits\[3\] = 9 is outside \[1, 8\]"),
        (dict(act_bits=9), ScheduleError, "act_bits must be an int in"),
        (dict(act_bits=2), OperandError, r"activations \(group \* N, K\)\[0, 0\] = 7 .* 2-bit unsigned range \[0, 3\]"),
        (dict(bits=[4, 4, 2, 4]), OperandError, r"weights\[2, 0\] = -8 does not fit row 2's 2-bit"),
        (dict(padding=-1), SpecError, "padding >= 0"),
        (dict(groups=2), SpecError, "groups=2 must divide"),
        (dict(x=np.full((1, 3, 2, 2), 1)), OperandError, "does not fit the padded"),
    ],
)
def test_bad_engine_input_is_named(change, error, message):
    args = dict(x=np.full((1, 3, 5, 5), 7), w=np.full((4, 3, 3, 3), -8), bits=[4, 4, 4, 4], act_bits=3, padding=0, groups=1)
    args.update(change)
    with pytest.raises(error, match=message):
        conv2d(args["x"], args["w"], args["bits"], args["act_bits"], PYNQ_Z1, padding=args["padding"], groups=args["groups"])


def test_run_layer_rejects_operands_that_do_not_fit_the_layer():
    layer = LayerSpec("c", "conv", 3, 4, 3, 1, 1, 1, (6, 6), (6, 6))
    with pytest.raises(OperandError, match=r"layer 'c': input must be \(batch, 3, 6, 6\)"):
        run_layer(layer, np.zeros((1, 3, 5, 5), dtype=int), np.zeros((4, 3, 3, 3), dtype=int), [2] * 4, 2, PYNQ_Z1)
    wrong_out = LayerSpec("c", "conv", 3, 4, 3, 1, 1, 1, (6, 6), (4, 4))
    with pytest.raises(OperandError, match=r"give a \(6, 6\) output, the layer says \(4, 4\)"):
        run_layer(wrong_out, np.zeros((1, 3, 6, 6), dtype=int), np.zeros((4, 3, 3, 3), dtype=int), [2] * 4, 2, PYNQ_Z1)


def test_engine_imports_without_torch():
    code = (
        "import sys; import autoq.overlay.engine, autoq.overlay.bitserial, autoq.overlay.tiling; "
        "heavy = sorted(m for m in ('torch', 'scipy', 'onnx', 'pynq') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
