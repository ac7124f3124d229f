"""Pools, batches, groups, shared networks, message channels, reset and env,
against the real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator

import pytest

from computesdk import (
    Client,
    ComputeSDKError,
    ResourceExhaustedError,
    Sandbox,
    TemplateNotFoundError,
    UnsupportedError,
)
from conftest import DaemonProcess, new_daemon

MARKERS = "/tmp/.computesdk-marker /var/tmp/.computesdk-marker"


async def _until(pred: object, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def _leave_markers(sb: Sandbox) -> None:
    r = await sb.exec(f"touch {MARKERS} && sleep 1000 >/dev/null 2>&1 & echo started")
    assert r.exit_code == 0


async def _has_markers(sb: Sandbox) -> bool:
    r = await sb.exec(f"ls {MARKERS}", check=False)
    return r.exit_code == 0


# ---------------------------------------------------------------- pools


async def test_pool_acquire_release_and_fresh_creates(
    private: tuple[DaemonProcess, Client],
) -> None:
    _, c = private
    await c.pools.create("py", provider="local", template="python", min=2, max=3)

    async def warm() -> bool:
        return (await c.pools.get("py")).idle >= 2

    await _until(warm)
    assert await c.list() == []  # idle pool members are the daemon's, not listed

    # Acquire, dirty it, release soft: processes are gone, files stay.
    sb = await c.pools.acquire("py", metadata={"user": "a"})
    assert sb.metadata["user"] == "a"
    await _leave_markers(sb)
    assert await sb.release() is True
    procs = await sb.processes()
    assert procs and not any(p.running for p in procs)
    assert await _has_markers(sb)

    # A soft-reset sandbox is never what create hands out: create gets a fresh one.
    created = [await c.create("local", template="python") for _ in range(2)]
    for s in created:
        assert s.id != sb.id
        assert not await _has_markers(s)
    info = await c.pools.get("py")
    assert info.create_draws_total >= 1

    # Hard release: the files are gone too, and create may take it again.
    again = await c.pools.acquire("py")
    assert again.id == sb.id  # acquire prefers the soft-reset one
    await again.release(hard=True)
    assert not await _has_markers(again)

    with pytest.raises(ComputeSDKError) as err:
        await c.pools.release(created[0])
    assert err.value.reason == "NOT_LEASED"


async def test_pool_exhaustion_waits_then_fails_and_never_hands_out_a_dead_sandbox(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    await c.pools.create("one", provider="local", template="base", min=1, max=1)

    async def warm() -> bool:
        return (await c.pools.get("one")).idle == 1

    await _until(warm)
    held = await c.pools.acquire("one")
    with pytest.raises(ResourceExhaustedError) as err:
        await c.pools.acquire("one", wait_timeout_ms=300)
    assert err.value.reason == "POOL_EXHAUSTED"

    # A waiting acquirer gets the sandbox as soon as it is released.
    waiter = asyncio.create_task(c.pools.acquire("one", wait_timeout_ms=10_000))
    await asyncio.sleep(0.2)
    await held.release()
    assert (await waiter).id == held.id
    await held.release()

    # Kill the idle sandbox's container behind the daemon's back: acquire must
    # not hand it out, and makes a healthy one instead.
    runc_root = d.state / "local" / "runc"
    proc = await asyncio.create_subprocess_exec(
        "runc", "--root", str(runc_root), "kill", held.id, "KILL"
    )
    assert await proc.wait() == 0
    await asyncio.sleep(0.3)
    fresh = await c.pools.acquire("one", wait_timeout_ms=30_000)
    assert fresh.id != held.id
    assert (await fresh.exec(["true"])).exit_code == 0
    assert (await c.pools.get("one")).discarded_total == 1


async def test_pools_drain_on_shutdown_and_come_back(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    await c.pools.create("keep", provider="local", template="base", min=2, max=4)

    async def warm() -> bool:
        return (await c.pools.get("keep")).idle == 2

    await _until(warm)
    await c.close()
    d.stop()
    # Idle members were destroyed, not left running for nobody.
    out = await asyncio.create_subprocess_exec(
        "runc", "--root", str(d.state / "local" / "runc"), "list", "-q",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert (await out.communicate())[0].strip() == b""
    d.start()
    c2 = await Client.connect(socket=d.socket)
    try:

        async def refilled() -> bool:
            return (await c2.pools.get("keep")).idle == 2

        await _until(refilled)
    finally:
        await c2.close()


async def test_pool_with_unknown_template_is_refused(client: Client) -> None:
    with pytest.raises(TemplateNotFoundError):
        await client.pools.create("bad", provider="local", template="no-such-template")


# ---------------------------------------------------------------- batch, reset, env


async def test_batch_of_mixed_templates_reports_each_item(client: Client) -> None:
    items = [{"provider": "local", "template": t} for t in ("base", "python", "nope", "node")]
    results = await client.batch_create(items)
    assert len(results) == 4
    assert isinstance(results[2], TemplateNotFoundError)
    made = [r for r in results if isinstance(r, Sandbox)]
    assert [s.template for s in made] == ["base", "python", "node"]
    for s in made:
        assert (await s.exec(["true"])).exit_code == 0
        await s.destroy()


async def test_soft_and_hard_reset(client: Client) -> None:
    sb = await client.create("local", template="python")
    try:
        await _leave_markers(sb)
        await sb.reset()
        assert not any(p.running for p in await sb.processes())
        assert await _has_markers(sb)
        await sb.reset(hard=True)
        assert not await _has_markers(sb)
        assert (await sb.exec(["python3", "-c", "print(1)"])).stdout == "1\n"
    finally:
        await sb.destroy()


async def test_set_env_applies_to_later_execs_and_survives_restart(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    sb = await c.create("local", env={"A": "1", "B": "2"})
    env = await sb.set_env("API_URL", "http://api:8000", unset=["B"])
    assert env == {"A": "1", "API_URL": "http://api:8000"}
    r = await sb.exec("echo $A $API_URL ${B:-unset}")
    assert r.stdout == "1 http://api:8000 unset\n"
    d.stop()
    d.start()
    r = await sb.exec("echo $API_URL")
    assert r.stdout == "http://api:8000\n"


# ---------------------------------------------------------------- groups


async def test_broadcast_over_20_members_reports_every_result(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    made = await c.batch_create([{"provider": "local", "template": "base"}] * 20)
    members = [s for s in made if isinstance(s, Sandbox)]
    assert len(members) == 20
    await c.groups.create("workers", members)
    for s in members[:3]:  # three fail
        await s.files.write("/workspace/fail", b"1")
    await c.groups.add("workers", members[3:5])  # duplicates are ignored
    assert len(await c.groups.get("workers")) == 20

    results = [r async for r in c.groups.broadcast("workers", "test ! -e /workspace/fail")]
    assert len(results) == 20
    assert sum(1 for r in results if r.ok) == 17
    assert {r.sandbox_id for r in results if not r.ok} == {s.id for s in members[:3]}

    # A destroyed member leaves the group.
    await members[19].destroy()
    assert len(await c.groups.get("workers")) == 19

    # Groups survive a daemon restart.
    d.stop()
    d.start()
    assert len(await c.groups.get("workers")) == 19
    destroyed = await c.groups.destroy_all("workers")
    assert len(destroyed) == 19
    assert await c.list() == []
    with pytest.raises(ComputeSDKError) as err:
        await c.groups.get("workers")
    assert err.value.reason == "GROUP_NOT_FOUND"


async def test_broadcast_reports_a_member_killed_mid_command(client: Client) -> None:
    a = await client.create("local")
    b = await client.create("local")
    try:
        await client.groups.create("mixed", [a, b])
        stream = client.groups.broadcast("mixed", "sleep 2; echo done")
        task = asyncio.create_task(_collect(stream))
        await asyncio.sleep(0.5)
        await b.destroy()
        results = {r.sandbox_id: r for r in await task}
        assert results[a.id].ok and results[a.id].result is not None
        assert results[a.id].result.stdout == "done\n"
        assert results[b.id].error is not None or not results[b.id].ok
    finally:
        await client.groups.delete("mixed")
        with contextlib.suppress(ComputeSDKError):
            await a.destroy()


async def _collect(stream: AsyncIterator[object]) -> list[object]:
    return [r async for r in stream]


# ---------------------------------------------------------------- networks


async def test_shared_network_by_name_and_isolation(client: Client) -> None:
    web = await client.create("local", template="python")
    api = await client.create("local", template="python")
    outsider = await client.create("local", template="python")
    try:
        net = await client.networks.create("app", {"web": web, "api": api})
        assert set(net.members) == {"web", "api"}
        await api.start_process(
            "mkdir -p /srv && echo pong > /srv/ping && cd /srv && python3 -m http.server 8000"
        )
        url = await client.networks.get_service_url("app", "api", 8000)
        assert url == "http://api:8000"
        fetch = (
            "import urllib.request,sys;"
            "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')"
        )

        async def served() -> bool:
            r = await web.exec(["python3", "-c", fetch, url + "/ping"], check=False)
            return r.stdout == "pong\n"

        await _until(served, 15)
        # The outsider cannot reach the member's address, nor can members reach out.
        api_ip = net.members["api"][1]
        r = await outsider.exec(["python3", "-c", fetch, f"http://{api_ip}:8000/ping"], check=False)
        assert r.exit_code != 0 and "unreachable" in r.stderr
        r = await web.exec(["python3", "-c", fetch, "http://10.0.2.2:80/"], check=False)
        assert r.exit_code != 0

        # get_url: the host's loopback forwards to the sandbox's port.
        host_url = await api.get_url(8000)
        assert host_url.startswith("http://127.0.0.1:")
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(host_url + "/ping", timeout=5).read()
        )
        assert body == b"pong\n"

        # The member env carries the service URL, as the spec's example does.
        await web.set_env("API_URL", url)
        r = await web.exec(["sh", "-c", 'python3 -c "$0" "$API_URL/ping"', fetch])
        assert r.stdout == "pong\n"

        await client.networks.delete("app")
        r = await web.exec(["python3", "-c", fetch, url + "/ping"], check=False)
        assert r.exit_code != 0
    finally:
        for s in (web, api, outsider):
            with contextlib.suppress(ComputeSDKError):
                await s.destroy()


async def test_port_forward_to_nothing_and_networks_on_providers_without_them(
    client: Client,
) -> None:
    sb = await client.create("local")
    other = await client.create("docker")
    try:
        # A URL before anything listens (a server starts later); until then a
        # connection to it is closed without a byte.
        url = await sb.get_url(9)
        host, _, port = url.removeprefix("http://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert await reader.read() == b""
        writer.close()
        with pytest.raises(UnsupportedError) as unsupported:
            await client.networks.create("dockers", [other])
        assert unsupported.value.metadata["provider"] == "docker"
    finally:
        await sb.destroy()
        await other.destroy()


# ---------------------------------------------------------------- channels


async def test_messages_survive_a_disconnected_subscriber_in_order(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    await c.channels.connect("jobs", ["web", "api", "worker"], capacity=50)
    for i in range(5):
        await c.channels.send("jobs", "web", "api", f"web-{i}")
        await c.channels.send("jobs", "worker", "api", f"worker-{i}")

    got = []
    async for m in c.channels.subscribe("jobs", "api"):
        got.append(m)
        if len(got) == 4:
            break
    await c.channels.ack("jobs", "api", got[1].sequence)  # two handled, two were not

    # The subscriber is gone; more arrive, then the daemon restarts.
    for i in range(5, 8):
        await c.channels.send("jobs", "web", "api", f"web-{i}")
    d.stop()
    d.start()
    await c.channels.send("jobs", "web", None, "to-everyone")

    after: list[str] = []
    async for m in c.channels.subscribe("jobs", "api"):
        after.append(m.text)
        await c.channels.ack("jobs", "api", m.sequence)
        if m.text == "to-everyone":
            break
    # Nothing acknowledged is repeated; nothing else is lost; each sender in order.
    first_two = [m.text for m in got[:2]]
    everything = first_two + after
    for sender in ("web", "worker"):
        mine = [t for t in everything if t.startswith(sender + "-")]
        assert mine == sorted(mine, key=lambda t: int(t.split("-")[1]))
        assert len(set(mine)) == len(mine)
    assert {t for t in everything if t.startswith("web-")} == {f"web-{i}" for i in range(8)}
    assert {t for t in everything if t.startswith("worker-")} == {f"worker-{i}" for i in range(5)}


async def test_a_full_channel_pushes_back(client: Client) -> None:
    await client.channels.connect("tight", ["a", "b"], capacity=2)
    try:
        await client.channels.send("tight", "a", "b", "1")
        await client.channels.send("tight", "a", "b", "2")
        with pytest.raises(ResourceExhaustedError) as err:
            await client.channels.send("tight", "a", "b", "3", wait_timeout_ms=200)
        assert err.value.reason == "CHANNEL_FULL"
        # A sender that waits gets through once the recipient acknowledges.
        pending = asyncio.create_task(
            client.channels.send("tight", "a", "b", "3", wait_timeout_ms=10_000)
        )
        await asyncio.sleep(0.2)
        assert not pending.done()
        await client.channels.ack("tight", "b", 1)
        assert await pending == 3
    finally:
        await client.channels.delete("tight")


async def test_sandboxes_use_a_channel_from_inside(client: Client) -> None:
    web = await client.create("local")
    api = await client.create("local")
    try:
        await client.channels.connect("inside", [web, api, "client"])
        agent = "/.computesdk/agent"
        r = await web.exec([agent, "mq", "send", "inside", api.id, "hello from web"])
        assert r.exit_code == 0, r.stderr
        await client.channels.send("inside", "client", api, "hello from a client")
        r = await api.exec([agent, "mq", "recv", "inside", "2"])
        assert r.stdout == f"{web.id}\thello from web\nclient\thello from a client\n"
        # Acknowledged by the tool once printed: nothing comes again.
        again = client.channels.subscribe("inside", api)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(again), 0.5)
        r = await api.exec([agent, "mq", "send", "inside", "-", "to everyone"])
        assert r.exit_code == 0
        got = []
        async for m in client.channels.subscribe("inside", "client"):
            got.append((m.sender, m.text))
            break
        assert got == [(api.id, "to everyone")]
        # The sender is the sandbox the socket belongs to; a non-member is refused.
        r = await web.exec([agent, "mq", "send", "inside", "nobody", "x"], check=False)
        assert r.exit_code == 1 and "MEMBER_NOT_FOUND" in r.stderr
    finally:
        await client.channels.delete("inside")
        await web.destroy()
        await api.destroy()


async def test_sigterm_while_a_pool_fills_exits_and_leaves_nothing() -> None:
    d = new_daemon(on_exit="keep")
    d.extra_args = ["--warm-pool", "many=local/base:20:20"]
    d.start()
    try:
        c = await Client.connect(socket=d.socket)

        async def filling() -> bool:
            p = await c.pools.get("many")
            return p.creating > 0 and p.idle > 0

        await _until(filling)
        await c.close()
        assert d.stop() == 0  # within 60 s, with creates cut short on the way
        out = await asyncio.create_subprocess_exec(
            "runc", "--root", str(d.state / "local" / "runc"), "list", "-q",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert (await out.communicate())[0].strip() == b""
    finally:
        d.cleanup()


async def test_a_sandbox_exposes_a_bounded_number_of_ports(sandbox: Sandbox) -> None:
    # Each is a host listener made before anything listens: without a bound, one
    # caller could hold 65535 of them.
    from computesdkd.features.networks.ports import MAX_EXPOSED

    urls = {await sandbox.get_url(1000 + i) for i in range(MAX_EXPOSED)}
    assert len(urls) == MAX_EXPOSED
    assert await sandbox.get_url(1000) in urls  # an exposed port again is no new one
    with pytest.raises(ComputeSDKError) as e:
        await sandbox.get_url(1000 + MAX_EXPOSED)
    assert e.value.reason == "RESOURCE_EXHAUSTED" and str(MAX_EXPOSED) in e.value.message
