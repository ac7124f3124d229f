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
