"""Credentials come from the vendors' variables or from ones a config file names,
and never show up in errors or logs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from computesdk import Client, FailedPreconditionError
from conftest import DaemonProcess, new_daemon, start_e2b_fake
from fakes import e2b as e2b_fake
from fakes.asgi import ServerThread


@pytest_asyncio.fixture
async def e2b_daemon() -> AsyncIterator[tuple[DaemonProcess, ServerThread]]:
    d = new_daemon()
    _, servers = start_e2b_fake(d, api_key=None)
    yield d, servers
    d.cleanup()
    servers.stop()


async def test_config_file_names_the_variable_holding_the_key(
    e2b_daemon: tuple[DaemonProcess, ServerThread],
) -> None:
    d, _ = e2b_daemon
    config = d.root / "computesdkd.toml"
    config.write_text('[providers.e2b.env]\nE2B_API_KEY = "TEAM_A_E2B_KEY"\n')
    d.env["TEAM_A_E2B_KEY"] = e2b_fake.API_KEY
    d.extra_args = ["--config", str(config)]
    d.start()
    client = await Client.connect(socket=d.socket)
    sb = await client.create("e2b")
    assert (await sb.exec("echo via-config")).stdout == "via-config\n"
    await sb.destroy()
    await client.close()


async def test_a_rejected_key_never_appears_in_errors_or_logs(
    e2b_daemon: tuple[DaemonProcess, ServerThread],
) -> None:
    d, _ = e2b_daemon
    secret = "e2b_wrong_key_0123456789abcdef"
    d.env["E2B_API_KEY"] = secret
    d.start()
    client = await Client.connect(socket=d.socket)
    with pytest.raises(FailedPreconditionError) as e:
        await client.create("e2b")
    assert e.value.reason == "PROVIDER_AUTH_FAILED" and e.value.metadata["provider"] == "e2b"
    assert secret not in str(e.value) and secret not in repr(e.value.metadata)
    events = [ev async for ev in client.events(follow=False)]
    assert events and all(secret not in ev.message for ev in events)
    await client.close()
    assert d.stop() == 0
    assert secret not in d.log.read_text()
