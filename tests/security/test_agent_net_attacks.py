"""A hostile peer on the pod network against the agent's TCP channel (agent -listen-tcp,
daemon/agent/netauth.go): no handshake, junk, a replayed handshake, a flood of
connections. The agent stays up, serves nothing to the attacker and keeps serving
the daemon. The attacker connects from 127.0.0.2, the daemon from 127.0.0.1: on a
cluster they are different pods, and the agent's limits are per address."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from asyncio import StreamReader as Reader
from asyncio import StreamWriter as Writer
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from computesdkd.providers.common import agentnet
from computesdkd.providers.common.agent import AgentConnection
from computesdkd.providers.common.agentpb import agent_pb2 as pb
from computesdkd.providers.local.layout import agent_binary

AGENT = agent_binary(os.environ)
pytestmark = pytest.mark.skipif(not AGENT.exists(), reason="scripts/setup.sh builds the agent")
ATTACKER = "127.0.0.2"


class Agent:
    def __init__(self, proc: asyncio.subprocess.Process, ep: agentnet.Endpoint) -> None:
        self.proc, self.ep = proc, ep

    async def serves_the_daemon(self) -> None:
        assert self.proc.returncode is None, "the agent died"
        conn = AgentConnection(*await agentnet.open_stream(self.ep))
        try:
            await conn.request(pb.Request(ping=pb.PingRequest()))
            assert (await conn.recv_reply(pb.PingReply)).pid == self.proc.pid
        finally:
            await conn.close()

    async def attacker(self, *, tls: bool) -> tuple[Reader, Writer]:
        ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return await asyncio.open_connection(
            self.ep.host, self.ep.port, ssl=ctx, local_addr=(ATTACKER, 0)
        )


StartAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[StartAgent]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(*, tls: bool = True) -> Agent:
        d = tmp_path / f"agent-{len(procs)}"
        d.mkdir()
        cred = agentnet.new_credentials()
        files = {"token": cred.token, "tls.crt": cred.cert_pem, "tls.key": cred.key_pem}
        for name, data in files.items():
            (d / name).write_bytes(data)
            (d / name).chmod(0o400)
        args = ["-listen-tcp", "127.0.0.1:0", "-state", str(d / "state")]
        args += ["-token-file", str(d / "token"), "-handshake-timeout", "300ms"]
        args += ["-ban", "1h"]  # no race with a slow machine: a ban lasts the test
        if tls:
            args += ["-tls-cert", str(d / "tls.crt"), "-tls-key", str(d / "tls.key")]
        else:
            args.append("-plaintext")
        proc = await asyncio.create_subprocess_exec(
            str(AGENT), *args, stderr=asyncio.subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line.startswith("agent: serving on "), line
        port = int(line.rsplit(":", 1)[1])
        pin = cred.cert_sha256 if tls else None
        return Agent(proc, agentnet.Endpoint("127.0.0.1", port, cred.token, pin))

    yield start
    for p in procs:
        if p.returncode is None:
            p.terminate()
            await p.wait()


async def hung_up(r: Reader) -> bytes:
    """All the agent sends until it closes the connection (it must close it)."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        return await asyncio.wait_for(r.read(), 60)
    return b""


def served(data: bytes) -> bool:
    """Whether anything beyond the agent's hello (5 + 32 bytes) came back."""
    return len(data) > 5 + agentnet.NONCE


@pytest.mark.parametrize("tls", [True, False])
async def test_no_handshake_is_cut_off(start_agent: StartAgent, tls: bool) -> None:
    agent = await start_agent(tls=tls)
    r, w = await agent.attacker(tls=tls)
    await agent.serves_the_daemon()  # while the idle peer holds its connection
    assert not served(await hung_up(r))  # the deadline (300 ms here) closes it
    w.close()
    await agent.serves_the_daemon()


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00" * 4096,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"A\xff\xff\xff\xff",  # an auth frame claiming 4 GiB
        b"Q\x00\x00\x00\x02\x0a\x00",  # a request frame, no proof
        b"A\x00\x00\x00\x40" + b"\x00" * 64,  # a proof of zeros
    ],
)
async def test_junk_is_refused(start_agent: StartAgent, junk: bytes) -> None:
    agent = await start_agent()
    for tls in (True, False):  # inside TLS, and raw bytes where TLS is expected
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            r, w = await agent.attacker(tls=tls)
            w.write(junk)
            assert not served(await hung_up(r))
            w.close()
    await agent.serves_the_daemon()


async def test_replayed_session_is_refused(start_agent: StartAgent) -> None:
    """A sniffer recorded a whole daemon session (plaintext agent: TLS would hide it)
    and plays the daemon's bytes back: the proof is bound to the agent's nonce."""
    agent = await start_agent(tls=False)
    recorded = bytearray()

    async def pipe(src: Reader, dst: Writer, keep: bool) -> None:
        while data := await src.read(65536):
            if keep:
                recorded.extend(data)
            dst.write(data)
            await dst.drain()
        dst.close()

    async def relay(cr: Reader, cw: Writer) -> None:
        ar, aw = await asyncio.open_connection(agent.ep.host, agent.ep.port)
        await asyncio.gather(pipe(cr, aw, True), pipe(ar, cw, False))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    via_proxy = Agent(agent.proc, agentnet.Endpoint("127.0.0.1", port, agent.ep.token, None))
    await via_proxy.serves_the_daemon()
    proxy.close()
    assert recorded.startswith(b"A\x00\x00\x00\x40")
    r, w = await agent.attacker(tls=False)
    w.write(bytes(recorded))
    assert not served(await hung_up(r))
    await agent.serves_the_daemon()


async def test_flood_of_connections(start_agent: StartAgent) -> None:
    """Hundreds of idle connections and failed proofs from one address: it is capped
    and then turned away at accept, and the daemon is served throughout."""
    agent = await start_agent(tls=False)
    held: list[tuple[Reader, Writer]] = []
    for _ in range(300):
        with contextlib.suppress(OSError):
            held.append(await agent.attacker(tls=False))
    await agent.serves_the_daemon()
    results = await asyncio.gather(*(hung_up(r) for r, _ in held))
    assert not any(served(d) for d in results)
    for _, w in held:
        w.close()
    # those handshakes failed: the address is banned now, before any hello
    r, w = await agent.attacker(tls=False)
    assert await hung_up(r) == b""
    w.close()
    await agent.serves_the_daemon()
    assert agent.proc.returncode is None
