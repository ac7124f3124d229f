"""Warm pools: sandboxes created ahead of need, handed out in a dict pop.

A pool is keyed by provider, template, resources and env, keeps `min` idle
(more after a burst of demand: demand.py) and never holds more than `max`. Every
sandbox is checked with the provider before it is handed out, and an unhealthy
one is destroyed instead. `create` may draw from a matching pool too, but only
a sandbox that was never used or was hard reset: soft-reset sandboxes go back
to `acquire` callers only.

Pool specs and leases are kept in SQLite. Idle sandboxes are destroyed when the
daemon stops, and made again when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, replace
from typing import Any

from structlog.contextvars import bound_contextvars

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers, Tasks
from computesdkd.core.lifecycle import Lifecycle
from computesdkd.core.placement import Placement
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    already_exists,
    not_found,
)
from computesdkd.domain.model import Resources, Sandbox, SandboxSpec, State
from computesdkd.features.pools.demand import Tender, pool_target, settle
from computesdkd.features.pools.model import (
    ACQUIRED,
    DEFAULT_WAIT_MS,
    FILL_CONCURRENCY,
    FILL_RETRY_S,
    MAX_POOL_SIZE,
    NAME,
    POOL_LABEL,
    RELEASED,
    Pool,
    PoolSpec,
    member_spec,
    parse_warm_pool,
)
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)


class Pools:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        placement: Placement,
        lifecycle: Lifecycle,
        store: Store,
        bus: EventBus,
        tasks: Tasks,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._placement = placement
        self._lifecycle = lifecycle
        self._store = store
        self._bus = bus
        self._tasks = tasks
        self._pools: dict[str, Pool] = {}
        self._owner: dict[str, str] = {}  # sandbox id -> pool name, idle or leased
        registry.on_destroyed.append(self.forget_sandbox)
        registry.hidden.append(self.is_idle)
        placement.sources.append(self.draw)
        self._tender = Tender(self._pools.values, self._kick, self._shrink)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Restores pool specs and leases, and starts filling."""
        for name, value in self._store.records("pools").all():
            try:
                spec = PoolSpec(
                    **{**value["spec"], "resources": Resources(**value["spec"]["resources"])}
                )
            except (TypeError, KeyError) as exc:
                log.warning("could not restore a pool", pool=name, error=str(exc))
                continue
            pool = self._pools[name] = Pool(spec)
            for sid in value.get("leased", []):
                if sid in self._registry.ids():
                    pool.leased.add(sid)
                    self._owner[sid] = name
            self._kick(pool)
        self._tender.start()

    async def shutdown(self) -> None:
        """Drains idle sandboxes; leased ones stay with their users."""
        await self._tender.stop()
        fillers = [p.filler for p in self._pools.values() if p.filler and not p.filler.done()]
        for task in fillers:
            task.cancel()
        # A create under way finishes its own cleanup before the drain goes on.
        await asyncio.gather(*fillers, return_exceptions=True)
        idle = [sid for pool in self._pools.values() for sid, _ in pool.idle]
        for pool in self._pools.values():
            pool.idle.clear()
        for sid in idle:
            self._owner.pop(sid, None)
        await asyncio.gather(
            *(self._lifecycle.destroy(sid, reason="pool-drain") for sid in idle),
            return_exceptions=True,
        )

    def _save(self, pool: Pool) -> None:
        value = {"spec": asdict(pool.spec), "leased": sorted(pool.leased)}
        self._store.records("pools").put(pool.spec.name, value)

    def _defaults(self, provider: str, template: str) -> tuple[str, str]:
        """Checks a pool's provider and template up front; fills in the defaults."""
        name = provider or self._providers.default
        p = self._providers.get(name)
        template = template or "base"
        known = p.templates()
        if known and template not in known:
            raise NotFound(
                f"template {template!r} is not known to provider {name!r}",
                reason="TEMPLATE_NOT_FOUND",
                template=template,
                provider=name,
            )
        return name, template

    async def _healthy(self, sandbox_id: str) -> bool:
        sb = self._registry.find(sandbox_id)
        if sb is None or sb.state != State.RUNNING:
            return False
        try:
            return await self._providers.of(sb).healthy(sb)
        except ComputeError:
            return False

    def _lease(
        self,
        sandbox_id: str,
        metadata: dict[str, str],
        spec: SandboxSpec | None,
        event: str,
        idle: bool = False,
    ) -> Sandbox:
        """Relabels a pooled sandbox for its next holder (or for the pool, when idle)."""
        sb = self._registry.get(sandbox_id)
        if spec is not None:
            # Drawn by create: the pool matched the caller's provider, template,
            # resources and env, so the sandbox is now the caller's spec whole (its
            # labels, lifetime, request id, pool policy and fallbacks), and a retried
            # create with the same request_id finds the same spec.
            sb.spec = replace(spec, metadata=metadata)
        else:
            sb.spec = replace(sb.spec, metadata=metadata, keep_alive=idle or sb.spec.keep_alive)
        now = time.time()
        if not idle:
            # To its holder the sandbox is new: its create time and uptime start at
            # the hand-out, not when the pool warmed it.
            sb.created_at = sb.started_at = now
        sb.expires_at = now + sb.spec.timeout_ms / 1000
        self._registry.save(sb)
        self._bus.emit(sandbox_id, event, pool=metadata.get(POOL_LABEL, ""))
        return sb

    def template_users(self, provider: str, template: str) -> list[str]:
        return [
            f"pool {pool.spec.name}"
            for pool in self._pools.values()
            if pool.spec.provider == provider and pool.spec.template == template
        ]

    # ------------------------------------------------------------ pools

    def create_pool(self, spec: PoolSpec) -> Pool:
        if not NAME.match(spec.name):
            raise InvalidArgument(
                "pool names are 1-63 of a-z, 0-9, '.', '_', '-'", reason="INVALID_NAME"
            )
        if spec.max < 1 or spec.min > spec.max or spec.max > MAX_POOL_SIZE:
            raise InvalidArgument(
                f"need 0 <= min <= max, 1 <= max <= {MAX_POOL_SIZE}", reason="INVALID_POOL_SIZE"
            )
        if spec.name in self._pools:
            raise already_exists("pool", spec.name)
        # The provider and template are checked now, not at the first fill.
        provider, template = self._defaults(spec.provider, spec.template)
        spec = replace(spec, provider=provider, template=template)
        pool = self._pools[spec.name] = Pool(spec)
        self._save(pool)
        self._kick(pool)
        log.info("pool created", pool=spec.name, min=spec.min, max=spec.max)
        return pool

    def ensure(self, spec: PoolSpec) -> Pool:
        """Creates the pool unless one of that name exists (restored from the store)."""
        return self._pools.get(spec.name) or self.create_pool(spec)

    def get(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise not_found("pool", name)
        return pool

    def list(self) -> list[Pool]:
        return [self._pools[n] for n in sorted(self._pools)]

    async def delete_pool(self, name: str) -> None:
        pool = self.get(name)
        pool.draining = True
        if pool.filler:
            pool.filler.cancel()
        idle = [sid for sid, _ in pool.idle]
        pool.idle.clear()
        for sid in idle:
            self._owner.pop(sid, None)
        await asyncio.gather(
            *(self._lifecycle.destroy(sid, reason="pool-drain") for sid in idle),
            return_exceptions=True,
        )
        async with pool.changed:
            pool.changed.notify_all()
        if not pool.leased:
            self._forget(pool)
        else:
            self._save(pool)

    def _forget(self, pool: Pool) -> None:
        self._pools.pop(pool.spec.name, None)
        self._store.records("pools").delete(pool.spec.name)

    def is_idle(self, sandbox_id: str) -> bool:
        """Idle pool members are the daemon's, not a user's: listings leave them out."""
        name = self._owner.get(sandbox_id)
        return name is not None and sandbox_id not in self._pools[name].leased

    def forget_sandbox(self, sandbox_id: str) -> None:
        """Called when a sandbox is destroyed, by anyone."""
        name = self._owner.pop(sandbox_id, None)
        pool = self._pools.get(name or "")
        if pool is None:
            return
        pool.leased.discard(sandbox_id)
        with contextlib.suppress(ValueError):
            pool.idle.remove((sandbox_id, True))
        with contextlib.suppress(ValueError):
            pool.idle.remove((sandbox_id, False))
        if pool.draining and not pool.leased:
            self._forget(pool)
            return
        self._save(pool)
        self._kick(pool)

    # ------------------------------------------------------------ filling

    def _kick(self, pool: Pool) -> None:
        if pool.draining or not self._placement.accepting:
            return
        if pool.filler is None or pool.filler.done():
            pool.filler = asyncio.create_task(self._fill(pool))

    async def _fill(self, pool: Pool) -> None:
        """Creates sandboxes until target() (demand.py) are idle or creating, never past max."""
        await settle(pool)  # once per fill: a burst's misses cannot stall it batch by batch
        while not pool.draining:
            want = min(pool_target(pool) - len(pool.idle) - pool.creating,
                       pool.spec.max - pool.size())  # fmt: skip
            if want <= 0:
                return
            batch = min(want, FILL_CONCURRENCY)
            results = await asyncio.gather(
                *(self._create_member(pool) for _ in range(batch)), return_exceptions=True
            )
            if any(isinstance(r, BaseException) for r in results):
                await asyncio.sleep(FILL_RETRY_S)  # a provider that fails is not hammered

    async def _create_member(self, pool: Pool) -> str:
        pool.creating += 1
        try:
            sb = await self._placement.create_direct(member_spec(pool))
        except ComputeError as exc:
            log.warning("pool could not create a sandbox", pool=pool.spec.name, error=exc.message)
            raise
        finally:
            pool.creating -= 1
        pool.stats.created_total += 1
        self._owner[sb.id] = pool.spec.name
        if pool.draining:
            self._owner.pop(sb.id, None)
            await self._lifecycle.destroy(sb.id, reason="pool-drain")
            return sb.id
        pool.idle.append((sb.id, True))
        async with pool.changed:
            pool.changed.notify_all()
        return sb.id

    # ------------------------------------------------------------ handing out

    async def _take(self, pool: Pool, fresh_only: bool) -> str | None:
        """Pops a healthy idle member; unhealthy ones are destroyed on the way."""
        while True:
            pick = None
            # Acquire prefers soft-reset members, leaving never-used ones for create.
            order = list(pool.idle) if fresh_only else sorted(pool.idle, key=lambda m: m[1])
            for member in order:
                if member[1] or not fresh_only:
                    pick = member
                    break
            if pick is None:
                return None
            pool.idle.remove(pick)
            sid = pick[0]
            if await self._healthy(sid):
                pool.leased.add(sid)
                self._save(pool)
                self._kick(pool)
                return sid
            pool.stats.discarded_total += 1
            self._owner.pop(sid, None)
            log.warning("pool discarded an unhealthy sandbox", pool=pool.spec.name, sandbox_id=sid)
            self._tasks.spawn(self._lifecycle.destroy(sid, reason="pool-unhealthy"))

    async def acquire(self, name: str, metadata: dict[str, str], wait_ms: int) -> Sandbox:
        pool = self.get(name)
        pool.demand.record()
        deadline = time.monotonic() + (wait_ms or DEFAULT_WAIT_MS) / 1000
        missed = False
        while True:
            if pool.draining:
                raise FailedPrecondition(
                    f"pool {name!r} is being deleted", reason="POOL_DRAINING", pool=name
                )
            sid = await self._take(pool, fresh_only=False)
            if sid is not None:
                break
            missed = True
            pool.demand.miss()
            if pool.size() < pool.spec.max:
                self._kick_one(pool)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResourceExhausted(
                    f"pool {name!r} has no sandbox free (max {pool.spec.max})",
                    reason="POOL_EXHAUSTED",
                    pool=name,
                )
            async with pool.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pool.changed.wait(), remaining)
        pool.stats.acquired_total += 1
        if missed:
            pool.stats.misses_total += 1
        else:
            pool.stats.hits_total += 1
        with bound_contextvars(sandbox_id=sid):
            return self._lease(sid, {**metadata, POOL_LABEL: name}, None, ACQUIRED)

    async def _shrink(self, sandbox_id: str) -> None:  # an idle member past a fallen target
        self._owner.pop(sandbox_id, None)
        await self._lifecycle.destroy(sandbox_id, reason="pool-shrink")

    def _kick_one(self, pool: Pool) -> None:
        """An acquire found nothing idle: create one beyond min, within max."""
        if pool.creating == 0 and pool.size() < pool.spec.max:
            self._tasks.spawn(self._create_member_quietly(pool))

    async def _create_member_quietly(self, pool: Pool) -> None:
        with contextlib.suppress(ComputeError):
            await self._create_member(pool)

    async def draw(self, spec: SandboxSpec) -> Sandbox | None:
        """For create: a fresh member of a pool matching spec, if one is idle now."""
        key = (spec.provider, spec.template, spec.resources, tuple(sorted(spec.env.items())))
        for pool in self._pools.values():
            if pool.draining or pool.spec.key() != key:
                continue
            if pool.spec.tenant not in ("", spec.tenant):
                continue  # another tenant's pool: its members may carry its env
            pool.demand.record()
            sid = await self._take(pool, fresh_only=True)
            if sid is None:
                pool.demand.miss()
                continue
            # Handed to create for good: it leaves the pool, which makes a new one.
            pool.leased.discard(sid)
            self._owner.pop(sid, None)
            self._save(pool)
            pool.stats.create_draws_total += 1
            with bound_contextvars(sandbox_id=sid):
                return self._lease(sid, dict(spec.metadata), spec, ACQUIRED)
        return None

    async def release(self, sandbox_id: str, hard: bool) -> bool:
        name = self._owner.get(sandbox_id)
        pool = self._pools.get(name or "")
        if pool is None or sandbox_id not in pool.leased:
            raise FailedPrecondition(
                f"sandbox {sandbox_id!r} is not leased from a pool",
                reason="NOT_LEASED",
                sandbox_id=sandbox_id,
            )
        pool.leased.discard(sandbox_id)
        pool.stats.released_total += 1
        keep = (
            not pool.draining and len(pool.idle) + len(pool.leased) + pool.creating < pool.spec.max
        )
        if keep:
            try:
                await self._lifecycle.reset(sandbox_id, hard)
            except ComputeError as exc:
                log.warning("reset on release failed", sandbox_id=sandbox_id, error=exc.message)
                keep = False
        if not keep:
            self._owner.pop(sandbox_id, None)
            self._save(pool)
            await self._lifecycle.destroy(sandbox_id, reason="pool-release")
            if pool.draining and not pool.leased:
                self._forget(pool)
            return False
        self._lease(sandbox_id, {POOL_LABEL: pool.spec.name}, None, RELEASED,
                                  idle=True)  # fmt: skip
        pool.idle.append((sandbox_id, hard))
        self._save(pool)
        async with pool.changed:
            pool.changed.notify_all()
        return True

    def stats(self, pool: Pool) -> dict[str, Any]:
        return {
            "idle": len(pool.idle),
            "leased": len(pool.leased),
            "creating": pool.creating,
            **asdict(pool.stats),
        }


__all__ = ["POOL_LABEL", "Pool", "PoolSpec", "Pools", "parse_warm_pool"]
