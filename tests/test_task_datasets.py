"""User datasets (ImageFolder-style folders and .npz files), seeded splits, and load_task with user data/models."""
import numpy as np
import pytest
import torch
from PIL import Image

from autoq.host.models.resolve import ModelError
from autoq.host.tasks import digits, load_task
from autoq.host.tasks.datasets import DatasetError, load_dataset, split_dataset


def write_folder(root, sizes=((5, 5), (5, 5)), mode="L", count=3):
    for label, size in enumerate(sizes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.full((*size, 3) if mode == "RGB" else size, 40 * label + i, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"{i}.png")
    return root


def test_image_folder_gray_and_rgb(tmp_path):
    data = load_dataset(write_folder(tmp_path / "gray"))
    assert data.x.shape == (6, 1, 5, 5) and data.x.dtype == torch.float32
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(data.x[4, 0, 0, 0]) == pytest.approx(41 / 255)
    rgb = load_dataset(write_folder(tmp_path / "rgb", mode="RGB"))
    assert rgb.x.shape == (6, 3, 5, 5)


def test_npz_shapes_and_scaling(tmp_path):
    np.savez(tmp_path / "hw.npz", x=np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3), y=np.array([0, 1, 2, 1]))
    data = load_dataset(tmp_path / "hw.npz")
    assert data.x.shape == (4, 1, 3, 3) and float(data.x.max()) == pytest.approx(35 / 255)
    np.savez(tmp_path / "chw.npz", x=np.ones((5, 2, 4, 4), dtype=np.float64) * 3.5, y=np.arange(5))
    data = load_dataset(tmp_path / "chw.npz")
    assert data.x.shape == (5, 2, 4, 4) and data.x.dtype == torch.float32 and float(data.x[0, 0, 0, 0]) == 3.5
    assert data.y.dtype == torch.int64


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x=np.zeros((3, 4, 4))), r"npz lacks array\(s\) \['y'\]"),
        (dict(x=np.zeros((3, 4, 4)), y=np.zeros(2, dtype=int)), "3 inputs but 2 labels"),
        (dict(x=np.zeros((3, 4)), y=np.zeros(3, dtype=int)), "inputs must have shape"),
        (dict(x=np.zeros((3, 4, 4)), y=np.zeros(3)), "labels must be integers"),
        (dict(x=np.zeros((3, 4, 4)), y=-np.ones(3, dtype=int)), "labels must be >= 0"),
        (dict(x=np.zeros((0, 4, 4)), y=np.zeros(0, dtype=int)), "the dataset is empty"),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_bad_paths_and_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="hold no images"):
        load_dataset(tmp_path / "hollow")
    with pytest.raises(DatasetError, match="differs from the first image"):
        load_dataset(write_folder(tmp_path / "mixed", sizes=((5, 5), (6, 6))))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(tmp_path / "junk.npz")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(DatasetError, match="expected a directory of class subfolders or an .npz"):
        load_dataset(tmp_path / "data.csv")
    broken = write_folder(tmp_path / "broken")
    (broken / "class_0" / "9.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="9.png: cannot read image"):
        load_dataset(broken)


def test_split_is_seeded_disjoint_and_complete():
    data = load_dataset_from_arrays(np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1), np.arange(40) % 3)
    parts = split_dataset(data, seed=5)
    again = split_dataset(data, seed=5)
    assert [len(p) for p in parts] == [20, 4, 6, 10]  # train, calib, val, test
    assert all(torch.equal(a.x, b.x) for a, b in zip(parts, again))
    seen = torch.cat([p.x.flatten() for p in parts]).sort().values
    assert torch.equal(seen, data.x.flatten())
    assert torch.equal(split_dataset(data, seed=5, val_fraction=0.3).test.x, parts.test.x)  # val never moves test
    assert [len(p) for p in split_dataset(data.subset(slice(0, 4)))] == [1, 1, 1, 1]
    with pytest.raises(DatasetError, match="at least 4 samples"):
        split_dataset(data.subset(slice(0, 3)))


def load_dataset_from_arrays(x, y):
    from autoq.host.tasks.datasets import make_split

    return make_split(x, y, "arrays")


def test_load_task_with_user_model_and_data(tmp_path):
    splits = digits.clean_splits()
    np.savez(tmp_path / "digits.npz", x=splits.test.x.numpy(), y=splits.test.y.numpy())
    torch.save(digits.build_model().state_dict(), tmp_path / "cnn.pt")
    task = load_task(str(tmp_path / "cnn.pt"), str(tmp_path / "digits.npz"), arch="autoq.host.tasks.digits:DigitsCNN")
    assert task.network.names == ("conv1", "conv2", "conv3", "conv4", "fc")
    assert sum(len(s) for s in (task.train, task.calib, task.val, task.test)) == len(splits.test)
    assert task.input_shape == digits.INPUT_SHAPE and task.name == "cnn@digits.npz"

    bundled = load_task()
    assert bundled.name == "digits" and len(bundled.test) == digits.TEST_SIZE


def test_load_task_rejects_mismatched_data(tmp_path):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((6, 3, 16, 16), np.float32), y=np.zeros(6, dtype=int))
    with pytest.raises(DatasetError, match=r"takes inputs \(1, 16, 16\) but data .* has \(3, 16, 16\)"):
        load_task("digits", str(tmp_path / "rgb.npz"))
    np.savez(tmp_path / "many.npz", x=np.zeros((6, 1, 16, 16), np.float32), y=np.arange(6) * 3)
    with pytest.raises(DatasetError, match="has label 15 but model 'digits' has 10 outputs"):
        load_task("digits", str(tmp_path / "many.npz"))
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_task("nope")
