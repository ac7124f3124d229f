"""The docker provider against the Engine: API version negotiation (Debian's
docker.io speaks 1.41, Docker 29 refuses below 1.44), and signals that reach an
exec whose pid the Engine reports only a while after the start."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from computesdk import Client
from computesdkd.domain.errors import Unavailable
from computesdkd.providers.docker.engine import MAX_API, Engine, negotiate


def test_the_highest_version_both_sides_speak_is_chosen() -> None:
    assert negotiate("1.41", "1.12") == (1, 41)  # Debian 12's docker.io
    assert negotiate("1.52", "1.44") == MAX_API  # Docker 29: ours, capped
    assert negotiate("1.47", "1.24") == (1, 47)
    for engine, engine_min in (("1.40", "1.12"), ("1.60", "1.50"), ("v2", "")):
        with pytest.raises(Unavailable) as e:
            negotiate(engine, engine_min)
        assert e.value.reason == "PROVIDER_UNAVAILABLE" and "docker" in e.value.message


async def test_calls_use_the_negotiated_version(tmp_path: Path) -> None:
    seen: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split()[1]
        seen.append(path)
        body = json.dumps({"ApiVersion": "1.52", "MinAPIVersion": "1.44"} if path == "/version"
                          else {"ok": True}).encode()  # fmt: skip
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        await writer.drain()
        writer.close()

    sock = tmp_path / "docker.sock"
    server = await asyncio.start_unix_server(answer, str(sock))
    engine = Engine(str(sock))
    try:
        await engine.negotiate_version()
        await engine.json("GET", "/info", "info")
    finally:
        await engine.close()
        server.close()
    assert seen == ["/version", "/v1.47/info"]


def _docker_up() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0  # type: ignore[list-item]


@pytest.mark.skipif(not _docker_up(), reason="needs dockerd (scripts/start-dockerd.sh)")
async def test_a_signal_sent_right_after_the_start_ends_the_exec(client: Client) -> None:
    async with await client.create("docker") as sb:
        stream = sb.exec_stream(["sleep", "30"])

        async def drain() -> None:
            async for _ in stream:
                pass

        task = asyncio.create_task(drain())
        while not stream.process_id and not task.done():
            await asyncio.sleep(0.01)
        await stream.signal(15)  # before the Engine has told anyone the pid
        # Bounded only so a regression fails instead of hanging: sleep would run 30 s.
        await asyncio.wait_for(task, 25)
        assert stream.exited is not None and stream.exited.signal == 15
