"""``autoq board serve``: answers framed requests (see ``protocol``) on TCP and/or a serial link.

Requests (header ``type``; JSON payload where noted), each answered by ``result`` (JSON payload) or ``error``
(``code`` + ``message``), with the request's ``id`` echoed:

- ``hello`` / ``info``: the board's manifest, sensors, overlays and protocol version;
- ``measure``: payload ``{"network": NetworkSpec dict, "plan": QuantPlan dict, "batch": int}`` -> Measurement dict;
- ``load_overlay``: header ``name`` -> the loaded manifest (by name from the board's own ``bitstreams/`` only).

The engine runs one measurement (or overlay load) at a time; a request that cannot get it within
``busy_wait_s`` is answered ``busy``; ``measure_delay_s`` makes every measurement hold the engine that much longer
(``autoq board serve --emulate --delay-ms``: a slow board to try scale-out with). A shared key is required to listen beyond loopback (a serial cable is a
point-to-point link and may go without); with a key every frame in both directions carries an HMAC-SHA256. The
HMAC authenticates frames but does not stop a recorded frame from being replayed: every request is idempotent
(hello, measure, load_overlay by name), so a replay only costs board time.

Every link survives hostile input: each bad frame gets an error answer (``protocol`` bounds JSON depth, values
and number sizes, and gives a frame ``FrameLimits.body_timeout_s`` from its first byte), and so does anything
unexpected while one frame is read or answered. TCP connections hold a place in a table of ``max_connections``
(default 16; at most ``max_connections_per_address``, default 8, from one address) and are closed after
``idle_timeout_s`` (default 60 s) without a frame. When the table is full, the oldest connection that has not
yet sent a valid frame (with a key: an HMAC-verified one) makes room for the newcomer, so idle or half-sent
connections cannot lock the owner out; only when every place holds such a client is a newcomer answered
``busy``. Imports only the standard library and ``autoq.common``.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from autoq.common.errors import AutoQError, PlanError, SpecError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan

from .protocol import (
    PROTOCOL_VERSION,
    Codec,
    FrameError,
    FrameLimits,
    FrameReader,
    LinkClosed,
    Message,
    ProtocolError,
    error_message,
    make_message,
)

log = logging.getLogger("autoq.board")
POLL_S = 0.25  # how often idle links look at the shutdown flag


class BoardService(Protocol):
    """What the daemon serves; ``autoq.overlay.board.Board`` implements it."""

    def info(self) -> dict[str, Any]: ...

    def measure(self, network: NetworkSpec, plan: QuantPlan, batch: int) -> Measurement: ...

    def load_overlay(self, name: str) -> dict[str, Any]: ...


class DaemonError(AutoQError, RuntimeError):
    """The daemon cannot start as configured (e.g. listening beyond loopback without a key)."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise DaemonError(f"cannot resolve listen address {host!r}: {exc}") from None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


@dataclass(eq=False)
class _Connection:
    """One accepted TCP connection in the daemon's table (in accept order: oldest first)."""

    sock: socket.socket
    address: str
    trusted: bool = False  # has sent a valid (with a key: HMAC-verified) frame: never evicted for a newcomer

    def evict(self) -> None:
        """End the connection from another thread: its serve thread reads end-of-stream and closes it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class Daemon:
    """Serves one ``BoardService`` on any number of links until ``shutdown()``."""

    board: BoardService
    key: bytes | None = None
    limits: FrameLimits = field(default_factory=FrameLimits)
    busy_wait_s: float = 60.0
    max_connections: int = 16
    max_connections_per_address: int = 8
    idle_timeout_s: float = 60.0  # a TCP connection without a frame for this long is closed (serial links stay)
    poll_s: float = POLL_S  # how often TCP links look at the shutdown flag, their frame deadline and idle time
    measure_delay_s: float = 0.0  # added to every measurement while it holds the engine (to emulate a slow board)
    _engine: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _threads_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _sockets: list[socket.socket] = field(default_factory=list, init=False)
    _connections: list[_Connection] = field(default_factory=list, init=False)

    # -- links --------------------------------------------------------------------------------------------------
    def listen_tcp(self, host: str = "127.0.0.1", port: int = 7700) -> tuple[str, int]:
        """Start accepting on ``host:port`` (port 0 picks a free one); returns the bound address."""
        if not self.key and not is_loopback(host):
            raise DaemonError(
                f"refusing to listen on {host}:{port} beyond loopback without a shared key: pass --key-file "
                "(and give the host the same key, tcp://...?key=FILE)"
            )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((host, port))
        except (OSError, OverflowError) as exc:
            server.close()
            raise DaemonError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
        server.listen(64)  # room for a burst of connects while the accept loop admits, evicts or refuses them
        server.settimeout(self.poll_s)
        self._sockets.append(server)
        self._spawn(self._accept_loop, server, name=f"tcp-accept-{port}")
        return server.getsockname()[:2]

    def attach_serial(self, port: Any) -> None:
        """Serve on an open pyserial ``Serial`` (CRC on every frame; its ``timeout`` should be short, e.g. POLL_S).

        A serial cable is a point-to-point link to the board: it needs no key, but uses the key when one is set.
        """
        self.attach_link(serial_recv(port), port.write, crc=True, peer=f"serial {port.port}")

    def attach_link(self, recv: Callable[[int], bytes], send: Callable[[bytes], Any], crc: bool, peer: str) -> None:
        """Serve on any byte link: ``recv(n)`` (``TimeoutError`` when idle, b'' when closed) and ``send(data)``."""
        self._spawn(self._serve_link, recv, send, Codec(self.key, crc=crc, limits=self.limits), peer, name=peer)

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=f"autoq-board-{name}", daemon=True)
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept_loop(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                self._admit(conn, peer)
            except Exception:  # noqa: BLE001 - e.g. no thread to spare: drop this connection, keep accepting
                log.exception("cannot serve tcp %s:%s", peer[0], peer[1])
                conn.close()

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        """Serve ``conn`` if the table has room, making room by evicting the oldest untrusted connection (from
        the same address first); else answer ``busy`` and close it."""
        conn.settimeout(self.poll_s)
        codec = Codec(self.key, crc=False, limits=self.limits)
        connection = _Connection(conn, peer[0])
        with self._threads_lock:
            refused = ""
            for limit, same_address in ((self.max_connections_per_address, True), (self.max_connections, False)):
                group = [c for c in self._connections if not same_address or c.address == connection.address]
                if len(group) < limit:
                    continue
                victim = next((c for c in group if not c.trusted), None)
                if victim is None:
                    refused = f"{limit} from {connection.address}" if same_address else f"{limit}"
                    break
                log.info("tcp %s: closing a connection that sent no valid frame to make room", victim.address)
                self._connections.remove(victim)
                victim.evict()
            if not refused:
                self._connections.append(connection)
        if refused:
            with conn:
                answer = error_message(
                    "busy", f"too many connections (limit {refused}), each of them has sent valid requests; retry later"
                )
                try:
                    conn.sendall(codec.encode(answer))
                except OSError:
                    pass
            return
        self._spawn(self._serve_connection, connection, codec, f"tcp {peer[0]}:{peer[1]}", name=f"conn-{peer[1]}")

    def _serve_connection(self, connection: _Connection, codec: Codec, peer: str) -> None:
        try:
            with connection.sock as conn:
                self._serve_link(conn.recv, conn.sendall, codec, peer, connection)
        finally:
            with self._threads_lock:
                if connection in self._connections:
                    self._connections.remove(connection)

    def _serve_link(
        self, recv: Callable[[int], bytes], send: Callable[[bytes], Any], codec: Codec, peer: str,
        connection: _Connection | None = None,
    ) -> None:
        """Read, answer, repeat: every bad frame or request gets an error answer and the link stays up. A TCP
        ``connection`` is marked trusted by its first valid frame and closed after ``idle_timeout_s`` idle."""
        reader = FrameReader(recv, codec)
        log.info("serving %s", peer)
        last_frame = time.monotonic()
        while not self._stop.is_set():
            try:
                request = reader.read()
            except TimeoutError:
                if connection is not None and time.monotonic() - last_frame >= self.idle_timeout_s:
                    log.info("%s: idle for %g s, closing", peer, self.idle_timeout_s)
                    break
                continue
            except LinkClosed:
                break
            except FrameError as exc:
                log.warning("%s: %s: %s", peer, exc.code, exc)
                answer = error_message(exc.code, str(exc), exc.request_id)
            except OSError as exc:
                log.warning("%s: link failed: %s", peer, exc)
                break
            except Exception as exc:  # noqa: BLE001 - a bug must not end the link: answer it, read afresh
                log.exception("%s: cannot read a frame", peer)
                reader = FrameReader(recv, codec)
                answer = error_message("internal", f"cannot read the frame: {type(exc).__name__}: {exc}")
            else:
                if connection is not None:
                    connection.trusted = True
                answer = self.handle(request)
            last_frame = time.monotonic()
            try:
                send(self._encode_answer(codec, answer))
            except OSError as exc:
                log.warning("%s: cannot answer: %s", peer, exc)
                break
        log.info("done serving %s", peer)

    @staticmethod
    def _encode_answer(codec: Codec, answer: Message) -> bytes:
        try:
            return codec.encode(answer)
        except ProtocolError as exc:  # e.g. an answer beyond the size limit: say so instead
            return codec.encode(error_message(exc.code, f"cannot send the answer: {exc}", answer.id))
        except Exception as exc:  # noqa: BLE001 - a bug must not end the link: the client gets the message
            log.exception("cannot encode an answer")
            return codec.encode(error_message("internal", f"cannot send the answer: {type(exc).__name__}: {exc}"))

    # -- requests -----------------------------------------------------------------------------------------------
    def handle(self, request: Message) -> Message:
        """The answer to one decoded request; never raises."""
        handlers = {"hello": self._info, "info": self._info, "measure": self._measure, "load_overlay": self._load_overlay}
        handler = handlers.get(request.type)
        if handler is None:
            return error_message("bad_request", f"unknown request type {request.type!r}; known: {sorted(handlers)}", request.id)
        try:
            return make_message({"type": "result", "id": request.id, "request": request.type}, handler(request))
        except ProtocolError as exc:
            return error_message(exc.code, str(exc), request.id)
        except (SpecError, PlanError) as exc:
            return error_message("bad_network" if isinstance(exc, SpecError) else "bad_plan", str(exc), request.id)
        except AutoQError as exc:
            return error_message("device_error", str(exc), request.id)
        except Exception as exc:  # noqa: BLE001 - a bug must not take the daemon down; the client gets the message
            log.exception("request %s failed", request.type)
            return error_message("internal", f"{type(exc).__name__}: {exc}", request.id)

    def _info(self, _request: Message) -> dict[str, Any]:
        return hello_answer(self.board, authenticated=bool(self.key))

    def _measure(self, request: Message) -> dict[str, Any]:
        body = request.json_payload(self.limits)
        if not isinstance(body, dict) or not {"network", "plan"} <= body.keys():
            raise ProtocolError("bad_request", "measure needs a JSON payload with 'network', 'plan' and optional 'batch'")
        batch = body.get("batch", 1)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ProtocolError("bad_request", f"measure: batch must be a positive integer, got {batch!r}")
        if not isinstance(body["network"], dict):
            raise SpecError("measure: 'network' must be a NetworkSpec object")
        network = NetworkSpec.from_dict(body["network"])
        plan = QuantPlan.from_dict(body["plan"])
        plan.check(network)
        with self._hold_engine("measure"):
            if self.measure_delay_s:
                time.sleep(self.measure_delay_s)
            return self.board.measure(network, plan, batch).to_dict()

    def _load_overlay(self, request: Message) -> dict[str, Any]:
        name = request.header.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError("bad_request", "load_overlay needs a header field 'name' (an overlay in the board's bitstreams/)")
        with self._hold_engine("load_overlay"):
            return self.board.load_overlay(name)

    @contextmanager
    def _hold_engine(self, what: str) -> Iterator[None]:
        if not self._engine.acquire(timeout=self.busy_wait_s):
            raise ProtocolError("busy", f"{what}: the engine stayed busy with another request for {self.busy_wait_s:g} s; retry later")
        try:
            yield
        finally:
            self._engine.release()

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``shutdown()``; True once stopped."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        """Ask every link to finish (safe from a signal handler); ``shutdown()`` then waits for them."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop accepting, let the current request finish, close every link."""
        self._stop.set()
        for server in self._sockets:
            server.close()
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(self.busy_wait_s, 5.0))


def hello_answer(board: BoardService, authenticated: bool) -> dict[str, Any]:
    """What a board answers to ``hello``/``info``: its own info, the protocol version, whether frames are signed."""
    return {**board.info(), "protocol_version": PROTOCOL_VERSION, "authenticated": authenticated}


def serial_recv(link: Any) -> Callable[[int], bytes]:
    """``recv(n)`` over a pyserial port: waits up to the port's timeout for one byte, then takes what is there."""

    def recv(size: int) -> bytes:
        data = link.read(max(1, min(size, link.in_waiting)))
        if not data:
            raise TimeoutError("serial link idle")
        return data

    return recv
