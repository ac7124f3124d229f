"""The e2b provider, spoken on the wire: E2B's REST API and envd's Connect API
(api.py), a command per run (run.py), files through envd (files.py).

Why not the official `e2b` SDK: it hands command output over as decoded text
(our API streams bytes with offsets, so binary output would be corrupted), and
it pulls in a native HTTP stack of its own. The wire API is documented
(e2b-dev/E2B spec/openapi.yml, spec/envd/*.proto) and small. The tests run the
official SDK against our fake to keep the fake honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from computesdkd.domain.errors import AlreadyExists, Unsupported
from computesdkd.domain.model import (
    Command,
    Probe,
    ProcessInfo,
    Resources,
    Sandbox,
    Usage,
)
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.common.file_api import FileAPIFiles
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure
from computesdkd.providers.e2b.api import E2BAPI, NAME
from computesdkd.providers.e2b.files import EnvdFS
from computesdkd.providers.e2b.run import SIGNALS, E2BRun

# Names the other providers understand, mapped to E2B's public templates.
TEMPLATES = {
    "base": "base",
    "python": "base",
    "python:3.11": "base",
    "node": "base",
    "nodejs18": "base",
}
# E2B ends a sandbox at its own timeout; the daemon's timeout comes first, and
# keep-alive sandboxes get their E2B lease extended by this much when it runs low.
LEASE_S = 3600
LEASE_MARGIN_S = 30


@base.register(NAME)
class E2BProvider(FileAPIFiles, Provider, caps.Metering, caps.ProcessListing, caps.Leases):
    name = NAME
    probe_interval_s = 30.0
    why_not = {"background processes": "envd cannot replay a process's output from an offset"}
    traits = frozenset({caps.EXEC_STDIN, caps.SIGNALS})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = E2BAPI(cfg.env)

    def availability(self) -> str:
        return "" if self._api.key else "E2B_API_KEY is not set"

    def templates(self) -> list[str]:
        return sorted(TEMPLATES)

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
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
        resp = await self._api.rest(
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
        async with destroyed_on_failure(self, sandbox):
            detail = (
                await self._api.rest("GET", f"/sandboxes/{out['sandboxID']}", "get sandbox")
            ).json()
            sandbox.resources = Resources(
                cpu_cores=float(detail.get("cpuCount", 0)),
                memory_mb=int(detail.get("memoryMB", 0)),
                disk_mb=int(detail.get("diskSizeMB", 0)),
            )
            # every provider offers the same working directory
            with contextlib.suppress(AlreadyExists):
                await self._api.rpc(sandbox, "filesystem.Filesystem/MakeDir", {"path": WORKDIR})

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if not sandbox.provider_sandbox_id:
            return
        if graceful_timeout_s > 0:
            with contextlib.suppress(Exception):
                for p in await self._list(sandbox):
                    await self._api.rpc(
                        sandbox,
                        "process.Process/SendSignal",
                        {"process": {"pid": p["pid"]}, "signal": SIGNALS[15]},
                    )
                await asyncio.sleep(min(graceful_timeout_s, 2.0))
        await self._api.rest(
            "DELETE", f"/sandboxes/{sandbox.provider_sandbox_id}", "kill sandbox", ok=(404,)
        )

    async def refresh_lease(self, sandbox: Sandbox) -> None:
        until = float(sandbox.provider_data.get("lease_until") or 0)
        if until - time.time() > LEASE_S / 2:
            return
        await self._api.rest(
            "POST",
            f"/sandboxes/{sandbox.provider_sandbox_id}/timeout",
            "extend timeout",
            idempotent=True,  # it sets the timeout, so twice is the same as once
            json={"timeout": LEASE_S},
        )
        sandbox.provider_data["lease_until"] = str(time.time() + LEASE_S)

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        resp = await self._api.rest(
            "GET", f"/sandboxes/{sandbox.provider_sandbox_id}", "get sandbox", ok=(404,)
        )
        return Probe(alive=resp.status_code == 200 and resp.json().get("state") == "running")

    async def usage(self, sandbox: Sandbox) -> Usage:
        resp = await self._api.rest(
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
        out = await self._api.rpc(sandbox, "process.Process/List", {})
        return list(out.get("processes", []))

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        return E2BRun(self._api, sandbox, command, kill_on_close)

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

    def _fs(self, sandbox: Sandbox) -> EnvdFS:
        return EnvdFS(self._api, sandbox, lambda cmd: self.run(sandbox, cmd))
