"""``autoq board serve`` under hostile input: frames built to crash the JSON parser, loose JSON, unknown flags,
idle and half-sent connections filling the table, and a bounded structure-aware fuzz over loopback TCP and a pty
serial pair. After every bad frame the link must still answer a good request, and no daemon thread may die."""
from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
import zlib
from typing import Callable, Iterator

import pytest
import serial

from autoq.common.errors import BackendError
from autoq.common.plan import QuantPlan
from autoq.host.backends.remote import BoardClient, parse_uri
from autoq.overlay.board import Board
from autoq.overlay.daemon import POLL_S, Daemon
from autoq.overlay.protocol import (
    MAGIC,
    PROTOCOL_VERSION,
    Codec,
    FrameLimits,
    FrameReader,
    LinkClosed,
    Message,
    make_message,
)

from boardkit import TINY, PtyMasterLink

KEY = b"0123456789abcdef0123456789abcdef"
FUZZ_LIMITS = FrameLimits(max_payload=64 * 1024, body_timeout_s=0.05)
FUZZ_POLL_S = 0.02


@pytest.fixture(scope="module")
def board():
    board = Board.emulated()
    yield board
    board.close()


@pytest.fixture(autouse=True)
def thread_deaths():
    """Every exception that ends a thread during the test (the daemon's threads must never die)."""
    deaths: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: deaths.append(f"{args.thread.name}: {args.exc_type.__name__}: {args.exc_value}")
    yield deaths
    threading.excepthook = previous
    assert not deaths, deaths


def raw_frame(header: bytes, payload: bytes = b"", flags: int = 0, crc: bool = False,
              version: int = PROTOCOL_VERSION) -> bytes:
    """A frame with ``header`` bytes as they are (no JSON encoding); a made-up MAC when ``flags`` say signed, the
    CRC appended on serial links."""
    frame = struct.pack(">4sBBII", MAGIC, version, flags | (2 if crc else 0), len(header), len(payload)) + header + payload
    frame += b"\x5a" * 32 if flags & 1 else b""
    return frame + struct.pack(">I", zlib.crc32(frame)) if crc else frame


def hello_frame(request_id: int, codec: Codec) -> bytes:
    return codec.encode(Message({"type": "hello", "id": request_id}))


class Peer:
    """The test's end of one link to the daemon: raw bytes out, answer frames in."""

    def __init__(self, recv: Callable[[int], bytes], send: Callable[[bytes], object], codec: Codec):
        self.send, self.codec = send, codec
        self.reader = FrameReader(recv, codec)

    def answer(self, within_s: float = 10.0) -> Message:
        deadline = time.monotonic() + within_s
        while True:
            try:
                return self.reader.read()
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def answer_to(self, request_id: int, within_s: float) -> Message | None:
        """The answer with ``request_id`` (other answers skipped), or None when none came ``within_s``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                answer = self.reader.read()
            except TimeoutError:
                continue
            if answer.id == request_id and type(answer.id) is int:
                return answer
        return None

    def still_serves(self, request_id: int, tries: int = 10) -> int:
        """Send ``hello`` until it is answered (a bad frame before it may swallow a hello or two); the id used."""
        for attempt in range(tries):
            self.send(hello_frame(request_id + attempt, self.codec))
            answer = self.answer_to(request_id + attempt, 0.2 + 4 * self.codec.limits.body_timeout_s)
            if answer is not None:
                assert answer.type == "result" and answer.header["request"] == "hello", answer.header
                return request_id + attempt
        raise AssertionError(f"no answer to hello after {tries} tries")


@pytest.fixture(params=["tcp", "serial"])
def link(request, board):
    """A daemon serving the emulated board, and a ``Peer`` on one of its links (pyserial on the pty's tty end)."""
    daemon = Daemon(board, limits=FrameLimits(body_timeout_s=0.3), busy_wait_s=0.3)
    if request.param == "tcp":
        _, port = daemon.listen_tcp("127.0.0.1", 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=POLL_S)
        yield daemon, Peer(sock.recv, sock.sendall, Codec(limits=daemon.limits))
        sock.close()
        daemon.shutdown()
    else:
        master, slave = os.openpty()
        port = serial.Serial(os.ttyname(slave), timeout=POLL_S)
        daemon.attach_serial(port)
        pty = PtyMasterLink(master)
        yield daemon, Peer(pty.recv, pty.send, Codec(crc=True, limits=daemon.limits))
        daemon.shutdown()
        port.close()
        os.close(master)
        os.close(slave)


# -- frames that used to kill a link --------------------------------------------------------------------------------
HOSTILE = {
    "deep header": (b'{"type":"hello","id":' + b"[" * 20_000 + b"]" * 20_000 + b"}", 0, "bad_header", "deeper than 32 levels"),
    "huge integer": (b'{"type":"hello","id":' + b"7" * 5000 + b"}", 0, "bad_header", "more than 64 digits"),
    "NaN id": (b'{"type":"hello","id":NaN}', 0, "bad_header", "holds NaN"),
    "duplicate type": (b'{"type":"measure","type":"info","id":3}', 0, "bad_header", "repeats the key 'type'"),
    "unknown flag": (b'{"type":"hello","id":3}', 0x40, "bad_header", "unknown bits 0x40"),
    "signed, no key": (b'{"type":"hello","id":3}', 0x01, "bad_hmac", "this side has no shared key"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_header_is_answered_and_the_link_serves_on(link, name):
    daemon, peer = link
    header, flags, code, problem = HOSTILE[name]
    peer.send(raw_frame(header, flags=flags, crc=peer.codec.crc))
    answer = peer.answer()
    assert answer.type == "error" and answer.header["code"] == code and problem in answer.header["message"]
    peer.still_serves(100)


@pytest.mark.parametrize("payload, problem", [
    (b'{"network":' + b"[" * 20_000 + b"]" * 20_000 + b"}", "measure payload nests JSON deeper than 32 levels"),
    (b'{"network":{},"plan":{},"batch":' + b"1" * 5000 + b"}", "measure payload holds a number of more than 64 digits"),
    (b'{"network":{},"plan":{},"batch":1,"batch":2}', "measure payload repeats the key 'batch'"),
    (b'{"network":{},"plan":{},"batch":Infinity}', "measure payload holds Infinity"),
], ids=["deep", "huge number", "duplicate key", "Infinity"])
def test_hostile_measure_payload_is_a_bad_request(link, payload, problem):
    _, peer = link
    peer.send(peer.codec.encode(Message({"type": "measure", "id": 9}, payload)))
    answer = peer.answer()
    assert (answer.header["code"], answer.id) == ("bad_request", 9) and problem in answer.header["message"]
    peer.still_serves(10)


def test_an_unexpected_exception_while_reading_is_answered_and_the_link_stays(board):
    """A fault inside the link (here: its ``recv`` raising once) gets an ``internal`` answer; serving goes on."""
    daemon_end, test_end = socket.socketpair()
    daemon_end.settimeout(POLL_S)
    test_end.settimeout(POLL_S)
    faults = ["injected fault"]

    def recv(size: int) -> bytes:
        if faults:
            raise RuntimeError(faults.pop())
        return daemon_end.recv(size)

    daemon = Daemon(board)
    daemon.attach_link(recv, daemon_end.sendall, crc=False, peer="socketpair")
    peer = Peer(test_end.recv, test_end.sendall, Codec())
    try:
        answer = peer.answer()
        assert answer.header["code"] == "internal" and "RuntimeError: injected fault" in answer.header["message"]
        peer.still_serves(1)
    finally:
        daemon.shutdown()
        daemon_end.close()
        test_end.close()


# -- connections that hold the table --------------------------------------------------------------------------------
def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the daemon from ``source`` (any 127.x.y.z is loopback: distinct client addresses)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def wait_closed(sock: socket.socket) -> bytes:
    """What the socket reads until the daemon has closed it (ends with b''); a socket timeout fails the test."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def signed_hello(sock: socket.socket, request_id: int, codec: Codec) -> Message:
    sock.sendall(hello_frame(request_id, codec))
    return FrameReader(sock.recv, codec).read()


@pytest.mark.parametrize("key", [KEY, None], ids=["key", "no-key"])
def test_idle_and_half_sent_connections_cannot_lock_the_owner_out(board, key):
    """16 connections that never send a whole frame (the default table) cannot keep the owner out: the oldest
    of them makes room; the owner's connection, once it has sent a valid frame, is never the one evicted."""
    daemon = Daemon(board, key=key)  # the default table: 16 connections, 8 from one address
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    codec = Codec(key=key)
    owner = connect(port)
    crowd: list[socket.socket] = []
    try:
        assert signed_hello(owner, 1, codec).type == "result"
        for n in range(15):  # idle ones, and ones that sent the start of a magic and stopped, from two addresses
            crowd.append(connect(port, f"127.0.0.{2 + n % 2}"))
            if n % 3 == 0:
                crowd[-1].sendall(MAGIC[:2])
        with connect(port, "127.0.0.4") as late:
            answer = signed_hello(late, 2, codec)
            assert answer.type == "result" and answer.id == 2, answer.header
        assert wait_closed(crowd[0]) == b""  # the oldest silent connection made room, not the owner's
        assert signed_hello(owner, 3, codec).id == 3
    finally:
        for sock in [owner, *crowd]:
            sock.close()
        daemon.shutdown()


def test_one_address_cannot_take_the_whole_table(board):
    daemon = Daemon(board, key=KEY, max_connections=4, max_connections_per_address=2)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    codec = Codec(key=KEY)
    crowd = [connect(port, "127.0.0.2") for _ in range(3)]  # the third from one address evicts that address' first
    owners: list[socket.socket] = []
    try:
        assert wait_closed(crowd[0]) == b""
        for n, source in enumerate(["127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.5"]):  # the last two evict
            owners.append(connect(port, source))
            assert signed_hello(owners[-1], n, codec).id == n
        assert wait_closed(crowd[1]) == wait_closed(crowd[2]) == b""
        with connect(port, "127.0.0.6") as refused:  # every place holds a connection that sent a signed frame
            answer = FrameReader(refused.recv, codec).read()
            assert answer.header["code"] == "busy" and "too many connections (limit 4)" in answer.header["message"]
        assert signed_hello(owners[0], 9, codec).id == 9
    finally:
        for sock in crowd + owners:
            sock.close()
        daemon.shutdown()


def test_idle_connections_are_closed_and_a_started_frame_has_a_deadline(board):
    daemon = Daemon(board, limits=FrameLimits(body_timeout_s=0.2), idle_timeout_s=0.5)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    try:
        with connect(port) as idle:
            assert wait_closed(idle) == b""
        with connect(port) as half:
            half.sendall(b"AQH")
            answer = FrameReader(half.recv, Codec()).read()
            assert answer.header["code"] == "truncated" and "got 3 of 4 magic bytes" in answer.header["message"]
            half.sendall(hello_frame(4, Codec()))
            assert FrameReader(half.recv, Codec()).read().id == 4
            assert wait_closed(half) == b""
    finally:
        daemon.shutdown()


def test_client_reopens_a_connection_the_board_closed_while_idle(board):
    daemon = Daemon(board, idle_timeout_s=0.2)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    client = BoardClient(parse_uri(f"tcp://127.0.0.1:{port}?retries=0&timeout=10"))
    try:
        assert client.request({"type": "hello"})["source"] == "emulated"
        deadline = time.monotonic() + 10
        while daemon._connections and time.monotonic() < deadline:  # until the board has dropped the idle one
            time.sleep(0.05)
        assert not daemon._connections
        assert client.request({"type": "hello"})["source"] == "emulated"  # no retry needed
    finally:
        client.close()
        daemon.shutdown()


# -- the host refuses hostile answers the same way ------------------------------------------------------------------
HOSTILE_ANSWERS = {
    "deep header": (raw_frame(b'{"type":"result","id":1,"x":' + b"[" * 20_000 + b"]" * 20_000 + b"}"), "deeper than 32 levels"),
    "huge integer": (raw_frame(b'{"type":"result","id":' + b"1" * 5000 + b"}"), "more than 64 digits"),
    "duplicate keys": (raw_frame(b'{"type":"error","id":1,"type":"result"}'), "repeats the key 'type'"),
    "NaN id": (raw_frame(b'{"type":"result","id":NaN}'), "holds NaN"),
    "unknown flag": (raw_frame(b'{"type":"result","id":1}', flags=0x10), "unknown bits 0x10"),
    "signed, no key": (Codec(key=KEY).encode(Message({"type": "result", "id": 1})), "this side has no shared key"),
    "hostile payload": (Codec().encode(Message({"type": "result", "id": 1}, b"[" * 20_000 + b"]" * 20_000)),
                        "invalid answer: result payload nests JSON deeper than 32 levels"),
}


@pytest.mark.parametrize("name", HOSTILE_ANSWERS)
def test_client_refuses_hostile_answers_with_a_clear_error(name):
    """A fake board on loopback answers every request with the hostile frame."""
    answer, problem = HOSTILE_ANSWERS[name]
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve() -> None:
        with server, server.accept()[0] as conn:
            conn.settimeout(10)
            FrameReader(conn.recv, Codec()).read()
            conn.sendall(answer)
            try:
                conn.recv(1)  # until the client closes
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = BoardClient(parse_uri(f"tcp://127.0.0.1:{server.getsockname()[1]}?retries=0&timeout=10"))
    try:
        with pytest.raises(BackendError, match=problem):
            client.request({"type": "hello"})
    finally:
        client.close()
        thread.join(10)


# -- bounded structure-aware fuzz -----------------------------------------------------------------------------------
def fuzz_frames(rng: random.Random, codec: Codec) -> Iterator[tuple[str, bytes]]:
    """Endless (kind, bytes) of mutated requests: valid frames flipped, truncated, re-headed with deep nesting, huge
    numbers, duplicate keys, NaN, wrong flags/versions/lengths, hostile payloads, or plain random bytes."""
    crc = codec.crc
    good = [
        codec.encode(Message({"type": "hello", "id": 1})),
        codec.encode(Message({"type": "load_overlay", "id": 2, "name": "pynq_z1"})),
        codec.encode(make_message({"type": "measure", "id": 3}, {"network": TINY.to_dict(),
                                                                 "plan": QuantPlan.uniform(TINY, 4, 4).to_dict()})),
    ]

    def number() -> bytes:
        digits = bytes(rng.choice(b"0123456789") for _ in range(rng.randint(60, 6000)))
        return rng.choice([digits, b"-" + digits, b"1." + digits, b"1e" + digits, b"NaN", b"Infinity", b"-Infinity", b"1e999"])

    def nested(depth: int) -> bytes:
        opener = bytes(rng.choice(b"[{") for _ in range(depth))
        closer = bytes(b"]"[0] if c == b"["[0] else b"}"[0] for c in reversed(opener))
        return opener.replace(b"{", b'{"k":') + closer

    def header() -> bytes:
        pick = rng.randrange(5)
        if pick == 0:
            return b'{"type":"hello","id":' + nested(rng.randint(20, 25_000)) + b"}"
        if pick == 1:
            return b'{"type":"hello","id":' + number() + b"}"
        if pick == 2:
            return rng.choice([b'{"type":"measure","type":"info","id":5}', b'{"id":1,"type":"hello","id":2}',
                               b'{"type":"hello","x":{"a":1,"a":[]}}'])
        if pick == 3:
            return rng.choice([b"[]", b'"hello"', b"null", b'{"type":1}', b"{", b"\xff\xfe", b'{"type":"hello"}' * 2])
        return b'{"type":"' + bytes(rng.randrange(32, 127) for _ in range(rng.randint(0, 30))).replace(b'"', b"") + b'"}'

    def payload() -> bytes:
        body = rng.choice([nested(rng.randint(30, 25_000)), b'{"network":{},"plan":{},"batch":' + number() + b"}",
                           b'{"network":{},"plan":{},"network":{}}', b'{"batch":NaN}', os.urandom(rng.randint(1, 200))])
        return body

    while True:
        kind = rng.choice(["flip", "truncate", "header", "payload", "flags", "version", "lengths", "random", "splice"])
        base = bytearray(rng.choice(good))
        if kind == "flip":
            for _ in range(rng.randint(1, 4)):
                base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
            yield kind, bytes(base)
        elif kind == "truncate":
            yield kind, bytes(base[: rng.randrange(1, len(base))])
        elif kind == "header":
            yield kind, raw_frame(header(), crc=crc)
        elif kind == "payload":
            yield kind, raw_frame(b'{"type":"measure","id":6}', payload(), crc=crc)
        elif kind == "flags":
            flags = rng.choice([0x01, 0x04, 0x08, 0x80, 0xFC, 0x05])
            yield kind, raw_frame(b'{"type":"hello","id":7}', flags=flags, crc=crc)
        elif kind == "version":
            yield kind, raw_frame(b'{"type":"hello","id":8}', version=rng.choice([0, PROTOCOL_VERSION + 1, 255]), crc=crc)
        elif kind == "lengths":
            base[8:16] = struct.pack(">II", rng.choice([0, 1, 70_000, 1 << 31]), rng.choice([0, 5, 1 << 20, 0xFFFFFFFF]))
            yield kind, bytes(base)
        elif kind == "random":
            yield kind, os.urandom(rng.randint(1, 3000))
        else:  # a frame cut short, followed by the start of another
            other = rng.choice(good)
            yield kind, bytes(base[: rng.randrange(4, len(base))]) + other[: rng.randrange(1, len(other))]


def fuzz(peer: Peer, frames: int, seed: int) -> dict[str, int]:
    """Send ``frames`` mutated requests, each followed by a hello that must be answered; counts of each kind."""
    rng = random.Random(seed)
    kinds: dict[str, int] = {}
    next_id = 1000
    for (kind, frame), _ in zip(fuzz_frames(rng, peer.codec), range(frames)):
        kinds[kind] = kinds.get(kind, 0) + 1
        peer.send(frame)
        peer.answer(within_s=10)  # each is answered: an error, or a result where the mutation left a valid request
        next_id = peer.still_serves(next_id) + 1
    return kinds


def test_fuzz_tcp_and_serial_links_survive_mutated_frames(board):
    """150 mutated frames on loopback TCP and 150 on a pty serial pair; each link answers after every one."""
    daemon = Daemon(board, limits=FUZZ_LIMITS, busy_wait_s=0.3, poll_s=FUZZ_POLL_S)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    master, slave = os.openpty()
    tty = serial.Serial(os.ttyname(slave), timeout=FUZZ_POLL_S)
    daemon.attach_serial(tty)
    pty = PtyMasterLink(master)
    sock = socket.create_connection(("127.0.0.1", port), timeout=POLL_S)
    try:
        tcp_kinds = fuzz(Peer(sock.recv, sock.sendall, Codec(limits=FUZZ_LIMITS)), 150, seed=1)
        serial_kinds = fuzz(Peer(pty.recv, pty.send, Codec(crc=True, limits=FUZZ_LIMITS)), 150, seed=2)
        assert len(tcp_kinds) == len(serial_kinds) == 9  # every kind of mutation was tried on both links
        assert all(t.is_alive() for t in daemon._threads if "accept" in t.name or "serial" in t.name)
    except LinkClosed:
        pytest.fail("the daemon closed the link after a bad frame")
    finally:
        sock.close()
        daemon.shutdown()
        tty.close()
        os.close(master)
        os.close(slave)
