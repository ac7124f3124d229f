"""A member names itself (env SERVICE_NAME, metadata): a hostile one must not take
another member's name or id, write into its peers' hosts files, capture
localhost, or balloon what the daemon keeps. Defined outcome: names are DNS
labels, not reserved, first claim wins; anything else is refused (an event says
why, echoing at most 70 characters) and the member keeps the name it had."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from computesdk import Client, ComputeSDKError, Sandbox


async def until(what: str, ok: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await ok():
        assert time.monotonic() < deadline, f"{what}: not within {seconds}s"
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def net(client: Client) -> AsyncIterator[tuple[str, Sandbox, Sandbox]]:
    victim = await client.create("local", metadata={"service": "api"})
    attacker = await client.create("local")
    name = f"names-{uuid.uuid4().hex[:8]}"
    await client.networks.create(name, [victim, attacker])
    yield name, victim, attacker
    with contextlib.suppress(ComputeSDKError):
        await client.networks.delete(name)
    for sb in (victim, attacker):
        with contextlib.suppress(ComputeSDKError):
            await sb.destroy()


async def _names(client: Client, network: str) -> dict[str, str]:
    return {sid: n for n, (sid, _) in (await client.networks.get(network)).members.items()}


async def _refusals(client: Client, sb: Sandbox) -> list[dict[str, str]]:
    return [
        e.attributes
        async for e in client.events(
            sandbox_ids=[sb.id], types=["network.name_refused"], follow=False
        )
    ]


HOSTILE = [
    "api",  # the victim's name: first claim wins
    "localhost",  # reserved: would capture its peers' loopback
    "x" * 100_000,  # huge
    "evil\n10.0.0.1 api",  # a second hosts line
    "a.b",  # dots: not one label
    "-api",
    "ip6-localhost",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: repr(h[:12]))
async def test_a_hostile_service_name_is_refused_and_changes_nothing(
    client: Client, net: tuple[str, Sandbox, Sandbox], hostile: str
) -> None:
    network, victim, attacker = net
    before = await _names(client, network)
    hosts_before = (await victim.exec(["cat", "/etc/hosts"])).stdout
    await attacker.set_env("SERVICE_NAME", hostile)
    await until("a refusal", lambda: _refused(client, attacker))
    why = (await _refusals(client, attacker))[-1]
    assert len(why["name"]) <= 70 and "\n" not in why["why"]
    assert await _names(client, network) == before == {victim.id: "api", attacker.id: attacker.id}
    # Nothing went into anyone's hosts file.
    assert (await victim.exec(["cat", "/etc/hosts"])).stdout == hosts_before
    hosts = (await attacker.exec(["cat", "/etc/hosts"])).stdout
    assert "evil" not in hosts and "10.0.0.1" not in hosts and "xxxx" not in hosts
    for line in hosts.splitlines():
        if line.strip().endswith("localhost"):
            assert line.split()[0] in ("127.0.0.1", "::1"), hosts
    url = await client.networks.get_service_url(network, "api", 80)
    assert url == "http://api:80"


async def _refused(client: Client, sb: Sandbox) -> bool:
    return bool(await _refusals(client, sb))


async def test_a_member_cannot_take_another_members_sandbox_id(
    client: Client, net: tuple[str, Sandbox, Sandbox]
) -> None:
    network, victim, attacker = net
    await attacker.set_env("SERVICE_NAME", victim.id)
    await until("a refusal", lambda: _refused(client, attacker))
    assert (await _refusals(client, attacker))[-1]["why"] == "another member's sandbox id"
    names = await _names(client, network)
    assert names[attacker.id] == attacker.id
    # The id still reaches the victim, by the daemon and in the hosts files.
    url = await client.networks.get_service_url(network, victim.id, 80)
    assert url == "http://api:80"


async def test_queues_resolve_exact_members_first_and_bound_sender_labels(
    client: Client,
) -> None:
    victim = await client.create("local")
    attacker = await client.create("local")
    channel = f"names-{uuid.uuid4().hex[:8]}"
    try:
        await client.channels.connect(channel, [victim, attacker, "ops"])
        # Naming itself after a member (its id, or a named member) captures nothing.
        await attacker.set_env("SERVICE_NAME", victim.id)
        await client.channels.send(channel, "ops", victim, b"for the victim")
        await attacker.set_env("SERVICE_NAME", "ops")
        await client.channels.send(channel, victim, "ops", b"for ops")
        got = []
        async for m in client.channels.subscribe(channel, victim):
            got.append(m.text)
            break
        assert got == ["for the victim"]
        async for m in client.channels.subscribe(channel, "ops"):
            assert (m.sender, m.text) == (victim.id, "for ops")
            break
        # A sender label is a name: bounded, no controls.
        for label in ("x" * 200, "a\nb", ""):
            with pytest.raises(ComputeSDKError) as bad:
                await client.channels.send(channel, label, victim, b"x")
            assert bad.value.reason == "INVALID_MEMBERS"
        # Many labels share one sequence counter: the channel's record does not grow.
        seqs = [await client.channels.send(channel, f"l{i}", "ops", b"x") for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        with pytest.raises(ComputeSDKError) as unknown:
            await client.channels.send(channel, "ops", "x" * 100_000, b"x")
        assert unknown.value.reason == "MEMBER_NOT_FOUND"
        assert len(str(unknown.value)) < 2000
    finally:
        with contextlib.suppress(ComputeSDKError):
            await client.channels.delete(channel)
        await victim.destroy()
        await attacker.destroy()


async def test_a_sandbox_socket_reaches_only_its_own_channels(client: Client) -> None:
    # ATTACK: code in a sandbox that is a member of one channel names another
    # channel on its in-sandbox socket (the socket names the sender, not the
    # channel): it must neither post into that channel nor learn its members.
    mine, theirs = f"mine-{uuid.uuid4().hex[:6]}", f"theirs-{uuid.uuid4().hex[:6]}"
    attacker = await client.create()
    victim = await client.create(metadata={"service": "worker"})
    try:
        await client.channels.connect(mine, [attacker, "client"])
        await client.channels.connect(theirs, [victim, "client"])
        agent = "/.computesdk/agent"
        for channel in (theirs, f"missing-{uuid.uuid4().hex[:6]}"):
            sent = await attacker.exec([agent, "mq", "send", channel, "-", "rm -rf /"], check=False)
            assert sent.exit_code == 1 and "CHANNEL_NOT_FOUND" in sent.stderr, sent.stderr
            assert victim.id not in sent.stderr and "worker" not in sent.stderr
            got = await attacker.exec([agent, "mq", "recv", channel, "1"], check=False)
            assert got.exit_code == 1 and "CHANNEL_NOT_FOUND" in got.stderr, got.stderr
            assert victim.id not in got.stderr and "worker" not in got.stderr
        inbox = client.channels.subscribe(theirs, victim)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(inbox), 0.5)
        # Its own channel still works.
        ok = await attacker.exec([agent, "mq", "send", mine, "-", "hello"], check=False)
        assert ok.exit_code == 0, ok.stderr
    finally:
        for ch in (mine, theirs):
            with contextlib.suppress(ComputeSDKError):
                await client.channels.delete(ch)
        await attacker.destroy()
        await victim.destroy()
