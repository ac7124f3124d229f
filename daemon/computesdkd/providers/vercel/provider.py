"""The vercel provider, on Vercel Sandbox's REST API.

Sandboxes are named; each runs a session that carries the commands and files.
Commands stream NDJSON: a `command` line, `{stream, data}` log lines, and a
final `command` line with the exit code. The model follows the API and the
in-memory double Vercel ships for it (vercel/sandbox, vercel-sandbox-mock).

What Vercel's API cannot carry is refused by name: stdin (its REST commands
have none), memory and disk sizing (memory follows vCPUs), GPUs, background
processes with output replay. Usage is sampled by a command in the sandbox:
Vercel has no metrics API.

Configuration: VERCEL_TOKEN (or VERCEL_OIDC_TOKEN), VERCEL_TEAM_ID,
VERCEL_PROJECT_ID, and VERCEL_API_URL to point elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from computesdkd.domain.errors import (
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unsupported,
)
from computesdkd.domain.model import (
    Command,
    ExitStatus,
    FileInfo,
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

NAME = "vercel"
RUNTIMES = {
    "base": "node22",
    "node": "node22",
    "nodejs18": "node22",
    "python": "python3.13",
    "python:3.11": "python3.13",
}
MEMORY_PER_VCPU_MB = 2048
# Files are uploaded as a tar.gz, which needs the whole file first.
MAX_UPLOAD = 256 * 1024 * 1024


@base.register(NAME)
class VercelProvider(Provider):
    name = NAME
    probe_interval_s = 30.0
    capabilities = frozenset(
        {base.EXEC, base.SIGNALS, base.FILESYSTEM, base.EVENTS, base.USAGE, base.RESOURCE_LIMITS}
    )

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._token = cfg.env.get("VERCEL_TOKEN") or cfg.env.get("VERCEL_OIDC_TOKEN", "")
        self._team = cfg.env.get("VERCEL_TEAM_ID", "")
        self._project = cfg.env.get("VERCEL_PROJECT_ID", "")
        self._api = (cfg.env.get("VERCEL_API_URL") or "https://vercel.com/api").rstrip("/")
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    def availability(self) -> str:
        missing = [
            n
            for n, v in (
                ("VERCEL_TOKEN", self._token),
                ("VERCEL_TEAM_ID", self._team),
                ("VERCEL_PROJECT_ID", self._project),
            )
            if not v
        ]
        return f"{', '.join(missing)} not set" if missing else ""

    def templates(self) -> list[str]:
        return sorted(RUNTIMES)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token}", **kw.pop("headers", {})}
        return await send(
            self._http,
            method,
            f"{self._api}/v2/sandboxes{path}",
            provider=NAME,
            what=what,
            headers=headers,
            params={"teamId": self._team},
            **kw,
        )

    def _session(self, sandbox: Sandbox) -> str:
        return f"/sessions/{sandbox.provider_data['session']}"

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        why = self.availability()
        if why:
            raise Unavailable(
                f"provider 'vercel' cannot run here: {why}",
                reason="PROVIDER_UNAVAILABLE",
                provider=NAME,
            )
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise Unsupported(NAME, "gpu")
        if r.memory_mb or r.disk_mb or r.pids_limit:
            raise Unsupported(
                NAME,
                "memory, disk and pids limits",
                f"Vercel gives {MEMORY_PER_VCPU_MB} MB per vCPU",
            )
        runtime = RUNTIMES.get(sandbox.spec.template)
        if runtime is None:
            raise NotFound(
                f"template {sandbox.spec.template!r} has no Vercel runtime "
                f"(known: {', '.join(sorted(RUNTIMES))})",
                reason="TEMPLATE_NOT_FOUND",
                provider=NAME,
            )
        vcpus = max(1, round(r.cpu_cores or 2))
        body = {
            "name": f"computesdk-{sandbox.id}",
            "projectId": self._project,
            "runtime": runtime,
            "resources": {"vcpus": vcpus},
            "timeout": sandbox.spec.timeout_ms,
            "env": sandbox.spec.env,
            "tags": sandbox.spec.metadata,
            "ports": [],
        }
        out = (await self._call("POST", "", "create sandbox", json=body)).json()
        sandbox.provider_sandbox_id = out["sandbox"]["name"]
        sandbox.provider_data = {"session": out["session"]["id"], "cwd": out["session"]["cwd"]}
        sandbox.resources = Resources(
            cpu_cores=float(out["session"].get("vcpus", vcpus)),
            memory_mb=int(out["session"].get("memory", 0)),
        )
        try:  # every provider offers the same working directory
            await _run_checked(self, sandbox, ["mkdir", "-p", WORKDIR])
        except Exception:
            with contextlib.suppress(Exception):
                await self.destroy(sandbox)
            raise

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if sandbox.provider_sandbox_id:
            await self._call(
                "DELETE", f"/{sandbox.provider_sandbox_id}", "delete sandbox", ok=(404,)
            )

    async def refresh_lease(self, sandbox: Sandbox) -> None:
        until = float(sandbox.provider_data.get("lease_until") or 0)
        if until - time.time() > 600:
            return
        await self._call(
            "POST",
            f"{self._session(sandbox)}/extend-timeout",
            "extend timeout",
            json={"duration": 30 * 60 * 1000},
        )
        sandbox.provider_data["lease_until"] = str(time.time() + 30 * 60)

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        resp = await self._call("GET", f"/{sandbox.provider_sandbox_id}", "get sandbox", ok=(404,))
        alive = resp.status_code == 200 and resp.json()["session"]["status"] == "running"
        return Probe(alive=alive)

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        if command.stdin:
            raise Unsupported(NAME, "stdin", "Vercel's command API takes no input")
        return _VercelRun(self, sandbox, command, kill_on_close)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        raise Unsupported(
            NAME,
            "background processes",
            "the daemon cannot re-read Vercel command logs from an offset",
        )

    # -------------------------------------------------------------- files

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        info = await self.stat(sandbox, path)  # clear errors for directories and misses
        if info.kind.name == "DIRECTORY":
            raise FailedPrecondition(f"{path}: is a directory", reason="IS_A_DIRECTORY")
        resp = await self._call(
            "POST",
            f"{self._session(sandbox)}/fs/read",
            "read file",
            json={"path": path, "cwd": "/"},
            not_found="FILE_NOT_FOUND",
        )
        data = resp.content[offset : offset + length] if length else resp.content[offset:]
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]

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
            raise Unsupported(NAME, "append writes", "Vercel replaces files on upload")
        buf = bytearray()
        async for c in chunks:
            buf.extend(c)
            if len(buf) > MAX_UPLOAD:
                raise ResourceExhausted(
                    f"vercel uploads are limited to {MAX_UPLOAD} bytes",
                    reason="PAYLOAD_TOO_LARGE",
                    provider=NAME,
                )
        if not make_parents:
            await self.stat(sandbox, path.rsplit("/", 1)[0] or "/")
        archive = _targz(path.lstrip("/"), bytes(buf), mode or 0o644)
        await self._call(
            "POST",
            f"{self._session(sandbox)}/fs/write",
            "write file",
            content=archive,
            headers={"Content-Type": "application/gzip", "x-cwd": "/"},
        )
        return await self.stat(sandbox, path), len(buf)


def _targz(name: str, data: bytes, mode: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


async def _run_checked(p: VercelProvider, sandbox: Sandbox, args: list[str]) -> None:
    run = p.run(sandbox, Command(args=args, cwd="/"))
    try:
        async for ev in run.events():
            if isinstance(ev, ExitStatus) and ev.exit_code != 0:
                raise FailedPrecondition(
                    f"{args[0]} failed in the vercel sandbox", reason="SETUP_FAILED", provider=NAME
                )
    finally:
        await run.aclose()


class _VercelRun(ProcessRun):
    def __init__(
        self, p: VercelProvider, sandbox: Sandbox, command: Command, kill_on_close: bool
    ) -> None:
        self._p = p
        self._sandbox = sandbox
        self._command = command
        self._kill_on_close = kill_on_close
        self._cmd_id = ""
        self._done = False
        self._timed_out = False
        self._kill: asyncio.Task[None] | None = None

    async def events(self) -> AsyncIterator[ProcessEvent]:
        cmd = self._command
        p, sb = self._p, self._sandbox
        body = {
            "command": cmd.args[0],
            "args": cmd.args[1:],
            "cwd": cmd.cwd,
            "env": process_env(sb, cmd),
            "sudo": True,
            "wait": True,
            "logs": True,
        }
        url = f"{p._api}/v2/sandboxes{p._session(sb)}/cmd"
        offsets = {"stdout": 0, "stderr": 0}
        started = time.monotonic()
        killer: asyncio.TimerHandle | None = None
        try:
            async with p._http.stream(
                "POST",
                url,
                json=body,
                params={"teamId": p._team},
                headers={"Authorization": f"Bearer {p._token}"},
                timeout=httpx.Timeout(None, connect=10.0),
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise error_for(NAME, "run command", resp, "NOT_FOUND")
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "command" in msg:
                        c = msg["command"]
                        if not self._cmd_id:
                            self._cmd_id = c["id"]
                            if cmd.timeout_ms:
                                killer = asyncio.get_running_loop().call_later(
                                    cmd.timeout_ms / 1000, self._on_timeout
                                )
                            yield Started(c["id"], 0)
                        if c.get("exitCode") is not None:
                            self._done = True
                            ms = int((time.monotonic() - started) * 1000)
                            code = int(c["exitCode"])
                            if self._timed_out or code in (137, 143):
                                yield ExitStatus(-1, code - 128, ms, self._timed_out)
                            else:
                                yield ExitStatus(code, 0, ms)
                            return
                    elif msg.get("stream") in offsets:
                        data = str(msg.get("data", "")).encode()
                        name = msg["stream"]
                        yield Output(name, data, offsets[name])
                        offsets[name] += len(data)
        except httpx.TransportError as exc:
            raise Unavailable(
                f"vercel: command stream broke ({type(exc).__name__})",
                reason="PROVIDER_UNAVAILABLE",
                provider=NAME,
            ) from exc
        finally:
            if killer is not None:
                killer.cancel()

    def _on_timeout(self) -> None:
        self._timed_out = True
        self._kill = asyncio.create_task(self.send_signal(9))

    async def send_stdin(self, data: bytes) -> None:
        raise Unsupported(NAME, "stdin", "Vercel's command API takes no input")

    async def close_stdin(self) -> None:
        raise Unsupported(NAME, "stdin", "Vercel's command API takes no input")

    async def send_signal(self, signal: int) -> None:
        if not self._cmd_id:
            raise FailedPrecondition("the command has not started yet", reason="NOT_STARTED")
        await self._p._call(
            "POST",
            f"{self._p._session(self._sandbox)}/cmd/{self._cmd_id}/kill",
            "kill command",
            json={"signal": signal},
        )

    async def aclose(self) -> None:
        if self._kill_on_close and self._cmd_id and not self._done:
            with contextlib.suppress(Exception):
                await self.send_signal(9)
