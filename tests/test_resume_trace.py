"""A recorded search that is SIGKILLed and resumed into the same trace: the trace marks each record with its
attempt and episode, and a replay follows the run that survived (not the killed run's unfinished episode, not the
resumed run's repeated start-up), so replaying the trace reproduces the resumed search exactly, board noise included."""
import dataclasses
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from autoq.common.backend import BackendInfo
from autoq.host.backends.record import RecordingBackend
from autoq.host.backends.replay import ReplayBackend
from autoq.host.traces import START_UP, TraceStore
from autoq.overlay.manifest import load_overlay
from searchtoys import KillingEvaluator, ToyBackend, toy_kernel_scales, toy_network

EPISODES, SEED = 5, 3


class NoisyBoard(ToyBackend):
    """The toy cost with fresh multiplicative noise on every measurement (from the OS, like a real board's)."""

    noise = random.SystemRandom()

    def measure(self, network, plan, batch=1):
        m = super().measure(network, plan, batch)
        factor = 1.0 + 0.05 * self.noise.uniform(-1.0, 1.0)
        return dataclasses.replace(m, latency_s=m.latency_s * factor, energy_j=m.energy_j * factor)

    def describe(self):
        return BackendInfo("noisy-toy://", "emulated", load_overlay(), ("latency", "energy"), "test double with noise")


def search(checkpoint, backend, *, resume=False, kill_at=0, listener=None):
    """The toy AutoQ search of tests/searchtoys.py on ``backend``; returns its history."""
    from autoq.host.search.checkpoint import seed_everything
    from autoq.host.search.env import QuantEnv
    from autoq.host.search.rewards import BudgetSpec, RewardSetting
    from autoq.host.search.runner import SearchRunner, make_agent

    seed_everything(SEED)
    network = toy_network()
    setting = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.4x"))
    env = QuantEnv(network, KillingEvaluator(network, kill_at), backend, setting, kernel_scales=toy_kernel_scales(network))
    runner = SearchRunner(env, make_agent("autoq", EPISODES, len(network), SEED), EPISODES, checkpoint,
                          {"agent": "autoq", "seed": SEED}, listener=listener)
    return runner.run(resume=resume, progress=False)


def recorded_search(checkpoint, trace, resume=False, kill_at=0):
    backend = RecordingBackend(NoisyBoard(), TraceStore(trace), search=True)
    try:
        return search(checkpoint, backend, resume=resume, kill_at=kill_at, listener=backend)
    finally:
        backend.close()


def figures(history):
    return [(r.episode, r.plan.hash, r.accuracy, r.measurement.latency_s, r.measurement.energy_j, r.reward) for r in history]


@pytest.mark.usefixtures("one_torch_thread")
def test_replay_of_a_killed_and_resumed_recording_follows_the_surviving_run(tmp_path):
    checkpoint, trace = tmp_path / "search" / "checkpoint.pt", tmp_path / "trace.sqlite"
    checkpoint.parent.mkdir()
    killed = subprocess.run([sys.executable, __file__, str(checkpoint), str(trace), "4"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with TraceStore(trace, mode="r") as store:
        before = list(store)
    killed_episode = max(r.episode for r in before)
    assert killed_episode >= 1 and any(r.episode == START_UP for r in before)  # killed mid-episode, after a checkpoint
    resumed = recorded_search(checkpoint, trace, resume=True)
    assert [r.episode for r in resumed] == list(range(EPISODES))
    with TraceStore(trace, mode="r") as store:
        records = list(store)
    # each restart measured the start-up plans and the unfinished episode again: those of the killed run are superseded
    first, second = {r.attempt for r in before}, {r.attempt for r in records} - {r.attempt for r in before}
    assert len(first) == 1 and len(second) == 1
    superseded = [r for r in records if r.superseded]
    assert {(r.attempt, r.episode) for r in superseded} == {(*first, killed_episode), (*second, START_UP)}
    assert all(r.episode >= killed_episode for r in records if r.attempt in second and not r.superseded)
    replay = ReplayBackend(trace)
    try:
        replayed = search(tmp_path / "replay.pt", replay)
    finally:
        replay.close()
    assert figures(replayed) == figures(resumed)  # the noisy values the surviving run saw, in its order


def test_a_search_that_never_checkpointed_is_skipped_and_a_plain_recording_is_not(tmp_path):
    from tracekit import ToyBackend as TraceToy, some_plans
    from boardkit import TINY

    trace = tmp_path / "t.sqlite"
    plan = some_plans(TINY, 1)[0]
    aborted = RecordingBackend(TraceToy(noise=0.2), TraceStore(trace), search=True)
    aborted.search_started("run-a", None)
    aborted.measure(TINY, plan)  # start-up of a search that fails before its first checkpoint
    aborted.close()
    plain = RecordingBackend(TraceToy(noise=0.2, seed=5), TraceStore(trace))  # `--record` outside a search
    kept = plain.measure(TINY, plan)
    plain.close()
    with TraceStore(trace, mode="r") as store:
        assert [r.superseded for r in store] == [True, False]
        assert store.lookup_all(TINY.hash, plan.hash) == [kept]


if __name__ == "__main__":  # the killed child: CHECKPOINT TRACE KILL_AT
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    recorded_search(sys.argv[1], sys.argv[2], kill_at=int(sys.argv[3]))
