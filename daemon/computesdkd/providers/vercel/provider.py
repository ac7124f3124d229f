"""The vercel provider, on Vercel Sandbox's REST API (api.py).

Sandboxes are named; each runs a session that carries the commands (run.py) and
files. The model follows the API and the in-memory double Vercel ships for it
(vercel/sandbox, vercel-sandbox-mock).

What Vercel's API cannot carry is refused by name: stdin (its REST commands
have none), memory and disk sizing (memory follows vCPUs), GPUs, background
processes with output replay. Usage, and the file calls other than read and
write, go through commands in the sandbox (providers/common/execfs.py): Vercel has no
metrics API, and its file API has no stat or listing.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from collections.abc import AsyncIterator

from computesdkd.domain.errors import FailedPrecondition, NotFound, ResourceExhausted, Unsupported
from computesdkd.domain.model import Command, FileInfo, Probe, Resources, Sandbox
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.common import files
from computesdkd.providers.common.execfs import FilesByExec, UsageByExec
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure
from computesdkd.providers.common.run import run_checked
from computesdkd.providers.vercel.api import NAME, VercelAPI, session
from computesdkd.providers.vercel.run import NO_STDIN, VercelRun

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
# A session's timeout is extended by this much when less than a third of it is left.
LEASE_S = 30 * 60


@base.register(NAME)
class VercelProvider(FilesByExec, UsageByExec, Provider, caps.Leases):
    name = NAME
    probe_interval_s = 30.0
    why_not = {
        "background processes": "the daemon cannot re-read Vercel command logs from an offset"
    }
    traits = frozenset({caps.SIGNALS, caps.RESOURCE_LIMITS})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = VercelAPI(cfg.env)

    def availability(self) -> str:
        missing = self._api.missing()
        return f"{', '.join(missing)} not set" if missing else ""

    def templates(self) -> list[str]:
        return sorted(RUNTIMES)

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
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
            "projectId": self._api.project,
            "runtime": runtime,
            "resources": {"vcpus": vcpus},
            "timeout": sandbox.spec.timeout_ms,
            "env": sandbox.spec.env,
            "tags": sandbox.spec.metadata,
            "ports": [],
        }
        out = (await self._api.call("POST", "", "create sandbox", json=body)).json()
        sandbox.provider_sandbox_id = out["sandbox"]["name"]
        sandbox.provider_data = {"session": out["session"]["id"], "cwd": out["session"]["cwd"]}
        sandbox.resources = Resources(
            cpu_cores=float(out["session"].get("vcpus", vcpus)),
            memory_mb=int(out["session"].get("memory", 0)),
        )
        async with destroyed_on_failure(self, sandbox):  # the same working directory everywhere
            await run_checked(
                self.run(sandbox, Command(args=["mkdir", "-p", WORKDIR], cwd="/")),
                FailedPrecondition(
                    "mkdir failed in the vercel sandbox", reason="SETUP_FAILED", provider=NAME
                ),
            )

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if sandbox.provider_sandbox_id:
            await self._api.call(
                "DELETE", f"/{sandbox.provider_sandbox_id}", "delete sandbox", ok=(404,)
            )

    async def refresh_lease(self, sandbox: Sandbox) -> None:
        until = float(sandbox.provider_data.get("lease_until") or 0)
        if until - time.time() > LEASE_S / 3:
            return
        await self._api.call(
            "POST",
            f"{session(sandbox)}/extend-timeout",
            "extend timeout",
            json={"duration": LEASE_S * 1000},
        )
        sandbox.provider_data["lease_until"] = str(time.time() + LEASE_S)

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        resp = await self._api.call(
            "GET", f"/{sandbox.provider_sandbox_id}", "get sandbox", ok=(404,)
        )
        alive = resp.status_code == 200 and resp.json()["session"]["status"] == "running"
        return Probe(alive=alive)

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        if command.stdin:
            raise Unsupported(NAME, "stdin", NO_STDIN)
        return VercelRun(self._api, sandbox, command, kill_on_close)

    # -------------------------------------------------------------- files

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        await files.check_readable(self._fs(sandbox), path)
        resp = await self._api.call(
            "POST",
            f"{session(sandbox)}/fs/read",
            "read file",
            idempotent=True,
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
