"""Built-in architectures: published MAC figures, layer counts, torchvision names, MobileNetV2 order vs HAQ's table."""
import numpy as np
import pytest
import torch

from autoq.calibration.measurements import lookup_table_path
from autoq.common.errors import AutoQError
from autoq.host.models import zoo
from autoq.host.models.resolve import spec_for

HAQ_TABLE = lookup_table_path("haq-mobilenet-v2")  # bundled in autoq.calibration (data/haq/)

# Published multiply-accumulate counts at 224x224, batch 1 (torchvision's model docs / the papers).
PUBLISHED_MACS = {
    "resnet18": 1.82e9,
    "resnet50": 4.09e9,
    "mobilenet_v1": 569e6,
    "mobilenet_v2": 300e6,
    "squeezenet1_0": 0.82e9,
    "squeezenet1_1": 0.35e9,
}
# (layers, conv, depthwise, linear)
LAYER_COUNTS = {
    "resnet18": (21, 20, 0, 1),
    "resnet50": (54, 53, 0, 1),
    "mobilenet_v1": (28, 14, 13, 1),
    "mobilenet_v2": (53, 35, 17, 1),
    "squeezenet1_0": (26, 26, 0, 0),
    "squeezenet1_1": (26, 26, 0, 0),
}


@pytest.mark.parametrize("name", sorted(zoo.ARCHITECTURES))
def test_macs_match_published_figures(name):
    spec = spec_for(name)
    assert spec.input_shape == (3, 224, 224)
    assert spec.total_macs() == pytest.approx(PUBLISHED_MACS[name], rel=0.02)
    kinds = [layer.kind for layer in spec]
    assert (len(spec), kinds.count("conv"), kinds.count("depthwise"), kinds.count("linear")) == LAYER_COUNTS[name]


def test_published_weight_counts():
    # parameter counts without biases/BN: ResNet-18 11.69 M params, ResNet-50 25.56 M, MobileNetV2 3.5 M
    assert spec_for("resnet18").total_weights == pytest.approx(11.68e6, rel=0.01)
    assert spec_for("resnet50").total_weights == pytest.approx(25.5e6, rel=0.01)
    assert spec_for("mobilenet_v2").total_weights == pytest.approx(3.47e6, rel=0.01)


def test_torchvision_layer_names():
    r18 = spec_for("resnet18").names
    assert r18[:3] == ("conv1", "layer1.0.conv1", "layer1.0.conv2")
    assert r18[5:8] == ("layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0") and r18[-1] == "fc"
    assert spec_for("resnet50").names[1:5] == ("layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.0.downsample.0")
    mv2 = spec_for("mobilenet_v2").names
    assert mv2[:6] == ("features.0.0", "features.1.conv.0.0", "features.1.conv.1",
                       "features.2.conv.0.0", "features.2.conv.1.0", "features.2.conv.2")
    assert mv2[-2:] == ("features.18.0", "classifier.1")
    sq = spec_for("squeezenet1_1").names
    assert sq[:4] == ("features.0", "features.3.squeeze", "features.3.expand1x1", "features.3.expand3x3")
    assert sq[-1] == "classifier.1"


def test_mobilenet_v2_order_matches_haq_latency_table():
    """HAQ's measured table (53 x wbits x abits) indexes MobileNetV2 layers in execution order; same shapes must cost
    the same, depthwise rows must not depend on weight bits and the classifier must be weight-fetch bound."""
    assert HAQ_TABLE.is_file(), f"HAQ's table is missing: {HAQ_TABLE}"
    table = np.load(HAQ_TABLE)
    spec = spec_for("mobilenet_v2")
    assert table.shape == (len(spec), 8, 8)
    groups: dict[tuple, list[int]] = {}
    for i, layer in enumerate(spec):
        key = (layer.kind, layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.in_hw, layer.out_hw)
        groups.setdefault(key, []).append(i)
    repeated = [idx for idx in groups.values() if len(idx) > 1]
    assert len(repeated) >= 10
    for idx in repeated:
        assert all(np.array_equal(table[idx[0]], table[j]) for j in idx[1:]), [spec[j].name for j in idx]
    weight_sensitivity = table[:, 7, 3] / table[:, 0, 3]  # 8-bit vs 1-bit weights at 4-bit activations
    for i, layer in enumerate(spec):
        if layer.kind == "depthwise":
            assert weight_sensitivity[i] < 1.3, layer.name
    assert table[-1, 7, 7] / table[-1, 7, 0] == pytest.approx(1.0, abs=0.01)  # classifier: activation bits don't matter
    assert weight_sensitivity[-1] == pytest.approx(8.0, rel=0.01)


def test_build_classes_and_forward():
    model = zoo.build("squeezenet1_1", num_classes=7)
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    assert spec_for("mobilenet_v1").names[1:3] == ("features.1.0", "features.1.3")


def test_unknown_architecture_lists_known_names():
    with pytest.raises(AutoQError, match="unknown architecture 'resnet19'.*resnet18.*squeezenet1_1"):
        zoo.build("resnet19")
    with pytest.raises(AutoQError, match="num_classes"):
        zoo.build("resnet18", num_classes=0)
