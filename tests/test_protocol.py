"""Frame codec and reader: round trips, limits, HMAC, CRC and resynchronisation after garbage."""
from __future__ import annotations

import json
import struct
import zlib

import pytest

from autoq.overlay.protocol import (
    PROTOCOL_VERSION,
    FLAG_HMAC,
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
    parse_json,
)

from boardkit import junk

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
    garbage = junk(300)
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
    prefix = struct.pack(">4sBBII", MAGIC, PROTOCOL_VERSION, 0, 10, 1 << 30)
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
    with pytest.raises(FrameError, match=f"version 7 is not supported; this side speaks {PROTOCOL_VERSION}") as exc:
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
    frame = struct.pack(">4sBBII", MAGIC, PROTOCOL_VERSION, 0, len(raw), 0) + raw
    with pytest.raises(FrameError, match="header is not valid JSON") as exc:
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


# -- hostile input: every frame gets a FrameError naming the problem, and the next frame is read -------------------
def raw_frame(header: bytes, payload: bytes = b"", flags: int = 0) -> bytes:
    return struct.pack(">4sBBII", MAGIC, PROTOCOL_VERSION, flags, len(header), len(payload)) + header + payload


HOSTILE_HEADERS = {
    "deep nesting": (b'{"type":"hello","id":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deeper than 32 levels"),
    "huge integer": (b'{"type":"hello","id":' + b"9" * 5000 + b"}", "more than 64 digits"),
    "huge exponent": (b'{"type":"hello","id":1e' + b"9" * 5000 + b"}", "more than 64 digits"),
    "float overflow": (b'{"type":"hello","id":1e999}', "overflows a float"),
    "NaN id": (b'{"type":"hello","id":NaN}', "holds NaN, which is not a JSON number"),
    "Infinity id": (b'{"type":"hello","id":-Infinity}', "holds -Infinity, which is not a JSON number"),
    "duplicate key": (b'{"type":"measure","type":"info","id":1}', "repeats the key 'type'"),
    "nested duplicate": (b'{"type":"hello","x":{"a":1,"a":2}}', "repeats the key 'a'"),
    "too many values": (b'{"type":"hello","id":[' + b",".join([b"0"] * 2000) + b"]}", "JSON values; the limit is 1000"),
}


@pytest.mark.parametrize("name", HOSTILE_HEADERS)
@pytest.mark.parametrize("codec", [Codec(), Codec(crc=True)], ids=["tcp", "serial"])
def test_hostile_header_json_is_refused_and_the_reader_goes_on(name, codec):
    header, problem = HOSTILE_HEADERS[name]
    frame = raw_frame(header, flags=2 if codec.crc else 0)
    if codec.crc:
        frame += struct.pack(">I", zlib.crc32(frame))
    limits = FrameLimits(max_header=1 << 20, max_json_values=1000 if name == "too many values" else 10**6)
    codec = Codec(crc=codec.crc, limits=limits)
    reader = reader_for(frame + codec.encode(Message({"type": "hello", "id": 2})), codec, chunk=1 << 16)
    with pytest.raises(FrameError, match=problem) as exc:
        reader.read()
    assert exc.value.code == "bad_header" and "frame header" in str(exc.value)
    assert reader.read().id == 2


def test_payload_json_is_bounded_the_same_way():
    limits = FrameLimits(max_json_depth=4, max_number_digits=10)
    ok = Message({"type": "measure"}, b'{"a":[[1.5e-3,12345]],"b":"[[[[[[[[ not structure"}')
    assert ok.json_payload(limits) == {"a": [[1.5e-3, 12345]], "b": "[[[[[[[[ not structure"}
    for payload, problem in [
        (b'{"a":[[[[[]]]]]}', "measure payload nests JSON deeper than 4 levels"),
        (b'{"batch":12345678901}', "measure payload holds a number of more than 10 digits"),
        (b'{"batch":1,"batch":2}', "repeats the key 'batch'"),
        (b'{"batch":NaN}', "holds NaN"),
        (b'{"s":"\\"}}', "measure payload is not valid JSON"),
    ]:
        with pytest.raises(ProtocolError, match=problem) as exc:
            Message({"type": "measure"}, payload).json_payload(limits)
        assert exc.value.code == "bad_request"
    with pytest.raises(ProtocolError, match="deeper than 32 levels"):  # the default limits apply without any
        Message({"type": "measure"}, b"[" * 50_000 + b"]" * 50_000).json_payload()


def test_escaped_quotes_and_brackets_inside_strings_do_not_count():
    value = {"k\\": '\\"[[[[{{{{ 123456789 \u00e9', "n": [1]}
    text = json.dumps(value).encode()
    assert b'\\\\\\"[[[[' in text  # an escaped backslash, then an escaped quote, inside the string
    assert parse_json(text, "x", "bad_request", FrameLimits(max_json_depth=2, max_number_digits=3)) == value


def test_unknown_flag_bits_are_refused():
    reader = reader_for(raw_frame(b'{"type":"hello","id":3}', flags=0x80) + Codec().encode(Message({"type": "hello", "id": 4})), Codec())
    with pytest.raises(FrameError, match="unknown bits 0x80") as exc:
        reader.read()
    assert (exc.value.code, exc.value.request_id) == ("bad_header", 3)
    assert reader.read().id == 4


def test_a_signed_frame_on_a_link_without_a_key_is_refused():
    """Without a key the MAC cannot be checked: the frame is refused instead of served as if unsigned."""
    frame = Codec(key=KEY).encode(Message({"type": "hello", "id": 5}))
    assert frame[5] & FLAG_HMAC
    with pytest.raises(FrameError, match="frame is signed but this side has no shared key") as exc:
        reader_for(frame, Codec()).read()
    assert (exc.value.code, exc.value.request_id) == ("bad_hmac", 5)


def test_nan_is_never_sent():
    with pytest.raises(ValueError):
        make_message({"type": "result"}, {"energy_j": float("nan")})
    with pytest.raises(ValueError):
        Codec().encode(Message({"type": "result", "id": float("inf")}))


def test_a_partial_magic_times_out_instead_of_waiting_forever():
    codec = Codec(limits=FrameLimits(body_timeout_s=0.05))
    reader = reader_for(b"AQ", codec)
    with pytest.raises(FrameError, match="frame start truncated: got 2 of 4 magic bytes") as exc:
        reader.read()
    assert exc.value.code == "truncated"
    with pytest.raises(TimeoutError):  # and the link is idle again
        reader.read()


class Trickle:
    """A sender that never stops: one byte per ``recv`` of ``data``, again and again."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def recv(self, _size: int) -> bytes:
        byte = self.data[self.at % len(self.data):][:1]
        self.at += 1
        return byte


def test_a_trickled_frame_is_cut_at_its_deadline():
    frame = Codec().encode(make_message({"type": "measure", "id": 1}, {"x": "y" * 10**6}))
    reader = FrameReader(Trickle(frame).recv, Codec(limits=FrameLimits(body_timeout_s=0.1)))
    with pytest.raises(FrameError, match=r"frame truncated: got \d+ of \d+ bytes within 0.1 s"):
        reader.read()
    garbage = FrameReader(Trickle(b"x").recv, Codec(limits=FrameLimits(body_timeout_s=0.1)))
    with pytest.raises(FrameError, match="skipped") as exc:
        garbage.read()
    assert exc.value.code == "bad_magic"
