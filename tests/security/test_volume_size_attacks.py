"""Hostile volume sizes and names in a create's mounts (the spec's
`volumes: [{ name, path, size }]`): the size string is parsed by the daemon, so
a client can send it anything. Each must be refused up front, cheaply, without
making a volume or a sandbox, and without echoing a huge input back. And a
tenant asking for more than the host (accepted, capped) must not slip past its
quota, nor be charged more than it holds."""

from __future__ import annotations

import asyncio
import contextlib
import os

import grpc
import pytest

# The TLS daemon with tenants, and its helpers (`net` is a fixture: imported, it is
# this module's too).
from test_remote_attacks import Net, _create, _destroy_all, _fails, net  # noqa: F401

from computesdk import Client
from computesdk.admin import Quota
from computesdk.errors import from_rpc_error
from computesdk_api.sandbox.v1 import sandbox_pb2 as sb_pb
from computesdk_api.volume.v1 import volume_pb2 as vo_pb


def _reason(err: grpc.aio.AioRpcError) -> str:
    return from_rpc_error(err).reason


async def _names(client: Client) -> set[str]:
    resp = await client.volume_stub.ListVolumes(vo_pb.ListVolumesRequest(), timeout=30)
    return {v.name for v in resp.volumes}


async def _mount(client: Client, mount: sb_pb.VolumeMount) -> sb_pb.Sandbox:
    resp = await client.sandboxes.CreateSandbox(
        sb_pb.CreateSandboxRequest(provider="local", volumes=[mount]), timeout=120
    )
    return resp.sandbox


@pytest.mark.parametrize(
    "size",
    [
        "0",
        "0GB",
        "-1GB",
        "1e9",  # floats in exponent form are not sizes
        "NaN",
        "inf",
        "10 XB",
        "GB",
        "1.5.5GB",
        "2TiB",  # above the 1 TiB bound
        "99999999999999999999999999GB",  # overflow of any fixed-width integer
        "9" * 16 + "TB",
        "٣GB",  # a non-ASCII digit, which int() would take
        "1GB\x00",
        "1GB; rm -rf /",
        "0x10GB",
        "9" * 100_000,  # a huge input: refused, and not echoed
    ],
)
async def test_bad_sizes_are_refused_up_front(client: Client, size: str) -> None:
    before_sandboxes = {s.id for s in await client.list()}
    before_volumes = await _names(client)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _mount(client, sb_pb.VolumeMount(name="attack-size", mount_path="/d", size=size))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(err.value) == "INVALID_VOLUME_SIZE"
    assert len(err.value.details() or "") < 500  # the input is cut, never echoed whole
    assert await _names(client) == before_volumes
    assert {s.id for s in await client.list()} == before_sandboxes


async def test_a_size_beyond_the_store_is_refused_clearly(client: Client) -> None:
    # 1 TiB passes the parser; no test store holds it, and the image (sparse)
    # would be a promise the store can never keep.
    before = await _names(client)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _mount(client, sb_pb.VolumeMount(name="attack-huge", mount_path="/d", size="1TiB"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _reason(err.value) == "VOLUME_TOO_LARGE"
    assert "store" in (err.value.details() or "")
    assert await _names(client) == before


async def test_a_huge_size_mb_is_refused_too(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _mount(client, sb_pb.VolumeMount(name="attack-mb", mount_path="/d", size_mb=2**63))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attack-mb" not in await _names(client)


@pytest.mark.parametrize("second", ["junk", "1TiB"])
async def test_one_bad_mount_makes_none_of_the_others(client: Client, second: str) -> None:
    # A create that makes a volume, then fails on the next mount's size, must not
    # leave the first one behind: a size that does not parse is refused before any
    # volume is made, one the store cannot hold undoes the create's ephemeral ones.
    with pytest.raises(grpc.aio.AioRpcError):
        await client.sandboxes.CreateSandbox(
            sb_pb.CreateSandboxRequest(
                provider="local",
                volumes=[
                    sb_pb.VolumeMount(name="attack-first", mount_path="/a", size="16MB"),
                    sb_pb.VolumeMount(name="attack-second", mount_path="/b", size=second),
                ],
            ),
            timeout=120,
        )
    assert not {"attack-first", "attack-second"} & await _names(client)


async def test_a_burst_of_creates_naming_one_new_volume_shares_it(client: Client) -> None:
    # Racing creates that all name the same volume, not yet made: one makes it,
    # the others wait and mount it; none fails, and only one volume exists.
    mount = sb_pb.VolumeMount(name="attack-race", mount_path="/d", size="32MB", persistent=True)
    made: list[sb_pb.Sandbox] = []
    try:
        made = await asyncio.gather(*(_mount(client, mount) for _ in range(4)))
        assert len({s.id for s in made}) == 4
        assert "attack-race" in await _names(client)
    finally:
        for sb in await client.list():
            if sb.id in {s.id for s in made}:
                with contextlib.suppress(Exception):
                    await sb.destroy()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await client.volume_stub.DeleteVolume(
                vo_pb.DeleteVolumeRequest(name="attack-race"), timeout=30
            )


async def test_a_request_above_the_host_counts_what_it_gets_in_the_quota(
    net: Net,  # noqa: F811
) -> None:
    # ATTACK: a tenant bound to the host's cores plus half of one asks for four
    # times the host. Capped at the host, it holds (and is charged) the host's
    # cores; the half core left is still a bound it cannot pass.
    cores = float(os.cpu_count() or 1)
    await net.admin.admin.set_quota("q-capped", Quota(max_cpu_cores=cores + 0.5))
    b = await net.tenant("q-capped")
    try:
        s = await _create(b, resources=sb_pb.Resources(cpu_cores=cores * 4, memory_mb=256))
        assert s.resources.cpu_cores == cores
        assert s.requested_resources.cpu_cores == cores * 4
        assert (await net.admin.admin.get_quota("q-capped")).cpu_cores == cores
        refused = await _fails(_create(b, resources=sb_pb.Resources(cpu_cores=1, memory_mb=256)))
        assert refused is not None and refused.reason == "QUOTA_EXCEEDED"
    finally:
        await _destroy_all(b)


async def test_non_numbers_in_a_live_resize_are_refused(client: Client) -> None:
    # NaN passes every "< 0" and "> host" comparison; infinity is merely large.
    from computesdk_api.monitoring.v1 import monitoring_pb2 as mon_pb

    sb = (
        await client.sandboxes.CreateSandbox(sb_pb.CreateSandboxRequest(provider="local"))
    ).sandbox
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.monitoring.Scale(
                mon_pb.ScaleRequest(sandbox_id=sb.id, cpu_cores=float("nan")), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        resp = await client.monitoring.Scale(
            mon_pb.ScaleRequest(sandbox_id=sb.id, cpu_cores=float("inf")), timeout=30
        )
        assert resp.resources.cpu_cores == float(os.cpu_count() or 1)
    finally:
        await client.sandboxes.DestroySandbox(
            sb_pb.DestroySandboxRequest(sandbox_id=sb.id), timeout=60
        )
