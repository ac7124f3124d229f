"""The Modal fake, driven by Modal's official SDK (`modal`, pinned in daemon[dev]),
unmodified: if the SDK cannot work against the fake, the fake does not follow
Modal. Every response the fake sent is then validated against the SDK's own
generated messages (modal_proto): it parses, re-serializes byte for byte, and
every enum holds a value the SDK knows.

Sandboxes V2 are the SDK's default; V1 is what it uses for GPUs. Files go
through exec, as the daemon's adapter does them: the SDK's filesystem API runs a
helper binary Modal puts in its images (/__modal/.bin), which no fake image has.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import message_factory

from conftest import DaemonProcess
from fakes import modal as modal_fake

modal = pytest.importorskip("modal")
exception = pytest.importorskip("modal.exception")

SDK_VERSION = "1.6.4"


def test_the_sdk_is_the_pinned_one() -> None:
    """A new SDK is checked here first; the adapter says the same version on the wire."""
    from computesdkd.providers.modal import api

    assert modal.__version__ == SDK_VERSION == api.SDK_VERSION


@pytest.fixture
def fake(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("MODAL_SERVER_URL", daemon.env["MODAL_SERVER_URL"])
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(daemon.root / "no-modal.toml"))
    f = daemon.fakes["modal"]
    f.responses.clear()
    f.clock_offset_s = 0.0  # the SDK reads exp on its own clock
    yield f
    f.schedule_after, f.jwt_ttl_s, f.clock_offset_s = 1, 3600.0, 0.0


@pytest_asyncio.fixture
async def sdk(fake: Any) -> AsyncIterator[Any]:
    client = await modal.Client.from_credentials.aio(modal_fake.TOKEN_ID, modal_fake.TOKEN_SECRET)
    yield client
    await client.close.aio()


def _check(msg: Any, where: str) -> None:
    """Every set enum holds a value the SDK's descriptor defines, recursively."""
    for field, value in msg.ListFields():
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            field, value = entry.fields_by_name["value"], list(value.values())
        elif not field.is_repeated:
            value = [value]
        for v in value:
            if field.enum_type is not None:
                assert v in field.enum_type.values_by_number, f"{where}.{field.name}={v}"
            elif field.message_type is not None:
                _check(v, f"{where}.{field.name}")


def validate_responses(fake: Any) -> set[str]:
    """Parses every recorded response with the SDK's own class for its method."""
    seen = set()
    services = [modal_fake.API_SERVICE, modal_fake.ROUTER_SERVICE]
    for name, msg in fake.responses:
        method = next(s.methods_by_name[name] for s in services if name in s.methods_by_name)
        cls = message_factory.GetMessageClass(method.output_type)
        wire = msg.SerializeToString()
        parsed = cls.FromString(wire)
        assert parsed.SerializeToString() == wire, name
        _check(parsed, name)
        seen.add(name)
    return seen


async def _read(stream: Any) -> str:
    return str(await stream.read.aio())


async def scenario(fake: Any, client: Any, app_name: str) -> dict[str, Any]:
    fake.jwt_ttl_s = 20.0  # so short-lived that the SDK refreshes it when it is refused
    app = await modal.App.lookup.aio(app_name, create_if_missing=True, client=client)
    image = modal.Image.from_registry("python:3.11-slim")
    sb = await modal.Sandbox.create.aio(
        app=app, image=image, client=client, timeout=600, tags={"suite": "contract"}
    )
    try:
        p = await sb.exec.aio("sh", "-c", "echo out; echo err >&2; exit 3", env={"A": "b"})
        out, err = await _read(p.stdout), await _read(p.stderr)
        assert (out, err, await p.wait.aio()) == ("out\n", "err\n", 3)

        env = await sb.exec.aio("sh", "-c", "echo $GREETING", env={"GREETING": "hi"})
        assert await _read(env.stdout) == "hi\n"

        cat = await sb.exec.aio("cat")  # stdin, through TaskExecStdinWrite
        cat.stdin.write(b"piped input")
        cat.stdin.write_eof()
        await cat.stdin.drain.aio()
        assert await _read(cat.stdout) == "piped input" and await cat.wait.aio() == 0

        data = bytes(range(256)).hex()  # files, as the daemon's adapter does them
        put = await sb.exec.aio("sh", "-c", "mkdir -p /workspace && cat > /workspace/f.hex")
        put.stdin.write(data.encode())
        put.stdin.write_eof()
        await put.stdin.drain.aio()
        assert await put.wait.aio() == 0
        got = await sb.exec.aio("cat", "/workspace/f.hex")
        assert await _read(got.stdout) == data

        fake.advance(fake.jwt_ttl_s + 1)  # the router JWT expired: the SDK refreshes it
        again = await sb.exec.aio("echo", "after refresh")
        assert await _read(again.stdout) == "after refresh\n"

        await sb.set_tags.aio({"suite": "contract", "run": app_name})
        assert await sb.get_tags.aio() == {"suite": "contract", "run": app_name}
        listed = [
            s.object_id async for s in modal.Sandbox.list.aio(app_id=app.app_id, client=client)
        ]
        tagged = [
            s.object_id
            async for s in modal.Sandbox.list.aio(
                app_id=app.app_id, tags={"run": app_name}, client=client
            )
        ]
        assert sb.object_id in listed and tagged == [sb.object_id]
        assert await sb.poll.aio() is None  # still running
        same = await modal.Sandbox.from_id.aio(sb.object_id, client=client)
        assert same.object_id == sb.object_id
    finally:
        await sb.terminate.aio()
    await sb.wait.aio(raise_on_termination=False)
    assert await sb.poll.aio() is not None
    assert fake.boxes[sb.object_id].terminated
    return {"sandbox": sb, "app": app}


async def test_sdk_v2_default(fake: Any, sdk: Any) -> None:
    fake.schedule_after = 2  # SandboxGetTaskId answers "not scheduled yet" twice
    await scenario(fake, sdk, "contract-v2")
    calls = set(fake.requests)
    assert {"SandboxCreateV2", "AuthTokenGet", "SandboxGetCommandRouterAccess"} <= calls
    assert "SandboxGetTaskIdV2" in calls and "SandboxTerminateV2" in calls
    start = fake.last["TaskExecStart"]
    assert not start.HasField("timeout_secs")  # the SDK leaves it unset without a timeout
    box = fake.boxes[fake.last["SandboxTerminateV2"].sandbox_id]
    assert fake.metadata["SandboxTerminateV2"]["x-modal-sandbox-token"] == box.token
    seen = validate_responses(fake)
    assert {"SandboxCreateV2", "TaskExecStdioRead", "TaskExecWait", "SandboxListV2"} <= seen
    assert {"EnvironmentGetOrCreate", "ImageGetOrCreate", "AppGetOrCreate"} <= seen


async def test_sdk_v1(fake: Any, sdk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_SANDBOX_V2", "0")
    await scenario(fake, sdk, "contract-v1")
    assert {"SandboxCreate", "SandboxGetTaskId", "TaskGetCommandRouterAccess"} <= set(fake.requests)
    assert "SandboxCreate" in validate_responses(fake)


async def test_sdk_gpu_goes_to_v1_and_the_fake_has_no_capacity(fake: Any, sdk: Any) -> None:
    app = await modal.App.lookup.aio("contract-gpu", create_if_missing=True, client=sdk)
    with pytest.raises(exception.Error) as e:
        await modal.Sandbox.create.aio(
            app=app, image=modal.Image.from_registry("python:3.11-slim"), client=sdk, gpu="T4"
        )
    assert "GPU" in str(e.value)
    assert fake.last["SandboxCreate"].definition.resources.gpu_config.count == 1
    validate_responses(fake)


async def test_sdk_exec_timeout_is_carried(fake: Any, sdk: Any) -> None:
    app = await modal.App.lookup.aio("contract-timeout", create_if_missing=True, client=sdk)
    sb = await modal.Sandbox.create.aio(
        app=app, image=modal.Image.from_registry("python:3.11-slim"), client=sdk
    )
    try:
        p = await sb.exec.aio("sleep", "30", timeout=1)
        assert await p.wait.aio() != 0
        assert fake.last["TaskExecStart"].timeout_secs == 1
    finally:
        with contextlib.suppress(exception.Error):
            await sb.terminate.aio()
    validate_responses(fake)


# ---------------------------------------------------------------- the adapter on the fake


async def _modal_box(client: Any, **kw: Any) -> Any:
    from computesdk import Resources

    return await client.create(
        "modal", template="python", resources=Resources(memory_mb=512), timeout_ms=600_000, **kw
    )


async def test_adapter_speaks_v2_as_the_sdk_does(fake: Any, client: Any) -> None:
    fake.schedule_after = 3  # the adapter polls SandboxGetTaskIdV2 until the task is there
    before = fake.requests.count("SandboxGetTaskIdV2")
    sb = await _modal_box(client)
    try:
        assert fake.requests.count("SandboxGetTaskIdV2") - before == 4
        create = fake.last["SandboxCreateV2"]
        d = create.definition
        assert d.network_access.network_access_type == d.network_access.BLOCKED
        assert not d.block_network and not d.resources.ephemeral_disk_mb
        assert (d.resources.memory_mb, d.resources.memory_mb_max) == (512, 512)
        assert d.timeout_secs == 600
        tags = {t.tag_name: t.tag_value for t in create.tags}
        assert tags["computesdk-sandbox"] == sb.id and tags["computesdk-daemon"]
        assert fake.last["ImageGetOrCreate"].builder_version == modal_fake.BUILDER_VERSION

        assert (await sb.exec("echo $GREETING", env={"GREETING": "hi"})).stdout == "hi\n"
        start = fake.last["TaskExecStart"]
        assert not start.HasField("timeout_secs") and not start.env
        assert {"GREETING": "hi"}.items() <= dict(start.secret_sources[0].env.contents).items()
        await sb.exec("true", timeout_ms=1500)
        assert fake.last["TaskExecStart"].timeout_secs == 2

        issued = len(fake.jwts)
        fake.advance(fake.jwt_ttl_s + 1)  # the router JWT expired under the adapter
        assert (await sb.exec("echo again")).stdout == "again\n"
        assert len(fake.jwts) == issued + 1  # one new JWT, from one refused call
        mine = fake.boxes[fake.last["SandboxGetCommandRouterAccess"].sandbox_id]
        assert fake.metadata["SandboxGetCommandRouterAccess"]["x-modal-sandbox-token"] == mine.token
        proc = await sb.start_process("echo one")
        await proc.wait()
        fake.advance(fake.jwt_ttl_s + 1)  # a stream reopened from its offset with a new JWT
        tail = [c.data async for c in sb.process(proc.id).attach(stdout_offset=1)]
        assert b"".join(tail) == b"ne\n"
        cat = await sb.start_process("cat", stdin=True)  # at TaskExecStdinStatus's offset
        await cat.write_stdin("abc")
        await cat.write_stdin("def", close=True)
        assert (await cat.wait()).stdout == "abcdef"
        assert fake.last["TaskExecStdinWrite"].offset == 3
        eof = await sb.start_process("cat")  # without stdin it reads EOF at once
        assert (await eof.wait()).exit_code == 0
    finally:
        await sb.destroy()
    assert fake.boxes[fake.last["SandboxTerminateV2"].sandbox_id].terminated
    seen = validate_responses(fake)
    assert {"SandboxCreateV2", "SandboxTerminateV2", "TaskExecStdioRead"} <= seen


async def test_adapter_checks_modal_limits_before_the_call(fake: Any, client: Any) -> None:
    from computesdk import InvalidArgumentError, Resources, UnsupportedError

    made = fake.requests.count("SandboxCreateV2")
    with pytest.raises(InvalidArgumentError) as e:
        await client.create("modal", template="python", timeout_ms=25 * 3600 * 1000)
    assert e.value.reason == "PROVIDER_LIMIT" and "24 hours" in e.value.message
    with pytest.raises(UnsupportedError) as u:
        await client.create("modal", template="python", resources=Resources(disk_mb=1024))
    assert u.value.metadata == {"provider": "modal", "feature": "disk limit"}
    assert fake.requests.count("SandboxCreateV2") == made


async def test_adapter_gpu_sandboxes_are_v1(fake: Any, client: Any) -> None:
    from computesdk import ComputeSDKError, Resources

    with pytest.raises(ComputeSDKError):
        await client.create("modal", template="python", resources=Resources(gpu=True))
    d = fake.last["SandboxCreate"].definition
    assert d.resources.gpu_config.count == 1 and not d.resources.ephemeral_disk_mb


async def test_a_restart_terminates_what_a_crash_left_behind(
    daemon: DaemonProcess, fake: Any, sdk: Any
) -> None:
    """Sandboxes tagged with this daemon that no record owns are terminated at start
    (listed by tag, SandboxListV2); another daemon's are left alone."""
    import asyncio
    import secrets

    from conftest import new_daemon

    d = new_daemon()
    d.env.update({k: v for k, v in daemon.env.items() if k.startswith("MODAL_")})
    mine = secrets.token_hex(16)  # the daemon's owner id, kept in its state dir
    d.state.mkdir(parents=True, exist_ok=True)
    (d.state / "modal-owner").write_text(mine + "\n")
    app = await modal.App.lookup.aio("computesdk", create_if_missing=True, client=sdk)
    image = modal.Image.from_registry("python:3.11-slim")
    made = {}
    for owner in (mine, "another-daemon"):
        tags = {"computesdk-daemon": owner, "computesdk-sandbox": "sb-left-behind"}
        sb = await modal.Sandbox.create.aio(app=app, image=image, client=sdk, tags=tags)
        made[owner] = sb
    try:
        d.start()
        for _ in range(200):  # reconcile runs as the daemon starts
            if fake.boxes[made[mine].object_id].terminated:
                break
            await asyncio.sleep(0.05)
        assert fake.boxes[made[mine].object_id].terminated
        assert not fake.boxes[made["another-daemon"].object_id].terminated
        assert fake.last["SandboxListV2"].tags[0].tag_value == mine
    finally:
        d.cleanup()
        for sb in made.values():
            await sb.terminate.aio()


def test_router_addresses_and_tokens_from_modal_are_checked() -> None:
    from computesdkd.domain.errors import Unavailable
    from computesdkd.providers.modal.api import ModalAPI, checked_token, jwt_exp

    remote = ModalAPI({"MODAL_SERVER_URL": "https://api.modal.example"})
    assert remote.router_url("https://r.example:443") == "https://r.example:443"
    for bad in ("http://r.example", "file:///etc/passwd", "https://" + "a" * 3000):
        with pytest.raises(Unavailable):
            remote.router_url(bad)
    loopback = ModalAPI({"MODAL_SERVER_URL": "http://127.0.0.1:1"})
    assert loopback.router_url("http://127.0.0.1:2") == "http://127.0.0.1:2"
    with pytest.raises(Unavailable):
        checked_token("x" * 9000, "router access")
    token = modal_fake.mint_jwt({"exp": 1234})
    assert jwt_exp(token) == 1234.0 and jwt_exp("not.a-jwt") == 0.0 and jwt_exp("") == 0.0


# ---------------------------------------------------------------- tunnels and snapshots


async def test_sdk_tunnels_for_open_ports(fake: Any, sdk: Any) -> None:
    """Encrypted ports come back with the V2 create; an unencrypted one is known
    only later, so the SDK asks SandboxGetTunnelsV2 for the whole set."""
    app = await modal.App.lookup.aio("contract-tunnels", create_if_missing=True, client=sdk)
    image = modal.Image.from_registry("python:3.11-slim")
    sb = await modal.Sandbox.create.aio(app=app, image=image, client=sdk, encrypted_ports=[8080])
    try:
        before = fake.requests.count("SandboxGetTunnelsV2")
        tunnels = await sb.tunnels.aio()
        assert fake.requests.count("SandboxGetTunnelsV2") == before  # kept from the create
        host = fake.boxes[sb.object_id].tunnels[0].host
        assert set(tunnels) == {8080} and tunnels[8080].url == f"https://{host}"
    finally:
        await sb.terminate.aio()
    both = await modal.Sandbox.create.aio(
        app=app, image=image, client=sdk, encrypted_ports=[3000], unencrypted_ports=[2222]
    )
    try:
        tunnels = await both.tunnels.aio()
        assert fake.last["SandboxGetTunnelsV2"].sandbox_id == both.object_id
        assert set(tunnels) == {3000, 2222} and tunnels[2222].tcp_socket[1] > 0
    finally:
        await both.terminate.aio()
    with pytest.raises(exception.InvalidError):  # the SDK's own rule, before any call
        await modal.Sandbox.create.aio(
            app=app, image=image, client=sdk, encrypted_ports=[1], block_network=True
        )
    assert {"SandboxCreateV2", "SandboxGetTunnelsV2"} <= validate_responses(fake)


async def test_sdk_v1_tunnels(fake: Any, sdk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_SANDBOX_V2", "0")
    app = await modal.App.lookup.aio("contract-tunnels-v1", create_if_missing=True, client=sdk)
    sb = await modal.Sandbox.create.aio(
        app=app, image=modal.Image.from_registry("python:3.11-slim"), client=sdk,
        encrypted_ports=[8080],
    )  # fmt: skip
    try:
        assert (await sb.tunnels.aio())[8080].url.startswith("https://")
    finally:
        await sb.terminate.aio()
    assert "SandboxGetTunnels" in validate_responses(fake)


@pytest.mark.parametrize("legacy", [False, True])
async def test_sdk_snapshot_filesystem_and_image_delete(
    fake: Any, sdk: Any, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    """snapshot_filesystem() goes through the router (TaskSnapshotFilesystem) for
    V1 and V2; the V1 legacy switch makes it SandboxSnapshotFs. A sandbox made from
    the image has the files; after image_delete one cannot be made from it."""
    from modal import experimental

    if legacy:
        monkeypatch.setenv("MODAL_SANDBOX_V2", "0")
        monkeypatch.setenv("MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT", "1")
    app = await modal.App.lookup.aio("contract-snap", create_if_missing=True, client=sdk)
    image = modal.Image.from_registry("python:3.11-slim")
    sb = await modal.Sandbox.create.aio(app=app, image=image, client=sdk)
    try:
        put = await sb.exec.aio("sh", "-c", "echo kept > /snap.txt")
        assert await put.wait.aio() == 0
        snap = await sb.snapshot_filesystem.aio()  # the SDK's default ttl: 30 days
        method = "SandboxSnapshotFs" if legacy else "TaskSnapshotFilesystem"
        assert method in fake.requests and snap.object_id in fake.snapshots
        if not legacy:
            assert fake.last["TaskSnapshotFilesystem"].ttl_seconds == 30 * 24 * 3600
    finally:
        await sb.terminate.aio()
    by_id = modal.Image.from_id(snap.object_id, client=sdk)  # ImageFromId, as a later run
    again = await modal.Sandbox.create.aio(app=app, image=by_id, client=sdk)
    try:
        got = await again.exec.aio("cat", "/snap.txt")
        assert await _read(got.stdout) == "kept\n"
    finally:
        await again.terminate.aio()
    await experimental.image_delete.aio(snap.object_id, client=sdk)
    assert snap.object_id not in fake.snapshots
    with pytest.raises(exception.Error):
        await modal.Sandbox.create.aio(app=app, image=snap, client=sdk)
    seen = validate_responses(fake)
    assert {method, "ImageFromId", "ImageDelete"} <= seen


async def test_adapter_preview_urls_are_modal_tunnels(fake: Any, client: Any) -> None:
    from computesdk import FailedPreconditionError

    sb = await _modal_box(client, ports=[8080, 3000])
    try:
        d = fake.last["SandboxCreateV2"].definition
        assert sorted((p.port, p.unencrypted) for p in d.open_ports.ports) == [
            (3000, False), (8080, False),
        ]  # fmt: skip
        # Open ports cannot go with BLOCKED: an empty allowlist keeps egress closed.
        na = d.network_access
        assert na.network_access_type == na.ALLOWLIST and not na.allowed_cidrs
        assert not na.allowed_domains
        box = fake.boxes[sb_modal_id(fake, sb)]
        want = {t.container_port: f"https://{t.host}" for t in box.tunnels}
        before = fake.requests.count("SandboxGetTunnelsV2")
        assert await sb.get_url(8080) == want[8080]  # before anything listens
        assert await sb.get_url(3000) == want[3000]
        assert fake.requests.count("SandboxGetTunnelsV2") == before  # kept from the create
        with pytest.raises(FailedPreconditionError) as e:
            await sb.get_url(9999)
        assert e.value.reason == "PORT_NOT_DECLARED"
        assert "modal" in e.value.message and "declare it" in e.value.message
    finally:
        await sb.destroy()
    plain = await _modal_box(client)
    try:
        d = fake.last["SandboxCreateV2"].definition
        assert d.network_access.network_access_type == d.network_access.BLOCKED
        assert not d.open_ports.ports
        with pytest.raises(FailedPreconditionError):
            await plain.get_url(8080)
    finally:
        await plain.destroy()
    validate_responses(fake)


def sb_modal_id(fake: Any, sb: Any) -> str:
    return next(b.id for b in fake.boxes.values() if b.tags.get("computesdk-sandbox") == sb.id)


async def test_adapter_refuses_a_tunnel_that_is_not_a_host(fake: Any, client: Any) -> None:
    from computesdk import UnavailableError

    fake.tunnel_host = "evil.example/../x"
    try:
        with pytest.raises(UnavailableError) as e:
            await _modal_box(client, ports=[8080])
        assert "tunnel" in e.value.message
    finally:
        fake.tunnel_host = None
    made = max(fake.boxes.values(), key=lambda b: b.created_at)
    assert made.tunnels[0].host == "evil.example/../x"
    assert made.terminated  # the half-made sandbox was freed


async def test_adapter_v1_fetches_tunnels(
    fake: Any, sdk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A V1 create answers with no tunnels: the adapter asks SandboxGetTunnels."""
    import os

    from computesdkd.domain.model import Resources, SandboxSpec, State
    from computesdkd.domain.model import Sandbox as Record
    from computesdkd.providers.modal.api import ModalAPI
    from computesdkd.providers.modal.tunnels import ModalTunnels

    monkeypatch.setenv("MODAL_SANDBOX_V2", "0")  # the SDK makes a V1 sandbox
    app = await modal.App.lookup.aio("v1-tunnels", create_if_missing=True, client=sdk)
    sb = await modal.Sandbox.create.aio(
        app=app, image=modal.Image.from_registry("python:3.11-slim"), client=sdk,
        encrypted_ports=[8080],
    )  # fmt: skip
    api = ModalAPI(
        {"MODAL_SERVER_URL": os.environ["MODAL_SERVER_URL"],
         "MODAL_TOKEN_ID": modal_fake.TOKEN_ID, "MODAL_TOKEN_SECRET": modal_fake.TOKEN_SECRET}
    )  # fmt: skip
    try:
        rec = Record(
            id="sbx-v1",
            spec=SandboxSpec(
                provider="modal", template="python", metadata={}, timeout_ms=0,
                keep_alive=False, resources=Resources(), env={}, ports=(8080,),
            ),
            state=State.RUNNING, created_at=0.0, expires_at=0.0,
            provider_sandbox_id=sb.object_id, provider_data={"api": "v1"},
        )  # fmt: skip
        url = await ModalTunnels(api).preview_url(rec, 8080)
        assert url == f"https://{fake.boxes[sb.object_id].tunnels[0].host}"
        assert fake.last["SandboxGetTunnels"].sandbox_id == sb.object_id
        assert "8080" in rec.provider_data["tunnels"]  # kept: not asked again
        asked = fake.requests.count("SandboxGetTunnels")
        assert await ModalTunnels(api).preview_url(rec, 8080) == url
        assert fake.requests.count("SandboxGetTunnels") == asked
    finally:
        await api.close()
        await sb.terminate.aio()


async def test_adapter_snapshots_restore_in_place_by_recreate(fake: Any, client: Any) -> None:
    """A snapshot is TaskSnapshotFilesystem's image; a restore is a new Modal
    sandbox from it under the same daemon id, the old one terminated after."""
    from computesdk import UnsupportedError

    sb = await _modal_box(client)
    try:
        await sb.exec("echo one > /workspace/f")
        first = sb_modal_id(fake, sb)
        snap = await sb.snapshots.create("s1")
        req = fake.last["TaskSnapshotFilesystem"]
        assert req.ttl_seconds == -1 and req.task_id == fake.boxes[first].task_id
        await sb.exec("echo two > /workspace/f")
        await sb.snapshots.restore(snap.id)
        assert sb.id == (await client.get(sb.id)).id
        assert (await sb.exec("cat /workspace/f")).stdout == "one\n"
        second = fake.last["SandboxCreateV2"]
        assert fake.boxes[first].terminated and second.definition.image_id in fake.snapshots
        assert second.definition.name.startswith(f"computesdk-{sb.id}.r")
        tags = {t.tag_name: t.tag_value for t in second.tags}
        assert tags["computesdk-sandbox"] == sb.id

        state = await sb.save_state("kept")  # a saved state: a new sandbox starts from it
        other = await client.create("modal", restore_from=state, timeout_ms=600_000)
        try:
            assert (await other.exec("cat /workspace/f")).stdout == "one\n"
        finally:
            await other.destroy()
        await client.states.delete(state)
        assert fake.last["ImageDelete"].image_id not in fake.snapshots
        with pytest.raises(UnsupportedError) as u:
            async for _ in client.states.export(sandbox=sb):
                pass
        assert u.value.metadata == {"provider": "modal", "feature": "state export"}
        await sb.snapshots.delete(snap.id)
        assert fake.last["ImageDelete"].image_id == second.definition.image_id
    finally:
        await sb.destroy()
    assert {"TaskSnapshotFilesystem", "ImageDelete"} <= validate_responses(fake)


async def test_a_failed_restore_leaves_the_sandbox_as_it_was(fake: Any, client: Any) -> None:
    """The new Modal sandbox is made before the old one goes: when Modal refuses
    it (here the snapshot's image is gone), the old one runs on, untouched."""
    from computesdk import NotFoundError

    sb = await _modal_box(client)
    try:
        await sb.exec("echo one > /workspace/f")
        snap = await sb.snapshots.create("s1")
        first = sb_modal_id(fake, sb)
        image = next(reversed(fake.snapshots))  # the image the snapshot made
        state = fake.snapshots.pop(image)  # Modal no longer has it
        await sb.exec("echo two > /workspace/f")
        with pytest.raises(NotFoundError):
            await sb.snapshots.restore(snap.id)
        assert not fake.boxes[first].terminated
        assert (await sb.exec("cat /workspace/f")).stdout == "two\n"
        fake.snapshots[image] = state
    finally:
        await sb.destroy()


async def test_volumes_stay_unsupported_and_say_why(fake: Any, client: Any) -> None:
    from computesdk import UnsupportedError

    made = fake.requests.count("SandboxCreateV2")
    with pytest.raises(UnsupportedError) as e:
        await client.create(
            "modal", template="python",
            volumes=[{"name": "modal-vol", "mount_path": "/data", "size_mb": 16}],
        )  # fmt: skip
    assert e.value.metadata == {"provider": "modal", "feature": "volumes"}
    assert "size limit" in e.value.message
    assert fake.requests.count("SandboxCreateV2") == made


def test_the_snapshot_map_outlives_the_daemon_and_is_checked(tmp_path: Any) -> None:
    """Which image holds which snapshot is read back at start; what is not an
    image id is dropped, and a file over the bound is refused."""
    import json

    from computesdkd.domain.errors import NotFound
    from computesdkd.providers.modal.snapshots import MAX_FILE, SnapshotMap

    m = SnapshotMap()
    m.load(tmp_path)
    m.put("snap-1", "im-abc123")
    again = SnapshotMap()
    again.load(tmp_path)
    assert again.image("snap-1") == "im-abc123" and again.ids() == ["snap-1"]
    assert (tmp_path / "modal-snapshots.json").stat().st_mode & 0o777 == 0o600
    again.pop("snap-1")
    with pytest.raises(NotFound):
        again.image("snap-1")
    (tmp_path / "modal-snapshots.json").write_text(
        json.dumps({"good": "im-x1", "bad": "../../etc", "worse": "im-" + "a" * 500})
    )
    loaded = SnapshotMap()
    loaded.load(tmp_path)
    assert loaded.ids() == ["good"]
    (tmp_path / "modal-snapshots.json").write_text(" " * (MAX_FILE + 1))
    with pytest.raises(ValueError):
        SnapshotMap().load(tmp_path)
