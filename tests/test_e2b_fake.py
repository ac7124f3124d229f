"""Keeps the E2B fake honest: E2B's own SDK, unmodified, drives it."""

from __future__ import annotations

import pytest
from e2b import AsyncSandbox, CommandExitException, NotFoundException

from conftest import DaemonProcess


@pytest.fixture
def e2b_env(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL"):
        monkeypatch.setenv(key, daemon.env[key])
    monkeypatch.setenv("E2B_HTTP_VERSION", "1.1")  # the fake serves HTTP/1.1 only


async def test_official_sdk_against_the_fake(e2b_env: None) -> None:
    sbx = await AsyncSandbox.create(
        template="base", timeout=120, envs={"GREETING": "hi"}, metadata={"owner": "sdk-test"}
    )
    try:
        result = await sbx.commands.run("echo $GREETING; echo to-stderr >&2")
        assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "to-stderr\n", 0)
        with pytest.raises(CommandExitException) as failed:
            await sbx.commands.run("exit 3")
        assert failed.value.exit_code == 3

        handle = await sbx.commands.run("cat", background=True, stdin=True)
        await sbx.commands.send_stdin(handle.pid, "piped input")
        await sbx.commands.close_stdin(handle.pid)
        assert (await handle.wait()).stdout == "piped input"

        await sbx.files.write("/workspace/notes/a.txt", "hello from the sdk")
        assert await sbx.files.read("/workspace/notes/a.txt") == "hello from the sdk"
        names = [e.name for e in await sbx.files.list("/workspace/notes")]
        assert names == ["a.txt"]
        assert await sbx.files.exists("/workspace/notes/a.txt")
        await sbx.files.rename("/workspace/notes/a.txt", "/workspace/notes/b.txt")
        await sbx.files.remove("/workspace/notes/b.txt")
        assert not await sbx.files.exists("/workspace/notes/b.txt")

        info = await sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id and info.metadata == {"owner": "sdk-test"}
        await sbx.set_timeout(300)
    finally:
        await sbx.kill()
    with pytest.raises(NotFoundException):
        await AsyncSandbox.connect(sbx.sandbox_id)
