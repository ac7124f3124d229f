"""What the vercel provider maps onto Vercel's own features, held to Vercel first:
the official SDKs (Python vercel 0.12.1, npm @vercel/sandbox 3.5.0, unmodified)
drive the fake's detached commands (start, logs replayed from the start after the
command ended, wait, kill, a command's timeout) and its routes for the ports
declared at create (sandbox.domain(port)), every answer checked against the
SDK's models. Then the adapter: background processes re-attached from byte
offsets (also by a new provider instance, as after a daemon restart), stdin,
signals, tags refused by name, ids checked before they go into a URL; preview
URLs for declared ports, undeclared ones refused, Vercel's port limit checked
before the call, and a hostile route refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from test_vercel_contract import JS, _fake, _provider, _sandbox, sdk_client, validate

from computesdk import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ProcessNotFoundError,
    UnsupportedError,
)
from computesdkd.domain.errors import FailedPrecondition, Internal, NotFound
from computesdkd.domain.model import Command, ExitStatus, Output, ProcessEvent, Started
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProviderContext
from computesdkd.providers.vercel import routes
from conftest import DaemonProcess
from fakes import vercel as fake_mod

# ---------------------------------------------------------------- the official SDKs


async def test_the_python_sdk_drives_detached_commands_and_routes(daemon: DaemonProcess) -> None:
    fake = _fake(daemon)
    first = len(fake.answers)

    client = sdk_client(daemon)
    try:
        sb = await client.create_sandbox(ports=[3000, 8080], persistent=False)
        got = {r.port: r for r in sb.routes}
        assert set(got) == {3000, 8080}
        assert got[3000].url == f"https://{got[3000].subdomain}.vercel.run"
        again = await client.get_sandbox(name=sb.name)
        assert {r.port: r.subdomain for r in again.routes} == {
            p: r.subdomain for p, r in got.items()
        }
        proc = await sb.create_process("sh", ["-c", "echo one; echo two >&2"])
        assert await proc.wait() == 0
        replay = await sb.get_process(proc.id)  # the logs again, from the first byte
        assert replay.stdout is not None and replay.stderr is not None
        assert (await replay.stdout.read(), await replay.stderr.read()) == ("one\n", "two\n")
        slow = await sb.create_process("sleep", ["30"], kill_after=0.2)
        assert await slow.wait() == 137  # Vercel killed it past its timeout
        await sb.stop()
        await sb.destroy()
    finally:
        await client.aclose()
    assert validate(fake.answers[first:]) >= 8


JS_SCRIPT = """
import assert from "node:assert/strict";
import { Sandbox } from "%s";
const ORIGIN = "https://vercel.com/api";
const fetchFake = (input, init) => {
  const url = typeof input === "string" ? input : input.toString();
  assert.ok(url.startsWith(ORIGIN), `the SDK called ${url}`);
  return globalThis.fetch(process.env.VERCEL_FAKE_URL + url.slice(ORIGIN.length), init);
};
const creds = {
  token: process.env.VERCEL_TOKEN, teamId: process.env.VERCEL_TEAM_ID,
  projectId: process.env.VERCEL_PROJECT_ID, fetch: fetchFake,
};
const sandbox = await Sandbox.create({ ...creds, ports: [3000], persistent: false });
const domain = sandbox.domain(3000);
assert.match(domain, /^https:\\/\\/[a-z0-9-]+\\.vercel\\.run$/);
assert.throws(() => sandbox.domain(4000), /No route for port 4000/);
const args = ["-c", "echo a; echo b >&2"];
const cmd = await sandbox.runCommand({ cmd: "sh", args, detached: true });
assert.equal((await cmd.wait()).exitCode, 0);
const again = await sandbox.getCommand(cmd.cmdId);
const logs = [];
for await (const log of again.logs()) logs.push([log.stream, log.data]);
assert.deepEqual(logs.sort(), [["stderr", "b\\n"], ["stdout", "a\\n"]]);
await sandbox.delete();
console.log(JSON.stringify({ domain }));
"""


def test_the_js_sdk_reads_routes_and_replays_logs(daemon: DaemonProcess, tmp_path: Path) -> None:
    sdk = JS / "node_modules" / "@vercel" / "sandbox" / "dist" / "index.js"
    if not sdk.is_file():
        pytest.skip("tests/contract/vercel-js/node_modules is absent (npm ci there installs it)")
    node = shutil.which("node")
    assert node, "node is needed once the npm packages are installed"
    fake = _fake(daemon)
    first = len(fake.answers)
    script = tmp_path / "features.mjs"
    script.write_text(JS_SCRIPT % sdk.as_uri())
    env = {
        **os.environ,
        "VERCEL_FAKE_URL": daemon.env["VERCEL_API_URL"],
        "VERCEL_TOKEN": fake_mod.TOKEN,
        "VERCEL_TEAM_ID": fake_mod.TEAM,
        "VERCEL_PROJECT_ID": fake_mod.PROJECT,
        "VERCEL_TELEMETRY_DISABLED": "1",
    }
    run = subprocess.run(
        [node, str(script)], cwd=JS, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["domain"].endswith(".vercel.run")
    assert validate(fake.answers[first:]) >= 5


# ---------------------------------------------------------------- background processes


def _joined(evs: list[ProcessEvent], stream: str) -> tuple[int, bytes]:
    """A stream's first offset and its bytes, checking that the offsets follow on."""
    outs = [e for e in evs if isinstance(e, Output) and e.stream == stream]
    at, data = (outs[0].offset if outs else -1), b""
    for o in outs:
        assert o.offset == at + len(data), outs
        data += o.data
    return at, data


async def test_background_processes_reattach_from_offsets(
    daemon: DaemonProcess, client: Client
) -> None:
    fake = _fake(daemon)
    sb = await client.create("vercel", template="python")
    try:
        script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
        proc = await sb.start_process(script)
        done = await proc.wait()
        assert (done.stdout, done.stderr, done.exit_code) == (
            "out1\nout2\nout3\n",
            "err1\nerr2\nerr3\n",
            0,
        )
        out = bytearray()
        err = bytearray()
        async for c in sb.process(proc.id).attach(stdout_offset=7, stderr_offset=13):
            (out if c.stream == "stdout" else err).extend(c.data)
        assert (bytes(out), bytes(err)) == (b"t2\nout3\n", b"3\n")
        past = [c async for c in sb.process(proc.id).attach(stdout_offset=99, stderr_offset=99)]
        assert past == []
        cmd = fake.boxes[f"computesdk-{sb.id}"].commands[proc.id]
        assert cmd.body.get("wait") is None  # detached: Vercel answered at once
    finally:
        await sb.destroy()


async def test_output_past_the_inline_answer_is_read_on_by_reattach(
    daemon: DaemonProcess, client: Client
) -> None:
    """exec.resume: RunCommand answers the first MiB, the rest comes from the logs."""
    sb = await client.create("vercel", template="python")
    try:
        n = 3 * (1 << 20) + 7
        r = await sb.exec(f'python3 -c \'import sys; sys.stdout.write("ab" * {n // 2} + "c")\'')
        assert r.exit_code == 0 and len(r.stdout) == n
        assert r.stdout == "ab" * (n // 2) + "c"
    finally:
        await sb.destroy()


async def test_background_stdin_signals_and_tags(daemon: DaemonProcess, client: Client) -> None:
    sb = await client.create("vercel", template="python")
    try:
        reader = await sb.start_process("read a; read b; echo got:$a:$b", stdin=True)
        await reader.write_stdin("x\n")
        await reader.write_stdin("y\n", close=True)
        assert (await reader.wait()).stdout == "got:x:y\n"
        with pytest.raises(FailedPreconditionError) as closed:
            await reader.write_stdin("late")
        assert closed.value.reason == "PROCESS_EXITED"
        sleeper = await sb.start_process("sleep 30")
        await sleeper.signal(15)
        ended = await sleeper.wait()
        assert (ended.exit_code, ended.signal) == (-1, 15)
        with pytest.raises(UnsupportedError) as tag:
            await sb.start_process("true", tag="web")
        assert tag.value.metadata == {"provider": "vercel", "feature": "process tags"}
        with pytest.raises(NotFoundError):
            await sb.process("cmd_nonesuch").signal(15)
        with pytest.raises(ProcessNotFoundError):  # never reaches the URL's path
            await sb.process("../../v2/x").signal(15)
    finally:
        await sb.destroy()


async def test_a_new_provider_reattaches_and_resumes_stdin(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """After a daemon restart: the output from offsets, and stdin at Vercel's count."""
    first, second = _provider(daemon), _provider(daemon)
    await first.start(ProviderContext(tmp_path, emit=lambda *a, **k: None))
    sb = _sandbox("vc-reattach")
    try:
        await first.create(sb)
        bg = first.part(caps.Background)
        assert bg is not None
        cmd = Command(args=["sh", "-c", "cat; echo done >&2"], stdin=True, cwd="/")
        info = await bg.start_process(sb, cmd, "")
        await bg.write_stdin(sb, info.process_id, b"abc", False)
        later = second.part(caps.Background)
        again = second.part(caps.Reattach)
        assert later is not None and again is not None
        await later.write_stdin(sb, info.process_id, b"def", True)  # learns the offset first
        evs = [ev async for ev in again.attach(sb, info.process_id, 2, 0)]
        assert evs[0] == Started(info.process_id, 0)
        assert isinstance(evs[-1], ExitStatus) and evs[-1].exit_code == 0
        assert _joined(evs, "stdout") == (2, b"cdef") and _joined(evs, "stderr") == (0, b"done\n")
        listing = second.part(caps.ProcessListing)
        assert listing is not None
        listed = await listing.list_processes(sb)
        assert info.process_id in {p.process_id for p in listed}
    finally:
        await first.destroy(sb)
        await first.close()
        await second.close()


# ---------------------------------------------------------------- preview URLs


async def test_declared_ports_get_vercel_routes(daemon: DaemonProcess, client: Client) -> None:
    fake = _fake(daemon)
    sb = await client.create("vercel", template="python", ports=[3000])
    try:
        box = fake.boxes[f"computesdk-{sb.id}"]
        assert [r["port"] for r in box.routes] == [3000]
        url = await sb.get_url(3000)  # nothing listens yet: the URL is Vercel's anyway
        assert url == f"https://{box.routes[0]['subdomain']}.vercel.run"
        with pytest.raises(FailedPreconditionError) as e:
            await sb.get_url(4000)
        assert e.value.metadata.get("provider") == "vercel"
        assert "declare" in e.value.message and e.value.reason == "PORT_NOT_DECLARED"
    finally:
        await sb.destroy()


async def test_vercels_port_limit_is_checked_before_the_call(
    daemon: DaemonProcess, client: Client
) -> None:
    fake = _fake(daemon)
    creates = sum(r.startswith("POST /api/v3/sandboxes") for r in fake.requests)
    with pytest.raises(InvalidArgumentError) as e:
        await client.create("vercel", template="python", ports=range(3000, 3016))
    assert e.value.metadata.get("provider") == "vercel"
    assert e.value.metadata.get("rule") == "ports" and "15 ports" in e.value.message
    assert sum(r.startswith("POST /api/v3/sandboxes") for r in fake.requests) == creates


def test_a_hostile_route_is_refused() -> None:
    ok = routes.parse([{"port": 3000, "subdomain": "sb-1", "url": "x"}], "create")
    assert ok == {3000: "sb-1"}
    for bad in (
        [{"port": 3000, "subdomain": "evil.example/x?", "url": ""}],
        [{"port": 3000, "subdomain": "a" * 64, "url": ""}],
        [{"port": 0, "subdomain": "sb", "url": ""}],
        [{"port": "3000", "subdomain": "sb", "url": ""}],
        [{"port": 3000 + i, "subdomain": "sb", "url": ""} for i in range(routes.MAX_ROUTES + 1)],
        {"port": 3000},
    ):
        with pytest.raises(Internal):
            routes.parse(bad, "create")


async def test_an_undeclared_port_needs_no_call(daemon: DaemonProcess) -> None:
    p = _provider(daemon)
    sb = _sandbox("vc-noport")
    sb.spec = replace(sb.spec, ports=(3000,))
    sb.provider_data = {"session": "se_x", "routes": routes.kept({3000: "sb-abc"})}
    previews = p.part(caps.PreviewUrls)
    assert previews is not None
    assert await previews.preview_url(sb, 3000) == "https://sb-abc.vercel.run"
    with pytest.raises(FailedPrecondition, match="declare it"):
        await previews.preview_url(sb, 3001)
    await p.close()


def test_a_process_id_must_look_like_vercels() -> None:
    from computesdkd.providers.vercel.processes import _checked_id

    assert _checked_id("cmd_abc123") == "cmd_abc123"
    for bad in ("../x", "a/b", "", "x" * 200, "a?b"):
        with pytest.raises(NotFound):
            _checked_id(bad)
