"""The one seam between search and hardware: ``CostBackend``, opened from a URI.

| URI                                   | module that serves it            |
|---------------------------------------|----------------------------------|
| ``model`` / ``model:calibration.json`` | ``autoq.host.backends.model``    |
| ``emulated``                          | ``autoq.host.backends.emulated`` |
| ``rtlsim``, ``rtlsim?read_latency=N&...&overlay=NAME`` | ``autoq.host.backends.rtlsim`` |
| ``tcp://host:port``, ``serial:///dev/X?baud=N`` | ``autoq.host.backends.remote`` |
| ``replay:trace.sqlite``               | ``autoq.host.backends.replay``   |
| ``pool:URI,URI,...``                  | ``autoq.host.backends.pool``     |

Each module exposes ``from_uri(uri: str) -> CostBackend``; modules are imported only when their scheme is used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .errors import BackendError
from .measurement import Measurement
from .network import NetworkSpec
from .plan import QuantPlan

if TYPE_CHECKING:
    from autoq.overlay.manifest import OverlayConfig

BACKEND_MODULES: dict[str, str] = {
    "model": "autoq.host.backends.model",
    "emulated": "autoq.host.backends.emulated",
    "rtlsim": "autoq.host.backends.rtlsim",
    "tcp": "autoq.host.backends.remote",
    "serial": "autoq.host.backends.remote",
    "replay": "autoq.host.backends.replay",
    "pool": "autoq.host.backends.pool",
}
DEFAULT_BACKEND = "model"


@dataclass(frozen=True)
class BackendInfo:
    """What a backend is and what it measures (a subset of latency, energy, power, resources)."""

    uri: str
    source: str
    overlay: "OverlayConfig"
    measures: tuple[str, ...]
    detail: str = ""


@runtime_checkable
class CostBackend(Protocol):
    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement: ...

    def describe(self) -> BackendInfo: ...

    def close(self) -> None: ...


def scheme_of(uri: str) -> str:
    """What comes before the first ``:`` or ``?`` (``tcp`` of ``tcp://h:p``, ``pool`` of ``pool:tcp://h:p,...``)."""
    return uri.split(":", 1)[0].split("?", 1)[0]


def open_backend(uri: str = DEFAULT_BACKEND) -> CostBackend:
    """Open the backend named by ``uri``; unknown schemes and failures raise ``BackendError`` naming the URI."""
    scheme = scheme_of(uri)
    if scheme not in BACKEND_MODULES:
        raise BackendError(f"unknown cost backend {uri!r}: the scheme must be one of {sorted(BACKEND_MODULES)}")
    try:
        module = importlib.import_module(BACKEND_MODULES[scheme])
    except ImportError as exc:
        raise BackendError(f"cost backend {uri!r} is not available here: {exc}") from None
    return module.from_uri(uri)
