"""Wire protocol between the host and ``autoq board serve``: framed messages over TCP or a serial link.

A frame is::

    magic "AQHL" | version u8 | flags u8 | header length u32 | payload length u32 | header | payload
                 [| HMAC-SHA256 (32 bytes) if FLAG_HMAC] [| CRC32 (4 bytes) if FLAG_CRC]

all integers big-endian. The header is a JSON object (``type``, ``id`` and small fields); the payload is opaque
bytes (JSON bodies of networks, plans and measurements). The HMAC covers everything from ``version`` to the
end of the payload; the CRC (serial links) covers everything from ``magic`` to the HMAC. Lengths are checked
against ``FrameLimits`` before anything is read, so an oversize frame costs no memory. Flag bits other than
``FLAG_HMAC``/``FLAG_CRC`` are refused, and so is a signed frame on a link without a key (its MAC could not be
checked).

``FrameReader`` reads frames from any byte source with a ``recv(n)``-like callable. When bytes at a frame start
are not the magic, or a frame fails its CRC, it reports a ``FrameError`` and resynchronises by scanning for the
next magic, so a link survives garbage and truncated frames. A frame must arrive whole within
``FrameLimits.body_timeout_s`` of its first byte (magic, prefix and body alike), however slowly it trickles in.

JSON (headers, and payloads through ``Message.json_payload``) is parsed by ``parse_json``, which refuses before
decoding anything nested deeper than ``max_json_depth``, holding more than ``max_json_values`` values or a
number of more than ``max_number_digits`` digits (strings and arrays are bounded by the frame's byte limits),
and while decoding refuses duplicate keys, ``NaN``/``Infinity`` and numbers that overflow a float. Every
refusal is a ``ProtocolError`` naming the problem, never a crash of the reader. Imports only the standard
library: this runs on the board.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from autoq.common.errors import AutoQError

MAGIC = b"AQHL"
PROTOCOL_VERSION = 2  # 2: measurements carry measured/predicted labels (common.measurement format 2)
FLAG_HMAC = 0x01
FLAG_CRC = 0x02
KNOWN_FLAGS = FLAG_HMAC | FLAG_CRC
_PREFIX = struct.Struct(">4sBBII")
PREFIX_BYTES = _PREFIX.size
HMAC_BYTES = 32
CRC_BYTES = 4
MIN_KEY_BYTES = 16

# Error codes of structured ``error`` answers (header ``code``); each answer also carries a readable ``message``.
ERROR_CODES = (
    "bad_magic",  # bytes that are not a frame start were skipped
    "truncated",  # a frame stopped before its announced length
    "oversize",  # announced lengths beyond the limits
    "bad_version",  # protocol version this side does not speak
    "bad_crc",  # CRC32 mismatch on a serial link
    "bad_hmac",  # missing or wrong HMAC-SHA256
    "bad_header",  # unknown flag bits, or the header is not a (bounded, well-formed) JSON object with a type
    "bad_request",  # a well-formed frame with unknown type, bad/missing fields or a payload that is not (bounded) JSON
    "bad_network",  # network spec does not parse
    "bad_plan",  # plan does not parse or does not fit the network
    "unknown_overlay",  # no such bitstream in the board's own bitstreams/ folder
    "checksum_mismatch",  # a bitstream file fails its recorded checksum
    "busy",  # another measurement held the engine for longer than the wait limit
    "device_error",  # the engine or a sensor failed
    "internal",  # a bug: the message has the exception
)


class ProtocolError(AutoQError, RuntimeError):
    """A frame or message breaks the protocol; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class FrameError(ProtocolError):
    """The byte stream does not hold a valid frame here (the reader has already resynchronised).

    ``request_id``: the id from the frame's header when it could be read (wrong version or HMAC), so the answer
    reaches the request that caused it.
    """

    def __init__(self, code: str, message: str, request_id: Any = None):
        super().__init__(code, message)
        self.request_id = request_id


class LinkClosed(AutoQError, ConnectionError):
    """The other side closed the link (at a frame boundary, or mid-frame with ``partial`` bytes read)."""

    def __init__(self, message: str, partial: int = 0):
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True)
class FrameLimits:
    """Size limits checked before a frame body is read; ``body_timeout_s``: how long a frame may take from its
    first byte to its last; the ``json`` limits bound what ``parse_json`` decodes (headers and payloads)."""

    max_header: int = 64 * 1024
    max_payload: int = 16 * 1024 * 1024
    body_timeout_s: float = 10.0
    max_json_depth: int = 32
    max_json_values: int = 1_000_000
    max_number_digits: int = 64


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


class _Refused(ValueError):
    """Raised by the ``json`` hooks; ``parse_json`` turns it into a ``ProtocolError``."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"holds the number {text[:20]!r}, which overflows a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _Refused(f"repeats the key {key[:40]!r} in one object")
            seen.add(key)
    return obj


def _structure_problem(data: bytes, limits: FrameLimits) -> str:
    """What makes ``data`` too costly to decode (too deep, too many values, too long a number), or ''."""
    bare = _JSON_STRING.sub(b'""', data)  # the structure outside strings: brackets, commas, numbers
    values = bare.count(b",") + bare.count(b"[") + bare.count(b"{")
    if values > limits.max_json_values:
        return f"holds {values}+ JSON values; the limit is {limits.max_json_values}"
    if re.search(rb"[0-9]{%d}" % (limits.max_number_digits + 1), bare):
        return f"holds a number of more than {limits.max_number_digits} digits"
    depth = 0
    for bracket in bare.translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        if depth > limits.max_json_depth:
            return f"nests JSON deeper than {limits.max_json_depth} levels"
    return ""


def parse_json(data: bytes, what: str, code: str, limits: FrameLimits) -> Any:
    """``data`` decoded as JSON within ``limits``; anything else raises ``ProtocolError(code)`` naming ``what``."""
    problem = _structure_problem(data, limits)
    if problem:
        raise ProtocolError(code, f"{what} {problem}")
    try:
        return json.loads(
            data.decode(), object_pairs_hook=_unique_keys, parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except _Refused as exc:
        raise ProtocolError(code, f"{what} {exc}") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(code, f"{what} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class Message:
    """One decoded frame: its JSON header and raw payload."""

    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        return str(self.header.get("type", ""))

    @property
    def id(self) -> Any:
        return self.header.get("id")

    def json_payload(self, limits: FrameLimits = FrameLimits()) -> Any:
        """The payload parsed by ``parse_json`` (None when empty); ``ProtocolError('bad_request')`` when refused."""
        if not self.payload:
            return None
        return parse_json(self.payload, f"{self.type or 'message'} payload", "bad_request", limits)


def make_message(header: Mapping[str, Any], body: Any = None) -> Message:
    """A message whose payload is ``body`` as compact JSON (no payload when ``body`` is None)."""
    payload = b"" if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return Message(dict(header), payload)


def error_message(code: str, message: str, request_id: Any = None) -> Message:
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return Message({"type": "error", "id": request_id, "code": code, "message": message})


def load_key(path: str) -> bytes:
    """The shared HMAC key from a key file (surrounding whitespace stripped); too short or unreadable raises."""
    try:
        with open(path, "rb") as fh:
            key = fh.read().strip()
    except OSError as exc:
        raise ProtocolError("bad_hmac", f"cannot read key file {path}: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ProtocolError("bad_hmac", f"key file {path} holds {len(key)} bytes; a shared key needs at least {MIN_KEY_BYTES}")
    return key


@dataclass(frozen=True)
class Codec:
    """Encodes and checks frames for one link: with an HMAC key (required on frames it reads when set) and/or CRC."""

    key: bytes | None = None
    crc: bool = False
    limits: FrameLimits = field(default_factory=FrameLimits)

    def encode(self, message: Message) -> bytes:
        header = json.dumps(message.header, separators=(",", ":"), allow_nan=False).encode()
        if len(header) > self.limits.max_header or len(message.payload) > self.limits.max_payload:
            raise ProtocolError(
                "oversize",
                f"message of {len(header)} header + {len(message.payload)} payload bytes exceeds the limits "
                f"({self.limits.max_header} + {self.limits.max_payload})",
            )
        flags = (FLAG_HMAC if self.key else 0) | (FLAG_CRC if self.crc else 0)
        frame = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, flags, len(header), len(message.payload)) + header + message.payload
        if self.key:
            frame += hmac.new(self.key, frame[len(MAGIC):], hashlib.sha256).digest()
        if self.crc:
            frame += struct.pack(">I", zlib.crc32(frame))
        return frame


class FrameReader:
    """Reads frames through ``recv(n) -> bytes`` (b'' at end of stream; may raise ``TimeoutError`` when idle).

    Every problem raises ``FrameError`` after the reader has put itself at a point where the next frame can be
    found, so the caller answers the error and keeps reading.
    """

    def __init__(self, recv: Callable[[int], bytes], codec: Codec):
        self._recv = recv
        self.codec = codec
        self._buffer = bytearray()

    def _fill(self, size: int, deadline: float | None) -> None:
        """Grow the buffer to ``size`` bytes. ``deadline`` (monotonic) bounds the wait of a started frame, however
        the bytes trickle in; past it ``TimeoutError`` (also when idle without a deadline)."""
        while len(self._buffer) < size:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("frame deadline passed")
            try:
                chunk = self._recv(max(size - len(self._buffer), 4096))
            except TimeoutError:
                if deadline is None:
                    raise
                continue
            if not chunk:
                raise LinkClosed("link closed by the other side", partial=len(self._buffer))
            self._buffer += chunk

    def _skip_to_magic(self) -> int:
        """Drop bytes up to the next magic (or keep a possible magic prefix at the end); return bytes dropped."""
        at = self._buffer.find(MAGIC)
        if at < 0:
            keep = next((n for n in range(len(MAGIC) - 1, 0, -1) if self._buffer.endswith(MAGIC[:n])), 0)
            at = len(self._buffer) - keep
        del self._buffer[:at]
        return at

    def _resync_after_bad_frame(self) -> None:
        """Drop the magic of a frame that proved bad so the next scan looks inside it for a real frame start."""
        del self._buffer[:1]
        self._skip_to_magic()

    def read(self) -> Message:
        """The next valid frame; blocks until one starts (``TimeoutError`` from ``recv`` passes through when idle)."""
        self._fill(1, None)
        limits = self.codec.limits
        deadline = time.monotonic() + limits.body_timeout_s
        try:
            self._fill(len(MAGIC), deadline)
        except TimeoutError:
            if MAGIC.startswith(self._buffer):
                got = len(self._buffer)
                self._buffer.clear()
                raise FrameError(
                    "truncated", f"frame start truncated: got {got} of {len(MAGIC)} magic bytes within {limits.body_timeout_s:g} s"
                ) from None
        if not self._buffer.startswith(MAGIC):
            dropped = self._skip_to_magic()
            # Gather the rest of a garbage burst so it is reported once, not once per recv chunk.
            while len(self._buffer) < len(MAGIC) and time.monotonic() < deadline:
                try:
                    chunk = self._recv(4096)
                except TimeoutError:
                    break
                if not chunk:
                    break
                self._buffer += chunk
                dropped += self._skip_to_magic()
            raise FrameError("bad_magic", f"skipped {dropped} bytes that are not a frame start (expected magic {MAGIC!r})")
        try:
            self._fill(PREFIX_BYTES, deadline)
        except TimeoutError:
            got = len(self._buffer)
            self._buffer.clear()
            raise FrameError("truncated", f"frame prefix truncated: got {got} of {PREFIX_BYTES} bytes") from None
        _magic, version, flags, header_len, payload_len = _PREFIX.unpack_from(self._buffer)
        if header_len > limits.max_header or payload_len > limits.max_payload:
            self._resync_after_bad_frame()
            raise FrameError(
                "oversize",
                f"frame announces {header_len} header + {payload_len} payload bytes; limits are "
                f"{limits.max_header} + {limits.max_payload}",
            )
        total = PREFIX_BYTES + header_len + payload_len + (HMAC_BYTES if flags & FLAG_HMAC else 0) + (
            CRC_BYTES if flags & FLAG_CRC else 0
        )
        try:
            self._fill(total, deadline)
        except TimeoutError:
            got = len(self._buffer)
            if self.codec.crc:
                self._resync_after_bad_frame()
            else:
                self._buffer.clear()
            raise FrameError(
                "truncated", f"frame truncated: got {got} of {total} bytes within {limits.body_timeout_s:g} s"
            ) from None
        frame = bytes(self._buffer[:total])
        if self.codec.crc:
            if not flags & FLAG_CRC:
                self._resync_after_bad_frame()
                raise FrameError("bad_crc", "frame has no CRC32; this serial link requires one")
            (crc,) = struct.unpack(">I", frame[-CRC_BYTES:])
            if zlib.crc32(frame[:-CRC_BYTES]) != crc:
                self._resync_after_bad_frame()
                raise FrameError("bad_crc", "frame failed its CRC32 check (corrupted or truncated on the link)")
            frame = frame[:-CRC_BYTES]
        del self._buffer[:total]
        body_end = PREFIX_BYTES + header_len + payload_len
        try:
            header = parse_json(frame[PREFIX_BYTES:PREFIX_BYTES + header_len], "frame header", "bad_header", limits)
        except ProtocolError as exc:
            header, header_problem = None, str(exc)
        else:
            header_problem = "" if isinstance(header, dict) and isinstance(header.get("type"), str) else (
                "frame header must be a JSON object with a string 'type'"
            )
        request_id = header.get("id") if isinstance(header, dict) else None
        if version != PROTOCOL_VERSION:
            raise FrameError(
                "bad_version", f"protocol version {version} is not supported; this side speaks {PROTOCOL_VERSION}", request_id
            )
        if flags & ~KNOWN_FLAGS:
            raise FrameError(
                "bad_header", f"frame flags 0x{flags:02x} set unknown bits 0x{flags & ~KNOWN_FLAGS:02x}; known: "
                f"0x{FLAG_HMAC:02x} HMAC, 0x{FLAG_CRC:02x} CRC32", request_id,
            )
        if self.codec.key:
            if not flags & FLAG_HMAC:
                raise FrameError("bad_hmac", "frame is not signed; this link requires an HMAC-SHA256 with the shared key", request_id)
            expected = hmac.new(self.codec.key, frame[len(MAGIC):body_end], hashlib.sha256).digest()
            if not hmac.compare_digest(expected, frame[body_end:body_end + HMAC_BYTES]):
                raise FrameError("bad_hmac", "frame HMAC does not match: wrong shared key or tampered frame", request_id)
        elif flags & FLAG_HMAC:
            raise FrameError(
                "bad_hmac", "frame is signed but this side has no shared key to check its HMAC: give both sides the "
                "same key (board: --key-file, host: key=FILE) or send unsigned frames", request_id,
            )
        if header_problem:
            raise FrameError("bad_header", header_problem, request_id)
        return Message(header, frame[PREFIX_BYTES + header_len:body_end])
