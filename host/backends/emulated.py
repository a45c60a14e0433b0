"""Cost backend ``emulated`` (or ``emulated:OVERLAY``): the board service's own code, in process, on the emulated
device. Measurements go through the same driver, layout, measurement protocol and power-sensor path as
``autoq board serve --emulate`` and come out labelled ``emulated``.
"""
from __future__ import annotations

from typing import Any

from autoq.common.backend import BackendInfo
from autoq.common.errors import BackendError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.board import Board
from autoq.overlay.manifest import DEFAULT_OVERLAY, OverlayConfig
from autoq.overlay.daemon import hello_answer
from autoq.overlay.protocol import ProtocolError


class EmulatedBackend:
    def __init__(self, uri: str, overlay: str = DEFAULT_OVERLAY):
        self.uri = uri
        try:
            self.board = Board.emulated(overlay)
        except ProtocolError as exc:
            raise BackendError(f"cost backend {uri!r}: {exc}") from None

    def info(self) -> dict[str, Any]:
        """What ``autoq board serve --emulate`` would answer to ``hello``."""
        return hello_answer(self.board, authenticated=False)

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        return self.board.measure(network, plan, batch)

    def describe(self) -> BackendInfo:
        info = self.board.info()
        return BackendInfo(self.uri, "emulated", OverlayConfig.from_dict(info["overlay"]), tuple(info["measures"]), info["detail"])

    def close(self) -> None:
        self.board.close()


def from_uri(uri: str) -> EmulatedBackend:
    scheme, _, overlay = uri.partition(":")
    if scheme != "emulated":
        raise BackendError(f"cost backend {uri!r}: expected 'emulated' or 'emulated:OVERLAY'")
    return EmulatedBackend(uri, overlay or DEFAULT_OVERLAY)
