"""The bundled digits task: model shape, fixed splits, shipped weights and their training record, reproducible training."""
import json

import pytest
import torch
from sklearn.datasets import load_digits

from autoq.common.errors import AutoQError
from autoq.common.plan import QuantPlan
from autoq.host.evaluate import Evaluator
from autoq.host.network.trace import spec_from_torch
from autoq.host.tasks import digits, load_task, train_digits
from autoq.host.tasks.train_digits import TrainConfig, train


def test_model_has_enough_conv_layers_and_kernels():
    assert digits.INPUT_SHAPE == (1, 16, 16)
    network = spec_from_torch(digits.build_model(pretrained=False), digits.INPUT_SHAPE, "digits")
    convs = [layer for layer in network if layer.kind == "conv"]
    assert len(convs) >= 4
    assert sum(layer.c_out for layer in network) >= 250
    assert network[-1].kind == "linear" and network[-1].c_out == digits.NUM_CLASSES


def test_splits_are_fixed_disjoint_and_cover_the_dataset():
    clean = digits.clean_splits()
    assert [len(s) for s in clean] == [
        1797 - digits.HELD_OUT_SIZE - digits.CALIB_SIZE, digits.CALIB_SIZE, digits.VAL_SIZE, digits.TEST_SIZE
    ]
    assert digits.VAL_SIZE + digits.TEST_SIZE == digits.HELD_OUT_SIZE
    everything = digits.preprocess(load_digits().images)
    probe = torch.randn(everything[0].numel(), dtype=torch.float64)

    def fingerprints(x):
        return sorted((x.double().flatten(1) @ probe).tolist())

    assert fingerprints(torch.cat([s.x for s in clean])) == pytest.approx(fingerprints(everything))
    served = digits.load_splits()
    again = digits.load_splits.__wrapped__()  # recomputed, not the cached copy
    for a, b, c in zip(served, again, clean):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.y, c.y)
        assert a.x.shape == c.x.shape and not torch.equal(a.x, c.x)  # distorted once
    assert digits.load_split("test") is served.test and digits.load_split("val") is served.val
    with pytest.raises(AutoQError, match="no split 'holdout'"):
        digits.load_split("holdout")


def test_val_and_test_halve_the_held_out_block_the_weights_were_checked_on():
    """val + test are the original 450 held-out images in their order, distorted as one block: the shipped weights
    (trained on ``train`` only) and the old single-split figures stay valid, and no image is in both halves."""
    clean, served = digits.clean_splits(), digits.load_splits()
    order = torch.from_numpy(__import__("numpy").random.default_rng(digits.SPLIT_SEED).permutation(1797))
    held_out = order[: digits.HELD_OUT_SIZE]
    assert torch.equal(torch.cat([clean.val.y, clean.test.y]), torch.as_tensor(load_digits().target)[held_out])
    block = digits.distort(torch.cat([clean.val.x, clean.test.x]), torch.Generator().manual_seed(digits.HELD_OUT_DISTORTION_SEED))
    assert torch.equal(torch.cat([served.val.x, served.test.x]), block)
    assert len(set(held_out[: digits.VAL_SIZE].tolist()) & set(held_out[digits.VAL_SIZE :].tolist())) == 0


def test_distortion_is_seeded():
    x = digits.clean_splits().calib.x[:8]
    first = digits.distort(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, digits.distort(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, digits.distort(x, torch.Generator().manual_seed(4)))


def test_shipped_weights_reproduce_their_training_record():
    record = json.loads((digits.weights_path().parent / digits.RECORD_FILE).read_text())
    assert record["split"] == {"seed": digits.SPLIT_SEED, "val": digits.VAL_SIZE, "test": digits.TEST_SIZE,
                               "calib": digits.CALIB_SIZE}
    accuracy = record["test_accuracy"]
    assert accuracy["float"] > 0.9
    assert abs(accuracy["8/8"] - accuracy["float"]) <= 0.01  # 8 bits matches float
    assert accuracy["2/2"] < accuracy["3/3"] < accuracy["float"] - 0.005  # low bits visibly hurt
    assert accuracy["2/2"] < accuracy["float"] - 0.05
    task = load_task()
    evaluator = Evaluator.for_task(task)
    for split in ("val", "test"):
        figures = record[f"{split}_accuracy"]
        assert evaluator.full_precision_accuracy(split=split) == pytest.approx(figures["float"], abs=1e-4)
        assert evaluator.accuracy(QuantPlan.uniform(task.network, 3, 3), split=split) == pytest.approx(figures["3/3"], abs=1e-4)


def test_training_is_reproducible_whatever_the_callers_thread_count():
    config = TrainConfig(epochs=1, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = train(config).state_dict()
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()  # settings restored
        torch.set_num_threads(1)
        second = train(config).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], digits.build_model().conv1.weight)


def test_training_script_writes_where_told_never_into_the_package(tmp_path, monkeypatch, capsys):
    shipped = (digits.weights_path().read_bytes(), (digits.weights_path().parent / digits.RECORD_FILE).read_bytes())
    monkeypatch.chdir(tmp_path)
    assert train_digits.main(["--epochs", "1", "--seed", "3"]) == 0  # default: ./digits_cnn.pt
    assert train_digits.main(["--epochs", "1", "--seed", "3", "-o", "again.pt"]) == 0
    first = torch.load(tmp_path / digits.WEIGHTS_FILE, weights_only=True)
    second = torch.load(tmp_path / "again.pt", weights_only=True)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)  # bit for bit
    record = json.loads((tmp_path / "again.json").read_text())
    assert record["train_config"]["epochs"] == 1 and record["torch_threads"] == 1
    assert (digits.weights_path().read_bytes(), (digits.weights_path().parent / digits.RECORD_FILE).read_bytes()) == shipped
    capsys.readouterr()
    with pytest.raises(SystemExit):  # not a checkout: --bundled refuses before training
        train_digits.main(["--bundled"])
    assert "run it from the repository root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_digits.main(["-o", str(tmp_path / "absent" / "w.pt")])
    assert f"folder {tmp_path / 'absent'} does not exist" in capsys.readouterr().err


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(digits, "weights_path", lambda: tmp_path / "absent.pt")
    with pytest.raises(AutoQError, match="absent.pt are missing: run `python -m autoq.host.tasks.train_digits`"):
        digits.build_model()
