"""What a pool is: its spec, its members and counters, and the --warm-pool syntax."""

from __future__ import annotations

import asyncio
import re
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
