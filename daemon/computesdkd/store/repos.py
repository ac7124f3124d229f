"""One repository per kind of row. Each speaks domain objects (or the JSON of a
feature's own record) and hides the SQL."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from computesdkd.domain.model import (
    Event,
    ExitStatus,
    Resources,
    Sandbox,
    SandboxSpec,
    State,
    VolumeMount,
)
from computesdkd.store.db import Database

# Events kept in the log; older ones are trimmed so the file cannot grow without bound.
MAX_EVENTS = 200_000
TRIM_EVERY = 10_000
SEQ_BLOCK = 10_000
MAX_RECORDED = 100_000


class Sandboxes:
    """Written at once: a restarted daemon reconciles from these rows."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, sb: Sandbox) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO sandboxes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                sb.id,
                request_key(sb.spec.tenant, sb.spec.request_id),
                int(sb.state),
                json.dumps(asdict(sb.spec)),
                sb.created_at,
                sb.started_at,
                sb.expires_at,
                sb.provider_sandbox_id,
                json.dumps(sb.provider_data),
                sb.error_message,
                json.dumps(_resources_row(sb)),
            ),
        )

    def delete(self, sandbox_id: str) -> None:
        """The sandbox and every row that belongs to it."""
        self._db.flush()  # its queued process rows land first, then go with it
        self._db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))
        self._db.execute("DELETE FROM processes WHERE sandbox_id = ?", (sandbox_id,))
        for table in SandboxRecords.TABLES:
            self._db.execute(f"DELETE FROM {table} WHERE sandbox_id = ?", (sandbox_id,))

    def all(self) -> list[Sandbox]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY created_at, id").fetchall()
        return [_sandbox(r) for r in rows]

    def by_request_id(self, tenant: str, request_id: str) -> Sandbox | None:
        row = self._db.execute(
            "SELECT * FROM sandboxes WHERE request_id = ?", (request_key(tenant, request_id),)
        ).fetchone()
        return _sandbox(row) if row else None


def request_key(tenant: str, request_id: str) -> str | None:
    """Request ids are each tenant's own: two tenants may use the same one. (The
    admin's are stored as they are, as before tenants.)"""
    if not request_id:
        return None
    return f"{tenant}\x00{request_id}" if tenant else request_id


class Processes:
    """A row per process started, its exit once known; written in batches."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Exits already recorded, so each is reported once (an exec stream and a
        # watcher can both see one). Only recent ones can race; older ones go.
        self._recorded: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, sandbox_id: str, process_id: str) -> None:
        self._db.later(
            "INSERT OR IGNORE INTO processes VALUES (?,?,NULL)", (sandbox_id, process_id)
        )

    def set_exit(self, sandbox_id: str, process_id: str, status: ExitStatus) -> bool:
        """Records an exit once. Returns False when it was already recorded. A
        process forgotten by a reset or restart still gets its exit recorded."""
        key = (sandbox_id, process_id)
        with self._lock:
            if key in self._recorded:
                return False
            self._recorded[key] = None
            if len(self._recorded) > MAX_RECORDED:
                self._recorded.popitem(last=False)
        self._db.later(
            "INSERT INTO processes VALUES (?,?,?) ON CONFLICT (sandbox_id, process_id) "
            "DO UPDATE SET exit = excluded.exit WHERE exit IS NULL",
            (sandbox_id, process_id, json.dumps(asdict(status))),
        )
        return True

    def forget(self, sandbox_id: str) -> None:
        self._db.later("DELETE FROM processes WHERE sandbox_id = ?", (sandbox_id,))

    def unfinished(self, sandbox_id: str) -> list[str]:
        """After a restart: what was still running."""
        self._db.flush()
        rows = self._db.execute(
            "SELECT process_id FROM processes WHERE sandbox_id = ? AND exit IS NULL",
            (sandbox_id,),
        ).fetchall()
        return [str(r[0]) for r in rows]


class Events:
    """The event log. Sequence numbers are handed out here, so an emit never waits
    for the disk; the rows follow in batches. Numbers are reserved on disk a block
    at a time, so after a kill -9 that lost queued rows the next daemon still
    numbers past anything a client may have seen."""

    def __init__(self, db: Database) -> None:
        self._db = db
        row = db.execute("SELECT MAX(seq) FROM events").fetchone()
        reserved = db.execute("SELECT value FROM meta WHERE key = 'event_seq'").fetchone()
        self._seq = max(int(row[0] or 0), int(reserved[0]) if reserved else 0)
        self._reserved = self._seq

    def append(
        self, time: float, sandbox_id: str, type_: str, message: str, attributes: dict[str, str]
    ) -> int:
        seq = self._seq + 1
        if seq > self._reserved:
            # On disk first: a number is handed out only once its block is reserved.
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('event_seq', ?)", (seq + SEQ_BLOCK,)
            )
            self._reserved = seq + SEQ_BLOCK
        self._seq = seq
        self._db.later(
            "INSERT INTO events (seq, time, sandbox_id, type, message, attributes) "
            "VALUES (?,?,?,?,?,?)",
            (seq, time, sandbox_id, type_, message, json.dumps(attributes)),
        )
        if seq % TRIM_EVERY == 0:
            self._db.later("DELETE FROM events WHERE seq <= ?", (seq - MAX_EVENTS,))
        return seq

    def after(self, after: int, sandbox_ids: Iterable[str] = (), limit: int = 1000) -> list[Event]:
        self._db.flush()
        ids = list(sandbox_ids)
        if ids:
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(
                f"SELECT * FROM events WHERE seq > ? AND sandbox_id IN ({marks}) "
                "ORDER BY seq LIMIT ?",
                (after, *ids, limit),
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


class Messages:
    """Channel queues: a row per delivery, deleted when the recipient acknowledges it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, channel: str, recipient: str, seq: int, sender: str,
            sender_seq: int, payload: bytes, time: float) -> None:  # fmt: skip
        self._db.execute(
            "INSERT INTO messages VALUES (?,?,?,?,?,?,?)",
            (channel, recipient, seq, sender, sender_seq, payload, time),
        )

    def ack(self, channel: str, recipient: str, upto: int) -> None:
        self._db.execute(
            "DELETE FROM messages WHERE channel = ? AND recipient = ? AND seq <= ?",
            (channel, recipient, upto),
        )

    def of(self, channel: str) -> list[tuple[str, int, str, int, bytes, float]]:
        rows = self._db.execute(
            "SELECT recipient, seq, sender, sender_seq, payload, time FROM messages "
            "WHERE channel = ? ORDER BY recipient, seq",
            (channel,),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def delete(self, channel: str) -> None:
        self._db.execute("DELETE FROM messages WHERE channel = ?", (channel,))


class Records:
    """A feature's records by name (pools, groups, networks, ...), as JSON."""

    def __init__(self, db: Database, table: str) -> None:
        self._db = db
        self._table = table

    def put(self, name: str, value: object) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO {self._table} VALUES (?,?)", (name, json.dumps(value))
        )

    def delete(self, name: str) -> None:
        self._db.execute(f"DELETE FROM {self._table} WHERE name = ?", (name,))

    def all(self) -> list[tuple[str, Any]]:
        rows = self._db.execute(f"SELECT name, value FROM {self._table} ORDER BY name")
        return [(str(r[0]), json.loads(r[1])) for r in rows.fetchall()]


class Owners:
    """Which tenant each thing belongs to: (kind, key) -> tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, kind: str, key: str, tenant: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO owners VALUES (?,?,?)", (kind, key, tenant))

    def delete(self, kind: str, key: str) -> None:
        self._db.execute("DELETE FROM owners WHERE kind = ? AND key = ?", (kind, key))

    def prune_sandboxes(self) -> None:
        """Drops the rows of sandboxes that are gone and have no stored event left."""
        self._db.execute(
            "DELETE FROM owners WHERE kind = 'sandbox' AND key NOT IN (SELECT id FROM sandboxes)"
            " AND key NOT IN (SELECT DISTINCT sandbox_id FROM events)"
        )

    def all(self) -> list[tuple[str, str, str]]:
        rows = self._db.execute("SELECT kind, key, tenant FROM owners")
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows.fetchall()]


class SandboxRecords:
    """A feature's records that belong to one sandbox (alerts, health checks, ...)."""

    TABLES = ("snapshots", "alerts", "autoscale", "health")

    def __init__(self, db: Database, table: str) -> None:
        assert table in self.TABLES
        self._db = db
        self._table = table

    def put(self, sandbox_id: str, name: str, value: object) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO {self._table} VALUES (?,?,?)",
            (sandbox_id, name, json.dumps(value)),
        )

    def delete(self, sandbox_id: str, name: str = "") -> None:
        self._db.execute(
            f"DELETE FROM {self._table} WHERE sandbox_id = ? AND name = ?", (sandbox_id, name)
        )

    def of(self, sandbox_id: str) -> list[tuple[str, Any]]:
        rows = self._db.execute(
            f"SELECT name, value FROM {self._table} WHERE sandbox_id = ? ORDER BY name",
            (sandbox_id,),
        )
        return [(str(r[0]), json.loads(r[1])) for r in rows.fetchall()]

    def owners(self) -> set[str]:
        rows = self._db.execute(f"SELECT DISTINCT sandbox_id FROM {self._table}")
        return {str(r[0]) for r in rows.fetchall()}


def _sandbox(row: tuple[object, ...]) -> Sandbox:
    spec = json.loads(str(row[3]))
    spec["resources"] = Resources(**spec["resources"])
    spec["fallback_providers"] = tuple(spec.get("fallback_providers", ()))
    spec["volumes"] = tuple(VolumeMount(**v) for v in spec.get("volumes", ()))
    spec["ports"] = tuple(spec.get("ports", ()))
    return Sandbox(
        id=str(row[0]),
        spec=SandboxSpec(**spec),
        state=State(int(str(row[2]))),
        created_at=float(str(row[4])),
        started_at=float(str(row[5])),
        expires_at=float(str(row[6])),
        provider_sandbox_id=str(row[7]),
        provider_data=json.loads(str(row[8])),
        error_message=str(row[9]),
        **_resources_from(json.loads(str(row[10]))),
    )


def _resources_row(sb: Sandbox) -> dict[str, object]:
    # What was asked rides in the same column, so rows written before it read as is.
    row: dict[str, object] = asdict(sb.resources)
    if sb.requested != Resources():
        row["requested"] = asdict(sb.requested)
    return row


def _resources_from(row: dict[str, Any]) -> dict[str, Resources]:
    requested = row.pop("requested", None)
    out = {"resources": Resources(**row)}
    if requested is not None:
        out["requested"] = Resources(**requested)
    return out
