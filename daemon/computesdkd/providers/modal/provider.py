"""The modal provider, on Modal's gRPC API (api.py).

Sandboxes are made with ModalClient.SandboxCreate in an app of the daemon's
own ("computesdk"), from an image Modal builds from a Dockerfile line per
template. Commands go to the sandbox's task command router (the address and
a JWT come from TaskGetCommandRouterAccess; commands.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from computesdkd.domain.errors import NotFound, Unavailable, Unsupported
from computesdkd.domain.model import (
    Command,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    Started,
)
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.common.execfs import FilesByExec, UsageByExec
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure
from computesdkd.providers.common.run import run_checked
from computesdkd.providers.modal import commands
from computesdkd.providers.modal.api import HAVE_MODAL, NAME, ModalAPI

if HAVE_MODAL:
    from modal_proto import api_pb2

    Status = api_pb2.GenericResult

APP_NAME = "computesdk"
IMAGES = {
    "base": "FROM python:3.11-slim",
    "python": "FROM python:3.11-slim",
    "python:3.11": "FROM python:3.11-slim",
    "node": "FROM node:18-slim",
    "nodejs18": "FROM node:18-slim",
}


@base.register(NAME)
class ModalProvider(FilesByExec, UsageByExec, Provider, caps.Background, caps.Reattach):
    name = NAME
    probe_interval_s = 30.0
    traits = frozenset({caps.EXEC_STDIN, caps.RESOURCE_LIMITS, caps.NETWORK_ISOLATION})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = ModalAPI(cfg.env)
        self._app_id = ""
        self._images: dict[str, str] = {}

    def availability(self) -> str:
        if not HAVE_MODAL:
            return "the modal extra is not installed (pip install 'computesdkd[modal]')"
        if not self._api.has_token():
            return "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set"
        return ""

    def templates(self) -> list[str]:
        return sorted(IMAGES)

    async def close(self) -> None:
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    async def _app(self) -> str:
        if not self._app_id:
            resp = await self._api.call(
                "AppGetOrCreate",
                api_pb2.AppGetOrCreateRequest(
                    app_name=APP_NAME,
                    environment_name=self._api.environment,
                    object_creation_type=api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                ),
                api_pb2.AppGetOrCreateResponse,
                "app",
            )
            self._app_id = resp.app_id
        return self._app_id

    async def _image(self, template: str) -> str:
        if template not in self._images:
            resp = await self._api.call(
                "ImageGetOrCreate",
                api_pb2.ImageGetOrCreateRequest(
                    app_id=await self._app(),
                    image=api_pb2.Image(dockerfile_commands=[IMAGES[template]]),
                ),
                api_pb2.ImageGetOrCreateResponse,
                "image",
            )
            result = resp.result
            while result.status == Status.GENERIC_STATUS_UNSPECIFIED:  # still building
                join = api_pb2.ImageJoinStreamingRequest(image_id=resp.image_id, timeout=55)
                async for msg in self._api.stream(
                    "ImageJoinStreaming", join, api_pb2.ImageJoinStreamingResponse
                ):
                    if msg.result.status:
                        result = msg.result
                        break
            if result.status != Status.GENERIC_STATUS_SUCCESS:
                raise Unavailable(
                    f"modal: image build failed: {result.exception}",
                    reason="PROVIDER_ERROR",
                    provider=NAME,
                )
            self._images[template] = resp.image_id
        return self._images[template]

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
        if sandbox.spec.template not in IMAGES:
            raise NotFound(
                f"template {sandbox.spec.template!r} has no Modal image "
                f"(known: {', '.join(sorted(IMAGES))})",
                reason="TEMPLATE_NOT_FOUND",
                provider=NAME,
            )
        r = sandbox.spec.resources
        if r.pids_limit:
            raise Unsupported(NAME, "pids limit")
        res = api_pb2.Resources(
            memory_mb=r.memory_mb or 1024,
            milli_cpu=int((r.cpu_cores or 1.0) * 1000),
            ephemeral_disk_mb=r.disk_mb,
        )
        if r.gpu_enabled:
            res.gpu_config.gpu_type = r.gpu_type or "any"
            res.gpu_config.count = r.gpu_count or 1
        definition = api_pb2.Sandbox(
            entrypoint_args=["sleep", "infinity"],
            image_id=await self._image(sandbox.spec.template),
            resources=res,
            timeout_secs=max(1, sandbox.spec.timeout_ms // 1000)
            if not sandbox.spec.keep_alive
            else 86400,
            workdir="/",
            block_network=True,
            name=f"computesdk-{sandbox.id}",
        )
        definition.environment_variables.contents.update(sandbox.spec.env)
        resp = await self._api.call(
            "SandboxCreate",
            api_pb2.SandboxCreateRequest(
                app_id=await self._app(),
                definition=definition,
                environment_name=self._api.environment,
            ),
            api_pb2.SandboxCreateResponse,
            "create sandbox",
        )
        sandbox.provider_sandbox_id = resp.sandbox_id
        sandbox.resources = Resources(
            cpu_cores=res.milli_cpu / 1000,
            memory_mb=res.memory_mb,
            disk_mb=res.ephemeral_disk_mb,
            gpu_enabled=r.gpu_enabled,
        )
        async with destroyed_on_failure(self, sandbox):
            await self._connect(sandbox)
            await run_checked(
                self.run(sandbox, Command(args=["mkdir", "-p", WORKDIR], cwd="/")),
                Unavailable(
                    "modal: could not create /workspace", reason="PROVIDER_ERROR", provider=NAME
                ),
            )

    async def _connect(self, sandbox: Sandbox) -> None:
        """Waits for the sandbox's task, and keeps its command router's address."""
        task = await self._api.call(
            "SandboxGetTaskId",
            api_pb2.SandboxGetTaskIdRequest(
                sandbox_id=sandbox.provider_sandbox_id, wait_until_ready=True, timeout=55
            ),
            api_pb2.SandboxGetTaskIdResponse,
            "task id",
            timeout=60,
        )
        if task.task_result.status != Status.GENERIC_STATUS_UNSPECIFIED:
            raise Unavailable(
                f"modal: the sandbox ended at start: {task.task_result.exception}",
                reason="PROVIDER_ERROR",
                provider=NAME,
            )
        access = await self._api.call(
            "TaskGetCommandRouterAccess",
            api_pb2.TaskGetCommandRouterAccessRequest(task_id=task.task_id),
            api_pb2.TaskGetCommandRouterAccessResponse,
            "router",
        )
        sandbox.provider_data = {
            "task_id": task.task_id,
            "router_url": access.url,
            "jwt": access.jwt,
        }

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if sandbox.provider_sandbox_id:
            with contextlib.suppress(NotFound):
                await self._api.call(
                    "SandboxTerminate",
                    api_pb2.SandboxTerminateRequest(sandbox_id=sandbox.provider_sandbox_id),
                    api_pb2.SandboxTerminateResponse,
                    "terminate",
                )

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        try:
            resp = await self._api.call(
                "SandboxWait",
                api_pb2.SandboxWaitRequest(sandbox_id=sandbox.provider_sandbox_id, timeout=0),
                api_pb2.SandboxWaitResponse,
                "wait",
                timeout=10,
            )
        except NotFound:
            return Probe(alive=False)
        oom = resp.result.status == Status.GENERIC_STATUS_KERNEL_OOM_KILL
        return Probe(
            alive=resp.result.status == Status.GENERIC_STATUS_UNSPECIFIED,
            oom_kills=int(oom),
        )

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        return commands.ModalRun(self._api, sandbox, command)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        exec_id = commands.new_exec_id()
        await commands.start(self._api, sandbox, command, exec_id)
        return ProcessInfo(
            process_id=exec_id,
            pid=0,
            args=command.args,
            tag=tag,
            running=True,
            exit=None,
            start_unix_ms=int(time.time() * 1000),
        )

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        yield Started(process_id, 0)
        if output:
            async for ev in commands.read(
                self._api, sandbox, process_id, stdout_offset, stderr_offset
            ):
                yield ev
        yield await commands.wait(self._api, sandbox, process_id, 0.0, False)

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        raise Unsupported(
            NAME, "stdin of a background process", "the router needs the writer's running offset"
        )

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        raise Unsupported(NAME, "signals", commands.NO_SIGNALS)
