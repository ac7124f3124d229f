"""The docker provider: one container per sandbox on a Docker Engine.

Containers run with no network, no_new_privs, Docker's default seccomp profile
and capability set, memory/CPU/pids limits, and tini as PID 1. Exec goes
through the Engine's exec API on a hijacked connection (stdout and stderr
stay separate; stdin streams). Files and disk usage go through commands in the
container (providers/common/execfs.py).

What the Engine cannot carry is refused by name: re-attaching to a process's
output (exec output is not kept), background processes, and a disk limit
(overlay2 on ext4 has no per-container quota).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal as signals
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    Unavailable,
    Unsupported,
)
from computesdkd.domain.model import (
    Command,
    Probe,
    ProcessEvent,
    Resources,
    Sandbox,
    Usage,
)
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider, ProviderContext
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.execfs import FilesByExec
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure
from computesdkd.providers.common.run import StreamedRun
from computesdkd.providers.common.templates import TEMPLATES, resolve
from computesdkd.providers.docker import image as image_mod
from computesdkd.providers.docker.engine import Engine, HijackedExec, socket_path

NAME = "docker"
# How long a signal waits for the Engine to say an exec's pid: 5 s in 20 ms steps.
PID_POLLS = 250
PID_POLL_S = 0.02
DEFAULTS = Resources(cpu_cores=1.0, memory_mb=1024, pids_limit=512)
LABEL = "dev.computesdk.sandbox"


@base.register(NAME)
class DockerProvider(FilesByExec, Provider, caps.Metering, caps.LiveLimits):
    name = NAME
    probe_interval_s = 5.0
    why_not = {
        "background processes": "the Engine keeps no exec output to re-attach to",
        "process attach": "the Engine keeps no exec output",
    }
    traits = frozenset(
        {caps.EXEC_STDIN, caps.SIGNALS, caps.RESOURCE_LIMITS, caps.NETWORK_ISOLATION}
    )

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._engine = Engine(socket_path(cfg.env.get("DOCKER_HOST", "")))
        self._image = cfg.env.get("COMPUTESDK_DOCKER_IMAGE", image_mod.IMAGE)
        self._unavailable = "not started"

    async def start(self, ctx: ProviderContext) -> None:
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            await self._engine.ping()
            await self._engine.negotiate_version()
        except Unavailable as exc:
            self._unavailable = exc.message
            return
        if not await image_mod.exists(self._engine, self._image):
            self._unavailable = (
                f"image {self._image} is not built (python -m computesdkd.providers.docker.image)"
            )
            return
        self._unavailable = ""

    async def close(self) -> None:
        await self._engine.close()

    def availability(self) -> str:
        return self._unavailable

    def templates(self) -> list[str]:
        return sorted(TEMPLATES)

    # -------------------------------------------------------------- lifecycle

    def _resources(self, sandbox: Sandbox) -> Resources:
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise FailedPrecondition(
                "provider 'docker' has no GPU on this host",
                reason="GPU_UNAVAILABLE",
                provider=NAME,
                feature="gpu",
            )
        if r.disk_mb:
            raise Unsupported(
                NAME, "disk limit", "overlay2 on this host has no per-container quota"
            )
        asked = Resources(
            cpu_cores=r.cpu_cores or DEFAULTS.cpu_cores,
            memory_mb=r.memory_mb or DEFAULTS.memory_mb,
            pids_limit=r.pids_limit or DEFAULTS.pids_limit,
        )
        res = _capped(asked)
        sandbox.requested = asked if res != asked else Resources()
        return res

    async def create(self, sandbox: Sandbox) -> None:
        if self._unavailable:
            await self._refresh()  # dockerd may have come up since
        if self._unavailable:
            raise cannot_run(NAME, self._unavailable)
        resolve(sandbox.spec.template, NAME)
        res = sandbox.resources = self._resources(sandbox)
        mem = res.memory_mb << 20
        body = {
            "Image": self._image,
            "Cmd": ["sleep", "infinity"],
            "Hostname": "sandbox",
            "WorkingDir": "/workspace",
            "Labels": {LABEL: sandbox.id},
            "HostConfig": {
                "Init": True,
                "Memory": mem,
                "MemorySwap": mem,
                "NanoCpus": int(res.cpu_cores * 1e9),
                "PidsLimit": res.pids_limit,
                "NetworkMode": "none",
                "SecurityOpt": ["no-new-privileges"],
            },
        }
        out = await self._engine.json(
            "POST",
            "/containers/create",
            "create",
            json=body,
            params={"name": f"computesdk-{sandbox.id}"},
        )
        sandbox.provider_sandbox_id = out["Id"]
        sandbox.provider_data = {"container": out["Id"]}
        async with destroyed_on_failure(self, sandbox):
            await self._engine.request("POST", f"/containers/{out['Id']}/start", "start")

    def _cid(self, sandbox: Sandbox) -> str:
        return sandbox.provider_data.get("container") or f"computesdk-{sandbox.id}"

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        cid = self._cid(sandbox)
        if graceful_timeout_s > 0:
            await self._engine.request(
                "POST",
                f"/containers/{cid}/stop",
                "stop",
                params={"t": math.ceil(graceful_timeout_s)},
                ok=(304, 404),
            )
        await self._engine.request(
            "DELETE",
            f"/containers/{cid}",
            "remove",
            params={"force": "true", "v": "true"},
            ok=(404,),
        )

    async def _inspect(self, sandbox: Sandbox) -> dict[str, Any]:
        out: dict[str, Any] = await self._engine.json(
            "GET", f"/containers/{self._cid(sandbox)}/json", "inspect"
        )
        return out

    async def adopt(self, sandbox: Sandbox) -> bool:
        try:
            return bool((await self._inspect(sandbox))["State"]["Running"])
        except Exception:
            return False

    async def probe(self, sandbox: Sandbox) -> Probe:
        state = (await self._inspect(sandbox))["State"]
        return Probe(alive=bool(state["Running"]), oom_kills=int(bool(state.get("OOMKilled"))))

    async def usage(self, sandbox: Sandbox) -> Usage:
        stats = await self._engine.json(
            "GET",
            f"/containers/{self._cid(sandbox)}/stats",
            "stats",
            # One-shot: no second sample a second later for a CPU delta we do not read.
            params={"stream": "false", "one-shot": "true"},
        )
        mem = stats.get("memory_stats", {})
        return Usage(
            memory_used_bytes=int(mem.get("usage", 0)),
            memory_limit_bytes=int(mem.get("limit", 0)),
            process_count=int(stats.get("pids_stats", {}).get("current", 0)),
            cpu_time_ns=int(stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0)),
        )

    async def set_limits(
        self, sandbox: Sandbox, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        if disk_mb:
            raise Unsupported(NAME, "disk limit", "overlay2 on this host has no quota")
        cur = sandbox.resources
        asked = replace(
            cur, cpu_cores=cpu_cores or cur.cpu_cores, memory_mb=memory_mb or cur.memory_mb
        )
        want = _capped(asked)
        cpu_cores = want.cpu_cores if cpu_cores else 0.0
        memory_mb = want.memory_mb if memory_mb else 0
        body: dict[str, Any] = {}
        if cpu_cores:
            body["NanoCpus"] = int(cpu_cores * 1e9)
        if memory_mb:
            body["Memory"] = body["MemorySwap"] = memory_mb << 20
        if body:
            await self._engine.request(
                "POST", f"/containers/{self._cid(sandbox)}/update", "update", json=body
            )
        sandbox.requested = asked if want != asked else Resources()
        return want

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        if tag:
            raise self._unsupported("process tags")
        return DockerRun(self._engine, self._cid(sandbox), sandbox, command, kill_on_close)


class DockerRun(StreamedRun):
    # The Engine has no exec timeout: `timeout` inside the container kills the
    # command's whole process group at the deadline.
    kill_at_deadline = False

    def __init__(
        self, engine: Engine, cid: str, sandbox: Sandbox, command: Command, kill_on_close: bool
    ) -> None:
        super().__init__(NAME, command, kill_on_close)
        self._engine = engine
        self._cid = cid
        self._sandbox = sandbox
        self._conn: HijackedExec | None = None
        self._pid = 0
        self._pid_known: asyncio.Task[int] | None = None

    async def _stream(self) -> AsyncIterator[ProcessEvent]:
        cmd = self.command
        args = list(cmd.args)
        if cmd.timeout_ms:
            args = ["timeout", "-s", "KILL", f"{cmd.timeout_ms / 1000:.3f}", *args]
        env = [f"{k}={v}" for k, v in process_env(self._sandbox, cmd).items()]
        exec_id = await self._engine.exec_create(self._cid, args, env, cmd.cwd, cmd.stdin)
        self._conn = await self._engine.exec_attach(exec_id)
        # The Engine sets the exec's Pid a while after the start (often ~0.5 s):
        # looked up in the background, so the stream is not held up, and awaited by
        # a signal that comes before it is known.
        self._pid_known = asyncio.create_task(self._poll_pid(exec_id))
        yield self.started_event(exec_id[:12], 0)
        async for stream, data in self._conn.frames():
            if stream in (1, 2):
                yield self.output("stdout" if stream == 1 else "stderr", data)
        info = await self._engine.json("GET", f"/exec/{exec_id}/json", "exec inspect")
        code = int(info.get("ExitCode") or 0)
        timed_out = bool(cmd.timeout_ms) and code == 137 and self.elapsed_ms() >= cmd.timeout_ms
        if code > 128 and (timed_out or code - 128 in (signals.SIGKILL, signals.SIGTERM)):
            yield self.exited(-1, code - 128, timed_out)
        else:
            yield self.exited(code, 0, timed_out)

    def _need(self) -> HijackedExec:
        if self._conn is None:
            raise FailedPrecondition("the process has not started yet", reason="NOT_STARTED")
        return self._conn

    async def send_stdin(self, data: bytes) -> None:
        await self._need().write(data)

    async def close_stdin(self) -> None:
        await self._need().close_stdin()

    async def _poll_pid(self, exec_id: str) -> int:
        for _ in range(PID_POLLS):
            info = await self._engine.json("GET", f"/exec/{exec_id}/json", "exec inspect")
            self._pid = int(info.get("Pid") or 0)
            ended = not info.get("Running", True) and info.get("ExitCode") is not None
            if self._pid or ended:
                return self._pid
            await asyncio.sleep(PID_POLL_S)
        return self._pid

    async def send_signal(self, signal: int) -> None:
        # The Engine has no exec signal call; dockerd is on this host, so its pid is ours.
        if not self._pid and self._pid_known is not None:
            with contextlib.suppress(ComputeError):
                await asyncio.shield(self._pid_known)
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal)

    async def _kill(self) -> None:
        await self.send_signal(signals.SIGKILL)

    async def aclose(self) -> None:
        await super().aclose()
        if self._pid_known is not None:
            self._pid_known.cancel()
        if self._conn is not None:
            await self._conn.close()


def _capped(asked: Resources) -> Resources:
    """A request above this host runs capped at it (as the local provider does;
    `docker run --cpus` itself refuses more than the host's cores)."""
    host_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    return replace(
        asked,
        cpu_cores=min(asked.cpu_cores, float(os.cpu_count() or 1)),
        memory_mb=min(asked.memory_mb, host_mb),
    )
