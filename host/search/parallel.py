"""Scoring a batch of proposals at once: the evaluate step of a batched search (``SearchRunner`` with ``batch`` K).

The agent proposes K plans with its current policy (``Agent.propose``, in episode order, in the driver); the
``BatchScorer`` evaluates them concurrently, one thread per plan, each on its own copy of the environment
(``QuantEnv.scoring_with``), so budget enforcement, cost and accuracy of the K plans overlap; then the agent learns
from the K outcomes in episode order. Nothing the threads do touches agent state or the objective, and every
outcome depends on its plan alone (deterministic cost and accuracy), so a batched search is deterministic for a
given seed and K, whichever board measured what, and K = 1 is the sequential search.

Cost: a pool backend (``autoq.host.backends.pool``) measures on as many boards as it has, each one measurement at a
time; any other backend measures one plan at a time. Accuracy: the environment's evaluator one call at a time
(``LockedEvaluator``), or Ray workers (``autoq.host.search.raycluster``). Each measurement is recorded (with
``--record``) by the driver's main thread, which owns the trace, under the episode it belongs to and the URI of the
board that made it, before the measurement is handed to the thread that asked for it.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from autoq.common.backend import BackendInfo, CostBackend
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.backends.pool import Measured, PoolBackend, measure_on
from autoq.host.backends.record import RecordingBackend

from .env import EpisodeOutcome, Evaluator, Proposal, QuantEnv
from .rewards import SearchError


@dataclass(frozen=True)
class RayOptions:
    """``autoq search --ray [ADDRESS]``: the Ray cluster to join (None: the one ``ray start`` runs on this machine,
    else a new local instance); see ``autoq.host.search.raycluster``."""

    address: str | None = None


def board_count(backend: CostBackend) -> int:
    """How many plans ``backend`` (or the backend it records) measures at once: a pool's members, else 1."""
    inner = backend.inner if isinstance(backend, RecordingBackend) else backend
    return len(inner.members) if isinstance(inner, PoolBackend) else 1


class LockedEvaluator:
    """An evaluator shared by the scoring threads, one call at a time (it holds one model); it has the methods of
    the evaluator it wraps."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.evaluator, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return locked


class _MainThread:
    """Calls that scoring threads hand to the driver's main thread (which owns the trace) and wait for."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple, Future] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        done: Future = Future()
        with self._lock:
            if self._closed:
                raise SearchError("the batch was abandoned")
            self._queue.put((fn, args, done))
        return done.result()

    def serve(self, futures: Sequence[Future]) -> None:
        """Run the handed calls until every one of ``futures`` is done; then refuse any more."""
        for future in futures:
            future.add_done_callback(lambda _: self._queue.put(None))
        try:
            while not all(f.done() for f in futures):
                item = self._queue.get()
                if item is None:
                    continue
                fn, args, done = item
                try:
                    done.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - the scoring thread that asked raises it
                    done.set_exception(exc)
        finally:
            with self._lock:
                self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[2].set_exception(SearchError("the batch was abandoned"))


class _EpisodeBackend:
    """The backend of one episode's scoring copy: measures through the scorer, which records it as that episode's."""

    def __init__(self, scorer: "BatchScorer", episode: int, main: _MainThread) -> None:
        self.scorer, self.episode, self.main = scorer, episode, main

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        measured = self.scorer.measure_on(network, plan, batch)
        if self.scorer.recorder is not None:
            self.main.call(self.scorer.recorder.append, network, plan, batch, measured, self.episode)
        return measured.measurement

    def describe(self) -> BackendInfo:
        return self.scorer.backend.describe()

    def close(self) -> None:
        """The search closes the backend it opened, not each episode."""


class BatchScorer:
    """Evaluates the proposals of one batch concurrently (see the module docstring) on ``env``'s backend, with
    ``accuracy`` as the evaluator (default: ``env``'s, one call at a time)."""

    def __init__(self, env: QuantEnv, accuracy: Evaluator | None = None) -> None:
        self.env = env
        self.backend: CostBackend = env.backend
        self.recorder = env.backend if isinstance(env.backend, RecordingBackend) else None
        self._inner = self.recorder.inner if self.recorder is not None else env.backend
        self._one_at_a_time = None if isinstance(self._inner, PoolBackend) else threading.Lock()
        self.accuracy = accuracy or LockedEvaluator(env.evaluator)

    def measure_on(self, network: NetworkSpec, plan: QuantPlan, batch: int) -> Measured:
        if self._one_at_a_time is None:
            return measure_on(self._inner, network, plan, batch)
        with self._one_at_a_time:
            return measure_on(self._inner, network, plan, batch)

    def evaluate(self, proposals: Sequence[tuple[int, Proposal]]) -> list[EpisodeOutcome]:
        """The outcomes of ``(episode, proposal)`` pairs, in their order; the first failure (in that order) raises
        once every plan of the batch has finished."""
        if not proposals:
            return []
        main = _MainThread()
        with ThreadPoolExecutor(len(proposals), thread_name_prefix="autoq-score") as threads:
            futures = [
                threads.submit(self.env.scoring_with(_EpisodeBackend(self, episode, main), self.accuracy).evaluate,
                               proposal.plan, proposal.layer_wise)
                for episode, proposal in proposals
            ]
            main.serve(futures)
        return [future.result() for future in futures]
