"""A hostile tenant's burst (features/pools/demand.py): it counts only toward pools its
creates may draw from (its own and the admin's), so it cannot grow another tenant's
pool, and the admin's pools it can grow stay within their max."""

from __future__ import annotations

from computesdkd.domain.model import Resources
from computesdkd.features.pools import PoolSpec
from computesdkd.features.pools.demand import pool_target
from conftest import Harness, spec


async def test_a_burst_grows_only_the_pools_it_may_draw_from_and_never_past_max(
    h: Harness,
) -> None:
    pools = h.app.pools
    theirs = pools.create_pool(PoolSpec("a-pool", "fake", "base", Resources(), {}, 1, 4, "a"))
    shared = pools.create_pool(PoolSpec("shared", "fake", "base", Resources(), {}, 1, 3))
    for _ in range(50):
        sb = await pools.draw(spec(tenant="b"))
        if sb is not None:
            await h.app.lifecycle.destroy(sb.id, reason="test")
    assert theirs.demand.peak() == 0
    assert pool_target(theirs, room=1000) == 1
    assert shared.demand.peak() == 50
    assert pool_target(shared, room=1000) == 3


async def test_a_burst_of_misses_never_holds_a_pool_below_its_min(h: Harness) -> None:
    # ATTACK: a tenant's creates that match a shared pool, a few every second, keep
    # a burst on: the refill waits for bursts, but never while under min.
    import asyncio

    from computesdkd.features.pools.demand import settle

    pools = h.app.pools
    shared = pools.create_pool(PoolSpec("held", "fake", "base", Resources(), {}, 6, 8))
    for _ in range(20):
        sb = await pools.draw(spec(tenant="b"))
        if sb is not None:
            await h.app.lifecycle.destroy(sb.id, reason="test")
    assert shared.demand.burst_left() > 0  # a burst is on
    shared.idle.clear()
    assert len(shared.idle) + shared.creating < shared.spec.min
    await asyncio.wait_for(settle(shared), 1)  # under min: no wait at all
