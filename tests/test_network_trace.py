"""spec_from_torch: layer kinds, names, sizes and the clear errors for models the spec cannot describe."""
import pytest
import torch
from torch import nn

from autoq.common.errors import SpecError
from autoq.common.network import LayerSpec
from autoq.host.network.trace import spec_from_torch


class EdgeNet(nn.Module):
    """Grouped, depthwise (multiplier 2), rectangular, 'same'-padded, dilated convs and a per-position linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, (3, 5), stride=(2, 1), padding=(1, 2))
        self.grouped = nn.Conv2d(12, 24, 3, padding=1, groups=3)
        self.dw = nn.Conv2d(24, 48, 3, stride=2, padding=1, groups=24, bias=False)
        self.same = nn.Conv2d(48, 16, 4, padding="same", bias=False)
        self.dil = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.tok = nn.Linear(16, 32)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 9, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dil(self.same(self.dw(self.grouped(self.stem(x)))))
        return self.head(self.tok(x.permute(0, 2, 3, 1)))


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_edge_net_spec():
    spec = spec_from_torch(EdgeNet(), (3, 16, 18), "edge")
    assert spec.names == ("stem", "grouped", "dw", "same", "dil", "tok", "head.1")
    assert spec["stem"] == LayerSpec("stem", "conv", 3, 12, (3, 5), (2, 1), (1, 2), 1, (16, 18), (8, 18))
    assert spec["grouped"].kind == "conv" and spec["grouped"].groups == 3
    assert spec["dw"] == LayerSpec("dw", "depthwise", 24, 48, 3, 2, 1, 24, (8, 18), (4, 9))
    assert spec["same"].padding == (1, 1) and spec["same"].out_hw == (4, 9)
    assert spec["dil"].padding == (2, 2) and spec["dil"].out_hw == (4, 9)
    assert spec["tok"] == LayerSpec("tok", "linear", 16, 32, in_hw=(36, 1), out_hw=(36, 1))
    assert spec["tok"].macs() == 36 * 16 * 32
    assert spec["head.1"] == LayerSpec("head.1", "linear", 1152, 10)
    assert spec.input_shape == (3, 16, 18)


def test_batch_does_not_change_spec_and_training_modes_are_restored():
    model = EdgeNet().train()
    model.head.eval()  # a mix of modes, as with frozen parts
    assert spec_from_torch(model, (3, 16, 18), "edge", batch=3) == spec_from_torch(model, (3, 16, 18), "edge")
    assert model.training and model.stem.training and not model.head.training and not model.head[1].training


class KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(input=x)


def test_layer_called_with_keyword_input():
    assert spec_from_torch(KeywordCall(), (3, 9, 9), "kw")["conv"].out_hw == (4, 4)


def test_meta_device_model_traces_without_arithmetic():
    with torch.device("meta"):
        model = EdgeNet()
    assert spec_from_torch(model, (3, 16, 18), "edge") == spec_from_torch(EdgeNet(), (3, 16, 18), "edge")


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_layer_called_twice_is_an_error():
    with pytest.raises(SpecError, match=r"called more than once.*conv \(2 calls\)"):
        spec_from_torch(Twice(), (4, 8, 8), "twice")


def test_layer_never_called_is_an_error():
    with pytest.raises(SpecError, match="never called in the forward pass: unused"):
        spec_from_torch(Unused(), (3, 4, 4), "n")


def test_unsupported_weight_layers_are_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ConvTranspose2d(4, 4, 2))
    with pytest.raises(SpecError, match=r"cannot describe.*1 \(ConvTranspose2d\)"):
        spec_from_torch(model, (3, 4, 4), "n")


def test_forward_failure_and_bad_arguments():
    with pytest.raises(SpecError, match=r"forward pass of model 'n' on an input of shape \(1, 5, 8, 8\) failed"):
        spec_from_torch(nn.Sequential(nn.Conv2d(3, 4, 1)), (5, 8, 8), "n")
    with pytest.raises(SpecError, match="three positive ints"):
        spec_from_torch(nn.Sequential(nn.Conv2d(3, 4, 1)), (3, 8), "n")
    with pytest.raises(SpecError, match="batch must be a positive int"):
        spec_from_torch(nn.Sequential(nn.Conv2d(3, 4, 1)), (3, 8, 8), "n", batch=0)
    with pytest.raises(SpecError, match="no Conv2d or Linear"):
        spec_from_torch(nn.Sequential(nn.ReLU()), (3, 8, 8), "n")
