"""``autoq board serve`` end to end: the daemon with the emulated device on loopback TCP and on a pty serial pair,
host clients, and every kind of bad input answered with a structured error while the daemon keeps serving."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from autoq.common.errors import BackendError, PlanError
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.backends.emulated import EmulatedBackend
from autoq.host.backends.remote import BoardClient, Endpoint, RemoteBackend, from_uri, parse_uri
from autoq.overlay.board import Board
from autoq.overlay.daemon import Daemon, DaemonError
from autoq.overlay.protocol import MAGIC, Codec, FrameLimits, FrameReader, Message, make_message

from boardkit import TINY, PtyMasterLink, junk, kernel_wise_plan

KEY = b"0123456789abcdef0123456789abcdef"
AUTOQ = [sys.executable, "-c", "import sys; from autoq.host.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture(scope="module")
def board():
    board = Board.emulated()
    yield board
    board.close()


@pytest.fixture
def daemon(board):
    daemon = Daemon(board, limits=FrameLimits(max_payload=1 << 20, body_timeout_s=0.3), busy_wait_s=0.3)
    host, port = daemon.listen_tcp("127.0.0.1", 0)
    yield daemon, port
    daemon.shutdown()


def exchange(port: int, data: bytes, codec: Codec = Codec()) -> Message:
    """Send raw bytes on a fresh connection and read one answer frame."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return FrameReader(sock.recv, codec).read()


def hello_frame(request_id: int = 1, codec: Codec = Codec()) -> bytes:
    return codec.encode(Message({"type": "hello", "id": request_id}))


# -- end to end --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from autoq.host.models.resolve import spec_for

    return spec_for("digits")


def assert_same_measurement(a, b):
    assert a.latency_s == b.latency_s and a.energy_j == pytest.approx(b.energy_j, rel=1e-12)
    assert [l.cycles for l in a.layers] == [l.cycles for l in b.layers]
    assert a.provenance.source == b.provenance.source == "emulated"
    assert a.plan_hash == b.plan_hash and a.network_hash == b.network_hash


def test_tcp_end_to_end_matches_in_process_emulated(daemon, digits):
    _, port = daemon
    plan = kernel_wise_plan(digits, min_act_bits=2)
    remote = from_uri(f"tcp://127.0.0.1:{port}")
    local = EmulatedBackend("emulated")
    try:
        measured = remote.measure(digits, plan)
        assert_same_measurement(measured, local.measure(digits, plan))
        assert measured.samples["latency_s"] and measured.samples["idle_power_w"]
        info = remote.describe()
        assert info.source == "emulated" and info.overlay.name == "pynq_z1" and "energy" in info.measures
    finally:
        remote.close()
        local.close()


def test_serial_pty_end_to_end_matches_in_process_emulated(board, digits):
    """Daemon on the master end, host on the slave tty through ``serial:///dev/pts/N`` (real pyserial)."""
    master, slave = os.openpty()
    daemon = Daemon(board)
    link = PtyMasterLink(master)
    daemon.attach_link(link.recv, link.send, crc=True, peer="pty master")
    remote = from_uri(f"serial://{os.ttyname(slave)}?baud=115200&timeout=30")
    local = EmulatedBackend("emulated")
    try:
        plan = kernel_wise_plan(digits, 3, min_act_bits=2)
        os.write(master, junk(64))  # line noise before the first frame
        assert_same_measurement(remote.measure(digits, plan), local.measure(digits, plan))
        assert remote.info()["protocol_version"] == 2
    finally:
        remote.close()
        local.close()
        daemon.shutdown()
        os.close(master)
        os.close(slave)


def test_cli_serves_on_serial_and_stops_on_sigterm():
    """``autoq board serve --emulate --serial /dev/pts/N`` (pyserial on the slave); the host talks on the master."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*AUTOQ, "board", "serve", "--emulate", "--serial", os.ttyname(slave)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert "serving overlay pynq_z1 (emulated) on serial" in proc.stdout.readline()
        link = PtyMasterLink(master)
        client = BoardClient(Endpoint("pty-master", lambda: link, Codec(crc=True), timeout_s=30, retries=0))
        assert client.request({"type": "hello"})["source"] == "emulated"
        measured = client.request({"type": "measure"}, {"network": TINY.to_dict(), "plan": QuantPlan.uniform(TINY, 4, 4).to_dict()})
        assert measured["provenance"]["source"] == "emulated"
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in out, err
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_random_bytes_get_an_error_then_the_same_connection_serves(daemon):
    _, port = daemon
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = FrameReader(sock.recv, Codec())
        sock.sendall(junk(500))
        answer = reader.read()
        assert answer.type == "error" and answer.header["code"] == "bad_magic"
        sock.sendall(hello_frame(7))
        answer = reader.read()
        assert answer.type == "result" and answer.id == 7


def test_truncated_frame_gets_an_error_then_serves(daemon):
    _, port = daemon
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = FrameReader(sock.recv, Codec())
        sock.sendall(Codec().encode(make_message({"type": "measure", "id": 1}, {"x": "y" * 100}))[:-20])
        answer = reader.read()
        assert answer.header["code"] == "truncated" and "frame truncated" in answer.header["message"]
        sock.sendall(hello_frame(2))
        assert reader.read().id == 2


def test_oversize_frame_is_refused(daemon):
    _, port = daemon
    prefix = struct.pack(">4sBBII", MAGIC, 1, 0, 20, 1 << 30)
    answer = exchange(port, prefix)
    assert answer.header["code"] == "oversize" and "limits" in answer.header["message"]
    assert exchange(port, hello_frame()).type == "result"


def test_wrong_version_names_the_supported_one(daemon):
    _, port = daemon
    frame = bytearray(hello_frame(5))
    frame[4] = 9
    answer = exchange(port, bytes(frame))
    assert (answer.header["code"], answer.id) == ("bad_version", 5)
    assert "speaks 2" in answer.header["message"]


def test_bad_json_and_unknown_requests(daemon):
    _, port = daemon
    answer = exchange(port, Codec().encode(Message({"type": "measure", "id": 1}, b"{not json")))
    assert answer.header["code"] == "bad_request" and "not valid JSON" in answer.header["message"]
    answer = exchange(port, Codec().encode(Message({"type": "reboot", "id": 2})))
    assert answer.header["code"] == "bad_request" and "unknown request type 'reboot'" in answer.header["message"]
    answer = exchange(port, Codec().encode(make_message({"type": "measure", "id": 3}, {"network": {}, "plan": {}})))
    assert answer.header["code"] == "bad_network"


def test_plan_that_does_not_fit_the_network(daemon):
    _, port = daemon
    client = BoardClient(parse_uri(f"tcp://127.0.0.1:{port}"))
    plan = QuantPlan.uniform(TINY, 4, 4).replace("fc", LayerPlan("fc", (4,) * 3, 4))
    with pytest.raises(PlanError, match="rejected the plan: layer 'fc': plan has 3 kernel bit-widths"):
        client.request({"type": "measure"}, {"network": TINY.to_dict(), "plan": plan.to_dict()})
    with pytest.raises(BackendError, match="bad_request: measure: batch must be a positive integer"):
        client.request({"type": "measure"}, {"network": TINY.to_dict(), "plan": QuantPlan.uniform(TINY, 4, 4).to_dict(), "batch": 0})
    assert client.request({"type": "hello"})["source"] == "emulated"
    client.close()


def test_missing_or_path_like_bitstream_names(daemon):
    _, port = daemon
    backend = RemoteBackend(parse_uri(f"tcp://127.0.0.1:{port}"))
    with pytest.raises(BackendError, match="unknown_overlay: no overlay named 'nope'"):
        backend.load_overlay("nope")
    with pytest.raises(BackendError, match="unknown_overlay: overlay name '../pynq_z1' is not a plain name"):
        backend.load_overlay("../pynq_z1")
    assert backend.load_overlay("pynq_z1").name == "pynq_z1"
    assert backend.info()["overlay"]["name"] == "pynq_z1"
    backend.close()


def test_hmac_key_required_and_checked(board):
    daemon = Daemon(board, key=KEY)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    try:
        answer = exchange(port, hello_frame(4), Codec(key=KEY))  # the daemon signs its answers, errors too
        assert (answer.header["code"], answer.id) == ("bad_hmac", 4) and "not signed" in answer.header["message"]
        answer = exchange(port, hello_frame(5, Codec(key=b"w" * 32)), Codec(key=KEY))
        assert answer.header["code"] == "bad_hmac" and "does not match" in answer.header["message"]
        assert exchange(port, hello_frame(6, Codec(key=KEY)), Codec(key=KEY)).type == "result"
    finally:
        daemon.shutdown()


def test_host_key_file_and_clear_error_on_wrong_key(board, tmp_path):
    daemon = Daemon(board, key=KEY)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    good, wrong = tmp_path / "good.key", tmp_path / "wrong.key"
    good.write_bytes(KEY + b"\n")
    wrong.write_bytes(b"x" * 32)
    try:
        with pytest.raises(BackendError, match="bad_hmac"):
            from_uri(f"tcp://127.0.0.1:{port}?key={wrong}&retries=0").info()
        backend = from_uri(f"tcp://127.0.0.1:{port}?key={good}")
        assert backend.info()["authenticated"] is True
        backend.close()
    finally:
        daemon.shutdown()


def test_refuses_to_listen_beyond_loopback_without_a_key(board):
    with pytest.raises(DaemonError, match="refusing to listen on 0.0.0.0:0 beyond loopback without a shared key"):
        Daemon(board).listen_tcp("0.0.0.0", 0)
    daemon = Daemon(board, key=KEY)
    try:
        daemon.listen_tcp("0.0.0.0", 0)
    finally:
        daemon.shutdown()


def test_cli_refuses_beyond_loopback_without_a_key(capsys):
    from autoq.host.cli import main

    assert main(["board", "serve", "--emulate", "--tcp", "0.0.0.0:7700"]) == 2
    assert "autoq board: error: refusing to listen on 0.0.0.0:7700 beyond loopback" in capsys.readouterr().err


class SlowBoard:
    """The real emulated board, with measurements held until the test releases them."""

    def __init__(self, board: Board):
        self.board, self.started, self.release = board, threading.Event(), threading.Event()

    def info(self):
        return self.board.info()

    def load_overlay(self, name):
        return self.board.load_overlay(name)

    def measure(self, network, plan, batch):
        self.started.set()
        self.release.wait(10)
        return self.board.measure(network, plan, batch)


def test_one_measurement_at_a_time_others_get_busy(board):
    slow = SlowBoard(board)
    daemon = Daemon(slow, busy_wait_s=0.2)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    plan = QuantPlan.uniform(TINY, 4, 4)
    first = from_uri(f"tcp://127.0.0.1:{port}")
    second = from_uri(f"tcp://127.0.0.1:{port}")
    results = []
    worker = threading.Thread(target=lambda: results.append(first.measure(TINY, plan)))
    worker.start()
    try:
        assert slow.started.wait(10)
        with pytest.raises(BackendError, match="busy: measure: the engine stayed busy"):
            second.measure(TINY, plan)
        assert second.info()["source"] == "emulated"  # info does not need the engine
        slow.release.set()
        worker.join(10)
        assert results and results[0].latency_s > 0
        assert second.measure(TINY, plan).latency_s == results[0].latency_s
    finally:
        slow.release.set()
        first.close()
        second.close()
        daemon.shutdown()


def test_client_reconnects_after_the_daemon_restarts(board):
    daemon = Daemon(board)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    backend = from_uri(f"tcp://127.0.0.1:{port}?retries=3")
    assert backend.client.request({"type": "hello"})["source"] == "emulated"
    daemon.shutdown()
    time.sleep(0.3)
    daemon = Daemon(board)
    daemon.listen_tcp("127.0.0.1", port)
    try:
        assert backend.client.request({"type": "hello"})["source"] == "emulated"
    finally:
        backend.close()
        daemon.shutdown()


def test_unreachable_board_and_bad_uris():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendError, match=r"no answer to hello after 1 attempts: cannot connect to 127.0.0.1:\d+"):
        from_uri(f"tcp://127.0.0.1:{port}?retries=0").info()
    with pytest.raises(BackendError, match="must name a host and a port"):
        from_uri("tcp://localhost")
    with pytest.raises(BackendError, match="unknown parameters"):
        from_uri("tcp://localhost:1?speed=9")
    with pytest.raises(BackendError, match="timeout='x' is not a number"):
        from_uri("tcp://localhost:1?timeout=x")
    with pytest.raises(BackendError, match="cannot open serial port /dev/does-not-exist"):
        from_uri("serial:///dev/does-not-exist?retries=0").info()


@pytest.mark.slow
def test_cli_cost_over_tcp_prints_the_same_latency_as_in_process_emulated():
    """``autoq cost resnet18 --uniform 4/4`` against ``autoq board serve --emulate --tcp`` and ``--backend emulated``."""
    serve = subprocess.Popen([*AUTOQ, "board", "serve", "--emulate", "--tcp", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = serve.stdout.readline()
        port = int(banner.split("tcp 127.0.0.1:")[1].split()[0].rstrip(";,"))

        def total(backend: str) -> str:
            out = subprocess.run([*AUTOQ, "cost", "resnet18", "--uniform", "4/4", "--backend", backend],
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            return next(line for line in out.stdout.splitlines() if line.startswith("total: latency"))

        remote, local = total(f"tcp://127.0.0.1:{port}"), total("emulated")
        assert remote == local and " ms" in remote
    finally:
        serve.terminate()
        serve.communicate(timeout=30)
    assert serve.returncode == 0


def test_connections_beyond_the_limit_get_busy(board):
    daemon = Daemon(board, max_connections=1)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
            first.sendall(hello_frame(1))
            assert FrameReader(first.recv, Codec()).read().type == "result"
            answer = exchange(port, hello_frame(2))
            assert answer.header["code"] == "busy" and "too many connections" in answer.header["message"]
        deadline = time.monotonic() + 10  # until the first connection's thread has noticed the close
        while (answer := exchange(port, hello_frame(3))).type != "result" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answer.type == "result"
    finally:
        daemon.shutdown()


def test_an_answer_beyond_the_size_limit_becomes_an_error(board):
    daemon = Daemon(board, limits=FrameLimits(max_payload=200))
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    try:
        answer = exchange(port, hello_frame(1))
        assert answer.header["code"] == "oversize" and "cannot send the answer" in answer.header["message"]
        assert exchange(port, hello_frame(2)).header["code"] == "oversize"  # still serving
    finally:
        daemon.shutdown()
