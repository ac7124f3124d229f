"""The daytona provider, on Daytona's REST API and its per-sandbox toolbox API
(api.py).

Create, inspect and delete go to the control API. Commands run in a toolbox
session each (run.py); files use the toolbox's `/files` API (files.py). Usage is
sampled by a command in the sandbox.

What the toolbox cannot carry is refused by name: stdin (there is no way to
close a command's input), signals other than a kill, and background processes
with output replay.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from computesdkd.domain.errors import Unavailable, Unsupported
from computesdkd.domain.model import Command, Probe, Resources, Sandbox
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.common.execfs import UsageByExec
from computesdkd.providers.common.file_api import FileAPIFiles
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure
from computesdkd.providers.daytona.api import NAME, DaytonaAPI
from computesdkd.providers.daytona.files import ToolboxFS
from computesdkd.providers.daytona.run import NO_STDIN, DaytonaRun

# Daytona's default snapshot carries python and node; other names are snapshots.
DEFAULT_TEMPLATES = {"base", "python", "python:3.11", "node", "nodejs18"}
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
class DaytonaProvider(FileAPIFiles, UsageByExec, Provider):
    name = NAME
    probe_interval_s = 30.0
    why_not = {
        "background processes": "not carried by this adapter yet; sessions could replay logs"
    }
    traits = frozenset({caps.RESOURCE_LIMITS, caps.DISK_LIMIT})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = DaytonaAPI(cfg.env)

    def availability(self) -> str:
        return "" if self._api.key else "DAYTONA_API_KEY is not set"

    def templates(self) -> list[str]:
        return sorted(DEFAULT_TEMPLATES)

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
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
        if self._api.target:
            body["target"] = self._api.target
        out = (
            await self._api.call(
                "POST", "/sandbox", "create sandbox", json=body, not_found="TEMPLATE_NOT_FOUND"
            )
        ).json()
        sandbox.provider_sandbox_id = out["id"]
        sandbox.provider_data = {"toolbox": (out.get("toolboxProxyUrl") or "").rstrip("/")}
        async with destroyed_on_failure(self, sandbox):
            out = await self._wait_started(out)
            if not sandbox.provider_data["toolbox"]:
                url = (
                    await self._api.call(
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
            await self._fs(sandbox).folder(WORKDIR, exist_ok=True)

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
            out = (await self._api.call("GET", f"/sandbox/{out['id']}", "get sandbox")).json()
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
            await self._api.call(
                "DELETE", f"/sandbox/{sandbox.provider_sandbox_id}", "delete sandbox", ok=(404,)
            )

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        resp = await self._api.call(
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
            raise Unsupported(NAME, "stdin", NO_STDIN)
        return DaytonaRun(self._api, sandbox, command)

    # -------------------------------------------------------------- files

    def _fs(self, sandbox: Sandbox) -> ToolboxFS:
        return ToolboxFS(self._api, sandbox)
