"""Attacks on the network listener by a hostile tenant (tenant B holding a valid
write or admin token), an unauthenticated client, and a tenant-admin token
holder, against tenant A and against the socket's admin.

A test that asserts the secure behaviour and FAILS shows a hole that is open
now; its comment says what the attack is. The others cover defences that
tests/security/test_remote_access.py and test_tenant_isolation.py do not."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pki import CA

from computesdk import Client
from computesdk._rpc import Transport, open_channel
from computesdk.admin import Quota
from computesdk_api.admin.v1 import admin_pb2 as ad
from computesdk_api.admin.v1 import admin_pb2_grpc as ad_grpc
from computesdk_api.events.v1 import events_pb2 as ev
from computesdk_api.events.v1 import events_pb2_grpc as ev_grpc
from computesdk_api.filesystem.v1 import filesystem_pb2 as fs
from computesdk_api.filesystem.v1 import filesystem_pb2_grpc as fs_grpc
from computesdk_api.monitoring.v1 import monitoring_pb2 as mon
from computesdk_api.monitoring.v1 import monitoring_pb2_grpc as mon_grpc
from computesdk_api.pool.v1 import pool_pb2 as pl
from computesdk_api.pool.v1 import pool_pb2_grpc as pl_grpc
from computesdk_api.process.v1 import process_pb2 as pr
from computesdk_api.process.v1 import process_pb2_grpc as pr_grpc
from computesdk_api.sandbox.v1 import sandbox_pb2 as sb
from computesdk_api.sandbox.v1 import sandbox_pb2_grpc as sb_grpc
from computesdk_api.snapshot.v1 import snapshot_pb2 as sn
from computesdk_api.snapshot.v1 import snapshot_pb2_grpc as sn_grpc
from computesdk_api.template.v1 import template_pb2 as tp
from computesdk_api.template.v1 import template_pb2_grpc as tp_grpc
from computesdk_api.volume.v1 import volume_pb2 as vo
from computesdk_api.volume.v1 import volume_pb2_grpc as vo_grpc
from computesdkd.features.snapshots import archive
from conftest import DaemonProcess, new_daemon, serving_port

# ----------------------------------------------------------------- the world


@dataclass
class Net:
    daemon: DaemonProcess
    admin: Client
    address: str
    ca: CA
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def token(self, tenant: str, scope: str = "write", ttl: int = 0) -> str:
        _, secret = await self.admin.admin.create_token(tenant, scope, ttl_seconds=ttl)
        return secret

    def channel(self, token: str | None) -> grpc.aio.Channel:
        ch = open_channel(Transport(self.address, token, tls=True, ca=self.ca.pem.read_bytes()))
        self.channels.append(ch)
        return ch

    async def tenant(self, tenant: str, scope: str = "write") -> grpc.aio.Channel:
        return self.channel(await self.token(tenant, scope))

    def socket_channel(self) -> grpc.aio.Channel:
        ch = open_channel(Transport(f"unix:{self.daemon.socket}"))
        self.channels.append(ch)
        return ch


@pytest_asyncio.fixture(scope="module")
async def net() -> AsyncIterator[Net]:
    d = new_daemon()
    ca = CA(d.root)
    server = ca.issue("server", server=True)
    d.extra_args = ["--listen", "127.0.0.1:0", "--tls-cert", str(server.cert),
                    "--tls-key", str(server.key)]  # fmt: skip
    d.start()
    admin = await Client.connect(socket=d.socket)
    n = Net(d, admin, f"127.0.0.1:{serving_port(d)}", ca)
    try:
        yield n
    finally:
        for ch in n.channels:
            with contextlib.suppress(Exception):
                await ch.close()
        await admin.close()
        d.cleanup()


@dataclass
class Failure:
    code: str
    reason: str
    message: str
    metadata: dict[str, str]


def _failure(err: grpc.aio.AioRpcError) -> Failure:
    status = rpc_status.from_call(err)
    reason, meta = "", {}
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason, meta = info.reason, dict(info.metadata)
    return Failure(err.code().name, reason, err.details() or "", meta)


async def _fails(coro: Any) -> Failure | None:
    """None when the call succeeded, else how it failed."""
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        return _failure(err)
    return None


async def _create(ch: grpc.aio.Channel, **kw: Any) -> sb.Sandbox:
    kw.setdefault("provider", "local")
    resp = await sb_grpc.SandboxServiceStub(ch).CreateSandbox(
        sb.CreateSandboxRequest(**kw), timeout=60
    )
    return resp.sandbox


async def _destroy(ch: grpc.aio.Channel, sandbox_id: str) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await sb_grpc.SandboxServiceStub(ch).DestroySandbox(
            sb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout=60
        )


async def _destroy_all(ch: grpc.aio.Channel) -> None:
    stub = sb_grpc.SandboxServiceStub(ch)
    for s in (await stub.ListSandboxes(sb.ListSandboxesRequest(), timeout=30)).sandboxes:
        await _destroy(ch, s.id)


async def _sh(ch: grpc.aio.Channel, sandbox_id: str, command: str) -> str:
    resp = await pr_grpc.ProcessServiceStub(ch).RunCommand(
        pr.RunCommandRequest(sandbox_id=sandbox_id, command=pr.Command(command=command)),
        timeout=60,
    )
    return resp.stdout.decode(errors="replace")


async def _build(
    ch: grpc.aio.Channel,
    name: str,
    base_image: str = "",
    setup: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> tuple[Failure | None, str]:
    """How a build ended (None: built) and everything its stream said."""
    req = tp.BuildTemplateRequest(
        provider="local",
        definition=tp.TemplateDefinition(
            name=name, base_image=base_image, setup=list(setup), env=env or {}
        ),
    )
    said: list[str] = []
    try:
        async for item in tp_grpc.TemplateServiceStub(ch).BuildTemplate(req, timeout=110):
            said.append(str(item))
    except grpc.aio.AioRpcError as err:
        return _failure(err), "\n".join(said)
    return None, "\n".join(said)


async def _events(ch: grpc.aio.Channel) -> str:
    """Every stored event the caller may see, as text."""
    out = []
    call = ev_grpc.EventServiceStub(ch).SubscribeEvents(
        ev.SubscribeEventsRequest(no_follow=True), timeout=30
    )
    async for item in call:
        out.append(str(item))
    return "\n".join(out)


def _audit_lines(d: DaemonProcess) -> list[dict[str, object]]:
    return [line for line in d.log_lines() if line.get("event") == "audit"]


# ------------------------------------------------------------------ templates
#
# Template names are the one kind the guard treats as shared: an admin-owned
# (row-less) template passes for everyone. Three consequences follow.


@pytest_asyncio.fixture(scope="module")
async def private_template(net: Net) -> tuple[grpc.aio.Channel, str]:
    """Tenant A's private template, with a secret baked into its files and env."""
    a = await net.tenant("tpl-a")
    failed, said = await _build(
        a,
        "a-private-tpl",
        setup=("mkdir -p /opt && echo A-TEMPLATE-SECRET > /opt/a-secret",),
        env={"A_TEMPLATE_KEY": "a-env-secret"},
    )
    assert failed is None, (failed, said)
    return a, "a-private-tpl"


async def test_a_build_cannot_stand_on_another_tenants_template(
    net: Net, private_template: tuple[grpc.aio.Channel, str]
) -> None:
    # ATTACK: TemplateDefinition.base_image is checked as a template *name*
    # ("template:a-private-tpl" is no template, so it passes as a free name), but
    # the builder reads "template:NAME" as "start from template NAME". Tenant B
    # builds on tenant A's private template and then reads A's files and env.
    _, name = private_template
    b = await net.tenant("tpl-b")
    failed, said = await _build(b, "b-derived", base_image=f"template:{name}", setup=("true",))
    missing, _ = await _build(b, "b-derived-2", base_image="template:zz-no-such", setup=("true",))
    stolen = ""
    if failed is None:
        s = await _create(b, template="b-derived")
        stolen = await _sh(b, s.id, "cat /opt/a-secret; echo $A_TEMPLATE_KEY")
        await _destroy(b, s.id)
    assert failed is not None, f"B built on A's private template and read: {stolen!r}"
    assert missing is not None
    assert (failed.code, failed.reason) == (missing.code, missing.reason)
    assert "A-TEMPLATE-SECRET" not in said


async def test_an_imported_state_cannot_name_another_tenants_template(
    net: Net, private_template: tuple[grpc.aio.Channel, str], tmp_path: Path
) -> None:
    # ATTACK: ImportState takes the template from the archive's manifest, which the
    # tenancy guard never sees (it is inside the uploaded bytes). B uploads a
    # hand-made archive naming A's private template: the imported sandbox runs
    # on A's layers (the archive only fills the upper layer) with A's env.
    _, name = private_template
    b = await net.tenant("tpl-b")
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as t:
        info = tarfile.TarInfo("workspace/hello")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    manifest = {"name": "", "provider": "local", "template": name, "env": {},
                "resources": {}, "metadata": {}}  # fmt: skip
    blob = b"".join(archive.pack(layer, manifest))

    def requests() -> Any:
        yield sn.ImportStateRequest(header=sn.ImportStateHeader(provider="local"))
        for i in range(0, len(blob), 1 << 20):
            yield sn.ImportStateRequest(data=blob[i : i + (1 << 20)])

    stolen = ""
    try:
        resp = await sn_grpc.SnapshotServiceStub(b).ImportState(requests(), timeout=60)
    except grpc.aio.AioRpcError as err:
        refused: Failure | None = _failure(err)
    else:
        refused = None
        stolen = await _sh(b, resp.sandbox.id, "cat /opt/a-secret; echo $A_TEMPLATE_KEY")
        await _destroy(b, resp.sandbox.id)
    assert refused is not None, f"B's import ran on A's private template and read {stolen!r}"
    assert refused.code == "NOT_FOUND"


async def test_a_tenant_cannot_delete_or_rebuild_the_admins_shared_template(net: Net) -> None:
    # ATTACK: the admin's templates are "shared with every tenant", and the guard
    # lets every reference to them through, DeleteTemplate and a BuildTemplate of
    # the same name included. Tenant B deletes one that nobody uses right now, and
    # replaces one with its own build (a backdoor every tenant then starts from).
    admin = net.socket_channel()
    for name in ("shared-del", "shared-poison"):
        failed, said = await _build(admin, name, setup=(f"echo {name}-ok > /opt-marker",))
        assert failed is None, (failed, said)
    b = await net.tenant("tpl-b")
    deleted = await _fails(
        tp_grpc.TemplateServiceStub(b).DeleteTemplate(
            tp.DeleteTemplateRequest(provider="local", name="shared-del"), timeout=30
        )
    )
    poisoned, _ = await _build(b, "shared-poison", setup=("echo pwned-by-b > /opt-marker",))
    a = await net.tenant("tpl-a")
    s = await _create(a, template="shared-poison")
    seen = await _sh(a, s.id, "cat /opt-marker")
    await _destroy(a, s.id)
    names = [
        t.name
        for t in (
            await tp_grpc.TemplateServiceStub(admin).ListTemplates(
                tp.ListTemplatesRequest(provider="local"), timeout=30
            )
        ).templates
    ]
    assert deleted is not None and "shared-del" in names, "B deleted the admin's template"
    assert poisoned is not None, "B rebuilt the admin's template"
    assert seen == "shared-poison-ok\n", f"A's sandbox runs B's build: {seen!r}"


async def test_template_in_use_does_not_name_other_tenants_sandboxes(net: Net) -> None:
    # ATTACK: DeleteTemplate on a shared template that tenant A's sandbox stands on
    # answers TEMPLATE_IN_USE listing every user: A's sandbox ids (and pool names).
    admin = net.socket_channel()
    failed, said = await _build(admin, "shared-used", setup=("true",))
    assert failed is None, (failed, said)
    a = await net.tenant("tpl-a")
    s = await _create(a, template="shared-used")
    try:
        b = await net.tenant("tpl-b")
        refused = await _fails(
            tp_grpc.TemplateServiceStub(b).DeleteTemplate(
                tp.DeleteTemplateRequest(provider="local", name="shared-used"), timeout=30
            )
        )
        assert refused is not None
        assert s.id not in refused.message + json.dumps(refused.metadata), refused
    finally:
        await _destroy(a, s.id)


async def test_template_events_of_a_tenant_are_not_shown_to_others(
    net: Net, private_template: tuple[grpc.aio.Channel, str]
) -> None:
    # ATTACK: template.built / template.deleted are emitted with no sandbox id,
    # and the event filter passes every event of no sandbox ("the daemon's"), so
    # any tenant's SubscribeEvents reads every other tenant's template names.
    _, name = private_template
    b = await net.tenant("tpl-b")
    assert name not in await _events(b)


# ------------------------------------------------------------- base images
#
# base_image accepts oci:PATH and docker-archive:PATH on the daemon's host and
# any registry host: made for root on the socket, reachable now by any tenant.


async def test_a_tenant_cannot_probe_host_paths_through_base_image(net: Net) -> None:
    # ATTACK: "oci:/PATH" is opened on the host as the daemon (root): the answers
    # for a host dir that exists and one that does not differ, and the message
    # echoes the host's errno: a filesystem oracle for any tenant (and with
    # docker-archive:PATH, any tar file on the host becomes the tenant's image).
    b = await net.tenant("img-b")
    there, _ = await _build(b, "probe-1", base_image="oci:/etc")
    missing, _ = await _build(b, "probe-2", base_image="oci:/no-such-dir-here")
    archive_of_host, _ = await _build(b, "probe-3", base_image="docker-archive:/etc/hostname")
    assert there is not None and missing is not None and archive_of_host is not None
    seen_there = (there.code, there.reason, there.message.replace("/etc", "P"))
    seen_missing = (missing.code, missing.reason, missing.message.replace("/no-such-dir-here", "P"))
    assert seen_there == seen_missing, f"host paths are told apart: {there} / {missing}"
    # And the secure answer: host paths are the socket admin's, not a tenant's.
    for refused in (there, archive_of_host):
        assert refused.code in ("PERMISSION_DENIED", "INVALID_ARGUMENT"), refused


async def test_a_tenant_cannot_make_the_daemon_connect_to_host_loopback(net: Net) -> None:
    # ATTACK: a registry base_image is fetched by the daemon itself, from the host's
    # network namespace (builds are fenced off the host; the fetch is not). A tenant
    # points it at 127.0.0.1:PORT and the daemon connects: SSRF to the host's own
    # services (the metrics port, cloud metadata at 169.254.169.254, ...).
    hits: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    hits.append(conn.recv(64))

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        b = await net.tenant("img-b")
        failed, _ = await _build(b, "ssrf", base_image=f"127.0.0.1:{port}/x/y:z")
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        t.join(2)
        srv.close()
    assert failed is not None
    assert not hits, f"the daemon connected to 127.0.0.1:{port} for tenant B ({failed})"


# ------------------------------------------------------------------ listings


async def test_list_page_token_does_not_carry_another_tenants_sandbox(net: Net) -> None:
    # ATTACK: the registry pages over every tenant's sandboxes and the guard only
    # filters the page afterwards, so next_page_token is cut at another tenant's
    # sandbox: base64(json([created_at, "sbx-..."])). With page_size=1, B reads
    # A's ids one by one; with a metadata filter it is also an oracle on A's labels.
    a = await net.tenant("list-a")
    b = await net.tenant("list-b")
    made = [await _create(a, metadata={"team": "a-secret-team"}) for _ in range(3)]
    try:
        stub = sb_grpc.SandboxServiceStub(b)
        leaked: set[str] = set()
        token = ""
        for _ in range(10):
            resp = await stub.ListSandboxes(
                sb.ListSandboxesRequest(page_size=1, page_token=token), timeout=30
            )
            assert not resp.sandboxes
            token = resp.next_page_token
            if not token:
                break
            leaked |= {x for x in json.loads(base64.urlsafe_b64decode(token)) if isinstance(x, str)}
        oracle = await stub.ListSandboxes(
            sb.ListSandboxesRequest(page_size=1, metadata={"team": "a-secret-team"}), timeout=30
        )
        ids = {s.id for s in made}
        assert not (leaked & ids), f"B read A's sandbox ids from page tokens: {leaked & ids}"
        assert oracle.next_page_token == "", "B learns that A labels sandboxes team=a-secret-team"
    finally:
        for s in made:
            await _destroy(a, s.id)


async def test_a_live_event_stream_shows_nothing_of_another_tenant(net: Net) -> None:
    # Defended: B follows every event (no sandbox filter) while A creates, runs,
    # and destroys a sandbox; nothing of A's reaches B's stream.
    a = await net.tenant("live-a")
    b = await net.tenant("live-b")
    seen: list[str] = []
    call = ev_grpc.EventServiceStub(b).SubscribeEvents(ev.SubscribeEventsRequest(), timeout=60)

    async def follow() -> None:
        async for item in call:
            seen.append(str(item))

    task = asyncio.create_task(follow())
    try:
        s = await _create(a, metadata={"who": "a-live-secret"})
        await _sh(a, s.id, "echo hi")
        await _destroy(a, s.id)
        await asyncio.sleep(0.5)
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
    text = "\n".join(seen)
    assert s.id not in text and "a-live-secret" not in text


async def test_the_admins_sandbox_is_as_missing_to_a_tenant(net: Net) -> None:
    # Defended: what the socket's admin made has no owner row, and a tenant's
    # references to it answer as a missing id does; listings leave it out.
    admin = net.socket_channel()
    s = await _create(admin)
    try:
        b = await net.tenant("nosy-b")
        stub = sb_grpc.SandboxServiceStub(b)
        got = await _fails(stub.GetSandbox(sb.GetSandboxRequest(sandbox_id=s.id), timeout=30))
        missing = await _fails(
            stub.GetSandbox(sb.GetSandboxRequest(sandbox_id="sbx-00000000deadbeef"), timeout=30)
        )
        assert got is not None and missing is not None
        assert (got.code, got.reason) == (missing.code, missing.reason)
        assert got.message.replace(s.id, "X") == missing.message.replace(
            "sbx-00000000deadbeef", "X"
        )
        listed = await stub.ListSandboxes(sb.ListSandboxesRequest(), timeout=30)
        assert s.id not in str(listed)
    finally:
        await _destroy(admin, s.id)


async def test_request_ids_belong_to_their_tenant(net: Net) -> None:
    # ATTACK: idempotency keys are looked up daemon-wide. B replays a request_id
    # A used: the answer is REQUEST_ID_CONFLICT carrying A's sandbox_id in its
    # metadata. And B can squat a key A will use: A's create then fails.
    a = await net.tenant("rid-a")
    b = await net.tenant("rid-b")
    sa = await _create(a, request_id="deploy-42")
    await _create(b, request_id="nightly-7")  # B squats a key A will use
    try:
        replay = await _fails(_create(b, request_id="deploy-42"))
        assert replay is None or sa.id not in json.dumps(replay.metadata) + replay.message, (
            f"B learned A's sandbox id from a request_id: {replay}"
        )
        squatted = await _fails(_create(a, request_id="nightly-7"))
        assert replay is None, f"a request_id A used is refused to B: {replay}"
        assert squatted is None, f"B's request_id blocks A's create: {squatted}"
    finally:
        await _destroy_all(a)
        await _destroy_all(b)


async def test_volume_events_are_not_shown_to_other_tenants(net: Net) -> None:
    # ATTACK: volume.created / volume.deleted of a CreateVolume are emitted with no
    # sandbox id ("daemon-wide"), so every tenant's event stream names every other
    # tenant's volumes and their sizes.
    a = await net.tenant("ev-a")
    await vo_grpc.VolumeServiceStub(a).CreateVolume(
        vo.CreateVolumeRequest(name="a-hidden-vol", size_mb=16, persistent=True), timeout=30
    )
    try:
        b = await net.tenant("ev-b")
        assert "a-hidden-vol" not in await _events(b)
    finally:
        await vo_grpc.VolumeServiceStub(a).DeleteVolume(
            vo.DeleteVolumeRequest(name="a-hidden-vol"), timeout=30
        )


async def test_a_stale_ownership_row_does_not_hand_over_the_admins_new_volume(net: Net) -> None:
    # ATTACK: an ephemeral volume goes with its sandbox, but its owner row stays
    # (only a DeleteVolume through the guard releases one), and the admin's own
    # creates never rewrite rows. Tenant A squats a name the admin will use
    # ("backups"): once the admin makes it, A reads, mounts and deletes it.
    a = await net.tenant("stale-a")
    s = await _create(a, volumes=[sb.VolumeMount(name="backups", mount_path="/b", size_mb=16)])
    await _destroy(a, s.id)
    admin = net.socket_channel()
    await vo_grpc.VolumeServiceStub(admin).CreateVolume(
        vo.CreateVolumeRequest(name="backups", size_mb=16, persistent=True), timeout=30
    )
    try:
        seen = await _fails(
            vo_grpc.VolumeServiceStub(a).GetVolume(vo.GetVolumeRequest(name="backups"), timeout=30)
        )
        assert seen is not None and seen.reason == "VOLUME_NOT_FOUND", (
            "tenant A sees (and may mount or delete) the admin's volume"
        )
    finally:
        await vo_grpc.VolumeServiceStub(admin).DeleteVolume(
            vo.DeleteVolumeRequest(name="backups"), timeout=30
        )


# ------------------------------------------------------------------ quotas


async def test_restart_with_resources_stays_within_the_quota(net: Net) -> None:
    # ATTACK: RestartSandbox takes new resources and applies them with no
    # admission: a tenant bound to 1024 MB restarts its 256 MB sandbox at 8 GB.
    await net.admin.admin.set_quota("q-restart", Quota(max_memory_mb=1024))
    b = await net.tenant("q-restart")
    s = await _create(b, resources=sb.Resources(memory_mb=256))
    try:
        refused = await _fails(
            sb_grpc.SandboxServiceStub(b).RestartSandbox(
                sb.RestartSandboxRequest(sandbox_id=s.id, resources=sb.Resources(memory_mb=8192)),
                timeout=60,
            )
        )
        usage = await net.admin.admin.get_quota("q-restart")
        assert refused is not None and refused.reason == "QUOTA_EXCEEDED", (
            f"restart took the tenant to {usage.memory_mb} MB against a bound of 1024"
        )
    finally:
        await _destroy_all(b)


async def test_scale_and_set_limits_stay_within_the_quota(net: Net) -> None:
    # cpu_percent=800 asks 8 cores; capped at this 2-core host it is still above 1.5.
    await net.admin.admin.set_quota("q-scale", Quota(max_memory_mb=1024, max_cpu_cores=1.5))
    b = await net.tenant("q-scale")
    s = await _create(b, resources=sb.Resources(memory_mb=256, cpu_cores=1))
    try:
        stub = mon_grpc.MonitoringServiceStub(b)
        scaled = await _fails(
            stub.Scale(mon.ScaleRequest(sandbox_id=s.id, memory_mb=4096), timeout=30)
        )
        limited = await _fails(
            stub.SetResourceLimits(
                mon.SetResourceLimitsRequest(sandbox_id=s.id, cpu_percent=800), timeout=30
            )
        )
        assert scaled is not None and scaled.reason == "QUOTA_EXCEEDED"
        assert limited is not None and limited.reason == "QUOTA_EXCEEDED"
    finally:
        await _destroy_all(b)


async def test_a_pool_fills_within_the_tenants_creates_per_second(net: Net) -> None:
    # ATTACK: the creates-per-second bucket is charged only by CreateSandbox,
    # BatchCreateSandboxes, CloneSandbox and ImportState. A pool's min is filled
    # by the daemon on the tenant's behalf, uncharged: CreatePool(min=6) makes six
    # sandboxes at once for a tenant allowed one a second (and every Acquire plus
    # Destroy makes the pool create another).
    await net.admin.admin.set_quota("q-pool", Quota(creates_per_second=1))
    b = await net.tenant("q-pool")
    started = time.monotonic()
    await pl_grpc.PoolServiceStub(b).CreatePool(
        pl.CreatePoolRequest(spec=pl.PoolSpec(name="q-pool-p", provider="local", min=6, max=6)),
        timeout=30,
    )
    try:
        made = 0
        for _ in range(100):
            made = (await net.admin.admin.get_quota("q-pool")).sandboxes
            if made >= 6:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert made <= 1 + int(elapsed) + 1, (
            f"{made} sandboxes in {elapsed:.1f}s for a tenant bound to 1 a second"
        )
    finally:
        await pl_grpc.PoolServiceStub(b).DeletePool(pl.DeletePoolRequest(name="q-pool-p"))


async def test_a_burst_of_ephemeral_volumes_stays_within_the_volume_quota(net: Net) -> None:
    # ATTACK: an ephemeral volume counts towards max_volume_mb only once the guard
    # claims it, after the create returned; admit() does not count the ephemeral
    # volumes of creates in flight. A burst of creates, each making a 32 MB
    # volume, all pass a 32 MB bound.
    await net.admin.admin.set_quota("q-vol", Quota(max_volume_mb=32))
    b = await net.tenant("q-vol")
    try:
        results = await asyncio.gather(
            *(
                _fails(
                    _create(
                        b, volumes=[sb.VolumeMount(name=f"qv-{i}", mount_path="/v", size_mb=32)]
                    )
                )
                for i in range(5)
            )
        )
        made = sum(r is None for r in results)
        usage = await net.admin.admin.get_quota("q-vol")
        assert made <= 1, f"{made} ephemeral volumes of 32 MB, usage {usage.volume_mb} MB, bound 32"
    finally:
        await _destroy_all(b)


async def test_a_burst_of_create_volume_stays_within_the_volume_quota(net: Net) -> None:
    # ATTACK: CreateVolume admits, then awaits the provider, and only the guard's
    # settle (after the call) makes the volume the tenant's: concurrent calls each
    # see the others uncounted.
    await net.admin.admin.set_quota("q-vol2", Quota(max_volume_mb=32))
    b = await net.tenant("q-vol2")
    stub = vo_grpc.VolumeServiceStub(b)
    results = await asyncio.gather(
        *(
            _fails(
                stub.CreateVolume(vo.CreateVolumeRequest(name=f"qw-{i}", size_mb=32), timeout=30)
            )
            for i in range(5)
        )
    )
    made = sum(r is None for r in results)
    for i in range(5):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.DeleteVolume(vo.DeleteVolumeRequest(name=f"qw-{i}"), timeout=30)
    assert made <= 1, f"{made} volumes of 32 MB made against a bound of 32 MB"


async def test_sandboxes_asking_no_resources_count_their_defaults_in_the_quota(net: Net) -> None:
    # ATTACK: admission adds the *asked* resources of the new sandbox, and a create
    # that asks none (the provider's default: 1 CPU, 1024 MB here) adds zero; those
    # in flight count zero too until the provider resolved them. A tenant bound to
    # 2048 MB holds three default sandboxes one by one, and more in a burst.
    await net.admin.admin.set_quota("q-default", Quota(max_memory_mb=2048))
    b = await net.tenant("q-default")
    try:
        one_by_one = [await _fails(_create(b)) for _ in range(3)]
        usage = await net.admin.admin.get_quota("q-default")
        assert usage.memory_mb <= 2048, (
            f"{sum(r is None for r in one_by_one)} default sandboxes hold {usage.memory_mb} MB "
            "against a bound of 2048"
        )
        await _destroy_all(b)
        burst = await asyncio.gather(*(_fails(_create(b)) for _ in range(8)))
        usage = await net.admin.admin.get_quota("q-default")
        assert usage.memory_mb <= 2048, (
            f"a burst made {sum(r is None for r in burst)} default sandboxes: {usage.memory_mb} MB"
        )
    finally:
        await _destroy_all(b)


async def test_two_tenants_cannot_both_make_the_same_volume(net: Net) -> None:
    # ATTACK: names are global and "taken answers ALREADY_EXISTS", but CreateVolume
    # checks the name, then awaits mkfs, then records it; the guard claims it after
    # the call. Two tenants racing for a name both succeed: one directory, two
    # tenants told they made it, and the owner row is whichever settled last.
    a = vo_grpc.VolumeServiceStub(await net.tenant("race-a"))
    b = vo_grpc.VolumeServiceStub(await net.tenant("race-b"))
    both = internal = 0
    for i in range(6):
        name = f"race-vol-{i}"
        results = await asyncio.gather(
            _fails(a.CreateVolume(vo.CreateVolumeRequest(name=name, size_mb=64), timeout=30)),
            _fails(b.CreateVolume(vo.CreateVolumeRequest(name=name, size_mb=64), timeout=30)),
        )
        both += all(r is None for r in results)
        internal += sum(r is not None and r.code == "INTERNAL" for r in results)
        for stub in (a, b):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.DeleteVolume(vo.DeleteVolumeRequest(name=name), timeout=30)
    assert both == 0, f"{both} of 6 races: both tenants were told they made the volume"
    assert internal == 0, f"{internal} racers got INTERNAL (an OSError) instead of ALREADY_EXISTS"


async def test_a_draw_from_the_admins_warm_pool_counts_in_the_quota(net: Net) -> None:
    # Defended: a create that takes a member of the admin's warm pool becomes the
    # tenant's spec whole, so it counts, and a burst of draws does not overshoot.
    admin = pl_grpc.PoolServiceStub(net.socket_channel())
    await admin.CreatePool(
        pl.CreatePoolRequest(spec=pl.PoolSpec(name="admin-warm", provider="local", min=4, max=4)),
        timeout=30,
    )
    try:
        for _ in range(200):
            pool = (await admin.GetPool(pl.GetPoolRequest(name="admin-warm"), timeout=30)).pool
            if pool.stats.idle >= 4:
                break
            await asyncio.sleep(0.05)
        await net.admin.admin.set_quota("q-warm", Quota(max_sandboxes=2))
        b = await net.tenant("q-warm")
        results = await asyncio.gather(*(_fails(_create(b)) for _ in range(4)))
        assert sum(r is None for r in results) == 2, results
        assert (await net.admin.admin.get_quota("q-warm")).sandboxes == 2
        await _destroy_all(b)
    finally:
        await admin.DeletePool(pl.DeletePoolRequest(name="admin-warm"), timeout=60)


# ------------------------------------------------------------------ audit, tokens


async def test_a_tenant_named_admin_is_not_the_admin_in_the_audit_log(net: Net) -> None:
    # ATTACK: the audit line writes tenant=(caller.tenant or "admin"), and "admin"
    # is a valid tenant name: whoever holds a token of tenant "admin" writes audit
    # lines that cannot be told from the socket admin's.
    b = await net.tenant("admin")
    s = await _create(b)
    await _destroy(b, s.id)
    lines = [
        line
        for line in _audit_lines(net.daemon)
        if line.get("resource") == s.id and line.get("tenant") == "admin"
    ]
    assert lines
    assert all(line.get("token_id") for line in lines)
    admin_lines = [
        line
        for line in _audit_lines(net.daemon)
        if not line.get("token_id") and line.get("status") == "OK"
    ]
    # Either the tenant is refused that name, or the admin's lines say something
    # no tenant's can.
    assert all(line.get("tenant") != "admin" for line in admin_lines) or not lines, (
        "a tenant named 'admin' writes audit lines like the socket admin's"
    )


async def test_a_tenant_admin_token_cannot_mint_tokens_that_outlive_it(net: Net) -> None:
    # ATTACK: an admin-scope token that expires in an hour mints a token that never
    # expires, and revoking the first leaves the second in force: a leaked
    # short-lived tenant-admin token becomes permanent access.
    parent = await net.token("mint", "admin", ttl=3600)
    ch = net.channel(parent)
    stub = ad_grpc.AdminServiceStub(ch)
    made = await stub.CreateToken(ad.CreateTokenRequest(scope=ad.SCOPE_ADMIN), timeout=30)
    forever = not made.token.HasField("expire_time")
    await net.admin.admin.revoke_token(parent.split("_")[1])
    child = net.channel(made.secret)
    after = await _fails(
        sb_grpc.SandboxServiceStub(child).ListSandboxes(sb.ListSandboxesRequest(), timeout=30)
    )
    assert not forever and after is not None, (
        "a 1-hour admin token minted a never-expiring one that outlives its revocation"
    )


async def test_token_splicing_and_tampering_are_refused(net: Net) -> None:
    # Defended: A's token id with B's secret, a secret with its last byte changed,
    # no prefix but the right parts, extra spaces, lower-case scheme, and a header
    # key in capitals (gRPC folds metadata keys; Python refuses capitals).
    ta = await net.token("splice-a")
    tb = await net.token("splice-b")
    ida, sa = ta.removeprefix("csk_").split("_", 1)
    idb, sbs = tb.removeprefix("csk_").split("_", 1)
    ch = grpc.aio.secure_channel(net.address, grpc.ssl_channel_credentials(net.ca.pem.read_bytes()))
    stub = sb_grpc.SandboxServiceStub(ch)
    try:
        for header, ok in [
            (f"Bearer csk_{ida}_{sbs}", False),
            (f"Bearer csk_{idb}_{sa}", False),
            (f"Bearer csk_{ida}_{sa[:-1]}{'A' if sa[-1] != 'A' else 'B'}", False),
            (f"Bearer csk_{ida}", False),
            (f"Bearer csk_{ida}_", False),
            (f"Bearer csk__{sa}", False),
            (f"Bearer {ta}x", False),
            (f"bearer {ta}", True),
            (f"Bearer   {ta}  ", True),
        ]:
            got = await _fails(
                stub.ListSandboxes(
                    sb.ListSandboxesRequest(), metadata=[("authorization", header)], timeout=10
                )
            )
            if ok:
                assert got is None, header
            else:
                assert got is not None and got.code == "UNAUTHENTICATED", (header, got)
                assert sa not in got.message and sbs not in got.message
        # Two headers: the guard reads one; either way no secret is echoed, and the
        # tenant is one of the two, never a mix.
        got = await _fails(
            stub.ListSandboxes(
                sb.ListSandboxesRequest(),
                metadata=[("authorization", "Bearer junk"), ("authorization", f"Bearer {tb}")],
                timeout=10,
            )
        )
        assert got is None or got.code == "UNAUTHENTICATED"
    finally:
        await ch.close()
    # No secret ever reaches the log.
    text = net.daemon.log.read_text()
    assert sa not in text and sbs not in text


async def test_a_tenant_admin_token_cannot_read_other_tenants_quota_or_tokens(net: Net) -> None:
    # Defended: GetQuota and ListTokens naming another tenant answer as for any
    # other tenant (whether it exists or not), and RevokeToken of another tenant's
    # token answers as for a missing one.
    await net.admin.admin.set_quota("victim", Quota(max_sandboxes=3))
    victim_token, _ = await net.admin.admin.create_token("victim")
    stub = ad_grpc.AdminServiceStub(await net.tenant("nosy", "admin"))
    for tenant in ("victim", "no-such-tenant"):
        q = await _fails(stub.GetQuota(ad.GetQuotaRequest(tenant=tenant), timeout=10))
        t = await _fails(stub.ListTokens(ad.ListTokensRequest(tenant=tenant), timeout=10))
        assert q is not None and (q.code, q.reason) == ("PERMISSION_DENIED", "SCOPE_INSUFFICIENT")
        assert t is not None and (t.code, t.reason) == ("PERMISSION_DENIED", "SCOPE_INSUFFICIENT")
    revoke = await _fails(stub.RevokeToken(ad.RevokeTokenRequest(id=victim_token.id), timeout=10))
    missing = await _fails(stub.RevokeToken(ad.RevokeTokenRequest(id="000000000000"), timeout=10))
    assert revoke is not None and missing is not None
    assert (revoke.code, revoke.reason) == (missing.code, missing.reason)
    # A write token reaches no AdminService method at all.
    w = ad_grpc.AdminServiceStub(await net.tenant("nosy", "write"))
    got = await _fails(w.GetQuota(ad.GetQuotaRequest(), timeout=10))
    assert got is not None and got.reason == "SCOPE_INSUFFICIENT"


# ------------------------------------------------------------- client streams


async def test_a_later_write_file_header_naming_another_tenants_sandbox_is_refused(
    net: Net,
) -> None:
    # Defended: messages after the first of a client stream are checked too. B
    # opens WriteFile on its own sandbox, then sends a second header for A's.
    a = await net.tenant("cs-a")
    b = await net.tenant("cs-b")
    sa = await _create(a)
    sbb = await _create(b)
    try:
        await _sh(a, sa.id, "echo A > /tmp/a-file")

        def requests() -> Any:
            yield fs.WriteFileRequest(header=fs.WriteFileHeader(sandbox_id=sbb.id, path="/tmp/x"))
            yield fs.WriteFileRequest(
                header=fs.WriteFileHeader(sandbox_id=sa.id, path="/tmp/a-file")
            )
            yield fs.WriteFileRequest(data=b"owned by B")

        got = await _fails(fs_grpc.FilesystemServiceStub(b).WriteFile(requests(), timeout=30))
        assert got is not None, "the call succeeded"
        assert (await _sh(a, sa.id, "cat /tmp/a-file")) == "A\n"
    finally:
        await _destroy(a, sa.id)
        await _destroy(b, sbb.id)


async def test_migrate_template_mapping_values_are_checked(
    net: Net, private_template: tuple[grpc.aio.Channel, str]
) -> None:
    # Defended: map values that name templates (MigrateSandboxRequest.template_mapping)
    # are references: B cannot move its sandbox onto A's private template.
    _, name = private_template
    b = await net.tenant("tpl-b")
    s = await _create(b)
    try:
        got = await _fails(
            sb_grpc.SandboxServiceStub(b).MigrateSandbox(
                sb.MigrateSandboxRequest(
                    sandbox_id=s.id, provider="local", template_mapping={"base": name}
                ),
                timeout=60,
            )
        )
        assert got is not None and got.reason == "TEMPLATE_NOT_FOUND", got
    finally:
        await _destroy_all(b)


# ------------------------------------------------------------- unauthenticated


async def test_an_unauthenticated_client_cannot_make_the_daemon_buffer_big_messages(
    net: Net,
) -> None:
    # ATTACK: the listener takes 64 MiB messages from anyone, and a unary call's
    # request is read and parsed before the handler that refuses it runs. Without a
    # token, a few concurrent 48 MiB calls make the daemon hold hundreds of MiB.
    pid = net.daemon.proc.pid if net.daemon.proc else 0

    def hwm() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    before = hwm()
    ch = grpc.aio.secure_channel(
        net.address,
        grpc.ssl_channel_credentials(net.ca.pem.read_bytes()),
        options=[("grpc.max_send_message_length", 64 << 20)],
    )
    stub = sb_grpc.SandboxServiceStub(ch)
    big = sb.CreateSandboxRequest(metadata={"k": "x" * (48 << 20)})
    try:
        results = await asyncio.gather(
            *(_fails(stub.CreateSandbox(big, timeout=60)) for _ in range(6))
        )
    finally:
        await ch.close()
    assert all(
        r is not None and r.code in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED") for r in results
    )
    grown = hwm() - before
    assert grown < 128 << 20, f"the daemon's peak memory grew by {grown >> 20} MiB for no token"
