"""Persistence: one SQLite database in the state dir, a repository per kind of row.

store.sandboxes   Sandbox rows (written at once)
store.processes   process starts and exits (batched, off the event loop)
store.events      the event log (batched; sequence numbers handed out in memory)
store.messages    channel deliveries
store.records(T)  a feature's records by name: pools, groups, networks, ...
store.sandbox_records(T)  records that go with their sandbox: alerts, health, ...
store.owners      the tenant of each sandbox and named thing
store.records("tokens"), store.records("quotas")  remote access
"""

from __future__ import annotations

from pathlib import Path

from computesdkd.store.db import Database
from computesdkd.store.migrations import ACCESS_RECORDS, RECORDS, SANDBOX_RECORDS
from computesdkd.store.repos import (
    Events,
    Messages,
    Owners,
    Processes,
    Records,
    Sandboxes,
    SandboxRecords,
)


class Store:
    def __init__(self, path: Path) -> None:
        self._db = Database(path)
        self.sandboxes = Sandboxes(self._db)
        self.processes = Processes(self._db)
        self.events = Events(self._db)
        self.messages = Messages(self._db)
        self.owners = Owners(self._db)
        self._records = {t: Records(self._db, t) for t in (*RECORDS, *ACCESS_RECORDS)}
        self._sandbox_records = {t: SandboxRecords(self._db, t) for t in SANDBOX_RECORDS}

    def records(self, table: str) -> Records:
        return self._records[table]

    def sandbox_records(self, table: str) -> SandboxRecords:
        return self._sandbox_records[table]

    def flush(self) -> None:
        self._db.flush()

    def close(self) -> None:
        self._db.close()


__all__ = ["Store"]
