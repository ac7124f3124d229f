"""The agent's network channel (issue 20: a pod's agent reached over the pod network):
the real computesdk-agent with -listen-tcp on 127.0.0.1 behind TLS and a token file,
and the daemon's end in providers/common/agentnet.py. The local provider's Unix
socket wire is tests/test_agent_wire.py and is unchanged by this."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from computesdkd.domain.errors import Unavailable
from computesdkd.domain.model import ExitStatus, Output
from computesdkd.providers.common import agentnet
from computesdkd.providers.common.agent import AgentConnection
from computesdkd.providers.common.agentpb import agent_pb2 as pb
from computesdkd.providers.local.layout import agent_binary

AGENT = agent_binary(os.environ)
pytestmark = pytest.mark.skipif(not AGENT.exists(), reason="scripts/setup.sh builds the agent")

StartAgent = Callable[..., Awaitable[tuple[asyncio.subprocess.Process, agentnet.Endpoint]]]


def secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o400)  # as a Kubernetes Secret volume with defaultMode 0400
    return path


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[StartAgent]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(
        *, tls: bool = True, port: int = 0, extra: Sequence[str] = ()
    ) -> tuple[asyncio.subprocess.Process, agentnet.Endpoint]:
        d = tmp_path / f"agent-{len(procs)}"
        d.mkdir()
        cred = agentnet.new_credentials()
        args = ["-listen-tcp", f"127.0.0.1:{port}", "-state", str(d / "state")]
        args += ["-token-file", str(secret(d / "token", cred.token + b"\n"))]
        if tls:
            args += ["-tls-cert", str(secret(d / "tls.crt", cred.cert_pem))]
            args += ["-tls-key", str(secret(d / "tls.key", cred.key_pem))]
        else:
            args.append("-plaintext")
        proc = await asyncio.create_subprocess_exec(
            str(AGENT), *args, *extra, stderr=asyncio.subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line.startswith("agent: serving on "), line
        port = int(line.rsplit(":", 1)[1])
        return proc, agentnet.Endpoint(
            "127.0.0.1", port, cred.token, cred.cert_sha256 if tls else None
        )

    yield start
    for p in procs:
        if p.returncode is None:
            p.terminate()
            await p.wait()


async def run(ep: agentnet.Endpoint, *args: str) -> tuple[bytes, bytes, ExitStatus]:
    """A command through the daemon-side connection, followed to its exit."""
    conn = AgentConnection(*await agentnet.open_stream(ep))
    try:
        await conn.request(pb.Request(start=pb.StartRequest(args=list(args), attach=True)))
        await conn.recv_reply(pb.ProcessInfo)
        out = {"stdout": b"", "stderr": b""}
        async for ev in conn.events():
            if isinstance(ev, Output):
                out[ev.stream] += ev.data
            elif isinstance(ev, ExitStatus):
                return out["stdout"], out["stderr"], ev
    finally:
        await conn.close()
    raise AssertionError("no exit status")


async def test_command_runs_over_tls(start_agent: StartAgent) -> None:
    _, ep = await start_agent()
    stdout, stderr, status = await run(ep, "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert (stdout, stderr, status.exit_code) == (b"out\n", b"err\n", 3)


async def test_wrong_token_refused(start_agent: StartAgent) -> None:
    _, ep = await start_agent()
    with pytest.raises(agentnet.AgentHandshakeFailed, match="refused"):
        await agentnet.open_stream(replace(ep, token=b"not-this-sandbox-token-not-this"))
    stdout, _, _ = await run(ep, "/bin/echo", "still served")
    assert stdout == b"still served\n"


async def test_another_sandboxs_token_refused(start_agent: StartAgent) -> None:
    _, ep_a = await start_agent()
    _, ep_b = await start_agent()
    with pytest.raises(agentnet.AgentHandshakeFailed):
        await agentnet.open_stream(replace(ep_a, token=ep_b.token))


async def test_wrong_certificate_refused_before_the_proof(start_agent: StartAgent) -> None:
    """An impostor at the pod's IP (another sandbox's agent here) never sees a proof."""
    _, ep_a = await start_agent()
    _, ep_b = await start_agent()
    with pytest.raises(agentnet.AgentHandshakeFailed, match="certificate"):
        await agentnet.open_stream(replace(ep_a, cert_sha256=ep_b.cert_sha256))


async def test_plaintext_is_opt_in_and_still_proves(start_agent: StartAgent) -> None:
    _, ep = await start_agent(tls=False)
    stdout, _, _ = await run(ep, "/bin/echo", "plain")
    assert stdout == b"plain\n"
    with pytest.raises(agentnet.AgentHandshakeFailed):
        await agentnet.open_stream(replace(ep, token=b"not-this-sandbox-token-not-this"))
    # a TLS client does not silently fall back to plaintext
    with pytest.raises(agentnet.AgentHandshakeFailed):
        await agentnet.open_stream(replace(ep, cert_sha256=b"\0" * 32))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wait_ready_waits_for_the_agent_to_listen(start_agent: StartAgent) -> None:
    port = free_port()
    cred = agentnet.new_credentials()
    with pytest.raises(Unavailable) as err:  # nothing listens there
        await agentnet.wait_ready(agentnet.Endpoint("127.0.0.1", port, cred.token, None), 0.3)
    assert err.value.reason == "AGENT_TIMEOUT"
    _, ep = await start_agent(port=port)
    await agentnet.wait_ready(ep, 60)
    stdout, _, _ = await run(ep, "/bin/echo", "ready")
    assert stdout == b"ready\n"


async def test_wait_ready_does_not_retry_a_refused_proof(start_agent: StartAgent) -> None:
    _, ep = await start_agent()
    with pytest.raises(agentnet.AgentHandshakeFailed):
        await agentnet.wait_ready(replace(ep, token=b"not-this-sandbox-token-not-this"), 60)


@pytest.mark.parametrize(
    "args",
    [
        ["-listen-tcp", "127.0.0.1:0"],  # no token
        ["-listen-tcp", "127.0.0.1:0", "-token-file", "{d}/token"],  # neither TLS nor -plaintext
        ["-listen-tcp", "127.0.0.1:0", "-token-file", "{d}/open", "-plaintext"],  # mode 0444
        ["-listen-tcp", "127.0.0.1:0", "-token-file", "{d}/short", "-plaintext"],
        ["-listen-tcp", "127.0.0.1:0", "-socket", "{d}/s", "-token-file", "{d}/token"],
        ["-listen-tcp", ":0", "-token-file", "{d}/token", "-plaintext"],  # cleartext off loopback
        [
            *("-listen-tcp", "127.0.0.1:0", "-token-file", "{d}/token", "-plaintext"),
            *("-handshake-timeout", "0s"),
        ],
    ],
)
async def test_unsafe_flags_refused(tmp_path: Path, args: list[str]) -> None:
    secret(tmp_path / "token", b"x" * 32)
    secret(tmp_path / "short", b"x" * 8)
    (tmp_path / "open").write_bytes(b"x" * 32)
    (tmp_path / "open").chmod(0o444)
    argv = [a.format(d=tmp_path) for a in args] + ["-state", str(tmp_path / "state")]
    proc = await asyncio.create_subprocess_exec(str(AGENT), *argv, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0, err
