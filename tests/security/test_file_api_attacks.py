"""The file API against a hostile sandbox: FIFOs, device links, links into /proc,
and a racer that swaps a directory for a symlink to the host while the daemon
works on it. Nothing blocks, nothing reaches the host, and the daemon keeps
serving."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computesdk import Client, Sandbox
from computesdk._rpc import translated
from computesdk.errors import ComputeSDKError
from computesdk_api.filesystem.v1 import filesystem_pb2 as fs_pb


def snapshot(d: Path) -> list[tuple[str, int, int, int]]:
    return sorted(
        (str(p.relative_to(d)), p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_size)
        for p in d.rglob("*")
    )


async def reason_of(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except ComputeSDKError as exc:
        return exc.reason
    return "ok"


async def test_fifos_and_devices_are_refused_without_blocking(client: Client) -> None:
    sb = await client.create("local")
    try:
        r = await sb.exec(
            "mkfifo /workspace/fifo /etc/fifo-hosts && ln -s /dev/tty /workspace/tty"
            " && ln -s /dev/zero /workspace/zero && ln -s /proc/1/environ /workspace/env"
            " && ln -s /proc/self/mem /workspace/mem && ln -s /proc/1 /workspace/p1 && echo ok"
        )
        assert r.stdout == "ok\n", r.stderr
        # More readers than the daemon has worker threads: with blocking opens
        # these would wedge every other call.
        reads = [sb.files.read("/workspace/fifo") for _ in range(40)]
        reasons = await asyncio.wait_for(asyncio.gather(*map(reason_of, reads)), 60)
        assert set(reasons) == {"NOT_A_REGULAR_FILE"}
        for path in ("/workspace/tty", "/workspace/zero"):
            assert await reason_of(sb.files.read(path)) == "NOT_A_REGULAR_FILE"
        # Through a link into /proc: neither PID 1's links nor its fds are told.
        for op in (sb.files.stat("/workspace/p1/exe"), sb.files.list("/workspace/p1/fd")):
            assert await reason_of(op) == "PERMISSION_DENIED"
        for path in ("/workspace/env", "/workspace/mem"):
            assert await reason_of(sb.files.read(path)) in ("PERMISSION_DENIED", "FILE_NOT_FOUND")
        assert await reason_of(sb.files.write("/workspace/env", b"x")) in (
            "PERMISSION_DENIED",
            "FILE_NOT_FOUND",
        )
        # Appending needs a regular file; a whole write replaces the FIFO.
        assert (
            await reason_of(sb.files.write("/workspace/fifo", b"x", append=True))
            == "NOT_A_REGULAR_FILE"
        )
        await asyncio.wait_for(sb.files.write("/workspace/fifo", b"now a file"), 30)
        assert (await sb.exec("test -f /workspace/fifo && cat /workspace/fifo")).stdout == (
            "now a file"
        )
        # The daemon still serves this sandbox and others.
        other = await client.create("local")
        await other.files.write("/workspace/a", b"fine")
        assert await other.files.read("/workspace/a") == b"fine"
        await other.destroy()
    finally:
        await sb.destroy()


SWAPPER = r"""
mkdir -p /workspace/real/sub && echo inside > /workspace/real/secret
while :; do
  rm -rf /workspace/d; ln -s {trap} /workspace/d
  rm -f /workspace/d; ln -s /workspace/real /workspace/d
  rm -f /workspace/d; mkdir -p /workspace/d/sub; echo own > /workspace/d/secret
done
"""


async def test_symlink_swap_race_never_reaches_the_host(client: Client, trap: Path) -> None:
    """Every host-side operation races a swapper; the host directory stays as it was
    and no answer carries host content."""
    before = snapshot(trap)
    sb = await client.create("local")
    swapper = await sb.start_process(["sh", "-c", SWAPPER.format(trap=trap)])
    try:
        for i in range(40):
            ops = [
                sb.files.read("/workspace/d/secret"),
                sb.files.write(f"/workspace/d/new-{i}", b"planted"),
                sb.files.write("/workspace/d/secret", b"overwritten"),
                sb.files.list("/workspace/d"),
                sb.files.stat("/workspace/d/secret"),
                sb.files.mkdir(f"/workspace/d/dir-{i}/x"),
                sb.files.move("/workspace/d/secret", f"/workspace/d/moved-{i}"),
                sb.files.remove("/workspace/d/sub", recursive=True),
                sb.files.remove(f"/workspace/d/moved-{i}"),
            ]
            for result in await asyncio.gather(*ops, return_exceptions=True):
                if isinstance(result, bytes):
                    assert b"host secret" not in result
                elif isinstance(result, BaseException) and not isinstance(result, ComputeSDKError):
                    raise result
        assert snapshot(trap) == before
        assert (trap / "secret").read_text() == "host secret\n"
    finally:
        await sb.process(swapper.id).kill()
        await sb.destroy()


async def test_file_api_sees_volumes_as_the_sandbox_does(client: Client) -> None:
    name = f"v-{uuid.uuid4().hex[:8]}"
    await client.volumes.create(name, size_mb=16)
    rw = await client.create("local", volumes=[{"name": name, "mount_path": "/data"}])
    ro = await client.create(
        "local", volumes=[{"name": name, "mount_path": "/data", "read_only": True}]
    )
    try:
        await rw.files.write("/data/from-api", b"via the API")
        assert (await rw.exec("cat /data/from-api")).stdout == "via the API"
        await rw.exec("echo from inside > /data/from-inside")
        assert await rw.files.read("/data/from-inside") == b"from inside\n"
        assert await ro.files.read("/data/from-api") == b"via the API"
        assert {f.name for f in await ro.files.list("/data")} >= {"from-api", "from-inside"}
        assert await reason_of(ro.files.write("/data/x", b"no")) == "READ_ONLY_FILESYSTEM"
        assert await reason_of(ro.files.remove("/data/from-api")) == "READ_ONLY_FILESYSTEM"
        assert await reason_of(rw.files.move("/data/from-api", "/workspace/x")) == (
            "CROSS_DEVICE_MOVE"
        )
    finally:
        await asyncio.gather(rw.destroy(), ro.destroy())
        await client.volumes.delete(name)


async def test_cancelled_write_keeps_the_old_file(sandbox: Sandbox) -> None:
    await sandbox.files.write("/workspace/doc", b"old content")
    sent = asyncio.Event()

    async def chunks() -> object:
        yield b"new " * 1024
        sent.set()
        await asyncio.sleep(3600)  # never finishes: the write is cancelled

    task = asyncio.create_task(sandbox.files.write("/workspace/doc", chunks()))
    await asyncio.wait_for(sent.wait(), 30)
    await asyncio.sleep(0.2)  # let the first chunk reach the daemon
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):  # the daemon notices the cancellation on its own time
        listing = await sandbox.exec("cat /workspace/doc; echo; ls -a /workspace")
        if "computesdk-" not in listing.stdout:
            break
        await asyncio.sleep(0.1)
    assert listing.stdout.startswith("old content\n"), listing.stdout
    assert "computesdk-" not in listing.stdout  # no temporary left behind
    # A completed overwrite keeps the file's owner and mode.
    await sandbox.exec("chmod 640 /workspace/doc && chown 1000:1000 /workspace/doc")
    await sandbox.files.write("/workspace/doc", b"replaced")
    r = await sandbox.exec("stat -c '%a %u %g' /workspace/doc; cat /workspace/doc")
    assert r.stdout == "640 1000 1000\nreplaced"


async def test_hard_limits_on_what_is_held_in_memory(sandbox: Sandbox) -> None:
    r = await sandbox.exec(
        "mkdir /workspace/many && cd /workspace/many && seq 1 100050 | xargs touch && echo ok",
        timeout_ms=120_000,
    )
    assert r.stdout == "ok\n", r.stderr
    assert await reason_of(sandbox.files.list("/workspace/many")) == "DIRECTORY_TOO_LARGE"
    await sandbox.exec("rm -rf /workspace/many")


async def test_a_write_without_its_finish_changes_nothing(sandbox: Sandbox) -> None:
    """A client that promised a finish and ended its stream without one (it went
    away mid-write) leaves the old file; one that never promised still writes, as
    clients from before the finish message do."""
    await sandbox.files.write("/workspace/kept", b"old content")

    async def requests(expect_finish: bool, finish: bool) -> AsyncIterator[fs_pb.WriteFileRequest]:
        header = fs_pb.WriteFileHeader(
            sandbox_id=sandbox.id, path="/workspace/kept", expect_finish=expect_finish
        )
        yield fs_pb.WriteFileRequest(header=header)
        yield fs_pb.WriteFileRequest(data=b"half a new")
        if finish:
            yield fs_pb.WriteFileRequest(finish=fs_pb.WriteFileFinish())

    with pytest.raises(ComputeSDKError) as err, translated():
        await sandbox.client.files.WriteFile(requests(True, False))
    assert err.value.reason == "WRITE_CANCELLED"
    assert await sandbox.files.read("/workspace/kept") == b"old content"
    await sandbox.client.files.WriteFile(requests(False, False))
    assert await sandbox.files.read("/workspace/kept") == b"half a new"
    await sandbox.client.files.WriteFile(requests(True, True))
    assert await sandbox.files.read("/workspace/kept") == b"half a new"
    listing = await sandbox.exec("ls -a /workspace")
    assert "computesdk-" not in listing.stdout  # nothing half-made left behind

    # An append cut short is cut back to where it began.
    async def append(finish: bool) -> AsyncIterator[fs_pb.WriteFileRequest]:
        header = fs_pb.WriteFileHeader(
            sandbox_id=sandbox.id, path="/workspace/kept", append=True, expect_finish=True
        )
        yield fs_pb.WriteFileRequest(header=header)
        yield fs_pb.WriteFileRequest(data=b" PARTIAL")
        if finish:
            yield fs_pb.WriteFileRequest(finish=fs_pb.WriteFileFinish())
            await asyncio.sleep(3600)  # the stream stays open: the finish alone ends it

    with pytest.raises(ComputeSDKError), translated():
        await sandbox.client.files.WriteFile(append(False))
    assert await sandbox.files.read("/workspace/kept") == b"half a new"
    await asyncio.wait_for(sandbox.client.files.WriteFile(append(True)), 30)
    assert await sandbox.files.read("/workspace/kept") == b"half a new PARTIAL"
