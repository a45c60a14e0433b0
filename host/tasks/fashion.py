"""The harder bundled task: Fashion-MNIST (Zalando Research, MIT licence; 70,000 28x28 grayscale clothing images,
10 classes) and a CNN sized for the bit-serial overlay.

Splits (fixed by ``SPLIT_SEED``; every split in a seeded random order, so any prefix is a uniform sample):
``val`` and ``test`` are the two halves (5,000 each) of the official 10,000-image test split; ``calib`` is 1,000
images of the official training split; ``train`` is the rest of it (59,000) with the full set, or the shipped
22,000 of them without. With the full set, ``holdout`` (``FashionData.holdout``) is the 37,000 official training
images outside the shipped 22,000 and ``calib``: the shipped weights never saw them, so a plan scored without
fine-tuning can be measured on 7.4 times the images of ``test`` (a fine-tune on the full set's ``train`` trains
on them). The data comes from the full IDX set when one is named (``--data fashion-mnist:DIR``) or
when Debian's ``dataset-fashion-mnist`` package has installed it at ``DEBIAN_DIR``, else from the subset shipped
in the package (``data/fashion_*.npz``, official indices kept beside the pixels; licence in
``data/fashion_LICENSE.txt``). Both give the same val, test and calib images; ``FashionData.source`` says which
one was read. Pixels are scaled to [0, 1] and normalised with ``PIXEL_MEAN``/``PIXEL_STD``.

The CNN (``FashionCNN``) was made for the retired HLS preset (8x8x256, Dm = 8 rows of output channels per tile):
every layer has 128 or 256 output channels (16-32 whole row tiles that a plan can narrow), ``K = c_in * kh * kw``
of conv2 and conv3 is 1152 / 2304 (9 / 18 words of the RTL preset's Dk = 128). On that preset most of its latency
scaled with weight bits; on the RTL preset, whose weight chunks fetch a column tile's activations once for up to
32 resident row tiles, about half of its 4/4 latency does (``autoq.host.tasks.costshare`` prints the share). The
shipped weights come from ``python -m autoq.host.tasks.train_fashion``.
"""
from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoq.common.errors import AutoQError
from autoq.host.tasks.datasets import DatasetError, Split, SplitSet
from autoq.host.tasks.idx import read_idx

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

NAME = "fashion"
DATA_NAME = "fashion-mnist"
INPUT_SHAPE: tuple[int, int, int] = (1, 28, 28)
NUM_CLASSES = 10
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PIXEL_MEAN = 0.286
PIXEL_STD = 0.353
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {  # official file stems; read with or without .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
OFFICIAL_SIZES = {"train": 60_000, "test": 10_000}
SPLIT_SEED = 2017
VAL_SIZE = 5_000
TEST_SIZE = OFFICIAL_SIZES["test"] - VAL_SIZE
CALIB_SIZE = 1_000
SHIPPED_TRAIN_SIZE = 22_000
HOLDOUT_SIZE = OFFICIAL_SIZES["train"] - CALIB_SIZE - SHIPPED_TRAIN_SIZE
SHIPPED_TRAIN_FILES = 2  # files under 5 MiB each
WEIGHTS_FILE = "fashion_cnn.pt"
RECORD_FILE = "fashion_cnn.json"
LICENSE_FILE = "fashion_LICENSE.txt"
SPLIT_NAMES = ("train", "calib", "val", "test")


class FashionCNN(nn.Module):
    """conv1 4x4/2 (1->128, 28->13), conv2 3x3 (128->256, 13->11), 2x2 max-pool (->5), conv3 3x3 (256->256, 5->3),
    ReLU after each conv, global average pool, linear 256->10: 41.3 M MACs, 640 kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 128, 4, stride=2)
        self.conv2 = nn.Conv2d(128, 256, 3)
        self.conv3 = nn.Conv2d(256, 256, 3)
        self.fc = nn.Linear(256, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def data_dir() -> Traversable:
    """The package data folder holding the shipped subset, its licence and the weights."""
    return resources.files("autoq.host") / "tasks" / "data"


def weights_path() -> Traversable:
    """Path of the shipped state dict (package data)."""
    return data_dir() / WEIGHTS_FILE


def build_model(pretrained: bool = True) -> FashionCNN:
    """The task's CNN in eval mode; ``pretrained`` loads the shipped weights (``python -m autoq.host.tasks.train_fashion``)."""
    model = FashionCNN()
    if pretrained:
        path = weights_path()
        if not path.is_file():
            raise AutoQError(f"shipped fashion weights {path} are missing: run `python -m autoq.host.tasks.train_fashion`")
        with resources.as_file(path) as file:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return model.eval()


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 pixels (N, 28, 28) -> normalised network input (N, 1, 28, 28) float32."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))[:, None].to(torch.float32) / 255.0
    return (x - PIXEL_MEAN) / PIXEL_STD


def hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left-right (drawn from ``generator``): the training augmentation."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# ------------------------------------------------------------------------------------------------- the splits

def split_indices() -> dict[str, tuple[str, np.ndarray]]:
    """Each split's official source (``train``/``test``) and the indices it takes from it, in split order.
    ``train`` here is the shipped part of the train split; with the full set it runs on to the end of the order
    (``full_train``), and ``holdout`` is that part's rest."""
    test_order = np.random.default_rng(SPLIT_SEED).permutation(OFFICIAL_SIZES["test"])
    train_order = np.random.default_rng(SPLIT_SEED + 1).permutation(OFFICIAL_SIZES["train"])
    return {
        "val": ("test", test_order[:VAL_SIZE]),
        "test": ("test", test_order[VAL_SIZE:]),
        "calib": ("train", train_order[:CALIB_SIZE]),
        "train": ("train", train_order[CALIB_SIZE : CALIB_SIZE + SHIPPED_TRAIN_SIZE]),
        "full_train": ("train", train_order[CALIB_SIZE:]),
        "holdout": ("train", train_order[CALIB_SIZE + SHIPPED_TRAIN_SIZE :]),
    }


def subset_files() -> dict[str, list[str]]:
    """The shipped subset's files per split (package data)."""
    return {"val": ["fashion_val.npz"], "test": ["fashion_test.npz"], "calib": ["fashion_calib.npz"],
            "train": [f"fashion_train_{i}.npz" for i in range(SHIPPED_TRAIN_FILES)]}


def _idx_path(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"Fashion-MNIST folder {root} lacks {stem}(.gz); it needs "
                       f"{', '.join(s for pair in IDX_FILES.values() for s in pair)} (plain or .gz)")


def has_full_set(root: Path) -> bool:
    return all((root / name).is_file() or (root / (name + ".gz")).is_file() for pair in IDX_FILES.values() for name in pair)


def read_full_set(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official ``train`` and ``test`` images (N, 28, 28) uint8 and labels (N,) of the IDX set in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST folder {root} does not exist")
    arrays = {}
    for part, (images_stem, labels_stem) in IDX_FILES.items():
        images, labels = read_idx(_idx_path(root, images_stem)), read_idx(_idx_path(root, labels_stem))
        size = OFFICIAL_SIZES[part]
        if images.shape != (size, 28, 28) or labels.shape != (size,) or images.dtype != np.uint8:
            raise DatasetError(f"{root}: official {part} split must be {size} uint8 images 28x28 with {size} labels, "
                               f"got images {images.shape} {images.dtype} and labels {labels.shape}")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DatasetError(f"{root}: {part} labels must be in 0..{NUM_CLASSES - 1}")
        arrays[part] = (images, labels.astype(np.int64))
    return arrays


def read_subset_file(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, official indices) of one shipped subset file."""
    path = data_dir() / name
    if not path.is_file():
        raise AutoQError(f"shipped Fashion-MNIST subset file {path} is missing: rebuild it with "
                         "`python -m autoq.host.tasks.fashion --build-subset DIR` from a checkout")
    with resources.as_file(path) as file, np.load(file, allow_pickle=False) as arrays:
        return arrays["x"], arrays["y"].astype(np.int64), arrays["index"].astype(np.int64)


class FashionData(NamedTuple):
    splits: SplitSet
    source: str  # what was read, for the task description
    full: bool
    holdout: Split | None = None  # the full set only (module docstring)


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(preprocess(images), torch.from_numpy(labels.astype(np.int64)))


def resolve_root(path: str | Path | None) -> Path | None:
    """The IDX folder to read: ``path`` when given (it must hold the set), else ``DEBIAN_DIR`` when it holds the
    set, else None (the shipped subset)."""
    if path is not None:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DatasetError(f"Fashion-MNIST folder {root} does not exist")
        return root
    return DEBIAN_DIR if has_full_set(DEBIAN_DIR) else None


@lru_cache(maxsize=2)
def _load(root: Path | None) -> FashionData:
    indices = split_indices()
    if root is None:
        parts = {}
        for split, names in subset_files().items():
            read = [read_subset_file(name) for name in names]
            x, y, index = (np.concatenate(column) for column in zip(*read))
            if not np.array_equal(index, indices[split][1]):
                raise AutoQError(f"shipped Fashion-MNIST {split} files {names} do not hold the images of split seed "
                                 f"{SPLIT_SEED}: rebuild them (`python -m autoq.host.tasks.fashion --build-subset DIR`)")
            parts[split] = _split(x, y)
        source = (f"shipped Fashion-MNIST subset ({SHIPPED_TRAIN_SIZE:,} train of the official 60,000; install "
                  f"Debian's dataset-fashion-mnist or pass --data {DATA_NAME}:DIR for all of them)")
        return FashionData(SplitSet(**parts), source, False)
    full = read_full_set(root)
    parts = {split: _split(full[official][0][index], full[official][1][index])
             for split, (official, index) in indices.items() if split not in ("train", "holdout")}
    parts["train"] = parts.pop("full_train")
    holdout = parts["train"].subset(slice(SHIPPED_TRAIN_SIZE, None))  # a view: the full train's tail is the holdout
    return FashionData(SplitSet(**parts), f"full Fashion-MNIST IDX set at {root}", True, holdout)


def load_data(path: str | Path | None = None) -> FashionData:
    """The splits and where they came from (see the module docstring; cached; treat the tensors as read-only)."""
    root = resolve_root(path)
    return _load(root.resolve() if root is not None else None)


def load_splits(path: str | Path | None = None) -> SplitSet:
    return load_data(path).splits


def load_shipped_splits() -> SplitSet:
    """The shipped subset's splits, whatever is installed (what the shipped weights were trained on)."""
    return _load(None).splits


def parse_data_ref(ref: str) -> tuple[bool, str | None]:
    """Whether ``--data ref`` names this dataset (``fashion-mnist`` or ``fashion-mnist:DIR``), and DIR if given."""
    name, sep, path = ref.partition(":")
    if name != DATA_NAME:
        return False, None
    if sep and not path:
        raise DatasetError(f"--data {ref!r}: give the folder of the IDX files after the colon, or drop the colon")
    return True, path or None


def load_split(name: str, path: str | Path | None = None) -> Split:
    if name not in SPLIT_NAMES:
        raise AutoQError(f"fashion has no split {name!r}; choose one of {SPLIT_NAMES}")
    return getattr(load_splits(path), name)


# --------------------------------------------------------------------------------- building the shipped subset

def build_subset(root: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the shipped subset files (uint8 pixels, labels, official indices; compressed .npz) from the full IDX set
    in ``root`` into ``out_dir``; returns the files written."""
    from autoq.common.fileio import atomic_write_bytes

    full = read_full_set(root)
    out = Path(out_dir)
    written = []
    for split, names in subset_files().items():
        official, index = split_indices()[split]
        for name, part in zip(names, np.array_split(index, len(names))):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, x=full[official][0][part], y=full[official][1][part].astype(np.uint8),
                                index=part.astype(np.uint16))
            atomic_write_bytes(out / name, buffer.getvalue())
            written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    from autoq.host.tasks.training import BUNDLED_DIR

    parser = argparse.ArgumentParser(prog="python -m autoq.host.tasks.fashion",
                                     description="rebuild the shipped Fashion-MNIST subset of a checkout")
    parser.add_argument("--build-subset", metavar="DIR", required=True, help=f"folder of the full IDX set (e.g. {DEBIAN_DIR})")
    args = parser.parse_args(argv)
    if not (Path("setup.py").is_file() and BUNDLED_DIR.is_dir()):
        parser.error(f"run it from the repository root (no setup.py and {BUNDLED_DIR} here)")
    for path in build_subset(args.build_subset, BUNDLED_DIR):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
