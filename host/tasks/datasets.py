"""Labelled image data as tensors: the ``Split`` type, user datasets (ImageFolder-style folder or ``.npz``), seeded splits.

Images become float32 tensors ``(N, C, H, W)``: 8-bit pixels are scaled to [0, 1], float arrays are kept as they are;
labels become int64 ``(N,)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from autoq.common.errors import AutoQError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class DatasetError(AutoQError, ValueError):
    """A dataset is missing, empty or malformed."""


class Split(NamedTuple):
    """Inputs ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64 of one split. Treat as read-only."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor | slice) -> "Split":
        return Split(self.x[index], self.y[index])


class SplitSet(NamedTuple):
    """The splits a task needs: ``train`` (fine-tuning), ``calib`` (activation clip calibration), ``val`` (held out; the
    search selects plans on it) and ``test`` (held out; accuracies are reported on it, never used for selection)."""

    train: Split
    calib: Split
    val: Split
    test: Split


def make_split(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, source: str) -> Split:
    """Validate and convert arrays to a ``Split``: x (N, H, W) or (N, C, H, W), y (N,) integer labels."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DatasetError(f"{source}: inputs must have shape (N, H, W) or (N, C, H, W), got {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"{source}: labels must be a 1-D array, got shape {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"{source}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DatasetError(f"{source}: the dataset is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise DatasetError(f"{source}: labels must be >= 0, got {int(y.min())}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating):
        x = x.astype(np.float32)
    else:
        raise DatasetError(f"{source}: inputs must be numeric, got dtype {x.dtype}")
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def _load_npz(path: Path) -> Split:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in ("x", "y") if key not in arrays.files]
            if missing:
                raise DatasetError(f"{path}: npz lacks array(s) {missing} (has {sorted(arrays.files)}); expected 'x' and 'y'")
            return make_split(arrays["x"], arrays["y"], str(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None


def _load_image_folder(root: Path) -> Split:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class subfolders (expected ROOT/<class>/<image>.png)")
    images: list[np.ndarray] = []
    labels: list[int] = []
    mode: str | None = None
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            try:
                with Image.open(file) as image:
                    if mode is None:
                        mode = "L" if image.mode in ("1", "L", "I;16", "I") else "RGB"
                    pixels = np.asarray(image.convert(mode))
            except (OSError, UnidentifiedImageError) as exc:
                raise DatasetError(f"{file}: cannot read image ({exc})") from None
            if images and pixels.shape != images[0].shape:
                raise DatasetError(f"{file}: image size {pixels.shape} differs from the first image's {images[0].shape}")
            images.append(pixels)
            labels.append(label)
    if not images:
        raise DatasetError(f"{root}: class folders {classes[:5]} hold no images ({', '.join(IMAGE_SUFFIXES)})")
    x = np.stack(images)
    if x.ndim == 4:  # (N, H, W, C) -> (N, C, H, W)
        x = x.transpose(0, 3, 1, 2)
    return make_split(x, np.asarray(labels), str(root))


def data_needed(model: str, input_shape: tuple[int, ...], classes: int) -> str:
    """What to pass as data for ``model``: its input shape and the two layouts ``load_dataset`` reads."""
    c, h, w = input_shape
    return (f"model {model!r} needs data: it takes inputs of shape {input_shape} (C, H, W) and has {classes} outputs; "
            f"pass --data DIR, an ImageFolder-style directory (DIR/<class>/<image>.png|.jpg|.bmp, {w}x{h} "
            f"{'RGB' if c == 3 else 'grayscale' if c == 1 else f'{c}-channel'} images, class folders sorted by name "
            f"= labels 0, 1, ...), or --data FILE.npz with arrays x of shape (N, {c}, {h}, {w}) (float32, fed as it is, or "
            "uint8 pixels, scaled to [0, 1]) and y of shape (N,) (integer labels)")


def load_dataset(path: str | Path) -> Split:
    """Load a user dataset: an ImageFolder-style directory (class subfolders of images) or an ``.npz`` with ``x``, ``y``."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    if path.is_dir():
        return _load_image_folder(path)
    if path.suffix == ".npz":
        return _load_npz(path)
    raise DatasetError(f"dataset {path}: expected a directory of class subfolders or an .npz file")


def split_dataset(data: Split, seed: int = 0, test_fraction: float = 0.25, calib_fraction: float = 0.1,
                  val_fraction: float = 0.15) -> SplitSet:
    """Seeded random split into test / val / calib / train (in that order of a seeded permutation, so ``test`` is
    the same for any ``val_fraction``); each part gets at least one sample."""
    n = len(data)
    if n < 4:
        raise DatasetError(f"a dataset needs at least 4 samples to split into train/calib/val/test, got {n}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_test = min(max(1, round(n * test_fraction)), n - 3)
    n_val = min(max(1, round(n * val_fraction)), n - n_test - 2)
    n_calib = min(max(1, round(n * calib_fraction)), n - n_test - n_val - 1)
    held_out = n_test + n_val
    return SplitSet(
        train=data.subset(order[held_out + n_calib :]),
        calib=data.subset(order[held_out : held_out + n_calib]),
        val=data.subset(order[n_test:held_out]),
        test=data.subset(order[:n_test]),
    )
