"""SQLite trace store: every measurement a backend made, with the network and plan it measured.

A trace is self-contained: it holds each ``NetworkSpec`` and ``QuantPlan`` as JSON next to the measurements, so
it can be replayed, exported or used for calibration without the model that produced it. The file is in WAL mode
and every ``append`` is its own committed transaction (``synchronous=FULL``), so a crash — even SIGKILL or a power
cut — loses nothing that ``append`` returned from.

Integrity: every row (measurement, network, plan, backend, attempt) carries the SHA-256 of its canonical content;
a record whose row, network, plan or attempt does not verify is *damaged*: ``records`` raises on it (or, given a
list, reports it there and yields the others), and it is never returned as a measurement. A file SQLite itself
cannot read is a ``TraceError``. Traces of schema 1 (no checksums) and 2 (measurements without measured/predicted
labels) are refused: record them again.

Attempts: each recording session (``open_attempt``) is an attempt, and a search's session is tied to its run (the
run id of its checkpoint), the episode it starts at (-1 fresh, else the episode it resumed at), and how many
episodes its checkpoints count; its measurements carry the episode they belong to (-1: start-up). A record is
*superseded* when a replay must skip it to follow the surviving run: it belongs to an episode that a later attempt
of the same run measured again (the killed run's unfinished episode, a resumed run's repeated start-up), or to a
search that never wrote a checkpoint.

Standard library only (no torch): the trace is read by ``autoq trace``, the replay backend and calibration.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from autoq.common.backend import BackendInfo
from autoq.common.errors import AutoQError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.manifest import ManifestError, OverlayConfig

TRACE_FORMAT = "autoq-trace"
SCHEMA_VERSION = 3  # 3: measurements say which figures were measured and which predicted
START_UP = -1  # the episode of a search's measurements before its first episode

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE networks (hash TEXT PRIMARY KEY, name TEXT NOT NULL, spec_json TEXT NOT NULL, checksum TEXT NOT NULL);
CREATE TABLE plans (hash TEXT PRIMARY KEY, plan_json TEXT NOT NULL, checksum TEXT NOT NULL);
CREATE TABLE backends (uri TEXT PRIMARY KEY, source TEXT NOT NULL, info_json TEXT NOT NULL, checksum TEXT NOT NULL);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    run TEXT,
    start_episode INTEGER,
    checkpointed INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    checksum TEXT NOT NULL
);
CREATE TABLE measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    network_hash TEXT NOT NULL REFERENCES networks(hash),
    plan_hash TEXT NOT NULL REFERENCES plans(hash),
    batch INTEGER NOT NULL,
    backend_uri TEXT NOT NULL,
    source TEXT NOT NULL,
    latency_s REAL NOT NULL,
    energy_j REAL NOT NULL,
    avg_power_w REAL NOT NULL,
    measured_at REAL NOT NULL,
    recorded_at REAL NOT NULL,
    measurement_json TEXT NOT NULL,
    attempt INTEGER REFERENCES attempts(id),
    episode INTEGER,
    checksum TEXT NOT NULL
);
CREATE INDEX measurements_key ON measurements (network_hash, plan_hash, batch, id);
"""
_TABLES = {"meta", "networks", "plans", "backends", "attempts", "measurements"}
# Each table's checksummed columns, in order (the checksum column follows them).
_COLUMNS = {
    "networks": ("hash", "name", "spec_json"),
    "plans": ("hash", "plan_json"),
    "backends": ("uri", "source", "info_json"),
    "attempts": ("id", "kind", "run", "start_episode", "checkpointed", "opened_at"),
    "measurements": ("id", "network_hash", "plan_hash", "batch", "backend_uri", "source", "latency_s", "energy_j",
                     "avg_power_w", "measured_at", "recorded_at", "measurement_json", "attempt", "episode"),
}
ATTEMPT_KINDS = ("search", "record")


class TraceError(AutoQError, ValueError):
    """A trace file is missing, unreadable, corrupt, not a trace, or of an unsupported schema version."""


@dataclass(frozen=True)
class TraceRecord:
    """One recorded measurement and what it measured (verified against its checksums)."""

    id: int
    network: NetworkSpec
    plan: QuantPlan
    batch: int
    backend_uri: str
    measurement: Measurement
    recorded_at: float
    attempt: int | None = None
    episode: int | None = None  # within a search: START_UP, or the episode
    superseded: bool = False  # a replay skips it (see the module docstring)


@dataclass(frozen=True)
class DamagedRecord:
    """A record that does not verify: never served, reported by id."""

    id: int
    reason: str


@dataclass(frozen=True)
class TraceSummary:
    path: str
    schema_version: int
    created_at: float
    records: int
    distinct_plans: int
    networks: dict[str, tuple[str, int]]  # hash -> (name, record count)
    sources: dict[str, int]
    backends: dict[str, int]
    latency_s_range: tuple[float, float] | None
    energy_j_range: tuple[float, float] | None
    first_recorded_at: float | None
    last_recorded_at: float | None
    superseded: int = 0
    damaged: tuple[DamagedRecord, ...] = ()

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "schema_version": self.schema_version,
            "created_at": self.created_at,
            "records": self.records,
            "distinct_plans": self.distinct_plans,
            "networks": {h: {"name": n, "records": c} for h, (n, c) in self.networks.items()},
            "sources": self.sources,
            "backends": self.backends,
            "latency_s_range": self.latency_s_range,
            "energy_j_range": self.energy_j_range,
            "first_recorded_at": self.first_recorded_at,
            "last_recorded_at": self.last_recorded_at,
            "superseded_records": self.superseded,
            "damaged_records": [{"id": d.id, "reason": d.reason} for d in self.damaged],
        }


@dataclass(frozen=True)
class _Attempt:
    id: int
    kind: str
    run: str | None
    start_episode: int | None
    checkpointed: int


def damaged_message(path: str | Path, damaged: Sequence[DamagedRecord], limit: int = 10) -> str:
    """One line naming the damaged records of trace ``path`` (the first ``limit`` with their reasons)."""
    shown = "; ".join(f"record {d.id}: {d.reason}" for d in damaged[:limit])
    more = f"; and {len(damaged) - limit} more" if len(damaged) > limit else ""
    return (f"trace {path} has {len(damaged)} damaged record(s) that fail their checksums and are never served "
            f"({shown}{more})")


class TraceStore:
    """An open trace file.

    ``mode="a"`` creates the file if needed and appends; ``mode="r"`` opens an existing trace read-only (a missing
    file is an error, never silently created). Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str | Path, mode: Literal["a", "r"] = "a") -> None:
        if mode not in ("a", "r"):
            raise ValueError(f"trace mode must be 'a' or 'r', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        if mode == "r" and not self.path.is_file():
            raise TraceError(f"trace {self.path} does not exist" if not self.path.exists() else f"trace {self.path} is not a file")
        try:
            if mode == "r":
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
            else:
                self._db = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise TraceError(f"cannot open trace {self.path}: {exc}") from None
        # Damaged text must reach the checksum, not raise while SQLite hands it over: keep undecodable bytes as-is.
        self._db.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise TraceError(f"{self.path} is not a readable SQLite trace: {exc}") from None
        except TraceError:
            self._db.close()
            raise
        self._networks: dict[str, NetworkSpec] = {}
        self._plans: dict[str, QuantPlan] = {}

    def _prepare(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and self.mode == "a":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(
                f"BEGIN;{_SCHEMA}INSERT INTO meta VALUES ('format', '{TRACE_FORMAT}'), "
                f"('schema_version', '{SCHEMA_VERSION}'), ('created_at', '{time.time()!r}');COMMIT;"
            )
            tables = _TABLES
        if "meta" not in tables:
            raise TraceError(
                f"{self.path} is an SQLite database but not an autoq trace (it has tables {sorted(tables)})"
                if tables
                else f"trace {self.path} is empty (no tables)"
            )
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta.get("format") != TRACE_FORMAT:
            raise TraceError(f"{self.path} is not an autoq trace (format {meta.get('format')!r})")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise TraceError(f"trace {self.path} has a malformed schema_version {meta.get('schema_version')!r}") from None
        if version == 1:
            raise TraceError(f"trace {self.path} has schema version 1, whose records carry no checksums (a damaged "
                             f"one would go unnoticed); this autoq reads version {SCHEMA_VERSION} only: record it again")
        if version == 2:
            raise TraceError(f"trace {self.path} has schema version 2, whose measurements do not say which figures were "
                             f"measured and which a model predicted; this autoq reads version {SCHEMA_VERSION} only: "
                             "record it again")
        if version != SCHEMA_VERSION:
            raise TraceError(f"trace {self.path} has schema version {version}; this autoq reads version {SCHEMA_VERSION}")
        if not _TABLES <= tables:
            raise TraceError(f"trace {self.path} is damaged: it lacks the tables {sorted(_TABLES - tables)}")
        self.schema_version = version
        try:
            self.created_at = float(meta.get("created_at", "0"))
        except ValueError:
            raise TraceError(f"trace {self.path} is damaged: malformed created_at {meta.get('created_at')!r}") from None
        if self.mode == "a":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")

    # -- lifetime -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TraceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------------------
    def record_backend(self, info: BackendInfo) -> None:
        """Store what a recording backend is (its overlay above all), so a replay can describe itself."""
        self._check_writable()
        row = (info.uri, info.source, json.dumps(_backend_dict(info)))
        self._write(lambda: self._db.execute("INSERT OR REPLACE INTO backends VALUES (?, ?, ?, ?)", (*row, _checksum("backends", row))))

    def open_attempt(self, kind: str = "record") -> int:
        """Start a recording session: ``"search"`` (then tie it to its run with ``start_search``) or ``"record"``."""
        self._check_writable()
        if kind not in ATTEMPT_KINDS:
            raise ValueError(f"attempt kind must be one of {ATTEMPT_KINDS}, got {kind!r}")

        def insert() -> int:
            cursor = self._db.execute(
                "INSERT INTO attempts (kind, run, start_episode, checkpointed, opened_at, checksum) VALUES (?, NULL, NULL, 0, ?, '')",
                (kind, time.time()),
            )
            row_id = _inserted_id(cursor)
            self._rechecksum("attempts", row_id)
            return row_id

        return self._write(insert)

    def start_search(self, attempt: int, run: str, resumed_at: int | None) -> None:
        """Tie search attempt ``attempt`` to its run; ``resumed_at`` is the episode its checkpoint resumed at (None:
        a fresh run). A resumed attempt's checkpoint counts ``resumed_at`` episodes already."""
        start, checkpointed = (START_UP, 0) if resumed_at is None else (int(resumed_at), int(resumed_at))
        self._update_attempt(attempt, "run=?, start_episode=?, checkpointed=?", (run, start, checkpointed))

    def checkpointed(self, attempt: int, episodes: int) -> None:
        """The search of ``attempt`` checkpointed ``episodes`` episodes."""
        self._update_attempt(attempt, "checkpointed=?", (int(episodes),))

    def _update_attempt(self, attempt: int, assignments: str, params: tuple) -> None:
        self._check_writable()

        def update() -> None:
            self._db.execute(f"UPDATE attempts SET {assignments} WHERE id=?", (*params, attempt))
            self._rechecksum("attempts", attempt)

        self._write(update)

    def append(
        self, network: NetworkSpec, plan: QuantPlan, measurement: Measurement, backend_uri: str, batch: int = 1,
        attempt: int | None = None, episode: int | None = None,
    ) -> int:
        """Record one measurement in its own committed transaction; returns its record id."""
        self._check_writable()
        if measurement.network_hash != network.hash or measurement.plan_hash != plan.hash or measurement.batch != batch:
            raise TraceError(
                f"measurement is of network {measurement.network_hash} / plan {measurement.plan_hash} / batch "
                f"{measurement.batch}, not of network {network.hash} / plan {plan.hash} / batch {batch}"
            )
        p = measurement.provenance
        net_row = (network.hash, network.name, json.dumps(network.to_dict()))
        plan_row = (plan.hash, json.dumps(plan.to_dict()))

        def insert() -> int:
            self._db.execute("INSERT OR IGNORE INTO networks VALUES (?, ?, ?, ?)", (*net_row, _checksum("networks", net_row)))
            self._db.execute("INSERT OR IGNORE INTO plans VALUES (?, ?, ?)", (*plan_row, _checksum("plans", plan_row)))
            cursor = self._db.execute(
                "INSERT INTO measurements (network_hash, plan_hash, batch, backend_uri, source, latency_s, energy_j, "
                "avg_power_w, measured_at, recorded_at, measurement_json, attempt, episode, checksum) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                (
                    network.hash, plan.hash, batch, backend_uri, p.source, measurement.latency_s, measurement.energy_j,
                    measurement.avg_power_w, p.timestamp, time.time(), json.dumps(measurement.to_dict()), attempt, episode,
                ),
            )
            row_id = _inserted_id(cursor)
            self._rechecksum("measurements", row_id)
            return row_id

        return self._write(insert)

    def _rechecksum(self, table: str, row_id: int) -> None:
        """Set the checksum of row ``row_id`` of ``table`` from what SQLite stored (so it covers the id too)."""
        columns = _COLUMNS[table]
        row = self._db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE id=?", (row_id,)).fetchone()
        self._db.execute(f"UPDATE {table} SET checksum=? WHERE id=?", (_checksum(table, row), row_id))

    def _write(self, work):
        try:
            with self._db:
                return work()
        except sqlite3.DatabaseError as exc:
            raise TraceError(f"cannot write to trace {self.path}: {exc}") from None

    # -- reading --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._aggregate("SELECT COUNT(*) FROM measurements")[0]

    def lookup(self, network_hash: str, plan_hash: str, batch: int = 1) -> Measurement | None:
        """The first measurement a replay serves for this network, plan and batch, or ``None``."""
        found = self.lookup_all(network_hash, plan_hash, batch)
        return found[0] if found else None

    def lookup_all(self, network_hash: str, plan_hash: str, batch: int = 1) -> list[Measurement]:
        """Every measurement recorded for this network, plan and batch that a replay serves (superseded records
        left out), in recording order; a damaged one is a ``TraceError`` naming it."""
        return [
            r.measurement
            for r in self._records("WHERE network_hash=? AND plan_hash=? AND batch=?", (network_hash, plan_hash, batch), None)
            if not r.superseded
        ]

    def __iter__(self) -> Iterator[TraceRecord]:
        return self.records()

    def records(self, network_hash: str | None = None, damaged: list[DamagedRecord] | None = None) -> Iterator[TraceRecord]:
        """Every verified record in recording order (superseded ones too, marked), optionally only those of one
        network. A damaged record raises ``TraceError`` naming it, or, given ``damaged``, is appended there instead."""
        if network_hash:
            return self._records("WHERE network_hash=?", (network_hash,), damaged)
        return self._records("", (), damaged)

    def _records(self, where: str, params: tuple, damaged: list[DamagedRecord] | None) -> Iterator[TraceRecord]:
        attempts, bad_attempts = self._attempts()
        served = _served_rule(attempts)
        columns = _COLUMNS["measurements"]
        for row in self._rows(f"SELECT {', '.join(columns)}, checksum FROM measurements {where} ORDER BY id", params):
            record = self._verified(row, attempts, bad_attempts, served)
            if isinstance(record, DamagedRecord):
                if damaged is None:
                    raise TraceError(f"trace {self.path}: record {record.id} is damaged: {record.reason}")
                damaged.append(record)
            else:
                yield record

    def _verified(self, row: tuple, attempts: dict[int, _Attempt], bad_attempts: set[int], served) -> TraceRecord | DamagedRecord:
        row_id, net_hash, plan_hash, batch, uri, _, _, _, _, _, recorded_at, text, attempt, episode = row[:-1]
        if row[-1] != _checksum("measurements", row[:-1]):
            return DamagedRecord(row_id, "its content does not match its checksum")
        if attempt is not None and (attempt in bad_attempts or attempt not in attempts):
            return DamagedRecord(row_id, f"its recording attempt {attempt} is damaged or missing")
        try:
            network = self.network(net_hash)
            plan = self.plan(plan_hash)
            measurement = self._measurement(row_id, text)
        except TraceError as exc:
            return DamagedRecord(row_id, str(exc).split(": ", 1)[-1])
        return TraceRecord(row_id, network, plan, batch, uri, measurement, recorded_at, attempt, episode,
                           not served(attempt, episode))

    def _attempts(self) -> tuple[dict[int, _Attempt], set[int]]:
        good, bad = {}, set()
        for row in self._rows(f"SELECT {', '.join(_COLUMNS['attempts'])}, checksum FROM attempts"):
            if row[-1] != _checksum("attempts", row[:-1]) or row[1] not in ATTEMPT_KINDS:
                bad.add(row[0])
            else:
                good[row[0]] = _Attempt(*row[:5])
        return good, bad

    def network(self, network_hash: str) -> NetworkSpec:
        return self._stored(self._networks, "networks", network_hash, NetworkSpec.from_dict, "network")

    def plan(self, plan_hash: str) -> QuantPlan:
        return self._stored(self._plans, "plans", plan_hash, QuantPlan.from_dict, "plan")

    def _stored(self, cache: dict, table: str, key: str, parse, what: str):
        """The network or plan stored under ``key``, verified, decoded once and cached."""
        if key not in cache:
            columns = _COLUMNS[table]
            row = self._one(f"SELECT {', '.join(columns)}, checksum FROM {table} WHERE hash=?", (key,))
            if row is None:
                raise TraceError(f"trace {self.path}: its {what} {key} is missing")
            if row[-1] != _checksum(table, row[:-1]):
                raise TraceError(f"trace {self.path}: its {what} {key} does not match its checksum")
            value = self._decode(parse, row[-2], f"{what} {key}")
            if value.hash != key:
                raise TraceError(f"trace {self.path}: its {what} {key} decodes to {what} {value.hash}")
            cache[key] = value
        return cache[key]

    def backends(self) -> list[BackendInfo]:
        """The backends that recorded into this trace, most used first; a damaged description is a ``TraceError``."""
        columns = _COLUMNS["backends"]
        rows = list(self._rows(
            f"SELECT {', '.join('b.' + c for c in columns)}, b.checksum FROM backends b LEFT JOIN measurements m "
            "ON m.backend_uri = b.uri GROUP BY b.uri ORDER BY COUNT(m.id) DESC, b.uri"
        ))
        for row in rows:
            if row[-1] != _checksum("backends", row[:-1]):
                raise TraceError(f"trace {self.path}: the description of backend {row[0]!r} does not match its checksum")
        return [self._decode(_backend_info, row[-2], "backend description") for row in rows]

    def fingerprint(self) -> tuple[int, int]:
        """(record count, last record id): changes whenever a record is appended."""
        count, last = self._aggregate("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM measurements")
        return int(count), int(last)

    def summary(self) -> TraceSummary:
        """Counts and ranges over the verified records; the damaged ones are listed, not counted."""
        damaged: list[DamagedRecord] = []
        records = list(self.records(damaged=damaged))
        networks: dict[str, tuple[str, int]] = {}
        sources: dict[str, int] = {}
        backends: dict[str, int] = {}
        for r in records:
            networks[r.network.hash] = (r.network.name, networks.get(r.network.hash, ("", 0))[1] + 1)
            sources[r.measurement.provenance.source] = sources.get(r.measurement.provenance.source, 0) + 1
            backends[r.backend_uri] = backends.get(r.backend_uri, 0) + 1
        latencies = [r.measurement.latency_s for r in records]
        energies = [r.measurement.energy_j for r in records]
        recorded = [r.recorded_at for r in records]
        return TraceSummary(
            path=str(self.path),
            schema_version=self.schema_version,
            created_at=self.created_at,
            records=len(records),
            distinct_plans=len({r.plan.hash for r in records}),
            networks=dict(sorted(networks.items(), key=lambda item: item[1][0])),
            sources=sources,
            backends=backends,
            latency_s_range=(min(latencies), max(latencies)) if records else None,
            energy_j_range=(min(energies), max(energies)) if records else None,
            first_recorded_at=min(recorded) if records else None,
            last_recorded_at=max(recorded) if records else None,
            superseded=sum(r.superseded for r in records),
            damaged=tuple(damaged),
        )

    # -- helpers --------------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.mode != "a":
            raise TraceError(f"trace {self.path} is open read-only")

    def _rows(self, sql: str, params: tuple = ()) -> Iterator[tuple]:
        """The rows of ``sql``, fetched in batches; a file SQLite cannot read is a ``TraceError``."""
        try:
            cursor = self._db.execute(sql, params)
            while batch := cursor.fetchmany(256):
                yield from batch
        except sqlite3.DatabaseError as exc:
            raise TraceError(f"trace {self.path} cannot be read (the file is damaged: {exc})") from None

    def _one(self, sql: str, params: tuple = ()) -> tuple | None:
        return next(self._rows(sql, params), None)

    def _aggregate(self, sql: str) -> tuple:
        """The one row an aggregate query (``COUNT``, ``MAX``) always returns."""
        row = self._one(sql)
        assert row is not None  # an aggregate without GROUP BY yields exactly one row
        return row

    def _measurement(self, row_id: int, text: str) -> Measurement:
        return self._decode(Measurement.from_dict, text, f"record {row_id}")

    def _decode(self, parse, text: str, what: str):
        try:
            return parse(json.loads(text))
        except ManifestError as exc:  # a well-formed overlay this version refuses (e.g. register map v1)
            raise TraceError(f"trace {self.path}: {what}: {exc}") from None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise TraceError(f"trace {self.path}: {what} is corrupt: {exc}") from None


def _inserted_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row the INSERT on ``cursor`` added (sqlite3 types ``lastrowid`` as optional)."""
    row_id = cursor.lastrowid
    assert row_id is not None  # set by every successful INSERT
    return int(row_id)


def _checksum(table: str, values: Sequence[Any]) -> str:
    """SHA-256 of a row's canonical content (its table and checksummed columns, as JSON; floats exactly)."""
    text = json.dumps([table, *values], default=lambda v: f"blob:{bytes(v).hex()}" if isinstance(v, (bytes, memoryview)) else repr(v))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _served_rule(attempts: dict[int, _Attempt]):
    """``served(attempt, episode)``: whether a replay serves a record (see the module docstring)."""
    runs: dict[str, list[_Attempt]] = {}
    for a in sorted(attempts.values(), key=lambda a: a.id):
        if a.kind == "search" and a.run is not None:
            runs.setdefault(a.run, []).append(a)
    checkpointed = {run: max(a.checkpointed for a in chain) for run, chain in runs.items()}

    def served(attempt: int | None, episode: int | None) -> bool:
        a = attempts.get(attempt) if attempt is not None else None
        if a is None or a.kind != "search":
            return True
        if a.run is None or checkpointed[a.run] < 1:
            return False  # a search that failed or was killed before its first checkpoint
        e = START_UP if episode is None else episode
        owner = max((b.id for b in runs[a.run] if b.start_episode is not None and b.start_episode <= e), default=None)
        return owner == a.id

    return served


EXPORT_FORMATS = ("csv", "json")
CSV_COLUMNS = (
    "id", "recorded_at", "network", "network_hash", "plan_hash", "batch", "backend_uri", "source", "overlay_build_hash",
    "board_id", "calibration_id", "measured_at", "latency_s", "energy_j", "avg_power_w", "idle_power_w",
    "avg_weight_bits", "avg_act_bits",
)


def export_trace(store: TraceStore, fmt: str, damaged: list[DamagedRecord] | None = None) -> str:
    """The whole trace as text: ``csv`` (one flat row per record) or ``json`` (self-contained: networks, plans,
    every measurement in full, and the summary). A damaged record raises ``TraceError``, or, given ``damaged``, is
    left out and appended there."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in store.records(damaged=damaged):
            m, p = r.measurement, r.measurement.provenance
            writer.writerow(
                (
                    r.id, repr(r.recorded_at), r.network.name, r.network.hash, r.plan.hash, r.batch, r.backend_uri, p.source,
                    p.overlay_build_hash, p.board_id, p.calibration_id, repr(p.timestamp), repr(m.latency_s), repr(m.energy_j),
                    repr(m.avg_power_w), repr(m.idle_power_w), repr(r.plan.average_weight_bits(r.network)),
                    repr(r.plan.average_act_bits()),
                )
            )
        return out.getvalue()
    if fmt == "json":
        records = list(store.records(damaged=damaged))
        body = {
            "format": f"{TRACE_FORMAT}-export/{SCHEMA_VERSION}",
            "summary": store.summary().to_dict(),
            "backends": [_backend_dict(b) for b in store.backends()],
            "networks": {r.network.hash: r.network.to_dict() for r in records},
            "plans": {r.plan.hash: r.plan.to_dict() for r in records},
            "records": [
                {
                    "id": r.id, "network_hash": r.network.hash, "plan_hash": r.plan.hash, "batch": r.batch,
                    "backend_uri": r.backend_uri, "recorded_at": r.recorded_at, "attempt": r.attempt, "episode": r.episode,
                    "superseded": r.superseded, "measurement": r.measurement.to_dict(),
                }
                for r in records
            ],
        }
        return json.dumps(body, indent=1) + "\n"
    raise TraceError(f"unknown trace export format {fmt!r}; choose one of {EXPORT_FORMATS}")


def _backend_dict(info: BackendInfo) -> dict:
    return {"uri": info.uri, "source": info.source, "overlay": info.overlay.to_dict(), "measures": list(info.measures), "detail": info.detail}


def _backend_info(data: dict) -> BackendInfo:
    return BackendInfo(
        data["uri"], data["source"], OverlayConfig.from_dict(data["overlay"]), tuple(data["measures"]), data.get("detail", "")
    )
