"""``--record FILE``: wrap any cost backend so every measurement it returns is appended to a trace."""
from __future__ import annotations

from pathlib import Path

from autoq.common.backend import BackendInfo, CostBackend, open_backend
from autoq.common.errors import BackendError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.traces import TraceStore


class RecordingBackend:
    """Measures with ``inner`` and appends each measurement to ``store`` (committed before it is returned)."""

    def __init__(self, inner: CostBackend, store: TraceStore) -> None:
        self.inner = inner
        self.store = store
        self._info = inner.describe()
        store.record_backend(self._info)

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        measurement = self.inner.measure(network, plan, batch)
        self.store.append(network, plan, measurement, self._info.uri, batch)
        return measurement

    def describe(self) -> BackendInfo:
        return self._info

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.store.close()


def open_backend_recording(uri: str, record_path: str | Path | None = None) -> CostBackend:
    """Open the backend named by ``uri``; with ``record_path``, every measurement is also recorded there."""
    if record_path is not None and uri.startswith("replay:"):
        from autoq.host.backends.replay import trace_path_of

        if Path(trace_path_of(uri)).resolve() == Path(record_path).resolve():
            raise BackendError(f"--record {record_path} would append to the trace that {uri!r} replays; record elsewhere")
    backend = open_backend(uri)
    if record_path is None:
        return backend
    try:
        return RecordingBackend(backend, TraceStore(record_path, mode="a"))
    except Exception:
        backend.close()
        raise
