"""The SQLite database: one file in the state dir, its schema migrations, and a
writer thread for the rows written on every exec (events, process starts and
exits), so the event loop never waits on them.

Sandbox rows and the features' records are written at once, on the caller's
thread: a daemon killed right after a create or destroy must find them on disk
to reconcile. Batched rows reach the disk within a few milliseconds; a kill -9
can lose at most that window of events and process rows, never a sandbox."""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from computesdkd.store.migrations import MIGRATIONS
from computesdkd.support import logs

log = logs.get(__name__)

# At most this many batched statements go in one transaction.
BATCH = 512
_Statement = tuple[str, Sequence[Any]]


class Database:
    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self.path = path
        self.conn = _connect(path)
        migrate(self.conn)
        self._queue: queue.SimpleQueue[_Statement | threading.Event | None] = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write_batches, name="store-writer", daemon=True
        )
        self._closed = False
        self._writer.start()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def later(self, sql: str, params: Sequence[Any]) -> None:
        """Queues a write for the writer thread; it commits in batches."""
        self._check_open()
        self._queue.put((sql, params))

    def flush(self) -> None:
        """Waits until everything queued so far is committed (before a read that
        must see it)."""
        self._check_open()
        done = threading.Event()
        self._queue.put(done)
        while not done.wait(1.0):
            if not self._writer.is_alive():
                raise RuntimeError("the store's writer thread is gone")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        self.conn.close()

    def _write_batches(self) -> None:
        conn = _connect(self.path)
        try:
            while True:
                first = self._queue.get()
                batch: list[_Statement] = []
                waiters: list[threading.Event] = []
                stop = False
                item: _Statement | threading.Event | None = first
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, threading.Event):
                        waiters.append(item)
                    else:
                        batch.append(item)
                    if stop or len(batch) >= BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                self._commit(conn, batch)
                for w in waiters:
                    w.set()
                if stop:
                    return
        finally:
            conn.close()

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Statement]) -> None:
        """One transaction for the batch (autocommit connection: BEGIN by hand)."""
        if not batch:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in batch:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except Exception as exc:
            # Any bad statement (a string SQLite cannot encode, say) must cost only
            # itself: the batch rolls back and is replayed one by one, and the
            # writer thread, which every flush waits on, never dies.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("batched write failed; replaying one by one", error=repr(exc))
            for sql, params in batch:
                try:
                    conn.execute(sql, params)
                except Exception as one:
                    log.error("a batched write was dropped", error=repr(one), sql=sql[:80])


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # The loop's writes and the writer thread's batches take turns on the lock.
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Brings the schema to the newest version (PRAGMA user_version), one migration
    per version, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"state database schema version {version} is newer than this daemon's "
            f"({len(MIGRATIONS)}): run a newer computesdkd"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("state database migrated", version=number)
