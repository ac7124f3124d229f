"""The store: schema migrations, batched writes, and sequence numbers that never go
back across a crash."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from computesdkd.domain.model import ExitStatus
from computesdkd.store import Store
from computesdkd.store.migrations import MIGRATIONS


def _legacy_db(path: Path) -> None:
    """A database as daemons before schema versions left it (user_version 0)."""
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    rows = [
        ("", "pool", "warm", {"spec": {"name": "warm"}, "leased": []}),
        ("", "state", "st-1", {"id": "st-1"}),
        ("sbx-1", "alerts", "", {"thresholds": [], "interval_s": 1}),
        ("sbx-1", "snapshot", "snap-1", {"id": "snap-1"}),
    ]
    conn.executemany(
        "INSERT INTO settings VALUES (?,?,?,?)", [(*r[:3], json.dumps(r[3])) for r in rows]
    )
    conn.commit()
    conn.close()


def test_a_legacy_database_is_migrated_and_keeps_every_record(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _legacy_db(db)
    store = Store(db)
    try:
        assert store.records("pools").all() == [("warm", {"spec": {"name": "warm"}, "leased": []})]
        assert store.records("states").all() == [("st-1", {"id": "st-1"})]
        assert store.sandbox_records("alerts").of("sbx-1") == [
            ("", {"thresholds": [], "interval_s": 1})
        ]
        assert store.sandbox_records("snapshots").of("sbx-1") == [("snap-1", {"id": "snap-1"})]
    finally:
        store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "settings" not in tables


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    sqlite3.connect(db).execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        Store(db)


def test_batched_rows_are_read_back_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        seqs = [store.events.append(float(i), "sbx-1", "t", "", {"i": str(i)}) for i in range(50)]
        assert seqs == list(range(1, 51))
        got = store.events.after(10, {"sbx-1"})
        assert [e.sequence for e in got] == list(range(11, 51))
        store.processes.add("sbx-1", "p1")
        assert store.processes.set_exit("sbx-1", "p1", ExitStatus(0))
        assert not store.processes.set_exit("sbx-1", "p1", ExitStatus(0))  # once only
    finally:
        store.close()


def test_event_numbers_never_go_back_after_lost_rows(tmp_path: Path) -> None:
    """A daemon killed with events still queued: the next one numbers past them."""
    db = tmp_path / "state.db"
    store = Store(db)
    last = [store.events.append(0.0, "", "t", "", {}) for _ in range(5)][-1]
    store.flush()
    # Lose the rows as a kill -9 before the batch reached the disk would.
    store._db.execute("DELETE FROM events")
    store.close()
    again = Store(db)
    try:
        assert again.events.append(0.0, "", "t", "", {}) > last
    finally:
        again.close()


def test_an_unfinished_process_counts_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = Store(db)
    store.processes.add("sbx-1", "p1")
    store.close()
    again = Store(db)
    try:
        assert again.processes.unfinished("sbx-1") == ["p1"]
        assert again.processes.set_exit("sbx-1", "p1", ExitStatus(3))
        assert again.processes.unfinished("sbx-1") == []
    finally:
        again.close()


def test_a_row_sqlite_cannot_take_costs_only_itself(tmp_path: Path) -> None:
    """A lone surrogate cannot be encoded: that event is dropped, the writer lives
    on, and the rows around it land."""
    store = Store(tmp_path / "state.db")
    try:
        store.events.append(0.0, "", "t", "before", {})
        store.events.append(0.0, "", "t", "bad \udcff", {})
        store.events.append(0.0, "", "t", "after", {})
        store.flush()  # returns: the writer thread is alive
        assert [e.message for e in store.events.after(0)] == ["before", "after"]
    finally:
        store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.flush()


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        store.processes.add("sbx-1", "p1")
        store.processes.forget("sbx-1")
        store.processes.add("sbx-1", "p2")
        store.flush()
        assert store.processes.unfinished("sbx-1") == ["p2"]
    finally:
        store.close()
