"""Sizes a client can ask for are bounded, with clear errors, and what the daemon
keeps for them is bounded too: a client cannot promise itself the host's disk,
nor fill the store by cycling disk sizes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from computesdk import Client, Resources
from computesdk.errors import (
    ComputeSDKError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from conftest import DaemonProcess, new_daemon

CAP_MB = 256 * 1024  # the local provider's default disk cap (COMPUTESDK_LOCAL_MAX_DISK_MB)


async def _ids(client: Client) -> set[str]:
    return {sb.id for sb in await client.list()}


@pytest.mark.parametrize(
    ("resources", "resource"),
    [
        (Resources(disk_mb=20_000_000), "disk_mb"),  # the 20 TB disk
        (Resources(disk_mb=CAP_MB + 1), "disk_mb"),
        (Resources(pids_limit=1 << 30), "pids_limit"),
        # Memory and cores above the host are accepted and capped at it (the
        # effective figures: tests/test_spec_daemon.py); disk and pids are not.
    ],
)
async def test_sizes_beyond_the_host_are_refused_up_front(
    client: Client, daemon: DaemonProcess, resources: Resources, resource: str
) -> None:
    before = await _ids(client)
    sandboxes = daemon.state / "local" / "store" / "sandboxes"
    dirs = set(sandboxes.iterdir())
    with pytest.raises(ResourceExhaustedError) as err:
        await client.create("local", template="base", resources=resources)
    assert err.value.reason == "RESOURCES_UNAVAILABLE"
    assert err.value.metadata.get("resource") == resource
    assert await _ids(client) == before
    assert set(sandboxes.iterdir()) == dirs, "a refused create made files"


@pytest.mark.parametrize(
    ("resources", "resource"),
    [
        (Resources(disk_mb=1), "disk_mb"),
        (Resources(memory_mb=1), "memory_mb"),
        (Resources(pids_limit=1), "pids_limit"),
        (Resources(cpu_cores=0.001), "cpu_cores"),
    ],
)
async def test_sizes_no_sandbox_can_run_in_are_invalid(
    client: Client, resources: Resources, resource: str
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        await client.create("local", template="base", resources=resources)
    assert err.value.reason == "INVALID_RESOURCES"
    assert err.value.metadata.get("resource") == resource


async def test_a_running_disk_cannot_grow_past_the_cap(client: Client) -> None:
    async with await client.create("local", template="base") as sb:
        with pytest.raises(ResourceExhaustedError) as err:
            await sb.set_resource_limits(disk_mb=20_000_000)
        assert err.value.metadata.get("resource") == "disk_mb"
        assert (await client.get(sb.id)).info.resources.disk_mb == 2048


@pytest_asyncio.fixture
async def private() -> AsyncIterator[tuple[DaemonProcess, Client]]:
    d = new_daemon()
    d.start()
    c = await Client.connect(socket=d.socket)
    try:
        yield d, c
    finally:
        await c.close()
        d.cleanup()


def _cached(d: DaemonProcess) -> list[int]:
    cache = d.state / "local" / "store" / "cache"
    return sorted(int(p.stem.removeprefix("empty-")) for p in Path(cache).glob("empty-*.img"))


async def test_cycling_disk_sizes_keeps_the_empty_disk_cache_bounded(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, client = private
    async with await client.create("local", template="base"):
        pass
    if not _cached(d):
        pytest.skip("this store cannot reflink: no empty disks are cached")
    assert _cached(d) == [2048]
    sizes = [64, 72, 80, 88, 96, 104]
    for i, size in enumerate(sizes):
        async with await client.create(
            "local", template="base", resources=Resources(disk_mb=size)
        ) as sb:
            r = await sb.exec("df -m --output=size / /workspace | tail -1")
            assert r.exit_code == 0
        cached = _cached(d)
        # The default and the three most recently used others; never more.
        assert cached == sorted({2048, *sizes[max(0, i - 2) : i + 1]}), cached
    # A size that was dropped is made again when asked for: nothing breaks.
    async with await client.create("local", template="base", resources=Resources(disk_mb=64)):
        pass
    assert 64 in _cached(d) and len(_cached(d)) <= 4


async def test_errors_name_the_resource_in_the_message(client: Client) -> None:
    with pytest.raises(ComputeSDKError) as err:
        await client.create("local", template="base", resources=Resources(disk_mb=20_000_000))
    assert "disk_mb" in str(err.value)
