"""Tasks: a model, its network spec and its data splits. ``load_task()`` gives the bundled digits task by default.

Imports happen inside ``load_task`` so that importing this package stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from torch import nn

    from autoq.common.network import NetworkSpec
    from autoq.host.tasks.datasets import Split


class Task(NamedTuple):
    """A torch model with its spec (layers named by qualified module name) and train / calib / val / test splits:
    the search selects plans on ``val`` and reports accuracy on ``test``."""

    name: str
    model: "nn.Module"
    network: "NetworkSpec"
    input_shape: tuple[int, int, int]
    train: "Split"
    calib: "Split"
    val: "Split"
    test: "Split"


def load_task(model_ref: str = "digits", data_ref: str | None = None, arch: str | None = None) -> Task:
    """The bundled digits task, or a user model (``load_model`` reference, ``arch`` for ``.pt`` state dicts)
    with the digits data or a user dataset (``load_dataset`` path, split with a fixed seed)."""
    from pathlib import Path

    from autoq.host.models.resolve import load_model
    from autoq.host.tasks import digits
    from autoq.host.tasks.datasets import DatasetError, load_dataset, split_dataset

    if data_ref is None:
        splits, data_name = digits.load_splits(), digits.NAME
    else:
        splits, data_name = split_dataset(load_dataset(data_ref)), Path(data_ref).name
    data_shape = tuple(int(v) for v in splits.test.x.shape[1:])
    loaded = load_model(model_ref, arch=arch, input_shape=data_shape if model_ref != digits.NAME else None)
    model = loaded.require_module()
    if tuple(loaded.input_shape) != data_shape:
        raise DatasetError(f"model {model_ref!r} takes inputs {tuple(loaded.input_shape)} but data {data_name!r} has {data_shape}")
    classes = loaded.spec.layers[-1].c_out
    top_label = int(max(int(s.y.max()) for s in splits))
    if top_label >= classes:
        raise DatasetError(f"data {data_name!r} has label {top_label} but model {model_ref!r} has {classes} outputs")
    name = loaded.spec.name if data_ref is None else f"{loaded.spec.name}@{data_name}"
    return Task(name, model, loaded.spec, tuple(loaded.input_shape), splits.train, splits.calib, splits.val,
                splits.test)
