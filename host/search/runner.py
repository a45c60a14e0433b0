"""The search loop: one agent, one environment, a checkpoint after every episode, exact ``resume``.

``run_search`` is the library entry behind ``autoq search``: it loads the task, wraps the evaluator and the cost
backend (recording when asked) in a ``QuantEnv``, runs ``SearchRunner``, writes the results folder, then fine-tunes
the best plan and exports it into ``final/`` (``autoq.host.export.finalize``) and adds it to ``summary.md``.
The export comes after the last checkpoint, and resuming a finished search reuses a finished export.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from autoq.common.backend import DEFAULT_BACKEND
from autoq.common.network import NetworkSpec
from autoq.common.plan import MAX_BITS, MIN_BITS
from autoq.host.export.finalize import DEFAULT_FINAL_FINETUNE_STEPS, completed_final, finalize
from autoq.host.results import EpisodeRecord, best_record, write_results

from .agents.autoq import AutoQAgent, AutoQConfig
from .agents.base import AGENTS, Agent
from .agents.baselines import GreedyAgent, RandomAgent, UniformAgent
from .agents.haq import HAQAgent, HAQConfig
from .checkpoint import CHECKPOINT_NAME, CheckpointWriter, capture_rng, load_checkpoint, restore_rng, seed_everything
from .env import QuantEnv
from .rewards import BudgetSpec, RewardSetting, SearchError

#: ``autoq search`` with no arguments: 5-10 minutes on 2 cores for the digits task with the model backend
#: (measured on 2 shared cores: 100 AutoQ episodes in 37 s at load ~1, 200 in 109 s at load ~3.5).
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
    max_bits: int = MAX_BITS

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise SearchError(f"unknown agent {self.agent!r}; choose one of {', '.join(AGENTS)}")
        if self.episodes < 1:
            raise SearchError(f"episodes must be >= 1, got {self.episodes}")
        if self.finetune_steps < 0 or self.final_finetune_steps < 0:
            raise SearchError(f"fine-tune steps must be >= 0, got {self.finetune_steps} and {self.final_finetune_steps} (final)")
        if not MIN_BITS <= self.min_bits <= self.max_bits <= MAX_BITS:
            raise SearchError(f"bit range must satisfy {MIN_BITS} <= min_bits <= max_bits <= {MAX_BITS}, got [{self.min_bits}, {self.max_bits}]")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reward": self.reward.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        return cls(**{**data, "reward": RewardSetting.from_dict(data["reward"])})


def make_agent(name: str, episodes: int, num_layers: int, seed: int) -> Agent:
    if name == "autoq":
        return AutoQAgent(AutoQConfig(episodes), num_layers, seed)
    if name == "haq":
        return HAQAgent(HAQConfig(episodes), num_layers, seed)
    if name == "random":
        return RandomAgent(seed)
    if name == "uniform":
        return UniformAgent()
    if name == "greedy":
        return GreedyAgent()
    raise SearchError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")


class SearchRunner:
    """Runs ``agent`` on ``env`` for ``episodes`` episodes (fewer if the agent finishes), checkpointing after each.

    ``settings`` (plain data) identifies the search; resuming a checkpoint written with other settings is refused.
    Call ``seed_everything`` before building the environment and the agent, so a fresh run and a resumed one start
    from the same weights before the checkpoint overwrites them.
    """

    def __init__(self, env: QuantEnv, agent: Agent, episodes: int, checkpoint: str | Path, settings: Mapping[str, Any]) -> None:
        self.env = env
        self.agent = agent
        self.episodes = episodes
        self.checkpoint = Path(checkpoint)
        self.settings = dict(settings)
        self.history: list[EpisodeRecord] = []
        self.next_episode = 0

    def run(self, *, resume: bool = False, progress: bool = True) -> list[EpisodeRecord]:
        if resume:
            writer = CheckpointWriter(self.checkpoint, self._restore())
        elif self.checkpoint.exists():
            raise SearchError(f"{self.checkpoint} already holds a search: pass --resume to continue it, or choose another --out")
        else:
            writer = CheckpointWriter(self.checkpoint)
        from tqdm import tqdm

        with tqdm(total=self.episodes, initial=self.next_episode, desc=self.agent.name, unit="ep", disable=not progress,
                  dynamic_ncols=True) as bar:
            while self.next_episode < self.episodes and not self.agent.finished():
                outcome = self.agent.run_episode(self.env, self.next_episode)
                self.history.append(EpisodeRecord(
                    self.next_episode, outcome.plan, outcome.accuracy, outcome.measurement, outcome.reward, self.agent.name
                ))
                self.next_episode += 1
                self._save(writer)
                best = best_record(self.history, "reward")
                bar.set_postfix(reward=f"{outcome.reward:.4f}", best_acc=f"{best.accuracy:.4f}",
                                best_lat_ms=f"{best.measurement.latency_s * 1e3:.4g}", refresh=False)
                bar.update(1)
        return self.history

    def _save(self, writer: CheckpointWriter) -> None:
        writer.save({
            "settings": self.settings,
            "next_episode": self.next_episode,
            "agent": self.agent.state_dict(),
            "env": self.env.state_dict(),
            "rng": capture_rng(),
            "history": self.history,
            "best_plan": best_record(self.history, "reward").plan.to_dict(),
        })

    def _restore(self) -> dict[str, Any]:
        payload = load_checkpoint(self.checkpoint)
        if payload["settings"] != self.settings:
            raise SearchError(f"{self.checkpoint} was written by another search: {_differences(payload['settings'], self.settings)}")
        self.agent.load_state_dict(payload["agent"])
        self.env.load_state_dict(payload["env"])
        restore_rng(payload["rng"])
        self.history = list(payload["history"])
        self.next_episode = int(payload["next_episode"])
        return payload


def _differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    keys = sorted(set(stored) | set(given))
    return "; ".join(f"{k}: stored {stored.get(k)!r}, given {given.get(k)!r}" for k in keys if stored.get(k) != given.get(k))


def resolve_config(out_dir: str | Path, overrides: Mapping[str, Any], resume: bool) -> SearchConfig:
    """The search to run: ``SearchConfig(**overrides)``, or with ``resume`` the stored one, which ``overrides`` may
    repeat but not change."""
    if not resume:
        return SearchConfig(**overrides)
    stored = SearchConfig.from_dict(load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)["settings"])
    changed = {k: v for k, v in overrides.items() if getattr(stored, k) != v}
    if changed:
        detail = ", ".join(f"{k}={v!r} (stored: {getattr(stored, k)!r})" for k, v in changed.items())
        raise SearchError(f"--resume continues the search stored in {out_dir} with its own settings; drop {detail}")
    return stored


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
    best_test_accuracy: float  # the best plan's accuracy on the test split (``best.accuracy`` is on val, which chose it)
    final: dict[str, Any]  # final/final.json: the best plan's accuracy before and after the final fine-tune, exports


def run_search(config: SearchConfig, out_dir: str | Path, *, resume: bool = False, record: str | Path | None = None,
               progress: bool = True, hls4ml: bool = False) -> SearchResult:
    """Run (or resume) the search ``config`` describes, write its results folder ``out_dir``, then fine-tune the best
    plan for ``config.final_finetune_steps`` steps and export it (ONNX, and an hls4ml project with ``hls4ml``)."""
    from autoq.host.backends.record import open_backend_recording
    from autoq.host.evaluate import Evaluator
    from autoq.host.tasks import load_task

    out = Path(out_dir)
    checkpoint = out / CHECKPOINT_NAME
    if not resume and checkpoint.exists():
        raise SearchError(f"{checkpoint} already holds a search: pass --resume to continue it, or choose another --out")
    seed_everything(config.seed)
    task = load_task(config.model, config.data, config.arch)
    scales = kernel_weight_scales(task.model, task.network)
    evaluator = Evaluator.for_task(task)
    out.mkdir(parents=True, exist_ok=True)
    backend = open_backend_recording(config.backend, record)
    try:
        env = QuantEnv(task.network, evaluator, backend, config.reward, min_bits=config.min_bits, max_bits=config.max_bits,
                       finetune_steps=config.finetune_steps, kernel_scales=scales)
        agent = make_agent(config.agent, config.episodes, len(task.network), config.seed)
        runner = SearchRunner(env, agent, config.episodes, checkpoint, config.to_dict())
        records = runner.run(resume=resume, progress=progress)
        objective = env.objective
        run_info = {
            "agent": config.agent, "task": task.name, "backend": backend.describe().uri, "seed": config.seed,
            "episodes": f"{len(records)} of {config.episodes}", "reward": config.reward.describe(),
            "bits": f"{config.min_bits}..{config.max_bits}", "finetune steps": config.finetune_steps,
            "full-precision accuracy (val)": f"{objective.full_accuracy:.4f}",
            "full-precision accuracy (test)": f"{evaluator.full_precision_accuracy(split='test'):.4f}",
            f"uniform {config.max_bits}-bit plan": f"{objective.reference.latency_s * 1e3:.4g} ms, {objective.reference.energy_j * 1e3:.4g} mJ",
            "record": record or "-",
        }
        if objective.limit is not None:
            run_info["budget limit"] = f"{objective.limit:.6g} ({'s' if objective.setting.budget.metric == 'latency' else 'J'})"
        best = best_record(records, "reward")
        # selected on val; reported on test, with the search's own fine-tune setting
        best_test = evaluator.accuracy(best.plan, config.finetune_steps, split="test")
        write_results(out, task.network, records, run_info, best_test_accuracy=best_test)  # stands if the export is interrupted
    finally:
        backend.close()
    final = (completed_final(out, best.plan, config.final_finetune_steps, hls4ml)
             or finalize(out, evaluator, best.plan, config.final_finetune_steps, hls4ml).to_dict())
    files = write_results(out, task.network, records, run_info, final, best_test_accuracy=best_test)
    return SearchResult(config, records, files, best, best_test, final)
