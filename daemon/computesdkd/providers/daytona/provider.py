"""The daytona provider, on Daytona's REST API and its per-sandbox toolbox API
(api.py).

Create, inspect, list and delete go to the control API; the create body, the
vendor's limits and the labels and lifetimes that keep a dead daemon from
leaking a sandbox are in spec.py. Commands run in toolbox sessions (run.py);
background processes are session commands followed again from any offset
(background.py); ExposePort gives Daytona's preview link (previews.py); files
use the toolbox's `/files` API (files.py). Usage is sampled by a command in the
sandbox: the toolbox's /system/metrics gives a CPU percentage, not the CPU time
the daemon's sampler needs, and no process count.

What the toolbox cannot carry is refused by name: stdin (there is no way to
close a command's input), signals other than a kill.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from computesdkd.domain.errors import ComputeError, Unavailable, Unsupported
from computesdkd.domain.model import Command, Probe, Resources, Sandbox
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.capabilities import Leases
from computesdkd.providers.common.execfs import UsageByExec
from computesdkd.providers.common.file_api import FileAPIFiles
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure, owner_id
from computesdkd.providers.daytona import spec
from computesdkd.providers.daytona.api import NAME, DaytonaAPI, bad_answer, base_url, ident, obj
from computesdkd.providers.daytona.background import SessionProcesses
from computesdkd.providers.daytona.files import ToolboxFS
from computesdkd.providers.daytona.previews import PreviewLinks
from computesdkd.providers.daytona.run import NO_STDIN, DaytonaRun
from computesdkd.support import logs

log = logs.get(__name__)

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
GONE_STATES = {"destroyed", "destroying"}
CREATE_TIMEOUT_S = 120.0
# The list is paged (at most 200 a page); a sweep reads this many pages at most.
PAGE_SIZE = 100
MAX_PAGES = 50


def _int(out: dict[str, Any], key: str) -> int:
    v = out.get(key, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 20 else 0


@base.register(NAME)
class DaytonaProvider(FileAPIFiles, UsageByExec, Leases, Provider):
    name = NAME
    probe_interval_s = 30.0
    why_not = {
        "snapshots": "Daytona's snapshots are images made from a sandbox, not restorable in place",
        "volumes": "Daytona's volumes are unsized shared buckets, mounted only at create",
    }
    traits = frozenset({caps.RESOURCE_LIMITS, caps.DISK_LIMIT})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = DaytonaAPI(cfg.env)
        self._owner = ""
        self._procs = SessionProcesses(self._api)
        self.parts = (self._procs, PreviewLinks(self._api))

    def availability(self) -> str:
        return "" if self._api.key else "DAYTONA_API_KEY is not set"

    def templates(self) -> list[str]:
        return sorted(spec.DEFAULT_TEMPLATES)

    async def start(self, ctx: base.ProviderContext) -> None:
        self._owner = owner_id(ctx.state_dir / "daytona-owner")

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
        body = spec.create_body(sandbox, self._owner or "unowned", self._api.target)
        body["public"] = self._api.public_previews
        born = time.time()  # ttlMinutes counts from the vendor's creation, a moment later
        out = obj(
            await self._api.call(
                "POST", "/sandbox", "create sandbox", json=body, not_found="TEMPLATE_NOT_FOUND"
            ),
            "create sandbox",
        )
        sandbox.provider_sandbox_id = ident(out.get("id"), "create sandbox")
        sandbox.provider_data = {
            "toolbox": "",
            "lease_until": str(born + body["ttlMinutes"] * 60),
            "created_at": str(born),
        }
        async with destroyed_on_failure(self, sandbox):
            if out.get("toolboxProxyUrl"):
                sandbox.provider_data["toolbox"] = base_url(out["toolboxProxyUrl"], "create")
            out = await self._wait_started(out)
            if not sandbox.provider_data["toolbox"]:
                url = obj(
                    await self._api.call(
                        "GET",
                        f"/sandbox/{sandbox.provider_sandbox_id}/toolbox-proxy-url",
                        "toolbox url",
                    ),
                    "toolbox url",
                ).get("url")
                sandbox.provider_data["toolbox"] = base_url(url, "toolbox url")
            sandbox.resources = Resources(
                cpu_cores=float(_int(out, "cpu")),
                memory_mb=_int(out, "memory") * 1024,
                disk_mb=_int(out, "disk") * 1024,
                gpu_enabled=bool(_int(out, "gpu")),
            )
            await self._fs(sandbox).folder(WORKDIR, exist_ok=True)

    async def _wait_started(self, out: dict[str, Any]) -> dict[str, Any]:
        sid = ident(out.get("id"), "get sandbox")
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
            out = obj(await self._api.call("GET", f"/sandbox/{sid}", "get sandbox"), "get")
        if out.get("state") not in READY_STATES:
            raise Unavailable(
                f"daytona: the sandbox is {str(out.get('state'))[:40]}: "
                f"{str(out.get('errorReason') or 'no reason given')[:300]}",
                reason="PROVIDER_ERROR",
                provider=NAME,
            )
        return out

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        self._api.forget(sandbox)
        self._procs.forget(sandbox)
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
        alive = resp.status_code == 200 and obj(resp, "get").get("state") in READY_STATES
        return Probe(alive=alive)

    async def refresh_lease(self, sandbox: Sandbox) -> None:
        """ttlMinutes counts from creation: the new one is the age plus a lease."""
        if "created_at" not in sandbox.provider_data:
            return  # made before ttls were set: it has none to extend
        until = float(sandbox.provider_data.get("lease_until") or 0)
        if until - time.time() > spec.LEASE_MIN * 60 / 2:
            return
        born = float(sandbox.provider_data["created_at"])
        minutes = int((time.time() - born) // 60) + spec.LEASE_MIN
        await self._api.call(
            "POST",
            f"/sandbox/{sandbox.provider_sandbox_id}/ttl/{minutes}",
            "set ttl",
            idempotent=True,  # it sets the ttl, so twice is the same as once
        )
        sandbox.provider_data["lease_until"] = str(born + minutes * 60)

    async def reconcile(self, live_ids: set[str]) -> None:
        """Deletes this daemon's Daytona sandboxes (by owner label) no record owns:
        what a daemon killed between the create call and its record left."""
        if self.availability() or not self._owner:
            return
        labels = json.dumps({spec.OWNER_LABEL: self._owner})
        cursor = ""
        for _ in range(MAX_PAGES):
            params = {"labels": labels, "limit": str(PAGE_SIZE)}
            if cursor:
                params["cursor"] = cursor
            page = obj(await self._api.call("GET", "/sandbox", "list", params=params), "list")
            items = page.get("items")
            if not isinstance(items, list):
                raise bad_answer("list", "no items")
            for item in items:
                await self._sweep(item, live_ids)
            nxt = page.get("nextCursor")
            if not isinstance(nxt, str) or not nxt or len(nxt) > 1024:
                return
            cursor = nxt

    async def _sweep(self, item: object, live_ids: set[str]) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
            return
        if item["labels"].get(spec.OWNER_LABEL) != self._owner:
            return  # the vendor's filter is trusted no further than this
        if item["labels"].get(spec.SANDBOX_LABEL) in live_ids or item.get("state") in GONE_STATES:
            return
        try:
            sid = ident(item.get("id"), "list")
            await self._api.call("DELETE", f"/sandbox/{sid}", "delete orphan", ok=(404,))
        except ComputeError as exc:
            log.warning("daytona orphan not deleted", id=str(item.get("id"))[:64], error=str(exc))
            return
        log.info(
            "daytona orphan deleted",
            id=sid,
            record=str(item["labels"].get(spec.SANDBOX_LABEL))[:64],
        )

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        if command.stdin:
            raise Unsupported(NAME, "stdin", NO_STDIN)
        return DaytonaRun(
            self._api, sandbox, command, kill_on_close, self._procs.started(sandbox, command)
        )

    # -------------------------------------------------------------- files

    def _fs(self, sandbox: Sandbox) -> ToolboxFS:
        return ToolboxFS(self._api, sandbox)
