"""Train the bundled digits CNN and write its weights and training record (seeded, deterministic, CPU, one thread;
about two minutes).

    python -m autoq.host.tasks.train_digits [-o digits_cnn.pt] [--epochs N] [--steps N] [--seed S]
    python -m autoq.host.tasks.train_digits --bundled      # from a checkout: regenerate host/tasks/data/

Writes the state dict to ``-o`` (default ``digits_cnn.pt`` in the current folder) and its record next to it (same
stem, ``.json``: settings; float accuracy and accuracy at uniform W/A = 8/8, 4/4, 3/3, 2/2 after activation
calibration, no fine-tune, on the val and on the test split). It never writes into an installed package:
``--bundled`` replaces the shipped files of the checkout in the current folder. Training uses the train split only,
on one thread with deterministic kernels and a seeded data order, so a retrain reproduces the weights bit for bit
(the loop is ``autoq.host.tasks.training``'s).
"""
from __future__ import annotations

from pathlib import Path

from autoq.host.tasks import digits
from autoq.host.tasks.training import RECORDED_UNIFORM_BITS, TrainConfig, TrainingScript, deterministic_torch, fit
from autoq.host.tasks.training import bundled_weights_file as _bundled_weights_file
from autoq.host.tasks.training import main as _main
from autoq.host.tasks.training import quantized_accuracies as _quantized_accuracies

__all__ = ["RECORDED_UNIFORM_BITS", "TrainConfig", "deterministic_torch", "train", "quantized_accuracies",
           "bundled_weights_file", "main"]


def train(config: TrainConfig = TrainConfig()) -> digits.DigitsCNN:
    """Adam with a one-cycle schedule on freshly distorted training images every epoch (``deterministic_torch``)."""
    model = fit(lambda: digits.build_model(pretrained=False), digits.clean_splits().train, config, digits.distort)
    assert isinstance(model, digits.DigitsCNN)
    return model


def quantized_accuracies(model: digits.DigitsCNN) -> dict[str, dict[str, float]]:
    """Accuracy on the val and the test split at the recorded uniform bit-widths (calibrated on calib, no fine-tune)."""
    return _quantized_accuracies(digits.NAME, model)


def bundled_weights_file(cwd: Path | None = None) -> Path:
    """The shipped weights of the checkout in ``cwd`` (refused elsewhere: never the installed package's copy)."""
    return _bundled_weights_file(digits.WEIGHTS_FILE, cwd)


SCRIPT = TrainingScript(
    task_name=digits.NAME, model_name="DigitsCNN", weights_file=digits.WEIGHTS_FILE, default_config=TrainConfig(),
    train=train,
    record_fields=lambda: {
        "input_shape": list(digits.INPUT_SHAPE),
        "split": {"seed": digits.SPLIT_SEED, "val": digits.VAL_SIZE, "test": digits.TEST_SIZE, "calib": digits.CALIB_SIZE},
    },
)


def main(argv: list[str] | None = None) -> int:
    return _main(SCRIPT, argv, "python -m autoq.host.tasks.train_digits", __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
