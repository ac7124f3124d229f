"""The e2b provider, spoken on the wire: E2B's REST API and envd's Connect API
(api.py), a command per run (run.py), files through envd (files.py).

Why not the official `e2b` SDK: it hands command output over as decoded text
(our API streams bytes with offsets, so binary output would be corrupted), it
pulls in a native HTTP stack of its own (pyqwest) and reads whole answers into
memory, where ours bounds them. The wire API is documented (e2b-dev/E2B
spec/openapi.yml, spec/envd) and small, and the calls here are the SDK's own:
v2 create, the timeout, envd's process and filesystem services and /files.
tests/test_e2b_contract.py drives the fake with the official SDK, so the fake
follows E2B, and holds this adapter to the fake.

A port's URL is E2B's own (preview_url): its proxy serves any port of a running
sandbox at https://PORT-ID.DOMAIN, before anything listens there too. What E2B
cannot carry (see why_not) is refused by name: background processes, and
snapshots (E2B's pause resumes the same sandbox, keeping no instant to go back
to; its snapshots start new sandboxes only, never restore a running one, and
give no files back to export).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
import urllib.parse
from typing import Any

from computesdkd.domain.errors import AlreadyExists, ComputeError, InvalidArgument, Unsupported
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
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure, owner_id
from computesdkd.providers.e2b.api import (
    E2BAPI,
    ENVD_PORT,
    NAME,
    answer,
    bad_answer,
    domain,
    envd_version,
    is_host,
    is_sandbox_id,
    plan_hours,
    sandbox_id,
)
from computesdkd.providers.e2b.files import EnvdFS
from computesdkd.providers.e2b.run import SIGNALS, E2BRun
from computesdkd.support import logs

log = logs.get(__name__)

# Names the other providers understand, mapped to E2B's public templates.
TEMPLATES = {
    "base": "base",
    "python": "base",
    "python:3.11": "base",
    "python3.11.x": "base",
    "node": "base",
    "nodejs": "base",
    "nodejs18": "base",
    "nodejs18.x": "base",
}
# E2B ends a sandbox at its own timeout (that is its TTL, so a dead daemon leaks
# nothing for long): the daemon's timeout comes first, and keep-alive sandboxes
# get their E2B lease extended by this much when it runs low, never past the
# plan's longest life, which E2B counts from the start.
LEASE_S = 3600
LEASE_MARGIN_S = 30
# Who made a sandbox (this daemon, by its state dir) and which record it is, in
# E2B's metadata: reconcile lists by the first and kills what no record owns.
OWNER_KEY = "computesdk_daemon"
ID_KEY = "computesdk_id"
# How many of E2B's list pages (100 sandboxes each) reconcile reads at most.
MAX_LIST_PAGES = 50


@base.register(NAME)
class E2BProvider(
    FileAPIFiles, Provider, caps.Metering, caps.ProcessListing, caps.Leases, caps.PreviewUrls
):
    name = NAME
    probe_interval_s = 30.0
    why_not = {
        "background processes": "envd cannot replay a process's output from an offset",
        "snapshots": "E2B restores a paused sandbox only by resuming it, keeping no "
        "earlier instant, and its snapshots only start new sandboxes",
        "state export": "E2B gives no snapshot's files back",
    }
    traits = frozenset({caps.EXEC_STDIN, caps.SIGNALS})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = E2BAPI(cfg.env)
        self._owner = ""
        self._config_error = ""
        try:
            hours, self._plan_rule = plan_hours(cfg.options)
        except ValueError as exc:
            hours, self._plan_rule, self._config_error = 1, "", str(exc)
        self._max_life_s = hours * 3600
        if not is_host(self._api.domain):
            self._config_error = "E2B_DOMAIN is not a host name"

    def availability(self) -> str:
        return self._config_error or ("" if self._api.key else "E2B_API_KEY is not set")

    def templates(self) -> list[str]:
        return sorted(TEMPLATES)

    async def start(self, ctx: base.ProviderContext) -> None:
        self._owner = owner_id(ctx.state_dir / "e2b-owner")

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    def _lease(self, sandbox: Sandbox) -> int:
        """The E2B timeout create asks for, checked against the plan first."""
        if sandbox.spec.keep_alive:
            return min(LEASE_S, self._max_life_s)
        asked = math.ceil(sandbox.spec.timeout_ms / 1000)
        if asked > self._max_life_s:
            raise InvalidArgument(
                f"{NAME}: a timeout of {asked} s passes {self._plan_rule} "
                f"({self._max_life_s} s); set a shorter timeout, or the plan in "
                "[providers.e2b] of the daemon's config",
                reason="INVALID_TIMEOUT",
                provider=NAME,
            )
        return min(asked + LEASE_MARGIN_S, self._max_life_s)

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise Unsupported(NAME, "gpu")
        if r.cpu_cores or r.memory_mb or r.disk_mb or r.pids_limit:
            raise Unsupported(NAME, "per-sandbox resources", "E2B sizes a sandbox by its template")
        for port in sandbox.spec.ports:
            check_port(port)
        lease = self._lease(sandbox)
        tpl = TEMPLATES.get(sandbox.spec.template, sandbox.spec.template)
        metadata = {**sandbox.spec.metadata, ID_KEY: sandbox.id}
        if self._owner:
            metadata[OWNER_KEY] = self._owner
        # v2 create, as E2B's SDK makes it: envd access is always secured, and the
        # idempotency key (one per create, shared by its retries) lets a create
        # whose answer was lost be sent again without making a second sandbox.
        # No network config: who may use the sandbox's URLs stays the project's
        # rule (public unless the project made them private). autoPause stays
        # off: at its timeout E2B kills the sandbox, so a dead daemon leaves
        # nothing behind, where a paused one would be kept until deleted.
        body = {
            "templateID": tpl,
            "timeout": lease,
            "autoPause": False,
            "metadata": metadata,
            "envVars": sandbox.spec.env,
        }
        started = time.time()
        resp = await self._api.rest(
            "POST",
            "/v2/sandboxes",
            "create sandbox",
            json=body,
            headers={"Idempotency-Key": idempotency_key(sandbox.id)},
            idempotent=True,
            not_found="TEMPLATE_NOT_FOUND",
        )
        out = answer(resp, "create sandbox") if resp.content else {}
        out = out if isinstance(out, dict) else {}
        # An id that is not E2B's (or an answer that is not JSON) gives no URL to
        # kill the sandbox by: the orphan sweep finds that one by its metadata. Any
        # other check of the answer fails inside the guard, which kills it by id.
        sandbox.provider_sandbox_id = sandbox_id(out.get("sandboxID"), "create sandbox")
        async with destroyed_on_failure(self, sandbox):
            token = out.get("envdAccessToken")
            traffic = out.get("trafficAccessToken")
            sandbox.provider_data = {
                "domain": domain(out.get("domain"), "create sandbox"),
                "access_token": token if isinstance(token, str) and len(token) <= 512 else "",
                "envd_version": ".".join(map(str, envd_version(out.get("envdVersion")))),
                "started_at": str(started),
                "lease_until": str(started + lease),
                # E2B gives a traffic token only to a sandbox whose URLs need it; the
                # token itself is not kept, as no call of ours sends it.
                "private_urls": "1" if isinstance(traffic, str) and traffic else "",
            }
            if not sandbox.provider_data["access_token"]:
                # Without one, anyone who knows the sandbox id could run commands in it.
                raise bad_answer("create sandbox", "E2B gave no envd access token")
            detail = await self._detail(sandbox)
            network = detail.get("network")
            if isinstance(network, dict) and network.get("allowPublicTraffic") is False:
                sandbox.provider_data["private_urls"] = "1"  # even if no token came
            sandbox.resources = Resources(
                cpu_cores=_number(detail.get("cpuCount")),
                memory_mb=int(_number(detail.get("memoryMB"))),
                disk_mb=int(_number(detail.get("diskSizeMB"))),
            )
            # every provider offers the same working directory
            with contextlib.suppress(AlreadyExists):
                await self._api.rpc(sandbox, "filesystem.Filesystem/MakeDir", {"path": WORKDIR})

    async def preview_url(self, sandbox: Sandbox, port: int) -> str:
        """E2B's URL for the port (its SDK's get_host): served by E2B's proxy, with
        E2B's access rule, whether or not anything listens there yet."""
        check_port(port)
        if sandbox.provider_data.get("private_urls"):
            raise Unsupported(
                NAME,
                "preview URLs behind a traffic token",
                "this E2B project requires the e2b-traffic-access-token header on "
                "sandbox URLs (allowPublicTraffic false), which a URL cannot carry",
            )
        sid = sandbox_id(sandbox.provider_sandbox_id, "preview URL")
        host = domain(sandbox.provider_data.get("domain"), "preview URL") or self._api.domain
        return f"https://{port}-{sid}.{host}"

    async def _detail(self, sandbox: Sandbox) -> dict[str, Any]:
        resp = await self._api.rest(
            "GET", f"/sandboxes/{sandbox.provider_sandbox_id}", "get sandbox"
        )
        out = answer(resp, "get sandbox")
        return out if isinstance(out, dict) else {}

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
        now = time.time()
        until = float(sandbox.provider_data.get("lease_until") or 0)
        if until - now > LEASE_S / 2:
            return
        # E2B counts the plan's longest life from the start and refuses past it.
        started = float(sandbox.provider_data.get("started_at") or now)
        left = math.floor(started + self._max_life_s - now)
        lease = min(LEASE_S, left)
        if lease <= 0 or now + lease <= until:
            return  # nothing more to get: E2B ends it at the plan's limit
        await self._api.rest(
            "POST",
            f"/sandboxes/{sandbox.provider_sandbox_id}/timeout",
            "extend timeout",
            idempotent=True,  # it sets the timeout, so twice is the same as once
            json={"timeout": lease},
        )
        sandbox.provider_data["lease_until"] = str(now + lease)

    async def reconcile(self, live_ids: set[str]) -> None:
        """Kills the sandboxes this daemon made that no record owns (a crash between
        E2B's create and the record's first write), found by their metadata."""
        if self.availability() or not self._owner:
            return
        for sid, owner_record in await self._owned():
            if owner_record not in live_ids:
                try:
                    await self._api.rest("DELETE", f"/sandboxes/{sid}", "kill orphan", ok=(404,))
                except ComputeError as exc:  # the others are still swept
                    log.warning("could not kill an orphan E2B sandbox", error=exc.message)
                    continue
                log.warning("killed an orphan E2B sandbox", provider_sandbox_id=sid)

    async def _owned(self) -> list[tuple[str, str]]:
        """(E2B id, daemon record id) of every sandbox, running or paused, this daemon made."""
        params = {
            "metadata": urllib.parse.urlencode({OWNER_KEY: self._owner}),
            "state": "running,paused",
            "limit": "100",
        }
        found: list[tuple[str, str]] = []
        for _ in range(MAX_LIST_PAGES):
            resp = await self._api.rest("GET", "/v2/sandboxes", "list sandboxes", params=params)
            page = answer(resp, "list sandboxes")
            for item in page if isinstance(page, list) else []:
                meta = item.get("metadata") if isinstance(item, dict) else None
                if not isinstance(meta, dict) or meta.get(OWNER_KEY) != self._owner:
                    continue
                sid = item.get("sandboxID")
                if not is_sandbox_id(sid):  # it cannot go into a URL: the rest are swept
                    log.warning("skipped a listed E2B sandbox whose id is not E2B's")
                    continue
                found.append((sid, str(meta.get(ID_KEY))))
            token = resp.headers.get("X-Next-Token", "")
            if not token or len(token) > 1024:
                break
            params["nextToken"] = token
        return found

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        resp = await self._api.rest(
            "GET", f"/sandboxes/{sandbox.provider_sandbox_id}", "get sandbox", ok=(404,)
        )
        body = answer(resp, "get sandbox") if resp.status_code == 200 else {}
        return Probe(alive=isinstance(body, dict) and body.get("state") == "running")

    async def usage(self, sandbox: Sandbox) -> Usage:
        resp = await self._api.rest(
            "GET", f"/sandboxes/{sandbox.provider_sandbox_id}/metrics", "metrics"
        )
        samples = answer(resp, "metrics")
        m = samples[-1] if isinstance(samples, list) and samples else {}
        m = m if isinstance(m, dict) else {}
        return Usage(
            memory_used_bytes=int(_number(m.get("memUsed"))),
            memory_limit_bytes=int(_number(m.get("memTotal"))),
            process_count=len(await self._list(sandbox)),
            disk_used_bytes=int(_number(m.get("diskUsed"))),
            disk_limit_bytes=int(_number(m.get("diskTotal"))),
        )

    # -------------------------------------------------------------- processes

    async def _list(self, sandbox: Sandbox) -> list[dict[str, Any]]:
        out = await self._api.rpc(sandbox, "process.Process/List", {})
        procs = out.get("processes")
        return [p for p in procs if isinstance(p, dict)] if isinstance(procs, list) else []

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


def _number(value: object) -> float:
    """A count E2B reports, or 0 where it is not a sane one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if 0 <= value < 1 << 62 else 0.0


def check_port(port: int) -> None:
    """A port E2B's proxy can serve: any but envd's, which E2B keeps for itself."""
    if not 0 < port < 65536:
        raise InvalidArgument(f"{NAME}: bad port {port}", reason="INVALID_PORT", provider=NAME)
    if port == ENVD_PORT:
        raise InvalidArgument(
            f"{NAME}: port {ENVD_PORT} is envd's, E2B's agent in every sandbox; E2B "
            "serves no other process there, so use another port",
            reason="PROVIDER_LIMIT",
            provider=NAME,
        )


def idempotency_key(record_id: str) -> str:
    """A key for one create, by E2B's rule: 1-255 lowercase letters, digits or
    hyphens. A later create of the same record (after a failed one was killed)
    gets another, so that E2B cannot answer it with the dead sandbox."""
    record = re.sub(r"[^a-z0-9-]", "-", record_id.lower())[:200]
    return f"computesdk-{record}-{secrets.token_hex(8)}"
