"""The daemon side of the spec's calls (issue 17): volumes in the spec's shape, a
request above the host capped at it, OOM kills through a shell, growing a disk,
and corruption of stored states and snapshots. Against the real daemon."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from computesdk import Client, Resources, Sandbox
from computesdk.errors import from_rpc_error
from computesdk_api.sandbox.v1 import sandbox_pb2 as sb_pb
from computesdk_api.snapshot.v1 import snapshot_pb2 as sn_pb
from computesdk_api.volume.v1 import volume_pb2 as vo_pb
from conftest import DaemonProcess

HOST_CORES = float(os.cpu_count() or 1)
HOST_MB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20


def _reason(err: grpc.aio.AioRpcError) -> str:
    return from_rpc_error(err).reason


async def _create(client: Client, **kw: object) -> tuple[sb_pb.Sandbox, Sandbox]:
    resp = await client.sandboxes.CreateSandbox(
        sb_pb.CreateSandboxRequest(provider="local", **kw),  # type: ignore[arg-type]
        timeout=120,
    )
    return resp.sandbox, await client.get(resp.sandbox.id)


async def _volume(client: Client, name: str) -> vo_pb.Volume | None:
    try:
        resp = await client.volume_stub.GetVolume(vo_pb.GetVolumeRequest(name=name), timeout=30)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return None
    return resp.volume


@contextlib.asynccontextmanager
async def _volumes_gone(client: Client, *names: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for name in names:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await client.volume_stub.DeleteVolume(
                    vo_pb.DeleteVolumeRequest(name=name), timeout=30
                )


# ---------------------------------------------------------------- volumes


async def test_spec_volumes_are_made_on_first_use(client: Client, daemon: DaemonProcess) -> None:
    # The spec's block: a persistent 10GB volume and an ephemeral 5GB one, neither
    # made before. Images are sparse: 15 GB of volumes cost what is written.
    async with _volumes_gone(client, "spec-workspace", "spec-cache"):
        _, sb = await _create(
            client,
            volumes=[
                sb_pb.VolumeMount(
                    name="spec-workspace", mount_path="/workspace", size="10GB", persistent=True
                ),
                sb_pb.VolumeMount(name="spec-cache", mount_path="/cache", size="5GB"),
            ],
        )
        try:
            ws = await _volume(client, "spec-workspace")
            cache = await _volume(client, "spec-cache")
            assert ws is not None and ws.size_mb == 10 * 10**9 // 2**20 + 1 and ws.persistent
            assert cache is not None and cache.size_mb == 5 * 10**9 // 2**20 + 1
            assert not cache.persistent
            df = await sb.exec("df -m /workspace /cache | tail -n 2")
            sizes = [int(line.split()[1]) for line in df.stdout.splitlines()]
            assert sizes[0] > 9000 and sizes[1] > 4500, df.stdout
            await sb.exec("echo kept > /workspace/f && echo gone > /cache/f")
            # Sparse: the store holds a few MB of the 15 GB promised.
            store = daemon.state / "local" / "store" / "volumes"
            used = sum(
                os.stat(store / n / "volume.img").st_blocks * 512
                for n in ("spec-workspace", "spec-cache")
            )
            assert used < 64 * 2**20, used  # mkfs writes a few MB of metadata
        finally:
            await sb.destroy()
        # The ephemeral one went with the sandbox; the persistent one stays, data too.
        assert await _volume(client, "spec-cache") is None
        assert await _volume(client, "spec-workspace") is not None
        _, again = await _create(
            client,
            volumes=[sb_pb.VolumeMount(name="spec-workspace", mount_path="/w", must_exist=True)],
        )
        try:
            assert (await again.exec("cat /w/f")).stdout == "kept\n"
        finally:
            await again.destroy()


async def test_mount_existing_of_a_missing_volume_says_so(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(
            client,
            volumes=[sb_pb.VolumeMount(name="no-such-vol", mount_path="/d", must_exist=True)],
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert _reason(err.value) == "VOLUME_NOT_FOUND"
    assert "no-such-vol" in (err.value.details() or "")
    assert "mountExisting" in (err.value.details() or "")
    assert await _volume(client, "no-such-vol") is None


async def test_an_existing_volume_is_mounted_as_it_is(client: Client) -> None:
    async with _volumes_gone(client, "spec-sized"):
        await client.volume_stub.CreateVolume(
            vo_pb.CreateVolumeRequest(name="spec-sized", size_mb=64, persistent=True), timeout=60
        )
        _, sb = await _create(
            client, volumes=[sb_pb.VolumeMount(name="spec-sized", mount_path="/d", size="10GiB")]
        )
        try:
            rec = await _volume(client, "spec-sized")
            assert rec is not None and rec.size_mb == 64 and rec.persistent
            df = await sb.exec("df -m /d | tail -n 1")
            assert int(df.stdout.split()[1]) < 100
        finally:
            await sb.destroy()
        assert await _volume(client, "spec-sized") is not None  # not the create's to remove


@pytest.mark.parametrize(
    ("size", "mb"),
    [("512MB", 489), ("512MiB", 512), ("1GiB", 1024), ("64", 64), ("0.5 gib", 512)],
)
async def test_size_strings(client: Client, size: str, mb: int) -> None:
    name = f"spec-size-{mb}"
    async with _volumes_gone(client, name):
        _, sb = await _create(
            client, volumes=[sb_pb.VolumeMount(name=name, mount_path="/d", size=size)]
        )
        try:
            rec = await _volume(client, name)
            assert rec is not None and rec.size_mb == mb
        finally:
            await sb.destroy()


# ---------------------------------------------------------------- resources


async def test_resources_above_the_host_are_capped_at_it(client: Client) -> None:
    # The spec's cpuCores 4 / memoryMB 8192 on any host; and memory above its RAM.
    asked_mb = HOST_MB + 4096
    pb, sb = await _create(
        client, resources=sb_pb.Resources(cpu_cores=HOST_CORES + 2, memory_mb=asked_mb)
    )
    try:
        assert pb.resources.cpu_cores == HOST_CORES
        assert pb.resources.memory_mb == HOST_MB
        assert pb.requested_resources.cpu_cores == HOST_CORES + 2
        assert pb.requested_resources.memory_mb == asked_mb
        got = await client.sandboxes.GetSandbox(sb_pb.GetSandboxRequest(sandbox_id=pb.id))
        assert got.sandbox.resources.cpu_cores == HOST_CORES
        assert got.sandbox.requested_resources.memory_mb == asked_mb
        # Scale and live limits follow the same rule.
        res = await sb.scale(cpu_cores=HOST_CORES * 4, memory_mb=2048)
        assert res.cpu_cores == HOST_CORES and res.memory_mb == 2048
        got = await client.sandboxes.GetSandbox(sb_pb.GetSandboxRequest(sandbox_id=pb.id))
        assert got.sandbox.requested_resources.cpu_cores == HOST_CORES * 4
        res = await sb.set_resource_limits(memory_mb=1024)
        assert res.memory_mb == 1024 and res.cpu_cores == HOST_CORES
        got = await client.sandboxes.GetSandbox(sb_pb.GetSandboxRequest(sandbox_id=pb.id))
        assert not got.sandbox.HasField("requested_resources")  # nothing capped now
    finally:
        await sb.destroy()


async def test_a_request_the_host_can_give_is_not_marked(client: Client) -> None:
    pb, sb = await _create(client, resources=sb_pb.Resources(cpu_cores=0.5, memory_mb=256))
    try:
        assert pb.resources.cpu_cores == 0.5 and pb.resources.memory_mb == 256
        assert not pb.HasField("requested_resources")
    finally:
        await sb.destroy()


# ---------------------------------------------------------------- disk growth


def _can_grow_live() -> bool:
    """As the daemon sees it (same user, same host): CAP_SYS_RESOURCE, which the
    kernel's online ext4 resize wants. Some hosts withhold it from everyone."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


async def _df_mb(sb: Sandbox) -> int:
    return int((await sb.exec("df -m / | tail -n 1")).stdout.split()[1])


async def test_the_spec_disk_grows(client: Client) -> None:
    # The spec's setResourceLimits({ cpuPercent: 80, memoryMB: 2048, diskMB: 5120 }).
    pb, sb = await _create(client)
    try:
        assert pb.resources.disk_mb == 2048 and await _df_mb(sb) < 2100
        await sb.exec("echo kept > /root/f")
        res = await sb.set_resource_limits(cpu_percent=80, memory_mb=2048, disk_mb=5120)
        assert res.cpu_cores == 0.8 and res.memory_mb == 2048
        if _can_grow_live():
            assert res.disk_mb == 5120 and await _df_mb(sb) > 4900
        else:
            # Accepted, the disk in force unchanged until a restart, which grows it.
            assert res.disk_mb == 2048 and await _df_mb(sb) < 2100
            got = await client.sandboxes.GetSandbox(sb_pb.GetSandboxRequest(sandbox_id=pb.id))
            assert got.sandbox.requested_resources.disk_mb == 5120
            await sb.restart()
        assert await _df_mb(sb) > 4900
        assert (await sb.exec("cat /root/f")).stdout == "kept\n"
        got = await client.sandboxes.GetSandbox(sb_pb.GetSandboxRequest(sandbox_id=pb.id))
        assert got.sandbox.resources.disk_mb == 5120
        # A disk never shrinks: refused live, kept as it is by a restart.
        with pytest.raises(Exception) as err:
            await sb.set_resource_limits(disk_mb=1024)
        assert getattr(err.value, "reason", "") == "DISK_SHRINK_UNSUPPORTED"
        await sb.restart(resources={"disk_mb": 1024})
        assert await _df_mb(sb) > 4900
        got = await client.sandboxes.GetSandbox(sb_pb.GetSandboxRequest(sandbox_id=pb.id))
        assert got.sandbox.resources.disk_mb == 5120
    finally:
        await sb.destroy()


async def test_a_restart_with_a_larger_disk_grows_it(client: Client) -> None:
    _, sb = await _create(client, resources=sb_pb.Resources(disk_mb=256))
    try:
        await sb.exec("echo kept > /root/f")
        await sb.restart(resources={"disk_mb": 1024})
        assert 900 < await _df_mb(sb) < 1100
        assert (await sb.exec("cat /root/f")).stdout == "kept\n"
        # The grown disk is a working filesystem: it holds more than the old size.
        await sb.exec("dd if=/dev/zero of=/root/big bs=1M count=400 status=none")
    finally:
        await sb.destroy()


# ---------------------------------------------------------------- out of memory


async def test_an_oom_kill_through_a_shell_is_reported(client: Client) -> None:
    sb = await client.create(resources=Resources(memory_mb=64))
    try:
        hog = "python3 -c 'x=[]\nwhile True: x.append(bytearray(8<<20))'"
        r = await sb.exec(["sh", "-c", f"{hog}; exit $?"], check=False)
        assert r.exit_code == 137 and r.oom_killed, r
        # A plain exit 137 afterwards, with no new kill, is not an OOM kill.
        r = await sb.exec("exit 137", check=False)
        assert r.exit_code == 137 and not r.oom_killed
        # Nor is a process the user SIGKILLs with no OOM kill while it ran.
        r = await sb.exec("kill -9 $$", check=False)
        assert not r.oom_killed, r
    finally:
        await sb.destroy()


# ---------------------------------------------------------------- corruption


def _tamper(image: Path) -> None:
    """Changes stored bytes as a failing disk (or a hostile root) would: a block
    in the middle of the image, which the snapshot never wrote."""
    with image.open("r+b") as f:
        f.seek(image.stat().st_size // 2)
        f.write(os.urandom(4096))


async def _snapshot(client: Client, sb: Sandbox) -> sn_pb.Snapshot:
    req = sn_pb.CreateSnapshotRequest(sandbox_id=sb.id, name="s")
    return (await client.snapshot_stub.CreateSnapshot(req, timeout=60)).snapshot


async def _saved_state(client: Client, **kw: object) -> sn_pb.State:
    """A saved state of a sandbox (gone since) holding /root/f = "saved"."""
    _, sb = await _create(client, **kw)
    try:
        await sb.exec("echo saved > /root/f")
        req = sn_pb.SaveStateRequest(sandbox_id=sb.id, name="st")
        return (await client.snapshot_stub.SaveState(req, timeout=60)).state
    finally:
        await sb.destroy()


async def _corruption_events(client: Client, ident: str) -> list[object]:
    return [
        ev
        async for ev in client.events(types=["corruption"], follow=False)
        if ev.attributes.get("id") == ident
    ]


async def test_a_tampered_snapshot_is_refused_with_a_corruption_event(
    client: Client, daemon: DaemonProcess
) -> None:
    _, sb = await _create(client)
    try:
        await sb.exec("echo one > /root/f")
        snap = await _snapshot(client, sb)
        await sb.exec("echo two > /root/f")
        _tamper(daemon.state / "local" / "store" / "snapshots" / f"{snap.id}.img")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.snapshot_stub.RestoreSnapshot(
                sn_pb.RestoreSnapshotRequest(sandbox_id=sb.id, snapshot_id=snap.id), timeout=60
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _reason(err.value) == "STATE_CORRUPT"
        assert snap.id in (err.value.details() or "")
        (ev,) = await _corruption_events(client, snap.id)
        assert ev.sandbox_id == sb.id  # type: ignore[attr-defined]
        assert ev.attributes["what"] == "snapshot"  # type: ignore[attr-defined]
        assert ev.attributes["reason"] == "STATE_CORRUPT"  # type: ignore[attr-defined]
        # Nothing was restored: the sandbox runs on as it was.
        assert (await sb.exec("cat /root/f")).stdout == "two\n"
    finally:
        await sb.destroy()


async def test_an_untouched_snapshot_restores(client: Client) -> None:
    _, sb = await _create(client)
    try:
        await sb.exec("dd if=/dev/urandom of=/root/big bs=1M count=8 status=none")
        await sb.exec("echo one > /root/f")
        snap = await _snapshot(client, sb)
        await sb.exec("echo two > /root/f && rm /root/big")
        await client.snapshot_stub.RestoreSnapshot(
            sn_pb.RestoreSnapshotRequest(sandbox_id=sb.id, snapshot_id=snap.id), timeout=60
        )
        assert (await sb.exec("cat /root/f")).stdout == "one\n"
        assert (await sb.exec("stat -c %s /root/big")).stdout == f"{8 << 20}\n"
    finally:
        await sb.destroy()


async def test_a_tampered_saved_state_is_refused_at_create_and_export(
    client: Client, daemon: DaemonProcess
) -> None:
    state = await _saved_state(client)
    try:
        _tamper(daemon.state / "local" / "store" / "snapshots" / f"{state.id}.img")
        before = {s.id for s in await client.list()}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _create(client, restore_from=state.id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _reason(err.value) == "STATE_CORRUPT"
        (ev,) = await _corruption_events(client, state.id)
        assert ev.attributes["what"] == "state"  # type: ignore[attr-defined]
        assert ev.sandbox_id  # type: ignore[attr-defined]  # the sandbox that did not start
        assert {s.id for s in await client.list()} == before
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in client.snapshot_stub.ExportState(
                sn_pb.ExportStateRequest(state_id=state.id), timeout=60
            ):
                pass
        assert _reason(err.value) == "STATE_CORRUPT"
    finally:
        await client.snapshot_stub.DeleteState(
            sn_pb.DeleteStateRequest(state_id=state.id), timeout=60
        )


async def test_a_disk_without_its_superblock_is_refused_at_restart(
    client: Client, daemon: DaemonProcess
) -> None:
    pb, sb = await _create(client)
    try:
        image = daemon.state / "local" / "store" / "sandboxes" / pb.id / "disk.img"
        with image.open("r+b") as f:
            f.seek(1024 + 0x38)
            f.write(b"\0\0")  # the ext4 magic
        with pytest.raises(Exception) as err:
            await sb.restart()
        assert getattr(err.value, "reason", "") == "DISK_CORRUPT"
        (ev,) = await _corruption_events(client, pb.id)
        assert ev.attributes["what"] == "disk"  # type: ignore[attr-defined]
        assert ev.sandbox_id == pb.id  # type: ignore[attr-defined]
    finally:
        await sb.destroy()


async def test_a_state_restores_onto_a_larger_disk(client: Client) -> None:
    state = await _saved_state(client, resources=sb_pb.Resources(disk_mb=256))
    try:
        pb, again = await _create(
            client, restore_from=state.id, resources=sb_pb.Resources(disk_mb=1024)
        )
        try:
            assert pb.resources.disk_mb == 1024 and await _df_mb(again) > 900
            assert (await again.exec("cat /root/f")).stdout == "saved\n"
        finally:
            await again.destroy()
    finally:
        await client.snapshot_stub.DeleteState(
            sn_pb.DeleteStateRequest(state_id=state.id), timeout=60
        )


async def test_a_disk_found_corrupt_after_a_daemon_restart_is_reported(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    pb, _ = await _create(c)
    d.kill9()
    image = d.state / "local" / "store" / "sandboxes" / pb.id / "disk.img"
    with image.open("r+b") as f:
        f.seek(1024 + 0x38)
        f.write(b"\0\0")
    d.start()
    sb = await c.get(pb.id)  # adopted: it runs on, on the mounted disk
    assert (await sb.exec("echo alive")).stdout == "alive\n"
    (ev,) = await _corruption_events(c, pb.id)
    assert ev.attributes["what"] == "disk"  # type: ignore[attr-defined]
    assert ev.attributes["reason"] == "DISK_CORRUPT"  # type: ignore[attr-defined]
