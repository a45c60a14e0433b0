"""SQLite trace store: every measurement a backend made, with the network and plan it measured.

A trace is self-contained: it holds each ``NetworkSpec`` and ``QuantPlan`` as JSON next to the measurements, so
it can be replayed, exported or used for calibration without the model that produced it. The file is in WAL mode
and every ``append`` is its own committed transaction (``synchronous=FULL``), so a crash — even SIGKILL or a power
cut — loses nothing that ``append`` returned from.

Standard library only (no torch): the trace is read by ``autoq trace``, the replay backend and calibration.
"""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from autoq.common.backend import BackendInfo
from autoq.common.errors import AutoQError
from autoq.common.measurement import Measurement
from autoq.common.network import NetworkSpec
from autoq.common.plan import QuantPlan
from autoq.overlay.manifest import OverlayConfig

TRACE_FORMAT = "autoq-trace"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE networks (hash TEXT PRIMARY KEY, name TEXT NOT NULL, spec_json TEXT NOT NULL);
CREATE TABLE plans (hash TEXT PRIMARY KEY, plan_json TEXT NOT NULL);
CREATE TABLE backends (uri TEXT PRIMARY KEY, source TEXT NOT NULL, info_json TEXT NOT NULL);
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
    measurement_json TEXT NOT NULL
);
CREATE INDEX measurements_key ON measurements (network_hash, plan_hash, batch, id);
"""
_TABLES = {"meta", "networks", "plans", "backends", "measurements"}


class TraceError(AutoQError, ValueError):
    """A trace file is missing, unreadable, corrupt, not a trace, or of an unsupported schema version."""


@dataclass(frozen=True)
class TraceRecord:
    """One recorded measurement and what it measured."""

    id: int
    network: NetworkSpec
    plan: QuantPlan
    batch: int
    backend_uri: str
    measurement: Measurement
    recorded_at: float


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
        }


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
        elif not _TABLES <= tables:
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
        if version != SCHEMA_VERSION:
            raise TraceError(f"trace {self.path} has schema version {version}; this autoq reads version {SCHEMA_VERSION}")
        self.schema_version = version
        self.created_at = float(meta.get("created_at", "0"))
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
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO backends VALUES (?, ?, ?)", (info.uri, info.source, json.dumps(_backend_dict(info)))
            )

    def append(
        self, network: NetworkSpec, plan: QuantPlan, measurement: Measurement, backend_uri: str, batch: int = 1
    ) -> int:
        """Record one measurement in its own committed transaction; returns its record id."""
        self._check_writable()
        if measurement.network_hash != network.hash or measurement.plan_hash != plan.hash or measurement.batch != batch:
            raise TraceError(
                f"measurement is of network {measurement.network_hash} / plan {measurement.plan_hash} / batch "
                f"{measurement.batch}, not of network {network.hash} / plan {plan.hash} / batch {batch}"
            )
        p = measurement.provenance
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO networks VALUES (?, ?, ?)", (network.hash, network.name, json.dumps(network.to_dict()))
            )
            self._db.execute("INSERT OR IGNORE INTO plans VALUES (?, ?)", (plan.hash, json.dumps(plan.to_dict())))
            cursor = self._db.execute(
                "INSERT INTO measurements (network_hash, plan_hash, batch, backend_uri, source, latency_s, energy_j, "
                "avg_power_w, measured_at, recorded_at, measurement_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    network.hash,
                    plan.hash,
                    batch,
                    backend_uri,
                    p.source,
                    measurement.latency_s,
                    measurement.energy_j,
                    measurement.avg_power_w,
                    p.timestamp,
                    time.time(),
                    json.dumps(measurement.to_dict()),
                ),
            )
        return int(cursor.lastrowid)

    # -- reading --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def lookup(self, network_hash: str, plan_hash: str, batch: int = 1) -> Measurement | None:
        """The first measurement recorded for this network, plan and batch, or ``None``."""
        found = self.lookup_all(network_hash, plan_hash, batch)
        return found[0] if found else None

    def lookup_all(self, network_hash: str, plan_hash: str, batch: int = 1) -> list[Measurement]:
        """Every measurement recorded for this network, plan and batch, in recording order."""
        rows = self._query(
            "SELECT id, measurement_json FROM measurements WHERE network_hash=? AND plan_hash=? AND batch=? ORDER BY id",
            (network_hash, plan_hash, batch),
        )
        return [self._measurement(row_id, text) for row_id, text in rows]

    def __iter__(self) -> Iterator[TraceRecord]:
        return self.records()

    def records(self, network_hash: str | None = None) -> Iterator[TraceRecord]:
        """Every record in recording order, optionally only those of one network."""
        sql = (
            "SELECT id, network_hash, plan_hash, batch, backend_uri, recorded_at, measurement_json FROM measurements"
            + (" WHERE network_hash=?" if network_hash else "")
            + " ORDER BY id"
        )
        for row_id, net_hash, plan_hash, batch, uri, recorded_at, text in self._query(sql, (network_hash,) if network_hash else ()).fetchall():
            yield TraceRecord(
                row_id, self.network(net_hash), self.plan(plan_hash), batch, uri, self._measurement(row_id, text), recorded_at
            )

    def network(self, network_hash: str) -> NetworkSpec:
        return self._stored(self._networks, "SELECT spec_json FROM networks WHERE hash=?", network_hash, NetworkSpec.from_dict, "network")

    def plan(self, plan_hash: str) -> QuantPlan:
        return self._stored(self._plans, "SELECT plan_json FROM plans WHERE hash=?", plan_hash, QuantPlan.from_dict, "plan")

    def _stored(self, cache: dict, sql: str, key: str, parse, what: str):
        """The network or plan stored under ``key``, decoded once and cached."""
        if key not in cache:
            row = self._query(sql, (key,)).fetchone()
            if row is None:
                raise TraceError(f"trace {self.path} has no {what} {key}")
            cache[key] = self._decode(parse, row[0], f"{what} {key}")
        return cache[key]

    def backends(self) -> list[BackendInfo]:
        """The backends that recorded into this trace, most used first."""
        rows = self._query(
            "SELECT b.info_json FROM backends b LEFT JOIN measurements m ON m.backend_uri = b.uri GROUP BY b.uri "
            "ORDER BY COUNT(m.id) DESC, b.uri"
        ).fetchall()
        return [self._decode(_backend_info, text, "backend description") for (text,) in rows]

    def fingerprint(self) -> tuple[int, int]:
        """(record count, last record id): changes whenever a record is appended."""
        count, last = self._query("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM measurements").fetchone()
        return int(count), int(last)

    def summary(self) -> TraceSummary:
        count, plans, lat_min, lat_max, e_min, e_max, first, last = self._query(
            "SELECT COUNT(*), COUNT(DISTINCT plan_hash), MIN(latency_s), MAX(latency_s), MIN(energy_j), MAX(energy_j), "
            "MIN(recorded_at), MAX(recorded_at) FROM measurements"
        ).fetchone()
        networks = {
            h: (name, n)
            for h, name, n in self._query(
                "SELECT n.hash, n.name, COUNT(m.id) FROM networks n LEFT JOIN measurements m ON m.network_hash = n.hash "
                "GROUP BY n.hash ORDER BY n.name"
            )
        }
        return TraceSummary(
            path=str(self.path),
            schema_version=self.schema_version,
            created_at=self.created_at,
            records=count,
            distinct_plans=plans,
            networks=networks,
            sources=dict(self._query("SELECT source, COUNT(*) FROM measurements GROUP BY source")),
            backends=dict(self._query("SELECT backend_uri, COUNT(*) FROM measurements GROUP BY backend_uri")),
            latency_s_range=(lat_min, lat_max) if count else None,
            energy_j_range=(e_min, e_max) if count else None,
            first_recorded_at=first,
            last_recorded_at=last,
        )

    # -- helpers --------------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.mode != "a":
            raise TraceError(f"trace {self.path} is open read-only")

    def _query(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise TraceError(f"trace {self.path} cannot be read: {exc}") from None

    def _measurement(self, row_id: int, text: str) -> Measurement:
        return self._decode(Measurement.from_dict, text, f"record {row_id}")

    def _decode(self, parse, text: str, what: str):
        try:
            return parse(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise TraceError(f"trace {self.path}: {what} is corrupt: {exc}") from None


EXPORT_FORMATS = ("csv", "json")
CSV_COLUMNS = (
    "id", "recorded_at", "network", "network_hash", "plan_hash", "batch", "backend_uri", "source", "overlay_build_hash",
    "board_id", "calibration_id", "measured_at", "latency_s", "energy_j", "avg_power_w", "idle_power_w",
    "avg_weight_bits", "avg_act_bits",
)


def export_trace(store: TraceStore, fmt: str) -> str:
    """The whole trace as text: ``csv`` (one flat row per record) or ``json`` (self-contained: networks, plans,
    every measurement in full, and the summary)."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in store.records():
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
        records = list(store.records())
        body = {
            "format": f"{TRACE_FORMAT}-export/{SCHEMA_VERSION}",
            "summary": store.summary().to_dict(),
            "backends": [_backend_dict(b) for b in store.backends()],
            "networks": {r.network.hash: r.network.to_dict() for r in records},
            "plans": {r.plan.hash: r.plan.to_dict() for r in records},
            "records": [
                {
                    "id": r.id, "network_hash": r.network.hash, "plan_hash": r.plan.hash, "batch": r.batch,
                    "backend_uri": r.backend_uri, "recorded_at": r.recorded_at, "measurement": r.measurement.to_dict(),
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
