"""Shared networks and message queues name members by what the user controls
(issue 17): env SERVICE_NAME, live, else metadata service / name, else the name a
record create gave, else the sandbox id; first claim wins."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from computesdk import Client, ComputeSDKError, Sandbox


async def until(what: str, ok: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await ok():
        assert time.monotonic() < deadline, f"{what}: not within {seconds}s"
        await asyncio.sleep(0.05)


async def names(client: Client, network: str) -> dict[str, str]:
    """sandbox id -> its name on the network."""
    info = await client.networks.get(network)
    return {sid: name for name, (sid, _) in info.members.items()}


async def resolves(sb: Sandbox, name: str) -> bool:
    return (await sb.exec(["getent", "hosts", name], check=False)).exit_code == 0


@pytest_asyncio.fixture
async def trio(client: Client) -> AsyncIterator[list[Sandbox]]:
    made = [await client.create("local") for _ in range(3)]
    yield made
    for sb in made:
        with contextlib.suppress(ComputeSDKError):
            await sb.destroy()


async def test_names_come_from_env_then_metadata_then_the_record_then_the_id(
    client: Client, trio: list[Sandbox]
) -> None:
    a, b, c = trio
    await b.set_env("SERVICE_NAME", "Billing")  # DNS is case-insensitive: "billing"
    net = await client.networks.create("spec-names", [a, b, c])
    try:
        got = await names(client, "spec-names")
        assert got == {a.id: a.id, b.id: "billing", c.id: c.id}
        assert await resolves(a, "billing")
        # Set after the network was made (the spec's order): the name follows.
        await a.set_env("SERVICE_NAME", "web")
        await until("web", lambda: _has(client, a, "web"))
        # The hosts blocks follow the record (members resolve it a moment later).
        await until("c resolves web", lambda: resolves(c, "web"))
        assert await resolves(b, "web")
        assert await client.networks.get_service_url("spec-names", "web", 8080) == "http://web:8080"
        # Unset: back to the id, and "web" no longer resolves.
        await a.set_env({}, unset=["SERVICE_NAME"])
        await until("unset", lambda: _has(client, a, a.id))
        await until("web gone", lambda: _not(resolves(c, "web")))
        with pytest.raises(ComputeSDKError) as gone:
            await client.networks.get_service_url("spec-names", "web", 80)
        assert gone.value.reason == "MEMBER_NOT_FOUND" and "SERVICE_NAME" in str(gone.value)
        types = [e.type async for e in client.events(sandbox_ids=[a.id], follow=False)]
        assert types.count("network.renamed") == 2
        assert net.name == "spec-names"
    finally:
        await client.networks.delete("spec-names")


async def _has(client: Client, sb: Sandbox, name: str) -> bool:
    return (await names(client, "spec-names")).get(sb.id) == name


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_metadata_and_record_names(client: Client) -> None:
    a = await client.create("local", metadata={"service": "db", "name": "ignored"})
    b = await client.create("local", metadata={"name": "cache"})
    c = await client.create("local")
    try:
        await client.networks.create("spec-meta", {"first": a, "second": b, "third": c})
        got = {sid: n for n, (sid, _) in (await client.networks.get("spec-meta")).members.items()}
        # Metadata beats the record's name; the record's name beats the id.
        assert got == {a.id: "db", b.id: "cache", c.id: "third"}
        assert await resolves(c, "db") and await resolves(a, "third")
        await client.networks.delete("spec-meta")
    finally:
        for sb in (a, b, c):
            await sb.destroy()


async def test_first_claim_wins_and_a_freed_name_passes_on(
    client: Client, trio: list[Sandbox]
) -> None:
    a, b, c = trio
    await client.networks.create("spec-claim", [a, b, c])
    try:
        await a.set_env("SERVICE_NAME", "api")
        await until("a is api", lambda: _named(client, "spec-claim", a, "api"))
        await b.set_env("SERVICE_NAME", "api")
        # b is told, and keeps its id; a keeps the name.
        await until(
            "refusal",
            lambda: _event(client, b, "network.name_refused", "held by another member"),
        )
        assert (await names(client, "spec-claim"))[b.id] == b.id
        # a gives the name up: b, which wants it, gets it.
        await a.set_env("SERVICE_NAME", "gateway")
        await until("b is api", lambda: _named(client, "spec-claim", b, "api"))
        assert (await names(client, "spec-claim"))[a.id] == "gateway"
        # A member that leaves frees its name for one that wants it.
        await c.set_env("SERVICE_NAME", "gateway")
        await a.destroy()
        await until("c is gateway", lambda: _named(client, "spec-claim", c, "gateway"))
        await until("b resolves gateway", lambda: resolves(b, "gateway"))
    finally:
        await client.networks.delete("spec-claim")


async def _named(client: Client, network: str, sb: Sandbox, name: str) -> bool:
    return (await names(client, network)).get(sb.id) == name


async def _event(client: Client, sb: Sandbox, type_: str, why: str) -> bool:
    async for e in client.events(sandbox_ids=[sb.id], types=[type_], follow=False):
        if e.attributes.get("why") == why:
            return True
    return False


async def test_queues_address_members_by_service_name(client: Client) -> None:
    web = await client.create("local")
    api = await client.create("local")
    try:
        await client.channels.connect("spec-mq", [web, api])
        with pytest.raises(ComputeSDKError) as unknown:
            await client.channels.send("spec-mq", "web", "api", b"{}")
        assert unknown.value.reason == "MEMBER_NOT_FOUND"
        assert "SERVICE_NAME" in str(unknown.value) and api.id in str(unknown.value)
        # Named at once: the queue reads the env at each call.
        await api.set_env("SERVICE_NAME", "api")
        await client.channels.send("spec-mq", "web", "api", b'{"action": "process-data"}')
        # A sender that is no member is its label; one that is, is the member.
        await web.set_env("SERVICE_NAME", "web")
        await client.channels.send("spec-mq", "Web", "api", b'"second"')
        got = []
        async for m in client.channels.subscribe("spec-mq", "api"):
            got.append((m.sender, m.recipient, m.json()))
            if len(got) == 2:
                await client.channels.ack("spec-mq", "api", m.sequence)
                break
        assert got == [("web", api.id, {"action": "process-data"}), (web.id, api.id, "second")]
        await client.channels.delete("spec-mq")
    finally:
        await web.destroy()
        await api.destroy()
