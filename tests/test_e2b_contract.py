"""The E2B fake follows E2B: E2B's own SDK (e2b, at the version daemon[dev] pins),
unmodified, drives it through every call the adapter makes and the ones the SDK
makes beside them, and every answer the fake gives is checked against the SDK's
own models (the REST API's generated attrs models with no field they do not
know, envd's protobuf messages decoded strictly). Then the adapter is held to
what the fake, so E2B, says."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    SandboxNotFoundException,
    SandboxQuery,
    TimeoutException,
)
from e2b.api.client import models
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.process import process_pb

from computesdk import Client, InvalidArgumentError, UnsupportedError
from computesdkd.domain.errors import ComputeError
from computesdkd.domain.model import Command, ExitStatus, Output, State
from computesdkd.domain.model import Sandbox as DomainSandbox
from computesdkd.providers.base import ProviderConfig, ProviderContext
from computesdkd.providers.e2b import api as e2b_api
from computesdkd.providers.e2b.api import E2BAPI
from computesdkd.providers.e2b.provider import E2BProvider
from conftest import DaemonProcess, record
from fakes.e2b import Box, FakeE2B

# The model of each REST answer, by route and status (the SDK's openapi client).
REST_MODELS: dict[tuple[str, int], Any] = {
    ("POST /v2/sandboxes", 201): models.Sandbox,
    ("POST /sandboxes", 201): models.Sandbox,
    ("GET /v2/sandboxes", 200): [models.ListedSandbox],
    ("GET /sandboxes", 200): [models.ListedSandbox],
    ("GET /sandboxes/{id}", 200): models.SandboxDetail,
    ("GET /sandboxes/{id}/metrics", 200): [models.SandboxMetric],
    ("POST /v2/sandboxes/{id}/connect", 200): models.Sandbox,
    ("POST /v2/sandboxes/{id}/connect", 201): models.Sandbox,
    ("POST /sandboxes/{id}/connect", 200): models.Sandbox,
    ("POST /sandboxes/{id}/connect", 201): models.Sandbox,
}
# envd's stream messages, by method; its unary answers are <Method>Response.
STREAMS = {
    "process.Process/Start": process_pb.StartResponse,
    "process.Process/Connect": process_pb.ConnectResponse,
    "filesystem.Filesystem/WatchDir": filesystem_pb.WatchDirResponse,
}


def _check_model(model: Any, body: Any, route: str) -> None:
    if isinstance(model, list):
        assert isinstance(body, list), route
        for item in body:
            _check_model(model[0], item, route)
        return
    parsed = model.from_dict(body)
    assert not parsed.additional_properties, f"{route}: not in E2B's model: {body}"


def check_answers(fake: FakeE2B, since: int) -> set[str]:
    """Validates every answer given after since; returns the routes seen."""
    seen = set()
    for route, status, raw in fake.answers[since:]:
        seen.add(route)
        body = json.loads(raw) if raw else None
        if route == "proxy":  # E2B's proxy, in its own words (not the REST API's Error)
            assert set(body) <= {"sandboxId", "message", "port", "code"} and body["code"] == status
            continue
        if route.startswith("envd "):
            method = route[5:].removesuffix(" end")
            if method.endswith("/files"):
                if status >= 300:  # envd.yaml's Error
                    assert isinstance(body["code"], int) and isinstance(body["message"], str)
                elif route.startswith("envd POST"):
                    for e in body:  # envd.yaml's EntryInfo
                        assert (
                            set(e) <= {"path", "name", "type", "metadata"} and e["type"] == "file"
                        )
                continue
            if route.endswith(" end"):
                continue
            service, name = method.split("/")
            module = process_pb if service.startswith("process") else filesystem_pb
            cls = STREAMS.get(method) or getattr(module, f"{name}Response")
            cls.from_json(raw)  # strict: a field envd does not send fails here
        elif status >= 300:
            _check_model(models.Error, body, route)
        elif body is not None:
            assert (route, status) in REST_MODELS, f"no model for {route} {status}"
            _check_model(REST_MODELS[(route, status)], body, route)
    return seen


@pytest.fixture
def e2b_env(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeE2B]:
    for key in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL"):
        monkeypatch.setenv(key, daemon.env[key])
    monkeypatch.setenv("E2B_HTTP_VERSION", "1.1")  # the fake serves HTTP/1.1 only
    fake: FakeE2B = daemon.fakes["e2b"]
    yield fake
    fake.envd_version = "0.5.7"
    fake.max_hours = 1
    fake.public_by_default = True


async def test_the_sdk_drives_the_fake_and_every_answer_fits_its_models(
    e2b_env: FakeE2B,
) -> None:
    fake, since = e2b_env, len(e2b_env.answers)
    sbx = await AsyncSandbox.create(
        template="base",
        timeout=120,
        envs={"GREETING": "hi"},
        metadata={"owner": "sdk-test"},
        idempotency_key="contract-test-create",
    )
    try:
        result = await sbx.commands.run("echo $GREETING; echo to-stderr >&2")
        assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "to-stderr\n", 0)
        with pytest.raises(CommandExitException) as failed:
            await sbx.commands.run("exit 3")
        assert failed.value.exit_code == 3
        # The command timeout bounds the stream (Connect-Timeout-Ms).
        with pytest.raises(TimeoutException):
            await sbx.commands.run("sleep 30", timeout=1)

        handle = await sbx.commands.run("cat", background=True, stdin=True)
        assert handle.pid in [p.pid for p in await sbx.commands.list()]
        await sbx.commands.send_stdin(handle.pid, "piped input")
        await sbx.commands.close_stdin(handle.pid)
        assert (await handle.wait()).stdout == "piped input"
        sleeper = await sbx.commands.run("sleep 30", background=True)
        assert await sbx.commands.kill(sleeper.pid)

        await sbx.files.make_dir("/workspace/notes")
        await sbx.files.write("/workspace/notes/a.txt", "hello from the sdk")
        assert await sbx.files.read("/workspace/notes/a.txt") == "hello from the sdk"
        # Several files in one multipart upload, and one as a raw stream.
        infos = await sbx.files.write_files(
            [
                {"path": "/workspace/notes/b.txt", "data": "bee"},
                {"path": "/workspace/notes/c.txt", "data": b"sea"},
            ],
            use_octet_stream=False,
        )
        assert [i.path for i in infos] == ["/workspace/notes/b.txt", "/workspace/notes/c.txt"]
        await sbx.files.write("/workspace/notes/d.bin", b"\x00\xff", use_octet_stream=True)
        assert await sbx.files.read("/workspace/notes/c.txt") == "sea"
        assert await sbx.files.read("/workspace/notes/d.bin", format="bytes") == b"\x00\xff"
        names = sorted(e.name for e in await sbx.files.list("/workspace/notes"))
        assert names == ["a.txt", "b.txt", "c.txt", "d.bin"]
        assert await sbx.files.exists("/workspace/notes/a.txt")
        assert (await sbx.files.get_info("/workspace/notes/a.txt")).size == 18

        events: list[Any] = []
        watch = await sbx.files.watch_dir("/workspace/notes", on_event=events.append)
        await sbx.files.write("/workspace/notes/e.txt", "new")
        for _ in range(100):
            if any(e.name == "e.txt" for e in events):
                break
            await asyncio.sleep(0.05)
        await watch.stop()
        assert any(e.name == "e.txt" and e.type.name == "CREATE" for e in events)

        await sbx.files.rename("/workspace/notes/a.txt", "/workspace/notes/z.txt")
        await sbx.files.remove("/workspace/notes/z.txt")
        assert not await sbx.files.exists("/workspace/notes/z.txt")

        info = await sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id and info.metadata == {"owner": "sdk-test"}
        listed = await AsyncSandbox.list(
            query=SandboxQuery(metadata={"owner": "sdk-test"})
        ).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert (
            await AsyncSandbox.list(query=SandboxQuery(metadata={"owner": "x"})).next_items() == []
        )
        assert (await sbx.get_metrics())[0].cpu_count == 1
        await sbx.set_timeout(300)

        # The same idempotency key gives the same sandbox, not a second one.
        again = await AsyncSandbox.create(
            template="base", timeout=120, idempotency_key="contract-test-create"
        )
        assert again.sandbox_id == sbx.sandbox_id

        await sbx.pause()
        assert not await sbx.is_running()
        resumed = await AsyncSandbox.connect(sbx.sandbox_id, timeout=120)
        assert (await resumed.commands.run("echo back")).stdout == "back\n"
    finally:
        assert await sbx.kill()
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.connect(sbx.sandbox_id)
    assert fake.answers[-1][:2] == ("POST /v2/sandboxes/{id}/connect", 404)

    seen = check_answers(fake, since)
    assert {
        "POST /v2/sandboxes",
        "GET /v2/sandboxes",
        "GET /sandboxes/{id}",
        "GET /sandboxes/{id}/metrics",
        "POST /v2/sandboxes/{id}/connect",
        "envd process.Process/Start",
        "envd process.Process/List",
        "envd filesystem.Filesystem/WatchDir",
        "envd filesystem.Filesystem/ListDir",
        "envd POST /files",
    } <= seen


async def test_the_fake_refuses_what_e2b_refuses(e2b_env: FakeE2B) -> None:
    """A timeout past the plan's limit; envd without the sandbox's access token."""
    with pytest.raises(Exception, match="Timeout cannot be greater than 1 hours"):
        await AsyncSandbox.create(template="base", timeout=3601)
    sbx = await AsyncSandbox.create(template="base", timeout=60)
    try:
        box = e2b_env.boxes[sbx.sandbox_id]
        box.max_end = box.started + 90  # E2B counts the plan's limit from the start
        await sbx.set_timeout(3600)
        assert box.end_at <= box.max_end
        url = os.environ["E2B_SANDBOX_URL"]
        async with httpx.AsyncClient() as http:
            headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "Content-Type": "application/json"}
            resp = await http.post(f"{url}/process.Process/List", json={}, headers=headers)
        assert resp.status_code == 401
    finally:
        await sbx.kill()


async def test_the_adapter_speaks_what_the_sdk_speaks(
    daemon: DaemonProcess, client: Client
) -> None:
    """The adapter's create is the SDK's v2 create; its envd calls carry the token."""
    fake: FakeE2B = daemon.fakes["e2b"]
    since = len(fake.bodies)
    sb = await client.create("e2b", template="python", metadata={"k": "v"}, timeout_ms=60_000)
    try:
        creates = [b for r, b in fake.bodies[since:] if r == "POST /v2/sandboxes"]
        assert len(creates) == 1
        sent = models.NewSandboxV2.from_dict(creates[0])
        assert not sent.additional_properties and sent.timeout == 90 and not sent.auto_pause
        assert sent.metadata["k"] == "v" and sent.metadata["computesdk_id"] == sb.id
        # envd answers only with the access token, so these say the adapter sent it
        await sb.files.write("up.txt", b"x" * 10)
        assert await sb.files.read("up.txt") == b"x" * 10
    finally:
        await sb.destroy()


async def test_an_older_envd_gets_a_form_upload(
    daemon: DaemonProcess, client: Client, e2b_env: FakeE2B
) -> None:
    e2b_env.envd_version = "0.5.6"  # before application/octet-stream uploads
    sb = await client.create("e2b", template="python")
    try:
        await sb.files.write("form.bin", b"\x00form\r\n--not-a-boundary\xff")
        assert await sb.files.read("form.bin") == b"\x00form\r\n--not-a-boundary\xff"
    finally:
        await sb.destroy()


async def test_a_timeout_past_the_plan_is_refused_before_the_call(
    daemon: DaemonProcess, client: Client
) -> None:
    fake: FakeE2B = daemon.fakes["e2b"]
    before = fake.requests.count("POST /v2/sandboxes")
    with pytest.raises(InvalidArgumentError) as e:
        await client.create("e2b", template="python", timeout_ms=2 * 3600 * 1000)
    assert "Hobby plan limit of 1 h" in e.value.message
    assert fake.requests.count("POST /v2/sandboxes") == before


# ---------------------------------------------------------------- the adapter, in process


def _provider(daemon: DaemonProcess, state_dir: Path) -> E2BProvider:
    return E2BProvider(ProviderConfig(name="e2b", env=dict(daemon.env), options={}))


def _record(record_id: str, keep_alive: bool = True) -> DomainSandbox:
    return record("e2b", record_id, State.CREATING, keep_alive=keep_alive)


async def test_keep_alive_is_never_asked_past_the_plans_longest_life(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    fake: FakeE2B = daemon.fakes["e2b"]
    p = _provider(daemon, tmp_path)
    await p.start(ProviderContext(state_dir=tmp_path, emit=lambda *a, **k: None))
    sb = _record("lease-test")
    await p.create(sb)
    try:
        box = fake.boxes[sb.provider_sandbox_id]
        assert box.end_at - box.started <= 3600  # the lease fits the Hobby plan
        now = time.time()
        sb.provider_data.update(started_at=str(now - 3500), lease_until=str(now + 10))
        await p.refresh_lease(sb)
        asked = [b for r, b in fake.bodies if r == "POST /sandboxes/{id}/timeout"][-1]
        assert 0 < asked["timeout"] <= 100  # what is left of the hour, not LEASE_S
        calls = len(fake.bodies)
        sb.provider_data.update(started_at=str(now - 3700), lease_until=str(now + 10))
        await p.refresh_lease(sb)  # past the plan's limit: nothing to ask for
        assert len(fake.bodies) == calls
    finally:
        await p.destroy(sb)
        await p.close()


async def test_a_sandbox_without_an_access_token_is_killed_not_used(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake: FakeE2B = daemon.fakes["e2b"]
    unsecured = Box.sandbox
    monkeypatch.setattr(Box, "sandbox", lambda self: {**unsecured(self), "envdAccessToken": None})
    p = _provider(daemon, tmp_path)
    before = set(fake.boxes)
    with pytest.raises(ComputeError, match="no envd access token"):
        await p.create(_record("open-test", keep_alive=False))
    await p.close()
    assert set(fake.boxes) == before  # it was killed at once


async def test_reconcile_kills_only_this_daemons_orphans(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    fake: FakeE2B = daemon.fakes["e2b"]
    p = _provider(daemon, tmp_path)
    await p.start(ProviderContext(state_dir=tmp_path, emit=lambda *a, **k: None))
    owner = (tmp_path / "e2b-owner").read_text().strip()
    made = {}
    async with httpx.AsyncClient(base_url=daemon.env["E2B_API_URL"]) as http:
        for name, meta in {
            "orphan": {"computesdk_daemon": owner, "computesdk_id": "gone"},
            "kept": {"computesdk_daemon": owner, "computesdk_id": "kept"},
            "other": {"computesdk_daemon": "another-daemon", "computesdk_id": "gone"},
        }.items():
            resp = await http.post(
                "/v2/sandboxes",
                json={"templateID": "base", "timeout": 120, "metadata": meta},
                headers={"X-API-Key": daemon.env["E2B_API_KEY"]},
            )
            made[name] = resp.json()["sandboxID"]
        try:
            await p.reconcile({"kept"})
            assert made["orphan"] not in fake.boxes
            assert made["kept"] in fake.boxes and made["other"] in fake.boxes
        finally:
            for sid in made.values():
                await http.delete(
                    f"/sandboxes/{sid}", headers={"X-API-Key": daemon.env["E2B_API_KEY"]}
                )
            await p.close()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"[" + b'"x",' * (3 << 20) + b'"x"]', id="oversized"),
        pytest.param(b'{"sandboxID": "../../teams", "envdVersion": "0.5.7"}', id="hostile id"),
    ],
)
async def test_what_e2b_answers_is_bounded_and_checked(answer: bytes) -> None:
    api = E2BAPI({"E2B_API_KEY": "k", "E2B_API_URL": "http://e2b.invalid"})
    transport = api.http._transport
    transport._inner = httpx.MockTransport(lambda req: httpx.Response(201, content=answer))  # type: ignore[attr-defined]
    p = E2BProvider(ProviderConfig(name="e2b", env={"E2B_API_KEY": "k"}))
    p._api = api
    with pytest.raises(ComputeError, match=r"bytes|sandbox id"):
        await p.create(_record("hostile", keep_alive=False))
    await api.close()


async def test_a_quiet_command_gets_envds_keepalives_and_the_adapter_skips_them(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake: FakeE2B = daemon.fakes["e2b"]
    monkeypatch.setattr(e2b_api, "KEEPALIVE_S", 0.2)
    p = _provider(daemon, tmp_path)
    sb = _record("keepalive-test", keep_alive=False)
    await p.create(sb)
    since = len(fake.answers)
    try:
        run = p.run(sb, Command(args=["sh", "-c", "sleep 1; echo done"], cwd="/"))
        events = [ev async for ev in run.events()]
        assert b"".join(ev.data for ev in events if isinstance(ev, Output)) == b"done\n"
        assert [ev.exit_code for ev in events if isinstance(ev, ExitStatus)] == [0]
        pings = [a for a in fake.answers[since:] if b"keepalive" in a[2]]
        assert pings  # the one-second silence outlasts the 0.2 s ping interval
        check_answers(fake, since)
    finally:
        await p.destroy(sb)
        await p.close()


@pytest.mark.parametrize(
    ("options", "timeout_s", "refused"),
    [
        ({}, 3600, False),
        ({}, 3601, True),
        ({"plan": "pro"}, 2 * 3600, False),
        ({"plan": "pro"}, 24 * 3600 + 1, True),
        ({"max_sandbox_hours": 48}, 40 * 3600, False),
    ],
)
def test_the_plan_sets_the_longest_timeout(
    options: dict[str, Any], timeout_s: int, refused: bool
) -> None:
    p = E2BProvider(ProviderConfig(name="e2b", env={"E2B_API_KEY": "k"}, options=options))
    sb = _record("plan", keep_alive=False)
    sb.spec = dataclasses.replace(sb.spec, timeout_ms=timeout_s * 1000)
    if refused:
        with pytest.raises(ComputeError, match=r"plan limit|team's limit"):
            p._lease(sb)
    else:
        assert timeout_s <= p._lease(sb) <= p._max_life_s


def test_a_plan_e2b_does_not_have_makes_the_provider_unavailable() -> None:
    p = E2BProvider(ProviderConfig(name="e2b", env={"E2B_API_KEY": "k"}, options={"plan": "gold"}))
    assert "providers.e2b.plan must be one of" in p.availability()


# ---------------------------------------------------------------- ports, through E2B's proxy


async def _through_proxy(host: str, token: str | None = None, path: str = "/") -> httpx.Response:
    """A request to https://HOST as E2B's edge takes it: the fake's sandbox
    endpoint stands in for E2B's proxy, which routes by the host alone."""
    headers = {"Host": host}
    if token is not None:
        headers["e2b-traffic-access-token"] = token
    async with httpx.AsyncClient(base_url=os.environ["E2B_SANDBOX_URL"]) as http:
        return await http.get(path, headers=headers)


async def _served(host: str, token: str | None = None, path: str = "/") -> httpx.Response:
    """The answer once the server in the sandbox listens (a 502 until then)."""
    for _ in range(200):
        resp = await _through_proxy(host, token, path)
        if resp.status_code != 502:
            return resp
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing came to listen behind {host}: {resp.text}")


# A server in the sandbox, on the port formatted in; it serves /hi.txt.
SERVER = "mkdir -p /tmp/s; echo served > /tmp/s/hi.txt; exec python3 -m http.server {} -d /tmp/s"


async def test_the_sdk_reaches_a_port_by_its_host_and_private_urls_need_the_token(
    e2b_env: FakeE2B,
) -> None:
    fake, since = e2b_env, len(e2b_env.answers)
    public = await AsyncSandbox.create(template="base", timeout=120)
    private = await AsyncSandbox.create(
        template="base", timeout=120, network={"allow_public_traffic": False}
    )
    try:
        assert public.traffic_access_token is None
        assert isinstance(private.traffic_access_token, str) and private.traffic_access_token
        host = public.get_host(8080)
        assert host == f"8080-{public.sandbox_id}.{public.sandbox_domain}"
        closed = await _through_proxy(host)  # nothing listens yet: E2B says so
        assert closed.status_code == 502 and closed.json()["port"] == 8080
        await public.commands.run(SERVER.format(8080), background=True)
        assert (await _served(host, path="/hi.txt")).text == "served\n"

        host = private.get_host(8081)
        await private.commands.run(SERVER.format(8081), background=True)
        ok = await _served(host, private.traffic_access_token, "/hi.txt")
        assert (ok.status_code, ok.text) == (200, "served\n")
        refused = await _through_proxy(host, path="/hi.txt")  # it listens: only the token
        assert refused.status_code == 403 and "e2b-traffic-access-token" in refused.text
        wrong = await _through_proxy(host, "not-the-token", "/hi.txt")
        assert wrong.status_code == 403
        info = await private.get_info()
        assert info.sandbox_id == private.sandbox_id
    finally:
        await public.kill()
        await private.kill()
    seen = check_answers(fake, since)
    assert {"proxy", "POST /v2/sandboxes", "GET /sandboxes/{id}"} <= seen


def _box_of(fake: FakeE2B, record_id: str) -> Box:
    (box,) = [b for b in fake.boxes.values() if b.metadata.get("computesdk_id") == record_id]
    return box


async def test_expose_port_answers_with_e2bs_url_for_the_port(
    e2b_env: FakeE2B, client: Client
) -> None:
    """The daemon's URL is the one the SDK's get_host names, given before anything
    listens, and E2B's proxy serves the sandbox's port there."""
    fake, since = e2b_env, len(e2b_env.bodies)
    sb = await client.create("e2b", template="python", ports=[8090])
    try:
        sent = [b for r, b in fake.bodies[since:] if r == "POST /v2/sandboxes"][-1]
        assert "network" not in sent  # the project's rule for URLs stands
        url = await sb.get_url(8090)  # nothing listens yet
        sdk = await AsyncSandbox.connect(_box_of(fake, sb.id).id, timeout=120)
        assert url == f"https://{sdk.get_host(8090)}"
        assert await sb.get_url(8090) == url
        await sdk.commands.run(SERVER.format(8090), background=True)
        served = await _served(httpx.URL(url).host, path="/hi.txt")
        assert (served.status_code, served.text) == (200, "served\n")
    finally:
        await sb.destroy()


async def test_envds_port_is_refused_before_any_call(e2b_env: FakeE2B, client: Client) -> None:
    creates = e2b_env.requests.count("POST /v2/sandboxes")
    with pytest.raises(InvalidArgumentError) as at_create:
        await client.create("e2b", template="python", ports=[8000, 49983])
    refused = at_create.value
    assert refused.reason == "PROVIDER_LIMIT" and "49983 is envd's" in refused.message
    assert e2b_env.requests.count("POST /v2/sandboxes") == creates
    sb = await client.create("e2b", template="python")
    try:
        with pytest.raises(InvalidArgumentError) as later:
            await sb.get_url(49983)
        assert later.value.reason == "PROVIDER_LIMIT"
        assert later.value.metadata["provider"] == "e2b"
    finally:
        await sb.destroy()


@pytest.mark.parametrize("token_in_answer", [True, False], ids=["token", "detail only"])
async def test_a_project_with_private_urls_gets_no_url_it_cannot_use(
    e2b_env: FakeE2B, client: Client, monkeypatch: pytest.MonkeyPatch, token_in_answer: bool
) -> None:
    """Where the project made sandbox URLs private, E2B wants the traffic token in
    a header; a URL cannot carry it, so ExposePort refuses by name. The sandbox's
    detail says so too, should the create answer lack the token."""
    e2b_env.public_by_default = False
    if not token_in_answer:
        answer = Box.sandbox
        monkeypatch.setattr(
            Box, "sandbox", lambda self: {**answer(self), "trafficAccessToken": None}
        )
    sb = await client.create("e2b", template="python")
    try:
        assert _box_of(e2b_env, sb.id).traffic_token  # E2B made it private
        with pytest.raises(UnsupportedError) as e:
            await sb.get_url(8080)
        assert e.value.metadata == {
            "provider": "e2b",
            "feature": "preview URLs behind a traffic token",
        }
        assert "e2b-traffic-access-token" in e.value.message
    finally:
        await sb.destroy()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"domain": "evil.example/../x"}, "not a host name"),
        ({"domain": "a" * 300}, "not a host name"),
    ],
)
async def test_the_domain_e2b_gave_is_checked_before_it_goes_into_a_url(
    data: dict[str, str], why: str
) -> None:
    p = E2BProvider(ProviderConfig(name="e2b", env={"E2B_API_KEY": "k"}))
    sb = _record("domain")
    sb.provider_sandbox_id = "iabc123"
    sb.provider_data = dict(data)
    with pytest.raises(ComputeError, match=why):
        await p.preview_url(sb, 8080)
    sb.provider_data = {"domain": "e2b.app"}
    assert await p.preview_url(sb, 8080) == "https://8080-iabc123.e2b.app"
    await p.close()


def test_a_domain_that_is_no_host_name_makes_the_provider_unavailable() -> None:
    p = E2BProvider(ProviderConfig(name="e2b", env={"E2B_API_KEY": "k", "E2B_DOMAIN": "x/y"}))
    assert p.availability() == "E2B_DOMAIN is not a host name"
