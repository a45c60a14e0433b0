"""Accuracy of a model under a quantization plan, on a held-out split, optionally after a short fine-tune.

Two held-out splits are kept apart: ``val``, which plans are selected on, and ``test``, on which results are
reported; every accuracy method takes ``split`` and defaults to ``val``, except the final fine-tune's, which reports
``test``. ``val_subset`` (``SEARCH_SPLIT``) is a fixed random part of ``val`` (``EvaluatorConfig.search_images``,
drawn with ``seed``; all of ``val`` when it is no larger): what the search scores every episode on, before it
re-scores its best candidates on all of ``val``. ``val`` is scored as its subset plus the rest, so re-scoring a
plan scored on the subset costs only the rest. Results are cached by (plan hash, fine-tune steps, part of a split);
``split_size`` says how many images a split has. A fine-tune runs SGD (lr 1e-3, momentum 0.9, as in AutoQ)
through the quantizer's straight-through estimator on batches of the train split drawn from a generator seeded
with ``seed``, then puts every parameter and buffer back bit for bit; the optimizer is created per fine-tune, so no
optimizer state outlives it. The same plan and settings therefore always give the same accuracy.

``score`` gives, beside top-1, the mean cross-entropy and the mean KL divergence of the quantized model's
predictions from the float model's on the same split (a reward that still moves when top-1 on a few hundred images
does not); ``accuracy`` is its first figure.

``for_task`` folds BatchNorm into the convs before quantizing (``quant.bnfold``), and takes a task whose model is an
ONNX graph too: it is then quantized and run in onnxruntime (``quant.onnx_quant``), which cannot fine-tune. Scoring
a task whose model has no trained weights (a built-in architecture by name) warns with ``UntrainedWeightsWarning``;
``Evaluator.trained`` says so too.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np

import torch
import torch.nn.functional as F

from autoq.common.errors import AutoQError
from autoq.common.plan import QuantPlan
from autoq.host.quant.quantizer import QuantizedModel, QuantizerConfig
from autoq.host.search.env import SEARCH_SPLIT, PlanScore
from autoq.host.tasks import Task
from autoq.host.tasks.datasets import Split

if TYPE_CHECKING:
    from autoq.host.quant.onnx_quant import OnnxQuantizedModel

#: The held-out splits an evaluator scores on: ``val_subset`` scores episodes, ``val`` selects plans, ``test``
#: reports them.
HELD_OUT_SPLITS = (SEARCH_SPLIT, "val", "test")
#: The images of ``val`` outside ``val_subset`` (none when val is no larger than the subset): a score no episode's
#: reward has seen, so the best of many plans on it is not biased by having been chosen on it.
UNSEEN_VAL_SPLIT = "val_rest"
#: Images of ``val`` every episode is scored on by default (the rest only re-scores the best candidates).
DEFAULT_SEARCH_IMAGES = 2_000


class UntrainedWeightsWarning(UserWarning):
    """Accuracy is measured on a model whose weights are random (not trained): the number means nothing."""


def untrained_message(name: str) -> str:
    return (f"model {name!r} has random, untrained weights (built-in architectures ship none): its accuracy means "
            "nothing. Load trained weights: MODEL.pt --arch ARCH (a torchvision-named state dict), or a .onnx model")


@dataclass(frozen=True)
class EvaluatorConfig:
    batch_size: int = 512
    finetune_batch_size: int = 32
    finetune_lr: float = 1e-3
    finetune_momentum: float = 0.9
    seed: int = 0
    search_images: int = DEFAULT_SEARCH_IMAGES  # size of ``val_subset`` (all of val when val is no larger)


class _Sums(NamedTuple):
    """Sums over one part of a split: correct top-1 predictions, cross-entropy and KL(float || quantized), images."""

    correct: int
    loss: float
    kl: float
    images: int


def _merged(parts: list[_Sums]) -> PlanScore:
    correct, loss, kl, images = (sum(column) for column in zip(*parts))
    return PlanScore(correct / images, loss / images, max(0.0, kl / images))


class Evaluator:
    """Scores plans: ``score``/``accuracy(plan, finetune_steps, split)`` on ``val_subset`` for every episode of a
    search, on ``val`` to select among the best, on ``test`` for reporting; ``full_precision_accuracy(split)``."""

    def __init__(self, qmodel: "QuantizedModel | OnnxQuantizedModel", val: Split, test: Split, train: Split | None = None,
                 config: EvaluatorConfig = EvaluatorConfig(), trained: bool = True, calib: Split | None = None) -> None:
        for name, split in (("val", val), ("test", test)):
            if len(split) == 0:
                raise AutoQError(f"the {name} split is empty")
        if not qmodel.calibrated:
            raise AutoQError("the quantized model's activations are not calibrated; call calibrate() first")
        if config.search_images < 1:
            raise AutoQError(f"search_images must be >= 1, got {config.search_images}")
        self.qmodel = qmodel
        self.held_out = {"val": val, "test": test}
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(config.seed))
        chosen = order[: config.search_images].sort().values
        rest = order[config.search_images :].sort().values
        #: the parts each split is scored as (``val`` = its subset + the rest), each cached on its own
        self._parts = {SEARCH_SPLIT: val.subset(chosen), UNSEEN_VAL_SPLIT: val.subset(rest), "test": test}
        whole_val = (SEARCH_SPLIT, UNSEEN_VAL_SPLIT) if len(rest) else (SEARCH_SPLIT,)
        self._composition = {SEARCH_SPLIT: (SEARCH_SPLIT,), "val": whole_val, "test": ("test",),
                             **({UNSEEN_VAL_SPLIT: (UNSEEN_VAL_SPLIT,)} if len(rest) else {})}
        self.train = train
        self.calib = calib  # what the activations were calibrated on (and the sensitivity is estimated on)
        self.config = config
        self.trained = trained
        #: whether ``finetune_steps`` can be given: only a torch model trains (not an ONNX graph)
        self.trainable = isinstance(qmodel, QuantizedModel)
        self.evaluations = 0
        self._cache: dict[tuple[str, int, str], _Sums] = {}
        self._float_log_probs: dict[str, torch.Tensor] = {}

    @property
    def splits(self) -> tuple[str, ...]:
        """The held-out splits this evaluator scores on (``UNSEEN_VAL_SPLIT`` only where val outgrows its subset)."""
        return tuple(self._composition)

    def split_size(self, split: str) -> int:
        """Images of held-out ``split``."""
        return sum(len(self._parts[part]) for part in self._parts_of(split))

    @classmethod
    def for_task(cls, task: Task, quantizer: QuantizerConfig = QuantizerConfig(),
                 config: EvaluatorConfig = EvaluatorConfig()) -> "Evaluator":
        """Wrap the task's model (in place; a BatchNorm-folded copy if it has BatchNorm), or its ONNX graph, and
        calibrate its activations on the calib split."""
        from torch import nn

        if not task.trained:
            warnings.warn(untrained_message(task.name), UntrainedWeightsWarning, stacklevel=2)
        if isinstance(task.model, nn.Module):
            from autoq.host.quant.bnfold import batchnorm_pairs, fold_batchnorm

            model = fold_batchnorm(task.model) if batchnorm_pairs(task.model) else task.model.eval()
            qmodel: QuantizedModel | OnnxQuantizedModel = QuantizedModel(model, task.network, quantizer)
        else:
            from autoq.host.quant.onnx_quant import OnnxQuantizedModel

            qmodel = OnnxQuantizedModel(task.model, task.network, quantizer)
        qmodel.calibrate(_batches(task.calib, config.batch_size))
        return cls(qmodel, task.val, task.test, task.train, config, trained=task.trained, calib=task.calib)

    def kernel_scales(self) -> dict[str, np.ndarray]:
        """Each quantized layer's largest absolute float weight per kernel (the search's per-kernel state)."""
        return self.qmodel.kernel_scales()

    def accuracy(self, plan: QuantPlan, finetune_steps: int = 0, split: str = "val") -> float:
        """Top-1 accuracy on ``split`` under ``plan``, after ``finetune_steps`` SGD steps when asked (cached)."""
        return self.score(plan, finetune_steps, split).accuracy

    def score(self, plan: QuantPlan, finetune_steps: int = 0, split: str = "val") -> PlanScore:
        """Top-1 accuracy, mean cross-entropy and mean KL(float || quantized) on ``split`` under ``plan``, after
        ``finetune_steps`` SGD steps when asked (cached per part of the split)."""
        parts = self._parts_of(split)
        self.check_finetune(finetune_steps)
        missing = [part for part in parts if (plan.hash, finetune_steps, part) not in self._cache]
        if missing:
            for part in missing:
                self._float(part)  # KL to the float model as it is, not to a fine-tuned one
            self.qmodel.apply(plan)
            with self._restored_state() if finetune_steps else nullcontext():
                if finetune_steps:
                    self._finetune(finetune_steps)
                for part in missing:
                    self._cache[(plan.hash, finetune_steps, part)] = self._sums(part)
        return _merged([self._cache[(plan.hash, finetune_steps, part)] for part in parts])

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of every parameter and buffer of the torch model (to put back with ``restore_weights``)."""
        return {key: value.detach().clone() for key, value in self._torch_model().state_dict(keep_vars=True).items()}

    def restore_weights(self, saved: dict[str, torch.Tensor]) -> None:
        """Put back weights taken with ``weights``; cached scores of other weights are dropped."""
        with torch.no_grad():
            for key, value in self._torch_model().state_dict(keep_vars=True).items():
                value.copy_(saved[key])
        self._cache.clear()
        self._float_log_probs.clear()

    def finetune_and_keep(self, plan: QuantPlan, steps: int) -> float:
        """Fine-tune under ``plan`` for ``steps`` SGD steps and *keep* the weights (the final model, before export);
        returns its test-split accuracy. Accuracies cached before describe the old weights, so the cache is cleared."""
        self.check_finetune(steps)
        self.qmodel.apply(plan)
        if steps:
            self._finetune(steps)
            self._torch_model().eval()
            self._cache.clear()
            self._float_log_probs.clear()
        return self._score(self.held_out["test"])

    def correct(self, plan: QuantPlan, split: str = "test") -> np.ndarray:
        """Whether each image of held-out ``split`` is classified right under ``plan`` (not cached): what a paired
        comparison of two plans on the same images needs."""
        self.qmodel.apply(plan)
        return np.concatenate([self._correct(self._parts[part]) for part in self._parts_of(split)])

    def full_precision_accuracy(self, split: str = "val") -> float:
        """Top-1 accuracy of the float model on ``split``."""
        parts = self._parts_of(split)
        correct = sum(int((self._float(part).argmax(1) == self._parts[part].y).sum()) for part in parts)
        return correct / self.split_size(split)

    def _parts_of(self, split: str) -> tuple[str, ...]:
        if split not in self._composition:
            raise AutoQError(f"no held-out split {split!r}; choose one of {self.splits}")
        return self._composition[split]

    def _float(self, part: str) -> torch.Tensor:
        """The float model's log-probabilities on ``part`` (cached until the weights change)."""
        if part not in self._float_log_probs:
            with self.qmodel.float_mode():
                self._float_log_probs[part] = self._log_probs(self._parts[part])
        return self._float_log_probs[part]

    def _torch_model(self) -> torch.nn.Module:
        """The torch module that fine-tuning trains and ``weights`` copies; an ONNX graph has none."""
        if not isinstance(self.qmodel, QuantizedModel):
            raise AutoQError(f"model {self.qmodel.network.name!r} is an ONNX graph: it has no torch weights to fine-tune "
                             "(use 0 fine-tune steps, or give the model as a .pt state dict with --arch)")
        return self.qmodel.model

    def check_finetune(self, steps: int) -> None:
        """Refuse ``steps`` fine-tune steps this evaluator cannot take (negative, an ONNX graph, or no train split)."""
        if steps < 0:
            raise AutoQError(f"finetune_steps must be >= 0, got {steps}")
        if steps and not self.trainable:
            raise AutoQError(f"model {self.qmodel.network.name!r} is an ONNX graph: it cannot be fine-tuned "
                             "(use 0 fine-tune steps, or give the model as a .pt state dict with --arch)")
        if steps and self.train is None:
            raise AutoQError("fine-tuning needs a train split")

    def _score(self, split: Split) -> float:
        return int(self._correct(split).sum()) / len(split)

    def _correct(self, split: Split) -> np.ndarray:
        return (self._log_probs(split).argmax(1) == split.y).numpy()

    def _sums(self, part: str) -> _Sums:
        """The applied plan's sums on ``part`` (``_Sums``)."""
        split = self._parts[part]
        log_p = self._float(part)
        log_q = self._log_probs(split)
        correct = int((log_q.argmax(1) == split.y).sum())
        loss = float(F.nll_loss(log_q, split.y, reduction="sum"))
        kl = float((log_p.exp() * (log_p - log_q)).sum())
        return _Sums(correct, loss, kl, len(split))

    def _log_probs(self, split: Split) -> torch.Tensor:
        self.evaluations += 1
        model = getattr(self.qmodel, "model", None)  # a torch module, or none for an ONNX graph
        was_training = model is not None and model.training
        if model is not None:
            model.eval()
        try:
            with torch.no_grad():
                out = [F.log_softmax(torch.as_tensor(self.qmodel(x)).double(), 1) for x, _ in _batches(split, self.config.batch_size)]
        finally:
            if model is not None:
                model.train(was_training)
        return torch.cat(out)

    def _finetune(self, steps: int) -> None:
        assert self.train is not None
        model = self._torch_model()
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
        model = self._torch_model()
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
