"""The client's one call path against a small in-process server: calls wait for
the daemon by the channel's service config, stream errors are typed while
iterating, and exec picks RunCommand from the provider's capabilities."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from computesdk import Client, Sandbox, SandboxNotFoundError
from computesdk_api.events.v1 import events_pb2, events_pb2_grpc
from computesdk_api.process.v1 import process_pb2, process_pb2_grpc
from computesdk_api.provider.v1 import provider_pb2, provider_pb2_grpc
from computesdk_api.sandbox.v1 import sandbox_pb2

GONE = "sandbox sbx-1 is gone: Straße é 日本"  # non-ASCII, as paths and names can be


class FakeDaemon(
    provider_pb2_grpc.ProviderServiceServicer,
    events_pb2_grpc.EventServiceServicer,
    process_pb2_grpc.ProcessServiceServicer,
):
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def ListProviders(self, request: Any, context: Any) -> Any:
        self.calls["ListProviders"] += 1
        return provider_pb2.ListProvidersResponse(
            providers=[
                provider_pb2.Provider(name="local", capabilities=["exec", "exec.resume"]),
                provider_pb2.Provider(name="remote", capabilities=["exec"]),
            ]
        )

    async def RunCommand(self, request: Any, context: Any) -> Any:
        self.calls["RunCommand"] += 1
        return process_pb2.RunCommandResponse(stdout=b"run\n", exited=process_pb2.Exited())

    async def Exec(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        self.calls["Exec"] += 1
        await anext(aiter(requests))  # the start
        yield process_pb2.ExecResponse(started=process_pb2.Started(process_id="p", pid=1))
        yield process_pb2.ExecResponse(stdout=process_pb2.Output(data=b"exec\n"))
        yield process_pb2.ExecResponse(exited=process_pb2.Exited())

    async def SubscribeEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield events_pb2.SubscribeEventsResponse(
            event=events_pb2.Event(sequence=1, sandbox_id="sbx-1", type="created")
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason="SANDBOX_NOT_FOUND", metadata={"id": "1"}))
        st = rpc_status.to_status(
            status_pb2.Status(code=code_pb2.NOT_FOUND, message=GONE, details=[detail])
        )
        await context.abort(st.code, st.details, st.trailing_metadata)


async def _serve(socket: Path, fake: FakeDaemon) -> grpc.aio.Server:
    server = grpc.aio.server()
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(fake, server)
    events_pb2_grpc.add_EventServiceServicer_to_server(fake, server)
    process_pb2_grpc.add_ProcessServiceServicer_to_server(fake, server)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    return server


async def test_a_call_waits_for_a_daemon_that_is_not_up_yet(tmp_path: Path) -> None:
    socket, fake = tmp_path / "d.sock", FakeDaemon()
    client = Client(f"unix:{socket}")  # no connect(): that one fails fast without a socket
    try:
        call = asyncio.create_task(client.providers())
        await asyncio.sleep(0.5)
        assert not call.done()  # waiting (service config), not failed with UNAVAILABLE
        server = await _serve(socket, fake)
        assert [p.name for p in await asyncio.wait_for(call, 10)] == ["local", "remote"]
        await server.stop(None)
    finally:
        await client.close()


async def test_errors_are_typed_while_a_stream_is_read(tmp_path: Path) -> None:
    server = await _serve(tmp_path / "d.sock", FakeDaemon())
    client = await Client.connect(socket=tmp_path / "d.sock")
    try:
        seen = []
        with pytest.raises(SandboxNotFoundError) as err:
            async for ev in client.events(follow=False):
                seen.append(ev.type)
        assert seen == ["created"]
        assert (err.value.reason, err.value.message) == ("SANDBOX_NOT_FOUND", GONE)
        assert err.value.metadata == {"id": "1"}
    finally:
        await client.close()
        await server.stop(None)


async def test_exec_runs_command_only_where_the_provider_can_resume(tmp_path: Path) -> None:
    fake = FakeDaemon()
    server = await _serve(tmp_path / "d.sock", fake)
    client = await Client.connect(socket=tmp_path / "d.sock")
    try:
        local = Sandbox(client, sandbox_pb2.Sandbox(id="a", provider="local"))
        remote = Sandbox(client, sandbox_pb2.Sandbox(id="b", provider="remote"))
        elsewhere = Sandbox(client, sandbox_pb2.Sandbox(id="c", provider="unknown"))
        for _ in range(2):
            assert (await local.exec("true")).stdout == "run\n"
            assert (await remote.exec("true")).stdout == "exec\n"
            assert (await elsewhere.exec("true")).stdout == "exec\n"
        assert "exec.resume" in await client.capabilities("local")
        # Asked once per provider: one answer covers the listed ones, the unlisted
        # one costs one more and is then remembered as having nothing.
        assert fake.calls == {"ListProviders": 2, "RunCommand": 2, "Exec": 4}
    finally:
        await client.close()
        await server.stop(None)
