"""Turn what a user names as a model into a torch module and its ``NetworkSpec``.

A reference is one of
- a built-in architecture (``resnet18``... see ``zoo.ARCHITECTURES``): random weights (``trained`` is False),
  ImageNet input;
- ``digits`` or ``fashion``: a bundled task's trained model (``autoq.host.tasks.digits``, ``autoq.host.tasks.fashion``);
- a path to an ``.onnx`` file: the spec comes from the ONNX graph (kept as ``graph``); there is no torch module;
- a path to a ``.pt``/``.pth`` state dict plus ``arch``: a built-in name or an importable factory
  ``package.module:callable`` (called with no arguments; its module may define ``INPUT_SHAPE``). Loading is strict:
  a torchvision state dict (``resnet18-f37072fd.pth``...) fits the built-in architecture of the same name, anything
  else fails naming the missing and unexpected keys and the mismatched shapes.

``spec_for`` memoises specs in-process, so cost studies can ask for the same network again and again cheaply.
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    import onnx

from autoq.common.errors import AutoQError
from autoq.common.network import NetworkSpec
from autoq.host.models import zoo
from autoq.host.network.onnx_import import spec_from_onnx
from autoq.host.network.trace import check_input_shape, spec_from_torch

BUNDLED_TASKS = ("fashion", "digits")
STATE_DICT_SUFFIXES = (".pt", ".pth")
_STATE_DICT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN = 6  # how many offending keys an error message lists


class ModelError(AutoQError, ValueError):
    """A model reference cannot be resolved or loaded."""


class LoadedModel(NamedTuple):
    module: nn.Module | None
    spec: NetworkSpec
    input_shape: tuple[int, int, int]
    trained: bool = True  # False for a built-in architecture named without a state dict (random weights)
    graph: "onnx.ModelProto | None" = None  # the ONNX model, for a .onnx reference

    def require_module(self) -> nn.Module:
        """The torch module, or a clear error for models known only by their graph (``.onnx``)."""
        if self.module is None:
            raise ModelError(f"model {self.spec.name!r} has no torch module (loaded from ONNX, shapes only); "
                             "give a .pt state dict with --arch, a built-in name or 'digits' for this command")
        return self.module


def known_models() -> tuple[str, ...]:
    return (*zoo.ARCHITECTURES, *BUNDLED_TASKS)


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def _counted(what: str, items: Sequence[str]) -> str:
    return f"{what} ({len(items)}): {_listing(items)}"


def _bundled(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """A bundled task's trained model (module ``autoq.host.tasks.<name>``) and its input shape."""
    try:
        task = importlib.import_module(f"autoq.host.tasks.{name}")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("autoq.host.tasks"):
            raise
        raise ModelError(f"the bundled {name!r} task is not part of this install (autoq.host.tasks.{name} is missing)") from None
    return task.build_model(pretrained=True), tuple(task.INPUT_SHAPE)


def _factory(arch: str) -> tuple[nn.Module, tuple[int, int, int] | None]:
    """Instantiate ``package.module:callable``; its module's ``INPUT_SHAPE``, if any, is the default input."""
    module_name, _, attr_path = arch.partition(":")
    if not module_name or not attr_path:
        raise ModelError(f"unknown architecture {arch!r}: use a built-in name ({', '.join(zoo.ARCHITECTURES)}) "
                         "or an importable factory 'package.module:callable'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"architecture {arch!r}: cannot import {module_name!r}: {exc}") from None
    owner = target
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ModelError(f"architecture {arch!r}: {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise ModelError(f"architecture {arch!r}: {attr_path!r} is not callable")
    try:
        model = target()
    except Exception as exc:
        raise ModelError(f"architecture {arch!r}: calling {attr_path}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"architecture {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    shape = getattr(owner, "INPUT_SHAPE", None)
    return model, (tuple(shape) if shape is not None else None)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save``d state dict (also inside a ``{'state_dict': ...}`` checkpoint); no pickled code runs."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable state dict ({first_line}); save one with "
                         "torch.save(model.state_dict(), path)") from None
    if isinstance(data, Mapping):
        for key in _STATE_DICT_WRAPPER_KEYS:
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ModelError(f"{path}: expected a state dict (a mapping of names to tensors), "
                         f"found {type(data).__name__}; save one with torch.save(model.state_dict(), path)")
    state = dict(data)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model``, or raise a ModelError naming the missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    if missing:
        problems.append(_counted("missing keys", missing))
    if unexpected:
        problems.append(_counted("unexpected keys", unexpected))
    if misshaped:
        problems.append(_counted("shape mismatches (file != model)", misshaped))
    if problems:
        raise ModelError(f"{what} does not fit: " + "; ".join(problems))
    model.load_state_dict(state)


def _classifier_outputs(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Number of classes the state dict's last conv/linear layer produces (for built-in archs)."""
    last = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    weight = state.get(f"{last}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def _from_state_dict(path: Path, arch: str | None) -> tuple[nn.Module, tuple[int, int, int] | None]:
    if not arch:
        raise ModelError(f"{path} holds only weights: name its architecture with --arch "
                         f"(one of {', '.join(zoo.ARCHITECTURES)}, or package.module:callable)")
    state = read_state_dict(path)
    if arch in zoo.ARCHITECTURES:
        model = zoo.build(arch)
        classes = _classifier_outputs(model, state)
        if classes is not None and classes != 1000:
            model = zoo.build(arch, num_classes=classes)
        shape: tuple[int, int, int] | None = zoo.IMAGENET_INPUT_SHAPE
    else:
        model, shape = _factory(arch)
    load_state_dict_strict(model, state, f"state dict {path} for architecture {arch!r}")
    return model.eval(), shape


def _as_path(ref: str) -> Path | None:
    path = Path(ref).expanduser()
    looks_like_path = path.suffix in (".onnx", *STATE_DICT_SUFFIXES) or "/" in ref or path.is_file()
    return path if looks_like_path else None


def load_model(ref: str, arch: str | None = None, input_shape: Sequence[int] | None = None,
               batch: int = 1) -> LoadedModel:
    """Resolve ``ref`` (see the module docstring). ``input_shape`` (C, H, W) overrides the model's default input;
    ``batch`` is the batch size of the traced forward pass (the spec itself is per sample)."""
    shape = check_input_shape(input_shape) if input_shape is not None else None
    path = _as_path(ref)
    trained = True
    default_shape: tuple[int, int, int] | None  # a state dict's architecture may not say
    if path is None:
        if arch:
            raise ModelError(f"--arch applies only to .pt/.pth state dicts, not to {ref!r}")
        if ref in zoo.ARCHITECTURES:
            module, default_shape, name = zoo.build(ref), zoo.IMAGENET_INPUT_SHAPE, ref
            trained = False
        elif ref in BUNDLED_TASKS:
            (module, default_shape), name = _bundled(ref), ref
        else:
            raise ModelError(f"unknown model {ref!r}: give a built-in name ({', '.join(known_models())}) "
                             "or a path to an .onnx file or a .pt/.pth state dict")
    elif not path.is_file():
        raise ModelError(f"model file not found: {path}")
    elif path.suffix == ".onnx":
        if arch:
            raise ModelError(f"--arch applies only to .pt/.pth state dicts, not to {path}")
        import onnx

        spec = spec_from_onnx(path)  # checks the file, naming what is wrong
        graph = onnx.load(str(path))  # also reads weights kept beside it (model.onnx.data)
        if shape is not None and shape != spec.input_shape:
            raise ModelError(f"{path} takes input {spec.input_shape}, not {shape}: an ONNX graph fixes its input size")
        return LoadedModel(None, spec, spec.input_shape, True, graph)
    elif path.suffix in STATE_DICT_SUFFIXES:
        (module, default_shape), name = _from_state_dict(path, arch), path.stem
    else:
        raise ModelError(f"{path}: unsupported model file type {path.suffix!r}; expected .onnx, .pt or .pth")
    shape = shape or default_shape
    if shape is None:
        raise ModelError(f"input shape of {ref!r} unknown: give it (C, H, W), e.g. --input-shape 3,32,32, or define "
                         "INPUT_SHAPE in the architecture's module")
    return LoadedModel(module, spec_from_torch(module, shape, name, batch), shape, trained)


def _file_stamp(ref: str) -> tuple[int, int] | None:
    """Identifies a file's version, so that a cached spec of a rewritten file is not served."""
    path = _as_path(ref)
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_spec(ref: str, arch: str | None, input_shape: tuple[int, ...] | None, batch: int,
                 stamp: tuple[int, int] | None) -> NetworkSpec:
    if ref in zoo.ARCHITECTURES and arch is None and _as_path(ref) is None:
        with torch.device("meta"):  # shapes only: no weight initialisation, no arithmetic in the trace
            module = zoo.build(ref)
        return spec_from_torch(module, input_shape or zoo.IMAGENET_INPUT_SHAPE, ref, batch)
    return load_model(ref, arch, input_shape, batch).spec


def spec_for(ref: str, batch: int = 1, arch: str | None = None,
             input_shape: Sequence[int] | None = None) -> NetworkSpec:
    """The spec of ``ref`` (as ``load_model``), memoised in-process: repeated calls cost no torch trace, and
    built-in architectures are traced on the ``meta`` device (no weights are allocated)."""
    shape = tuple(input_shape) if input_shape is not None else None
    return _cached_spec(ref, arch, shape, batch, _file_stamp(ref))
