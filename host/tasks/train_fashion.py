"""Train the Fashion-MNIST CNN and write its weights and training record (seeded, deterministic, CPU, one thread;
a few minutes).

    python -m autoq.host.tasks.train_fashion [-o fashion_cnn.pt] [--epochs N] [--steps N] [--seed S]
    python -m autoq.host.tasks.train_fashion --bundled      # from a checkout: regenerate host/tasks/data/

Trains on the shipped subset's train split (22,000 images) whatever else is installed, so that a retrain anywhere
reproduces the shipped weights bit for bit (``autoq.host.tasks.training``: one thread, deterministic kernels,
seeded order and flips). The record (same stem, ``.json``) holds the settings and the float accuracy and the
accuracy at uniform W/A = 8/8, 4/4, 3/3, 2/2 (activations calibrated, no fine-tune) on the val and the test split,
which are the same images with the shipped subset and with the full set. It never writes into an installed
package: ``--bundled`` replaces the shipped files of the checkout in the current folder.
"""
from __future__ import annotations

from autoq.host.tasks import fashion
from autoq.host.tasks.training import TrainConfig, TrainingScript, fit
from autoq.host.tasks.training import main as _main

#: two epochs of the shipped train split: about 3-4 minutes on one thread of a shared 2-core machine
DEFAULT_CONFIG = TrainConfig(epochs=2, batch_size=64, lr=2e-3, weight_decay=1e-4, seed=0)


def train(config: TrainConfig = DEFAULT_CONFIG) -> fashion.FashionCNN:
    """Adam with a one-cycle schedule on the shipped train split, a random half of each batch mirrored."""
    model = fit(lambda: fashion.build_model(pretrained=False), fashion.load_shipped_splits().train, config, fashion.hflip)
    assert isinstance(model, fashion.FashionCNN)
    return model


SCRIPT = TrainingScript(
    task_name=fashion.NAME, model_name="FashionCNN", weights_file=fashion.WEIGHTS_FILE, default_config=DEFAULT_CONFIG,
    train=train,
    record_fields=lambda: {
        "input_shape": list(fashion.INPUT_SHAPE),
        "trained_on": f"shipped subset train split ({fashion.SHIPPED_TRAIN_SIZE} images)",
        "split": {"seed": fashion.SPLIT_SEED, "val": fashion.VAL_SIZE, "test": fashion.TEST_SIZE, "calib": fashion.CALIB_SIZE},
    },
)


def main(argv: list[str] | None = None) -> int:
    return _main(SCRIPT, argv, "python -m autoq.host.tasks.train_fashion", __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
