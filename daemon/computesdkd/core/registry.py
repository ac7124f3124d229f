"""The sandboxes the daemon keeps: an index in memory, written through to the store,
with a lock per sandbox and hooks for the features that follow sandboxes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterable

from computesdkd.core.guard import Providers
from computesdkd.domain.errors import FailedPrecondition, InvalidArgument, sandbox_not_found
from computesdkd.domain.model import Sandbox, State
from computesdkd.providers.base import Provider
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

MAX_PAGE = 1000


class Registry:
    def __init__(self, store: Store, providers: Providers) -> None:
        self._store = store
        self._providers = providers
        self._sandboxes: dict[str, Sandbox] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Called with the id of every sandbox that goes away (groups, networks, pools...).
        self.on_destroyed: list[Callable[[str], object]] = []
        # Called when what watches a sandbox must stop: reset, death, destroy.
        self.on_forget: list[Callable[[str], object]] = []
        # Sandboxes a listing leaves out (a pool's idle members).
        self.hidden: list[Callable[[str], bool]] = []

    # ------------------------------------------------------------ the index

    def add(self, sb: Sandbox) -> None:
        self._sandboxes[sb.id] = sb
        self._store.sandboxes.put(sb)

    def save(self, sb: Sandbox) -> None:
        self._store.sandboxes.put(sb)

    def remove(self, sandbox_id: str) -> None:
        self._sandboxes.pop(sandbox_id, None)
        self._store.sandboxes.delete(sandbox_id)

    def find(self, sandbox_id: str) -> Sandbox | None:
        return self._sandboxes.get(sandbox_id)

    def get(self, sandbox_id: str) -> Sandbox:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            raise sandbox_not_found(sandbox_id)
        return sb

    def running(self, sandbox_id: str) -> tuple[Sandbox, Provider]:
        """The sandbox and its provider; refuses one that is not running."""
        sb = self.get(sandbox_id)
        if sb.state != State.RUNNING:
            raise FailedPrecondition(
                f"sandbox {sandbox_id!r} is {sb.state.name.lower()}",
                reason="SANDBOX_NOT_RUNNING",
                sandbox_id=sandbox_id,
            )
        return sb, self._providers.of(sb)

    def all(self) -> Iterable[Sandbox]:
        return list(self._sandboxes.values())

    def ids(self) -> set[str]:
        return set(self._sandboxes)

    def counts(self) -> dict[tuple[str, str, str], int]:
        """(state, provider, tenant) → sandboxes, for the metrics endpoint (the admin's:
        tenant "" is the admin's own)."""
        counts: dict[tuple[str, str, str], int] = {}
        for sb in self._sandboxes.values():
            key = (sb.state.name.lower(), sb.spec.provider, sb.spec.tenant)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        """Serialises the calls that change a sandbox's whole state."""
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # ------------------------------------------------------------ hooks

    def forget_watchers(self, sandbox_id: str) -> None:
        for hook in self.on_forget:
            hook(sandbox_id)

    def notify_destroyed(self, sandbox_id: str) -> None:
        self._locks.pop(sandbox_id, None)
        for hook in self.on_destroyed:
            try:
                hook(sandbox_id)
            except Exception as exc:  # one listener's bug must not fail a destroy
                log.error("destroy hook failed", sandbox_id=sandbox_id, error=repr(exc))

    # ------------------------------------------------------------ listing

    def list(
        self,
        page_size: int,
        page_token: str,
        metadata: dict[str, str],
        states: list[State],
        provider: str,
        tenant: str | None = None,
    ) -> tuple[list[Sandbox], str]:
        """A page of sandboxes; tenant, when given, keeps only that tenant's (before
        paging, so that a page token never points into another's)."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", reason="INVALID_PAGE_SIZE")
        size = min(page_size or 100, MAX_PAGE)
        after = _decode_token(page_token)
        items = sorted(self._sandboxes.values(), key=lambda s: (s.created_at, s.id))
        out: list[Sandbox] = []
        for sb in items:
            if after is not None and (sb.created_at, sb.id) <= after:
                continue
            if states and sb.state not in states:
                continue
            if provider and sb.spec.provider != provider:
                continue
            if tenant is not None and sb.spec.tenant != tenant:
                continue
            if any(sb.spec.metadata.get(k) != v for k, v in metadata.items()):
                continue
            if any(hide(sb.id) for hide in self.hidden):
                continue
            if len(out) == size:
                last = out[-1]
                return out, _encode_token(last.created_at, last.id)
            out.append(sb)
        return out, ""


def _encode_token(created_at: float, sandbox_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, sandbox_id]).encode()).decode()


def _decode_token(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        t = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(t[0]), str(t[1])
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise InvalidArgument("page_token is not valid", reason="INVALID_PAGE_TOKEN") from exc
