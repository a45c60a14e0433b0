"""``model`` / ``model:CALIBRATION.json``: the analytic cost model as a cost backend.

``model`` uses the bundled default calibration of the PYNQ-Z1 overlay (``bitstreams/pynq_z1/calibration.json``,
uncalibrated until board measurements replace it). ``model:FILE.json`` uses that calibration file; a file fitted
for another overlay (e.g. the HAQ table's array) carries that overlay and runs on it; otherwise the calibration
must match the bundled overlay's build hash.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autoq.calibration.costmodel import AnalyticCostModel
from autoq.overlay.calibration_params import CalibrationError, CalibrationParams, load_default_calibration
from autoq.common.backend import BackendInfo
from autoq.common.errors import BackendError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.manifest import ManifestError, OverlayConfig, load_overlay

MEASURES = ("latency", "energy", "power", "resources")


class ModelBackend:
    def __init__(self, params: CalibrationParams, overlay: OverlayConfig, uri: str) -> None:
        self.uri = uri
        try:
            self.model = AnalyticCostModel(overlay, params)
        except (CalibrationError, ManifestError) as exc:
            raise BackendError(f"cost backend {uri!r}: {exc}") from None

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        return self.model.measure(network, plan, batch)

    def measure_many(self, network: NetworkSpec, plans: Sequence[QuantPlan], batch: int = 1) -> list[Measurement]:
        """``measure`` of every plan, many in one pass (``AnalyticCostModel.measure_many``)."""
        return self.model.measure_many(network, plans, batch)

    def describe(self) -> BackendInfo:
        params = self.model.params
        state = "calibrated" if params.calibrated else "UNCALIBRATED (published figures)"
        return BackendInfo(self.uri, "model", self.model.overlay, MEASURES,
                           f"analytic model, calibration {params.id!r} ({state}; {params.source})")

    def close(self) -> None:
        """Nothing to release."""


def from_uri(uri: str) -> ModelBackend:
    if uri == "model":
        params = load_default_calibration()
    elif uri.startswith("model:") and len(uri) > len("model:"):
        path = Path(uri[len("model:"):]).expanduser()
        try:
            params = CalibrationParams.load(path)
        except CalibrationError as exc:
            raise BackendError(f"cost backend {uri!r}: {exc}") from None
    else:
        raise BackendError(f"model backend URI must be 'model' or 'model:CALIBRATION.json', got {uri!r}")
    return ModelBackend(params, params.overlay or load_overlay(), uri)
