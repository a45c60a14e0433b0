"""Cost backend ``pool:URI,URI,...``: several boards measuring at once, one measurement per board at a time.

Members are backends of their own (``tcp://``, ``serial://``, ``emulated``, ``rtlsim?...``; each named once, none a
pool), opened in this process (``LocalMember``; ``measure`` may then be called from as many threads as there are
members) or as Ray actors (``autoq.host.search.raycluster``). ``measure`` waits for the first idle member (the lowest
in URI order) and measures there. A member that fails (``BackendError``: a lost link, a board that stopped answering
or answered an error; ``OSError``) is taken out and the measurement goes to another, up to ``max_tries`` tries in
all; errors of the plan itself (``PlanError``, ``SpecError``) are the caller's and propagate at once. A background
thread probes the members that are out every ``rejoin_s`` seconds and takes each back once it answers again with
the pool's overlay. A measurement that finds no member up for ``wait_s`` seconds raises ``BackendError``.

``measure_on`` also says which member measured (``Measured``): a recording backend writes that member's URI into the
trace, so the trace says which board measured what.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple, Protocol, Sequence

from autoq.common.backend import BackendInfo, CostBackend, open_backend, scheme_of
from autoq.common.errors import BackendError, PlanError, SpecError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan

log = logging.getLogger("autoq.pool")
SCHEME = "pool"
REJOIN_S = 2.0
WAIT_S = 300.0


class Measured(NamedTuple):
    """A measurement and the backend that made it (a pool's member, or the backend itself)."""

    measurement: Measurement
    member: BackendInfo


class Member(Protocol):
    """One board of a pool. ``open`` (re)connects and describes it; ``close`` drops the connection, not the member."""

    uri: str

    def open(self) -> BackendInfo: ...

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int) -> Measurement: ...

    def close(self) -> None: ...


class LocalMember:
    """A member opened in this process with ``open_backend``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._backend: CostBackend | None = None

    def open(self) -> BackendInfo:
        self.close()
        self._backend = open_backend(self.uri)
        return self._backend.describe()

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int) -> Measurement:
        if self._backend is None:
            raise BackendError(f"pool member {self.uri} is not open")
        return self._backend.measure(network, plan, batch)

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()


def member_uris(uri: str) -> list[str]:
    """The member URIs of ``pool:URI,URI,...`` (refusing an empty list, repeats and nested pools)."""
    scheme, _, rest = uri.partition(":")
    if scheme != SCHEME:
        raise BackendError(f"cost backend {uri!r}: expected 'pool:URI,URI,...'")
    members = [m.strip() for m in rest.split(",")]
    if not rest or not all(members):
        raise BackendError(f"cost backend {uri!r}: name its members, e.g. pool:tcp://b1:7700,tcp://b2:7700")
    repeated = sorted({m for m in members if members.count(m) > 1})
    if repeated:
        raise BackendError(f"cost backend {uri!r} names {repeated} more than once; a member is one board")
    nested = [m for m in members if scheme_of(m) == SCHEME]
    if nested:
        raise BackendError(f"cost backend {uri!r}: a pool's members cannot be pools ({nested})")
    return members


def pool_size(uri: str) -> int:
    """How many boards the backend ``uri`` measures on at once: a pool's members, else 1."""
    return len(member_uris(uri)) if scheme_of(uri) == SCHEME else 1


class PoolBackend:
    """``CostBackend`` over ``members`` (see the module docstring); at least one must be up when it opens."""

    def __init__(self, uri: str, members: Sequence[Member], *, rejoin_s: float = REJOIN_S, wait_s: float = WAIT_S,
                 max_tries: int | None = None) -> None:
        self.uri = uri
        self.members = list(members)
        self.rejoin_s, self.wait_s = rejoin_s, wait_s
        self.max_tries = max_tries or 2 * len(self.members)
        self._cond = threading.Condition()
        self._info: dict[int, BackendInfo] = {}  # index -> description, of the members that are up
        self._idle: list[int] = []
        self._closed = threading.Event()
        opened = [self._try_open(i) for i in range(len(self.members))]
        self._down: dict[int, str] = {i: why for i, (_, why) in enumerate(opened) if why}  # index -> why it is out
        up = [(i, info) for i, (info, _) in enumerate(opened) if info is not None]
        if not up:
            self.close()
            raise BackendError(f"cost backend {uri!r}: no member answers: {self._reasons()}")
        self._overlay = up[0][1].overlay
        others = [f"{self.members[i].uri} runs {info.overlay.name}" for i, info in up if info.overlay != self._overlay]
        if others:
            self.close()
            raise BackendError(f"cost backend {uri!r}: members must run the same overlay as {self.members[up[0][0]].uri} "
                               f"({self._overlay.name}, build {self._overlay.build_hash}): {'; '.join(others)}")
        self._first = up[0][1]
        for i, info in up:
            self._info[i] = info
            self._idle.append(i)
        self._rejoiner = threading.Thread(target=self._rejoin_loop, name="autoq-pool-rejoin", daemon=True)
        self._rejoiner.start()

    # -- measuring ------------------------------------------------------------------------------------------------
    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measurement:
        return self.measure_on(network, plan, batch).measurement

    def measure_on(self, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measured:
        """Measure on the first idle member; a member that fails is taken out and another tries (``max_tries``)."""
        plan.check(network)
        failures: list[str] = []
        while len(failures) < self.max_tries:
            index = self._acquire()
            member = self.members[index]
            try:
                measurement = member.measure(network, plan, batch)
            except (PlanError, SpecError):
                self._release(index)
                raise
            except (BackendError, OSError) as exc:
                failures.append(f"{member.uri}: {exc}")
                self._take_out(index, str(exc))
                continue
            except BaseException:
                self._release(index)
                raise
            info = self._info[index]
            self._release(index)
            return Measured(measurement, info)
        raise BackendError(f"cost backend {self.uri!r}: the measurement failed on {len(failures)} tries: {'; '.join(failures)}")

    def _acquire(self) -> int:
        with self._cond:
            deadline = time.monotonic() + self.wait_s
            while not self._idle:
                if self._closed.is_set():
                    raise BackendError(f"cost backend {self.uri!r} is closed")
                if len(self._down) < len(self.members):  # some member is up (busy): wait for it, however long
                    deadline = time.monotonic() + self.wait_s
                elif time.monotonic() > deadline:
                    raise BackendError(f"cost backend {self.uri!r}: no member has been up for {self.wait_s:g} s: {self._reasons()}")
                self._cond.wait(timeout=1.0)
            return self._idle.pop(0)

    def _release(self, index: int) -> None:
        with self._cond:
            self._idle.append(index)
            self._idle.sort()
            self._cond.notify()

    def _take_out(self, index: int, reason: str) -> None:
        log.warning("pool %s: member %s is out: %s", self.uri, self.members[index].uri, reason)
        try:
            self.members[index].close()
        except Exception as exc:  # noqa: BLE001 - the member is out anyway; its link may already be gone
            log.warning("pool %s: closing member %s: %s", self.uri, self.members[index].uri, exc)
        with self._cond:
            self._info.pop(index, None)
            self._down[index] = reason

    # -- members coming back ----------------------------------------------------------------------------------------
    def _try_open(self, index: int) -> tuple[BackendInfo | None, str]:
        """Member ``index`` (re)opened and its description, or None and why it is not up."""
        member = self.members[index]
        try:
            return member.open(), ""
        except (BackendError, OSError) as exc:
            member.close()
            return None, str(exc) or type(exc).__name__

    def _rejoin_loop(self) -> None:
        while not self._closed.wait(self.rejoin_s):
            with self._cond:
                down = sorted(self._down)
            for index in down:
                info, why = self._try_open(index)
                if info is not None and info.overlay != self._overlay:
                    why = f"it came back with overlay {info.overlay.name}, not the pool's {self._overlay.name}"
                    info = None
                    self.members[index].close()
                if info is None:
                    with self._cond:
                        self._down[index] = why
                    continue
                log.warning("pool %s: member %s is back", self.uri, self.members[index].uri)
                with self._cond:
                    del self._down[index]
                    self._info[index] = info
                    self._idle.append(index)
                    self._idle.sort()
                    self._cond.notify()

    def _reasons(self) -> str:
        return "; ".join(f"{self.members[i].uri}: {why}" for i, why in sorted(self._down.items()))

    def up(self) -> list[str]:
        """The URIs of the members that are up (idle or measuring)."""
        with self._cond:
            return [self.members[i].uri for i in sorted(self._info)]

    # -- CostBackend ------------------------------------------------------------------------------------------------
    def describe(self) -> BackendInfo:
        return BackendInfo(self.uri, self._first.source, self._overlay, self._first.measures,
                           f"pool of {len(self.members)}: {', '.join(m.uri for m in self.members)}")

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        for member in self.members:
            try:
                member.close()
            except Exception as exc:  # noqa: BLE001 - close the others all the same
                log.warning("pool %s: closing member %s: %s", self.uri, member.uri, exc)


def measure_on(backend: CostBackend, network: NetworkSpec, plan: QuantPlan, batch: int = 1) -> Measured:
    """``backend``'s measurement and the backend that made it: a pool's member, or ``backend`` itself."""
    if isinstance(backend, PoolBackend):
        return backend.measure_on(network, plan, batch)
    return Measured(backend.measure(network, plan, batch), backend.describe())


def from_uri(uri: str) -> PoolBackend:
    members = member_uris(uri)
    discovered = [m for m in members if scheme_of(m) == "ray"]
    if discovered:
        raise BackendError(f"cost backend {uri!r}: {discovered[0]} stands for the boards of a Ray cluster: search with --ray")
    return PoolBackend(uri, [LocalMember(m) for m in members])
