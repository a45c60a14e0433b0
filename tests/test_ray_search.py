"""``autoq search --ray`` on a local Ray instance with three ``autoq board serve --emulate --delay-ms`` daemons: 30
episodes complete with one board killed midway, the trace loses nothing and names the board behind each
measurement, and the run equals the same batched search measured in-process."""
import logging
import os
import threading
import time

import pytest

from autoq.host.search.parallel import RayOptions
from autoq.host.search.rewards import BudgetSpec, RewardSetting
from autoq.host.search.runner import SearchConfig, run_search
from autoq.host.traces import TraceError, TraceStore
from test_pool_backend import serve

ray = pytest.importorskip("ray")
from autoq.host.search.raycluster import BOARD_ENV  # noqa: E402 - needs ray
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

# A budget most proposals nearly meet: a few enforcement steps (measurements) an episode, ~220 in 30 episodes.
LOOSE = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.8x"))
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_memory_monitor_refresh_ms": "0"}  # a shared test machine's memory is not ours


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance that also offers one board as the resource ``pynq_z1`` (``AUTOQ_BOARD``: a daemon's URI)."""
    board, uri = serve()
    saved = {k: os.environ.get(k) for k in (*RAY_ENV, BOARD_ENV)}
    os.environ.update({**RAY_ENV, BOARD_ENV: uri})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, resources={"pynq_z1": 1})
    try:
        yield uri
    finally:
        ray.shutdown()
        board.kill()
        board.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def summary(records):
    return [(r.episode, r.plan.hash, r.proposed.hash, r.accuracy, r.reward, r.measurement.latency_s) for r in records]


def by_episode(trace):
    with TraceStore(trace, "r") as store:
        records = [r for r in store.records() if not r.superseded]
    return records, {e: sorted(r.plan.hash for r in records if r.episode == e) for e in {r.episode for r in records}}


def test_thirty_episodes_on_three_boards_with_one_killed_midway(tmp_path, local_ray, caplog):
    boards = [serve(delay_ms=30) for _ in range(3)]
    uris = [uri for _, uri in boards]
    victim, victim_uri = boards[1]
    trace = tmp_path / "trace.sqlite"
    killed_at: list[float] = []

    def kill_midway():
        while True:
            try:  # the file exists a moment before its tables do
                with TraceStore(trace, "r") as store:
                    if sum(r.backend_uri == victim_uri for r in store.records()) >= 15:
                        break
            except TraceError:
                pass
            time.sleep(0.1)
        victim.kill()
        killed_at.append(time.time())

    killer = threading.Thread(target=kill_midway, daemon=True)
    killer.start()
    config = SearchConfig(agent="autoq", model="digits", episodes=30, backend="pool:" + ",".join(uris), reward=LOOSE,
                          final_finetune_steps=0, batch=3)
    try:
        with caplog.at_level(logging.WARNING, logger="autoq.pool"):
            result = run_search(config, tmp_path / "run", record=trace, progress=False, ray=RayOptions())
    finally:
        for process, _ in boards:
            process.kill()
            process.wait(10)
    killer.join(1)
    assert killed_at, "the board was not killed before the search ended"
    assert len(result.records) == 30 and result.config.batch == 3
    assert any(victim_uri in m and "is out" in m for m in caplog.messages)  # a plan it had was measured elsewhere

    records, episodes = by_episode(trace)
    assert {r.backend_uri for r in records} == set(uris)  # every board measured, the trace says which
    assert all(r.measurement.provenance.timestamp <= killed_at[0] for r in records if r.backend_uri == victim_uri)
    for outcome in result.records:
        assert {outcome.plan.hash, outcome.proposed.hash} <= set(episodes[outcome.episode])

    # The same batched search on the in-process emulated board (threads, no Ray): the same run, measurement for measurement.
    reference_trace = tmp_path / "reference.sqlite"
    reference = run_search(SearchConfig(**{**config.to_dict(), "reward": LOOSE, "backend": "emulated"}), tmp_path / "reference",
                           record=reference_trace, progress=False)
    assert summary(result.records) == summary(reference.records)
    assert episodes == by_episode(reference_trace)[1]


def test_an_interrupted_ray_search_resumes_to_the_uninterrupted_run(tmp_path, local_ray, monkeypatch):
    from autoq.host.backends.record import RecordingBackend

    config = SearchConfig(agent="autoq", model="digits", episodes=9, backend="pool:emulated,emulated:pynq_z1", reward=LOOSE,
                          final_finetune_steps=0, batch=3)
    reference = run_search(SearchConfig(**{**config.to_dict(), "reward": LOOSE, "backend": "emulated"}), tmp_path / "reference",
                           progress=False)
    checkpointed = RecordingBackend.checkpointed

    def interrupt_at_six(self, next_episode):
        checkpointed(self, next_episode)
        if next_episode == 6:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(RecordingBackend, "checkpointed", interrupt_at_six)
        with pytest.raises(KeyboardInterrupt):
            run_search(config, tmp_path / "run", record=tmp_path / "trace.sqlite", progress=False, ray=RayOptions())
    resumed = run_search(config, tmp_path / "run", resume=True, record=tmp_path / "trace.sqlite", progress=False, ray=RayOptions())
    assert summary(resumed.records) == summary(reference.records)
    records, episodes = by_episode(tmp_path / "trace.sqlite")
    assert {r.backend_uri for r in records} == {"emulated", "emulated:pynq_z1"}
    for outcome in resumed.records:
        assert {outcome.plan.hash, outcome.proposed.hash} <= set(episodes[outcome.episode])


def test_boards_are_discovered_from_a_custom_resource(tmp_path, local_ray):
    config = SearchConfig(agent="random", model="digits", episodes=3, backend="pool:ray:pynq_z1", reward=LOOSE, final_finetune_steps=0)
    result = run_search(config, tmp_path / "run", record=tmp_path / "trace.sqlite", progress=False, ray=RayOptions())
    assert len(result.records) == 3 and result.config.batch == 1  # one board offered: one plan at a time
    records, _ = by_episode(tmp_path / "trace.sqlite")
    (measured_by,) = {r.backend_uri for r in records}
    assert measured_by.startswith(f"{local_ray}@")  # the board the node's AUTOQ_BOARD names, and the node
