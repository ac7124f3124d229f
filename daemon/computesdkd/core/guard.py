"""The providers by name, each call to one under its circuit breaker, and the
daemon's background tasks."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

from computesdkd.core.breaker import Circuit, CircuitBreaker
from computesdkd.core.bus import EventBus
from computesdkd.domain import events
from computesdkd.domain.errors import NotFound
from computesdkd.domain.model import Sandbox
from computesdkd.providers.base import Provider, ProviderContext
from computesdkd.support import logs

log = logs.get(__name__)

T = TypeVar("T")
PROVIDER_START_TIMEOUT_S = 10.0
RECONCILE_TIMEOUT_S = 120.0


class Providers:
    """Every registered provider, the default one, and a breaker per provider."""

    def __init__(self, providers: dict[str, Provider], default: str, bus: EventBus) -> None:
        self.by_name = providers
        self.default = default
        self._bus = bus
        self.breakers = {name: CircuitBreaker(name, self._circuit_changed) for name in providers}

    def get(self, name: str) -> Provider:
        p = self.by_name.get(name)
        if p is None:
            raise NotFound(
                f"provider {name!r} is not registered (known: {', '.join(sorted(self.by_name))})",
                reason="PROVIDER_NOT_FOUND",
                provider=name,
            )
        return p

    def of(self, sb: Sandbox) -> Provider:
        return self.by_name[sb.spec.provider]

    async def guarded(self, provider: Provider, call: Awaitable[T]) -> T:
        """Runs a provider call under its circuit breaker."""
        breaker = self.breakers[provider.name]
        try:
            breaker.before_call()
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()
            raise
        try:
            result = await call
        except BaseException as exc:
            breaker.record(exc)
            raise
        breaker.record(None)
        return result

    async def start(self, ctx: ProviderContext) -> None:
        """Providers start side by side, each bounded: a dead one cannot hold up the rest."""
        results = await asyncio.gather(
            *(asyncio.wait_for(p.start(ctx), PROVIDER_START_TIMEOUT_S) for p in self),
            return_exceptions=True,
        )
        for p, result in zip(self, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("provider failed to start", provider=p.name, error=repr(result))

    async def reconcile(self, live: set[tuple[str, str]]) -> None:
        """Each provider frees what no adopted record (provider, id) owns."""
        for p in self:
            ids = {sid for name, sid in live if name == p.name}
            try:
                await asyncio.wait_for(p.reconcile(ids), RECONCILE_TIMEOUT_S)
            except Exception as exc:
                log.warning("provider could not reconcile", provider=p.name, error=repr(exc))

    async def close(self) -> None:
        for p in self:
            await p.close()

    def __iter__(self) -> Iterator[Provider]:
        return iter(self.by_name.values())

    def _circuit_changed(self, provider: str, state: Circuit, why: str) -> None:
        log.warning("provider circuit changed", provider=provider, state=state.name, why=why)
        self._bus.emit("", events.CIRCUIT, why, provider=provider, state=state.name.lower())


class Tasks:
    """Background work the daemon owns (watchers, reaps, pool fills); cancelled at
    shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
