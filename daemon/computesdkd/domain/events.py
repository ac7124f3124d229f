"""The event types the core emits (Event.type). New ones may be added; these are
stable. Features name their own (pool.acquired, snapshot.created, ...)."""

CREATED, READY, ERROR, DESTROYED = "created", "ready", "error", "destroyed"
PROCESS_STARTED, PROCESS_EXITED, OOM = "process.started", "process.exited", "out-of-memory"
CLONED, MIGRATED, RESOURCES_CHANGED = "cloned", "migrated", "resources.changed"
RESET, ENV_CHANGED, RESTARTED = "reset", "env.changed", "restarted"
VOLUME_MOUNTED = "volume.mounted"
# A disk or state check failed: attributes what (state|snapshot|disk), id and reason
# (STATE_CORRUPT|DISK_CORRUPT), the message says what failed; the call that met it
# fails with that reason.
CORRUPTION = "corruption"
# A provider's circuit breaker changed state; sandbox_id is empty.
CIRCUIT = "provider.circuit"
