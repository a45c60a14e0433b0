"""Frame codec and reader: round trips, limits, HMAC, CRC and resynchronisation after garbage."""
from __future__ import annotations

import os
import struct
import zlib

import pytest

from autoq.overlay.protocol import (
    MAGIC,
    PREFIX_BYTES,
    Codec,
    FrameError,
    FrameLimits,
    FrameReader,
    LinkClosed,
    Message,
    ProtocolError,
    error_message,
    load_key,
    make_message,
)

KEY = b"k" * 32


class Stream:
    """A byte source with ``recv`` semantics: chunks as queued; TimeoutError when empty (idle), b'' once closed."""

    def __init__(self, data: bytes = b"", chunk: int = 7, closed: bool = False):
        self.data, self.chunk, self.closed = bytearray(data), chunk, closed

    def recv(self, size: int) -> bytes:
        if not self.data:
            if self.closed:
                return b""
            raise TimeoutError
        out = bytes(self.data[: min(size, self.chunk)])
        del self.data[: len(out)]
        return out


def reader_for(data: bytes, codec: Codec, **kw) -> FrameReader:
    return FrameReader(Stream(data, **kw).recv, codec)


@pytest.mark.parametrize("codec", [Codec(), Codec(key=KEY), Codec(crc=True), Codec(key=KEY, crc=True)])
def test_round_trip(codec):
    msg = make_message({"type": "measure", "id": 7}, {"plan": [1, 2, 3]})
    reader = reader_for(codec.encode(msg) + codec.encode(Message({"type": "hello", "id": 8})), codec)
    first = reader.read()
    assert first == msg and first.json_payload() == {"plan": [1, 2, 3]}
    assert reader.read().header == {"type": "hello", "id": 8}
    with pytest.raises(TimeoutError):
        reader.read()


def test_garbage_is_reported_once_then_next_frame_is_read():
    codec = Codec(crc=True)
    garbage = os.urandom(300).replace(MAGIC, b"")
    reader = reader_for(garbage + codec.encode(Message({"type": "hello", "id": 1})), codec, chunk=64)
    with pytest.raises(FrameError) as exc:
        reader.read()
    assert exc.value.code == "bad_magic" and f"skipped {len(garbage)} bytes" in str(exc.value)
    assert reader.read().id == 1


def test_crc_failure_resyncs_inside_the_bad_frame():
    """A truncated frame swallowed the start of the next one: its CRC fails and the reader finds the next magic."""
    codec = Codec(crc=True, limits=FrameLimits(body_timeout_s=0.05))
    good = codec.encode(Message({"type": "hello", "id": 2}))
    truncated = codec.encode(make_message({"type": "measure", "id": 1}, {"x": "y" * 200}))[:-60]
    reader = reader_for(truncated + good, codec, chunk=1000)
    with pytest.raises(FrameError) as exc:
        reader.read()
    assert exc.value.code in ("bad_crc", "truncated")
    assert reader.read().id == 2


def test_corrupted_byte_fails_crc():
    codec = Codec(crc=True)
    frame = bytearray(codec.encode(Message({"type": "hello", "id": 3})))
    frame[PREFIX_BYTES + 2] ^= 0x40
    with pytest.raises(FrameError, match="CRC32") as exc:
        reader_for(bytes(frame), codec).read()
    assert exc.value.code == "bad_crc"


def test_serial_link_requires_crc():
    with pytest.raises(FrameError, match="no CRC32"):
        reader_for(Codec().encode(Message({"type": "hello"})), Codec(crc=True)).read()


def test_truncated_frame_times_out_with_clear_error():
    codec = Codec(limits=FrameLimits(body_timeout_s=0.05))
    frame = codec.encode(make_message({"type": "measure", "id": 1}, {"a": 1}))
    with pytest.raises(FrameError, match=r"frame truncated: got \d+ of \d+ bytes") as exc:
        reader_for(frame[:-3], codec).read()
    assert exc.value.code == "truncated"


def test_link_closed_mid_frame():
    codec = Codec()
    frame = codec.encode(Message({"type": "hello"}))
    with pytest.raises(LinkClosed) as exc:
        reader_for(frame[:10], codec, closed=True).read()
    assert exc.value.partial == 10


def test_oversize_frame_is_refused_before_reading_its_body():
    codec = Codec(limits=FrameLimits(max_payload=1024))
    prefix = struct.pack(">4sBBII", MAGIC, 1, 0, 10, 1 << 30)
    reader = reader_for(prefix + codec.encode(Message({"type": "hello", "id": 5})), codec)
    with pytest.raises(FrameError, match="limits are") as exc:
        reader.read()
    assert exc.value.code == "oversize"
    assert reader.read().id == 5
    with pytest.raises(ProtocolError, match="exceeds the limits"):
        codec.encode(Message({"type": "x"}, b"0" * 2000))


def test_wrong_version_names_both_versions_and_keeps_request_id():
    frame = bytearray(Codec().encode(Message({"type": "hello", "id": 9})))
    frame[4] = 7
    with pytest.raises(FrameError, match="version 7 is not supported; this side speaks 1") as exc:
        reader_for(bytes(frame), Codec()).read()
    assert exc.value.code == "bad_version" and exc.value.request_id == 9


@pytest.mark.parametrize("sender", [Codec(), Codec(key=b"x" * 32)], ids=["unsigned", "wrong-key"])
def test_hmac_required_and_checked(sender):
    with pytest.raises(FrameError) as exc:
        reader_for(sender.encode(Message({"type": "hello", "id": 4})), Codec(key=KEY)).read()
    assert exc.value.code == "bad_hmac" and exc.value.request_id == 4


def test_tampered_payload_fails_hmac_even_with_valid_crc():
    codec = Codec(key=KEY, crc=True)
    frame = bytearray(codec.encode(make_message({"type": "measure", "id": 1}, {"batch": 1})))
    frame[-40] ^= 1  # inside the payload
    body = bytes(frame[:-4])
    tampered = body + struct.pack(">I", zlib.crc32(body))
    with pytest.raises(FrameError, match="HMAC does not match"):
        reader_for(tampered, codec).read()


def test_bad_header_is_reported():
    raw = b"not json"
    frame = struct.pack(">4sBBII", MAGIC, 1, 0, len(raw), 0) + raw
    with pytest.raises(FrameError, match="header is not JSON") as exc:
        reader_for(frame, Codec()).read()
    assert exc.value.code == "bad_header"
    with pytest.raises(ProtocolError, match="payload is not valid JSON"):
        Message({"type": "measure"}, b"\xff").json_payload()


def test_error_message_and_key_file(tmp_path):
    assert error_message("busy", "wait", 3).header == {"type": "error", "id": 3, "code": "busy", "message": "wait"}
    with pytest.raises(ValueError):
        error_message("nonsense", "x")
    short = tmp_path / "short.key"
    short.write_bytes(b"abc\n")
    with pytest.raises(ProtocolError, match="at least 16"):
        load_key(str(short))
    good = tmp_path / "good.key"
    good.write_bytes(KEY + b"\n")
    assert load_key(str(good)) == KEY
    with pytest.raises(ProtocolError, match="cannot read key file"):
        load_key(str(tmp_path / "missing"))
