"""What the bundled tasks' training scripts share: a seeded, deterministic, one-thread training loop, the accuracy
record at uniform bit-widths, and the command line that writes weights and record (``train_digits``,
``train_fashion``).

A retrain with the same settings reproduces the weights bit for bit: one thread, deterministic kernels, the model
built right after seeding, and a seeded data order and augmentation.
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
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_bytes, atomic_write_text
from autoq.host.tasks.datasets import Split

RECORDED_UNIFORM_BITS = ((8, 8), (4, 4), (3, 3), (2, 2))
BUNDLED_DIR = Path("host") / "tasks" / "data"  # in a checkout

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Adam with a one-cycle schedule; ``max_steps`` cuts the run short (the schedule spans the cut run)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise AutoQError(f"epochs, batch_size and max_steps must be >= 1, got {self.epochs}, {self.batch_size}, "
                             f"{self.max_steps}")


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


def fit(build: Callable[[], nn.Module], train_split: Split, config: TrainConfig, augment: Augment | None = None) -> nn.Module:
    """Train the model ``build()`` makes (called right after seeding) on ``train_split`` (``deterministic_torch``);
    every batch goes through ``augment(x, generator)`` when given. Returns the model in eval mode."""
    with deterministic_torch():
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model = build().train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = -(-len(train_split) // config.batch_size)
        total = config.epochs * steps_per_epoch
        steps = total if config.max_steps is None else min(total, config.max_steps)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps)
        done = 0
        for _epoch in range(config.epochs):
            order = torch.randperm(len(train_split), generator=generator)
            for start in range(0, len(order), config.batch_size):
                if done == steps:
                    return model.eval()
                batch = order[start : start + config.batch_size]
                x = train_split.x[batch]
                if augment is not None:
                    x = augment(x, generator)
                loss = F.cross_entropy(model(x), train_split.y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                done += 1
        return model.eval()


def quantized_accuracies(task_name: str, model: nn.Module) -> dict[str, dict[str, float]]:
    """Accuracy of ``model`` on the val and the test split of the bundled task ``task_name`` at the recorded uniform
    bit-widths (activations calibrated on calib, no fine-tune), and in float."""
    import importlib

    from autoq.common.plan import QuantPlan
    from autoq.host.evaluate import Evaluator
    from autoq.host.network.trace import spec_from_torch
    from autoq.host.tasks import Task

    module = importlib.import_module(f"autoq.host.tasks.{task_name}")  # not load_task: no shipped weights needed
    shape = tuple(module.INPUT_SHAPE)
    task = Task(task_name, model, spec_from_torch(model, shape, task_name), shape, *module.load_splits())
    evaluator = Evaluator.for_task(task)
    return {
        split: {
            f"{w}/{a}": evaluator.accuracy(QuantPlan.uniform(task.network, w, a), split=split) for w, a in RECORDED_UNIFORM_BITS
        } | {"float": evaluator.full_precision_accuracy(split=split)}
        for split in ("val", "test")
    }


def bundled_weights_file(weights_name: str, cwd: Path | None = None) -> Path:
    """The shipped weights ``weights_name`` of the checkout in ``cwd`` (refused elsewhere: never the installed
    package's copy)."""
    root = Path.cwd() if cwd is None else Path(cwd)
    if not ((root / "setup.py").is_file() and (root / BUNDLED_DIR / weights_name).is_file()):
        raise AutoQError(f"--bundled regenerates the shipped weights of a checkout: run it from the repository root "
                         f"(no setup.py and {BUNDLED_DIR / weights_name} in {root})")
    return root / BUNDLED_DIR / weights_name


@dataclass(frozen=True)
class TrainingScript:
    """One bundled task's training command: what it trains and what its record says beyond the common fields."""

    task_name: str
    model_name: str
    weights_file: str
    default_config: TrainConfig
    train: Callable[[TrainConfig], nn.Module]
    record_fields: Callable[[], dict[str, Any]]


def main(script: TrainingScript, argv: list[str] | None, prog: str, description: str) -> int:
    """Parse ``argv``, train, write the state dict and its ``.json`` record (settings, time, accuracies)."""
    from autoq.host.cli._args import output_file
    from autoq.host.cli.inspect_cmd import positive_int

    parser = argparse.ArgumentParser(prog=prog, description=description)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=output_file, default=script.weights_file, metavar="FILE.pt",
                       help=f"state dict to write; the record goes next to it as .json (default ./{script.weights_file})")
    where.add_argument("--bundled", action="store_true",
                       help=f"from a checkout's root: replace the shipped {BUNDLED_DIR / script.weights_file} and its record")
    parser.add_argument("--epochs", type=positive_int, default=script.default_config.epochs)
    parser.add_argument("--steps", type=positive_int, metavar="N", help="stop after N optimizer steps (a short run)")
    parser.add_argument("--seed", type=int, default=script.default_config.seed)
    args = parser.parse_args(argv)
    try:
        weights_file = bundled_weights_file(script.weights_file) if args.bundled else Path(args.output)
    except AutoQError as exc:
        parser.error(str(exc))
    config = TrainConfig(**{**asdict(script.default_config), "epochs": args.epochs, "seed": args.seed,
                            "max_steps": args.steps})

    started, started_cpu = time.perf_counter(), time.process_time()
    model = script.train(config)
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(weights_file, buffer.getvalue())

    record = {
        "model": script.model_name,
        "train_config": asdict(config),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "torch_threads": 1,  # deterministic_torch
        "torch": torch.__version__,
        **script.record_fields(),
        **{f"{split}_accuracy": {k: round(v, 4) for k, v in figures.items()}
           for split, figures in quantized_accuracies(script.task_name, model).items()},
    }
    record_file = weights_file.with_suffix(".json")
    atomic_write_text(record_file, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    print(f"wrote {weights_file} and {record_file}", file=sys.stderr)
    return 0
