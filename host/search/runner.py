"""The search loop: one agent, one environment, a checkpoint after every episode, exact ``resume``.

``run_search`` is the library entry behind ``autoq search``: it loads the task, estimates (or reads from the
folder's cache) the per-kernel Fisher sensitivity, wraps the evaluator and the cost backend (recording when asked)
in a ``QuantEnv``, runs ``SearchRunner``, writes the results folder, then fine-tunes the selected plan and exports
it into ``final/`` (``autoq.host.export.finalize``) and adds it to ``summary.md`` and ``summary.json``. The
selected plan is chosen after the agent's warm-up episodes: episodes are scored on a seeded subset of the
validation split, the best few re-scored on all of it (``autoq.host.results.select_plan``), the winner reported
on test.
The export comes after the last checkpoint, and resuming a finished search reuses a finished export.

``--resume --episodes N`` with N above the stored budget extends the search (finished or not) from its checkpoint:
deterministic, and identical to an uninterrupted N-episode search for the agents whose schedule does not depend
on the budget (random, uniform, greedy); AutoQ and HAQ follow the N-episode warm-up and noise schedule from the
episode they resume at, which the summary says. A fresh search that fails before its first checkpoint removes the
folders, history and trace file it created.
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Protocol

import numpy as np

from autoq.common.backend import DEFAULT_BACKEND
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.export.finalize import DEFAULT_FINAL_FINETUNE_STEPS, FinalReport, completed_final, finalize
from autoq.host.results import EpisodeRecord, ResultsWriter, RunReport, Selection, select_plan, selected_record

from .agents.base import AGENTS, Agent, agent_class, make_agent
from .checkpoint import (CHECKPOINT_NAME, CheckpointWriter, capture_rng, history_path, load_checkpoint, restore_rng,
                         seed_everything)
from .env import EpisodeOutcome, Proposal, QuantEnv, check_bit_range
from .parallel import BatchScorer, RayOptions, board_count
from .rewards import BudgetSpec, RewardSetting, SearchError

if TYPE_CHECKING:
    from autoq.host.evaluate import Evaluator
    from autoq.host.tasks import Task

#: Episodes of a search that names none (``autoq search`` gives bundled tasks their own: ``search_cmd.TASK_EPISODES``);
#: 1000 AutoQ episodes on digits with the model backend take a few minutes on 2 cores.
DEFAULT_EPISODES = 1000
DEFAULT_REWARD = RewardSetting.resource_constrained(BudgetSpec("latency", 0.4, True))


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; a resumed search must have the same."""

    agent: str = "autoq"
    model: str = "digits"
    data: str | None = None
    arch: str | None = None
    backend: str = DEFAULT_BACKEND
    episodes: int = DEFAULT_EPISODES
    seed: int = 0
    reward: RewardSetting = field(default=DEFAULT_REWARD)
    finetune_steps: int = 0
    final_finetune_steps: int = DEFAULT_FINAL_FINETUNE_STEPS
    min_bits: int = 2
    max_bits: int | None = None  # None: the backend overlay's max_bits
    batch: int | None = None  # plans proposed, then scored at once, per learning step; None: one per board of the backend

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise SearchError(f"unknown agent {self.agent!r}; choose one of {', '.join(AGENTS)}")
        if self.episodes < 1:
            raise SearchError(f"episodes must be >= 1, got {self.episodes}")
        if self.finetune_steps < 0 or self.final_finetune_steps < 0:
            raise SearchError(f"fine-tune steps must be >= 0, got {self.finetune_steps} and {self.final_finetune_steps} (final)")
        check_bit_range(self.min_bits, self.max_bits)
        if self.batch is not None and self.batch < 1:
            raise SearchError(f"batch must be >= 1, got {self.batch}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reward": self.reward.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        return cls(**{**data, "reward": RewardSetting.from_dict(data["reward"])})


class SearchListener(Protocol):
    """Told where a search stands; a recording backend marks each measurement with it (``autoq.host.traces``)."""

    def search_started(self, run_id: str, resumed_at: int | None) -> None: ...

    def episode_started(self, episode: int) -> None: ...

    def checkpointed(self, next_episode: int) -> None: ...


class SearchRunner:
    """Runs ``agent`` on ``env`` for ``episodes`` episodes (fewer if the agent finishes), checkpointing after each.

    ``settings`` (plain data) identifies the search; resuming a checkpoint written with other settings is refused,
    except for a larger ``episodes`` budget, which extends the search (recorded in ``extensions``).
    Call ``seed_everything`` before building the environment and the agent, so a fresh run and a resumed one start
    from the same weights before the checkpoint overwrites them. The environment's objective (its reference
    measurements) is checkpointed too, so a resumed run on a noisy board scores as the original run did.

    With a ``scorer`` (``autoq.host.search.parallel``; one is made for a ``batch`` above 1), each step is a batch:
    the agent proposes up to ``batch`` plans, the scorer evaluates them at once, the agent learns from them in
    episode order, and the checkpoint follows the batch; for a given seed and batch the search is deterministic, and
    batch 1 is the sequential search.
    """

    def __init__(self, env: QuantEnv, agent: Agent, episodes: int, checkpoint: str | Path, settings: Mapping[str, Any],
                 listener: SearchListener | None = None, batch: int = 1, scorer: BatchScorer | None = None) -> None:
        if batch < 1:
            raise SearchError(f"batch must be >= 1, got {batch}")
        self.env = env
        self.agent = agent
        self.batch = batch
        self.scorer = scorer if scorer is not None or batch == 1 else BatchScorer(env)
        self.episodes = episodes
        self.checkpoint = Path(checkpoint)
        self.settings = dict(settings)
        self.listener = listener
        self.history: list[EpisodeRecord] = []
        self.next_episode = 0
        self.run_id = ""
        self.extensions: list[dict[str, int]] = []  # {"at": episode, "from": budget, "to": budget}

    def run(self, *, resume: bool = False, progress: bool = True) -> list[EpisodeRecord]:
        if resume:
            writer = CheckpointWriter(self.checkpoint, self._restore())
        elif self.checkpoint.exists():
            raise SearchError(f"{self.checkpoint} already holds a search: pass --resume to continue it, or choose another --out")
        else:
            writer = CheckpointWriter(self.checkpoint)
            self.run_id = uuid.uuid4().hex  # from the OS, not the seeded generators
        if self.listener is not None:
            self.listener.search_started(self.run_id, self.next_episode if resume else None)
        from tqdm import tqdm

        with tqdm(total=self.episodes, initial=self.next_episode, desc=self.agent.name, unit="ep", disable=not progress,
                  dynamic_ncols=True) as bar:
            while self.next_episode < self.episodes and not self.agent.finished():
                outcomes = self._play()
                if not outcomes:
                    break
                for outcome in outcomes:
                    self.history.append(outcome.placed(self.next_episode, self.agent.name))
                    self.next_episode += 1
                self._save(writer)
                if self.listener is not None:
                    self.listener.checkpointed(self.next_episode)
                best = selected_record(self.history, self.agent.warmup_episodes)
                bar.set_postfix(reward=f"{outcomes[-1].reward:.4f}", best_acc=f"{best.accuracy:.4f}",
                                best_lat_ms=f"{best.measurement.latency_s * 1e3:.4g}", refresh=False)
                bar.update(len(outcomes))
        return self.history

    def _play(self) -> list[EpisodeOutcome]:
        """The next episode; with a scorer the next batch: up to ``batch`` proposals (fewer when the budget or the
        agent's candidates run out), scored at once, learnt from in episode order."""
        if self.scorer is None:
            if self.listener is not None:
                self.listener.episode_started(self.next_episode)
            return [self.agent.run_episode(self.env, self.next_episode)]
        proposals: list[tuple[int, Proposal]] = []
        for episode in range(self.next_episode, min(self.next_episode + self.batch, self.episodes)):
            if self.agent.finished():
                break
            if self.listener is not None:
                self.listener.episode_started(episode)
            proposal = self.agent.propose(self.env, episode)
            if proposal is None:
                break
            proposals.append((episode, proposal))
        outcomes = self.scorer.evaluate(proposals)
        for (episode, proposal), outcome in zip(proposals, outcomes):
            self.agent.learn(self.env, episode, proposal, outcome)
        return outcomes

    def _save(self, writer: CheckpointWriter) -> None:
        writer.save({
            "settings": self.settings,
            "run_id": self.run_id,
            "episodes": self.episodes,
            "extensions": self.extensions,
            "next_episode": self.next_episode,
            "objective": self.env.objective,
            "agent": self.agent.state_dict(),
            "env": self.env.state_dict(),
            "rng": capture_rng(),
            "history": self.history,
            "best_plan": selected_record(self.history, self.agent.warmup_episodes).plan.to_dict(),
        })

    def _restore(self) -> dict[str, Any]:
        payload = load_checkpoint(self.checkpoint)
        stored = {k: v for k, v in payload["settings"].items() if k != "episodes"}
        if stored != {k: v for k, v in self.settings.items() if k != "episodes"}:
            raise SearchError(f"{self.checkpoint} was written by another search: {_differences(payload['settings'], self.settings)}")
        budget = int(payload["episodes"])
        if self.episodes < budget:
            raise SearchError(f"{self.checkpoint} holds a search of {budget} episodes: --resume continues or extends it "
                              f"(--episodes above {budget}), it cannot shorten it to {self.episodes}")
        self.agent.load_state_dict(payload["agent"])
        self.env.load_state_dict(payload["env"])
        self.env.objective = payload["objective"]
        restore_rng(payload["rng"])
        self.history = list(payload["history"])
        self.next_episode = int(payload["next_episode"])
        self.run_id = str(payload["run_id"])
        self.extensions = list(payload["extensions"])
        if self.episodes > budget:
            self.extensions.append({"at": self.next_episode, "from": budget, "to": self.episodes})
        return payload


def _differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    keys = sorted(set(stored) | set(given))
    return "; ".join(f"{k}: stored {stored.get(k)!r}, given {given.get(k)!r}" for k in keys if stored.get(k) != given.get(k))


def resolve_config(out_dir: str | Path, overrides: Mapping[str, Any], resume: bool) -> SearchConfig:
    """The search to run: ``SearchConfig(**overrides)``, or with ``resume`` the stored one, which ``overrides`` may
    repeat but not change, except ``episodes``, which may be raised to extend the search."""
    if not resume:
        return SearchConfig(**overrides)
    stored = SearchConfig.from_dict(load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)["settings"])
    changed = {k: v for k, v in overrides.items() if getattr(stored, k) != v and k != "episodes"}
    if changed:
        detail = ", ".join(f"{k}={v!r} (stored: {getattr(stored, k)!r})" for k, v in changed.items())
        raise SearchError(f"--resume continues the search stored in {out_dir} with its own settings; drop {detail}")
    episodes = overrides.get("episodes", stored.episodes)
    if episodes < stored.episodes:
        raise SearchError(f"--resume --episodes {episodes}: the search stored in {out_dir} runs {stored.episodes} episodes; "
                          f"--episodes can extend it, not shorten it")
    return dataclasses.replace(stored, episodes=episodes)


def describe_extensions(agent: str, extensions: list[dict[str, int]]) -> str:
    """How a search's budget was extended, for its summary."""
    notes = [f"extended from {e['from']} to {e['to']} episodes at episode {e['at']}" for e in extensions]
    if extensions and agent_class(agent).budget_scheduled:
        last = extensions[-1]
        notes.append(f"{agent}'s warm-up and exploration noise follow the {last['to']}-episode schedule from episode "
                     f"{extensions[0]['at']} on, so the result differs from an uninterrupted {last['to']}-episode search")
    return "; ".join(notes)


def kernel_weight_scales(model: Any, network: NetworkSpec) -> dict[str, np.ndarray]:
    """Each kernel's largest absolute weight, for the layers of ``network`` that are modules of ``model``."""
    modules = dict(model.named_modules())
    scales = {}
    for layer in network:
        weight = getattr(modules.get(layer.name), "weight", None)
        if weight is not None and weight.shape[0] == layer.c_out:
            scales[layer.name] = weight.detach().reshape(layer.c_out, -1).abs().amax(1).double().numpy()
    return scales


class SearchResult(NamedTuple):
    config: SearchConfig
    records: list[EpisodeRecord]
    files: dict[str, Path]
    best: EpisodeRecord
    best_test_accuracy: float  # the best plan's accuracy on the test split (``best.accuracy`` is on the search split)
    final: FinalReport  # final/final.json: the best plan's accuracy before and after the final fine-tune, exports
    selection: Selection  # how the best plan was chosen: its val and test scores, the candidates re-scored on val
    split_images: dict[str, int]  # images of each held-out split (val_subset, val, test)


def run_search(config: SearchConfig, out_dir: str | Path, *, resume: bool = False, record: str | Path | None = None,
               progress: bool = True, hls4ml: bool = False, given_episodes: int | None = None,
               ray: RayOptions | None = None) -> SearchResult:
    """Run (or resume) the search ``config`` describes, write its results folder ``out_dir``, then fine-tune the best
    plan for ``config.final_finetune_steps`` steps and export it (ONNX, and an hls4ml project with ``hls4ml``).

    ``given_episodes`` is an episode count the user gave explicitly, which an agent that sets its own count is
    warned to ignore (once the bit range, which depends on the backend's overlay, is known). With ``ray``, a pool's
    boards are Ray actors and accuracy is scored on Ray workers (``autoq.host.search.raycluster``); the search, its
    checkpoint and its trace stay here. A ``config.batch`` of None becomes the backend's board count."""
    from autoq.host.advice import warn_ignored_episodes
    from autoq.host.backends.record import RecordingBackend, open_backend_recording
    from autoq.common.backend import open_backend
    from autoq.host.evaluate import HELD_OUT_SPLITS

    from .sensitivity import SENSITIVITY_NAME, task_sensitivity

    out = Path(out_dir)
    checkpoint = out / CHECKPOINT_NAME
    if not resume and checkpoint.exists():
        raise SearchError(f"{checkpoint} already holds a search: pass --resume to continue it, or choose another --out")
    task, evaluator = search_evaluator(config)
    evaluator.check_finetune(config.finetune_steps)  # refused here, not at the first episode or the export
    if hls4ml:
        from autoq.host.export.hls4ml_export import check_hls4ml_exportable

        check_hls4ml_exportable(evaluator.qmodel)
    scales = evaluator.kernel_scales()  # per-kernel float weights, BatchNorm folded; a torch or an ONNX model
    created = _FreshFiles(out, record, resume)
    if not resume and not (out / SENSITIVITY_NAME).exists():
        created.files.append(out / SENSITIVITY_NAME)
    out.mkdir(parents=True, exist_ok=True)
    cluster = None
    try:
        sensitivity = task_sensitivity(evaluator, out)  # once per task: cached in the folder by its key
        if ray is not None:
            try:
                from .raycluster import RayCluster
            except ImportError as exc:
                raise SearchError(f"--ray needs Ray (pip install 'autoq-hil[ray]'): {exc}") from None
            cluster = RayCluster.connect(ray.address)
        backend = open_backend_recording(config.backend, record, search=True,
                                         opener=open_backend if cluster is None else cluster.open_backend)
    except BaseException:
        if cluster is not None:
            cluster.close()
        created.remove()
        raise
    if config.batch is None:
        config = dataclasses.replace(config, batch=board_count(backend))
    assert config.batch is not None  # for mypy: just set
    failed_before_checkpoint = False
    try:
        env = QuantEnv(task.network, evaluator, backend, config.reward, min_bits=config.min_bits, max_bits=config.max_bits,
                       finetune_steps=config.finetune_steps, kernel_scales=scales, sensitivity=sensitivity)
        warn_ignored_episodes(config.agent, given_episodes, env.min_bits, env.max_bits)
        agent = make_agent(config.agent, config.episodes, len(task.network), config.seed)
        scorer = None if cluster is None else BatchScorer(env, cluster.evaluators(config, config.batch))
        runner = SearchRunner(env, agent, config.episodes, checkpoint, config.to_dict(),
                              listener=backend if isinstance(backend, RecordingBackend) else None,
                              batch=config.batch, scorer=scorer)
        records = runner.run(resume=resume, progress=progress)
        objective = env.objective
        uniform = QuantPlan.uniform(task.network, env.max_bits, env.max_bits)
        split_images = {split: evaluator.split_size(split) for split in HELD_OUT_SPLITS}
        run = RunReport(
            config.agent, task.name, backend.describe().uri, config.seed, len(records), config.episodes, config.reward,
            env.min_bits, env.max_bits, config.finetune_steps, objective.full_accuracy,
            evaluator.full_precision_accuracy(split="test"), objective.reference,
            None if record is None else str(record), objective.limit, describe_extensions(config.agent, runner.extensions),
            agent.warmup_episodes, env.tile_rows, evaluator.accuracy(uniform, config.finetune_steps),
            evaluator.accuracy(uniform, config.finetune_steps, split="test"), sensitivity.source,
            split_images,
        )
        # scored on the search split, selected on val, reported on test, with the search's own fine-tune setting
        selection = select_plan(records, agent.warmup_episodes, objective,
                                lambda plan, split: evaluator.score(plan, config.finetune_steps, split))
        best, best_test = selection.record, selection.test.accuracy
        results = ResultsWriter(out, task.network)
        results.write(records, run, selection=selection)  # stands if the export is interrupted
    except BaseException:
        failed_before_checkpoint = not checkpoint.exists()
        raise
    finally:
        backend.close()
        if cluster is not None:
            cluster.close()
        if failed_before_checkpoint:
            created.remove()
    final_steps = config.final_finetune_steps if evaluator.trainable else 0  # an ONNX model cannot be fine-tuned
    final = (completed_final(out, best.plan, final_steps, hls4ml)
             or finalize(out, evaluator, best.plan, final_steps, hls4ml).report())
    files = results.write(records, run, final, selection=selection)  # only summary.md changes
    return SearchResult(config, records, files, best, best_test, final, selection, split_images)


def search_evaluator(config: SearchConfig) -> tuple["Task", "Evaluator"]:
    """The task of ``config`` and its ``Evaluator``, built after seeding every generator with ``config.seed`` (so a
    built-in model's random weights are the same wherever it is built: the search, or its Ray workers)."""
    from autoq.host.evaluate import Evaluator
    from autoq.host.tasks import load_task

    seed_everything(config.seed)
    task = load_task(config.model, config.data, config.arch)
    return task, Evaluator.for_task(task)


class _FreshFiles:
    """What a fresh search is about to create (its folders, history sidecar, trace file), so that a search failing
    before its first checkpoint can remove them again; a resumed search removes nothing."""

    def __init__(self, out: Path, record: str | Path | None, resume: bool) -> None:
        self.folders: list[Path] = []
        self.files: list[Path] = []
        if resume:
            return
        folder = out.absolute()
        while not folder.exists():
            self.folders.append(folder)
            folder = folder.parent
        sidecar = history_path(out / CHECKPOINT_NAME)
        if not sidecar.exists():
            self.files.append(sidecar)
        if record is not None and not Path(record).exists():
            trace = Path(record)
            self.files += [trace, trace.with_name(trace.name + "-wal"), trace.with_name(trace.name + "-shm")]

    def remove(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        for folder in self.folders:  # deepest first; only what is empty (this run wrote nothing else there)
            try:
                os.rmdir(folder)
            except OSError:
                break
