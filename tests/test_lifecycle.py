from __future__ import annotations

import asyncio
import uuid

import pytest

from computesdk import (
    AlreadyExistsError,
    Client,
    InvalidArgumentError,
    ProviderNotFoundError,
    Resources,
    Sandbox,
    SandboxNotFoundError,
    TemplateNotFoundError,
)
from computesdk.errors import FailedPreconditionError


async def test_create_exec_destroy(client: Client) -> None:
    sb = await client.create(
        "local", template="python", metadata={"project": "my-app"}, timeout_ms=60_000
    )
    assert sb.id.startswith("sbx-")
    assert sb.state == "running"
    assert sb.metadata == {"project": "my-app"}
    result = await sb.exec("python3 -c 'print(6*7)'")
    assert (result.stdout, result.exit_code) == ("42\n", 0)
    await sb.destroy()
    with pytest.raises(SandboxNotFoundError):
        await client.get(sb.id)


async def test_templates_node_and_base(client: Client) -> None:
    async with await client.create(template="node") as sb:
        r = await sb.exec(["node", "-v"])
        assert r.exit_code == 0 and r.stdout.startswith("v")
    async with await client.create() as sb:
        assert sb.template == "base"
        assert (await sb.exec("cat /etc/debian_version")).exit_code == 0


async def test_unknown_template_provider_and_id(client: Client) -> None:
    with pytest.raises(TemplateNotFoundError) as e:
        await client.create(template="no-such-template")
    assert e.value.reason == "TEMPLATE_NOT_FOUND"
    with pytest.raises(ProviderNotFoundError) as p:
        await client.create("no-such-provider")
    assert p.value.metadata["provider"] == "no-such-provider"
    with pytest.raises(SandboxNotFoundError):
        await client.get("sbx-doesnotexist")


async def test_template_the_host_cannot_carry_says_why(client: Client) -> None:
    with pytest.raises(FailedPreconditionError) as e:
        await client.create(template="pytorch-gpu")
    assert e.value.reason == "GPU_UNAVAILABLE"
    assert "GPU" in e.value.message
    with pytest.raises(FailedPreconditionError) as g:
        await client.create(resources=Resources(gpu=True))
    assert g.value.reason == "GPU_UNAVAILABLE"


async def test_request_id_makes_create_idempotent(client: Client) -> None:
    rid = uuid.uuid4().hex
    first, second = await asyncio.gather(
        client.create(template="base", request_id=rid, metadata={"k": "v"}),
        client.create(template="base", request_id=rid, metadata={"k": "v"}),
    )
    try:
        assert first.id == second.id
        again = await client.create(template="base", request_id=rid, metadata={"k": "v"})
        assert again.id == first.id
        with pytest.raises(AlreadyExistsError) as e:
            await client.create(template="python", request_id=rid)
        assert e.value.reason == "REQUEST_ID_CONFLICT"
    finally:
        await first.destroy()


async def test_list_filters_and_paginates(client: Client) -> None:
    tag = uuid.uuid4().hex
    made = [await client.create(metadata={"batch": tag, "i": str(i)}) for i in range(3)]
    try:
        listed = await client.list(metadata={"batch": tag}, page_size=2)
        assert [s.id for s in listed] == [s.id for s in made]
        one = await client.list(metadata={"batch": tag, "i": "1"})
        assert [s.id for s in one] == [made[1].id]
        assert await client.list(metadata={"batch": tag}, states=["error"]) == []
        page = await client.sandboxes.ListSandboxes(
            __import__(
                "computesdk_api.sandbox.v1.sandbox_pb2", fromlist=["x"]
            ).ListSandboxesRequest(page_size=2, metadata={"batch": tag})
        )
        assert len(page.sandboxes) == 2 and page.next_page_token
    finally:
        for s in made:
            await s.destroy()


async def test_bad_page_token_and_metadata(client: Client) -> None:
    from computesdk.errors import from_rpc_error
    from computesdk_api.sandbox.v1 import sandbox_pb2

    with pytest.raises(Exception) as e:
        await client.sandboxes.ListSandboxes(
            sandbox_pb2.ListSandboxesRequest(page_token="%%%not-a-token")
        )
    err = from_rpc_error(e.value)  # type: ignore[arg-type]
    assert isinstance(err, InvalidArgumentError) and err.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgumentError) as m:
        await client.create(metadata={f"k{i}": "v" for i in range(100)})
    assert m.value.reason == "METADATA_TOO_LARGE"


async def test_status_reports_limits_and_usage(client: Client) -> None:
    async with await client.create(
        resources=Resources(cpu_cores=0.5, memory_mb=256, disk_mb=512)
    ) as sb:
        st = await sb.get_status()
        assert st.state == "running"
        assert st.resources.memory_mb == 256 and st.resources.cpu_cores == 0.5
        assert st.memory_limit_bytes == 256 * 2**20
        assert 0 < st.disk_limit_bytes <= 512 * 2**20
        assert st.process_count >= 1
        await asyncio.sleep(0.05)
        assert (await sb.get_status()).uptime_ms >= st.uptime_ms


async def test_timeout_destroys_unless_keep_alive(client: Client) -> None:
    short = await client.create(timeout_ms=1000)
    kept = await client.create(timeout_ms=1000, keep_alive=True)
    try:
        async for ev in short.events(types=["destroyed"]):
            assert ev.attributes["reason"] == "timeout"
            break
        with pytest.raises(SandboxNotFoundError):
            await short.refresh()
        assert (await kept.refresh()).state == "running"
    finally:
        await kept.destroy()


async def test_graceful_destroy_lets_processes_exit(client: Client) -> None:
    sb = await client.create()
    await sb.start_process(["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"])
    await sb.destroy(graceful=True, timeout_ms=3000)
    with pytest.raises(SandboxNotFoundError):
        await sb.refresh()


async def test_provider_capabilities_are_listed(client: Client) -> None:
    provs = {p.name: p for p in await client.providers()}
    local = provs["local"]
    assert local.available and local.is_default
    assert {"exec", "exec.resume", "filesystem", "events"} <= set(local.capabilities)
    assert "python" in local.templates


async def test_more_than_two_hundred_sandboxes_start(client: Client) -> None:
    """Every sandbox's root is one host uid, and the kernel gives a uid 200 keys:
    a session keyring per container once capped density at 200."""
    made: list[Sandbox] = []
    try:
        for _ in range(11):
            made += await asyncio.gather(*(client.create() for _ in range(20)))
        assert len(made) == 220
        assert (await made[-1].exec("echo last")).stdout == "last\n"
    finally:
        for i in range(0, len(made), 20):
            await asyncio.gather(*(sb.destroy() for sb in made[i : i + 20]))
