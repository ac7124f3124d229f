"""Clone and migrate carry /workspace and the env across providers."""

from __future__ import annotations

import os

import pytest

from computesdk import Client, SandboxNotFoundError, TemplateNotFoundError, UnavailableError
from conftest import DaemonProcess

BLOB = os.urandom(300_000)


async def _fill(sb: object) -> None:
    await sb.files.write("/workspace/app/main.py", "print('hello')\n")  # type: ignore[attr-defined]
    await sb.files.write("/workspace/app/data.bin", BLOB)  # type: ignore[attr-defined]


async def test_clone_from_local_to_docker_keeps_files_and_env(client: Client) -> None:
    src = await client.create("local", template="python", env={"STAGE": "dev"})
    await _fill(src)
    dst = await src.clone(provider="docker", env={"EXTRA": "1"})
    try:
        assert dst.provider == "docker" and dst.id != src.id
        assert await dst.files.read("/workspace/app/data.bin") == BLOB
        r = await dst.exec("python3 app/main.py; echo $STAGE $EXTRA")
        assert r.stdout == "hello\ndev 1\n"
        assert (await src.refresh()).state == "running"  # the source is untouched
        cloned = [e async for e in dst.events(types=["cloned"], follow=False)]
        assert cloned[0].attributes["source"] == src.id
    finally:
        await dst.destroy()
        await src.destroy()


async def test_migrate_from_e2b_to_local(client: Client) -> None:
    src = await client.create("e2b", env={"DEBUG": "true", "KEEP": "x"})
    await _fill(src)
    dst = await src.migrate(
        "local", template_mapping={"base": "python"}, env_mapping={"DEBUG": "APP_DEBUG"}
    )
    try:
        assert (dst.provider, dst.template) == ("local", "python")
        assert await dst.files.read("/workspace/app/data.bin") == BLOB
        assert (await dst.exec("echo $APP_DEBUG $KEEP")).stdout == "true x\n"
        with pytest.raises(SandboxNotFoundError):
            await src.refresh()
        types = [e.type async for e in src.events(follow=False)]
        assert types[-2:] == ["migrated", "destroyed"]
    finally:
        await dst.destroy()


async def test_failed_migrate_leaves_the_source_untouched(
    client: Client, daemon: DaemonProcess
) -> None:
    src = await client.create("local", env={"A": "1"})
    await _fill(src)
    before = {s.id for s in await client.list()}
    try:
        with pytest.raises(TemplateNotFoundError):
            await src.migrate("docker", template="no-such-template")
        fake = daemon.fakes["e2b"]
        # envd takes the set-up call and the start of the copy, then breaks mid-copy.
        fake.envd_budget = 2
        try:
            with pytest.raises(UnavailableError):
                await src.migrate("e2b", template="base")
        finally:
            fake.envd_budget = None
        assert any(r.endswith("/process.Process/SendInput") for r in fake.requests)
        assert {s.id for s in await client.list()} == before  # nothing half-made is left
        assert (await src.refresh()).state == "running"
        assert await src.files.read("/workspace/app/data.bin") == BLOB
        assert (await src.exec("echo $A")).stdout == "1\n"
    finally:
        await src.destroy()
