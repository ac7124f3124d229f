"""Keeps the Daytona fake honest: Daytona's own SDK (`daytona`, pinned in
daemon[dev]), unmodified, drives it, and every JSON answer the fake gave (to the
SDK and to our adapter) validates against the SDK's generated models. Then the
adapter's own contract: the output markers, leases, orphan sweep and limits."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from daytona import (
    AsyncDaytona,
    CreateSandboxFromSnapshotParams,
    DaytonaConfig,
    DaytonaError,
    FileUpload,
    ListSandboxesQuery,
    SessionExecuteRequest,
)
from daytona.common.filesystem import FileDownloadRequest
from daytona_api_client_async import (
    ListSandboxesResponse,
    PortPreviewUrl,
    Sandbox,
    ToolboxProxyUrl,
)
from daytona_toolbox_api_client_async import (
    Command,
    ErrorResponse,
    ExecuteResponse,
    FileInfo,
    Session,
    SessionCommandLogsResponse,
    SessionExecuteResponse,
    UploadFilesResponse,
    UserHomeDirResponse,
    WorkDirResponse,
)
from pydantic import BaseModel

from computesdk import Client, InvalidArgumentError
from computesdkd.domain.model import Resources as DomainResources
from computesdkd.domain.model import Sandbox as DomainSandbox
from computesdkd.domain.model import SandboxSpec, State
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProviderConfig, ProviderContext
from computesdkd.providers.daytona import api as api_mod
from computesdkd.providers.daytona import files as files_mod
from computesdkd.providers.daytona import previews as previews_mod
from computesdkd.providers.daytona import run as run_mod
from computesdkd.providers.daytona import spec
from computesdkd.providers.daytona.api import DaytonaAPI
from computesdkd.providers.daytona.provider import DaytonaProvider
from conftest import DaemonProcess, new_daemon
from fakes import daytona as fake_mod
from fakes.daytona import FakeDaytona

# The SDK's polling mode: the fake does not serve Daytona's socket.io event feed.
pytestmark = pytest.mark.filterwarnings("ignore:Polling-only mode:DeprecationWarning")

_T = r"/toolbox/[0-9a-f]+"
# (method, path) -> the SDK model of its 200/201/202 answer; None: a list of it.
MODELS: list[tuple[str, str, Any, bool]] = [
    ("POST", r"/api/sandbox", Sandbox, False),
    ("GET", r"/api/sandbox", ListSandboxesResponse, False),
    ("GET", r"/api/sandbox/[0-9a-f]+", Sandbox, False),
    ("DELETE", r"/api/sandbox/[0-9a-f]+", Sandbox, False),
    ("POST", r"/api/sandbox/[0-9a-f]+/ttl/\d+", Sandbox, False),
    ("GET", r"/api/sandbox/[0-9a-f]+/toolbox-proxy-url", ToolboxProxyUrl, False),
    ("GET", r"/api/sandbox/[0-9a-f]+/ports/\d+/preview-url", PortPreviewUrl, False),
    ("POST", _T + r"/process/execute", ExecuteResponse, False),
    ("GET", _T + r"/process/session", Session, True),
    ("GET", _T + r"/process/session/[\w-]+", Session, False),
    ("POST", _T + r"/process/session/[\w-]+/exec", SessionExecuteResponse, False),
    ("GET", _T + r"/process/session/[\w-]+/command/\w+", Command, False),
    ("GET", _T + r"/process/session/[\w-]+/command/\w+/logs", SessionCommandLogsResponse, False),
    ("GET", _T + r"/files", FileInfo, True),
    ("GET", _T + r"/files/info", FileInfo, False),
    ("POST", _T + r"/files/bulk-upload", UploadFilesResponse, False),
    ("GET", _T + r"/user-home-dir", UserHomeDirResponse, False),
    ("GET", _T + r"/work-dir", WorkDirResponse, False),
]


def model_for(method: str, path: str) -> tuple[Any, bool, str]:
    for m, pattern, model, many in MODELS:
        if m == method and re.fullmatch(pattern, path):
            return model, many, f"{m} {pattern}"
    raise AssertionError(f"the fake answered {method} {path} with JSON no SDK model covers")


def invented(m: object) -> list[str]:
    """Keys the fake sent that the SDK's models do not know (and nested ones)."""
    if isinstance(m, list):
        return [k for x in m for k in invented(x)]
    if not isinstance(m, BaseModel):
        return []
    extra = list(getattr(m, "additional_properties", {}))
    return extra + [k for name in type(m).model_fields for k in invented(getattr(m, name))]


def validate_answers(fake: FakeDaytona, since: int) -> set[str]:
    """Every JSON answer since `since` through the SDK's model of it; the routes seen."""
    seen = set()
    for method, path, status, body in list(fake.answers)[since:]:
        if path.endswith("/version"):  # a free-form map in the spec
            continue
        if status >= 300:
            if not path.startswith("/toolbox/"):
                continue  # the control API's errors have no model in the SDK
            model, many, route = ErrorResponse, False, "error"
        else:
            model, many, route = model_for(method, path)
        for item in body if many else [body]:
            # from_dict is the SDK's parse: model_validate of Strict* fields, required ones too.
            parsed = model.from_dict(item)
            assert parsed is not None, (method, path, item)
            assert not invented(parsed), (method, path, invented(parsed))
        seen.add(route)
    return seen


@pytest.fixture
def fake(daemon: DaemonProcess) -> FakeDaytona:
    f = daemon.fakes["daytona"]
    assert isinstance(f, FakeDaytona)
    return f


@pytest_asyncio.fixture
async def sdk(daemon: DaemonProcess) -> AsyncIterator[AsyncDaytona]:
    cfg = DaytonaConfig(
        api_key=daemon.env["DAYTONA_API_KEY"],
        api_url=daemon.env["DAYTONA_API_URL"],
        target="us",
        use_deprecated_polling=True,
    )
    async with AsyncDaytona(cfg) as d:
        yield d


async def test_official_sdk_against_the_fake(sdk: AsyncDaytona, fake: FakeDaytona) -> None:
    since = len(fake.answers)
    sbx = await sdk.create(
        CreateSandboxFromSnapshotParams(
            env_vars={"GREETING": "hi"},
            labels={"owner": "sdk-test"},
            auto_stop_interval=15,
            auto_delete_interval=0,
            ttl_minutes=30,
        ),
        timeout=120,
    )
    try:
        res = await sbx.process.exec("echo $GREETING; echo to-stderr >&2")
        assert (res.exit_code, res.result) == (0, "hi\nto-stderr\n")
        assert (await sbx.process.exec("exit 3")).exit_code == 3
        assert (await sbx.process.exec("pwd", cwd="/tmp")).result == "/tmp\n"

        await sbx.process.create_session("s1")
        sync = await sbx.process.execute_session_command(
            "s1", SessionExecuteRequest(command="echo out; echo err >&2; exit 4")
        )
        assert (sync.stdout, sync.stderr, sync.exit_code) == ("out\n", "err\n", 4)
        assert sync.cmd_id
        run = await sbx.process.execute_session_command(
            "s1", SessionExecuteRequest(command="read line; echo got $line", run_async=True)
        )
        await sbx.process.send_session_command_input("s1", run.cmd_id, "piped")
        out: list[str] = []
        err: list[str] = []
        await sbx.process.get_session_command_logs_async("s1", run.cmd_id, out.append, err.append)
        # The toolbox echoes input into the log as stdout (racing the command's own output).
        assert sorted("".join(out).splitlines()) == ["got piped", "piped"] and err == []
        cmd = await sbx.process.get_session_command("s1", run.cmd_id)
        assert cmd.exit_code == 0
        logs = await sbx.process.get_session_command_logs("s1", sync.cmd_id)
        assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
        assert [c.id for c in (await sbx.process.get_session("s1")).commands] == [
            sync.cmd_id,
            run.cmd_id,
        ]
        assert [s.session_id for s in await sbx.process.list_sessions()] == ["s1"]
        await sbx.process.delete_session("s1")
        with pytest.raises(DaytonaError):
            await sbx.process.get_session("s1")

        home = await sbx.get_user_home_dir()
        assert home == await sbx.get_work_dir()
        await sbx.fs.create_folder(f"{home}/notes", "755")
        await sbx.fs.upload_file(b"hello from the sdk", f"{home}/notes/a.txt")
        await sbx.fs.upload_files([FileUpload(b"two", f"{home}/notes/deep/b.txt")])
        assert await sbx.fs.download_file(f"{home}/notes/a.txt") == b"hello from the sdk"
        assert [f.name for f in await sbx.fs.list_files(f"{home}/notes")] == ["a.txt", "deep"]
        info = await sbx.fs.get_file_info(f"{home}/notes/deep/b.txt")
        assert (info.size, info.is_dir) == (3, False)
        await sbx.fs.set_file_permissions(f"{home}/notes/a.txt", mode="600")
        assert (await sbx.fs.get_file_info(f"{home}/notes/a.txt")).permissions == "600"
        await sbx.fs.move_files(f"{home}/notes/a.txt", f"{home}/notes/c.txt")
        got = await sbx.fs.download_files(
            [FileDownloadRequest(source=f"{home}/notes/c.txt"), FileDownloadRequest(source="/nope")]
        )
        assert got[0].result == b"hello from the sdk" and got[1].error
        await sbx.fs.delete_file(f"{home}/notes", recursive=True)
        with pytest.raises(DaytonaError):
            await sbx.fs.get_file_info(f"{home}/notes")

        # A preview link, before anything listens; private: the token or the key lets in.
        link = await sbx.get_preview_link(8123)
        assert link.sandbox_id == sbx.id and link.token
        await sbx.process.create_session("web")
        await sbx.process.execute_session_command(
            "web",
            SessionExecuteRequest(
                command="cd /tmp && echo served > index.html && python3 -m http.server 8123",
                run_async=True,
            ),
        )
        async with httpx.AsyncClient(timeout=30) as h:
            assert (await h.get(link.url + "/index.html")).status_code == 401
            token = {"X-Daytona-Preview-Token": link.token}
            page = await _until_served(h, link.url + "/index.html", token)
            assert page.text == "served\n"
        await sbx.process.delete_session("web")

        listed = [s.id async for s in sdk.list(ListSandboxesQuery(labels={"owner": "sdk-test"}))]
        assert listed == [sbx.id]
        await sbx.set_ttl(60)
        await sbx.refresh_data()
        assert sbx.state == "started" and sbx.labels["owner"] == "sdk-test"
    finally:
        await sdk.delete(sbx)
    assert (await sdk.get(sbx.id)).state == "destroyed"
    assert [s.id async for s in sdk.list(ListSandboxesQuery(labels={"owner": "sdk-test"}))] == []
    routes = {f"{m} {p}" for m, p, _, _ in MODELS}
    # All but the proxy URL, which the fake puts in the create answer already.
    assert validate_answers(fake, since) == routes - {f"GET {MODELS[5][1]}"} | {"error"}


async def _until_served(h: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """The page, once the server in the sandbox answers (it starts in the background)."""
    deadline = time.monotonic() + 60
    while True:
        resp = await h.get(url, headers=headers)
        if resp.status_code != 502 or time.monotonic() > deadline:
            assert resp.status_code == 200, resp.text
            return resp
        await asyncio.sleep(0.2)


async def test_the_adapter_gets_answers_the_sdk_models_accept(
    client: Client, fake: FakeDaytona
) -> None:
    since = len(fake.answers)
    box = await client.create("daytona", metadata={"who": "adapter"}, timeout_ms=120_000)
    try:
        r = await box.exec("echo hi; echo err >&2")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "err\n", 0)
        r = await box.exec(["sh", "-c", "exit 5"], check=False)
        assert r.exit_code == 5
        await box.files.write("/workspace/x/a.txt", b"data")
        assert await box.files.read("/workspace/x/a.txt") == b"data"
        assert [f.name for f in await box.files.list("/workspace/x")] == ["a.txt"]
        sb = next(b for b in fake.boxes.values() if b.body["labels"].get("who") == "adapter")
        body = sb.body
        assert body["autoDeleteInterval"] == 0 and body["ttlMinutes"] == 4
        assert body["labels"]["computesdk.sandbox"] == box.id
        assert re.fullmatch(r"[0-9a-f]{32}", body["labels"]["computesdk.owner"])
        # One session served both commands: an ended command hands its session back.
        assert len(sb.sessions) == 1
    finally:
        await box.destroy()
    seen = validate_answers(fake, since)
    assert {"POST /api/sandbox", "error"} < seen and len(seen) >= 8


async def test_markers_follow_the_vendors_rule(daemon: DaemonProcess, fake: FakeDaytona) -> None:
    """The toolbox strips the markers from a client that sends neither an SDK
    version nor X-Daytona-Split-Output (which merged stdout and stderr before)."""
    auth = {"Authorization": f"Bearer {fake_mod.API_KEY}"}
    api = daemon.env["DAYTONA_API_URL"]
    async with httpx.AsyncClient(headers=auth, timeout=60) as h:
        sb = (await h.post(f"{api}/sandbox", json={})).json()
        tb = f"{sb['toolboxProxyUrl']}/{sb['id']}"
        try:
            await h.post(f"{tb}/process/session", json={"sessionId": "m"})
            cmd = {"command": "echo hi; echo err >&2"}
            plain = (await h.post(f"{tb}/process/session/m/exec", json=cmd)).json()
            split = (
                await h.post(
                    f"{tb}/process/session/m/exec",
                    json=cmd,
                    headers={"X-Daytona-Split-Output": "true"},
                )
            ).json()
            new_sdk = (
                await h.post(
                    f"{tb}/process/session/m/exec",
                    json=cmd,
                    headers={"X-Daytona-SDK-Version": "0.226.1"},
                )
            ).json()
        finally:
            await h.delete(f"{api}/sandbox/{sb['id']}")
    # (stdout and stderr are two pipes: their order in the log is the scheduler's)
    assert sorted(plain["output"].splitlines()) == ["err", "hi"] and "stdout" not in plain
    assert "\x01" not in plain["output"] and "\x02" not in plain["output"]
    assert fake_mod.demux(split["output"].encode()) == (b"hi\n", b"err\n")
    assert "stdout" not in split  # no SDK version: the toolbox does not demux for us
    assert (new_sdk["stdout"], new_sdk["stderr"]) == ("hi\n", "err\n")


async def test_limits_are_checked_before_the_call(client: Client, fake: FakeDaytona) -> None:
    from computesdk import Resources

    before = len(fake.requests)
    with pytest.raises(InvalidArgumentError) as gpus:
        await client.create("daytona", resources=Resources(gpu=True, gpu_type="T4"))
    assert "GPU type is one of H100" in gpus.value.message
    with pytest.raises(InvalidArgumentError) as reserved:
        await client.create("daytona", metadata={"computesdk.owner": "someone"})
    assert "computesdk." in reserved.value.message
    assert fake.requests[before:] == []  # neither reached Daytona


async def test_a_restarted_daemon_deletes_its_orphans_only(
    daemon: DaemonProcess, sdk: AsyncDaytona, fake: FakeDaytona
) -> None:
    d = new_daemon(on_exit="keep")
    d.env.update({k: v for k, v in daemon.env.items() if k.startswith("DAYTONA_")})
    owner = "ab" * 16
    d.state.mkdir(parents=True)
    (d.state / "daytona-owner").write_text(owner + "\n")

    def labels(o: str) -> dict[str, str]:
        return {"computesdk.owner": o, "computesdk.sandbox": "sb-gone", "t": "orphans"}

    orphan = await sdk.create(CreateSandboxFromSnapshotParams(labels=labels(owner)))
    foreign = await sdk.create(CreateSandboxFromSnapshotParams(labels=labels("cd" * 16)))
    try:
        paged = sdk.list(ListSandboxesQuery(labels={"t": "orphans"}, limit=1))
        assert [s.id async for s in paged] == sorted([orphan.id, foreign.id])  # two pages
        d.start()
        deadline = time.monotonic() + 60
        while orphan.id in fake.boxes and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert orphan.id not in fake.boxes
        assert foreign.id in fake.boxes
        lines = [line for line in d.log_lines() if line.get("event") == "daytona orphan deleted"]
        assert [(line["id"], line["record"]) for line in lines] == [(orphan.id, "sb-gone")]
    finally:
        d.cleanup()
        for s in (orphan, foreign):
            if s.id in fake.boxes:
                await sdk.delete(s)


def test_every_model_row_is_the_sdks() -> None:
    """The table above names models the SDK's generated clients return (so a
    renamed or retyped answer in a new SDK fails here, not in production)."""
    import daytona_api_client_async.api.sandbox_api as control
    import daytona_toolbox_api_client_async.api.file_system_api as fs
    import daytona_toolbox_api_client_async.api.info_api as info
    import daytona_toolbox_api_client_async.api.process_api as proc

    text = "".join(Path(str(m.__file__)).read_text() for m in (control, fs, info, proc))
    for _, _, model, many in MODELS:
        shown = f"List[{model.__name__}]" if many else model.__name__
        assert f'"{shown}"' in text, shown


# ------------------------------------------------------------------ the adapter


def _record(keep_alive: bool, metadata: dict[str, str] | None = None) -> DomainSandbox:
    spec = SandboxSpec(
        provider="daytona",
        template="base",
        metadata=metadata or {},
        timeout_ms=60_000,
        keep_alive=keep_alive,
        resources=DomainResources(),
        env={},
    )
    now = time.time()
    return DomainSandbox("sb-direct", spec, State.CREATING, now, now + 60)


@pytest_asyncio.fixture
async def provider(daemon: DaemonProcess, tmp_path: Path) -> AsyncIterator[DaytonaProvider]:
    env = {k: v for k, v in daemon.env.items() if k.startswith("DAYTONA_")}
    p = DaytonaProvider(ProviderConfig("daytona", env=env))
    await p.start(ProviderContext(state_dir=tmp_path, emit=lambda *a, **k: None))
    yield p
    await p.close()


async def test_a_keep_alive_lease_is_extended_when_it_runs_low(
    provider: DaytonaProvider, fake: FakeDaytona
) -> None:
    sb = _record(keep_alive=True)
    await provider.create(sb)
    try:
        body = fake.boxes[sb.provider_sandbox_id].body
        assert (body["ttlMinutes"], body["autoStopInterval"]) == (spec.LEASE_MIN, 0)
        before = len(fake.requests)
        await provider.refresh_lease(sb)  # a fresh lease: nothing to do
        assert fake.requests[before:] == []
        sb.provider_data["created_at"] = str(time.time() - 600)  # made 10 minutes ago
        sb.provider_data["lease_until"] = str(time.time() + 60)  # and running low
        await provider.refresh_lease(sb)
        assert body["ttlMinutes"] == spec.LEASE_MIN + 10
    finally:
        await provider.destroy(sb)
    assert not (await provider.probe(sb)).alive


JSON_TYPE = {"content-type": "application/json"}


def _hostile(answer: bytes) -> DaytonaAPI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(answer), headers=JSON_TYPE)

    return DaytonaAPI({"DAYTONA_API_KEY": "k"}, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b'{"id": "' + b"x" * api_mod.MAX_BODY + b'"}', "larger than"),
        (b'{"id": "../../organizations", "state": "started"}', "id is malformed"),
        (b'{"id": "abc", "state": "started", "toolboxProxyUrl": "file:///etc"}', "not http"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
async def test_what_daytona_returns_is_checked(answer: bytes, why: str) -> None:
    p = DaytonaProvider(ProviderConfig("daytona", env={"DAYTONA_API_KEY": "k"}))
    await p._api.close()
    p._api = _hostile(answer)
    try:
        with pytest.raises(Exception) as e:
            await p.create(_record(keep_alive=False))
        assert why in str(e.value) and getattr(e.value, "reason", "") == "PROVIDER_ERROR"
    finally:
        await p.close()


def test_listed_names_must_be_one_path_segment() -> None:
    entry = {"name": "../../etc", "isDir": False, "size": 1, "permissions": "644"}
    with pytest.raises(Exception, match="one path segment"):
        files_mod._info(entry, "/workspace")


def test_output_without_markers_is_kept_as_stdout() -> None:
    buf = bytearray(b"merged output")
    chunks, current = run_mod.demux(buf, None)
    assert chunks == [("stdout", b"merged output")] and current is None
    buf = bytearray(b"\x02\x02\x02err\n\x01\x01")  # a marker split across frames
    chunks, current = run_mod.demux(buf, None)
    assert (chunks, current, bytes(buf)) == ([("stderr", b"err\n")], "stderr", b"\x01\x01")


# ------------------------------------------------------- processes and previews


async def test_background_processes_run_in_sessions_of_their_own(
    client: Client, fake: FakeDaytona
) -> None:
    box = await client.create("daytona", metadata={"who": "background"})
    try:
        sb = next(b for b in fake.boxes.values() if b.body["labels"].get("who") == "background")
        assert sb.body["public"] is False  # previews want the token
        proc = await box.start_process(
            "printf abcdef; printf XYZ >&2; printf ghi; sleep 600", tag="server"
        )
        session, cmd_id = proc.id.split(":")
        assert cmd_id in sb.sessions[session].commands
        listed = {p.process_id: p for p in await box.processes()}
        assert (listed[proc.id].tag, listed[proc.id].running) == ("server", True)
        assert listed[proc.id].args[-1] == "printf abcdef; printf XYZ >&2; printf ghi; sleep 600"
        # The output is there once the log holds all of it; then attach from offsets.
        deadline = time.monotonic() + 60
        log = sb.sessions[session].commands[cmd_id].log
        while fake_mod.demux(bytes(log)) != (b"abcdefghi", b"XYZ") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader = box.process(proc.id).attach(stdout_offset=4, stderr_offset=1)
        got: dict[str, list[tuple[int, bytes]]] = {"stdout": [], "stderr": []}

        async def read() -> None:
            async for c in reader:
                got[c.stream].append((c.offset, c.data))

        task = asyncio.create_task(read())
        while b"".join(d for _, d in got["stdout"]) != b"efghi" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await proc.kill()  # deletes its session: the attach ends with the kill
        await task
        assert b"".join(d for _, d in got["stdout"]) == b"efghi"
        assert got["stdout"][0][0] == 4 and got["stderr"] == [(1, b"YZ")]
        assert session not in sb.sessions
        ended = await box.process(proc.id).wait()
        assert (ended.signal, ended.stdout) == (9, "")  # attach from 0 of a killed one: its end
        assert proc.id not in {p.process_id for p in await box.processes()}
    finally:
        await box.destroy()


async def test_a_finished_process_is_read_again_exactly(client: Client, fake: FakeDaytona) -> None:
    box = await client.create("daytona")
    try:
        proc = await box.start_process(
            "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 7"
        )
        whole = await proc.wait()
        assert (whole.stdout, whole.stderr, whole.exit_code) == (
            "out1\nout2\nout3\n",
            "err1\nerr2\nerr3\n",
            7,
        )
        for so, se in ((0, 0), (5, 10), (15, 15), (99, 3)):
            part = [(c.stream, c.offset, c.data) async for c in box.process(proc.id).attach(so, se)]
            out = b"".join(d for s, _, d in part if s == "stdout")
            err = b"".join(d for s, _, d in part if s == "stderr")
            assert (out, err) == (b"out1\nout2\nout3\n"[so:], b"err1\nerr2\nerr3\n"[se:])
            firsts = {s: o for s, o, _ in reversed(part)}
            assert all(firsts[s] == {"stdout": so, "stderr": se}[s] for s in firsts)
        listed = {p.process_id: p for p in await box.processes()}
        assert (listed[proc.id].running, listed[proc.id].exit_code) == (False, 7)
    finally:
        await box.destroy()


async def test_long_output_is_read_past_the_inline_answer(client: Client) -> None:
    """RunCommand answers 1 MiB inline and leaves the command to attach: the
    rest comes from the same offsets, over the session's log."""
    box = await client.create("daytona")
    try:
        r = await box.exec("head -c 3000000 /dev/zero | tr '\\0' a; echo done >&2")
        assert (len(r.stdout), set(r.stdout), r.stderr, r.exit_code) == (
            3_000_000,
            {"a"},
            "done\n",
            0,
        )
    finally:
        await box.destroy()


async def test_what_sessions_cannot_carry_is_named(client: Client, fake: FakeDaytona) -> None:
    from computesdk import NotFoundError, UnsupportedError

    box = await client.create("daytona")
    try:
        with pytest.raises(UnsupportedError) as stdin:
            await box.start_process("cat", stdin=True)
        assert stdin.value.metadata == {"provider": "daytona", "feature": "stdin"}
        proc = await box.start_process("sleep 600")
        with pytest.raises(UnsupportedError) as write:
            await proc.write_stdin("x")
        assert write.value.metadata["feature"] == "stdin"
        with pytest.raises(NotFoundError):
            await box.process("computesdk-0123456789abcdef:nope").kill()
        with pytest.raises(NotFoundError):
            await box.process("../../etc:x").wait()
        await proc.kill()
        assert (await proc.wait()).signal == 9
    finally:
        await box.destroy()


async def test_a_background_timeout_kills_by_session(client: Client, fake: FakeDaytona) -> None:
    box = await client.create("daytona")
    try:
        proc = await box.start_process("echo before; sleep 600", timeout_ms=500)
        r = await proc.wait()
        assert (r.stdout, r.signal, r.timed_out) == ("before\n", 9, True)
    finally:
        await box.destroy()


async def test_expose_port_gives_the_preview_link(
    daemon: DaemonProcess, client: Client, fake: FakeDaytona
) -> None:
    box = await client.create("daytona")
    try:
        url = await box.get_url(8124)  # nothing listens yet
        sid = next(
            iter(
                b.id
                for b in fake.boxes.values()
                if b.body["labels"].get("computesdk.sandbox") == box.id
            )
        )
        assert url == f"http://127.0.0.1:{fake.port}/preview/8124-{sid}"
        await box.start_process("cd /tmp && echo hello > p.html && python3 -m http.server 8124")
        async with httpx.AsyncClient(timeout=30) as h:
            assert (await h.get(url + "/p.html")).status_code == 401  # private
            key = {"Authorization": f"Bearer {daemon.env['DAYTONA_API_KEY']}"}
            assert (await _until_served(h, url + "/p.html", key)).text == "hello\n"
    finally:
        await box.destroy()


async def test_previews_can_be_public_by_configuration(
    daemon: DaemonProcess, fake: FakeDaytona, tmp_path: Path
) -> None:
    env = {k: v for k, v in daemon.env.items() if k.startswith("DAYTONA_")}
    p = DaytonaProvider(ProviderConfig("daytona", env={**env, "DAYTONA_PUBLIC_PREVIEWS": "true"}))
    await p.start(ProviderContext(state_dir=tmp_path, emit=lambda *a, **k: None))
    sb = _record(keep_alive=False)
    try:
        await p.create(sb)
        assert fake.boxes[sb.provider_sandbox_id].body["public"] is True
        previews = p.part(caps.PreviewUrls)
        assert previews is not None
        url = await previews.preview_url(sb, 9000)
        async with httpx.AsyncClient(timeout=30) as h:
            assert (await h.get(url + "/")).status_code == 502  # let in; nothing listens
    finally:
        await p.destroy(sb)
        await p.close()


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "javascript:alert(1)", "https://user:pw@x.example/", 5, "h" * 3000],
)
def test_a_preview_url_from_daytona_is_checked(url: object) -> None:
    with pytest.raises(Exception, match="preview url") as e:
        previews_mod.preview_url(url)
    assert getattr(e.value, "reason", "") == "PROVIDER_ERROR"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b'{"sessionId": "x"}', "not a list"),
        (b"not json", "not JSON"),
        (b'[{"sessionId": "computesdk-0123456789abcdef"}]', "with commands"),
        (
            b'[{"sessionId": "computesdk-0123456789abcdef", "commands": [{"id": "../x"}]}]',
            "malformed",
        ),
        (
            b'[{"sessionId": "computesdk-0123456789abcdef",'
            b' "commands": [{"id": "c", "exitCode": "0"}]}]',
            "number",
        ),
    ],
)
async def test_listed_sessions_are_checked(answer: bytes, why: str) -> None:
    from computesdkd.providers.daytona.background import SessionProcesses

    api = _hostile(answer)
    sb = _record(keep_alive=False)
    sb.provider_sandbox_id, sb.provider_data = "abc", {"toolbox": "http://toolbox.invalid"}
    try:
        with pytest.raises(Exception, match=why) as e:
            await SessionProcesses(api).list_processes(sb)
        assert getattr(e.value, "reason", "") == "PROVIDER_ERROR"
    finally:
        await api.close()


async def test_sessions_not_the_daemons_are_not_listed() -> None:
    from computesdkd.providers.daytona.background import SessionProcesses

    answer = (
        b'[{"sessionId": "theirs", "commands": [{"id": "a", "command": "x", "exitCode": null}]},'
        b' {"sessionId": "computesdk-0123456789abcdef",'
        b' "commands": [{"id": "b", "command": "echo hi", "exitCode": 3}]}]'
    )
    api = _hostile(answer)
    sb = _record(keep_alive=False)
    sb.provider_sandbox_id, sb.provider_data = "abc", {"toolbox": "http://toolbox.invalid"}
    try:
        listed = await SessionProcesses(api).list_processes(sb)
    finally:
        await api.close()
    assert [(p.process_id, p.args, p.running, p.exit) for p in listed] == [
        ("computesdk-0123456789abcdef:b", ["echo hi"], False, listed[0].exit)
    ]
    assert listed[0].exit is not None and listed[0].exit.exit_code == 3
