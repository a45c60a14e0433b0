import dataclasses
import json
import pickle

import pytest

from autoq.common.errors import PlanError, SpecError
from autoq.common.network import LayerSpec, NetworkSpec
from autoq.common.plan import LayerPlan, QuantPlan


def tiny_net() -> NetworkSpec:
    return NetworkSpec(
        "tiny",
        (
            LayerSpec("conv1", "conv", 3, 8, 3, 1, 1, 1, (8, 8), (8, 8)),
            LayerSpec("dw", "depthwise", 8, 8, 3, 2, 1, 8, (8, 8), (4, 4)),
            LayerSpec("fc", "linear", 128, 10),
        ),
        (3, 8, 8),
    )


def test_layer_counts():
    net = tiny_net()
    assert net["conv1"].weights == 8 * 3 * 9
    assert net["conv1"].macs(2) == 8 * 3 * 9 * 64 * 2
    assert net["dw"].gemm(1) == (8, 1, 9, 16)
    assert net.total_weights == 216 + 72 + 1280


def test_spec_round_trip_and_hash_is_structural():
    net = tiny_net()
    again = NetworkSpec.from_dict(json.loads(json.dumps(net.to_dict())))
    assert again == net and again.hash == net.hash
    renamed = NetworkSpec("other-name", net.layers, net.input_shape)
    assert renamed.hash == net.hash
    wider = NetworkSpec("tiny", (LayerSpec("conv1", "conv", 3, 16, 3, 1, 1, 1, (8, 8), (8, 8)),), (3, 8, 8))
    assert wider.hash != net.hash


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="pool"), "kind must be one of"),
        (dict(groups=3), "must divide"),
        (dict(c_out=0), "positive int"),
    ],
)
def test_bad_layer_spec(kwargs, message):
    base = dict(name="x", kind="conv", c_in=10, c_out=10)
    with pytest.raises(SpecError, match=message):
        LayerSpec(**{**base, **kwargs})


def test_duplicate_layer_names_rejected():
    layer = LayerSpec("a", "linear", 4, 4)
    with pytest.raises(SpecError, match="duplicate layer name 'a'"):
        NetworkSpec("n", (layer, layer), (4, 1, 1))


def test_plan_constructors_and_summary():
    net = tiny_net()
    plan = QuantPlan.uniform(net, 4, 8)
    assert plan.average_weight_bits(net) == 4.0
    assert plan.size_bits(net) == 4 * net.total_weights
    mixed = plan.replace("conv1", LayerPlan("conv1", (2,) * 4 + (8,) * 4, 8))
    assert mixed.average_weight_bits(net) == pytest.approx((216 * 5 + (72 + 1280) * 4) / net.total_weights)
    assert mixed.hash != plan.hash
    lw = QuantPlan.layerwise(net, [(8, 8), (4, 4), (2, 8)])
    assert [l.weight_bits[0] for l in lw.layers] == [8, 4, 2]


def test_layer_plan_is_a_frozen_dataclass():
    layer = LayerPlan(name="fc", weight_bits=[4, 2], act_bits=3)
    assert layer.weight_bits == (4, 2) and layer.bits_bytes == bytes([4, 2])
    assert dataclasses.replace(layer, act_bits=5) == LayerPlan("fc", (4, 2), 5)
    assert pickle.loads(pickle.dumps(layer)) == layer and hash(layer) == hash(LayerPlan("fc", (4, 2), 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.act_bits = 5  # type: ignore[misc]
    with pytest.raises(PlanError, match=r"layer 'fc': act_bits = 9 is out of range"):
        dataclasses.replace(layer, act_bits=9)


def test_plan_json_round_trip(tmp_path):
    net = tiny_net()
    plan = QuantPlan.layerwise(net, [(8, 8), (4, 4), (2, 8)])
    path = tmp_path / "plan.json"
    plan.save(path)
    assert QuantPlan.load(path) == plan


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"layers": 3}', "'layers' list"),
        ('{"layers": [{"name": "a"}]}', "must have 'name', 'act_bits' and 'weight_bits'"),
        ('{"layers": [{"name": "a", "act_bits": 9, "weight_bits": [1]}]}', r"act_bits = 9 is out of range \[1, 8\]"),
        ('{"layers": [{"name": "a", "act_bits": 2, "weight_bits": [0]}]}', r"weight_bits\[0\] = 0 is out of range"),
        ('{"layers": [{"name": "a", "act_bits": 2, "weight_bits": [1.5]}]}', "must be an integer"),
    ],
)
def test_malformed_plan_json(text, message):
    with pytest.raises(PlanError, match=message):
        QuantPlan.from_json(text)


def test_plan_hash_detects_edits():
    net = tiny_net()
    data = QuantPlan.uniform(net, 4, 4).to_dict()
    data["layers"][0]["act_bits"] = 5
    with pytest.raises(PlanError, match="does not match its contents"):
        QuantPlan.from_dict(data)


def test_plan_mismatch_names_the_problem():
    net = tiny_net()
    plan = QuantPlan.uniform(net, 4, 4)
    short = QuantPlan(plan.layers[:2])
    with pytest.raises(PlanError, match=r"missing layers \['fc'\]"):
        short.check(net)
    wrong_len = plan.replace("fc", LayerPlan("fc", (4,) * 3, 4))
    with pytest.raises(PlanError, match="3 kernel bit-widths but the layer has 10 output channels"):
        wrong_len.check(net)
    with pytest.raises(PlanError, match="unknown layers"):
        QuantPlan.for_network(net, [LayerPlan("zzz", (1,), 1)])


def test_a_plan_is_validated_against_a_network_once(monkeypatch):
    net = tiny_net()
    plan = QuantPlan.uniform(net, 4, 4)  # validated when built for the network
    validations = []
    names = NetworkSpec.names
    monkeypatch.setattr(NetworkSpec, "names", property(lambda self: validations.append(self.name) or names.fget(self)))
    plan.check(net)
    plan.check(net)
    assert validations == []  # the fit was remembered: no second validation
    QuantPlan.from_json(plan.to_json()).check(net)
    assert validations == ["tiny"]  # a plan read back from JSON is validated at that boundary, once
    other = NetworkSpec("other", net.layers[:-1], net.input_shape)
    with pytest.raises(PlanError, match=r"unknown layers \['fc'\]"):
        plan.check(other)  # another network: validated again
    copy = pickle.loads(pickle.dumps(plan))
    assert copy == plan and "_fits" not in copy.__dict__  # the memo is not part of the plan
