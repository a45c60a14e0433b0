"""Tasks: a model, its network spec and its data splits. ``load_task()`` gives the bundled digits task by default;
``load_task("fashion")`` the Fashion-MNIST task.

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
    ``trained`` is False for a built-in architecture named without weights (random weights); ``description`` says
    where the data came from."""

    name: str
    model: "nn.Module | onnx.ModelProto"
    network: "NetworkSpec"
    input_shape: tuple[int, int, int]
    train: "Split"
    calib: "Split"
    val: "Split"
    test: "Split"
    trained: bool = True
    description: str = ""


def load_task(model_ref: str = "digits", data_ref: str | None = None, arch: str | None = None) -> Task:
    """A bundled task (``digits``, ``fashion``: its model with its data), or a user model (``load_model``
    reference, ``arch`` for ``.pt`` state dicts) with the digits data or given data: ``fashion-mnist[:DIR]``
    (Fashion-MNIST's fixed splits, from the IDX files in DIR) or a user dataset (``load_dataset`` path, split with a
    fixed seed)."""
    from pathlib import Path

    from autoq.common.errors import AutoQError, SpecError
    from autoq.host.models.resolve import load_model, spec_for
    from autoq.host.tasks import digits, fashion
    from autoq.host.tasks.datasets import DatasetError, data_needed, load_dataset, split_dataset

    is_fashion_data, fashion_dir = fashion.parse_data_ref(data_ref) if data_ref is not None else (False, None)
    bundled_own_data = data_ref is None or (model_ref == fashion.NAME and is_fashion_data)
    if model_ref == fashion.NAME and bundled_own_data:
        data = fashion.load_data(fashion_dir)  # first: a bad data folder fails before the model loads
        loaded = load_model(model_ref, arch=arch)
        splits, data_name, description = data.splits, fashion.DATA_NAME, data.source
    elif data_ref is None:
        loaded = load_model(model_ref, arch=arch)
        if model_ref != digits.NAME and tuple(loaded.input_shape) != digits.INPUT_SHAPE:
            raise DatasetError(data_needed(model_ref, tuple(loaded.input_shape), loaded.spec.layers[-1].c_out))
        splits, data_name, description = digits.load_splits(), digits.NAME, "bundled scikit-learn digits"
    elif is_fashion_data:
        data = fashion.load_data(fashion_dir)
        splits, data_name, description = data.splits, fashion.DATA_NAME, data.source
    else:
        splits, data_name = split_dataset(load_dataset(data_ref)), Path(data_ref).name
        description = f"{data_ref} (seeded split)"
    data_shape = tuple(int(v) for v in splits.test.x.shape[1:])
    if not bundled_own_data:
        own_shape = model_ref not in (digits.NAME, fashion.NAME)
        try:
            loaded = load_model(model_ref, arch=arch, input_shape=data_shape if own_shape else None)
        except SpecError as exc:  # the forward pass failed on the data's input size: say what the model takes
            try:
                needs = spec_for(model_ref, arch=arch)
            except AutoQError:
                raise exc from None
            raise DatasetError(f"data {data_name!r} has inputs {data_shape}, which model {model_ref!r} cannot take "
                               f"({exc}); " + data_needed(model_ref, needs.input_shape, needs.layers[-1].c_out)) from None
    model = loaded.module if loaded.module is not None else loaded.graph
    assert model is not None  # a LoadedModel holds its torch module or its ONNX graph
    if tuple(loaded.input_shape) != data_shape:
        raise DatasetError(f"model {model_ref!r} takes inputs {tuple(loaded.input_shape)} but data {data_name!r} has {data_shape}")
    classes = loaded.spec.layers[-1].c_out
    top_label = int(max(int(s.y.max()) for s in splits))
    if top_label >= classes:
        raise DatasetError(f"data {data_name!r} has label {top_label} but model {model_ref!r} has {classes} outputs")
    name = loaded.spec.name if bundled_own_data else f"{loaded.spec.name}@{data_name}"
    return Task(name, model, loaded.spec, (*loaded.input_shape,), splits.train, splits.calib, splits.val,
                splits.test, loaded.trained, description)
