"""Batched search without Ray (threads): propose K, score at once, learn in episode order. Batch 1 is the sequential
search; a batch of K is deterministic, resumes exactly, and its trace holds every episode's measurements."""
import subprocess
import sys

import pytest

from autoq.common.backend import BackendInfo
from autoq.host.backends.pool import PoolBackend
from autoq.host.backends.record import RecordingBackend
from autoq.host.search.checkpoint import seed_everything
from autoq.host.search.parallel import BatchScorer
from autoq.host.search.rewards import BudgetSpec, RewardSetting, SearchError
from autoq.host.search.runner import SearchRunner, make_agent
from autoq.host.traces import TraceStore
from autoq.overlay.manifest import load_overlay
from searchtoys import ToyBackend, toy_env
from test_pool_backend import FakeMember

TIGHT = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.4x"))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToyBoard(ToyBackend):
    """The toy cost with a real overlay in its description (what a trace stores)."""

    def describe(self):
        return BackendInfo("toy", "model", load_overlay(), ("latency", "energy"))


def summary(history):
    return [(r.episode, r.plan.hash, r.proposed.hash, r.accuracy, r.reward, r.measurement.latency_s) for r in history]


class Interrupt(Exception):
    pass


class StopAfter:
    """A listener that interrupts the search once ``episodes`` episodes are checkpointed."""

    def __init__(self, episodes):
        self.episodes = episodes

    def search_started(self, run_id, resumed_at):
        pass

    def episode_started(self, episode):
        pass

    def checkpointed(self, next_episode):
        if next_episode >= self.episodes:
            raise Interrupt


def search(agent_name, episodes, checkpoint, batch, *, backend=None, scorer=True, listener=None, resume=False, record=None):
    seed_everything(5)
    env = toy_env(TIGHT)
    if backend is not None:
        env.backend = backend
    if record is not None:
        env.backend = RecordingBackend(env.backend, TraceStore(record), search=True)
        listener = env.backend
    agent = make_agent(agent_name, episodes, len(env.network), 5)
    runner = SearchRunner(env, agent, episodes, checkpoint, {"agent": agent_name, "batch": batch}, listener=listener,
                          batch=batch, scorer=BatchScorer(env) if scorer else None)
    try:
        return runner.run(resume=resume, progress=False)
    finally:
        if record is not None:
            env.backend.close()


@pytest.mark.parametrize("agent, episodes", [("autoq", 8), ("haq", 6), ("random", 4), ("uniform", 60), ("greedy", 3), ("oracle", 3)])
def test_batch_one_is_the_sequential_search(tmp_path, agent, episodes):
    sequential = search(agent, episodes, tmp_path / "a.pt", 1, scorer=False)
    batched = search(agent, episodes, tmp_path / "b.pt", 1)
    assert summary(batched) == summary(sequential)


@pytest.mark.parametrize("agent, episodes", [("autoq", 9), ("uniform", 60)])
def test_a_batch_is_deterministic_and_resumes_exactly(tmp_path, agent, episodes):
    reference = search(agent, episodes, tmp_path / "ref.pt", 3)
    assert summary(search(agent, episodes, tmp_path / "again.pt", 3)) == summary(reference)
    with pytest.raises(Interrupt):
        search(agent, episodes, tmp_path / "cut.pt", 3, listener=StopAfter(3))
    resumed = search(agent, episodes, tmp_path / "cut.pt", 3, resume=True)
    assert summary(resumed) == summary(reference)
    if agent == "uniform":  # it ran out of candidates mid-batch
        assert len(reference) < episodes


def test_a_batched_trace_holds_each_episodes_measurements_and_its_boards(tmp_path):
    alone = search("autoq", 9, tmp_path / "alone.pt", 3, backend=ToyBoard(), record=tmp_path / "alone.sqlite")
    members = [FakeMember(f"fake://{i}", delay_s=0.002) for i in range(3)]
    pooled = search("autoq", 9, tmp_path / "pool.pt", 3, backend=PoolBackend("pool:fakes", members), record=tmp_path / "pool.sqlite")
    assert summary(pooled) == summary(alone)  # whichever board measured what

    def by_episode(path):
        with TraceStore(path, "r") as store:
            records = list(store.records())
        return records, {e: sorted(r.plan.hash for r in records if r.episode == e) for e in range(-1, 9)}

    alone_records, alone_episodes = by_episode(tmp_path / "alone.sqlite")
    pool_records, pool_episodes = by_episode(tmp_path / "pool.sqlite")
    assert pool_episodes == alone_episodes and len(pool_records) == len(alone_records)
    for outcome in pooled:
        assert {outcome.plan.hash, outcome.proposed.hash} <= set(pool_episodes[outcome.episode])
    assert {r.backend_uri for r in alone_records} == {"toy"}
    # which boards get work here depends on thread scheduling (under load one may get none; that every board takes a
    # share is test_pool_backend's): every record names one of the pool's boards
    assert {r.backend_uri for r in pool_records} <= {m.uri for m in members}
    for member in members:  # each record names the board that measured that plan
        assert sorted(r.plan.hash for r in pool_records if r.backend_uri == member.uri) == sorted(member.measured)


def test_a_failing_plan_fails_its_batch_after_the_others(tmp_path):
    members = [FakeMember("fake://a")]
    pool = PoolBackend("pool:fakes", members, wait_s=0.2, rejoin_s=0.05)
    members[0].refuse = True
    with pytest.raises(Exception, match="rejected the plan"):
        search("random", 3, tmp_path / "x.pt", 3, backend=pool)
    pool.close()
    with pytest.raises(SearchError, match="batch must be >= 1"):
        SearchRunner(toy_env(TIGHT), make_agent("random", 3, 4, 0), 3, tmp_path / "y.pt", {}, batch=0)


def test_nothing_imports_ray_without_ray():
    code = ("import sys; import autoq.host.search.runner, autoq.host.search.parallel, autoq.host.backends.pool, "
            "autoq.host.cli.search_cmd; assert 'ray' not in sys.modules, 'ray imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_search_cli_batch_is_stored_and_kept_on_resume(tmp_path, capsys):
    from autoq.host.cli import main
    from autoq.host.search.checkpoint import CHECKPOINT_NAME, load_checkpoint

    out = tmp_path / "run"
    args = ["search", "--no-progress", "--model", "digits", "--agent", "random", "--episodes", "4", "--final-finetune-steps", "0",
            "--out", str(out)]
    assert main([*args, "--batch", "3"]) == 0
    payload = load_checkpoint(out / CHECKPOINT_NAME)
    assert payload["settings"]["batch"] == 3 and payload["next_episode"] == 4
    assert main(["search", "--no-progress", "--resume", "--out", str(out), "--batch", "2"]) == 2
    assert "drop batch=2 (stored: 3)" in capsys.readouterr().err
