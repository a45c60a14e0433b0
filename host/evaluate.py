"""Accuracy of a model under a quantization plan, on a held-out split, optionally after a short fine-tune.

Two held-out splits are kept apart: ``val``, which the search scores (and so selects) plans on, and ``test``, on
which results are reported; every accuracy method takes ``split`` and defaults to ``val``, except the final
fine-tune's, which reports ``test``. Results are cached by (plan hash, fine-tune steps, split). A fine-tune runs SGD (lr 1e-3, momentum 0.9, as in AutoQ)
through the quantizer's straight-through estimator on batches of the train split drawn from a generator seeded
with ``seed``, then puts every parameter and buffer back bit for bit; the optimizer is created per fine-tune, so no
optimizer state outlives it. The same plan and settings therefore always give the same accuracy.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from autoq.common.errors import AutoQError
from autoq.common.plan import QuantPlan
from autoq.host.quant.quantizer import QuantizedModel, QuantizerConfig
from autoq.host.tasks import Task
from autoq.host.tasks.datasets import Split

#: The held-out splits an evaluator scores on: ``val`` selects plans, ``test`` reports them.
HELD_OUT_SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvaluatorConfig:
    batch_size: int = 512
    finetune_batch_size: int = 32
    finetune_lr: float = 1e-3
    finetune_momentum: float = 0.9
    seed: int = 0


class Evaluator:
    """Scores plans: ``accuracy(plan, finetune_steps)`` and ``full_precision_accuracy()`` on ``val`` for the search,
    the same with ``split="test"`` for reporting."""

    def __init__(self, qmodel: QuantizedModel, val: Split, test: Split, train: Split | None = None,
                 config: EvaluatorConfig = EvaluatorConfig()) -> None:
        for name, split in (("val", val), ("test", test)):
            if len(split) == 0:
                raise AutoQError(f"the {name} split is empty")
        if not qmodel.calibrated:
            raise AutoQError("the quantized model's activations are not calibrated; call calibrate() first")
        self.qmodel = qmodel
        self.held_out = {"val": val, "test": test}
        self.train = train
        self.config = config
        self.evaluations = 0
        self._cache: dict[tuple[str, int, str], float] = {}
        self._float_accuracy: dict[str, float] = {}

    @classmethod
    def for_task(cls, task: Task, quantizer: QuantizerConfig = QuantizerConfig(),
                 config: EvaluatorConfig = EvaluatorConfig()) -> "Evaluator":
        """Wrap the task's model (in place), calibrate its activations on the calib split."""
        qmodel = QuantizedModel(task.model.eval(), task.network, quantizer)
        qmodel.calibrate(_batches(task.calib, config.batch_size))
        return cls(qmodel, task.val, task.test, task.train, config)

    def accuracy(self, plan: QuantPlan, finetune_steps: int = 0, split: str = "val") -> float:
        """Top-1 accuracy on ``split`` under ``plan``, after ``finetune_steps`` SGD steps when asked (cached)."""
        held_out = self._held_out(split)
        if finetune_steps < 0:
            raise AutoQError(f"finetune_steps must be >= 0, got {finetune_steps}")
        if finetune_steps and self.train is None:
            raise AutoQError("fine-tuning needs a train split")
        key = (plan.hash, finetune_steps, split)
        if key not in self._cache:
            self.qmodel.apply(plan)
            if finetune_steps:
                with self._restored_state():
                    self._finetune(finetune_steps)
                    accuracy = self._score(held_out)
            else:
                accuracy = self._score(held_out)
            self._cache[key] = accuracy
        return self._cache[key]

    def finetune_and_keep(self, plan: QuantPlan, steps: int) -> float:
        """Fine-tune under ``plan`` for ``steps`` SGD steps and *keep* the weights (the final model, before export);
        returns its test-split accuracy. Accuracies cached before describe the old weights, so the cache is cleared."""
        if steps < 0:
            raise AutoQError(f"finetune_steps must be >= 0, got {steps}")
        if steps and self.train is None:
            raise AutoQError("fine-tuning needs a train split")
        self.qmodel.apply(plan)
        if steps:
            self._finetune(steps)
            self.qmodel.model.eval()
            self._cache.clear()
            self._float_accuracy.clear()
        return self._score(self.held_out["test"])

    def full_precision_accuracy(self, split: str = "val") -> float:
        """Top-1 accuracy of the float model on ``split``."""
        held_out = self._held_out(split)
        if split not in self._float_accuracy:
            with self.qmodel.float_mode():
                self._float_accuracy[split] = self._score(held_out)
        return self._float_accuracy[split]

    def _held_out(self, split: str) -> Split:
        if split not in self.held_out:
            raise AutoQError(f"no held-out split {split!r}; choose one of {HELD_OUT_SPLITS}")
        return self.held_out[split]

    def _score(self, split: Split) -> float:
        self.evaluations += 1
        model = self.qmodel.model
        was_training = model.training
        model.eval()
        correct = 0
        try:
            with torch.no_grad():
                for x, y in _batches(split, self.config.batch_size):
                    correct += int((model(x).argmax(1) == y).sum())
        finally:
            model.train(was_training)
        return correct / len(split)

    def _finetune(self, steps: int) -> None:
        assert self.train is not None
        model = self.qmodel.model
        generator = torch.Generator().manual_seed(self.config.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.config.finetune_lr, momentum=self.config.finetune_momentum)
        model.train()
        for _ in range(steps):
            batch = torch.randint(len(self.train), (self.config.finetune_batch_size,), generator=generator)
            loss = F.cross_entropy(model(self.train.x[batch]), self.train.y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    @contextmanager
    def _restored_state(self) -> Iterator[None]:
        """Put every parameter and buffer (and the train/eval mode) back bit for bit on exit."""
        model = self.qmodel.model
        training = model.training
        saved = {key: value.detach().clone() for key, value in model.state_dict(keep_vars=True).items()}
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in model.state_dict(keep_vars=True).items():
                    value.copy_(saved[key])
            model.train(training)


def _batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        yield split.x[start : start + batch_size], split.y[start : start + batch_size]
