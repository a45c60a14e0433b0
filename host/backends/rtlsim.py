"""Cost backend ``rtlsim`` (``rtlsim[:OVERLAY][?read_latency=40&write_latency=30&outstanding=8&bandwidth=8&
overlay=NAME]``): the board service's own code, in process, on the cycle-accurate Verilator simulation of the RTL
engine (``autoq.hls.rtlsim``) behind a simulated Zynq HP port. The same path as ``emulated`` (driver, layout,
measurement protocol) with the RTL in place of the emulated device; measurements are labelled ``rtlsim`` and their
latencies are the RTL's own cycle counts. Query keys other than ``overlay`` set the HP-port model
(``autoq.hls.rtlsim.memory``); the overlay defaults to ``rtl_small`` (a 2x2x64 array; ``pynq_z1`` is the
8x8x128 PYNQ-Z1 build, ~15x slower to simulate).
"""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from autoq.common.backend import BackendInfo
from autoq.common.errors import AutoQError, BackendError
from autoq.overlay.manifest import OverlayConfig

from .emulated import EmulatedBackend


class RtlSimBackend(EmulatedBackend):
    def __init__(self, uri: str, overlay: str, memory_query: str = ""):
        self.uri = uri
        try:
            from autoq.hls.rtlsim import HPPortModel
            from autoq.hls.rtlsim.board import rtlsim_board

            self.memory = HPPortModel.from_query(memory_query)
            self.board = rtlsim_board(overlay, self.memory)
        except ImportError as exc:
            raise BackendError(f"cost backend {uri!r} is not available here: {exc}") from None
        except AutoQError as exc:
            raise BackendError(f"cost backend {uri!r}: {exc}") from None

    def describe(self) -> BackendInfo:
        info = self.board.info()
        return BackendInfo(self.uri, info["source"], OverlayConfig.from_dict(info["overlay"]), tuple(info["measures"]),
                           info["detail"])


def parse_uri(uri: str) -> tuple[str, str]:
    """``(overlay, HP-port query)`` of an ``rtlsim`` URI; ``BackendError`` when it is malformed."""
    from autoq.hls.rtlsim.board import DEFAULT_RTL_OVERLAY

    head, _, query = uri.partition("?")
    scheme, colon, overlay = head.partition(":")
    if scheme != "rtlsim" or (colon and not overlay):
        raise BackendError(f"cost backend {uri!r}: expected 'rtlsim', 'rtlsim:OVERLAY' or 'rtlsim?key=value&...'")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise BackendError(f"cost backend {uri!r}: the query {query!r} is not key=value pairs joined by '&'") from None
    named = [value for key, value in pairs if key == "overlay"]
    if len(named) > 1 or (named and overlay):
        raise BackendError(f"cost backend {uri!r}: name the overlay once (rtlsim:OVERLAY or overlay=NAME)")
    overlay = overlay or (named[0] if named else DEFAULT_RTL_OVERLAY)
    if not overlay:
        raise BackendError(f"cost backend {uri!r}: overlay= needs a name")
    return overlay, urlencode([(key, value) for key, value in pairs if key != "overlay"])


def from_uri(uri: str) -> RtlSimBackend:
    overlay, memory = parse_uri(uri)
    return RtlSimBackend(uri, overlay, memory)
