"""What a pool is: its spec, its members and counters, and the --warm-pool syntax."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field

from computesdkd.domain.errors import InvalidArgument
from computesdkd.domain.model import Resources, SandboxSpec

POOL_LABEL = "computesdk.dev/pool"
ACQUIRED = "pool.acquired"
RELEASED = "pool.released"
MAX_POOL_SIZE = 1000
DEFAULT_WAIT_MS = 30_000
# Creates a pool runs at once while filling; runc creates contend for 2 cores.
FILL_CONCURRENCY = 2
FILL_RETRY_S = 2.0
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Demand (demand.py): how long a burst keeps its pool grown (COMPUTESDK_POOL_DEMAND_WINDOW_S
# tunes it), the bucket requests are counted in, how often targets are looked at, the
# share of host memory growth leaves free, and what an idle member is counted at.
DEMAND_WINDOW_S = float(os.environ.get("COMPUTESDK_POOL_DEMAND_WINDOW_S", "") or 120.0)
DEMAND_BUCKET_S = 2.0
# A burst in progress: this many requests found the pool empty in the last SETTLE_S. The
# cold creates serving them are running, and a refill now would only take their CPU.
BURST_MISSES = 4
SETTLE_S = 2.0
TEND_S = 1.0
MEMORY_FLOOR = 0.2
MEMBER_BYTES = 32 << 20


@dataclass(frozen=True)
class PoolSpec:
    name: str
    provider: str
    template: str
    resources: Resources
    env: dict[str, str]
    min: int
    max: int
    # The pool's tenant, and its members'; empty for the admin's pools, whose fresh
    # members any tenant's create may draw (a never-used sandbox holds nothing).
    tenant: str = ""

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
class Demand:
    """Requests (creates that tried the pool, acquires) per bucket, oldest first."""

    # (bucket start, requests in it), oldest first; when requests found no idle member.
    buckets: deque[tuple[float, int]] = field(default_factory=deque)
    misses: deque[float] = field(default_factory=deque)

    def miss(self) -> None:
        self.misses.append(time.monotonic())
        while len(self.misses) > BURST_MISSES:
            self.misses.popleft()

    def burst_left(self) -> float:
        """Seconds until the burst in progress, if any, counts as over."""
        if len(self.misses) < BURST_MISSES:
            return 0.0
        return max(0.0, self.misses[0] + SETTLE_S - time.monotonic())

    def record(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        start = now - now % DEMAND_BUCKET_S
        if self.buckets and self.buckets[-1][0] == start:
            self.buckets[-1] = (start, self.buckets[-1][1] + 1)
        else:
            self.buckets.append((start, 1))

    def peak(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        while self.buckets and self.buckets[0][0] + DEMAND_BUCKET_S < now - DEMAND_WINDOW_S:
            self.buckets.popleft()
        return max((n for _, n in self.buckets), default=0)


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
    # Recent requests, which size the pool between min and max (demand.py).
    demand: Demand = field(default_factory=Demand)

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


def member_spec(pool: Pool) -> SandboxSpec:
    s = pool.spec
    return SandboxSpec(
        provider=s.provider,
        template=s.template,
        metadata={POOL_LABEL: s.name},
        timeout_ms=0,
        keep_alive=True,  # the pool, not the sweeper, decides when idle ones go
        resources=s.resources,
        env=dict(s.env),
        tenant=s.tenant,
    )
