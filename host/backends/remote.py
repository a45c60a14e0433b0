"""Cost backend for a board running ``autoq board serve``: ``tcp://host:port`` or ``serial:///dev/X?baud=N``.

Query parameters (both schemes): ``key=FILE`` (shared HMAC key, required when the board has one),
``timeout=S`` (seconds to wait for one answer, default 120), ``retries=N`` (reconnect-and-resend attempts after a
lost link or a timeout, default 2); serial only: ``baud=N`` (default 115200).

Every request is idempotent (hello, measure, load_overlay), so a lost link or a missing answer is retried on a
fresh connection (a kept connection the board has closed meanwhile, e.g. after its idle timeout, is reopened
without using up a retry); error answers from the board are raised at once with the board's code and message.
Answers are read with the board's own ``FrameReader``/``parse_json`` bounds: a frame or JSON body that breaks
them (too deep, huge numbers, duplicate keys, NaN, unknown flags, a signed answer without a key) raises
``BackendError`` naming the problem.
"""
from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import parse_qs, urlsplit

from autoq.common.backend import BackendInfo
from autoq.common.errors import BackendError, PlanError, SpecError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.daemon import serial_recv
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.protocol import Codec, FrameError, FrameReader, LinkClosed, Message, ProtocolError, load_key, make_message

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 2
DEFAULT_BAUD = 115200
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.25
# Error answers without a request id that only mean "the link dropped some bytes": keep waiting for ours.
_LINK_NOISE = ("bad_magic", "bad_crc", "truncated")


class Link(Protocol):
    def recv(self, size: int) -> bytes: ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _TcpLink:
    def __init__(self, host: str, port: int):
        try:
            self._sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self._sock.settimeout(POLL_S)

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        self._sock.close()


class _SerialLink:
    def __init__(self, device: str, baud: int):
        import serial

        try:
            self._port = serial.serial_for_url(device, baudrate=baud, timeout=POLL_S, write_timeout=CONNECT_TIMEOUT_S)
        except (serial.SerialException, ValueError) as exc:
            raise ConnectionError(f"cannot open serial port {device}: {exc}") from None
        self.recv = serial_recv(self._port)

    def send(self, data: bytes) -> None:
        self._port.write(data)
        self._port.flush()

    def close(self) -> None:
        self._port.close()


@dataclass(frozen=True)
class Endpoint:
    """A parsed board URI: how to open the link and which codec it speaks."""

    uri: str
    open_link: Callable[[], Link]
    codec: Codec
    timeout_s: float
    retries: int


def parse_uri(uri: str) -> Endpoint:
    """``tcp://host:port[?key=F&timeout=S&retries=N]`` or ``serial:///dev/X[?baud=N&key=F...]``; bad ones raise."""
    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    known = {"key", "timeout", "retries"} | ({"baud"} if parts.scheme == "serial" else set())
    unknown = sorted(set(query) - known)
    if unknown:
        raise BackendError(f"board URI {uri!r}: unknown parameters {unknown}; known: {sorted(known)}")

    def number(name: str, default: float, cast: Callable[[str], Any]) -> Any:
        try:
            value = cast(query[name]) if name in query else default
        except ValueError:
            raise BackendError(f"board URI {uri!r}: {name}={query[name]!r} is not a number") from None
        if value < 0 or (value == 0 and name != "retries"):
            raise BackendError(f"board URI {uri!r}: {name} must be positive, got {value}")
        return value

    try:
        key = load_key(query["key"]) if "key" in query else None
    except ProtocolError as exc:
        raise BackendError(f"board URI {uri!r}: {exc}") from None
    timeout_s = number("timeout", DEFAULT_TIMEOUT_S, float)
    retries = number("retries", DEFAULT_RETRIES, int)
    if parts.scheme == "tcp":
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise BackendError(f"board URI {uri!r}: {exc}") from None
        if not host or not port:
            raise BackendError(f"board URI {uri!r} must name a host and a port: tcp://HOST:PORT")
        return Endpoint(uri, lambda: _TcpLink(host, port), Codec(key, crc=False), timeout_s, retries)
    if parts.scheme == "serial":
        device = parts.netloc + parts.path
        if not device:
            raise BackendError(f"board URI {uri!r} must name a serial device: serial:///dev/ttyUSB1?baud=115200")
        baud = number("baud", DEFAULT_BAUD, int)
        return Endpoint(uri, lambda: _SerialLink(device, baud), Codec(key, crc=True), timeout_s, retries)
    raise BackendError(f"board URI {uri!r}: scheme must be tcp:// or serial://")


class BoardClient:
    """Request/answer over one link, reconnecting and resending on a lost link or a missing answer."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._link: Link | None = None
        self._reader: FrameReader | None = None
        self._ids = itertools.count(1)

    def _connect(self) -> FrameReader:
        if self._reader is None:
            self._link = self.endpoint.open_link()
            self._reader = FrameReader(self._link.recv, self.endpoint.codec)
        return self._reader

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
        self._link = self._reader = None

    def request(self, header: dict[str, Any], body: Any = None, timeout_s: float | None = None) -> Any:
        """Send one request and return the JSON payload of its ``result``; board errors raise at once."""
        message = make_message({**header, "id": next(self._ids)}, body)
        frame = self.endpoint.codec.encode(message)
        timeout_s = timeout_s or self.endpoint.timeout_s
        problem = ""
        attempt = 0
        while attempt <= self.endpoint.retries:
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 2.0))
            kept = self._reader is not None
            try:
                reader = self._connect()
                assert self._link is not None  # _connect opened it
                self._link.send(frame)
                return self._await(reader, message.id, timeout_s)
            except (ConnectionError, OSError, LinkClosed, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
                self.close()
                if kept and not isinstance(exc, TimeoutError):
                    continue  # the board had closed the kept link (idle): open a fresh one at once
                attempt += 1
        raise BackendError(
            f"board at {self.endpoint.uri}: no answer to {header['type']} after {self.endpoint.retries + 1} attempts: {problem}"
        )

    def _await(self, reader: FrameReader, request_id: int, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer within {timeout_s:g} s")
            try:
                answer = reader.read()
            except TimeoutError:
                continue
            except FrameError as exc:
                if exc.code in _LINK_NOISE:
                    continue
                raise BackendError(f"board at {self.endpoint.uri} sent an invalid frame: {exc.code}: {exc}") from None
            if answer.id == request_id:
                return self._result(answer)
            if answer.type == "error" and answer.id is None and answer.header.get("code") not in _LINK_NOISE:
                return self._result(answer)

    def _result(self, answer: Message) -> Any:
        if answer.type == "result":
            try:
                return answer.json_payload(self.endpoint.codec.limits)
            except ProtocolError as exc:
                raise BackendError(f"board at {self.endpoint.uri} sent an invalid answer: {exc}") from None
        code, text = answer.header.get("code", "?"), answer.header.get("message", "")
        where = f"board at {self.endpoint.uri}"
        if code == "bad_plan":
            raise PlanError(f"{where} rejected the plan: {text}")
        if code == "bad_network":
            raise SpecError(f"{where} rejected the network: {text}")
        raise BackendError(f"{where}: {code}: {text}")


class RemoteBackend:
    """``CostBackend`` over a ``BoardClient``: measurements come from the board (or its emulated device)."""

    def __init__(self, endpoint: Endpoint):
        self.client = BoardClient(endpoint)
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """The board's ``hello`` answer: manifest, sensors, overlays, protocol version (fetched once)."""
        if self._info is None:
            self._info = self.client.request({"type": "hello"})
        return self._info

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        plan.check(network)
        body = {"network": network.to_dict(), "plan": plan.to_dict(), "batch": batch}
        return Measurement.from_dict(self.client.request({"type": "measure"}, body))

    def load_overlay(self, name: str) -> OverlayConfig:
        config = OverlayConfig.from_dict(self.client.request({"type": "load_overlay", "name": name})["overlay"])
        self._info = None
        return config

    def describe(self) -> BackendInfo:
        info = self.info()
        return BackendInfo(
            uri=self.client.endpoint.uri,
            source=info["source"],
            overlay=OverlayConfig.from_dict(info["overlay"]),
            measures=tuple(info["measures"]),
            detail=f"board {info['board_id']}, protocol v{info['protocol_version']}, sensors {[s['name'] for s in info['sensors']]}",
        )

    def close(self) -> None:
        self.client.close()


def from_uri(uri: str) -> RemoteBackend:
    return RemoteBackend(parse_uri(uri))
