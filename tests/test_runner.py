"""The search runner: checkpoints after every episode, and a run killed with SIGKILL resumes to the same result."""
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoq.host.rl.sealed import Sealed
from autoq.host.search.checkpoint import CHECKPOINT_NAME, history_path, load_checkpoint, seed_everything
from autoq.host.search.rewards import BudgetSpec, RewardSetting, SearchError
from autoq.host.search.runner import SearchConfig, SearchRunner, make_agent, resolve_config
from searchtoys import run_toy_search, toy_env

TESTS = Path(__file__).parent
TIGHT = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.4x"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def summary(history):
    return [(r.episode, r.plan.hash, r.accuracy, r.reward, r.measurement.latency_s) for r in history]


def agent_tensors(checkpoint):
    state = load_checkpoint(checkpoint)["agent"]
    flat = {}

    def walk(prefix, value):
        if isinstance(value, Sealed):  # an actor-critic's snapshot and journal
            walk(prefix, value.value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, np.ndarray):
            flat[prefix] = torch.from_numpy(value)

    walk("agent", state)
    return flat


@pytest.mark.parametrize("agent, episodes, kill_at", [("autoq", 5, 4), ("haq", 4, 3)])
def test_sigkill_mid_episode_then_resume_equals_an_uninterrupted_run(tmp_path, agent, episodes, kill_at):
    reference = run_toy_search(agent, episodes, str(tmp_path / "reference.pt"))
    checkpoint = tmp_path / "killed.pt"
    killed = subprocess.run([sys.executable, str(TESTS / "searchtoys.py"), agent, str(episodes), str(checkpoint), str(kill_at)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted_at = load_checkpoint(checkpoint)["next_episode"]
    assert 1 < interrupted_at < episodes  # killed after learning started, before the end
    resumed = run_toy_search(agent, episodes, str(checkpoint), resume=True)
    assert summary(resumed) == summary(reference)
    final, expected = agent_tensors(checkpoint), agent_tensors(tmp_path / "reference.pt")
    assert final.keys() == expected.keys() and len(final) > 10
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    final_rng, expected_rng = load_checkpoint(checkpoint)["rng"], load_checkpoint(tmp_path / "reference.pt")["rng"]
    assert torch.equal(final_rng["torch"], expected_rng["torch"]) and final_rng["python"] == expected_rng["python"]


def make_runner(tmp_path, agent="random", episodes=3, settings=None):
    seed_everything(0)
    env = toy_env(TIGHT)
    return SearchRunner(env, make_agent(agent, episodes, len(env.network), 0), episodes, tmp_path / CHECKPOINT_NAME,
                        settings or {"agent": agent})


def test_checkpoint_after_every_episode_holds_the_whole_state(tmp_path):
    runner = make_runner(tmp_path, "autoq", episodes=2)
    history = runner.run(progress=False)
    payload = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert payload["next_episode"] == 2 and len(payload["history"]) == 2 == len(history)
    assert {"hlc", "llc", "rng"} <= payload["agent"].keys()
    assert {"actor", "critics", "actor_optim", "critic_optim", "buffer"} <= payload["agent"]["hlc"]["snapshot"].value.keys()
    assert "actor_target" in payload["agent"]["hlc"]["snapshot"].value  # the LLC (gamma 0) has no target networks
    assert "actor_target" not in payload["agent"]["llc"]["snapshot"].value
    assert {"python", "numpy", "torch"} == payload["rng"].keys()
    assert payload["env"]["position"] == len(runner.env.network) and payload["best_plan"]["format"] == "autoq-plan/1"
    assert [(r.episode, r.agent) for r in payload["history"]] == [(0, "autoq"), (1, "autoq")] and payload["history"] == history
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_history_sidecar_is_append_only_and_cut_back_to_what_the_checkpoint_counts(tmp_path):
    make_runner(tmp_path, episodes=2).run(progress=False)
    checkpoint = tmp_path / CHECKPOINT_NAME
    sidecar = history_path(checkpoint)
    first_two = sidecar.read_bytes()
    with open(sidecar, "ab") as fh:  # a record appended by a run killed before it wrote its checkpoint
        fh.write((5).to_bytes(8, "little") + b"junk!")
    assert [r.episode for r in load_checkpoint(checkpoint)["history"]] == [0, 1]
    make_runner(tmp_path, episodes=3).run(resume=True, progress=False)
    assert [r.episode for r in load_checkpoint(checkpoint)["history"]] == [0, 1, 2]
    assert sidecar.read_bytes().startswith(first_two) and b"junk!" not in sidecar.read_bytes()
    sidecar.write_bytes(first_two[:20])
    with pytest.raises(SearchError, match="search history .* is damaged"):
        load_checkpoint(checkpoint)


def test_runner_stops_when_the_agent_is_finished(tmp_path):
    history = make_runner(tmp_path, "greedy", episodes=5).run(progress=False)
    assert len(history) == 1
    resumed = make_runner(tmp_path, "greedy", episodes=5)
    assert resumed.run(resume=True, progress=False) == history  # nothing left to do


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(SearchError, match="no checkpoint to resume at .*checkpoint.pt"):
        make_runner(tmp_path).run(resume=True, progress=False)
    make_runner(tmp_path).run(progress=False)
    with pytest.raises(SearchError, match="already holds a search: pass --resume"):
        make_runner(tmp_path).run(progress=False)
    with pytest.raises(SearchError, match="written by another search: agent: stored 'random', given 'uniform'"):
        make_runner(tmp_path, settings={"agent": "uniform"}).run(resume=True, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(SearchError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk" / CHECKPOINT_NAME)


def test_resolve_config_keeps_stored_settings_on_resume(tmp_path):
    config = SearchConfig(agent="haq", episodes=7, seed=4)
    assert SearchConfig.from_dict(config.to_dict()) == config
    runner = make_runner(tmp_path, settings=config.to_dict())
    runner.run(progress=False)
    assert resolve_config(tmp_path, {}, resume=True) == config
    assert resolve_config(tmp_path, {"agent": "haq", "seed": 4}, resume=True) == config
    assert resolve_config(tmp_path, {"episodes": 9}, resume=True) == SearchConfig(agent="haq", episodes=9, seed=4)  # extends
    with pytest.raises(SearchError, match=r"--resume --episodes 5: .* runs 7 episodes; --episodes can extend it, not shorten it"):
        resolve_config(tmp_path, {"episodes": 5}, resume=True)
    with pytest.raises(SearchError, match=r"drop seed=5 \(stored: 4\)"):
        resolve_config(tmp_path, {"seed": 5, "episodes": 9}, resume=True)
    with pytest.raises(SearchError, match="unknown agent 'dqn'"):
        SearchConfig(agent="dqn")


def test_extending_a_search_continues_deterministically_from_its_checkpoint(tmp_path):
    from autoq.host.search.runner import describe_extensions

    for name in ("straight", "extended", "a", "b"):
        (tmp_path / name).mkdir()
    straight = make_runner(tmp_path / "straight", "random", episodes=4).run(progress=False)
    make_runner(tmp_path / "extended", "random", episodes=2).run(progress=False)
    extended = make_runner(tmp_path / "extended", "random", episodes=4)
    assert summary(extended.run(resume=True, progress=False)) == summary(straight)  # random: budget-independent
    assert extended.extensions == [{"at": 2, "from": 2, "to": 4}]
    runs = []
    for name in ("a", "b"):  # autoq's schedule depends on the budget: extended runs agree with each other
        make_runner(tmp_path / name, "autoq", episodes=2).run(progress=False)
        runs.append(summary(make_runner(tmp_path / name, "autoq", episodes=4).run(resume=True, progress=False)))
    assert runs[0] == runs[1] and len(runs[0]) == 4
    assert "follow the 4-episode schedule from episode 2 on" in describe_extensions("autoq", extended.extensions)
    with pytest.raises(SearchError, match="holds a search of 4 episodes: .* cannot shorten it to 3"):
        make_runner(tmp_path / "a", "autoq", episodes=3).run(resume=True, progress=False)


def test_a_search_failing_in_its_first_episode_writes_no_history(tmp_path):
    from searchtoys import ToyEvaluator

    class FailingEvaluator(ToyEvaluator):
        def accuracy(self, plan, finetune_steps=0):
            raise RuntimeError("the evaluation failed")

    runner = make_runner(tmp_path, "random")
    runner.env.evaluator = FailingEvaluator(runner.env.network)
    with pytest.raises(RuntimeError, match="the evaluation failed"):
        runner.run(progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_save_appends_the_agents_journal_and_rewrites_its_snapshot_only_every_snapshot_every_episodes(tmp_path, monkeypatch):
    """After the first episode a checkpoint costs the journal and the small payload, not the ~MB of networks; a
    snapshot is taken again after SNAPSHOT_EVERY episodes, and resuming between snapshots replays the journal."""
    import autoq.host.rl.actor_critic as actor_critic
    from autoq.host.search.checkpoint import CheckpointWriter

    monkeypatch.setattr(actor_critic, "SNAPSHOT_EVERY", 3)
    costs = []
    save = CheckpointWriter.save

    def counting(self, payload):
        before = self.bytes_written
        save(self, payload)
        costs.append(self.bytes_written - before)

    monkeypatch.setattr(CheckpointWriter, "save", counting)
    make_runner(tmp_path, "autoq", episodes=5).run(progress=False)
    journal = max(costs[1:3] + costs[4:])
    assert len(costs) == 5 and min(costs[0], costs[3]) > 10 * journal  # snapshots at saves 1 and 4 (Adam state from 2 on)
    (tmp_path / "again").mkdir()
    resumed = make_runner(tmp_path / "again", "autoq", episodes=5)  # the same search, its agent live in memory
    resumed.run(progress=False)
    agent = make_runner(tmp_path, "autoq", episodes=5).agent
    agent.load_state_dict(load_checkpoint(tmp_path / CHECKPOINT_NAME)["agent"])  # snapshot + one journal chunk replayed
    for live, loaded in ((resumed.agent.hlc, agent.hlc), (resumed.agent.llc, agent.llc)):
        for a, b in zip(live.critics.parameters(), loaded.critics.parameters()):
            assert torch.equal(a, b)
        assert live.updates == loaded.updates > 0
