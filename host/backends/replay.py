"""``replay:trace.sqlite[?fallback=model]``: serve measurements recorded earlier.

Each request for a (network, plan, batch) gets the recorded measurements of that key in recording order (the
last one again once they run out), so a search replayed against its own trace sees exactly the values it saw when
it was recorded, board noise included. Records a later ``--resume`` superseded (the killed run's unfinished
episode, the resumed run's repeated start-up; ``autoq.host.traces``) are skipped, so the replay follows the run
that survived. The whole trace is verified when the replay opens: a trace with a damaged record is refused, naming
it, and nothing of it is served. Served measurements carry source ``replay``; the original source, backend and
record id are kept in ``provenance.detail``.

A plan the trace never measured is a ``BackendError`` naming the plan hash, unless ``?fallback=model`` is given:
then the analytic cost model, fitted on this trace's measurements, predicts it (fitted once, on first miss, and
cached next to the trace while the trace is unchanged).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from autoq.common.backend import BackendInfo, CostBackend
from autoq.common.errors import BackendError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.host.traces import DamagedRecord, TraceError, TraceStore, damaged_message
from autoq.overlay.manifest import load_overlay

if TYPE_CHECKING:
    from autoq.overlay.calibration_params import CalibrationParams

FALLBACKS = ("error", "model")
FIT_CACHE_SUFFIX = ".model-fit.json"


def parse_uri(uri: str) -> tuple[str, str]:
    """``replay:PATH[?fallback=error|model]`` -> (PATH, fallback)."""
    if not uri.startswith("replay:") or uri == "replay:":
        raise BackendError(f"replay URI must be 'replay:TRACE.sqlite[?fallback=model]', got {uri!r}")
    path, _, query = uri[len("replay:") :].partition("?")
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False) if query else {}
    unknown = sorted(set(params) - {"fallback"})
    if unknown:
        raise BackendError(f"replay URI {uri!r}: unknown option(s) {unknown}; the only option is fallback={'|'.join(FALLBACKS)}")
    fallback = params.get("fallback", ["error"])[-1]
    if fallback not in FALLBACKS:
        raise BackendError(f"replay URI {uri!r}: fallback must be one of {FALLBACKS}, got {fallback!r}")
    return path, fallback


def trace_path_of(uri: str) -> str:
    return parse_uri(uri)[0]


class ReplayBackend:
    def __init__(self, trace_path: str | Path, fallback: str = "error", uri: str | None = None) -> None:
        self.uri = uri or f"replay:{trace_path}" + (f"?fallback={fallback}" if fallback != "error" else "")
        self.fallback = fallback
        try:
            self.store = TraceStore(trace_path, mode="r")
        except TraceError as exc:
            raise BackendError(f"cannot replay {self.uri!r}: {exc}") from None
        try:
            self._recorded = self._index()
            self.store.backends()  # verified now: describe() cannot fail later
        except (TraceError, BackendError) as exc:
            self.store.close()
            raise BackendError(f"cannot replay {self.uri!r}: {exc}") from None
        self._served: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self._model: CostBackend | None = None

    def _index(self) -> dict[tuple[str, str, int], list[Measurement]]:
        """What each (network, plan, batch) serves, in recording order, superseded records left out."""
        damaged: list[DamagedRecord] = []
        index: defaultdict[tuple[str, str, int], list[Measurement]] = defaultdict(list)
        for record in self.store.records(damaged=damaged):
            if not record.superseded:
                index[(record.network.hash, record.plan.hash, record.batch)].append(record.measurement)
        if damaged:
            raise BackendError(f"{damaged_message(self.store.path, damaged)}; replay an intact trace (or record again)")
        return dict(index)

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        key = (network.hash, plan.hash, batch)
        recorded = self._recorded.get(key)
        if not recorded:
            if self.fallback == "model":
                return self.fallback_model().measure(network, plan, batch)
            raise BackendError(
                f"replay miss: trace {self.store.path} has no measurement of plan {plan.hash} on network "
                f"{network.name!r} ({network.hash}) at batch {batch}; use 'replay:{self.store.path}?fallback=model' "
                "to predict misses with the model fitted on this trace"
            )
        index = min(self._served[key], len(recorded) - 1)
        self._served[key] += 1
        original = recorded[index]
        p = original.provenance
        detail = f"replayed from {self.store.path} (recorded source={p.source}" + (f"; {p.detail}" if p.detail else "") + ")"
        return dataclasses.replace(original, provenance=dataclasses.replace(p, source="replay", detail=detail))

    def fallback_model(self) -> CostBackend:
        """The analytic model fitted on this trace (fitted on first use; the fit is cached beside the trace)."""
        if self._model is None:
            from autoq.host.backends.model import ModelBackend

            params = self.fitted_calibration()
            self._model = ModelBackend(params, params.overlay or self.describe().overlay, f"model (fitted on {self.store.path})")
        return self._model

    def fitted_calibration(self) -> "CalibrationParams":
        """The calibration fitted on this trace's per-layer measurements: read from the cache beside the trace while
        the trace is unchanged, else fitted (``autoq.calibration.fit``, as ``autoq calibrate`` does) and cached."""
        from autoq.overlay.calibration_params import CalibrationError, CalibrationParams, load_default_calibration
        from autoq.calibration.fit import FitError, calibration_from_fit, fit, pipeline_to_fit
        from autoq.calibration.measurements import MeasurementError, samples_from_trace

        count, last = self.store.fingerprint()
        # /2: calibrated only on measurements; /3: the default calibration's schedule model (the RTL's step pipeline)
        calibration_id = f"replay-fit/3:{self.store.path.name}:{count}:{last}"
        cache = self.store.path.with_name(self.store.path.name + FIT_CACHE_SUFFIX)
        try:
            cached = CalibrationParams.load(cache)
            if cached.id == calibration_id:
                return cached
        except CalibrationError:
            pass  # no cache yet, or a stale/unreadable one: fit again
        try:
            dataset = samples_from_trace(self.store.path)
            base = load_default_calibration()
            result = fit(dataset, self.describe().overlay, folds=2, pipeline=pipeline_to_fit(base))
        except (MeasurementError, FitError) as exc:
            raise BackendError(f"{self.uri!r}: cannot fit the fallback model on the trace: {exc}") from None
        params = calibration_from_fit(result, dataset, base, calibration_id, bundled=None)
        try:
            params.save(cache)
        except OSError:
            pass  # a read-only trace folder: keep the fit in memory only
        return params

    def describe(self) -> BackendInfo:
        recorded = self.store.backends()
        fallback = "; misses fall back to the model fitted on the trace" if self.fallback == "model" else "; a miss is an error"
        if recorded:
            main = recorded[0]
            others = f" (and {len(recorded) - 1} other backend(s))" if len(recorded) > 1 else ""
            return BackendInfo(
                self.uri, "replay", main.overlay, main.measures, f"recorded with {main.uri} ({main.source}){others}{fallback}"
            )
        return BackendInfo(self.uri, "replay", load_overlay(), ("latency", "energy", "power"), f"empty trace{fallback}")

    def close(self) -> None:
        self.store.close()
        if self._model is not None:
            self._model.close()


def from_uri(uri: str) -> ReplayBackend:
    path, fallback = parse_uri(uri)
    return ReplayBackend(path, fallback, uri)
