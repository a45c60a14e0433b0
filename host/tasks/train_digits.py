"""Train the bundled digits CNN and write its weights and training record (seeded, CPU, about a minute on 2 cores).

    python -m autoq.host.tasks.train_digits [--out-dir DIR] [--epochs N] [--seed S]

Writes ``digits_cnn.pt`` (state dict) and ``digits_cnn.json`` (settings; float accuracy and accuracy at uniform
W/A = 8/8, 4/4, 3/3, 2/2 after activation calibration, no fine-tune, on the val and on the test split) into the
package data folder. Training uses the train split only.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from autoq.common.fileio import atomic_write_bytes, atomic_write_text
from autoq.host.tasks import digits

RECORDED_UNIFORM_BITS = ((8, 8), (4, 4), (3, 3), (2, 2))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


def train(config: TrainConfig) -> digits.DigitsCNN:
    """Adam with a one-cycle schedule on freshly distorted training images every epoch."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_split = digits.clean_splits().train
    model = digits.build_model(pretrained=False).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train_split) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps_per_epoch)
    for _epoch in range(config.epochs):
        order = torch.randperm(len(train_split), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            x = digits.distort(train_split.x[batch], generator)
            loss = F.cross_entropy(model(x), train_split.y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def quantized_accuracies(model: digits.DigitsCNN) -> dict[str, dict[str, float]]:
    """Accuracy on the val and the test split at the recorded uniform bit-widths (calibrated on calib, no fine-tune)."""
    from autoq.common.plan import QuantPlan
    from autoq.host.evaluate import Evaluator
    from autoq.host.tasks import load_task

    task = load_task("digits")._replace(model=model)
    evaluator = Evaluator.for_task(task)
    return {
        split: {
            f"{w}/{a}": evaluator.accuracy(QuantPlan.uniform(task.network, w, a), split=split) for w, a in RECORDED_UNIFORM_BITS
        } | {"float": evaluator.full_precision_accuracy(split=split)}
        for split in ("val", "test")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="default: the package data folder")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = parser.parse_args(argv)
    out_dir = args.out_dir or Path(str(digits.weights_path())).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=args.epochs, seed=args.seed)

    started, started_cpu = time.perf_counter(), time.process_time()
    model = train(config)
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(out_dir / digits.WEIGHTS_FILE, buffer.getvalue())

    record = {
        "model": "DigitsCNN",
        "input_shape": list(digits.INPUT_SHAPE),
        "train_config": asdict(config),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "split": {"seed": digits.SPLIT_SEED, "val": digits.VAL_SIZE, "test": digits.TEST_SIZE, "calib": digits.CALIB_SIZE},
        **{f"{split}_accuracy": {k: round(v, 4) for k, v in figures.items()}
           for split, figures in quantized_accuracies(model).items()},
    }
    atomic_write_text(out_dir / digits.RECORD_FILE, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
