"""The bundled task: scikit-learn's digits (1,797 8x8 images, shipped inside the wheel) and a small CNN.

Images are scaled to [0, 1], upsampled to 16x16 (bilinear) and normalised with fixed constants (``PIXEL_MEAN``,
``PIXEL_STD``), so the network input is signed. The split is fixed by ``SPLIT_SEED``: 450 held-out images, 150
calibration images, the remaining 1,197 for training (and fine-tuning). The held-out images are halved in their fixed
order: the first 225 are ``val`` (the search selects plans on them), the last 225 are ``test`` (reported accuracy). Every split is served distorted once,
with a fixed seed (random rotation, scale, shift and pixel noise; see ``distort``), which makes the held-out task
hard enough that 2-3-bit quantization visibly hurts; the training script distorts the clean training images
afresh every epoch.
"""
from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoq.common.errors import AutoQError
from autoq.host.tasks.datasets import Split, SplitSet

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

NAME = "digits"
INPUT_SHAPE: tuple[int, int, int] = (1, 16, 16)
NUM_CLASSES = 10
PIXEL_MEAN = 0.3
PIXEL_STD = 0.4
SPLIT_SEED = 2020
HELD_OUT_SIZE = 450
VAL_SIZE = 225
TEST_SIZE = HELD_OUT_SIZE - VAL_SIZE
CALIB_SIZE = 150
HELD_OUT_DISTORTION_SEED = 7
WEIGHTS_FILE = "digits_cnn.pt"
RECORD_FILE = "digits_cnn.json"
SPLIT_NAMES = ("train", "calib", "val", "test")

MAX_ROTATION_DEG = 15.0
MAX_SHIFT_PX = 2.0
SCALE_RANGE = (0.9, 1.1)
NOISE_STD = 0.1


class DigitsCNN(nn.Module):
    """Four 3x3 convs (32-64-64-128 kernels, 288 in all) with ReLU, max-pools after conv1 and conv3, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 16x16 -> 8x8
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 8x8 -> 4x4
        x = F.relu(self.conv4(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def weights_path() -> Traversable:
    """Path of the shipped state dict (package data)."""
    return resources.files("autoq.host") / "tasks" / "data" / WEIGHTS_FILE


def build_model(pretrained: bool = True) -> DigitsCNN:
    """The task's CNN in eval mode; ``pretrained`` loads the shipped weights (``python -m autoq.host.tasks.train_digits``)."""
    model = DigitsCNN()
    if pretrained:
        path = weights_path()
        if not path.is_file():
            raise AutoQError(f"shipped digits weights {path} are missing: run `python -m autoq.host.tasks.train_digits`")
        with resources.as_file(path) as file:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return model.eval()


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw digits pixels (N, 8, 8) in [0, 16] -> normalised network input (N, 1, 16, 16) float32."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=INPUT_SHAPE[1:], mode="bilinear", align_corners=False)
    return (x - PIXEL_MEAN) / PIXEL_STD


def distort(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift per image plus Gaussian pixel noise, drawn from ``generator``.

    Works on normalised inputs: the background maps to the normalised value of a zero pixel.
    """
    n = x.shape[0]
    size = x.shape[-1]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG) * math.pi / 180
    scale = uniform(*SCALE_RANGE)
    shift = uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX), uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[0] * 2 / size], 1), torch.stack([sin, cos, shift[1] * 2 / size], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = -PIXEL_MEAN / PIXEL_STD
    warped = F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background
    noise = torch.randn(x.shape, generator=generator) * (NOISE_STD / PIXEL_STD)
    return warped + noise


@lru_cache(maxsize=1)
def clean_splits() -> SplitSet:
    """The four fixed splits, undistorted (the training script distorts ``train`` afresh every epoch)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(digits.target)))
    x = preprocess(digits.images)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    parts = (order[:VAL_SIZE], order[VAL_SIZE:HELD_OUT_SIZE], order[HELD_OUT_SIZE : HELD_OUT_SIZE + CALIB_SIZE],
             order[HELD_OUT_SIZE + CALIB_SIZE :])
    val, test, calib, train = (Split(x[index], y[index]) for index in parts)
    return SplitSet(train=train, calib=calib, val=val, test=test)


@lru_cache(maxsize=1)
def load_splits() -> SplitSet:
    """The task's splits, each distorted once with a fixed seed (cached; treat the tensors as read-only).

    ``val`` and ``test`` are distorted together, as the one held-out block they are halves of."""
    generator = torch.Generator().manual_seed(HELD_OUT_DISTORTION_SEED)
    clean = clean_splits()
    held_out = distort(torch.cat([clean.val.x, clean.test.x]), generator)
    calib, train = (Split(distort(s.x, generator), s.y) for s in (clean.calib, clean.train))
    val, test = Split(held_out[:VAL_SIZE], clean.val.y), Split(held_out[VAL_SIZE:], clean.test.y)
    return SplitSet(train=train, calib=calib, val=val, test=test)


def load_split(name: str) -> Split:
    """One split by name: ``train`` (fine-tuning), ``calib`` (activation calibration), ``val`` (held out, plan
    selection) or ``test`` (held out, reporting)."""
    if name not in SPLIT_NAMES:
        raise AutoQError(f"digits has no split {name!r}; choose one of {SPLIT_NAMES}")
    return getattr(load_splits(), name)
