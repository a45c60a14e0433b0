"""``--record FILE``: wrap any cost backend so every measurement it returns is appended to a trace.

Each recording backend is one attempt of the trace (``TraceStore.open_attempt``). A search's recorder is also its
``SearchListener``: the runner tells it the run it belongs to, the episode each measurement is of and what each
checkpoint counts, so a replay can follow the run that survived a SIGKILL and ``--resume``. A batched search scores
several episodes at once and records each of their measurements with ``append``, naming its episode. A measurement
of a pool (``autoq.host.backends.pool``) is recorded under the URI of the member that made it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from autoq.common.backend import BackendInfo, CostBackend, open_backend
from autoq.common.errors import BackendError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.traces import START_UP, TraceStore

from .pool import Measured, PoolBackend


class RecordingBackend:
    """Measures with ``inner`` and appends each measurement to ``store`` (committed before it is returned).

    With ``search``, the attempt is a search's: its measurements are marked with the episode the runner announced
    (``START_UP`` before the first)."""

    def __init__(self, inner: CostBackend, store: TraceStore, search: bool = False) -> None:
        self.inner = inner
        self.store = store
        self._info = inner.describe()
        store.record_backend(self._info)
        self._described = {self._info.uri}
        self.attempt = store.open_attempt("search" if search else "record")
        self.episode: int | None = START_UP if search else None

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        if isinstance(self.inner, PoolBackend):
            measured = self.inner.measure_on(network, plan, batch)
        else:
            measured = Measured(self.inner.measure(network, plan, batch), self._info)
        self.append(network, plan, batch, measured, self.episode)
        return measured.measurement

    def append(self, network: NetworkSpec, plan: QuantPlan, batch: int, measured: Measured, episode: int | None) -> None:
        """Record ``measured`` as a measurement of ``episode`` under the URI of the backend that made it (a pool's
        member, whose description is stored the first time it measures)."""
        uri = measured.member.uri
        if uri not in self._described:
            self.store.record_backend(measured.member)
            self._described.add(uri)
        self.store.append(network, plan, measured.measurement, uri, batch, self.attempt, episode)

    # -- SearchListener -------------------------------------------------------------------------------------------
    def search_started(self, run_id: str, resumed_at: int | None) -> None:
        self.store.start_search(self.attempt, run_id, resumed_at)

    def episode_started(self, episode: int) -> None:
        self.episode = episode

    def checkpointed(self, next_episode: int) -> None:
        self.store.checkpointed(self.attempt, next_episode)

    def describe(self) -> BackendInfo:
        return self._info

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.store.close()


def open_backend_recording(uri: str, record_path: str | Path | None = None, search: bool = False,
                           opener: Callable[[str], CostBackend] = open_backend) -> CostBackend:
    """Open the backend named by ``uri`` (with ``opener``); with ``record_path``, every measurement is also recorded
    there (as a search's attempt with ``search``)."""
    if record_path is not None and uri.startswith("replay:"):
        from autoq.host.backends.replay import trace_path_of

        if Path(trace_path_of(uri)).resolve() == Path(record_path).resolve():
            raise BackendError(f"--record {record_path} would append to the trace that {uri!r} replays; record elsewhere")
    backend = opener(uri)
    if record_path is None:
        return backend
    try:
        store = TraceStore(record_path, mode="a")
    except Exception:
        backend.close()
        raise
    try:
        return RecordingBackend(backend, store, search)
    except Exception:
        backend.close()
        store.close()
        raise
