"""Features on the core: clone, snapshots and states, volumes, groups, templates."""

from __future__ import annotations

import pytest

from computesdkd.domain.errors import FailedPrecondition
from computesdkd.domain.model import Command, VolumeMount
from conftest import Harness, spec


async def _write(h: Harness, sandbox_id: str, path: str, data: bytes) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield data

    await h.app.files.write(sandbox_id, path, chunks(), mode=0o644, make_parents=True, append=False)


async def _read(h: Harness, sandbox_id: str, path: str) -> bytes:
    return b"".join([c async for c in h.app.files.read(sandbox_id, path, 0, 0)])


async def test_clone_on_the_same_provider_goes_through_a_snapshot(h: Harness) -> None:
    src = await h.app.placement.create(spec())
    await _write(h, src.id, "/workspace/a.txt", b"hello")
    dst = await h.app.cloning.clone(src.id)
    assert await _read(h, dst.id, "/workspace/a.txt") == b"hello"
    assert h.fake.snapshots == {}  # the clone's snapshot is freed once used
    assert "cloned" in h.events(dst.id)


async def test_migrate_to_another_provider_copies_the_workspace_by_tar(h: Harness) -> None:
    src = await h.app.placement.create(spec())
    await _write(h, src.id, "/workspace/d/b.txt", b"over tar")
    dst = await h.app.cloning.migrate(src.id, "backup")
    assert dst.spec.provider == "backup"
    assert h.backup.boxes[dst.id].files["/workspace/d/b.txt"] == b"over tar"
    assert h.app.registry.find(src.id) is None  # the source goes once the copy is whole


async def test_snapshot_restore_and_destroy_frees_its_files(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    await _write(h, sb.id, "/workspace/f", b"v1")
    snap = await h.app.snapshots.create(sb.id, "one", "")
    await _write(h, sb.id, "/workspace/f", b"v2")
    await h.app.snapshots.restore(sb.id, snap.id)
    assert await _read(h, sb.id, "/workspace/f") == b"v1"
    await h.app.lifecycle.destroy(sb.id)
    assert snap.id not in h.fake.snapshots


async def test_a_saved_state_restores_into_a_new_sandbox(h: Harness) -> None:
    sb = await h.app.placement.create(spec(env={"K": "v"}))
    await _write(h, sb.id, "/workspace/s", b"state")
    state = await h.app.snapshots.save_state(sb.id, "st")
    again = await h.app.placement.create(spec(restore_from=state.id, provider=""))
    assert await _read(h, again.id, "/workspace/s") == b"state"
    assert again.spec.env == {"K": "v"}
    users = h.app.templates.users("fake", "base")
    assert f"state {state.id}" in users


async def test_an_ephemeral_volume_goes_with_its_sandbox(h: Harness) -> None:
    sb = await h.app.placement.create(spec(volumes=(VolumeMount("scratch", "/data", size_mb=10),)))
    assert "scratch" in h.fake.volumes and "volume.mounted" in h.events(sb.id)
    await h.app.lifecycle.destroy(sb.id)
    assert "scratch" not in h.fake.volumes


async def test_an_ephemeral_volume_goes_with_its_last_user_when_its_maker_went_first(
    h: Harness,
) -> None:
    maker = await h.app.placement.create(spec(volumes=(VolumeMount("v", "/v", size_mb=10),)))
    user = await h.app.placement.create(spec(volumes=(VolumeMount("v", "/v", must_exist=True),)))
    await h.app.lifecycle.destroy(maker.id)
    assert "v" in h.fake.volumes  # still mounted by the other
    await h.app.lifecycle.destroy(user.id)
    assert "v" not in h.fake.volumes  # not left behind, counted against nobody


async def test_a_persistent_volume_outlives_every_user(h: Harness) -> None:
    vol = VolumeMount("keep", "/k", size_mb=10, persistent=True)
    sb = await h.app.placement.create(spec(volumes=(vol,)))
    other = await h.app.placement.create(spec(volumes=(VolumeMount("keep", "/k"),)))
    await h.app.lifecycle.destroy(sb.id)
    await h.app.lifecycle.destroy(other.id)
    assert "keep" in h.fake.volumes


async def test_a_group_broadcasts_and_forgets_destroyed_members(h: Harness) -> None:
    a = await h.app.placement.create(spec())
    b = await h.app.placement.create(spec())
    h.app.groups.create("g", [a.id, b.id])
    results = [r async for r in h.app.groups.broadcast("g", Command(["echo", "x"]))]
    assert sorted(r.sandbox_id for r in results) == sorted([a.id, b.id])
    await h.app.lifecycle.destroy(a.id)
    assert h.app.groups.get("g") == [b.id]


async def test_health_check_runs_through_the_provider(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    results = {r.name: r.healthy for r in await h.app.monitoring.check_health(sb.id)}
    assert results["agent"] and results["exec"]
    h.fake.boxes[sb.id].alive = False
    results = {r.name: r.healthy for r in await h.app.monitoring.check_health(sb.id)}
    assert not results["agent"]


async def test_a_template_in_use_by_a_pool_cannot_go(h: Harness) -> None:
    from computesdkd.domain.model import Resources
    from computesdkd.features.pools import PoolSpec

    h.app.pools.create_pool(PoolSpec("p", "fake", "python", Resources(), {}, 0, 1))
    assert h.app.templates.users("fake", "python") == ["pool p"]
    with pytest.raises(FailedPrecondition):
        await h.app.templates.delete("fake", "python")
