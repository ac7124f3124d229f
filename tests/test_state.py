"""Snapshots, saved states, restart, clone and volumes against the real daemon."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from computesdk import (
    Client,
    ComputeSDKError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    UnsupportedError,
)
from conftest import DaemonProcess

WRITE_100MB = "dd if=/dev/urandom of=/workspace/blob bs=1M count=100 status=none && sync"


def store_used(d: DaemonProcess) -> int:
    st = os.statvfs(d.state / "local" / "store")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


async def _events(c: Client, sb: Sandbox) -> list[str]:
    return [e.type async for e in c.events(sandbox_ids=[sb.id], follow=False)]


async def test_snapshot_restore_keeps_the_id_and_shares_blocks(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    sb = await c.create("local", template="python")
    assert (await sb.exec(WRITE_100MB)).exit_code == 0
    await sb.files.write("/workspace/note", b"before")
    used = store_used(d)
    snap = await sb.snapshots.create("before", description="100 MB written")
    # Copy-on-write: the snapshot shares the sandbox's blocks instead of copying them.
    assert store_used(d) - used < 8 * 1024 * 1024
    assert snap.size_bytes >= 100 * 1024 * 1024

    await sb.files.write("/workspace/note", b"after")
    await sb.files.remove("/workspace/blob")
    await sb.start_process("sleep 1000")
    await sb.snapshots.restore(snap)
    assert sb.id == (await c.get(sb.id)).id
    assert await sb.files.read("/workspace/note") == b"before"
    assert (await sb.files.stat("/workspace/blob")).size == 100 * 1024 * 1024
    assert not any(p.running for p in await sb.processes())
    assert (await sb.exec(["python3", "-c", "print(2)"])).stdout == "2\n"

    listed = await sb.snapshots.list()
    assert [(s.id, s.name, s.description) for s in listed] == [
        (snap.id, "before", "100 MB written")
    ]
    await sb.snapshots.delete(snap)
    assert await sb.snapshots.list() == []
    with pytest.raises(NotFoundError) as err:
        await sb.snapshots.restore(snap.id)
    assert err.value.reason == "SNAPSHOT_NOT_FOUND"
    types = await _events(c, sb)
    assert types.index("snapshot.created") < types.index("snapshot.restored")
    assert "snapshot.deleted" in types


async def test_snapshots_go_with_their_sandbox(private: tuple[DaemonProcess, Client]) -> None:
    d, c = private
    sb = await c.create("local")
    snap = await sb.snapshots.create("s")
    files = d.state / "local" / "store" / "snapshots"
    assert (files / f"{snap.id}.img").exists()
    await sb.destroy()
    assert not (files / f"{snap.id}.img").exists()


async def test_saved_state_outlives_its_sandbox_and_survives_a_restart(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    sb = await c.create("local", template="python", env={"MODE": "saved"})
    await sb.files.write("/workspace/app.py", b"print('restored app')\n")
    state_id = await sb.save_state("app")
    await sb.destroy()
    d.stop()
    d.start()

    states = await c.states.list()
    assert [(s.id, s.name, s.template) for s in states] == [(state_id, "app", "python")]
    again = await c.create(restore_from=state_id)
    assert again.template == "python"
    r = await again.exec("python3 /workspace/app.py; echo $MODE")
    assert r.stdout == "restored app\nsaved\n"
    await c.states.delete(state_id)
    with pytest.raises(NotFoundError) as err:
        await c.create(restore_from=state_id)
    assert err.value.reason == "STATE_NOT_FOUND"


async def test_clone_shares_blocks_and_applies_changes(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    src = await c.create("local", env={"A": "1"})
    assert (await src.exec(WRITE_100MB)).exit_code == 0
    await src.exec("echo sys > /etc/custom")
    used = store_used(d)
    dst = await src.clone(env={"B": "2"})
    assert store_used(d) - used < 8 * 1024 * 1024
    r = await dst.exec("stat -c %s /workspace/blob; cat /etc/custom; echo $A$B")
    assert r.stdout == f"{100 * 1024 * 1024}\nsys\n12\n"
    # The copy is independent of its source.
    await dst.files.remove("/workspace/blob")
    assert await src.files.exists("/workspace/blob")


async def test_restart_keeps_files_or_takes_a_new_template(
    private: tuple[DaemonProcess, Client],
) -> None:
    _, c = private
    sb = await c.create("local", template="python", env={"X": "1"})
    await sb.files.write("/workspace/keep", b"kept")
    await sb.start_process("sleep 1000", tag="sleeper")
    await sb.restart(env={"X": "2"})
    assert await sb.files.read("/workspace/keep") == b"kept"
    assert not any(p.running for p in await sb.processes())
    assert (await sb.exec("echo $X")).stdout == "2\n"

    await sb.restart(template="node")
    assert sb.template == "node"
    assert not await sb.files.exists("/workspace/keep")
    assert (await sb.exec(["node", "-e", "console.log(6*7)"])).stdout == "42\n"
    assert "restarted" in await _events(c, sb)


async def test_volumes_limit_share_persist_and_clean_up(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    await c.volumes.create("data", size_mb=16, persistent=True)
    writer = await c.create("local", volumes=[{"name": "data", "mount_path": "/data"}])
    reader = await c.create(
        "local",
        volumes=[
            {"name": "data", "mount_path": "/mnt/data", "read_only": True},
            {"name": "scratch", "mount_path": "/scratch", "size_mb": 8},
        ],
    )
    # The limit is hard: the writer gets ENOSPC, and the daemon carries on.
    r = await writer.exec("dd if=/dev/zero of=/data/fill bs=1M count=64", check=False)
    assert r.exit_code != 0 and "No space left on device" in r.stderr
    await writer.exec("rm /data/fill; echo shared > /data/f")
    assert (await reader.exec(["cat", "/mnt/data/f"])).stdout == "shared\n"
    r = await reader.exec("echo x > /mnt/data/g", check=False)
    assert r.exit_code != 0 and "Read-only file system" in r.stderr
    assert (await reader.exec("echo ok > /scratch/s && cat /scratch/s")).stdout == "ok\n"

    info = await c.volumes.get("data")
    assert info.mounted_by == sorted([writer.id, reader.id])
    with pytest.raises(FailedPreconditionError) as err:
        await c.volumes.delete("data")
    assert err.value.reason == "VOLUME_IN_USE"

    await writer.destroy()
    await reader.destroy()  # takes its ephemeral volume along
    assert [v.name for v in await c.volumes.list()] == ["data"]
    d.stop()
    d.start()
    again = await c.create("local", volumes=[{"name": "data", "mount_path": "/data"}])
    assert (await again.exec(["cat", "/data/f"])).stdout == "shared\n"
    await again.destroy()
    await c.volumes.delete("data")
    assert await c.volumes.list() == []
    kinds = ["volume.created", "volume.mounted", "volume.deleted"]
    seen = {
        (e.type, e.sandbox_id, e.attributes["volume"])
        async for e in c.events(types=kinds, follow=False)
    }
    assert {
        ("volume.created", "", "data"),
        ("volume.mounted", writer.id, "data"),
        ("volume.created", reader.id, "scratch"),
        ("volume.mounted", reader.id, "scratch"),
        ("volume.deleted", reader.id, "scratch"),
        ("volume.deleted", "", "data"),
    } <= seen


async def test_bad_volume_requests(client: Client) -> None:
    # An absent volume is made on first use, unless it must exist already.
    with pytest.raises(NotFoundError) as err:
        await client.create(
            "local", volumes=[{"name": "nope", "mount_path": "/x", "mount_existing": True}]
        )
    assert err.value.reason == "VOLUME_NOT_FOUND" and "'nope'" in err.value.message
    for path in ("/", "/etc", "/proc/x", "relative", "/.computesdk/run"):
        with pytest.raises(InvalidArgumentError) as bad:
            await client.create(
                "local", volumes=[{"name": "v-bad", "mount_path": path, "size_mb": 4}]
            )
        assert bad.value.reason == "INVALID_MOUNT_PATH", path
    assert "v-bad" not in [v.name for v in await client.volumes.list()]


async def test_providers_without_snapshots_say_so(client: Client) -> None:
    sb = await client.create("docker")
    try:
        with pytest.raises(UnsupportedError) as err:
            await sb.snapshots.create("x")
        assert err.value.metadata == {"provider": "docker", "feature": "snapshots"}
        with pytest.raises(UnsupportedError) as restart:
            await sb.restart()
        assert restart.value.metadata["feature"] == "restart"
    finally:
        await sb.destroy()


def test_store_is_copy_on_write(daemon: DaemonProcess) -> None:
    store = daemon.state / "local" / "store"
    with Path("/proc/self/mounts").open() as f:
        fs = [line.split()[2] for line in f if line.split()[1] == str(store.resolve())]
    assert fs == ["xfs"]


async def test_export_import_keeps_files_modes_links_dirs_deletions_and_env(
    private: tuple[DaemonProcess, Client],
) -> None:
    _, c = private
    sb = await c.create("local", template="python", env={"E": "1"}, metadata={"m": "x"})
    setup = (
        "mkdir -p /workspace/empty /workspace/d && echo hi > /workspace/d/f && "
        "chmod 751 /workspace/d/f && ln -s d/f /workspace/link && rm /etc/issue && "
        "printf '\\000\\377bin' > /workspace/bin"
    )
    assert (await sb.exec(setup)).exit_code == 0
    state = await sb.save_state("portable")
    archive = b"".join([piece async for piece in c.states.export(state_id=state)])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["computesdk-state.json", "layers/0.tar", "manifest.json"]
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest["version"] == 1 and manifest["template"] == "python"
    assert manifest["env"] == {"E": "1"}
    assert len(manifest["layers"][0]["sha256"]) == 64

    new = await c.states.import_(archive, metadata={"imported": "yes"})
    check = (
        "stat -c '%a %F' /workspace/d/f /workspace/empty; readlink /workspace/link; "
        "cat /workspace/link; test -e /etc/issue || echo gone; od -An -c /workspace/bin; echo $E"
    )
    r = await new.exec(check)
    assert r.stdout.split("\n")[:5] == [
        "751 regular file",
        "755 directory",
        "d/f",
        "hi",
        "gone",
    ]
    assert r.stdout.split("\n")[5].split() == ["\\0", "377", "b", "i", "n"]
    assert r.stdout.endswith("1\n")
    assert new.metadata["imported"] == "yes" and new.template == "python"
    # A running sandbox exports as it is now, too.
    live = b"".join([piece async for piece in c.states.export(sandbox=new)])
    assert len(live) > 10_000
    assert "state.imported" in await _events(c, new)


async def test_corrupt_or_truncated_archives_are_refused_leaving_nothing(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    sb = await c.create("local")
    await sb.files.write("/workspace/data", os.urandom(64 * 1024))
    good = b"".join([piece async for piece in c.states.export(sandbox=sb)])
    layer_at = good.index(b"layers/0.tar") + 2048  # inside the layer's data
    flipped = good[:layer_at] + bytes([good[layer_at] ^ 0xFF]) + good[layer_at + 1 :]
    before = {s.id for s in await c.list()}
    for bad in (good[: len(good) // 2], flipped, b"not an archive" * 100, b""):
        with pytest.raises(InvalidArgumentError) as err:
            await c.states.import_(bad)
        assert err.value.reason == "ARCHIVE_CORRUPT"
    assert {s.id for s in await c.list()} == before
    assert list((d.state / "tmp").iterdir()) == []


async def test_a_daemon_killed_mid_export_leaves_nothing_corrupt(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    sb = await c.create("local")
    await sb.exec("dd if=/dev/urandom of=/workspace/big bs=1M count=200 status=none")
    stream = c.states.export(sandbox=sb)
    await anext(stream)  # the export is under way: a snapshot exists, a layer is written
    d.kill9()
    with contextlib.suppress(ComputeSDKError, StopAsyncIteration):
        await stream.aclose()
    d.start()
    snaps = d.state / "local" / "store" / "snapshots"
    assert list(snaps.iterdir()) == []  # the export's snapshot was freed at start
    assert await sb.snapshots.list() == []
    # The sandbox was not left frozen or broken.
    r = await sb.exec("echo after > /workspace/after && stat -c %s /workspace/big")
    assert r.stdout == f"{200 * 1024 * 1024}\n"
    snap = await sb.snapshots.create("fine")
    await sb.snapshots.restore(snap)
    assert await sb.files.read("/workspace/after") == b"after\n"
