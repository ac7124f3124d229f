"""The daytona provider, on Daytona's REST API and its per-sandbox toolbox API.

Create, inspect and delete go to the control API (`/sandbox`). Commands run in
a toolbox session of their own (`/process/session/{id}/exec`, runAsync) and
their output is followed over the logs WebSocket, where the markers
\\x01\\x01\\x01 and \\x02\\x02\\x02 switch between stdout and stderr. Files use the
toolbox's `/files` API. Usage is sampled by a command in the sandbox.

What the toolbox cannot carry is refused by name: stdin (there is no way to
close a command's input), signals other than a kill, and background processes
with output replay.

Configuration: DAYTONA_API_KEY (required), DAYTONA_API_URL, DAYTONA_TARGET.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import shlex
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import websockets

from computesdkd.domain.errors import FailedPrecondition, Unavailable, Unsupported
from computesdkd.domain.model import (
    Command,
    ExitStatus,
    FileInfo,
    FileKind,
    Output,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    Started,
)
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.http import error_for, send
from computesdkd.providers.local.templates import process_env
from computesdkd.support import logs

log = logs.get(__name__)

NAME = "daytona"
# Daytona's default snapshot carries python and node; other names are snapshots.
DEFAULT_TEMPLATES = {"base", "python", "python:3.11", "node", "nodejs18"}
STDOUT_MARK, STDERR_MARK = b"\x01\x01\x01", b"\x02\x02\x02"
READY_STATES = {"started"}
PENDING_STATES = {
    "creating",
    "starting",
    "pending_build",
    "building_snapshot",
    "restoring",
    "pulling_snapshot",
    "unknown",
}
CREATE_TIMEOUT_S = 120.0


@base.register(NAME)
class DaytonaProvider(Provider):
    name = NAME
    probe_interval_s = 30.0
    capabilities = frozenset(
        {base.EXEC, base.FILESYSTEM, base.EVENTS, base.USAGE, base.RESOURCE_LIMITS, base.DISK_LIMIT}
    )

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._key = cfg.env.get("DAYTONA_API_KEY", "")
        self._api = (cfg.env.get("DAYTONA_API_URL") or "https://app.daytona.io/api").rstrip("/")
        self._target = cfg.env.get("DAYTONA_TARGET", "")
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    def availability(self) -> str:
        return "" if self._key else "DAYTONA_API_KEY is not set"

    def templates(self) -> list[str]:
        return sorted(DEFAULT_TEMPLATES)

    async def close(self) -> None:
        await self._http.aclose()

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    async def _api_call(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        return await send(
            self._http, method, self._api + path, provider=NAME, what=what, headers=self._auth, **kw
        )

    def _toolbox(self, sandbox: Sandbox) -> str:
        return f"{sandbox.provider_data['toolbox']}/{sandbox.provider_sandbox_id}"

    async def _tb(
        self, sandbox: Sandbox, method: str, path: str, what: str, **kw: Any
    ) -> httpx.Response:
        return await send(
            self._http,
            method,
            self._toolbox(sandbox) + path,
            provider=NAME,
            what=what,
            headers=self._auth,
            not_found="FILE_NOT_FOUND",
            **kw,
        )

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        if not self._key:
            raise Unavailable(
                "provider 'daytona' cannot run here: DAYTONA_API_KEY is not set",
                reason="PROVIDER_UNAVAILABLE",
                provider=NAME,
            )
        r = sandbox.spec.resources
        body: dict[str, Any] = {
            "env": sandbox.spec.env,
            "labels": sandbox.spec.metadata,
            "autoStopInterval": 0
            if sandbox.spec.keep_alive
            else math.ceil(sandbox.spec.timeout_ms / 60_000) + 1,
        }
        if sandbox.spec.template not in DEFAULT_TEMPLATES:
            body["snapshot"] = sandbox.spec.template
        if r.cpu_cores:
            body["cpu"] = max(1, math.ceil(r.cpu_cores))
        if r.memory_mb:
            body["memory"] = max(1, math.ceil(r.memory_mb / 1024))  # GiB
        if r.disk_mb:
            body["disk"] = max(1, math.ceil(r.disk_mb / 1024))  # GiB
        if r.gpu_enabled:
            body["gpu"] = r.gpu_count or 1
        if r.pids_limit:
            raise Unsupported(NAME, "pids limit")
        if self._target:
            body["target"] = self._target
        out = (
            await self._api_call(
                "POST", "/sandbox", "create sandbox", json=body, not_found="TEMPLATE_NOT_FOUND"
            )
        ).json()
        sandbox.provider_sandbox_id = out["id"]
        sandbox.provider_data = {"toolbox": (out.get("toolboxProxyUrl") or "").rstrip("/")}
        try:
            out = await self._wait_started(out)
            if not sandbox.provider_data["toolbox"]:
                url = (
                    await self._api_call(
                        "GET", f"/sandbox/{out['id']}/toolbox-proxy-url", "toolbox url"
                    )
                ).json()["url"]
                sandbox.provider_data["toolbox"] = url.rstrip("/")
            sandbox.resources = Resources(
                cpu_cores=float(out.get("cpu", 0)),
                memory_mb=int(out.get("memory", 0)) * 1024,
                disk_mb=int(out.get("disk", 0)) * 1024,
                gpu_enabled=bool(out.get("gpu")),
            )
            await self._tb(
                sandbox,
                "POST",
                "/files/folder",
                "create /workspace",
                params={"path": WORKDIR, "mode": "755"},
                ok=(409,),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(sandbox)
            raise

    async def _wait_started(self, out: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        delay = 0.1
        while out.get("state") in PENDING_STATES:
            if time.monotonic() > deadline:
                raise Unavailable(
                    "daytona: the sandbox did not start in time",
                    reason="PROVIDER_TIMEOUT",
                    provider=NAME,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            out = (await self._api_call("GET", f"/sandbox/{out['id']}", "get sandbox")).json()
        if out.get("state") not in READY_STATES:
            raise Unavailable(
                f"daytona: the sandbox is {out.get('state')}: "
                f"{out.get('errorReason') or 'no reason given'}",
                reason="PROVIDER_ERROR",
                provider=NAME,
            )
        return out

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if sandbox.provider_sandbox_id:
            await self._api_call(
                "DELETE", f"/sandbox/{sandbox.provider_sandbox_id}", "delete sandbox", ok=(404,)
            )

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        resp = await self._api_call(
            "GET", f"/sandbox/{sandbox.provider_sandbox_id}", "get sandbox", ok=(404,)
        )
        return Probe(alive=resp.status_code == 200 and resp.json().get("state") in READY_STATES)

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        if command.stdin:
            raise Unsupported(NAME, "stdin", "the toolbox cannot close a command's input")
        return _DaytonaRun(self, sandbox, command)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        raise Unsupported(
            NAME,
            "background processes",
            "not carried by this adapter yet; sessions could replay logs",
        )

    # -------------------------------------------------------------- files

    def _info(self, f: dict[str, Any], path: str) -> FileInfo:
        kind = FileKind.DIRECTORY if f.get("isDir") else FileKind.FILE
        mtime = str(f.get("modTime") or f.get("modifiedAt") or "")
        try:
            ts = datetime.fromisoformat(mtime.replace("Z", "+00:00")).timestamp()
        except ValueError:
            ts = 0.0
        mode = f.get("permissions") or f.get("mode") or "0"
        try:
            bits = int(str(mode), 8) & 0o7777
        except ValueError:
            bits = 0
        return FileInfo(
            name=f.get("name", ""),
            path=path,
            kind=kind,
            size=int(f.get("size", 0)),
            mode=bits,
            mtime=ts,
        )

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        info = await self.stat(sandbox, path)
        if info.kind == FileKind.DIRECTORY:
            raise FailedPrecondition(f"{path}: is a directory", reason="IS_A_DIRECTORY")
        async with self._http.stream(
            "GET",
            self._toolbox(sandbox) + "/files/download",
            params={"path": path},
            headers=self._auth,
        ) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise error_for(NAME, "download", resp, "FILE_NOT_FOUND")
            pos = 0
            end = offset + length if length else None
            async for chunk in resp.aiter_bytes():
                lo, hi = (
                    max(offset - pos, 0),
                    len(chunk) if end is None else min(len(chunk), end - pos),
                )
                pos += len(chunk)
                if hi > lo:
                    yield chunk[lo:hi]
                if end is not None and pos >= end:
                    return

    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        if append:
            raise Unsupported(NAME, "append writes", "the toolbox replaces files on upload")
        data = b"".join([c async for c in chunks])
        parent = path.rsplit("/", 1)[0] or "/"
        if make_parents:
            await self._tb(
                sandbox,
                "POST",
                "/files/folder",
                "create folder",
                params={"path": parent, "mode": "755"},
                ok=(409,),
            )
        await self._tb(
            sandbox,
            "POST",
            "/files/upload",
            "upload",
            params={"path": path},
            files={"file": (path.rsplit("/", 1)[-1], data)},
        )
        if mode:
            await self._tb(
                sandbox,
                "POST",
                "/files/permissions",
                "chmod",
                params={"path": path, "mode": oct(mode)[2:]},
            )
        return await self.stat(sandbox, path), len(data)

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        f = (await self._tb(sandbox, "GET", "/files/info", "stat", params={"path": path})).json()
        return self._info(f, path)

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        items = (await self._tb(sandbox, "GET", "/files", "list", params={"path": path})).json()
        base_path = path.rstrip("/")
        return sorted(
            (self._info(f, f"{base_path}/{f['name']}") for f in items), key=lambda f: f.name
        )

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        if not parents:
            await self.stat(sandbox, path.rsplit("/", 1)[0] or "/")
        await self._tb(
            sandbox, "POST", "/files/folder", "create folder", params={"path": path, "mode": "755"}
        )
        return await self.stat(sandbox, path)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        info = await self.stat(sandbox, path)
        if info.kind == FileKind.DIRECTORY and not recursive and await self.list_dir(sandbox, path):
            raise FailedPrecondition(
                f"{path}: directory not empty", reason="DIRECTORY_NOT_EMPTY", path=path
            )
        await self._tb(
            sandbox, "DELETE", "/files", "remove", params={"path": path, "recursive": "true"}
        )

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        await self._tb(
            sandbox,
            "POST",
            "/files/move",
            "move",
            params={"source": source, "destination": destination},
        )
        return await self.stat(sandbox, destination)


def demux(buf: bytearray, current: str) -> tuple[list[tuple[str, bytes]], str]:
    """Splits what arrived so far at the stream markers. Keeps a possible partial
    marker at the end of buf for the next frame. Returns (chunks, current stream)."""
    out: list[tuple[str, bytes]] = []
    while True:
        si, ei = buf.find(STDOUT_MARK), buf.find(STDERR_MARK)
        marks = [(i, k) for i, k in ((si, "stdout"), (ei, "stderr")) if i != -1]
        if not marks:
            keep = 0
            for k in (2, 1):  # a marker may be split across frames
                if len(buf) >= k and all(b in (1, 2) for b in buf[-k:]):
                    keep = k
                    break
            if len(buf) > keep and current:
                out.append((current, bytes(buf[: len(buf) - keep])))
                del buf[: len(buf) - keep]
            return out, current
        idx, kind = min(marks)
        if idx > 0 and current:
            out.append((current, bytes(buf[:idx])))
        del buf[: idx + 3]
        current = kind


class _DaytonaRun(ProcessRun):
    def __init__(self, p: DaytonaProvider, sandbox: Sandbox, command: Command) -> None:
        self._p = p
        self._sandbox = sandbox
        self._command = command
        self._session = "computesdk-" + secrets.token_hex(8)
        self._done = False
        self._timed_out = False
        self._kill: asyncio.Task[None] | None = None

    async def events(self) -> AsyncIterator[ProcessEvent]:
        cmd, p, sb = self._command, self._p, self._sandbox
        env = process_env(sb, cmd)
        line = (
            f"cd {shlex.quote(cmd.cwd)} && env "
            + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
            + " "
            + shlex.join(cmd.args)
        )
        await p._tb(
            sb, "POST", "/process/session", "create session", json={"sessionId": self._session}
        )
        started = time.monotonic()
        killer: asyncio.TimerHandle | None = None
        try:
            out = (
                await p._tb(
                    sb,
                    "POST",
                    f"/process/session/{self._session}/exec",
                    "exec",
                    json={"command": f"( {line} )", "runAsync": True},
                )
            ).json()
            cmd_id = out["cmdId"]
            if cmd.timeout_ms:
                killer = asyncio.get_running_loop().call_later(
                    cmd.timeout_ms / 1000, self._on_timeout
                )
            yield Started(cmd_id, 0)
            url = (
                p._toolbox(sb).replace("http", "ws", 1)
                + f"/process/session/{self._session}/command/{cmd_id}/logs?follow=true"
            )
            offsets = {"stdout": 0, "stderr": 0}
            buf, current = bytearray(), ""
            try:
                async with websockets.connect(url, additional_headers=p._auth, max_size=None) as ws:
                    async for frame in ws:
                        buf.extend(frame if isinstance(frame, bytes) else frame.encode())
                        chunks, current = demux(buf, current)
                        for name, data in chunks:
                            yield Output(name, data, offsets[name])  # type: ignore[arg-type]
                            offsets[name] += len(data)
            except (OSError, websockets.WebSocketException) as exc:
                if not self._timed_out:
                    raise Unavailable(
                        f"daytona: log stream broke ({type(exc).__name__})",
                        reason="PROVIDER_UNAVAILABLE",
                        provider=NAME,
                    ) from exc
            if buf and current:
                yield Output(current, bytes(buf), offsets[current])  # type: ignore[arg-type]
            ms = int((time.monotonic() - started) * 1000)
            if self._timed_out:
                self._done = True
                yield ExitStatus(-1, 9, ms, True)
                return
            code = await self._exit_code(cmd_id)
            self._done = True
            yield ExitStatus(code, 0, ms)
        finally:
            if killer is not None:
                killer.cancel()

    async def _exit_code(self, cmd_id: str) -> int:
        for _ in range(50):  # the log stream can close a moment before the code is set
            c = (
                await self._p._tb(
                    self._sandbox,
                    "GET",
                    f"/process/session/{self._session}/command/{cmd_id}",
                    "command",
                )
            ).json()
            if c.get("exitCode") is not None:
                return int(c["exitCode"])
            await asyncio.sleep(0.05)
        raise Unavailable(
            "daytona: the command ended without an exit code",
            reason="PROVIDER_ERROR",
            provider=NAME,
        )

    def _on_timeout(self) -> None:
        self._timed_out = True
        self._kill = asyncio.create_task(self._end_session())

    async def _end_session(self) -> None:
        with contextlib.suppress(Exception):
            await self._p._tb(
                self._sandbox,
                "DELETE",
                f"/process/session/{self._session}",
                "delete session",
                ok=(404,),
            )

    async def send_stdin(self, data: bytes) -> None:
        raise Unsupported(NAME, "stdin", "the toolbox cannot close a command's input")

    async def close_stdin(self) -> None:
        raise Unsupported(NAME, "stdin", "the toolbox cannot close a command's input")

    async def send_signal(self, signal: int) -> None:
        if signal != 9:
            raise Unsupported(NAME, f"signal {signal}", "the toolbox can only end a session")
        await self._end_session()

    async def aclose(self) -> None:
        await self._end_session()  # each command has a session of its own
