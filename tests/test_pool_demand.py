"""Pools follow demand (features/pools/demand.py): a burst raises a pool's target past
min, never past max, and once the demand window passes the pool shrinks back to min.

Against a real daemon whose window is set short (COMPUTESDK_POOL_DEMAND_WINDOW_S);
each step waits for the state it expects, with a generous deadline: no timing asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from computesdk import Client
from computesdkd.features.pools.demand import target
from computesdkd.features.pools.model import Demand
from conftest import DaemonProcess

# Long enough that a loaded machine makes a sandbox or two inside it, short enough to wait out.
WINDOW_S = 20


async def _until(pred: object, timeout: float = 120.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if await pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before `private` starts its daemon (fixtures run in the order a test names them)."""
    monkeypatch.setenv("COMPUTESDK_POOL_DEMAND_WINDOW_S", str(WINDOW_S))


def test_the_target_is_the_recent_peak_within_min_max_and_memory() -> None:
    d = Demand()
    assert target(1, 10, d, idle_now=1, room=100) == 1  # no demand: min
    for _ in range(6):
        d.record()
    assert target(1, 10, d, idle_now=1, room=100) == 6
    assert target(1, 4, d, idle_now=1, room=100) == 4  # max bounds it
    assert target(1, 10, d, idle_now=1, room=2) == 3  # so does the host's memory
    assert target(2, 10, d, idle_now=0, room=0) == 2  # but never under min
    # Four misses in a row are a burst: a refill waits until it is over, never long.
    for _ in range(3):
        d.miss()
    assert d.burst_left() == 0
    d.miss()
    assert 0 < d.burst_left() <= 2.0
    # Requests long past the window no longer count.
    old = Demand()
    for _ in range(6):
        old.record(now=0.0)
    assert old.peak(now=10_000.0) == 0


async def test_a_burst_grows_the_pool_within_max_and_idle_shrinks_it_back(
    short_window: None, private: tuple[DaemonProcess, Client]
) -> None:
    d, c = private
    await c.pools.create("burst", provider="local", template="base", min=1, max=4)

    async def idle(want: int) -> bool:
        return (await c.pools.get("burst")).idle == want

    await _until(lambda: idle(1))
    # Six creates at once, more than max: each one tried the pool first.
    sandboxes = await asyncio.gather(*(c.create("local", template="base") for _ in range(6)))
    assert (await c.pools.get("burst")).create_draws_total >= 1

    async def grown() -> bool:
        info = await c.pools.get("burst")
        # Never past max, whatever the demand was.
        assert info.idle + info.leased + info.creating <= 4
        return info.idle >= 2

    await _until(grown)
    for sb in sandboxes:  # the callers' now: the pool does not count them
        await sb.destroy()

    await _until(lambda: idle(1))
    events = []
    for line in d.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    shrinks = [e for e in events if isinstance(e, dict) and e.get("event") == "pool shrinks"]
    assert shrinks and shrinks[-1]["pool"] == "burst" and shrinks[-1]["target"] == 1
