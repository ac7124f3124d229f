"""Bad input gets a canonical status and a stable reason; the daemon keeps serving."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from computesdk import Client, InvalidArgumentError, PayloadTooLargeError, Sandbox
from computesdk.errors import from_rpc_error
from computesdk_api.process.v1 import process_pb2 as proc_pb
from conftest import DaemonProcess


async def test_client_that_disconnects_mid_exec(client: Client, sandbox: Sandbox) -> None:
    stream = sandbox.exec_stream("echo up; sleep 60")
    async for chunk in stream:
        assert chunk.text == "up\n"
        break  # walk away mid-stream: the call is cancelled
    await asyncio.sleep(0)
    for _ in range(200):
        procs = {p.process_id: p for p in await sandbox.processes()}
        if not procs[stream.process_id].running:
            break
        await asyncio.sleep(0.02)
    assert not procs[stream.process_id].running  # killed with the abandoned call
    # ... and its exit is still recorded as an event (by a watcher, a moment later).
    for _ in range(100):
        types = [e.type async for e in sandbox.events(follow=False)]
        if "process.exited" in types:
            break
        await asyncio.sleep(0.02)
    assert types.count("process.exited") == 1
    assert (await sandbox.exec("echo serving")).stdout == "serving\n"


async def test_exec_protocol_misuse(client: Client, sandbox: Sandbox) -> None:
    async def no_start() -> object:
        yield proc_pb.ExecRequest(stdin=b"x")

    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in client.processes.Exec(no_start()):
            pass
    assert from_rpc_error(e.value).reason == "EXEC_START_REQUIRED"
    with pytest.raises(InvalidArgumentError) as empty:
        await sandbox.exec("   ")
    assert empty.value.reason == "EMPTY_COMMAND"
    proc = await sandbox.start_process(["sleep", "5"])
    with pytest.raises(InvalidArgumentError) as sig:
        await proc.signal(999)
    assert sig.value.reason == "INVALID_SIGNAL"
    await proc.kill()


async def test_oversized_stdin_chunk(sandbox: Sandbox) -> None:
    stream = sandbox.exec_stream(["cat"], interactive=True)
    await stream._requests.put(proc_pb.ExecRequest(stdin=b"x" * (5 << 20)))
    with pytest.raises(PayloadTooLargeError):
        async for _ in stream:
            pass
    assert (await sandbox.exec("echo ok")).stdout == "ok\n"


async def test_health_and_reflection(daemon: DaemonProcess) -> None:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(
            health_pb2.HealthCheckRequest(service="computesdk.api.sandbox.v1.SandboxService")
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def ask() -> object:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for r in refl.ServerReflectionInfo(ask()):
            names = {s.name for s in r.list_services_response.service}
            break
        assert "computesdk.api.process.v1.ProcessService" in names


async def test_socket_is_private_to_its_owner(daemon: DaemonProcess) -> None:
    mode = stat.S_IMODE(daemon.socket.stat().st_mode)
    assert mode == 0o600
    probe = f"import socket;s=socket.socket(socket.AF_UNIX);s.connect('{daemon.socket}')"
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "PermissionError" in r.stderr
