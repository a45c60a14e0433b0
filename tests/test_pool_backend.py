"""``pool:URI,...``: one measurement per member at a time, a failing member's plan re-measured on another, members
rejoining, the trace naming the member that measured; and ``autoq board serve --emulate --delay-ms``."""
import re
import subprocess
import sys
import threading
import time

import pytest

from autoq.common.backend import BackendInfo, open_backend, scheme_of
from autoq.common.errors import BackendError, PlanError
from autoq.common.plan import QuantPlan
from autoq.host.backends.pool import PoolBackend, member_uris, pool_size
from autoq.host.backends.record import RecordingBackend
from autoq.host.traces import TraceStore
from autoq.overlay.manifest import DEFAULT_OVERLAY, load_overlay
from searchtoys import ToyBackend, toy_network

NETWORK = toy_network()


class FakeMember:
    """A toy board: measures with ``ToyBackend`` after ``delay_s``; ``down`` makes it fail (also mid-measurement)."""

    def __init__(self, uri: str, delay_s: float = 0.0, overlay: str = DEFAULT_OVERLAY) -> None:
        self.uri, self.delay_s, self.overlay = uri, delay_s, overlay
        self.down = False
        self.refuse = False  # answer as a board rejecting the plan
        self.active = 0
        self.most_active = 0
        self.measured: list[str] = []
        self._lock = threading.Lock()

    def open(self) -> BackendInfo:
        if self.down:
            raise BackendError(f"{self.uri}: no answer")
        return BackendInfo(self.uri, "model", load_overlay(self.overlay), ("latency",))

    def measure(self, network, plan, batch):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.delay_s)
            if self.refuse:
                raise PlanError(f"{self.uri} rejected the plan")
            if self.down:
                raise BackendError(f"{self.uri}: link lost")
            self.measured.append(plan.hash)
            return ToyBackend().measure(network, plan, batch)
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        pass


def plans(n):
    return [QuantPlan.uniform(NETWORK, 2 + i % 7, 2 + i // 7 % 7) for i in range(n)]


def measure_all(pool, batch):
    with_threads = []
    out = [None] * len(batch)

    def one(i, plan):
        out[i] = pool.measure_on(NETWORK, plan)

    for i, plan in enumerate(batch):
        with_threads.append(threading.Thread(target=one, args=(i, plan)))
        with_threads[-1].start()
    for t in with_threads:
        t.join(30)
    return out


def test_each_member_measures_one_plan_at_a_time_and_all_measure_at_once():
    members = [FakeMember(f"fake://{i}", delay_s=0.05) for i in range(3)]
    pool = PoolBackend("pool:fakes", members)
    try:
        results = measure_all(pool, plans(12))
    finally:
        pool.close()
    assert [m.most_active for m in members] == [1, 1, 1]
    assert all(m.measured for m in members)  # every board took its share
    assert [r.measurement.plan_hash for r in results] == [p.hash for p in plans(12)]
    for r in results:  # each result names the member that measured it
        assert r.measurement.plan_hash in next(m for m in members if m.uri == r.member.uri).measured


def test_a_member_failing_mid_measurement_is_replaced_then_rejoins():
    members = [FakeMember("fake://a", delay_s=0.2), FakeMember("fake://b", delay_s=0.05)]
    pool = PoolBackend("pool:fakes", members, rejoin_s=0.05)
    try:
        plan = plans(1)[0]
        killer = threading.Timer(0.05, lambda: setattr(members[0], "down", True))
        killer.start()
        measured = pool.measure_on(NETWORK, plan)  # goes to a (idle, first in order), which dies meanwhile
        assert measured.member.uri == "fake://b" and members[1].measured == [plan.hash]
        assert pool.up() == ["fake://b"]
        members[0].down = False
        deadline = time.monotonic() + 5
        while pool.up() != ["fake://a", "fake://b"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.up() == ["fake://a", "fake://b"]
        assert pool.measure_on(NETWORK, plan).member.uri == "fake://a"
    finally:
        pool.close()


def test_plan_errors_are_the_callers_and_a_pool_with_no_member_up_gives_up():
    members = [FakeMember("fake://a"), FakeMember("fake://b")]
    pool = PoolBackend("pool:fakes", members, rejoin_s=0.05, wait_s=0.3)
    try:
        members[0].refuse = True
        with pytest.raises(PlanError, match="fake://a rejected"):
            pool.measure(NETWORK, plans(1)[0])
        assert pool.up() == ["fake://a", "fake://b"]  # a bad plan takes no board out
        members[0].refuse = False
        for m in members:
            m.down = True
        with pytest.raises(BackendError, match="no member has been up for 0.3 s|failed on 4 tries"):
            pool.measure(NETWORK, plans(1)[0])
    finally:
        pool.close()


def test_pool_uris_and_members_are_checked():
    assert scheme_of("pool:tcp://a:1,tcp://b:2") == "pool" and scheme_of("tcp://a:1") == "tcp"
    assert member_uris("pool:tcp://a:1, emulated") == ["tcp://a:1", "emulated"]
    assert pool_size("pool:tcp://a:1,tcp://b:2") == 2 and pool_size("model") == 1
    for uri, problem in [("pool:", "name its members"), ("pool:a,,b", "name its members"), ("pool:emulated,emulated", "more than once"),
                         ("pool:pool:emulated", "cannot be pools"), ("pool:ray:pynq_z1", "--ray")]:
        with pytest.raises(BackendError, match=problem):
            open_backend(uri)
    with pytest.raises(BackendError, match="same overlay"):
        PoolBackend("pool:fakes", [FakeMember("fake://a"), FakeMember("fake://b", overlay="rtl_small")])
    with pytest.raises(BackendError, match="no member answers.*fake://a: no answer"):
        down = FakeMember("fake://a")
        down.down = True
        PoolBackend("pool:fakes", [down])


def test_the_trace_names_the_member_that_measured(tmp_path):
    members = [FakeMember(f"fake://{i}", delay_s=0.02) for i in range(2)]
    recorder = RecordingBackend(PoolBackend("pool:fakes", members), TraceStore(tmp_path / "t.sqlite"))
    try:
        for plan in plans(4):  # one thread: the first member measures all
            recorder.measure(NETWORK, plan)
    finally:
        recorder.close()
    with TraceStore(tmp_path / "t.sqlite", "r") as store:
        assert [r.backend_uri for r in store.records()] == ["fake://0"] * 4
        assert {b.uri for b in store.backends()} == {"pool:fakes", "fake://0"}


def serve(port=0, delay_ms=0):
    """``autoq board serve --emulate`` on loopback; returns the process and its URI once it listens."""
    process = subprocess.Popen([sys.executable, "-c", "from autoq.host.cli import main; raise SystemExit(main())", "board", "serve",
                                "--emulate", "--tcp", f"127.0.0.1:{port}", "--delay-ms", str(delay_ms)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    found = re.search(r"tcp (127\.0\.0\.1:\d+)", line)
    if not found:
        process.kill()
        raise AssertionError(f"board did not start: {line!r} {process.stderr.read()}")
    return process, f"tcp://{found.group(1)}?retries=1&timeout=30"


def test_a_pool_of_emulated_daemons_survives_one_dying_and_takes_it_back():
    (slow, slow_uri), (fast, fast_uri) = serve(delay_ms=600), serve(delay_ms=0)
    try:
        pool = open_backend(f"pool:{slow_uri},{fast_uri}")
        pool.rejoin_s = 0.2
        plan = QuantPlan.uniform(NETWORK, 4, 4)
        started = time.monotonic()
        assert pool.measure_on(NETWORK, plan).member.uri == slow_uri
        assert time.monotonic() - started >= 0.6  # --delay-ms
        threading.Timer(0.3, slow.kill).start()  # in the middle of its next measurement
        assert pool.measure_on(NETWORK, plan).member.uri == fast_uri  # re-measured on the other board
        assert pool.up() == [fast_uri]
        slow.wait(10)
        port = int(re.search(r":(\d+)\?", slow_uri).group(1))
        slow, _ = serve(port=port)  # the board comes back on its address
        deadline = time.monotonic() + 20
        while pool.up() != [slow_uri, fast_uri] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.up() == [slow_uri, fast_uri]
        assert pool.measure_on(NETWORK, plan).member.uri == slow_uri
        pool.close()
    finally:
        for process in (slow, fast):
            process.kill()
            process.wait(10)


def test_delay_is_only_for_an_emulated_or_simulated_board():
    done = subprocess.run([sys.executable, "-c", "from autoq.host.cli import main; raise SystemExit(main())", "board", "serve",
                           "--tcp", "127.0.0.1:0", "--delay-ms", "10"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--delay-ms" in done.stderr and "--emulate" in done.stderr
