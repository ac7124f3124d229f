"""The vercel provider, on Vercel Sandbox's REST API (api.py).

Sandboxes are named; each runs a session that carries the commands (run.py) and
files. The calls are the ones Vercel's official SDKs make (v3 create from an
image, v2 for the rest), and the fake they are tested against is driven by
those SDKs too (tests/test_vercel_contract.py).

A sandbox is created non-persistent (Vercel would otherwise keep and bill a
snapshot at every stop) with a timeout of its own, the daemon's plus a margin
or a lease the daemon extends for keep-alive, so a dead daemon leaks no running
sandbox; each carries an owner tag, by which reconcile() deletes the ones no
record owns after a crash. Vercel's limits (limits.py) are checked before the
call.

Background processes are Vercel's detached commands, re-attached by replaying
their logs (processes.py); preview URLs are the routes of the ports declared at
create (routes.py).

What Vercel's API cannot carry is refused by name: memory and disk sizing
(memory follows vCPUs), GPUs, tags on processes, snapshots (why_not). Usage,
and the file calls other than read and write, go through commands in the
sandbox (providers/common/execfs.py): Vercel has no metrics API, and its file
API has no stat or listing.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unsupported,
)
from computesdkd.domain.model import Command, FileInfo, Probe, Resources, Sandbox
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider, ProviderContext
from computesdkd.providers.common import files
from computesdkd.providers.common.execfs import FilesByExec, UsageByExec
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure, owner_id
from computesdkd.providers.common.run import run_checked
from computesdkd.providers.vercel import limits, routes
from computesdkd.providers.vercel.api import (
    NAME,
    VercelAPI,
    by_name,
    field,
    ident,
    looks_like_id,
    session,
)
from computesdkd.providers.vercel.processes import VercelProcesses
from computesdkd.providers.vercel.run import VercelRun
from computesdkd.support import logs

log = logs.get(__name__)

# Vercel's managed images (v3 create), by the daemon's template names.
IMAGES = {
    "base": "vercel/sandbox/universal",
    "node": "vercel/sandbox/node:22",
    "nodejs": "vercel/sandbox/node:22",
    "nodejs18": "vercel/sandbox/node:22",
    "nodejs18.x": "vercel/sandbox/node:22",
    "python": "vercel/sandbox/python:3.14",
    "python:3.11": "vercel/sandbox/python:3.14",
    "python3.11.x": "vercel/sandbox/python:3.14",
}
PREFIX = "computesdk-"
# How much of a caller's template name an error repeats.
ECHO = 200
# Files are uploaded as a tar.gz, which needs the whole file first.
MAX_UPLOAD = 256 * 1024 * 1024
# How many pages of 50 sandboxes the orphan sweep reads at most.
SWEEP_PAGES = 20


@base.register(NAME)
class VercelProvider(FilesByExec, UsageByExec, Provider, caps.Leases):
    name = NAME
    probe_interval_s = 30.0
    why_not = {
        "process tags": "Vercel commands carry no tags",
        "snapshots": (
            "a Vercel snapshot stops the sandbox and only seeds new sandboxes: it cannot "
            "be restored in place, under the daemon's id, or exported as a layer"
        ),
    }
    traits = frozenset({caps.EXEC_STDIN, caps.SIGNALS, caps.RESOURCE_LIMITS})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = VercelAPI(cfg.env)
        self._owner = ""
        self.parts = (VercelProcesses(self._api), routes.VercelPreviews(self._api))

    async def start(self, ctx: ProviderContext) -> None:
        self._owner = owner_id(Path(ctx.state_dir) / "vercel" / "owner")

    def availability(self) -> str:
        missing = self._api.missing()
        if missing:
            return f"{', '.join(missing)} not set"
        if self._api.plan not in limits.PLANS:
            return f"VERCEL_PLAN must be one of {', '.join(limits.PLANS)}"
        return ""

    def templates(self) -> list[str]:
        return sorted(IMAGES)

    def expected_resources(self, asked: Resources) -> Resources:
        return limits.expected(asked, self._api.plan)

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    def _body(self, sandbox: Sandbox) -> dict[str, object]:
        """The create call's body, once every limit is checked."""
        spec, r = sandbox.spec, sandbox.spec.resources
        if r.gpu_enabled:
            raise Unsupported(NAME, "gpu")
        if r.memory_mb or r.disk_mb or r.pids_limit:
            raise Unsupported(
                NAME,
                "memory, disk and pids limits",
                f"Vercel gives {limits.MEMORY_PER_VCPU_MB} MB per vCPU",
            )
        image = IMAGES.get(spec.template)
        if image is None:
            raise NotFound(
                f"template {spec.template[:ECHO]!r} has no Vercel image "
                f"(known: {', '.join(sorted(IMAGES))})",
                reason="TEMPLATE_NOT_FOUND",
                provider=NAME,
            )
        return {
            "projectId": self._api.project,
            "name": f"{PREFIX}{sandbox.id}",
            "image": image,
            "resources": {"vcpus": limits.vcpus(r, self._api.plan)},
            "timeout": limits.timeout_ms(spec, self._api.plan),
            "persistent": False,
            "env": spec.env,
            "tags": {**limits.tags(spec.metadata), limits.OWNER_TAG: self._owner or "unset"},
            "ports": limits.ports(spec.ports),
        }

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
        body, what = self._body(sandbox), "create sandbox"
        out = await self._api.json("POST", "/v3/sandboxes", what, json=body)
        sb, se = out.get("sandbox"), out.get("session")
        # The sandbox is deleted by name when the answer fails a check: by the one
        # Vercel gave, or, if that cannot go into a URL, by the one we asked for.
        named = sb.get("name") if isinstance(sb, dict) else None
        usable = [n for n in (named, body["name"]) if isinstance(n, str) and looks_like_id(n)]
        sandbox.provider_sandbox_id = usable[0] if usable else ""  # "": none to delete by
        async with destroyed_on_failure(self, sandbox):
            ident(sb, "name", what)
            sandbox.provider_data = {
                "session": ident(se, "id", what),
                "lease_until": str(time.time() + int(str(body["timeout"])) / 1000),
                "timeout_ms": str(body["timeout"]),
                "routes": routes.kept(routes.parse(out.get("routes"), what)),
            }
            sandbox.resources = Resources(
                cpu_cores=float(field(se, "vcpus", int, what)),
                memory_mb=field(se, "memory", int, what),
            )
            # the same working directory everywhere
            await run_checked(
                self.run(sandbox, Command(args=["mkdir", "-p", WORKDIR], cwd="/")),
                FailedPrecondition(
                    "mkdir failed in the vercel sandbox", reason="SETUP_FAILED", provider=NAME
                ),
            )

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if sandbox.provider_sandbox_id:
            await self._api.call(
                "DELETE",
                by_name(sandbox),
                "delete sandbox",
                params={"projectId": self._api.project},
                ok=(404,),
            )

    async def refresh_lease(self, sandbox: Sandbox) -> None:
        """Extends a keep-alive sandbox's timeout when a third of the lease is left,
        up to the plan's maximum duration, where Vercel stops it."""
        until = float(sandbox.provider_data.get("lease_until") or 0)
        if until - time.time() > limits.LEASE_MS / 3000:
            return
        _, longest = limits.plan_limits(self._api.plan)
        total = int(sandbox.provider_data.get("timeout_ms") or longest)
        extra = min(limits.LEASE_MS, longest - total)
        if extra <= 0:
            return
        await self._api.json(
            "POST",
            f"{session(sandbox)}/extend-timeout",
            "extend timeout",
            json={"duration": extra},
        )
        sandbox.provider_data["timeout_ms"] = str(total + extra)
        sandbox.provider_data["lease_until"] = str(until + extra / 1000)

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        what = "get sandbox"
        out = await self._api.json(
            "GET", by_name(sandbox), what, params={"projectId": self._api.project}, ok=(404,)
        )
        if not out:
            return Probe(alive=False)
        se = out.get("session")
        alive = field(se, "status", str, what) == "running"
        return Probe(alive=alive and field(se, "id", str, what) == sandbox.provider_data["session"])

    async def reconcile(self, live_ids: set[str]) -> None:
        """Deletes this daemon's sandboxes (by the owner tag) that no record owns."""
        if not self._owner or self.availability():
            return
        what, cursor = "list sandboxes", ""
        for _ in range(SWEEP_PAGES):
            params = {
                "project": self._api.project,
                "limit": "50",
                "tags": f"{limits.OWNER_TAG}:{self._owner}",
                **({"cursor": cursor} if cursor else {}),
            }
            out = await self._api.json("GET", "/v2/sandboxes", what, params=params)
            page = out.get("sandboxes")
            if not isinstance(page, list):
                return
            for sb in page:
                name = sb.get("name") if isinstance(sb, dict) else None
                if not isinstance(name, str) or not looks_like_id(name):
                    # it cannot go into a URL; the rest of the page is still swept
                    log.warning("skipped a listed vercel sandbox whose name is not an id")
                    continue
                tags = sb.get("tags") if isinstance(sb, dict) else None
                tags = tags if isinstance(tags, dict) else {}
                mine = tags.get(limits.OWNER_TAG) == self._owner and name.startswith(PREFIX)
                if mine and name.removeprefix(PREFIX) not in live_ids:
                    log.info("deleting an orphaned vercel sandbox", vercel_sandbox=name)
                    try:
                        await self._api.call(
                            "DELETE",
                            f"/v2/sandboxes/{name}",
                            "delete sandbox",
                            params={"projectId": self._api.project},
                            ok=(404,),
                        )
                    except ComputeError as exc:  # the others are still swept
                        log.warning("could not delete a vercel orphan", error=exc.message)
            pagination = out.get("pagination")
            nxt = pagination.get("next") if isinstance(pagination, dict) else None
            if not isinstance(nxt, str) or not nxt or len(nxt) > 512:
                return
            cursor = nxt

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        return VercelRun(self._api, sandbox, command, kill_on_close)

    # -------------------------------------------------------------- files

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        """Streams the file, dropping what lies before offset and stopping at length."""
        await files.check_readable(self._fs(sandbox), path)
        async with self._api.stream(
            "POST",
            f"{session(sandbox)}/fs/read",
            "read file",
            json={"path": path, "cwd": "/"},
            not_found="FILE_NOT_FOUND",
        ) as resp:
            skip, left = offset, length or -1
            async for chunk in resp.aiter_bytes(256 * 1024):
                if skip:
                    chunk, skip = chunk[skip:], max(skip - len(chunk), 0)
                if left >= 0:
                    chunk, left = chunk[:left], max(left - len(chunk), 0)
                if chunk:
                    yield chunk
                if left == 0:
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
        fs = self._fs(sandbox)
        if not make_parents:
            await files.check_parent(fs, path)
        await self._api.call(
            "POST",
            f"{session(sandbox)}/fs/write",
            "write file",
            idempotent=True,  # the upload replaces the file
            content=_targz(path.lstrip("/"), bytes(buf), mode or 0o644),
            headers={"Content-Type": "application/gzip", "x-cwd": "/"},
        )
        return await fs.stat(path), len(buf)


def _targz(name: str, data: bytes, mode: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())
