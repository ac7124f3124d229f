"""SQLite state: sandboxes, the processes started in them, and the event log.

The daemon is the only writer. WAL with synchronous=NORMAL keeps commits cheap
on the create/exec hot paths while surviving a kill -9 of the daemon.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    state INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL,
    provider_sandbox_id TEXT NOT NULL DEFAULT '',
    provider_data TEXT NOT NULL DEFAULT '{}',
    error_message TEXT NOT NULL DEFAULT '',
    resources TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS processes (
    sandbox_id TEXT NOT NULL,
    process_id TEXT NOT NULL,
    exit TEXT,
    PRIMARY KEY (sandbox_id, process_id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    sandbox_id TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_sandbox ON events (sandbox_id, seq);
CREATE TABLE IF NOT EXISTS messages (
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender TEXT NOT NULL,
    sender_seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (channel, recipient, seq)
);
CREATE TABLE IF NOT EXISTS settings (
    sandbox_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, kind, name)
);
"""

# Events kept in the log; older ones are trimmed so the file cannot grow without bound.
MAX_EVENTS = 200_000


class Store:
    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ sandboxes

    def put_sandbox(self, sb: Sandbox) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO sandboxes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                sb.id,
                sb.spec.request_id or None,
                int(sb.state),
                json.dumps(asdict(sb.spec)),
                sb.created_at,
                sb.started_at,
                sb.expires_at,
                sb.provider_sandbox_id,
                json.dumps(sb.provider_data),
                sb.error_message,
                json.dumps(asdict(sb.resources)),
            ),
        )

    def delete_sandbox(self, sandbox_id: str) -> None:
        self._db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))
        self._db.execute("DELETE FROM processes WHERE sandbox_id = ?", (sandbox_id,))
        self._db.execute("DELETE FROM settings WHERE sandbox_id = ?", (sandbox_id,))

    # ------------------------------------------------------------ settings
    # Per-sandbox configuration the daemon acts on (alerts, autoscaling, health
    # checks), kept so that a restarted daemon carries on with it.

    def put_setting(self, sandbox_id: str, kind: str, name: str, value: object) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO settings VALUES (?,?,?,?)",
            (sandbox_id, kind, name, json.dumps(value)),
        )

    def delete_setting(self, sandbox_id: str, kind: str, name: str = "") -> None:
        self._db.execute(
            "DELETE FROM settings WHERE sandbox_id = ? AND kind = ? AND name = ?",
            (sandbox_id, kind, name),
        )

    def settings(self, sandbox_id: str) -> list[tuple[str, str, Any]]:
        rows = self._db.execute(
            "SELECT kind, name, value FROM settings WHERE sandbox_id = ? ORDER BY kind, name",
            (sandbox_id,),
        ).fetchall()
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    # ------------------------------------------------------------ messages
    # Channel queues: a row per delivery, deleted when the recipient acknowledges it.

    def put_message(self, channel: str, recipient: str, seq: int, sender: str,
                    sender_seq: int, payload: bytes, time: float) -> None:  # fmt: skip
        self._db.execute(
            "INSERT INTO messages VALUES (?,?,?,?,?,?,?)",
            (channel, recipient, seq, sender, sender_seq, payload, time),
        )

    def ack_messages(self, channel: str, recipient: str, upto: int) -> None:
        self._db.execute(
            "DELETE FROM messages WHERE channel = ? AND recipient = ? AND seq <= ?",
            (channel, recipient, upto),
        )

    def messages(self, channel: str) -> list[tuple[str, int, str, int, bytes, float]]:
        rows = self._db.execute(
            "SELECT recipient, seq, sender, sender_seq, payload, time FROM messages "
            "WHERE channel = ? ORDER BY recipient, seq",
            (channel,),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def delete_messages(self, channel: str) -> None:
        self._db.execute("DELETE FROM messages WHERE channel = ?", (channel,))

    def sandboxes(self) -> list[Sandbox]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY created_at, id").fetchall()
        return [_sandbox(r) for r in rows]

    def sandbox_by_request_id(self, request_id: str) -> Sandbox | None:
        row = self._db.execute(
            "SELECT * FROM sandboxes WHERE request_id = ?", (request_id,)
        ).fetchone()
        return _sandbox(row) if row else None

    # ------------------------------------------------------------ processes

    def add_process(self, sandbox_id: str, process_id: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO processes VALUES (?,?,NULL)", (sandbox_id, process_id)
        )

    def set_process_exit(self, sandbox_id: str, process_id: str, status: ExitStatus) -> bool:
        """Records an exit once. Returns False when it was already recorded."""
        cur = self._db.execute(
            "INSERT INTO processes VALUES (?,?,?) ON CONFLICT (sandbox_id, process_id) "
            "DO UPDATE SET exit = excluded.exit WHERE exit IS NULL",
            (sandbox_id, process_id, json.dumps(asdict(status))),
        )
        return cur.rowcount > 0

    def forget_processes(self, sandbox_id: str) -> None:
        self._db.execute("DELETE FROM processes WHERE sandbox_id = ?", (sandbox_id,))

    def unfinished_processes(self, sandbox_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT process_id FROM processes WHERE sandbox_id = ? AND exit IS NULL",
            (sandbox_id,),
        ).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------ events

    def append_event(
        self, time: float, sandbox_id: str, type_: str, message: str, attributes: dict[str, str]
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO events (time, sandbox_id, type, message, attributes) VALUES (?,?,?,?,?)",
            (time, sandbox_id, type_, message, json.dumps(attributes)),
        )
        seq = cur.lastrowid
        assert seq is not None
        if seq % 10_000 == 0:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (seq - MAX_EVENTS,))
        return seq

    def events_after(
        self, after: int, sandbox_ids: Iterable[str] = (), limit: int = 1000
    ) -> list[Event]:
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


def _sandbox(row: tuple[object, ...]) -> Sandbox:
    spec = json.loads(str(row[3]))
    spec["resources"] = Resources(**spec["resources"])
    spec["fallback_providers"] = tuple(spec.get("fallback_providers", ()))
    spec["volumes"] = tuple(VolumeMount(**v) for v in spec.get("volumes", ()))
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
        resources=Resources(**json.loads(str(row[10]))),
    )
