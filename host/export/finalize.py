"""The end of a search: fine-tune the chosen plan, then export it to ONNX and (optionally) to an hls4ml project.

``export_final`` is what ``autoq export`` runs; ``finalize`` is what the search runner calls, writing into
``<out_dir>/final/``: ``plan.json``, ``model.onnx``, ``hls4ml/`` (when asked) and ``final.json`` (validation and
test accuracies before and after the fine-tune, which of the two models was exported, and where everything went).

The fine-tune never silently worsens the result: the fine-tuned and the not-fine-tuned model are compared on the
validation split (accuracy, then loss), the better one is exported (ties keep the fine-tuned one), and both test
accuracies are reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from autoq.common.fileio import atomic_write_text
from autoq.common.plan import QuantPlan

if TYPE_CHECKING:
    from autoq.host.evaluate import Evaluator
    from autoq.host.export.hls4ml_export import HlsExport

FINAL_DIR = "final"
FINAL_SUMMARY = "final.json"
#: The split the final accuracies are measured on: the search selected the plan on ``val``, so it reports ``test``.
REPORT_SPLIT = "test"
#: SGD steps of a search's final fine-tune: about 10 epochs of the digits train split at batch 32 (AutoQ: 10 epochs).
DEFAULT_FINAL_FINETUNE_STEPS = 375


@dataclass(frozen=True)
class FinalReport:
    """What ``final/final.json`` says: the final plan, its fine-tune, its test-split accuracies before and after the
    fine-tune, and where its exports went (``None``: not exported)."""

    plan_hash: str
    finetune_steps: int
    accuracy_before: float  # test
    accuracy_after: float  # test
    onnx: str | None
    hls4ml: str | None
    accuracy_split: str = REPORT_SPLIT
    val_accuracy_before: float | None = None
    val_accuracy_after: float | None = None
    finetuned_exported: bool = True  # whether the exported model is the fine-tuned one (it won on validation)

    @property
    def exported(self) -> str:
        return "fine-tuned" if self.finetuned_exported else "not fine-tuned"

    @property
    def exported_accuracy(self) -> float:
        """Test accuracy of the model that was exported."""
        return self.accuracy_after if self.finetuned_exported else self.accuracy_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_hash": self.plan_hash,
            "finetune_steps": self.finetune_steps,
            "accuracy_split": self.accuracy_split,
            "accuracy_before_finetune": self.accuracy_before,
            "accuracy_after_finetune": self.accuracy_after,
            "val_accuracy_before_finetune": self.val_accuracy_before,
            "val_accuracy_after_finetune": self.val_accuracy_after,
            "exported": self.exported,
            "exported_accuracy": self.exported_accuracy,
            "onnx": self.onnx,
            "hls4ml": self.hls4ml,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FinalReport":
        if data["exported"] not in ("fine-tuned", "not fine-tuned"):
            raise ValueError(f"final.json: unknown exported model {data['exported']!r}")
        return cls(str(data["plan_hash"]), int(data["finetune_steps"]), float(data["accuracy_before_finetune"]),
                   float(data["accuracy_after_finetune"]), data.get("onnx"), data.get("hls4ml"), str(data["accuracy_split"]),
                   float(data["val_accuracy_before_finetune"]), float(data["val_accuracy_after_finetune"]),
                   data["exported"] == "fine-tuned")


@dataclass(frozen=True)
class FinalExport:
    plan: QuantPlan
    finetune_steps: int
    accuracy_before: float
    accuracy_after: float
    onnx: Path | None
    hls4ml: "HlsExport | None"
    val_accuracy_before: float | None = None
    val_accuracy_after: float | None = None
    finetuned_exported: bool = True

    def report(self) -> FinalReport:
        return FinalReport(self.plan.hash, self.finetune_steps, self.accuracy_before, self.accuracy_after,
                           str(self.onnx) if self.onnx else None, str(self.hls4ml.output_dir) if self.hls4ml else None,
                           REPORT_SPLIT, self.val_accuracy_before, self.val_accuracy_after, self.finetuned_exported)


def export_final(
    evaluator: "Evaluator", plan: QuantPlan, finetune_steps: int, onnx: str | Path | None = None, hls4ml: str | Path | None = None
) -> FinalExport:
    """Fine-tune ``evaluator``'s model under ``plan`` for ``finetune_steps`` steps, keep the fine-tuned model if it
    is no worse on the validation split (accuracy, then loss) than the model before, put the old weights back
    otherwise, and export the kept one; ``accuracy_before``/``after`` are on the test split, both reported.

    The model is changed in place: this is the last thing done with it.
    """
    from autoq.host.export.onnx_export import export_quantized_onnx

    plan.check(evaluator.qmodel.network)
    before = evaluator.accuracy(plan, split=REPORT_SPLIT)
    val_before = evaluator.score(plan, split="val")
    kept = True
    if finetune_steps:
        saved = evaluator.weights()
        after = evaluator.finetune_and_keep(plan, finetune_steps)
        val_after = evaluator.score(plan, split="val")
        kept = (val_after.accuracy, -val_after.loss) >= (val_before.accuracy, -val_before.loss)
        if not kept:
            evaluator.restore_weights(saved)
            evaluator.qmodel.apply(plan)
    else:
        after, val_after = before, val_before
    onnx_path = export_quantized_onnx(evaluator.qmodel, plan, onnx) if onnx else None
    hls = None
    if hls4ml:
        from autoq.host.export.hls4ml_export import export_hls4ml

        hls = export_hls4ml(evaluator.qmodel, plan, hls4ml)
    return FinalExport(plan, finetune_steps, before, after, Path(onnx_path) if onnx_path else None, hls,
                       val_before.accuracy, val_after.accuracy, kept)


def finalize(out_dir: str | Path, evaluator: "Evaluator", plan: QuantPlan, finetune_steps: int, hls4ml: bool = False) -> FinalExport:
    """``export_final`` into ``<out_dir>/final/`` (see the module docstring)."""
    final = Path(out_dir) / FINAL_DIR
    final.mkdir(parents=True, exist_ok=True)
    plan.save(final / "plan.json")
    result = export_final(evaluator, plan, finetune_steps, final / "model.onnx", final / "hls4ml" if hls4ml else None)
    atomic_write_text(final / FINAL_SUMMARY, json.dumps(result.report().to_dict(), indent=1) + "\n")
    return result


def completed_final(out_dir: str | Path, plan: QuantPlan, finetune_steps: int, hls4ml: bool = False) -> FinalReport | None:
    """The report in ``final.json`` of an earlier ``finalize`` of ``plan`` with these settings in ``out_dir``, or
    ``None`` (also for a ``final.json`` that cannot be read).

    ``final.json`` is written last, so its presence means the whole folder was written.
    """
    try:
        done = FinalReport.from_dict(json.loads((Path(out_dir) / FINAL_DIR / FINAL_SUMMARY).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if (done.plan_hash != plan.hash or done.finetune_steps != finetune_steps
            or done.accuracy_split != REPORT_SPLIT or (hls4ml and not done.hls4ml)):
        return None
    return done
