"""The Vercel fake follows Vercel, not our adapter: Vercel's official SDKs, unmodified
(Python vercel 0.12.1, npm @vercel/sandbox 3.5.0), drive it, and every answer
it gave is validated against the Python SDK's own pydantic models (the JS SDK
checks its zod validators on every answer it takes). Then the adapter is held
to what Vercel does: projectId on calls by name, persistent: false, the
limits checked before the call, Vercel's PATH, stream errors, stdin by offset,
the owner tag and the orphan sweep, and leases."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from vercel.sandbox import (
    SandboxClient,
    SandboxCredentials,
    SandboxQueryByCreatedAt,
    SandboxResources,
    SandboxServiceOptions,
    TagFilter,
)
from vercel.sandbox._internal import api_client as models
from vercel.sandbox._internal.models import ProcessLog

from computesdk import Client, InvalidArgumentError, Resources, UnavailableError
from computesdkd.domain.errors import Internal
from computesdkd.domain.model import Resources as DomainResources
from computesdkd.domain.model import Sandbox as DomainSandbox
from computesdkd.domain.model import SandboxSpec, State
from computesdkd.providers.base import ProviderConfig, ProviderContext
from computesdkd.providers.vercel import limits
from computesdkd.providers.vercel.provider import VercelProvider
from computesdkd.providers.vercel.run import MAX_LINE, ndjson
from conftest import DaemonProcess
from fakes import vercel as fake_mod

JS = Path(__file__).parent / "contract" / "vercel-js"
JS_STEPS = [
    "create (v3, image)",
    "create (v2, runtime)",
    "runCommand: output and exit code",
    "runCommand detached: logs, wait, kill",
    "files: mkDir, writeFiles, readFileToBuffer",
    "list by tag, get, extendTimeout",
    "stop and delete",
]


def _fake(daemon: DaemonProcess) -> fake_mod.FakeVercel:
    fake = daemon.fakes["vercel"]
    assert isinstance(fake, fake_mod.FakeVercel)
    return fake


# ---------------------------------------------------------------- the SDKs' models

_S = r"/api/v2/sandboxes"
_SE = _S + r"/sessions/[^/]+"
# Each route's answer, as the Python SDK reads it: its model, then its conversion.
_ROUTES: list[tuple[str, str, Any, str]] = [
    ("POST", r"/api/v[23]/sandboxes", models._SandboxResponse, "to_sandbox"),
    ("GET", _S, models._SandboxesResponse, ""),
    ("GET", _SE, models._RuntimeSessionResponse, "to_runtime_session"),
    ("POST", _SE + "/stop", models._RuntimeSessionResponse, "to_runtime_session_stop"),
    ("POST", _SE + "/extend-timeout", models._RuntimeSessionResponse, "to_runtime_session"),
    ("POST", _SE + "/cmd", None, ""),  # a JSON command, or an NDJSON stream
    ("GET", _SE + "/cmd", models._CommandsResponse, ""),
    ("GET", _SE + "/cmd/[^/]+", models._CommandResponse, "to_command"),
    ("POST", _SE + "/cmd/[^/]+/kill", models._CommandResponse, "to_command"),
    ("POST", _SE + "/cmd/[^/]+/stdin", models._CommandStdinResponse, "to_command"),
    ("GET", _SE + "/cmd/[^/]+/logs", None, ""),
    ("POST", _SE + "/fs/(mkdir|write)", "empty", ""),
    ("GET|DELETE", _S + "/[^/]+", models._SandboxResponse, "to_sandbox"),
]


def _record(rec: dict[str, Any]) -> None:
    if "command" in rec:
        models._CommandResponse.model_validate(rec).to_command()
    elif rec.get("stream") == "error":
        assert isinstance(rec["data"]["code"], str) and isinstance(rec["data"]["message"], str)
    else:
        ProcessLog.model_validate(rec)


def validate(answers: list[tuple[str, str, int, bytes]]) -> int:
    """Checks each answer against the SDK model for its route; returns how many."""
    for method, path, status, body in answers:
        if status >= 400:  # Vercel's error shape, which both SDKs read
            err = json.loads(body)["error"]
            assert isinstance(err["code"], str) and isinstance(err["message"], str), body
            continue
        route = next(
            ((model, conv) for m, p, model, conv in _ROUTES if re.fullmatch(m, method)
             and re.fullmatch(p, path)),
            None,
        )  # fmt: skip
        assert route is not None, f"no SDK model for {method} {path}"
        model, conv = route
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if model == "empty":
            assert lines == [{}], body
        elif model is None and len(lines) == 1 and set(lines[0]) == {"command"}:
            models._CommandResponse.model_validate(lines[0]).to_command()  # detached
        elif model is None:
            for rec in lines:  # NDJSON
                _record(rec)
        else:
            parsed = model.model_validate(json.loads(body))
            if conv:
                getattr(parsed, conv)()
    return len(answers)


def sdk_client(daemon: DaemonProcess) -> SandboxClient:
    """Vercel's Python SDK, pointed at the fake by its own base_url option."""

    async def creds() -> SandboxCredentials:
        return SandboxCredentials(
            token=fake_mod.TOKEN, team_id=fake_mod.TEAM, project_id=fake_mod.PROJECT
        )

    options = SandboxServiceOptions(
        base_url=daemon.env["VERCEL_API_URL"], credentials_factory=creds
    )
    return SandboxClient.create(options=options)


# ---------------------------------------------------------------- the official SDKs


async def test_the_python_sdk_drives_the_fake(daemon: DaemonProcess) -> None:
    fake = _fake(daemon)
    first = len(fake.answers)

    client = sdk_client(daemon)
    tag = TagFilter(key="contract", value=f"py-{os.getpid()}")
    try:
        sb = await client.create_sandbox(
            resources=SandboxResources(vcpus=2),
            execution_time_limit=120,
            persistent=False,
            tags={tag.key: tag.value},
            env={"GREETING": "hello"},
        )
        assert fake.boxes[sb.name].persistent is False
        done = await sb.run_process(
            "sh", ["-c", "echo $GREETING; echo oops >&2; exit 3"], capture_output=True
        )
        assert (done.returncode, done.stdout, done.stderr) == (3, "hello\n", "oops\n")
        piped = await sb.run_process("cat", input=b"piped", capture_output=True)
        assert (piped.returncode, piped.stdout) == (0, "piped")
        proc = await sb.create_process("sh", ["-c", "read x; echo got:$x"], stdin=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(b"abc\n")
        await proc.stdin.aclose()
        assert await proc.wait() == 0
        assert await proc.stdout.read() == "got:abc\n"
        sleeper = await sb.create_process("sleep", ["30"])
        await sleeper.kill()
        assert await sleeper.wait() == 137
        data = bytes(range(256)) * 16
        await sb.fs.mkdir("/vercel/sandbox/d")
        await sb.fs.write_bytes("/vercel/sandbox/d/blob.bin", data)
        assert await sb.fs.read_bytes("/vercel/sandbox/d/blob.bin") == data
        assert await sb.fs.is_file("/vercel/sandbox/d/blob.bin")
        found = [
            s.name async for s in client.query_sandboxes(query=SandboxQueryByCreatedAt(tag=tag))
        ]
        assert found == [sb.name]
        assert (await client.get_sandbox(name=sb.name)).name == sb.name
        await sb.extend_execution_time_limit(60)
        assert fake.boxes[sb.name].session_timeout == 180_000
        await sb.stop()
        await sb.destroy()
        assert sb.name not in fake.boxes
    finally:
        await client.aclose()
    assert validate(fake.answers[first:]) >= 15


def test_the_js_sdk_drives_the_fake(daemon: DaemonProcess) -> None:
    if not (JS / "node_modules" / "@vercel" / "sandbox").is_dir():
        pytest.skip("tests/contract/vercel-js/node_modules is absent (npm ci there installs it)")
    node = shutil.which("node")
    assert node, "node is needed once the npm packages are installed"
    fake = _fake(daemon)
    first = len(fake.answers)
    env = {
        **os.environ,
        "VERCEL_FAKE_URL": daemon.env["VERCEL_API_URL"],
        "VERCEL_TOKEN": fake_mod.TOKEN,
        "VERCEL_TEAM_ID": fake_mod.TEAM,
        "VERCEL_PROJECT_ID": fake_mod.PROJECT,
        "VERCEL_TELEMETRY_DISABLED": "1",
    }
    run = subprocess.run(
        [node, "contract.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=300
    )
    steps = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0, run.stdout + run.stderr
    assert [s["step"] for s in steps if s["ok"]] == JS_STEPS
    assert validate(fake.answers[first:]) >= 15  # and the Python SDK's models agree


# ---------------------------------------------------------------- the adapter


async def test_the_adapter_creates_as_vercel_wants_and_destroy_frees_it(
    daemon: DaemonProcess, client: Client
) -> None:
    fake = _fake(daemon)
    sb = await client.create("vercel", template="python", metadata={"team": "a"})
    name = f"computesdk-{sb.id}"
    box = fake.boxes[name]
    assert box.persistent is False  # else Vercel keeps and bills a snapshot at every stop
    assert box.image == "vercel/sandbox/python:3.14" and box.runtime is None
    assert box.tags["team"] == "a" and set(box.tags) == {"team", limits.OWNER_TAG}
    assert re.fullmatch(r"[0-9a-f]{16,32}", box.tags[limits.OWNER_TAG])  # from the state dir
    r = await sb.exec("echo $PATH")
    assert "/vercel/bin" in r.stdout.split(":")  # Vercel's PATH, not the daemon's
    assert (await sb.exec("echo $PATH", env={"PATH": "/opt/x:/bin"})).stdout == "/opt/x:/bin\n"
    await sb.destroy()
    assert name not in fake.boxes  # destroy named the project; nothing leaked
    calls = [r for r in fake.requests if f"/v2/sandboxes/{name}?" in r]
    assert calls and all("projectId=prj_fake" in r for r in calls)


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(5)}}, "tags"),
        ({"resources": Resources(cpu_cores=3)}, "vcpus"),
        ({"resources": Resources(cpu_cores=16)}, "vcpus"),
        ({"resources": Resources(cpu_cores=1.5)}, "vcpus"),
        ({"timeout_ms": 25 * 3600 * 1000}, "timeout"),
    ],
)
async def test_vercel_limits_are_checked_before_the_call(
    daemon: DaemonProcess, client: Client, kwargs: dict[str, Any], rule: str
) -> None:
    fake = _fake(daemon)
    creates = sum(r.startswith("POST /api/v3/sandboxes") for r in fake.requests)
    with pytest.raises(InvalidArgumentError) as e:
        await client.create("vercel", template="python", **kwargs)
    assert e.value.metadata.get("provider") == "vercel"
    assert e.value.metadata.get("rule") == rule and "Vercel" in e.value.message
    assert sum(r.startswith("POST /api/v3/sandboxes") for r in fake.requests) == creates


async def test_a_stream_error_fails_the_command_by_name(
    daemon: DaemonProcess, client: Client
) -> None:
    fake = _fake(daemon)
    sb = await client.create("vercel", template="python")
    try:
        fake.break_next_command = {"code": "sandbox_error", "message": "the VM went away"}
        with pytest.raises(UnavailableError) as e:
            await sb.exec("echo lost")
        assert e.value.metadata.get("provider") == "vercel"
        assert "the VM went away" in e.value.message
        assert (await sb.exec("echo again")).stdout == "again\n"
    finally:
        fake.break_next_command = None
        await sb.destroy()


async def test_an_ndjson_line_past_the_bound_is_refused() -> None:
    huge = httpx.Response(200, content=b'{"stream":"stdout","data":"' + b"x" * MAX_LINE)
    with pytest.raises(Internal, match="longer than"):
        async for _ in ndjson(huge, "run command"):
            pass


# ---------------------------------------------------------------- sweep and leases


def _provider(daemon: DaemonProcess, env: dict[str, str] | None = None) -> VercelProvider:
    keys = ("VERCEL_TOKEN", "VERCEL_TEAM_ID", "VERCEL_PROJECT_ID", "VERCEL_API_URL")
    return VercelProvider(
        ProviderConfig("vercel", env={**{k: daemon.env[k] for k in keys}, **(env or {})})
    )


def _sandbox(sid: str, keep_alive: bool = False) -> DomainSandbox:
    spec = SandboxSpec("vercel", "base", {}, 60_000, keep_alive, DomainResources(), {})
    return DomainSandbox(sid, spec, State.CREATING, time.time(), time.time() + 60)


async def test_reconcile_deletes_only_this_daemons_orphans(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    fake = _fake(daemon)
    mine, other = _provider(daemon), _provider(daemon)
    await mine.start(ProviderContext(tmp_path / "a", emit=lambda *a, **k: None))
    await other.start(ProviderContext(tmp_path / "b", emit=lambda *a, **k: None))
    kept, orphan, foreign = _sandbox("vc-kept"), _sandbox("vc-orphan"), _sandbox("vc-foreign")
    try:
        for p, sb in ((mine, kept), (mine, orphan), (other, foreign)):
            await p.create(sb)
        await mine.reconcile({"vc-kept"})
        assert "computesdk-vc-orphan" not in fake.boxes
        assert {"computesdk-vc-kept", "computesdk-vc-foreign"} <= set(fake.boxes)
        again = _provider(daemon)  # a restart keeps the owner tag
        await again.start(ProviderContext(tmp_path / "a", emit=lambda *a, **k: None))
        await again.reconcile(set())
        await again.close()
        assert "computesdk-vc-kept" not in fake.boxes and "computesdk-vc-foreign" in fake.boxes
    finally:
        for p, sb in ((mine, kept), (mine, orphan), (other, foreign)):
            await p.destroy(sb)
        await mine.close()
        await other.close()


async def test_a_keep_alive_lease_is_extended_up_to_the_plan(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    fake = _fake(daemon)
    p = _provider(daemon, {"VERCEL_PLAN": "hobby"})
    await p.start(ProviderContext(tmp_path, emit=lambda *a, **k: None))
    sb = _sandbox("vc-lease", keep_alive=True)
    try:
        await p.create(sb)
        box = fake.boxes["computesdk-vc-lease"]
        assert box.session_timeout == limits.LEASE_MS  # a dead daemon leaks at most this
        sb.provider_data["lease_until"] = str(time.time())  # the lease runs out
        await p.refresh_lease(sb)
        assert box.session_timeout == 45 * 60 * 1000  # Hobby stops a sandbox at 45 minutes
        sb.provider_data["lease_until"] = str(time.time())
        before = len(fake.requests)
        await p.refresh_lease(sb)
        assert not any("extend-timeout" in r for r in fake.requests[before:])
    finally:
        await p.destroy(sb)
        await p.close()
