"""The modal provider, on Modal's gRPC API.

Sandboxes are made with ModalClient.SandboxCreate in an app of the daemon's
own ("computesdk"), from an image Modal builds from a Dockerfile line per
template. Commands go to the sandbox's task command router (the address and
a JWT come from TaskGetCommandRouterAccess): TaskExecStart, then
TaskExecStdioRead from a byte offset per stream, TaskExecStdinWrite with an
offset, and TaskExecWait. Reading by offset is what lets a broken stream
resume, so background processes and re-attach work here as on local.

The messages come from the `modal` package's generated protos (modal_proto);
the calls are made with grpcio, so the daemon keeps one gRPC stack. Install
with `pip install computesdk[modal]`.

Configuration: MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (required),
MODAL_SERVER_URL, MODAL_ENVIRONMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)
from computesdkd.domain.model import (
    Command,
    ExitStatus,
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
from computesdkd.providers.local.templates import process_env
from computesdkd.support import logs

try:
    from modal_proto import api_pb2
    from modal_proto import task_command_router_pb2 as router_pb2

    Status = api_pb2.GenericResult
    HAVE_MODAL = True
except ImportError:  # the optional extra is not installed
    HAVE_MODAL = False

log = logs.get(__name__)

NAME = "modal"
APP_NAME = "computesdk"
IMAGES = {
    "base": "FROM python:3.11-slim",
    "python": "FROM python:3.11-slim",
    "python:3.11": "FROM python:3.11-slim",
    "node": "FROM node:18-slim",
    "nodejs18": "FROM node:18-slim",
}
API = "/modal.client.ModalClient/"
ROUTER = "/modal.task_command_router.TaskCommandRouter/"
CODES = {
    grpc.StatusCode.NOT_FOUND: (NotFound, "NOT_FOUND"),
    grpc.StatusCode.INVALID_ARGUMENT: (InvalidArgument, "PROVIDER_REJECTED"),
    grpc.StatusCode.FAILED_PRECONDITION: (FailedPrecondition, "PROVIDER_REJECTED"),
    grpc.StatusCode.UNAUTHENTICATED: (FailedPrecondition, "PROVIDER_AUTH_FAILED"),
    grpc.StatusCode.PERMISSION_DENIED: (FailedPrecondition, "PROVIDER_AUTH_FAILED"),
    grpc.StatusCode.UNAVAILABLE: (Unavailable, "PROVIDER_UNAVAILABLE"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (Unavailable, "PROVIDER_UNAVAILABLE"),
}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _error(what: str, err: grpc.aio.AioRpcError, not_found: str = "NOT_FOUND") -> ComputeError:
    cls, reason = CODES.get(err.code(), (Internal, "PROVIDER_ERROR"))
    if cls is NotFound:
        reason = not_found
    return cls(
        f"modal: {what}: {err.code().name} {err.details() or ''}".strip(),
        reason=reason,
        provider=NAME,
    )


def _channel(url: str) -> grpc.aio.Channel:
    o = urllib.parse.urlparse(url)
    port = o.port or (443 if o.scheme == "https" else 80)
    target = f"{o.hostname}:{port}"
    if o.scheme == "https":
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
    return grpc.aio.insecure_channel(target)  # Modal accepts plain http for localhost


@base.register(NAME)
class ModalProvider(Provider):
    name = NAME
    probe_interval_s = 30.0
    capabilities = frozenset(
        {
            base.EXEC,
            base.EXEC_STDIN,
            base.EXEC_RESUME,
            base.BACKGROUND,
            base.FILESYSTEM,
            base.EVENTS,
            base.USAGE,
            base.RESOURCE_LIMITS,
            base.NETWORK_ISOLATION,
        }
    )

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._token_id = cfg.env.get("MODAL_TOKEN_ID", "")
        self._token_secret = cfg.env.get("MODAL_TOKEN_SECRET", "")
        self._server = cfg.env.get("MODAL_SERVER_URL", "https://api.modal.com")
        self._environment = cfg.env.get("MODAL_ENVIRONMENT", "")
        self._api: grpc.aio.Channel | None = None
        self._routers: dict[str, grpc.aio.Channel] = {}
        self._app_id = ""
        self._images: dict[str, str] = {}

    def availability(self) -> str:
        if not HAVE_MODAL:
            return "the modal extra is not installed (pip install computesdk[modal])"
        if not (self._token_id and self._token_secret):
            return "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set"
        return ""

    def templates(self) -> list[str]:
        return sorted(IMAGES)

    async def close(self) -> None:
        for ch in [self._api, *self._routers.values()]:
            if ch is not None:
                await ch.close(None)

    # -------------------------------------------------------------- transport

    def _metadata(self) -> list[tuple[str, str]]:
        return [
            ("x-modal-token-id", self._token_id),
            ("x-modal-token-secret", self._token_secret),
            ("x-modal-client-type", "1"),
            ("x-modal-client-version", "1.6.4"),
        ]

    async def _call(
        self,
        method: str,
        request: Any,
        response_type: Any,
        what: str,
        *,
        not_found: str = "NOT_FOUND",
        timeout: float = 60.0,
        retries: int = 3,
    ) -> Any:
        if self._api is None:
            self._api = _channel(self._server)
        call = self._api.unary_unary(
            API + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        for attempt in range(retries + 1):
            try:
                return await call(request, metadata=self._metadata(), timeout=timeout)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or attempt == retries:
                    raise _error(what, err, not_found) from None
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def _router(self, sandbox: Sandbox) -> tuple[grpc.aio.Channel, list[tuple[str, str]]]:
        url = sandbox.provider_data["router_url"]
        if url not in self._routers:
            self._routers[url] = _channel(url)
        return self._routers[url], [("authorization", f"Bearer {sandbox.provider_data['jwt']}")]

    async def _router_call(
        self, sandbox: Sandbox, method: str, request: Any, response_type: Any, what: str
    ) -> Any:
        ch, md = self._router(sandbox)
        call = ch.unary_unary(
            ROUTER + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return await call(request, metadata=md)
        except grpc.aio.AioRpcError as err:
            raise _error(what, err, "PROCESS_NOT_FOUND") from None

    # -------------------------------------------------------------- lifecycle

    async def _app(self) -> str:
        if not self._app_id:
            resp = await self._call(
                "AppGetOrCreate",
                api_pb2.AppGetOrCreateRequest(
                    app_name=APP_NAME,
                    environment_name=self._environment,
                    object_creation_type=api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                ),
                api_pb2.AppGetOrCreateResponse,
                "app",
            )
            self._app_id = resp.app_id
        return self._app_id

    async def _image(self, template: str) -> str:
        if template not in self._images:
            resp = await self._call(
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
                ch = self._api
                assert ch is not None
                stream = ch.unary_stream(
                    API + "ImageJoinStreaming",
                    request_serializer=api_pb2.ImageJoinStreamingRequest.SerializeToString,
                    response_deserializer=api_pb2.ImageJoinStreamingResponse.FromString,
                )
                async for msg in stream(
                    api_pb2.ImageJoinStreamingRequest(image_id=resp.image_id, timeout=55),
                    metadata=self._metadata(),
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
        why = self.availability()
        if why:
            raise Unavailable(
                f"provider 'modal' cannot run here: {why}",
                reason="PROVIDER_UNAVAILABLE",
                provider=NAME,
            )
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
        resp = await self._call(
            "SandboxCreate",
            api_pb2.SandboxCreateRequest(
                app_id=await self._app(), definition=definition, environment_name=self._environment
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
        try:
            task = await self._call(
                "SandboxGetTaskId",
                api_pb2.SandboxGetTaskIdRequest(
                    sandbox_id=resp.sandbox_id, wait_until_ready=True, timeout=55
                ),
                api_pb2.SandboxGetTaskIdResponse,
                "task id",
                timeout=60,
            )
            if task.task_result.status not in (Status.GENERIC_STATUS_UNSPECIFIED,):
                raise Unavailable(
                    f"modal: the sandbox ended at start: {task.task_result.exception}",
                    reason="PROVIDER_ERROR",
                    provider=NAME,
                )
            access = await self._call(
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
            run = self.run(sandbox, Command(args=["mkdir", "-p", WORKDIR], cwd="/"))
            try:
                async for ev in run.events():
                    if isinstance(ev, ExitStatus) and ev.exit_code != 0:
                        raise Unavailable(
                            "modal: could not create /workspace",
                            reason="PROVIDER_ERROR",
                            provider=NAME,
                        )
            finally:
                await run.aclose()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(sandbox)
            raise

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if sandbox.provider_sandbox_id:
            with contextlib.suppress(NotFound):
                await self._call(
                    "SandboxTerminate",
                    api_pb2.SandboxTerminateRequest(sandbox_id=sandbox.provider_sandbox_id),
                    api_pb2.SandboxTerminateResponse,
                    "terminate",
                )

    async def adopt(self, sandbox: Sandbox) -> bool:
        return (await self.probe(sandbox)).alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        try:
            resp = await self._call(
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
        return _ModalRun(self, sandbox, command, tag)

    async def _start(self, sandbox: Sandbox, command: Command, exec_id: str) -> None:
        req = router_pb2.TaskExecStartRequest(
            task_id=sandbox.provider_data["task_id"],
            exec_id=exec_id,
            command_args=command.args,
            workdir=command.cwd,
            stdout_config=router_pb2.TASK_EXEC_STDOUT_CONFIG_PIPE,
            stderr_config=router_pb2.TASK_EXEC_STDERR_CONFIG_PIPE,
            timeout_secs=(command.timeout_ms + 999) // 1000,
        )
        req.env.update(process_env(sandbox, command))
        await self._router_call(
            sandbox, "TaskExecStart", req, router_pb2.TaskExecStartResponse, "exec start"
        )

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        exec_id = "ex-" + uuid.uuid4().hex
        await self._start(sandbox, command, exec_id)
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
            async for ev in self._read(sandbox, process_id, stdout_offset, stderr_offset):
                yield ev
        yield await self._wait(sandbox, process_id, 0.0, False)

    async def _read(
        self, sandbox: Sandbox, exec_id: str, stdout_offset: int, stderr_offset: int
    ) -> AsyncIterator[Output]:
        """Both streams from their offsets, as the chunks arrive; ends at EOF of both."""
        ch, md = self._router(sandbox)
        read = ch.unary_stream(
            ROUTER + "TaskExecStdioRead",
            request_serializer=router_pb2.TaskExecStdioReadRequest.SerializeToString,
            response_deserializer=router_pb2.TaskExecStdioReadResponse.FromString,
        )
        queue: asyncio.Queue[Output | BaseException | None] = asyncio.Queue()

        async def pump(fd: Any, name: str, offset: int) -> None:
            try:
                async for msg in read(
                    router_pb2.TaskExecStdioReadRequest(
                        task_id=sandbox.provider_data["task_id"],
                        exec_id=exec_id,
                        offset=offset,
                        file_descriptor=fd,
                    ),
                    metadata=md,
                ):
                    await queue.put(Output(name, msg.data, offset))  # type: ignore[arg-type]
                    offset += len(msg.data)
                await queue.put(None)
            except grpc.aio.AioRpcError as err:
                await queue.put(_error("read output", err, "PROCESS_NOT_FOUND"))

        tasks = [
            asyncio.create_task(
                pump(router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT, "stdout", stdout_offset)
            ),
            asyncio.create_task(
                pump(router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR, "stderr", stderr_offset)
            ),
        ]
        try:
            open_streams = 2
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    async def _wait(
        self, sandbox: Sandbox, exec_id: str, started: float, timeout_set: bool
    ) -> ExitStatus:
        resp = await self._router_call(
            sandbox,
            "TaskExecWait",
            router_pb2.TaskExecWaitRequest(
                task_id=sandbox.provider_data["task_id"], exec_id=exec_id
            ),
            router_pb2.TaskExecWaitResponse,
            "exec wait",
        )
        ms = int((time.monotonic() - started) * 1000) if started else 0
        if resp.WhichOneof("exit_status") == "signal":
            return ExitStatus(-1, resp.signal, ms, timeout_set and resp.signal == 9)
        return ExitStatus(resp.code, 0, ms)

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        raise Unsupported(
            NAME, "stdin of a background process", "the router needs the writer's running offset"
        )

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        raise Unsupported(NAME, "signals", "the task command router has no signal call")


class _ModalRun(ProcessRun):
    def __init__(self, p: ModalProvider, sandbox: Sandbox, command: Command, tag: str) -> None:
        self._p = p
        self._sandbox = sandbox
        self._command = command
        self._exec_id = "ex-" + uuid.uuid4().hex
        self._stdin_offset = 0

    async def events(self) -> AsyncIterator[ProcessEvent]:
        started = time.monotonic()
        await self._p._start(self._sandbox, self._command, self._exec_id)
        yield Started(self._exec_id, 0)
        async for ev in self._p._read(self._sandbox, self._exec_id, 0, 0):
            yield ev
        yield await self._p._wait(
            self._sandbox, self._exec_id, started, bool(self._command.timeout_ms)
        )

    async def _stdin(self, data: bytes, eof: bool) -> None:
        await self._p._router_call(
            self._sandbox,
            "TaskExecStdinWrite",
            router_pb2.TaskExecStdinWriteRequest(
                task_id=self._sandbox.provider_data["task_id"],
                exec_id=self._exec_id,
                offset=self._stdin_offset,
                data=data,
                eof=eof,
            ),
            router_pb2.TaskExecStdinWriteResponse,
            "stdin",
        )
        self._stdin_offset += len(data)

    async def send_stdin(self, data: bytes) -> None:
        await self._stdin(data, False)

    async def close_stdin(self) -> None:
        await self._stdin(b"", True)

    async def send_signal(self, signal: int) -> None:
        raise Unsupported(NAME, "signals", "the task command router has no signal call")

    async def aclose(self) -> None:
        pass  # Modal has no exec kill; the command's own timeout_secs bounds it
