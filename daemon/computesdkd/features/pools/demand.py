"""Pool sizes that follow demand: a pool keeps as many idle as it was asked for lately.

Each create that tried a pool, and each acquire, counts as one request in a
DEMAND_BUCKET_S bucket. A pool's target is the busiest bucket of the last
DEMAND_WINDOW_S, never under min or over max, and it grows past min only while
the host keeps MEMORY_FLOOR of its memory free (an idle sandbox is counted at
MEMBER_BYTES). A tenant's pool is bounded by the tenant's quota too: a fill past
it fails in placement and backs off. When a window passes with less demand the
target falls and the surplus idle members are destroyed, oldest first. While a
burst is on (BURST_MISSES requests found the pool empty in the last SETTLE_S) the
refill waits: the burst's cold creates are running and it would slow them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from computesdkd.domain.errors import ComputeError
from computesdkd.features.pools.model import (
    MEMBER_BYTES,
    MEMORY_FLOOR,
    TEND_S,
    Demand,
    Pool,
)
from computesdkd.support import logs

log = logs.get(__name__)

MAX_SETTLES = 15


def memory_room() -> int:
    """Idle sandboxes the host can take while keeping MEMORY_FLOOR of its memory free."""
    info: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    total, avail = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    if not total:
        return 0  # unknown: no growth past min
    return max(0, int((avail - total * MEMORY_FLOOR) // MEMBER_BYTES))


def target(lo: int, hi: int, demand: Demand, idle_now: int, room: int) -> int:
    """min <= target <= max; past min, at most what is idle plus the memory room."""
    want = min(hi, max(lo, demand.peak()))
    if want > lo:
        want = min(want, max(lo, idle_now + room))
    return want


def pool_target(pool: Pool, room: int | None = None) -> int:
    room = memory_room() if room is None else room
    return target(pool.spec.min, pool.spec.max, pool.demand, len(pool.idle), room)


async def settle(pool: Pool) -> None:
    """Holds a refill back while a burst's cold creates run: it would serve none of them.
    Never for long: under steady overload the pool fills again after MAX_SETTLES; and
    never below min, which no one's misses may hold a pool under."""
    for _ in range(MAX_SETTLES):
        left = pool.demand.burst_left()
        if left <= 0 or pool.draining or len(pool.idle) + pool.creating < pool.spec.min:
            return
        await asyncio.sleep(left)


class Tender:
    """Every TEND_S: fills pools below their target, trims idle members above it."""

    def __init__(
        self,
        pools: Callable[[], Iterable[Pool]],
        kick: Callable[[Pool], None],
        discard: Callable[[str], Awaitable[None]],
    ) -> None:
        self._pools = pools
        self._kick = kick
        self._discard = discard
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TEND_S)
            await self.tend()

    async def tend(self) -> None:
        room = memory_room()
        for pool in [p for p in self._pools() if not p.draining]:
            want = pool_target(pool, room)
            if len(pool.idle) + pool.creating < want:
                self._kick(pool)
            while len(pool.idle) > want:
                sid, _ = pool.idle.popleft()
                log.info("pool shrinks", pool=pool.spec.name, sandbox_id=sid, target=want)
                try:
                    await self._discard(sid)
                except ComputeError as exc:  # gone already, or the provider failed: not the pool's
                    log.warning("pool could not shrink", sandbox_id=sid, error=exc.message)
