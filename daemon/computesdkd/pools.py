"""Warm pools: sandboxes created ahead of need, handed out in a dict pop.

A pool is keyed by provider, template, resources and env, keeps `min` idle
sandboxes ready and never holds more than `max` (idle plus leased). Every
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
import re
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from structlog.contextvars import bound_contextvars

from computesdkd.domain.errors import (
    AlreadyExists,
    ComputeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from computesdkd.domain.model import Resources, Sandbox, SandboxSpec
from computesdkd.support import logs

if TYPE_CHECKING:
    from computesdkd.manager import Manager

log = logs.get(__name__)

POOL_LABEL = "computesdk.dev/pool"
ACQUIRED = "pool.acquired"
RELEASED = "pool.released"
MAX_POOL_SIZE = 1000
DEFAULT_WAIT_MS = 30_000
# Creates a pool runs at once while filling; runc creates contend for 2 cores.
FILL_CONCURRENCY = 2
FILL_RETRY_S = 2.0
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class PoolSpec:
    name: str
    provider: str
    template: str
    resources: Resources
    env: dict[str, str]
    min: int
    max: int

    def key(self) -> tuple[object, ...]:
        return (self.provider, self.template, self.resources, tuple(sorted(self.env.items())))


@dataclass
class PoolStats:
    acquired_total: int = 0
    hits_total: int = 0
    misses_total: int = 0
    released_total: int = 0
    created_total: int = 0
    discarded_total: int = 0
    create_draws_total: int = 0


@dataclass
class Pool:
    spec: PoolSpec
    # (sandbox id, fresh): fresh means never used, or hard reset since.
    idle: deque[tuple[str, bool]] = field(default_factory=deque)
    leased: set[str] = field(default_factory=set)
    creating: int = 0
    draining: bool = False
    stats: PoolStats = field(default_factory=PoolStats)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    filler: asyncio.Task[None] | None = None

    def size(self) -> int:
        return len(self.idle) + len(self.leased) + self.creating


def parse_warm_pool(text: str) -> PoolSpec:
    """NAME=PROVIDER/TEMPLATE:MIN:MAX, as computesdkd --warm-pool takes it."""
    try:
        name, rest = text.split("=", 1)
        where, lo, hi = rest.rsplit(":", 2)
        provider, _, template = where.partition("/")
        return PoolSpec(name, provider, template, Resources(), {}, int(lo), int(hi))
    except ValueError as exc:
        raise InvalidArgument(
            f"--warm-pool {text!r}: want NAME=PROVIDER/TEMPLATE:MIN:MAX", reason="INVALID_POOL"
        ) from exc


class Pools:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self._pools: dict[str, Pool] = {}
        self._owner: dict[str, str] = {}  # sandbox id -> pool name, idle or leased

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Restores pool specs and leases, and starts filling."""
        for _, name, value in self.manager.store.settings(""):
            if _ != "pool":
                continue
            try:
                spec = PoolSpec(
                    **{**value["spec"], "resources": Resources(**value["spec"]["resources"])}
                )
            except (TypeError, KeyError) as exc:
                log.warning("could not restore a pool", pool=name, error=str(exc))
                continue
            pool = self._pools[name] = Pool(spec)
            for sid in value.get("leased", []):
                if sid in self.manager.sandboxes_by_id():
                    pool.leased.add(sid)
                    self._owner[sid] = name
            self._kick(pool)

    async def shutdown(self) -> None:
        """Drains idle sandboxes; leased ones stay with their users."""
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
            *(self.manager.destroy(sid, reason="pool-drain") for sid in idle),
            return_exceptions=True,
        )

    def _save(self, pool: Pool) -> None:
        value = {"spec": asdict(pool.spec), "leased": sorted(pool.leased)}
        self.manager.store.put_setting("", "pool", pool.spec.name, value)

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
            raise AlreadyExists(f"pool {spec.name!r} exists", reason="POOL_EXISTS", pool=spec.name)
        # The provider and template are checked now, not at the first fill.
        provider, template = self.manager.pool_defaults(spec.provider, spec.template)
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
            raise NotFound(f"pool {name!r} not found", reason="POOL_NOT_FOUND", pool=name)
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
            *(self.manager.destroy(sid, reason="pool-drain") for sid in idle),
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
        self.manager.store.delete_setting("", "pool", pool.spec.name)

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
        if pool.draining or not self.manager.accepting:
            return
        if pool.filler is None or pool.filler.done():
            pool.filler = asyncio.create_task(self._fill(pool))

    async def _fill(self, pool: Pool) -> None:
        """Creates sandboxes until min are idle (or creating), never past max."""
        while not pool.draining:
            want = min(pool.spec.min - len(pool.idle) - pool.creating,
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
            sb = await self.manager.create_pooled(self._member_spec(pool))
        except ComputeError as exc:
            log.warning("pool could not create a sandbox", pool=pool.spec.name, error=exc.message)
            raise
        finally:
            pool.creating -= 1
        pool.stats.created_total += 1
        self._owner[sb.id] = pool.spec.name
        if pool.draining:
            self._owner.pop(sb.id, None)
            await self.manager.destroy(sb.id, reason="pool-drain")
            return sb.id
        pool.idle.append((sb.id, True))
        async with pool.changed:
            pool.changed.notify_all()
        return sb.id

    def _member_spec(self, pool: Pool) -> SandboxSpec:
        s = pool.spec
        return SandboxSpec(
            provider=s.provider,
            template=s.template,
            metadata={POOL_LABEL: s.name},
            timeout_ms=0,
            keep_alive=True,  # the pool, not the sweeper, decides when idle ones go
            resources=s.resources,
            env=dict(s.env),
        )

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
            if await self.manager.sandbox_healthy(sid):
                pool.leased.add(sid)
                self._save(pool)
                self._kick(pool)
                return sid
            pool.stats.discarded_total += 1
            self._owner.pop(sid, None)
            log.warning("pool discarded an unhealthy sandbox", pool=pool.spec.name, sandbox_id=sid)
            self.manager.spawn(self.manager.destroy(sid, reason="pool-unhealthy"))

    async def acquire(self, name: str, metadata: dict[str, str], wait_ms: int) -> Sandbox:
        pool = self.get(name)
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
            return self.manager.lease_pooled(sid, {**metadata, POOL_LABEL: name}, None, ACQUIRED)

    def _kick_one(self, pool: Pool) -> None:
        """An acquire found nothing idle: create one beyond min, within max."""
        if pool.creating == 0 and pool.size() < pool.spec.max:
            self.manager.spawn(self._create_member_quietly(pool))

    async def _create_member_quietly(self, pool: Pool) -> None:
        with contextlib.suppress(ComputeError):
            await self._create_member(pool)

    async def draw(self, spec: SandboxSpec) -> Sandbox | None:
        """For create: a fresh member of a pool matching spec, if one is idle now."""
        key = (spec.provider, spec.template, spec.resources, tuple(sorted(spec.env.items())))
        for pool in self._pools.values():
            if pool.draining or pool.spec.key() != key:
                continue
            sid = await self._take(pool, fresh_only=True)
            if sid is None:
                continue
            # Handed to create for good: it leaves the pool, which makes a new one.
            pool.leased.discard(sid)
            self._owner.pop(sid, None)
            self._save(pool)
            pool.stats.create_draws_total += 1
            with bound_contextvars(sandbox_id=sid):
                return self.manager.lease_pooled(sid, dict(spec.metadata), spec, ACQUIRED)
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
                await self.manager.reset(sandbox_id, hard)
            except ComputeError as exc:
                log.warning("reset on release failed", sandbox_id=sandbox_id, error=exc.message)
                keep = False
        if not keep:
            self._owner.pop(sandbox_id, None)
            self._save(pool)
            await self.manager.destroy(sandbox_id, reason="pool-release")
            if pool.draining and not pool.leased:
                self._forget(pool)
            return False
        self.manager.lease_pooled(sandbox_id, {POOL_LABEL: pool.spec.name}, None, RELEASED,
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
