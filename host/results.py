"""The results folder of a search: best plans, Pareto fronts, a bit-width heatmap and a summary.

``write_results`` writes, into ``out_dir``:

- ``best_<criterion>.plan.json`` for each criterion in ``CRITERIA`` (loadable with ``QuantPlan.load`` and
  ``autoq export --plan``) and ``best_plans.json``, an index with each best plan's figures;
- ``episodes.csv``: every episode's figures;
- ``pareto_latency.{csv,png}``, ``pareto_energy.{csv,png}``: the non-dominated episodes for accuracy (higher is
  better) against latency or energy (lower is better);
- ``bits_heatmap.png``: the best plan's weight bit-width of every kernel (layers x kernels);
- ``summary.md``, with the fine-tuned final plan's figures when ``final`` (``final/final.json``'s report) is given,
  and ``summary.json``, its machine-readable twin (``SUMMARY_JSON``: task, agent, seed, episodes, budget, the float
  and uniform max-bit figures, and the selected plan's episode, accuracies, cost and tile widths per layer).

Episodes are scored on the search split (``val_subset``: a seeded subset of the validation split, see
``autoq.host.evaluate``). The selected plan (``select_plan``) is chosen after the agent's warm-up
(``RunReport.warmup_episodes``: random exploration, never selected): the ``RESCORED_CANDIDATES`` highest-reward
distinct plans on the search split are scored again on the whole validation split, the one with the highest reward
there is selected, and it is reported on the test split; a warm-up episode that scored higher is named in the
summary. ``RunReport.split_images`` gives each split's image count, which the summary states beside every figure.

Records are the search's ``EpisodeOutcome``s, placed in it (episode and agent set). The run and the final plan are
described by typed reports (``RunReport``, ``FinalReport``), formatted only here, where they are written.
``ResultsWriter`` writes a file only when its content changed since it last wrote it, and renders a plot only when
its data changed (a search writes its results before the final export, then again with it: only ``summary.md``).

An episode's ``accuracy`` is on the search split. The selected plan's whole-validation and test figures
(``Selection``) and the final plan's accuracies (test, and val for the fine-tune's choice) are kept apart from it.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch). Every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Hashable, Mapping, NamedTuple, Sequence, TypedDict

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_bytes
from autoq.common.measurement import Source
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.export.finalize import FINAL_DIR, FinalReport
from autoq.host.search.env import SEARCH_SPLIT, EpisodeOutcome, PlanScore
from autoq.host.search.rewards import CostPoint, Objective, RewardSetting

#: One episode of a search's history (an ``EpisodeOutcome`` with its episode and agent set).
EpisodeRecord = EpisodeOutcome


@dataclass(frozen=True)
class RunReport:
    """What a search was (listed at the top of ``summary.md`` and in ``best_plans.json``)."""

    agent: str
    task: str
    backend: str  # the backend's URI
    seed: int
    episodes_run: int
    episodes: int  # the budget
    reward: RewardSetting
    min_bits: int
    max_bits: int
    finetune_steps: int
    full_accuracy_val: float
    full_accuracy_test: float
    reference: CostPoint  # the uniform max_bits plan's cost
    record: str | None = None  # the trace the measurements were recorded to
    budget_limit: float | None = None  # the resolved budget, in seconds or joules
    extensions: str = ""  # how the episode budget was extended, if it was
    warmup_episodes: int = 0  # random exploration at the start: not selectable
    tile_rows: int = 1  # rows per tile of the overlay (Dm): how kernels share a tile's bits
    uniform_accuracy_val: float | None = None  # the uniform max-bit plan's accuracies
    uniform_accuracy_test: float | None = None
    sensitivity: str = ""  # how the per-kernel sensitivity was estimated
    split_images: Mapping[str, int] | None = None  # images per held-out split: val_subset, val, test

    @property
    def episode_split(self) -> str:
        """The split episodes were scored on: ``val_subset`` when the evaluator has one (it gave ``split_images``)."""
        return SEARCH_SPLIT if self.split_images else "val"

    def images(self, split: str) -> str:
        """``split`` with its image count when known: ``val (5,000 images)``."""
        count = (self.split_images or {}).get(split)
        return split if count is None else f"{split} ({count:,} images)"

    def _splits(self) -> str:
        if not self.split_images:
            return "episodes scored on val"
        n = self.split_images
        part = "all" if n[SEARCH_SPLIT] == n["val"] else "a seeded subset"
        return (f"{SEARCH_SPLIT} {n[SEARCH_SPLIT]:,} ({part} of val: scores every episode), val {n['val']:,} "
                f"(re-scores the best: selects), test {n['test']:,} (reports)")

    def rows(self) -> dict[str, str]:
        """The report as table rows: label -> formatted value."""
        episodes = f"{self.episodes_run} of {self.episodes}" + (f" ({self.extensions})" if self.extensions else "")
        rows = {
            "agent": self.agent, "task": self.task, "backend": self.backend, "seed": str(self.seed),
            "episodes": episodes, "reward": self.reward.describe(),
            "bits": f"{self.min_bits}..{self.max_bits}", "finetune steps": str(self.finetune_steps),
            "held-out images": self._splits(),
            "full-precision accuracy (val)": f"{self.full_accuracy_val:.4f}",
            "full-precision accuracy (test)": f"{self.full_accuracy_test:.4f}",
            f"uniform {self.max_bits}-bit plan": f"{self.reference.latency_s * 1e3:.4g} ms, {self.reference.energy_j * 1e3:.4g} mJ",
            "record": self.record or "-",
            "warm-up episodes (not selected)": str(self.warmup_episodes),
        }
        if self.uniform_accuracy_val is not None and self.uniform_accuracy_test is not None:
            rows[f"uniform {self.max_bits}-bit accuracy (val / test)"] = f"{self.uniform_accuracy_val:.4f} / {self.uniform_accuracy_test:.4f}"
        if self.sensitivity:
            rows["kernel sensitivity"] = self.sensitivity
        if self.budget_limit is not None and self.reward.budget is not None:
            unit = "s" if self.reward.budget.metric == "latency" else "J"
            rows["budget limit"] = f"{self.budget_limit:.6g} ({unit})"
        return rows


Key = Callable[[EpisodeRecord], tuple]

# criterion -> (what it means, sort key: the smallest key is the best record; ties go to the earliest episode)
CRITERIA: dict[str, tuple[str, Key]] = {
    "reward": ("highest reward", lambda r: (-r.reward, -r.accuracy, r.measurement.latency_s, r.episode)),
    "accuracy": ("highest accuracy", lambda r: (-r.accuracy, r.measurement.latency_s, r.episode)),
    "latency": ("lowest latency", lambda r: (r.measurement.latency_s, -r.accuracy, r.episode)),
    "energy": ("lowest energy", lambda r: (r.measurement.energy_j, -r.accuracy, r.episode)),
}
COSTS: dict[str, tuple[str, float, Callable[[EpisodeRecord], float]]] = {
    # cost -> (axis label, display scale, value in SI units)
    "latency": ("latency (ms)", 1e3, lambda r: r.measurement.latency_s),
    "energy": ("energy (mJ)", 1e3, lambda r: r.measurement.energy_j),
}
EPISODE_COLUMNS = (
    "episode", "agent", "plan_hash", "accuracy", "latency_s", "energy_j", "avg_power_w", "reward",
    "avg_weight_bits", "avg_act_bits", "source",
)


def best_record(records: Sequence[EpisodeRecord], criterion: str) -> EpisodeRecord:
    if criterion not in CRITERIA:
        raise AutoQError(f"unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)}")
    if not records:
        raise AutoQError("no episodes: nothing is best")
    return min(records, key=CRITERIA[criterion][1])


def selected_record(records: Sequence[EpisodeRecord], warmup_episodes: int = 0) -> EpisodeRecord:
    """The highest-reward record on the search split after the first ``warmup_episodes`` (random exploration);
    all records compete if none is past the warm-up."""
    return best_record(_learned(records, warmup_episodes), "reward")


def _learned(records: Sequence[EpisodeRecord], warmup_episodes: int) -> Sequence[EpisodeRecord]:
    learned = [r for r in records if r.episode is None or r.episode >= warmup_episodes]
    return learned or records


#: The highest-reward distinct plans on the search split that ``select_plan`` scores again on all of val.
RESCORED_CANDIDATES = 4


class Selection(NamedTuple):
    """The search's selected plan: ``record`` (its episode; figures on the search split), its score and reward on the
    whole validation split (which chose it among ``candidates``, each with its val score and reward), and its
    test-split score (what is reported)."""

    record: EpisodeRecord
    val: PlanScore
    val_reward: float
    test: PlanScore
    candidates: tuple[tuple[EpisodeRecord, PlanScore, float], ...]


def ranked_plans(records: Sequence[EpisodeRecord], warmup_episodes: int, count: int) -> list[EpisodeRecord]:
    """The ``count`` highest-reward distinct plans on the search split after the warm-up, best first (each plan's
    first record of its best reward)."""
    ranked: list[EpisodeRecord] = []
    for record in sorted(_learned(records, warmup_episodes), key=CRITERIA["reward"][1]):
        if len(ranked) == count:
            break
        if all(r.plan != record.plan for r in ranked):
            ranked.append(record)
    return ranked


def select_plan(records: Sequence[EpisodeRecord], warmup_episodes: int, objective: Objective,
                score: Callable[[QuantPlan, str], PlanScore], candidates: int = RESCORED_CANDIDATES) -> Selection:
    """The ``candidates`` highest-reward distinct plans on the search split after the warm-up, re-scored with
    ``score(plan, split)`` on ``val``; the highest reward there wins (ties: the better one on the search split),
    and is scored on ``test``."""
    rescored = []
    for record in ranked_plans(records, warmup_episodes, candidates):
        val = score(record.plan, "val")
        rescored.append((record, val, objective.reward(val.accuracy, record.cost, val.kl)))
    chosen, val, reward = max(rescored, key=lambda c: c[2])  # max keeps the first of equals: the search split's order
    return Selection(chosen, val, reward, score(chosen.plan, "test"), tuple(rescored))


def tile_widths(weight_bits: Sequence[int], tile_rows: int) -> int:
    """How many distinct tile widths the overlay runs a layer at (its kernels sorted by bits into Dm-row tiles)."""
    from autoq.overlay.tiling import tile_rows as cut

    return len(set(cut(list(weight_bits), tile_rows).tile_bits.tolist()))


def pareto_front(records: Sequence[EpisodeRecord], cost: Callable[[EpisodeRecord], float]) -> list[EpisodeRecord]:
    """The records no other record beats on both accuracy (higher) and ``cost`` (lower), by increasing cost.

    Of records with equal accuracy and cost, only the earliest episode is kept.
    """
    front: list[EpisodeRecord] = []
    for record in sorted(records, key=lambda r: (cost(r), -r.accuracy, r.episode)):
        if not front or record.accuracy > front[-1].accuracy:
            front.append(record)
    return front


class ResultsWriter:
    """Writes one search's results folder ``out_dir`` (see the module docstring) as often as asked, each file only
    when its content changed since this writer last wrote it; a plot is rendered only when its data changed."""

    def __init__(self, out_dir: str | Path, network: NetworkSpec) -> None:
        self.out = Path(out_dir)
        self.network = network
        self._written: dict[str, Hashable] = {}  # file name -> what its content was made from, when this writer wrote it
        self.writes = 0  # files written (for tests and profiles)

    def write(self, records: Sequence[EpisodeRecord], run: RunReport | None = None, final: FinalReport | None = None,
              best_test_accuracy: float | None = None, selection: Selection | None = None) -> dict[str, Path]:
        """Bring the folder up to date with ``records``; returns every results file by role.

        ``run`` is listed at the top of ``summary.md`` and in ``best_plans.json``; ``final`` is the report
        ``autoq.host.export.finalize`` wrote to ``final/final.json``; ``selection`` is ``select_plan``'s choice
        (without it: the highest-reward record after the warm-up, with ``best_test_accuracy`` its test accuracy).
        """
        network = self.network
        if not records:
            raise AutoQError("no episodes to write results for")
        for record in records:
            if record.episode is None:
                raise AutoQError(f"an outcome of plan {record.plan.hash} is not placed in a search (no episode number)")
            record.plan.check(network)
            if record.measurement.plan_hash != record.plan.hash:
                raise AutoQError(f"episode {record.episode}: its measurement is of plan {record.measurement.plan_hash}, not {record.plan.hash}")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AutoQError(f"cannot create results folder {self.out}: {exc.strerror}") from None
        info = run.rows() if run is not None else {}
        written: dict[str, Path] = {}

        warmup = run.warmup_episodes if run is not None else 0
        best = {name: best_record(records, name) for name in CRITERIA}
        overall = best["reward"]
        best["reward"] = selected_record(records, warmup) if selection is None else selection.record
        if selection is not None:
            best_test_accuracy = selection.test.accuracy
        best_index: dict[str, dict[str, object]] = {}  # criterion -> its best plan's file and figures
        split = run.episode_split if run is not None else "val"
        index = {"network": network.name, "network_hash": network.hash, "run": info, "accuracy_split": split,
                 "best_reward_test_accuracy": best_test_accuracy, "best": best_index}
        for name, record in best.items():
            path = self.out / f"best_{name}.plan.json"
            written[f"best_{name}"] = self._text(path.name, record.plan.to_json)
            best_index[name] = {"meaning": CRITERIA[name][0], "plan_file": path.name, **_figures(network, record)}
        written["best_plans"] = self._text("best_plans.json", lambda: json.dumps(index, indent=1) + "\n")
        written["episodes"] = self._text("episodes.csv", lambda: _csv(network, records))

        fronts = {}
        for cost_name, (label, scale, cost) in COSTS.items():
            fronts[cost_name] = front = pareto_front(records, cost)
            written[f"pareto_{cost_name}_csv"] = self._text(f"pareto_{cost_name}.csv", partial(_csv, network, front))
            plotted = (network.name, split, tuple((cost(r), r.accuracy) for r in records), tuple(r.episode for r in front))
            written[f"pareto_{cost_name}_png"] = self._bytes(
                f"pareto_{cost_name}.png", plotted,
                partial(_pareto_png, records, front, cost, label, scale, network.name, split),
            )
        top = best["reward"]
        written["heatmap"] = self._bytes("bits_heatmap.png", (network.hash, network.name, top.episode, top.plan.hash),
                                         lambda: _heatmap_png(network, top))
        passed_over = overall if overall.episode is not None and overall.episode < warmup else None
        written["summary"] = self._text(
            "summary.md", lambda: _summary_md(network, records, best, fronts, info, written, final, best_test_accuracy,
                                              passed_over, run, selection)
        )
        written["summary_json"] = self._text(
            SUMMARY_JSON, lambda: json.dumps(summary_dict(network, records, top, run, final, best_test_accuracy, passed_over,
                                                          selection), indent=1) + "\n")
        return written

    def _text(self, name: str, render: Callable[[], str]) -> Path:
        """Write ``render()`` to ``name`` unless this writer already wrote that very text there."""
        text = render()
        return self._put(name, text, lambda: text.encode())

    def _bytes(self, name: str, made_from: Hashable, render: Callable[[], bytes]) -> Path:
        """Write ``render()`` to ``name`` unless this writer already wrote it from the same ``made_from``."""
        return self._put(name, made_from, render)

    def _put(self, name: str, made_from: Hashable, render: Callable[[], bytes]) -> Path:
        path = self.out / name
        if self._written.get(name) != made_from or not path.exists():
            atomic_write_bytes(path, render())
            self._written[name] = made_from
            self.writes += 1
        return path


def write_results(out_dir: str | Path, network: NetworkSpec, records: Sequence[EpisodeRecord], run: RunReport | None = None,
                  final: FinalReport | None = None, best_test_accuracy: float | None = None,
                  selection: Selection | None = None) -> dict[str, Path]:
    """Write the results folder once (see ``ResultsWriter.write``); returns the written files by role."""
    return ResultsWriter(out_dir, network).write(records, run, final, best_test_accuracy, selection)


SUMMARY_JSON = "summary.json"


def summary_dict(network: NetworkSpec, records: Sequence[EpisodeRecord], selected: EpisodeRecord, run: RunReport | None,
                 final: FinalReport | None, test_accuracy: float | None, passed_over: EpisodeRecord | None,
                 selection: Selection | None = None) -> dict:
    """``summary.json``: the machine-readable twin of ``summary.md``. Every accuracy's key names its split
    (``val_subset_*``: the search split, ``val_*``, ``test_*``; a bare ``reward`` is on ``episode_split``);
    ``splits`` gives their image counts."""
    rows = run.tile_rows if run is not None else 1
    split = run.episode_split if run is not None else "val"
    m = selected.measurement
    out: dict = {"network": network.name, "network_hash": network.hash, "episodes_run": len(records),
                 "episode_split": split}
    if run is not None:
        budget = run.reward.budget
        out.update({
            "task": run.task, "agent": run.agent, "seed": run.seed, "episodes": run.episodes, "backend": run.backend,
            "warmup_episodes": run.warmup_episodes, "tile_rows": rows, "bits": [run.min_bits, run.max_bits],
            "reward": run.reward.to_dict(), "sensitivity": run.sensitivity, "splits": dict(run.split_images or {}),
            "budget": None if budget is None else {"metric": budget.metric, "value": budget.value, "relative": budget.relative,
                                                   "limit": run.budget_limit},
            "float": {"val_accuracy": run.full_accuracy_val, "test_accuracy": run.full_accuracy_test},
            "uniform": {"bits": run.max_bits, "val_accuracy": run.uniform_accuracy_val, "test_accuracy": run.uniform_accuracy_test,
                        "latency_s": run.reference.latency_s, "energy_j": run.reference.energy_j},
        })
    mixed = [tile_widths(lp.weight_bits, rows) for lp in selected.plan.layers]
    scored = {f"{split}_accuracy": selected.accuracy, f"{split}_kl": selected.kl, f"{split}_loss": selected.loss,
              f"{split}_reward": selected.reward, "test_accuracy": test_accuracy}
    if selection is not None:
        scored |= {"val_accuracy": selection.val.accuracy, "val_kl": selection.val.kl, "val_loss": selection.val.loss,
                   "val_reward": selection.val_reward, "test_kl": selection.test.kl, "test_loss": selection.test.loss}
    out["selected"] = {
        "episode": selected.episode, "plan_hash": selected.plan.hash, **scored, "latency_s": m.latency_s,
        "energy_j": m.energy_j, "proposal_met_budget": selected.proposal_fits,
        "avg_weight_bits": selected.plan.average_weight_bits(network), "avg_act_bits": selected.plan.average_act_bits(),
        "tile_widths": {lp.name: n for lp, n in zip(selected.plan.layers, mixed)},
        "mixed_layers_fraction": sum(n > 1 for n in mixed) / len(mixed),
    }
    out["candidates"] = [] if selection is None else [
        {"episode": r.episode, "plan_hash": r.plan.hash, f"{split}_reward": r.reward, "val_accuracy": val.accuracy,
         "val_reward": reward} for r, val, reward in selection.candidates]
    out["warmup_best"] = None if passed_over is None else {
        "episode": passed_over.episode, "reward": passed_over.reward, f"{split}_accuracy": passed_over.accuracy,
        "why_not_selected": "warm-up episodes are random exploration; the plan is selected among learning episodes"}
    out["proposals_met_budget"] = sum(r.proposal_fits for r in records) / len(records)
    out["final"] = None if final is None else final.to_dict()
    return out


# -- tables -----------------------------------------------------------------------------------------------------------
class Figures(TypedDict):
    """One episode's figures, as ``_figures`` gives them (a row of ``episodes.csv``, an entry of ``best_plans.json``)."""

    episode: int | None
    agent: str
    plan_hash: str
    accuracy: float
    latency_s: float
    energy_j: float
    avg_power_w: float
    reward: float
    avg_weight_bits: float
    avg_act_bits: float
    source: Source


def _figures(network: NetworkSpec, r: EpisodeRecord) -> Figures:
    m = r.measurement
    return {
        "episode": r.episode,
        "agent": r.agent,
        "plan_hash": r.plan.hash,
        "accuracy": r.accuracy,
        "latency_s": m.latency_s,
        "energy_j": m.energy_j,
        "avg_power_w": m.avg_power_w,
        "reward": r.reward,
        "avg_weight_bits": r.plan.average_weight_bits(network),
        "avg_act_bits": r.plan.average_act_bits(),
        "source": m.provenance.source,
    }


def _csv(network: NetworkSpec, records: Sequence[EpisodeRecord]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, EPISODE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in _figures(network, record).items()})
    return out.getvalue()


def _summary_md(network, records, best, fronts, info, written, final, best_test_accuracy, passed_over, run,
                selection) -> str:
    top = best["reward"]
    f = _figures(network, top)
    tile_rows = run.tile_rows if run is not None else 1
    split = run.episode_split if run is not None else "val"
    images = run.images if run is not None else str
    lines = [f"# Search results: {network.name}", ""]
    if info:
        lines += ["| run | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info.items()), ""]
    lines += [
        f"{len(records)} episodes ({', '.join(sorted({r.agent for r in records}))}); network {network.name} "
        f"({network.hash}, {len(network)} layers, {network.total_weights} weights). Episode accuracies (the tables, "
        f"fronts and `episodes.csv`) are on {images(split)}, which the search scored every episode on; the selected "
        f"plan is also given on {images('val')}, which chose it, and on {images('test')}, kept apart from both.",
        "",
        f"## Selected plan (highest reward after the warm-up): episode {top.episode}, plan {top.plan.hash}",
        "",
        *([f"- warm-up episode {passed_over.episode} scored a higher reward ({passed_over.reward:.6g}, {split} accuracy "
           f"{passed_over.accuracy:.4f}) but is not selected: warm-up episodes are random exploration"]
          if passed_over is not None else []),
        *_selected_md(top, selection, split, images),
        *([f"- **test accuracy: {best_test_accuracy:.4f}** on {images('test')}"] if best_test_accuracy is not None
          else []),
        f"- latency: {f['latency_s'] * 1e3:.4f} ms",
        f"- energy: {f['energy_j'] * 1e3:.4f} mJ",
        f"- average weight bits: {f['avg_weight_bits']:.3f}; average activation bits: {f['avg_act_bits']:.3f}",
        f"- reward on {split}: {top.reward:.6g}; cost measured by: {f['source']}; "
        f"{_how_budget_met(top)}",
        f"- distinct tile widths per layer ({tile_rows}-row tiles): "
        + ", ".join(f"{lp.name} {tile_widths(lp.weight_bits, tile_rows)}" for lp in top.plan.layers),
        f"- plan: `{written['best_reward'].name}`; kernel bit-widths: `{written['heatmap'].name}`",
        "",
        *_final_md(final, images),
        f"## Best by criterion, on {images(split)}",
        "",
        f"| criterion | episode | {split} accuracy | latency (ms) | energy (mJ) | avg weight bits | avg act bits "
        "| reward | plan |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, record in best.items():
        g = _figures(network, record)
        lines.append(
            f"| {CRITERIA[name][0]} | {record.episode} | {record.accuracy:.4f} | {g['latency_s'] * 1e3:.4f} | "
            f"{g['energy_j'] * 1e3:.4f} | {g['avg_weight_bits']:.3f} | {g['avg_act_bits']:.3f} | {record.reward:.6g} | "
            f"`{written['best_' + name].name}` |"
        )
    for cost_name, front in fronts.items():
        label, scale, cost = COSTS[cost_name]
        lines += [
            "",
            f"## Pareto front: {images(split)} accuracy against {cost_name} ({len(front)} of {len(records)} episodes)",
            "",
            f"`pareto_{cost_name}.csv`, `pareto_{cost_name}.png`",
            "",
            f"| {label} | {split} accuracy | episode | avg weight bits |",
            "|---|---|---|---|",
            *(
                f"| {cost(r) * scale:.4f} | {r.accuracy:.4f} | {r.episode} | {r.plan.average_weight_bits(network):.3f} |"
                for r in front
            ),
        ]
    return "\n".join(lines) + "\n"


def _how_budget_met(outcome: EpisodeOutcome) -> str:
    if outcome.plan == outcome.proposed:
        return "proposed within the budget"
    if outcome.proposal_fits:
        return "proposed within the budget, raised to it by the environment (the slack the proposal left)"
    return "lowered to the budget by the environment"


def _selected_md(top: EpisodeRecord, selection: Selection | None, split: str, images: Callable[[str], str]) -> list[str]:
    """The selected plan's accuracies: on the split that scored it, and on all of val, which selected it."""
    if selection is None:
        return [f"- validation accuracy (selected it): {top.accuracy:.4f}; KL to the float model {top.kl:.4g}"]
    return [
        f"- {images(split)} accuracy (scored every episode): {top.accuracy:.4f}; KL to the float model {top.kl:.4g}",
        f"- {images('val')} accuracy (selected it among the {len(selection.candidates)} best re-scored there): "
        f"{selection.val.accuracy:.4f}; KL {selection.val.kl:.4g}; reward {selection.val_reward:.6g}",
        "- candidates (episode: reward on " + split + " -> on val): "
        + ", ".join(f"{r.episode}: {r.reward:.6g} -> {reward:.6g}" for r, _, reward in selection.candidates),
    ]


def _final_md(final: FinalReport | None, images: Callable[[str], str]) -> list[str]:
    if final is None:
        return []
    exports = (("onnx", final.onnx), ("hls4ml", final.hls4ml))
    exported = ", ".join(f"{what}: `{FINAL_DIR}/{Path(where).name}`" for what, where in exports if where)
    val = ""
    if final.val_accuracy_before is not None and final.val_accuracy_after is not None:
        val = f"; {images('val')} accuracy {final.val_accuracy_before:.4f} before, {final.val_accuracy_after:.4f} after"
    return [
        f"## Final plan: fine-tuned {final.finetune_steps} steps; the {final.exported} model exported (chosen on val)",
        "",
        f"- {images(final.accuracy_split)} accuracy: {final.accuracy_before:.4f} before the fine-tune, "
        f"**{final.accuracy_after:.4f} after**{val}",
        f"- plan {final.plan_hash}: `{FINAL_DIR}/plan.json`; {exported or 'nothing exported'}",
        "",
    ]


# -- plots ------------------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _pareto_png(records, front, cost, label, scale, title, split) -> bytes:
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    ax.scatter([cost(r) * scale for r in records], [r.accuracy for r in records], s=14, c="0.65", label="episodes")
    xs, ys = [cost(r) * scale for r in front], [r.accuracy for r in front]
    ax.step(xs, ys, where="post", color="tab:red", linewidth=1.2)
    ax.scatter(xs, ys, s=28, color="tab:red", zorder=3, label=f"Pareto front ({len(front)})")
    ax.set_xlabel(label)
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(f"{title}: accuracy against {label.split(' ')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _png(fig)


def _heatmap_png(network: NetworkSpec, record: EpisodeRecord) -> bytes:
    import matplotlib
    import numpy as np
    from matplotlib.colors import BoundaryNorm

    width = max(layer.c_out for layer in network)
    bits = np.full((len(network), width), np.nan)
    for row, lp in enumerate(record.plan.layers):
        bits[row, : len(lp.weight_bits)] = lp.weight_bits
    fig = _figure(min(16.0, 4.0 + width / 12), min(20.0, 1.6 + 0.32 * len(network)))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].resampled(8).with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(bits), aspect="auto", interpolation="nearest", cmap=cmap,
                      norm=BoundaryNorm(np.arange(0.5, 9.5), cmap.N))
    ax.set_yticks(range(len(network)), [f"{lp.name} (a{lp.act_bits})" for lp in record.plan.layers], fontsize=7)
    ax.set_xlabel("kernel (output channel)")
    ax.set_title(
        f"{network.name}: weight bits per kernel, episode {record.episode} "
        f"(avg {record.plan.average_weight_bits(network):.2f} bits)", fontsize=9
    )
    fig.colorbar(image, ax=ax, ticks=range(1, 9), label="weight bits")
    return _png(fig)
