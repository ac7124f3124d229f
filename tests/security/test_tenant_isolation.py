"""Tenant B against tenant A's things, over TLS with B's token, for every RPC of
every service: each is refused exactly as a missing thing is (same code, reason
and message but for the key), nothing of A's shows in any answer, and A's things
are untouched. The table must name every method (a new RPC fails the test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest_asyncio
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pki import CA

from computesdk import Client
from computesdk._rpc import Transport, open_channel
from computesdk_api.events.v1 import events_pb2 as ev
from computesdk_api.filesystem.v1 import filesystem_pb2 as fs
from computesdk_api.group.v1 import group_pb2 as gr
from computesdk_api.messaging.v1 import messaging_pb2 as mq
from computesdk_api.monitoring.v1 import monitoring_pb2 as mon
from computesdk_api.network.v1 import network_pb2 as net
from computesdk_api.pool.v1 import pool_pb2 as pl
from computesdk_api.process.v1 import process_pb2 as pr
from computesdk_api.sandbox.v1 import sandbox_pb2 as sb
from computesdk_api.snapshot.v1 import snapshot_pb2 as sn
from computesdk_api.template.v1 import template_pb2 as tp
from computesdk_api.volume.v1 import volume_pb2 as vo
from computesdkd.edge.server import SERVICE_NAMES
from conftest import DaemonProcess, new_daemon, serving_port

K = dict[str, str]
CMD = pr.Command(command="true")

# Method -> the request B sends, given the keys (A's, or missing ones). None: the
# method names no thing of a tenant (B's call must just show nothing of A's).
REQUESTS: dict[str, Callable[[K], Any] | None] = {
    # SandboxService
    # must_exist: a mount without it makes a missing volume, a create like
    # CreateVolume's (names are daemon-wide); with it, it only names one.
    "CreateSandbox": lambda k: sb.CreateSandboxRequest(
        provider="local",
        volumes=[sb.VolumeMount(name=k["vol"], mount_path="/v", must_exist=True)],
    ),
    "GetSandbox": lambda k: sb.GetSandboxRequest(sandbox_id=k["sb"]),
    "ListSandboxes": None,
    "DestroySandbox": lambda k: sb.DestroySandboxRequest(sandbox_id=k["sb"]),
    "GetSandboxStatus": lambda k: sb.GetSandboxStatusRequest(sandbox_id=k["sb"]),
    "CloneSandbox": lambda k: sb.CloneSandboxRequest(sandbox_id=k["sb"]),
    "MigrateSandbox": lambda k: sb.MigrateSandboxRequest(sandbox_id=k["sb"], provider="local"),
    "BatchCreateSandboxes": lambda k: sb.BatchCreateSandboxesRequest(
        requests=[sb.CreateSandboxRequest(provider="local", restore_from=k["state"])]
    ),
    "ResetSandbox": lambda k: sb.ResetSandboxRequest(sandbox_id=k["sb"]),
    "SetSandboxEnv": lambda k: sb.SetSandboxEnvRequest(sandbox_id=k["sb"], env={"X": "1"}),
    "RestartSandbox": lambda k: sb.RestartSandboxRequest(sandbox_id=k["sb"]),
    # ProcessService
    "Exec": lambda k: [pr.ExecRequest(start=pr.ExecStart(sandbox_id=k["sb"], command=CMD))],
    "RunCommand": lambda k: pr.RunCommandRequest(sandbox_id=k["sb"], command=CMD),
    "StartProcess": lambda k: pr.StartProcessRequest(sandbox_id=k["sb"], command=CMD),
    "AttachProcess": lambda k: pr.AttachProcessRequest(sandbox_id=k["sb"], process_id=k["pid"]),
    "WriteStdin": lambda k: pr.WriteStdinRequest(sandbox_id=k["sb"], process_id=k["pid"]),
    "SignalProcess": lambda k: pr.SignalProcessRequest(
        sandbox_id=k["sb"], process_id=k["pid"], signal=9
    ),
    "ListProcesses": lambda k: pr.ListProcessesRequest(sandbox_id=k["sb"]),
    # FilesystemService
    "ReadFile": lambda k: fs.ReadFileRequest(sandbox_id=k["sb"], path="/etc/hostname"),
    "WriteFile": lambda k: [
        fs.WriteFileRequest(header=fs.WriteFileHeader(sandbox_id=k["sb"], path="/tmp/x")),
        fs.WriteFileRequest(data=b"owned"),
    ],
    "ListDirectory": lambda k: fs.ListDirectoryRequest(sandbox_id=k["sb"], path="/"),
    "StatPath": lambda k: fs.StatPathRequest(sandbox_id=k["sb"], path="/"),
    "MakeDirectory": lambda k: fs.MakeDirectoryRequest(sandbox_id=k["sb"], path="/tmp/d"),
    "RemovePath": lambda k: fs.RemovePathRequest(sandbox_id=k["sb"], path="/tmp/a-file"),
    "MovePath": lambda k: fs.MovePathRequest(
        sandbox_id=k["sb"], source="/tmp/a-file", destination="/tmp/b"
    ),
    # EventService
    "SubscribeEvents": lambda k: ev.SubscribeEventsRequest(sandbox_ids=[k["sb"]], no_follow=True),
    # ProviderService
    "ListProviders": None,
    # MonitoringService
    "GetResourceUsage": lambda k: mon.GetResourceUsageRequest(sandbox_id=k["sb"]),
    "Monitor": lambda k: mon.MonitorRequest(sandbox_id=k["sb"]),
    "SetResourceLimits": lambda k: mon.SetResourceLimitsRequest(sandbox_id=k["sb"]),
    "Scale": lambda k: mon.ScaleRequest(sandbox_id=k["sb"], cpu_cores=2),
    "SetAlertThresholds": lambda k: mon.SetAlertThresholdsRequest(sandbox_id=k["sb"]),
    "ConfigureAutoScaling": lambda k: mon.ConfigureAutoScalingRequest(sandbox_id=k["sb"]),
    "CheckHealth": lambda k: mon.CheckHealthRequest(sandbox_id=k["sb"]),
    "RegisterHealthCheck": lambda k: mon.RegisterHealthCheckRequest(
        sandbox_id=k["sb"], name="b", command="true"
    ),
    "UnregisterHealthCheck": lambda k: mon.UnregisterHealthCheckRequest(
        sandbox_id=k["sb"], name="hc"
    ),
    # PoolService
    "CreatePool": lambda k: pl.CreatePoolRequest(
        spec=pl.PoolSpec(name=k["pool"], provider="local", min=0, max=1)
    ),
    "GetPool": lambda k: pl.GetPoolRequest(name=k["pool"]),
    "ListPools": None,
    "DeletePool": lambda k: pl.DeletePoolRequest(name=k["pool"]),
    "AcquireSandbox": lambda k: pl.AcquireSandboxRequest(pool=k["pool"], wait_timeout_ms=1),
    "ReleaseSandbox": lambda k: pl.ReleaseSandboxRequest(sandbox_id=k["sb"]),
    # GroupService
    "CreateGroup": lambda k: gr.CreateGroupRequest(name="b-group", sandbox_ids=[k["sb"]]),
    "GetGroup": lambda k: gr.GetGroupRequest(name=k["group"]),
    "ListGroups": None,
    "AddGroupMembers": lambda k: gr.AddGroupMembersRequest(name=k["group"]),
    "RemoveGroupMembers": lambda k: gr.RemoveGroupMembersRequest(
        name=k["group"], sandbox_ids=[k["sb"]]
    ),
    "Broadcast": lambda k: gr.BroadcastRequest(name=k["group"], command=CMD),
    "DeleteGroup": lambda k: gr.DeleteGroupRequest(name=k["group"]),
    # NetworkService
    "CreateNetwork": lambda k: net.CreateNetworkRequest(
        name="b-net", members=[net.NetworkMember(sandbox_id=k["sb"], hostname="x")]
    ),
    "GetNetwork": lambda k: net.GetNetworkRequest(name=k["net"]),
    "ListNetworks": None,
    "DeleteNetwork": lambda k: net.DeleteNetworkRequest(name=k["net"]),
    "GetServiceUrl": lambda k: net.GetServiceUrlRequest(network=k["net"], member="a", port=80),
    "ExposePort": lambda k: net.ExposePortRequest(sandbox_id=k["sb"], port=8080),
    # MessagingService
    "CreateChannel": lambda k: mq.CreateChannelRequest(name="b-chan", members=[k["sb"], "b"]),
    "DeleteChannel": lambda k: mq.DeleteChannelRequest(name=k["chan"]),
    "SendMessage": lambda k: mq.SendMessageRequest(
        channel=k["chan"], sender="a", recipient="b", payload=b"x"
    ),
    "Subscribe": lambda k: mq.SubscribeRequest(channel=k["chan"], member="b"),
    "AckMessages": lambda k: mq.AckMessagesRequest(channel=k["chan"], member="b"),
    # SnapshotService
    "CreateSnapshot": lambda k: sn.CreateSnapshotRequest(sandbox_id=k["sb"]),
    "ListSnapshots": lambda k: sn.ListSnapshotsRequest(sandbox_id=k["sb"]),
    "RestoreSnapshot": lambda k: sn.RestoreSnapshotRequest(
        sandbox_id=k["sb"], snapshot_id=k["snap"]
    ),
    "DeleteSnapshot": lambda k: sn.DeleteSnapshotRequest(sandbox_id=k["sb"], snapshot_id=k["snap"]),
    "SaveState": lambda k: sn.SaveStateRequest(sandbox_id=k["sb"]),
    "ListStates": None,
    "DeleteState": lambda k: sn.DeleteStateRequest(state_id=k["state"]),
    "ExportState": lambda k: sn.ExportStateRequest(state_id=k["state"]),
    "ImportState": None,
    # VolumeService
    "CreateVolume": lambda k: vo.CreateVolumeRequest(name=k["vol"], size_mb=16),
    "GetVolume": lambda k: vo.GetVolumeRequest(name=k["vol"]),
    "ListVolumes": None,
    "DeleteVolume": lambda k: vo.DeleteVolumeRequest(name=k["vol"]),
    # TemplateService
    "BuildTemplate": lambda k: tp.BuildTemplateRequest(
        definition=tp.TemplateDefinition(name=k["tpl"], base_image="template:base")
    ),
    "GetTemplate": lambda k: tp.GetTemplateRequest(name=k["tpl"]),
    "ListTemplates": None,
    "DeleteTemplate": lambda k: tp.DeleteTemplateRequest(name=k["tpl"]),
}
# Names are global, like bucket names: making one that is taken says so.
TAKEN = {"CreatePool", "CreateVolume", "BuildTemplate"}
MISSING: K = {
    "sb": "sbx-00000000deadbeef",
    "pid": "proc-1",
    "pool": "zz-pool",
    "group": "zz-group",
    "net": "zz-net",
    "chan": "zz-chan",
    "vol": "zz-vol",
    "state": "state-0000000000000000",
    "snap": "snap-0000000000000000",
    "tpl": "zz-template",
}
POOL = descriptor_pool.Default()


def _methods() -> dict[str, Any]:
    out = {}
    for service in SERVICE_NAMES:
        if service.endswith("AdminService"):
            continue  # test_remote_access covers its confinement
        for m in POOL.FindServiceByName(service).methods:
            out[m.name] = m
    return out


@pytest_asyncio.fixture(scope="module")
async def world() -> AsyncIterator[tuple[DaemonProcess, Client, grpc.aio.Channel, K]]:
    d = new_daemon()
    ca = CA(d.root)
    server = ca.issue("server", server=True)
    d.extra_args = ["--listen", "127.0.0.1:0", "--tls-cert", str(server.cert),
                    "--tls-key", str(server.key)]  # fmt: skip
    d.start()
    address = f"127.0.0.1:{serving_port(d)}"
    admin = await Client.connect(socket=d.socket)
    _, ta = await admin.admin.create_token("tenant-a", "write")
    _, tb = await admin.admin.create_token("tenant-b", "write")
    a = await Client.connect(address=address, ca=str(ca.pem), token=ta)
    s1 = await a.create("local")
    s2 = await a.create("local")
    await s1.files.write("/tmp/a-file", "A's secret")
    proc = await s1.start_process(["sleep", "300"])
    await a.volumes.create("a-vol", size_mb=16)
    await a.pools.create("a-pool", provider="local", min=0, max=1)
    await a.groups.create("a-group", [s1.id])
    await a.networks.create("a-net", {"a": s1.id, "b": s2.id})
    await a.channels.connect("a-chan", [s1.id, s2.id])
    state = await s1.save_state("a-state")
    snap = await s1.snapshots.create("a-snap")
    await s1.register_health_check("hc", "true", interval_ms=60_000)
    await a.templates.build("a-template", base_image="template:base", env={"A": "1"})
    keys = {
        "sb": s1.id,
        "pid": proc.process_id,
        "pool": "a-pool",
        "group": "a-group",
        "net": "a-net",
        "chan": "a-chan",
        "vol": "a-vol",
        "state": state,
        "snap": snap.id if hasattr(snap, "id") else str(snap),
        "tpl": "a-template",
    }
    b = open_channel(Transport(address, tb, tls=True, ca=ca.pem.read_bytes()))
    try:
        yield d, a, b, keys
    finally:
        await b.close()
        with contextlib.suppress(Exception):
            for s in await a.list():
                await s.destroy()
        await a.close()
        await admin.close()
        d.cleanup()


async def _call(channel: grpc.aio.Channel, m: Any, request: Any) -> tuple[str, str, str, str]:
    """(code, reason, message, every answer's text) of one call, streams included."""
    path = f"/{m.containing_service.full_name}/{m.name}"
    out_type = message_factory.GetMessageClass(m.output_type)
    in_type = message_factory.GetMessageClass(m.input_type)
    kw: dict[str, Any] = {
        "request_serializer": in_type.SerializeToString,
        "response_deserializer": out_type.FromString,
    }
    kind = (m.client_streaming, m.server_streaming)
    make = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[kind]
    rpc = make(path, **kw)
    answers: list[str] = []
    try:
        if not m.server_streaming:
            answers.append(str(await rpc(request, timeout=60)))
        else:
            call = rpc(request, timeout=60)

            async def read() -> None:
                async for item in call:
                    answers.append(str(item))

            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(read(), 5)
            call.cancel()
        return "OK", "", "", "\n".join(answers)
    except grpc.aio.AioRpcError as err:
        status = rpc_status.from_call(err)
        reason = ""
        for detail in status.details if status else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
        return err.code().name, reason, err.details() or "", "\n".join(answers)


def _norm(text: str, keys: K) -> str:
    for name, key in keys.items():
        text = text.replace(key, f"<{name}>")
    return text


def test_the_table_names_every_method() -> None:
    assert set(REQUESTS) == set(_methods())


async def test_tenant_b_gets_nothing_of_tenant_a(world: Any) -> None:
    _d, a, b, keys = world
    methods = _methods()
    secrets_of_a = [v for k, v in keys.items() if k not in ("pid",)] + ["A's secret"]
    for name, build in REQUESTS.items():
        m = methods[name]
        if build is None:
            # No reference: whatever B gets back carries nothing of A's.
            if name == "ImportState":
                continue  # it takes a stream of B's own bytes
            request = message_factory.GetMessageClass(m.input_type)()
            _code, _, message, text = await _call(b, m, request)
            for secret in secrets_of_a:
                assert secret not in text + message, (name, secret)
            continue
        against_a = await _call(b, m, build(keys) if not m.client_streaming else iter(build(keys)))
        for secret in secrets_of_a:
            assert secret not in against_a[3], (name, secret)
        if name in TAKEN:  # (the missing name would be made: B's own then)
            assert against_a[0] == "ALREADY_EXISTS", (name, against_a)
            continue
        against_missing = await _call(
            b, m, build(MISSING) if not m.client_streaming else iter(build(MISSING))
        )
        assert against_a[0] != "OK", (name, against_a)
        seen_a = (against_a[0], against_a[1], _norm(against_a[2], keys))
        seen_missing = (against_missing[0], against_missing[1], _norm(against_missing[2], MISSING))
        assert seen_a == seen_missing, name

    # A's things are all still there, and unchanged.
    s1 = await a.get(keys["sb"])
    assert (await s1.files.read_text("/tmp/a-file")) == "A's secret"
    assert any(p.process_id == keys["pid"] and p.running for p in await s1.processes())
    assert [v.name for v in await a.volumes.list()] == ["a-vol"]
    assert [p.name for p in await a.pools.list()] == ["a-pool"]
    assert list(await a.groups.list()) == ["a-group"]
    assert [n.name for n in await a.networks.list()] == ["a-net"]
    assert keys["state"] in [s.id for s in await a.states.list()]
    assert "a-template" in [t.name for t in await a.templates.list()]
    # An admin's template is everyone's to use, and no tenant's to rebuild or delete.
    assert any(t.name == "base" for t in await a.templates.list())
    # And A sees none of the sandboxes B made on the way (CreateSandbox, clones).
    assert len(await a.list()) == 2
