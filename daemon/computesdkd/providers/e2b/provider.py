"""The e2b provider, spoken on the wire: E2B's REST API and envd's Connect API.

Why not the official `e2b` SDK: it hands command output over as decoded text
(our API streams bytes with offsets, so binary output would be corrupted), and
it pulls in a native HTTP stack of its own. The wire API is documented
(e2b-dev/E2B spec/openapi.yml, spec/envd/*.proto) and small. The tests run the
official SDK against our fake to keep the fake honest.

Configuration, as E2B's SDKs read it: E2B_API_KEY (required), E2B_DOMAIN,
E2B_API_URL, E2B_SANDBOX_URL (one envd endpoint for every sandbox, routed by
the E2b-Sandbox-Id header).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import shlex
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from computesdkd.domain.errors import AlreadyExists, FailedPrecondition, Unavailable, Unsupported
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
    Usage,
)
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.e2b import connect
from computesdkd.providers.http import error_for, send
from computesdkd.providers.local.templates import process_env
from computesdkd.support import logs

log = logs.get(__name__)

NAME = "e2b"
ENVD_PORT = 49983
# Names the other providers understand, mapped to E2B's public templates.
TEMPLATES = {
    "base": "base",
    "python": "base",
    "python:3.11": "base",
    "node": "base",
    "nodejs18": "base",
}
SIGNALS = {9: "SIGNAL_SIGKILL", 15: "SIGNAL_SIGTERM"}
SIGNAL_NUMBERS = {"killed": 9, "terminated": 15, "interrupt": 2, "hangup": 1}
# E2B ends a sandbox at its own timeout; the daemon's timeout comes first, and
# keep-alive sandboxes get their E2B lease extended by this much when it runs low.
LEASE_S = 3600
LEASE_MARGIN_S = 30


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@base.register(NAME)
class E2BProvider(Provider):
    name = NAME
    probe_interval_s = 30.0
    capabilities = frozenset(
        {base.EXEC, base.EXEC_STDIN, base.SIGNALS, base.FILESYSTEM, base.EVENTS, base.USAGE}
    )

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._key = cfg.env.get("E2B_API_KEY", "")
        domain = cfg.env.get("E2B_DOMAIN", "e2b.app")
        self._domain = domain
        self._api = cfg.env.get("E2B_API_URL") or f"https://api.{domain}"
        self._sandbox_url = cfg.env.get("E2B_SANDBOX_URL", "")
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    def availability(self) -> str:
        return "" if self._key else "E2B_API_KEY is not set"

    def templates(self) -> list[str]:
        return sorted(TEMPLATES)

    async def close(self) -> None:
        await self._http.aclose()

    # -------------------------------------------------------------- REST

    async def _rest(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        return await send(
            self._http,
            method,
            self._api + path,
            provider=NAME,
            what=what,
            headers={"X-API-Key": self._key},
            **kw,
        )

    def _envd(self, sandbox: Sandbox) -> tuple[str, dict[str, str]]:
        sid = sandbox.provider_sandbox_id
        url = (
            self._sandbox_url
            or f"https://{ENVD_PORT}-{sid}.{sandbox.provider_data.get('domain') or self._domain}"
        )
        headers = {
            "E2b-Sandbox-Id": sid,
            "E2b-Sandbox-Port": str(ENVD_PORT),
            # envd runs commands as the user named here; root matches the other providers.
            "Authorization": "Basic " + _b64(b"root:"),
        }
        token = sandbox.provider_data.get("access_token")
        if token:
            headers["X-Access-Token"] = token
        return url.rstrip("/"), headers

    async def _rpc(self, sandbox: Sandbox, method: str, msg: dict[str, Any]) -> dict[str, Any]:
        url, headers = self._envd(sandbox)
        not_found = "FILE_NOT_FOUND" if method.startswith("filesystem.") else "PROCESS_NOT_FOUND"
        return await connect.unary(
            self._http,
            f"{url}/{method}",
            msg,
            provider=NAME,
            what=method,
            headers=headers,
            not_found=not_found,
        )

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        if not self._key:
            raise Unavailable(
                "provider 'e2b' cannot run here: E2B_API_KEY is not set",
                reason="PROVIDER_UNAVAILABLE",
                provider=NAME,
            )
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise Unsupported(NAME, "gpu")
        if r.cpu_cores or r.memory_mb or r.disk_mb or r.pids_limit:
            raise Unsupported(NAME, "per-sandbox resources", "E2B sizes a sandbox by its template")
        tpl = TEMPLATES.get(sandbox.spec.template, sandbox.spec.template)
        lease = (
            LEASE_S
            if sandbox.spec.keep_alive
            else math.ceil(sandbox.spec.timeout_ms / 1000) + LEASE_MARGIN_S
        )
        body = {
            "templateID": tpl,
            "timeout": lease,
            "autoPause": False,
            "metadata": {**sandbox.spec.metadata, "computesdk_id": sandbox.id},
            "envVars": sandbox.spec.env,
        }
        resp = await self._rest(
            "POST", "/sandboxes", "create sandbox", json=body, not_found="TEMPLATE_NOT_FOUND"
        )
        out = resp.json()
        sandbox.provider_sandbox_id = out["sandboxID"]
        sandbox.provider_data = {
            "domain": out.get("domain") or "",
            "access_token": out.get("envdAccessToken") or "",
            "envd_version": out.get("envdVersion") or "",
            "lease_until": str(time.time() + lease),
        }
        try:
            detail = (
                await self._rest("GET", f"/sandboxes/{out['sandboxID']}", "get sandbox")
            ).json()
            sandbox.resources = Resources(
                cpu_cores=float(detail.get("cpuCount", 0)),
                memory_mb=int(detail.get("memoryMB", 0)),
                disk_mb=int(detail.get("diskSizeMB", 0)),
            )
            # every provider offers the same working directory
            with contextlib.suppress(AlreadyExists):
                await self._rpc(sandbox, "filesystem.Filesystem/MakeDir", {"path": WORKDIR})
        except Exception:
            with contextlib.suppress(Exception):
                await self.destroy(sandbox)
            raise

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if not sandbox.provider_sandbox_id:
            return
        if graceful_timeout_s > 0:
            with contextlib.suppress(Exception):
                for p in await self._list(sandbox):
                    await self._rpc(
                        sandbox,
                        "process.Process/SendSignal",
                        {"process": {"pid": p["pid"]}, "signal": SIGNALS[15]},
                    )
                await asyncio.sleep(min(graceful_timeout_s, 2.0))
        await self._rest(
            "DELETE", f"/sandboxes/{sandbox.provider_sandbox_id}", "kill sandbox", ok=(404,)
        )

    async def refresh_lease(self, sandbox: Sandbox) -> None:
        until = float(sandbox.provider_data.get("lease_until") or 0)
        if until - time.time() > LEASE_S / 2:
            return
        await self._rest(
            "POST",
            f"/sandboxes/{sandbox.provider_sandbox_id}/timeout",
            "extend timeout",
            json={"timeout": LEASE_S},
        )
        sandbox.provider_data["lease_until"] = str(time.time() + LEASE_S)

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        resp = await self._rest(
            "GET", f"/sandboxes/{sandbox.provider_sandbox_id}", "get sandbox", ok=(404,)
        )
        return Probe(alive=resp.status_code == 200 and resp.json().get("state") == "running")

    async def usage(self, sandbox: Sandbox) -> Usage:
        resp = await self._rest(
            "GET", f"/sandboxes/{sandbox.provider_sandbox_id}/metrics", "metrics"
        )
        samples = resp.json() or [{}]
        m = samples[-1]
        return Usage(
            memory_used_bytes=int(m.get("memUsed", 0)),
            memory_limit_bytes=int(m.get("memTotal", 0)),
            process_count=len(await self._list(sandbox)),
            disk_used_bytes=int(m.get("diskUsed", 0)),
            disk_limit_bytes=int(m.get("diskTotal", 0)),
        )

    # -------------------------------------------------------------- processes

    async def _list(self, sandbox: Sandbox) -> list[dict[str, Any]]:
        out = await self._rpc(sandbox, "process.Process/List", {})
        return list(out.get("processes", []))

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        return _E2BRun(self, sandbox, command, kill_on_close)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        raise Unsupported(
            NAME, "background processes", "envd cannot replay a process's output from an offset"
        )

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        return [
            ProcessInfo(
                process_id=str(p["pid"]),
                pid=int(p["pid"]),
                args=[p.get("config", {}).get("cmd", ""), *p.get("config", {}).get("args", [])],
                tag=p.get("tag", ""),
                running=True,
                exit=None,
                start_unix_ms=0,
            )
            for p in await self._list(sandbox)
        ]

    # -------------------------------------------------------------- files

    def _entry(self, e: dict[str, Any]) -> FileInfo:
        kind = {
            "FILE_TYPE_FILE": FileKind.FILE,
            "FILE_TYPE_DIRECTORY": FileKind.DIRECTORY,
            "FILE_TYPE_SYMLINK": FileKind.SYMLINK,
        }.get(e.get("type", ""), FileKind.OTHER)
        mtime = e.get("modifiedTime", "")
        return FileInfo(
            name=e.get("name", ""),
            path=e.get("path", ""),
            kind=kind,
            size=int(e.get("size", 0)),
            mode=int(e.get("mode", 0)) & 0o7777,
            mtime=_rfc3339(mtime),
            link_target=e.get("symlinkTarget", ""),
        )

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        info = await self.stat(sandbox, path)
        if info.kind == FileKind.DIRECTORY:
            raise FailedPrecondition(f"{path}: is a directory", reason="IS_A_DIRECTORY")
        url, headers = self._envd(sandbox)
        hdrs = dict(headers)
        if offset or length:  # envd serves files with http.ServeContent: ranges work
            end = "" if not length else str(offset + length - 1)
            hdrs["Range"] = f"bytes={offset}-{end}"
        async with self._http.stream(
            "GET", f"{url}/files", headers=hdrs, params={"path": path, "username": "root"}
        ) as resp:
            if resp.status_code == 416:
                return
            if resp.status_code not in (200, 206):
                await resp.aread()
                raise error_for(NAME, "read file", resp, "FILE_NOT_FOUND")
            async for chunk in resp.aiter_bytes():
                yield chunk

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
            raise Unsupported(NAME, "append writes", "envd replaces files on upload")
        written = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal written
            async for c in chunks:
                written += len(c)
                yield c

        url, headers = self._envd(sandbox)
        await send(
            self._http,
            "POST",
            f"{url}/files",
            provider=NAME,
            what="write file",
            retries=0,
            params={"path": path, "username": "root"},
            content=body(),
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        if mode:
            await _run_quiet(self, sandbox, ["chmod", oct(mode)[2:], "--", path])
        return await self.stat(sandbox, path), written

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        out = await self._rpc(sandbox, "filesystem.Filesystem/Stat", {"path": path})
        return self._entry(out["entry"])

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        out = await self._rpc(sandbox, "filesystem.Filesystem/ListDir", {"path": path, "depth": 1})
        return sorted((self._entry(e) for e in out.get("entries", [])), key=lambda f: f.name)

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        if not parents:
            parent = path.rsplit("/", 1)[0] or "/"
            await self.stat(sandbox, parent)  # raises FILE_NOT_FOUND like mkdir(2)
        out = await self._rpc(sandbox, "filesystem.Filesystem/MakeDir", {"path": path})
        return self._entry(out["entry"]) if out.get("entry") else await self.stat(sandbox, path)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        info = await self.stat(sandbox, path)
        if info.kind == FileKind.DIRECTORY and not recursive and await self.list_dir(sandbox, path):
            raise FailedPrecondition(
                f"{path}: directory not empty", reason="DIRECTORY_NOT_EMPTY", path=path
            )
        await self._rpc(sandbox, "filesystem.Filesystem/Remove", {"path": path})

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        out = await self._rpc(
            sandbox, "filesystem.Filesystem/Move", {"source": source, "destination": destination}
        )
        return self._entry(out["entry"])


def _rfc3339(value: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


async def _run_quiet(p: E2BProvider, sandbox: Sandbox, args: list[str]) -> None:
    run = p.run(sandbox, Command(args=args, cwd="/"))
    try:
        async for ev in run.events():
            if isinstance(ev, ExitStatus) and ev.exit_code != 0:
                raise FailedPrecondition(
                    f"{shlex.join(args)} failed in the sandbox", reason="PERMISSION_DENIED"
                )
    finally:
        await run.aclose()


class _E2BRun(ProcessRun):
    def __init__(
        self, p: E2BProvider, sandbox: Sandbox, command: Command, kill_on_close: bool
    ) -> None:
        self._p = p
        self._sandbox = sandbox
        self._command = command
        self._kill_on_close = kill_on_close
        self._pid = 0
        self._done = False
        self._timed_out = False
        self._kill: asyncio.Task[None] | None = None

    async def events(self) -> AsyncIterator[ProcessEvent]:
        cmd = self._command
        url, headers = self._p._envd(self._sandbox)
        req = {
            "process": {
                "cmd": cmd.args[0],
                "args": cmd.args[1:],
                "envs": process_env(self._sandbox, cmd),
                "cwd": cmd.cwd,
            },
            "stdin": cmd.stdin,
        }
        stream = connect.server_stream(
            self._p._http,
            f"{url}/process.Process/Start",
            req,
            provider=NAME,
            what="start process",
            headers=headers,
        )
        offsets = {"stdout": 0, "stderr": 0}
        started = time.monotonic()
        killer: asyncio.TimerHandle | None = None
        try:
            async for msg in stream:
                ev = msg.get("event", {})
                if "start" in ev:
                    self._pid = int(ev["start"].get("pid", 0))
                    if cmd.timeout_ms:  # envd has no exec timeout of its own
                        killer = asyncio.get_running_loop().call_later(
                            cmd.timeout_ms / 1000, self._on_timeout
                        )
                    yield Started(str(self._pid), self._pid)
                elif "data" in ev:
                    for name in ("stdout", "stderr"):
                        if name in ev["data"]:
                            data = base64.b64decode(ev["data"][name])
                            yield Output(name, data, offsets[name])
                            offsets[name] += len(data)
                elif "end" in ev:
                    self._done = True
                    end = ev["end"]
                    status = str(end.get("status", ""))
                    ms = int((time.monotonic() - started) * 1000)
                    if status.startswith("signal: "):
                        sig = SIGNAL_NUMBERS.get(status.split(": ", 1)[1], 0)
                        yield ExitStatus(-1, sig, ms, self._timed_out)
                    else:
                        yield ExitStatus(int(end.get("exitCode", 0)), 0, ms, self._timed_out)
                    return
        finally:
            if killer is not None:
                killer.cancel()

    def _on_timeout(self) -> None:
        self._timed_out = True
        self._kill = asyncio.create_task(self.send_signal(9))

    async def _process_call(self, method: str, extra: dict[str, Any]) -> None:
        if not self._pid:
            raise FailedPrecondition("the process has not started yet", reason="NOT_STARTED")
        await self._p._rpc(
            self._sandbox, f"process.Process/{method}", {"process": {"pid": self._pid}, **extra}
        )

    async def send_stdin(self, data: bytes) -> None:
        await self._process_call("SendInput", {"input": {"stdin": _b64(data)}})

    async def close_stdin(self) -> None:
        await self._process_call("CloseStdin", {})

    async def send_signal(self, signal: int) -> None:
        if signal not in SIGNALS:
            raise Unsupported(NAME, f"signal {signal}", "envd sends only SIGTERM and SIGKILL")
        await self._process_call("SendSignal", {"signal": SIGNALS[signal]})

    async def aclose(self) -> None:
        if self._kill_on_close and self._pid and not self._done:
            with contextlib.suppress(Exception):
                await self.send_signal(9)
