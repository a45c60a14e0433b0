"""Tasks: a model, its network spec and its data splits. ``load_task()`` gives the bundled digits task by default.

Imports happen inside ``load_task`` so that importing this package stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from autoq.common.network import NetworkSpec
    from autoq.host.tasks.datasets import Split


class Task(NamedTuple):
    """A torch model (or an ONNX model's graph) with its spec (layers named by qualified module name) and
    train / calib / val / test splits: the search selects plans on ``val`` and reports accuracy on ``test``.
    ``trained`` is False for a built-in architecture named without weights (random weights)."""

    name: str
    model: "nn.Module | onnx.ModelProto"
    network: "NetworkSpec"
    input_shape: tuple[int, int, int]
    train: "Split"
    calib: "Split"
    val: "Split"
    test: "Split"
    trained: bool = True


def load_task(model_ref: str = "digits", data_ref: str | None = None, arch: str | None = None) -> Task:
    """The bundled digits task, or a user model (``load_model`` reference, ``arch`` for ``.pt`` state dicts)
    with the digits data or a user dataset (``load_dataset`` path, split with a fixed seed)."""
    from pathlib import Path

    from autoq.common.errors import AutoQError, SpecError
    from autoq.host.models.resolve import load_model, spec_for
    from autoq.host.tasks import digits
    from autoq.host.tasks.datasets import DatasetError, data_needed, load_dataset, split_dataset

    if data_ref is None:
        loaded = load_model(model_ref, arch=arch)
        if model_ref != digits.NAME and tuple(loaded.input_shape) != digits.INPUT_SHAPE:
            raise DatasetError(data_needed(model_ref, tuple(loaded.input_shape), loaded.spec.layers[-1].c_out))
        splits, data_name = digits.load_splits(), digits.NAME
    else:
        splits, data_name = split_dataset(load_dataset(data_ref)), Path(data_ref).name
    data_shape = tuple(int(v) for v in splits.test.x.shape[1:])
    if data_ref is not None:
        try:
            loaded = load_model(model_ref, arch=arch, input_shape=data_shape if model_ref != digits.NAME else None)
        except SpecError as exc:  # the forward pass failed on the data's input size: say what the model takes
            try:
                needs = spec_for(model_ref, arch=arch)
            except AutoQError:
                raise exc from None
            raise DatasetError(f"data {data_name!r} has inputs {data_shape}, which model {model_ref!r} cannot take "
                               f"({exc}); " + data_needed(model_ref, needs.input_shape, needs.layers[-1].c_out)) from None
    model = loaded.module if loaded.module is not None else loaded.graph
    if tuple(loaded.input_shape) != data_shape:
        raise DatasetError(f"model {model_ref!r} takes inputs {tuple(loaded.input_shape)} but data {data_name!r} has {data_shape}")
    classes = loaded.spec.layers[-1].c_out
    top_label = int(max(int(s.y.max()) for s in splits))
    if top_label >= classes:
        raise DatasetError(f"data {data_name!r} has label {top_label} but model {model_ref!r} has {classes} outputs")
    name = loaded.spec.name if data_ref is None else f"{loaded.spec.name}@{data_name}"
    return Task(name, model, loaded.spec, tuple(loaded.input_shape), splits.train, splits.calib, splits.val,
                splits.test, loaded.trained)
