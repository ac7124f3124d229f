"""The schema, one step per version (PRAGMA user_version). Steps are only ever
appended; each runs once, in a transaction, on databases older than it."""

from __future__ import annotations

# Daemon-wide records, one table per feature: name -> JSON of the feature's record.
RECORDS = ("pools", "groups", "networks", "channels", "volumes", "states")
# Records that belong to one sandbox and go with it.
SANDBOX_RECORDS = ("snapshots", "alerts", "autoscale", "health")
# The kind each had in version 1's shared settings table.
_KIND = {
    "pools": "pool",
    "groups": "group",
    "networks": "network",
    "channels": "channel",
    "volumes": "volume",
    "states": "state",
    "snapshots": "snapshot",
    "alerts": "alerts",
    "autoscale": "autoscale",
    "health": "health",
}

_V1 = [
    # Version 1 is the schema daemons before versioning made (IF NOT EXISTS: their
    # databases already have it).
    """CREATE TABLE IF NOT EXISTS sandboxes (
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
    )""",
    """CREATE TABLE IF NOT EXISTS processes (
        sandbox_id TEXT NOT NULL,
        process_id TEXT NOT NULL,
        exit TEXT,
        PRIMARY KEY (sandbox_id, process_id)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        sandbox_id TEXT NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        attributes TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_sandbox ON events (sandbox_id, seq)",
    """CREATE TABLE IF NOT EXISTS messages (
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sender TEXT NOT NULL,
        sender_seq INTEGER NOT NULL,
        payload BLOB NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (channel, recipient, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS settings (
        sandbox_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (sandbox_id, kind, name)
    )""",
]

# Version 2: a table per feature instead of one string-keyed settings table.
_V2 = [
    *(f"CREATE TABLE {t} (name TEXT PRIMARY KEY, value TEXT NOT NULL)" for t in RECORDS),
    *(
        f"CREATE TABLE {t} (sandbox_id TEXT NOT NULL, name TEXT NOT NULL, "
        "value TEXT NOT NULL, PRIMARY KEY (sandbox_id, name))"
        for t in SANDBOX_RECORDS
    ),
    *(
        f"INSERT INTO {t} SELECT name, value FROM settings WHERE kind = '{_KIND[t]}'"
        for t in RECORDS
    ),
    *(
        f"INSERT INTO {t} SELECT sandbox_id, name, value FROM settings "
        f"WHERE kind = '{_KIND[t]}' AND sandbox_id != ''"
        for t in SANDBOX_RECORDS
    ),
    "DROP TABLE settings",
    # Counters that must never go back, such as the event sequence's reserved block.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
]

# Version 3: remote access. Tokens (hashes only) and quotas are records like the
# features'; owners says which tenant each sandbox and named thing belongs to.
ACCESS_RECORDS = ("tokens", "quotas")
_V3 = [
    *(f"CREATE TABLE {t} (name TEXT PRIMARY KEY, value TEXT NOT NULL)" for t in ACCESS_RECORDS),
    """CREATE TABLE owners (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        tenant TEXT NOT NULL,
        PRIMARY KEY (kind, key)
    )""",
]

MIGRATIONS: list[list[str]] = [_V1, _V2, _V3]
