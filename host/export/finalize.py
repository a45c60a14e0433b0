"""The end of a search: fine-tune the chosen plan, then export it to ONNX and (optionally) to an hls4ml project.

``export_final`` is what ``autoq export`` runs; ``finalize`` is what the search runner calls, writing into
``<out_dir>/final/``: ``plan.json``, ``model.onnx``, ``hls4ml/`` (when asked) and ``final.json`` (test-split
accuracies before and after the fine-tune, and where everything went).
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
    accuracy_before: float
    accuracy_after: float
    onnx: str | None
    hls4ml: str | None
    accuracy_split: str = REPORT_SPLIT

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_hash": self.plan_hash,
            "finetune_steps": self.finetune_steps,
            "accuracy_split": self.accuracy_split,
            "accuracy_before_finetune": self.accuracy_before,
            "accuracy_after_finetune": self.accuracy_after,
            "onnx": self.onnx,
            "hls4ml": self.hls4ml,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FinalReport":
        return cls(str(data["plan_hash"]), int(data["finetune_steps"]), float(data["accuracy_before_finetune"]),
                   float(data["accuracy_after_finetune"]), data.get("onnx"), data.get("hls4ml"), str(data["accuracy_split"]))


@dataclass(frozen=True)
class FinalExport:
    plan: QuantPlan
    finetune_steps: int
    accuracy_before: float
    accuracy_after: float
    onnx: Path | None
    hls4ml: "HlsExport | None"

    def report(self) -> FinalReport:
        return FinalReport(self.plan.hash, self.finetune_steps, self.accuracy_before, self.accuracy_after,
                           str(self.onnx) if self.onnx else None, str(self.hls4ml.output_dir) if self.hls4ml else None)


def export_final(
    evaluator: "Evaluator", plan: QuantPlan, finetune_steps: int, onnx: str | Path | None = None, hls4ml: str | Path | None = None
) -> FinalExport:
    """Fine-tune ``evaluator``'s model under ``plan`` for ``finetune_steps`` steps (kept), then export it; the
    accuracies before and after are on the test split.

    The model is changed in place: this is the last thing done with it.
    """
    from autoq.host.export.onnx_export import export_quantized_onnx

    plan.check(evaluator.qmodel.network)
    before = evaluator.accuracy(plan, split=REPORT_SPLIT)
    after = evaluator.finetune_and_keep(plan, finetune_steps)
    onnx_path = export_quantized_onnx(evaluator.qmodel, plan, onnx) if onnx else None
    hls = None
    if hls4ml:
        from autoq.host.export.hls4ml_export import export_hls4ml

        hls = export_hls4ml(evaluator.qmodel, plan, hls4ml)
    return FinalExport(plan, finetune_steps, before, after, Path(onnx_path) if onnx_path else None, hls)


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
