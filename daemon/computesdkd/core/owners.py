"""Which tenant each sandbox and each named thing (pool, volume, ...) belongs to.

The admin (the Unix socket) owns what has no row. Rows are kept in memory and
written through, so a check on every call costs a dict lookup. A sandbox's row
outlives it: its stored events stay its tenant's."""

from __future__ import annotations

from computesdkd.store import Store

SANDBOX = "sandbox"


class Owners:
    def __init__(self, store: Store) -> None:
        self._store = store
        # A gone sandbox's row is kept while its events are: they are its tenant's.
        store.owners.prune_sandboxes()
        self._rows: dict[tuple[str, str], str] = {
            (kind, key): tenant for kind, key, tenant in store.owners.all()
        }

    def of(self, kind: str, key: str) -> str | None:
        """The tenant, or None when the admin owns it (or it does not exist)."""
        return self._rows.get((kind, key))

    def claim(self, kind: str, key: str, tenant: str) -> None:
        if not tenant:
            self.release(kind, key)
            return
        if self._rows.get((kind, key)) != tenant:
            self._rows[(kind, key)] = tenant
            self._store.owners.put(kind, key, tenant)

    def release(self, kind: str, key: str) -> None:
        if self._rows.pop((kind, key), None) is not None:
            self._store.owners.delete(kind, key)
