"""The daemon's end of the agent wire (proto/computesdk/agent/v1) against a hostile
agent: every reply is untrusted. No sandbox needed: a fake agent on a temp socket."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from computesdkd.domain.errors import AGENT_REASONS, Internal, NotFound
from computesdkd.providers.common import agent as wire
from computesdkd.providers.common.agentpb import agent_pb2 as pb

Reply = Callable[[bytes], bytes]  # the request frame's payload -> the bytes sent back
MakeAgent = Callable[[Reply], Awaitable[wire.Agent]]


def frame(kind: str, payload: bytes) -> bytes:
    return struct.pack(">BI", ord(kind), len(payload)) + payload


@pytest.fixture
async def fake_agent(tmp_path: Path) -> AsyncIterator[MakeAgent]:
    """Starts fake agents, each answering one request per connection with reply()."""
    servers: list[asyncio.Server] = []

    async def make(reply: Reply) -> wire.Agent:
        path = tmp_path / f"agent-{len(servers)}.sock"

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            kind, n = struct.unpack(">BI", await r.readexactly(5))
            assert kind == ord("Q")
            w.write(reply(await r.readexactly(n)))
            await w.drain()
            w.close()

        servers.append(await asyncio.start_unix_server(serve, str(path)))
        return wire.Agent(path)

    yield make
    for server in servers:
        server.close()


def test_every_reason_the_daemon_knows_has_a_code() -> None:
    assert set(wire._REASON_OF.values()) == set(AGENT_REASONS)
    assert pb.ERROR_CODE_INTERNAL not in wire._REASON_OF


def test_errors_map_through_the_daemons_table() -> None:
    known = pb.Error(code=pb.ERROR_CODE_PROCESS_NOT_FOUND, message="no process 'x'")
    err = wire._agent_error(known.SerializeToString())
    assert isinstance(err, NotFound) and err.reason == "PROCESS_NOT_FOUND"
    for code in (0, pb.ERROR_CODE_INTERNAL, 999, -5):
        err = wire._agent_error(pb.Error(code=code, message="x" * 10_000).SerializeToString())
        assert type(err) is Internal and err.reason == "AGENT_ERROR"
        assert len(err.message) < 600


@pytest.mark.parametrize(
    "info",
    [
        pb.ProcessInfo(pid=1),  # no id
        pb.ProcessInfo(id="p", pid=-1),
        pb.ProcessInfo(id="p", stdout_bytes=-1),
        pb.ProcessInfo(id="p", stderr_bytes=-(1 << 40)),
        pb.ProcessInfo(id="p", start_unix_ms=-1),
        pb.ProcessInfo(id="p", tag="t" * 5000),
        pb.ProcessInfo(id="p" * 5000),
        pb.ProcessInfo(id="p", args=["a"] * (wire.MAX_ARGS + 1)),
        pb.ProcessInfo(id="p", exit=pb.ExitStatus(exit_code=256)),
        pb.ProcessInfo(id="p", exit=pb.ExitStatus(exit_code=-2)),
        pb.ProcessInfo(id="p", exit=pb.ExitStatus(signal=65)),
        pb.ProcessInfo(id="p", exit=pb.ExitStatus(duration_ms=-1)),
    ],
)
def test_what_protobuf_cannot_check_is_checked(info: pb.ProcessInfo) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.process_info(wire.decode(pb.ProcessInfo, info.SerializeToString()))


def test_garbage_and_oversized_messages_are_protocol_errors() -> None:
    for body in (b"\xff", b"\x0a\x05ab", b'{"id": "p"}', b"\x0a\x01\xff"):
        with pytest.raises(wire.ProtocolError):
            wire.decode(pb.ProcessInfo, body)
    with pytest.raises(wire.ProtocolError):
        wire.decode(pb.ListReply, b"\x00" * (wire.MAX_MESSAGE_BYTES + 1))
    ok = pb.ProcessInfo(id="proc-1", pid=7, args=["sh"], running=True)
    assert wire.process_info(wire.decode(pb.ProcessInfo, ok.SerializeToString())).pid == 7


async def test_a_hostile_agent_over_the_socket(fake_agent: MakeAgent) -> None:
    def error_with_its_own_reason(_: bytes) -> bytes:
        return frame("R", pb.Error(code=77, message="SANDBOX_NOT_FOUND").SerializeToString())

    with pytest.raises(Internal) as exc:
        await (await fake_agent(error_with_its_own_reason)).ping()
    assert exc.value.reason == "AGENT_ERROR"

    for reply in (
        lambda _: frame("J", b"\xff\xff"),  # not a PingReply
        lambda _: frame("J", pb.PingReply(pid=-3).SerializeToString()),
        lambda _: frame("Z", b""),  # no such frame type
        lambda _: struct.pack(">BI", ord("J"), wire.MAX_FRAME + 1),  # never read
    ):
        with pytest.raises(wire.ProtocolError):
            await (await fake_agent(reply)).ping()

    def pong(req: bytes) -> bytes:
        assert pb.Request.FromString(req).WhichOneof("op") == "ping"
        return frame("J", pb.PingReply(pid=1).SerializeToString())

    assert await (await fake_agent(pong)).ping() == 1
