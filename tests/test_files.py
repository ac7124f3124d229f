from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import grpc
import pytest

from computesdk import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    PayloadTooLargeError,
    ResourceExhaustedError,
    Resources,
    Sandbox,
    SandboxFileNotFoundError,
)
from computesdk_api.filesystem.v1 import filesystem_pb2 as fs_pb
from conftest import DaemonProcess


async def test_large_file_round_trip(sandbox: Sandbox) -> None:
    data = os.urandom(20 * 1024 * 1024 + 123)
    info = await sandbox.files.write("/workspace/big.bin", data)
    assert info.size == len(data) and info.type == "file"
    assert await sandbox.files.read("/workspace/big.bin") == data
    r = await sandbox.exec("sha256sum /workspace/big.bin && stat -c %u big.bin")
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert r.stdout.split()[-1] == "0"  # owned by root inside the sandbox
    assert await sandbox.files.read("big.bin", offset=10, length=5) == data[10:15]


async def test_directory_operations(sandbox: Sandbox) -> None:
    await sandbox.files.mkdir("/workspace/a/b/c")
    await sandbox.files.write("a/b/c/one.txt", "1")
    await sandbox.files.write("a/b/c/one.txt", "+2", append=True)
    assert await sandbox.files.read_text("a/b/c/one.txt") == "1+2"
    names = [(f.name, f.type) for f in await sandbox.files.list("/workspace/a/b/c")]
    assert names == [("one.txt", "file")]
    moved = await sandbox.files.move("a/b/c/one.txt", "/tmp/two.txt")
    assert moved.path == "/tmp/two.txt"
    assert (await sandbox.exec("cat /tmp/two.txt")).stdout == "1+2"
    with pytest.raises(FailedPreconditionError) as e:
        await sandbox.files.remove("/workspace/a")
    assert e.value.reason in ("DIRECTORY_NOT_EMPTY", "IS_A_DIRECTORY")
    await sandbox.files.remove("/workspace/a", recursive=True)
    assert not await sandbox.files.exists("/workspace/a")
    with pytest.raises(SandboxFileNotFoundError):
        await sandbox.files.stat("/workspace/nothing")


async def test_paths_cannot_leave_the_sandbox(sandbox: Sandbox, daemon: DaemonProcess) -> None:
    for bad in ("../../etc/shadow", "/workspace/../../../etc/passwd", "/.."):
        with pytest.raises(PathOutsideSandboxError) as e:
            await sandbox.files.read(bad)
        assert e.value.reason == "PATH_OUTSIDE_SANDBOX"
    secret = Path("/var/tmp") / f"host-secret-{uuid.uuid4().hex}"
    secret.write_text("host only")
    try:
        # An absolute path means the sandbox's own tree: the host file is not there.
        with pytest.raises(SandboxFileNotFoundError):
            await sandbox.files.read(str(secret))
        with pytest.raises(SandboxFileNotFoundError):
            await sandbox.files.read(str(daemon.state / "state.db"))
        # Symlinks planted inside resolve inside, however many ".." they hold.
        await sandbox.exec(
            f"ln -s /../../../..{secret} /workspace/link; "
            "ln -s ../../../../../.. /workspace/up; "
            "ln -s /etc/hostname /workspace/host"
        )
        with pytest.raises(SandboxFileNotFoundError):
            await sandbox.files.read("link")
        with pytest.raises(SandboxFileNotFoundError):
            await sandbox.files.read(f"up{secret}")
        assert await sandbox.files.read("host") == b"sandbox\n"
        # Writing through a symlink cannot create files on the host either.
        await sandbox.exec("ln -s /../../../../var/tmp /workspace/out")
        await sandbox.files.write(f"out/{secret.name}-written", "x")
        assert not Path(f"{secret}-written").exists()
    finally:
        secret.unlink()


async def test_bad_paths_get_clear_reasons(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        await sandbox.files.read("a\x00b")
    assert e.value.reason == "INVALID_PATH"
    with pytest.raises(FailedPreconditionError) as p:
        await sandbox.files.read("/proc/self/environ")
    assert p.value.reason == "PATH_NOT_ACCESSIBLE"
    with pytest.raises(InvalidArgumentError):
        await sandbox.files.read("x" * 5000)


async def test_oversized_chunk_is_refused_and_daemon_serves_on(
    client: Client, sandbox: Sandbox
) -> None:
    async def one_big_chunk() -> object:
        yield fs_pb.WriteFileRequest(
            header=fs_pb.WriteFileHeader(sandbox_id=sandbox.id, path="/workspace/huge")
        )
        yield fs_pb.WriteFileRequest(data=b"x" * (5 * 1024 * 1024))

    from computesdk.errors import from_rpc_error

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.files.WriteFile(one_big_chunk())
    err = from_rpc_error(e.value)
    assert isinstance(err, PayloadTooLargeError) and err.reason == "PAYLOAD_TOO_LARGE"
    # Beyond the transport's own limit, gRPC itself refuses with RESOURCE_EXHAUSTED.
    target = client.target
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 100 << 20)]
    ) as ch:
        stub = __import__(
            "computesdk_api.process.v1.process_pb2_grpc", fromlist=["x"]
        ).ProcessServiceStub(ch)
        from computesdk_api.process.v1 import process_pb2 as proc_pb

        with pytest.raises(grpc.aio.AioRpcError) as big:
            await stub.WriteStdin(
                proc_pb.WriteStdinRequest(
                    sandbox_id=sandbox.id, process_id="proc-1", data=b"y" * (70 << 20)
                )
            )
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await sandbox.exec("echo fine")).stdout == "fine\n"


async def test_disk_limit_is_enforced(client: Client) -> None:
    async with await client.create(resources=Resources(disk_mb=64)) as sb:
        r = await sb.exec("dd if=/dev/zero of=/workspace/fill bs=1M count=100", check=False)
        assert r.exit_code != 0 and "No space left" in r.stderr
        with pytest.raises(ResourceExhaustedError) as e:
            await sb.files.write("/workspace/more", b"z" * (8 << 20))
        assert e.value.reason == "DISK_FULL"
