"""Train the bundled digits CNN and write its weights and training record (seeded, deterministic, CPU, one thread;
about two minutes).

    python -m autoq.host.tasks.train_digits [-o digits_cnn.pt] [--epochs N] [--seed S]
    python -m autoq.host.tasks.train_digits --bundled      # from a checkout: regenerate host/tasks/data/

Writes the state dict to ``-o`` (default ``digits_cnn.pt`` in the current folder) and its record next to it (same
stem, ``.json``: settings; float accuracy and accuracy at uniform W/A = 8/8, 4/4, 3/3, 2/2 after activation
calibration, no fine-tune, on the val and on the test split). It never writes into an installed package:
``--bundled`` replaces the shipped files of the checkout in the current folder. Training uses the train split only,
on one thread with deterministic kernels and a seeded data order, so a retrain reproduces the weights bit for bit.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from autoq.common.errors import AutoQError
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


@contextmanager
def deterministic_torch() -> Iterator[None]:
    """One thread and deterministic kernels while training (the caller's settings back afterwards): results do not
    depend on the machine's core count or on the order of parallel reductions."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def train(config: TrainConfig) -> digits.DigitsCNN:
    """Adam with a one-cycle schedule on freshly distorted training images every epoch (``deterministic_torch``)."""
    with deterministic_torch():
        return _train(config)


def _train(config: TrainConfig) -> digits.DigitsCNN:
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


BUNDLED_DIR = Path("host") / "tasks" / "data"  # in a checkout


def bundled_weights_file(cwd: Path | None = None) -> Path:
    """The shipped weights of the checkout in ``cwd`` (refused elsewhere: never the installed package's copy)."""
    root = Path.cwd() if cwd is None else Path(cwd)
    if not ((root / "setup.py").is_file() and (root / BUNDLED_DIR / digits.WEIGHTS_FILE).is_file()):
        raise AutoQError(f"--bundled regenerates the shipped weights of a checkout: run it from the repository root "
                         f"(no setup.py and {BUNDLED_DIR / digits.WEIGHTS_FILE} in {root})")
    return root / BUNDLED_DIR / digits.WEIGHTS_FILE


def main(argv: list[str] | None = None) -> int:
    from autoq.host.cli._args import output_file
    from autoq.host.cli.inspect_cmd import positive_int

    parser = argparse.ArgumentParser(prog="python -m autoq.host.tasks.train_digits", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=output_file, default=digits.WEIGHTS_FILE, metavar="FILE.pt",
                       help=f"state dict to write; the record goes next to it as .json (default ./{digits.WEIGHTS_FILE})")
    where.add_argument("--bundled", action="store_true",
                       help=f"from a checkout's root: replace the shipped {BUNDLED_DIR / digits.WEIGHTS_FILE} and its record")
    parser.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = parser.parse_args(argv)
    try:
        weights_file = bundled_weights_file() if args.bundled else Path(args.output)
    except AutoQError as exc:
        parser.error(str(exc))
    config = TrainConfig(epochs=args.epochs, seed=args.seed)

    started, started_cpu = time.perf_counter(), time.process_time()
    model = train(config)
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(weights_file, buffer.getvalue())

    record = {
        "model": "DigitsCNN",
        "input_shape": list(digits.INPUT_SHAPE),
        "train_config": asdict(config),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "torch_threads": 1,  # deterministic_torch
        "torch": torch.__version__,
        "split": {"seed": digits.SPLIT_SEED, "val": digits.VAL_SIZE, "test": digits.TEST_SIZE, "calib": digits.CALIB_SIZE},
        **{f"{split}_accuracy": {k: round(v, 4) for k, v in figures.items()}
           for split, figures in quantized_accuracies(model).items()},
    }
    record_file = weights_file.with_suffix(".json")
    atomic_write_text(record_file, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    print(f"wrote {weights_file} and {record_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
