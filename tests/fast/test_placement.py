"""Create: request ids, fallbacks, pools as a source, bad specs."""

from __future__ import annotations

import asyncio
import time

import pytest

from computesdkd.core.placement import POOL_ALLOW
from computesdkd.domain.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from computesdkd.domain.model import Resources, State
from computesdkd.features.pools import PoolSpec
from conftest import Harness, spec


async def _pool(h: Harness, name: str = "warm", size: int = 2) -> None:
    h.app.pools.create_pool(PoolSpec(name, "fake", "base", Resources(), {}, size, size))
    for _ in range(200):
        if len(h.app.pools.get(name).idle) == size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pool never filled")


async def test_create_runs_and_emits_in_order(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    assert sb.state == State.RUNNING and sb.id in h.fake.boxes
    assert h.events(sb.id) == ["created", "ready"]


async def test_same_request_id_returns_the_same_sandbox(h: Harness) -> None:
    a = await h.app.placement.create(spec(request_id="r1"))
    b = await h.app.placement.create(spec(request_id="r1"))
    assert a.id == b.id and h.fake.created == 1
    with pytest.raises(AlreadyExists) as e:
        await h.app.placement.create(spec(request_id="r1", template="python"))
    assert e.value.reason == "REQUEST_ID_CONFLICT"


async def test_concurrent_creates_with_one_request_id_make_one_sandbox(h: Harness) -> None:
    got = await asyncio.gather(*(h.app.placement.create(spec(request_id="r")) for _ in range(5)))
    assert len({sb.id for sb in got}) == 1 and h.fake.created == 1


async def test_pooled_create_retried_with_its_request_id_is_the_same_sandbox(h: Harness) -> None:
    """Regression: a sandbox drawn from a pool kept the pool's pool_policy and
    fallback_providers, so the retry of the same create got REQUEST_ID_CONFLICT."""
    await _pool(h)
    made = h.fake.created
    want = spec(request_id="pooled", pool_policy=POOL_ALLOW, fallback_providers=("backup",))
    first = await h.app.placement.create(want)
    assert h.fake.created == made  # it came from the pool, not a fresh create
    assert first.spec.pool_policy == POOL_ALLOW
    assert first.spec.fallback_providers == ("backup",)
    again = await h.app.placement.create(want)
    assert again.id == first.id


async def test_pool_draw_takes_the_callers_lifetime_and_labels(h: Harness) -> None:
    await _pool(h)
    await asyncio.sleep(0.05)  # the pool's members are older than the create
    asked = time.time()
    sb = await h.app.placement.create(spec(metadata={"team": "a"}, timeout_ms=5000))
    assert sb.spec.metadata == {"team": "a"}
    # Created, to its holder, at the hand-out: no uptime from the pool's idle time.
    assert sb.created_at >= asked and sb.started_at >= asked
    assert sb.expires_at <= time.time() + 5.1
    listed, _ = h.app.registry.list(100, "", {}, [], "")
    assert sb.id in {s.id for s in listed}
    assert len(listed) == 1  # the pool's idle members are not listed


async def test_fallback_on_a_provider_fault_not_on_a_bad_request(h: Harness) -> None:
    h.fake.create_error = Unavailable("down", reason="PROVIDER_UNAVAILABLE")
    sb = await h.app.placement.create(spec(fallback_providers=("backup",)))
    assert sb.spec.provider == "backup" and sb.id in h.backup.boxes
    h.fake.create_error = InvalidArgument("no such size", reason="PROVIDER_REJECTED")
    with pytest.raises(InvalidArgument):
        await h.app.placement.create(spec(fallback_providers=("backup",)))


async def test_failed_create_leaves_no_record(h: Harness) -> None:
    h.fake.create_error = InvalidArgument("nope", reason="PROVIDER_REJECTED")
    with pytest.raises(InvalidArgument):
        await h.app.placement.create(spec())
    assert list(h.app.registry.all()) == [] and h.store.sandboxes.all() == []
    assert h.events() == ["created", "error", "destroyed"]


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "METADATA_TOO_LARGE"),
        ({"timeout_ms": 8 * 24 * 3600 * 1000}, "INVALID_TIMEOUT"),
        ({"env": {"A=B": "x"}}, "INVALID_ENV"),
    ],
)
async def test_bad_specs_are_refused_with_a_reason(
    h: Harness, kw: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        await h.app.placement.create(spec(**kw))
    assert e.value.reason == reason
    assert h.fake.created == 0


async def test_unknown_provider(h: Harness) -> None:
    with pytest.raises(NotFound) as e:
        await h.app.placement.create(spec(provider="nope"))
    assert e.value.reason == "PROVIDER_NOT_FOUND"


async def test_batch_reports_each_item(h: Harness) -> None:
    out = await h.app.placement.batch([spec(), spec(env={"": "x"}), spec()])
    assert [type(o).__name__ for o in out] == ["Sandbox", "InvalidArgument", "Sandbox"]


async def test_no_create_while_shutting_down(h: Harness) -> None:
    h.app.placement.accepting = False
    with pytest.raises(Unavailable) as e:
        await h.app.placement.create(spec())
    assert e.value.reason == "DAEMON_SHUTTING_DOWN"
    h.app.placement.accepting = True


async def test_a_provider_that_cannot_run_refuses_before_any_sandbox_exists(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h.fake, "availability", lambda: "it needs root")
    before = h.events()
    with pytest.raises(Unavailable) as e:
        await h.app.placement.create(spec())
    assert e.value.reason == "PROVIDER_UNAVAILABLE" and "it needs root" in e.value.message
    assert h.events() == before and h.fake.created == 0  # no events for a sandbox never made
    assert list(h.app.registry.all()) == []
    # The breaker counts it like any failed create, so fallbacks still happen.
    sb = await h.app.placement.create(spec(fallback_providers=("backup",)))
    assert sb.spec.provider == "backup"


async def test_local_says_it_needs_root_before_setting_anything_up(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from computesdkd.providers.base import ProviderConfig
    from computesdkd.providers.local import layout
    from computesdkd.providers.local.provider import LocalProvider

    monkeypatch.setattr(layout.os, "geteuid", lambda: 65534)
    local = LocalProvider(ProviderConfig("local"))
    await local.start(None)  # type: ignore[arg-type]  # returns before using the context
    assert "needs root" in local.availability() and "uid 65534" in local.availability()


async def test_ports_declared_at_create_are_checked_and_kept(h: Harness) -> None:
    for bad in ((0,), (65536,), tuple(range(1, 18))):
        with pytest.raises(InvalidArgument) as e:
            await h.app.placement.create(spec(ports=bad))
        assert e.value.reason == "INVALID_PORT"
    sb = await h.app.placement.create(spec(ports=(8080, 80, 8080)))
    assert sb.spec.ports == (80, 8080)
    stored = {s.id: s for s in h.store.sandboxes.all()}
    assert stored[sb.id].spec.ports == (80, 8080)  # read back from the store
