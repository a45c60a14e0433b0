"""Kernel-wise quantizer: weight/activation quantization, plan switching, STE, integer view, configuration errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoq.common.errors import PlanError, SpecError
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.network.trace import spec_from_torch
from autoq.host.quant import quantizer as qz
from autoq.host.quant.quantizer import QuantizedModel, QuantizerConfig, QuantizerError


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def tiny(config: QuantizerConfig = QuantizerConfig(), calibrate: bool = True):
    torch.manual_seed(0)
    model = TinyNet().eval()
    network = spec_from_torch(model, (2, 8, 8), "tiny")
    qmodel = QuantizedModel(model, network, config)
    data = torch.randn(32, 2, 8, 8)
    if calibrate:
        qmodel.calibrate([data[:16], (data[16:], torch.zeros(16))])
    return qmodel, data


def mixed_plan(network, seed: int = 1, low: int = 1, high: int = 8) -> QuantPlan:
    g = torch.Generator().manual_seed(seed)
    return QuantPlan.for_network(network, [
        LayerPlan(l.name, tuple(torch.randint(low, high + 1, (l.c_out,), generator=g).tolist()),
                  int(torch.randint(max(low, 2), high + 1, (1,), generator=g))) for l in network])


def quant_mse(rows, scale, bits):
    return ((qz.integer_weight_values(rows, scale, bits) * scale[:, None] - rows) ** 2).sum(1)


def test_weight_scale_is_mse_optimal_on_its_grid_and_one_bit_uses_mean_abs():
    torch.manual_seed(0)
    rows = torch.randn(12, 50) * torch.linspace(0.1, 3, 12)[:, None]
    rows[0, 0] = 20.0  # an outlier
    ratios = qz.clip_ratio_grid(40)
    for b in (2, 3, 4, 8):
        bits = torch.full((12,), b)
        scale = qz.mse_optimal_weight_scales(rows, bits, ratios)
        best = quant_mse(rows, scale, bits)
        levels = 2 ** (b - 1) - 1
        for ratio in ratios:  # brute force over the same grid, one ratio at a time
            trial = ratio * rows.abs().amax(1) / levels
            assert torch.all(best <= quant_mse(rows, trial, bits) * (1 + 1e-5))
    gaussian = rows[5:6]  # for a bell-shaped kernel the best 2-bit clip lies well inside its range
    assert float(qz.mse_optimal_weight_scales(gaussian, torch.tensor([2]), ratios)) < 0.8 * float(gaussian.abs().max())
    one = torch.ones(12, dtype=torch.int64)
    scale = qz.mse_optimal_weight_scales(rows, one, ratios)
    torch.testing.assert_close(scale, rows.abs().mean(1))
    for factor in (0.9, 1.1):
        assert torch.all(quant_mse(rows, scale, one) <= quant_mse(rows, scale * factor, one))


def test_integer_weights_follow_per_kernel_bits_and_match_the_fake_quantized_weight():
    qmodel, _ = tiny()
    plan = mixed_plan(qmodel.network)
    qmodel.apply(plan)
    for layer in qmodel.network:
        values, scale = qmodel.integer_weights(layer.name)
        assert values.dtype == torch.int32 and values.shape == qmodel.model.get_submodule(layer.name).weight.shape
        for c, bits in enumerate(plan[layer.name].weight_bits):
            kernel = values[c].flatten()
            if bits == 1:
                assert set(kernel.tolist()) <= {-1, 1}
            else:
                assert kernel.abs().max() <= 2 ** (bits - 1) - 1
        with torch.no_grad():
            fake = qmodel.model.get_submodule(layer.name).weight
        expected = values.float() * scale.view(-1, *([1] * (values.dim() - 1)))
        assert torch.equal(fake, expected)


def test_apply_writes_tensors_without_rebuilding_modules_or_searching_again(monkeypatch):
    qmodel, data = tiny()
    modules = {name: id(m) for name, m in qmodel.model.named_modules()}
    bit_buffers = {name: q.weight_bits for name, q in qmodel.quantizers.items()}
    plans = [mixed_plan(qmodel.network, seed) for seed in range(4)]
    searches = []
    original = qz.mse_optimal_weight_scales
    monkeypatch.setattr(qz, "mse_optimal_weight_scales", lambda *a: searches.append(1) or original(*a))
    for plan in plans:
        count = len(searches)
        qmodel.apply(plan)
        assert len(searches) == count  # apply only writes bit-width tensors
        with torch.no_grad():
            qmodel(data)  # searches the clips of bit-widths not seen before
    assert 0 < len(searches) <= 8 * len(qmodel.quantizers)
    searches.clear()
    outputs = []
    for plan in plans:
        qmodel.apply(plan)
        assert {name: id(m) for name, m in qmodel.model.named_modules()} == modules
        for name, quantizer in qmodel.quantizers.items():
            assert quantizer.weight_bits is bit_buffers[name]
            assert quantizer.weight_bits.tolist() == list(plan[name].weight_bits)
            assert quantizer.act_bits == plan[name].act_bits
        with torch.no_grad():
            outputs.append(qmodel(data))
    assert searches == []  # every clip search is reused until the weights change
    assert not torch.equal(outputs[0], outputs[1])


def test_weight_update_invalidates_the_cached_quantized_weight():
    qmodel, data = tiny()
    with torch.no_grad():
        before = qmodel(data)
        qmodel.model.conv1.parametrizations.weight.original.mul_(-1)
        after = qmodel(data)
    assert not torch.equal(before, after)


def test_eight_bits_tracks_float_and_low_bits_do_not():
    qmodel, data = tiny()
    with torch.no_grad(), qmodel.float_mode():
        reference = qmodel(data)
    errors = {}
    for bits in (8, 4, 2):
        qmodel.apply(QuantPlan.uniform(qmodel.network, bits, bits))
        with torch.no_grad():
            errors[bits] = float((qmodel(data) - reference).abs().max() / reference.abs().max())
    assert errors[8] < 0.02 < errors[2]
    assert errors[8] < errors[4] < errors[2]


def test_float_mode_is_the_unwrapped_model():
    torch.manual_seed(0)
    model = TinyNet().eval()
    untouched = copy.deepcopy(model)
    qmodel = QuantizedModel(model, spec_from_torch(model, (2, 8, 8), "tiny"))
    x = torch.randn(4, 2, 8, 8)
    qmodel.calibrate([x])
    with torch.no_grad(), qmodel.float_mode():
        assert torch.equal(qmodel(x), untouched(x))
    with torch.no_grad():
        assert not torch.equal(qmodel(x), untouched(x))  # the quantizers are back on after the block


def test_activation_signedness_and_integer_view_reproduce_the_layer_output():
    qmodel, data = tiny()
    assert qmodel.activation_signed("conv1")  # raw (signed) input
    assert not qmodel.activation_signed("conv2") and not qmodel.activation_signed("fc")  # ReLU outputs
    qmodel.apply(mixed_plan(qmodel.network, seed=3, low=2))
    seen = {}
    layer = qmodel.model.conv2
    handles = [
        layer.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]), prepend=True),  # before quantizing
        layer.register_forward_hook(lambda m, a, y: seen.__setitem__("y", y)),
    ]
    with torch.no_grad():
        qmodel(data)
    for handle in handles:
        handle.remove()
    a_int = qmodel.integer_activations("conv2", seen["x"])
    bits = qmodel.quantizers["conv2"].act_bits
    assert a_int.dtype == torch.int32 and 0 <= int(a_int.min()) and int(a_int.max()) <= 2**bits - 1
    w_int, w_scale = qmodel.integer_weights("conv2")
    # Integer product, then one rescale per output channel, then the float bias: what the hardware computes.
    accumulated = F.conv2d(a_int.double(), w_int.double(), stride=2, padding=1)
    assert torch.equal(accumulated, accumulated.round())
    rescaled = accumulated * (qmodel.integer_activation_scale("conv2") * w_scale.double())[None, :, None, None]
    torch.testing.assert_close(rescaled.float() + layer.bias[None, :, None, None], seen["y"], rtol=1e-5, atol=1e-5)

    x_int = qmodel.integer_activations("conv1", seen["x"][:, :2] * 0 - 5.0)  # strongly negative input, signed
    assert int(x_int.min()) == -(2 ** (qmodel.quantizers["conv1"].act_bits - 1) - 1)


def test_activation_scales_minimise_mse_per_bit_width():
    values = torch.rand(4000) ** 3 * 5  # skewed, like ReLU outputs
    ratios = qz.clip_ratio_grid(40)
    table = qz.mse_optimal_activation_scales(values, signed=False, ratios=ratios)

    def mse(scale, bits):
        return float(((qz.integer_activation_values(values, scale, bits, False) * scale - values) ** 2).mean())

    for bits in (2, 4, 8):
        chosen = mse(float(table[bits - 1]), bits)
        assert chosen <= mse(float(values.max()) / (2**bits - 1), bits) + 1e-9  # no worse than no clipping
        for factor in (0.8, 1.25):
            assert chosen <= mse(float(table[bits - 1]) * factor, bits) + 1e-9
    signed = qz.mse_optimal_activation_scales(values - 2.5, signed=True, ratios=ratios)
    torch.testing.assert_close(signed[0], (values - 2.5).abs().mean())  # 1-bit signed: bipolar, scale mean |x|
    assert qz.integer_activation_values(torch.tensor([-0.1, 0.0, 3.0]), 1.0, 1, True).tolist() == [-1, 1, 1]


def test_straight_through_estimator_trains_the_float_weights():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    model = nn.Sequential(layer)
    qmodel = QuantizedModel(model, spec_from_torch(model, (1, 1, 6), "one"))
    x = torch.randn(8, 1, 6) + 1.0
    qmodel.calibrate([x])
    qmodel.apply(QuantPlan.uniform(qmodel.network, 2, 3))
    x.requires_grad_(True)
    qmodel(x).sum().backward()
    original = layer.parametrizations.weight.original
    quantizer = qmodel.quantizers["0"]
    scale = quantizer.act_scale
    x_q = qz.integer_activation_values(x.detach(), scale, 3, quantizer.act_signed) * scale
    # d(sum(W_q x_q))/dW passes through the weight quantizer unchanged (STE): the sum of the quantized inputs.
    torch.testing.assert_close(original.grad, x_q.sum((0, 1)).expand(3, 6))
    # The input gradient is W_q^T 1 inside the clip range and 0 outside it.
    low, high = qz.activation_levels(3, quantizer.act_signed)
    inside = (x.detach() >= low * scale) & (x.detach() <= high * scale)
    with torch.no_grad():
        expected = layer.weight.sum(0).expand_as(x) * inside
    torch.testing.assert_close(x.grad, expected)
    assert inside.any() and (~inside).any()
    before = original.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, original.detach())


def test_config_selects_layers_and_edge_policies():
    qmodel, data = tiny(QuantizerConfig(layers=("conv2", "fc"), first_layer="keep8"))
    assert qmodel.quantized_layers == ("conv2", "fc")
    assert not hasattr(qmodel.model.conv1, "parametrizations")
    plan = QuantPlan.uniform(qmodel.network, 2, 2)
    effective = qmodel.effective_plan(plan)
    assert effective["conv1"] == LayerPlan("conv1", (8,) * 6, 8)  # float layer: costed at 8/8
    assert effective["conv2"].weight_bits == (2,) * 8 and effective["fc"].act_bits == 2
    with pytest.raises(QuantizerError, match="'conv1' is not quantized"):
        qmodel.integer_weights("conv1")

    qmodel, _ = tiny(QuantizerConfig(first_layer="act8", last_layer="keep8"))
    effective = qmodel.effective_plan(plan)
    assert effective["conv1"] == LayerPlan("conv1", (2,) * 6, 8)
    assert effective["conv2"] == plan["conv2"]
    assert effective["fc"] == LayerPlan("fc", (8,) * 5, 8)
    qmodel.apply(plan)
    assert qmodel.plan == plan
    assert qmodel.quantizers["conv1"].act_bits == 8 and qmodel.quantizers["fc"].weight_bits.tolist() == [8] * 5


@pytest.mark.parametrize(
    "config, error, message",
    [
        (dict(first_layer="drop"), QuantizerError, "first_layer policy must be one of"),
        (dict(layers=("conv9",)), SpecError, "no layer 'conv9'"),
        (dict(clip_ratios=0), QuantizerError, "must be positive"),
    ],
)
def test_bad_config(config, error, message):
    with pytest.raises(error, match=message):
        tiny(QuantizerConfig(**config), calibrate=False)


def test_misuse_gives_clear_errors():
    qmodel, data = tiny(calibrate=False)
    with pytest.raises(QuantizerError, match="not calibrated; call calibrate"):
        qmodel(data)
    with pytest.raises(QuantizerError, match="already quantized"):
        QuantizedModel(qmodel.model, qmodel.network)
    with pytest.raises(QuantizerError, match="calibration saw no input"):
        qmodel.calibrate([])
    qmodel.calibrate([data])
    wrong = QuantPlan(tuple(LayerPlan(l.name, (4,) * (l.c_out + 1), 4) for l in qmodel.network))
    with pytest.raises(PlanError, match="layer 'conv1': plan has 7 kernel bit-widths but the layer has 6"):
        qmodel.apply(wrong)
    other = TinyNet()
    other.conv2 = nn.Identity()
    with pytest.raises(SpecError, match="layer 'conv2' of network 'tiny' is Identity"):
        QuantizedModel(other, qmodel.network)
    assert not hasattr(other.conv1, "parametrizations")  # nothing wrapped when the model does not fit
