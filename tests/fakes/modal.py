"""A wire-level fake of Modal's gRPC API: the ModalClient calls a sandbox needs
and the task command router that runs commands, with Modal's own generated
messages (modal_proto). Modelled on the mock servicer in modal-labs/modal-client
(py/test/conftest.py). Each fake sandbox is a real local sandbox of the daemon
under test."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as router_pb2

from computesdk import Client, ComputeSDKError, Process, Resources, Sandbox

TOKEN_ID = "ak-fake"
TOKEN_SECRET = "as-fake"
IMAGES = {"FROM python:3.11-slim": "python", "FROM node:18-slim": "node"}
Status = api_pb2.GenericResult
FAR = 1 << 62  # an offset past anything: "not this stream"


class _Box:
    def __init__(self, local: Sandbox) -> None:
        self.local = local
        self.task_id = "ta-" + secrets.token_hex(8)
        self.terminated = False
        self.execs: dict[str, tuple[Process, list[int]]] = {}  # exec_id -> (proc, [stdin offset])


class FakeModal:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, _Box] = {}
        self.images: dict[str, str] = {}
        self.jwt = secrets.token_hex(16)
        self.router_port = 0
        self.requests: list[str] = []
        self.idempotency_keys: list[str] = []
        # When set, this many more ModalClient calls are turned away as Modal's
        # server throttles: RESOURCE_EXHAUSTED with an RPCRetryPolicy in the details.
        self.throttle = 0
        self.throttle_retry_after_s = 0.0
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    # ------------------------------------------------------------ plumbing

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Callable[..., Any], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        api = {
            "AppGetOrCreate": unary(
                self.app_get_or_create,
                api_pb2.AppGetOrCreateRequest,
                api_pb2.AppGetOrCreateResponse,
            ),
            "ImageGetOrCreate": unary(
                self.image_get_or_create,
                api_pb2.ImageGetOrCreateRequest,
                api_pb2.ImageGetOrCreateResponse,
            ),
            "SandboxCreate": unary(
                self.sandbox_create, api_pb2.SandboxCreateRequest, api_pb2.SandboxCreateResponse
            ),
            "SandboxGetTaskId": unary(
                self.sandbox_get_task_id,
                api_pb2.SandboxGetTaskIdRequest,
                api_pb2.SandboxGetTaskIdResponse,
            ),
            "TaskGetCommandRouterAccess": unary(
                self.router_access,
                api_pb2.TaskGetCommandRouterAccessRequest,
                api_pb2.TaskGetCommandRouterAccessResponse,
            ),
            "SandboxTerminate": unary(
                self.sandbox_terminate,
                api_pb2.SandboxTerminateRequest,
                api_pb2.SandboxTerminateResponse,
            ),
            "SandboxWait": unary(
                self.sandbox_wait, api_pb2.SandboxWaitRequest, api_pb2.SandboxWaitResponse
            ),
        }
        router = {
            "TaskExecStart": unary(
                self.exec_start, router_pb2.TaskExecStartRequest, router_pb2.TaskExecStartResponse
            ),
            "TaskExecStdinWrite": unary(
                self.exec_stdin,
                router_pb2.TaskExecStdinWriteRequest,
                router_pb2.TaskExecStdinWriteResponse,
            ),
            "TaskExecWait": unary(
                self.exec_wait, router_pb2.TaskExecWaitRequest, router_pb2.TaskExecWaitResponse
            ),
            "TaskExecStdioRead": grpc.unary_stream_rpc_method_handler(
                self.exec_read,
                request_deserializer=router_pb2.TaskExecStdioReadRequest.FromString,
                response_serializer=router_pb2.TaskExecStdioReadResponse.SerializeToString,
            ),
        }
        return [
            grpc.method_handlers_generic_handler("modal.client.ModalClient", api),
            grpc.method_handlers_generic_handler(
                "modal.task_command_router.TaskCommandRouter", router
            ),
        ]

    async def _auth(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        self.requests.append(method)
        md = dict(context.invocation_metadata() or ())
        self.idempotency_keys.append(str(md.get("x-idempotency-key", "")))
        if md.get("x-modal-token-id") != TOKEN_ID or md.get("x-modal-token-secret") != TOKEN_SECRET:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Invalid token")
        if self.throttle:
            self.throttle -= 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "rate limit exceeded",
                trailing_metadata=(("grpc-status-details-bin", self._retry_policy()),),
            )

    def _retry_policy(self) -> bytes:
        """The status details Modal's server sends, packed as its SDK's codec expects."""
        status = api_pb2.RPCStatus(
            code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="rate limit exceeded"
        )
        status.details.add().Pack(
            api_pb2.RPCRetryPolicy(retry_after_secs=self.throttle_retry_after_s),
            type_url_prefix="type.modal.com/",
        )
        return status.SerializeToString()

    async def _router_auth(
        self, context: grpc.aio.ServicerContext[Any, Any], task_id: str, method: str
    ) -> _Box:
        self.requests.append(method)
        md = dict(context.invocation_metadata() or ())
        if md.get("authorization") != f"Bearer {self.jwt}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid jwt")
        box = next(
            (b for b in self.boxes.values() if b.task_id == task_id and not b.terminated), None
        )
        if box is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} not found")
        assert box is not None
        return box

    # ------------------------------------------------------------ ModalClient

    async def app_get_or_create(self, req: Any, context: Any) -> Any:
        await self._auth(context, "AppGetOrCreate")
        return api_pb2.AppGetOrCreateResponse(app_id="ap-" + req.app_name)

    async def image_get_or_create(self, req: Any, context: Any) -> Any:
        await self._auth(context, "ImageGetOrCreate")
        line = "\n".join(req.image.dockerfile_commands)
        if line not in IMAGES:
            return api_pb2.ImageGetOrCreateResponse(
                image_id="im-failed",
                result=api_pb2.GenericResult(
                    status=Status.GENERIC_STATUS_FAILURE, exception=f"cannot build {line!r} offline"
                ),
            )
        image_id = self.images.setdefault(line, "im-" + secrets.token_hex(8))
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id, result=api_pb2.GenericResult(status=Status.GENERIC_STATUS_SUCCESS)
        )

    async def sandbox_create(self, req: Any, context: Any) -> Any:
        await self._auth(context, "SandboxCreate")
        d = req.definition
        template = next((IMAGES[k] for k, v in self.images.items() if v == d.image_id), None)
        if template is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"image {d.image_id} not found")
        if d.resources.HasField("gpu_config"):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "no GPU capacity for this workspace"
            )
        local = await (await self.client()).create(
            "local",
            template=template,
            keep_alive=True,
            metadata={"fake": "modal"},
            env=dict(d.environment_variables.contents),
            resources=Resources(
                memory_mb=d.resources.memory_mb,
                cpu_cores=d.resources.milli_cpu / 1000,
                disk_mb=d.resources.ephemeral_disk_mb,
            ),
        )
        sandbox_id = "sb-" + secrets.token_hex(8)
        self.boxes[sandbox_id] = _Box(local)
        return api_pb2.SandboxCreateResponse(sandbox_id=sandbox_id)

    def _box(self, sandbox_id: str) -> _Box | None:
        return self.boxes.get(sandbox_id)

    async def sandbox_get_task_id(self, req: Any, context: Any) -> Any:
        await self._auth(context, "SandboxGetTaskId")
        box = self._box(req.sandbox_id)
        if box is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "sandbox not found")
        assert box is not None
        return api_pb2.SandboxGetTaskIdResponse(task_id=box.task_id)

    async def router_access(self, req: Any, context: Any) -> Any:
        await self._auth(context, "TaskGetCommandRouterAccess")
        return api_pb2.TaskGetCommandRouterAccessResponse(
            jwt=self.jwt, url=f"http://127.0.0.1:{self.router_port}"
        )

    async def sandbox_terminate(self, req: Any, context: Any) -> Any:
        await self._auth(context, "SandboxTerminate")
        box = self._box(req.sandbox_id)
        if box is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "sandbox not found")
        assert box is not None
        if not box.terminated:
            box.terminated = True
            await box.local.destroy()
        return api_pb2.SandboxTerminateResponse()

    async def sandbox_wait(self, req: Any, context: Any) -> Any:
        await self._auth(context, "SandboxWait")
        box = self._box(req.sandbox_id)
        if box is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "sandbox not found")
        assert box is not None
        if box.terminated:
            return api_pb2.SandboxWaitResponse(
                result=api_pb2.GenericResult(status=Status.GENERIC_STATUS_TERMINATED)
            )
        return api_pb2.SandboxWaitResponse()

    # ------------------------------------------------------------ command router

    async def exec_start(self, req: Any, context: Any) -> Any:
        box = await self._router_auth(context, req.task_id, "TaskExecStart")
        try:
            proc = await box.local.start_process(
                list(req.command_args),
                cwd=req.workdir or "/",
                env=dict(req.env),
                stdin=True,
                timeout_ms=req.timeout_secs * 1000,
            )
        except ComputeSDKError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        box.execs[req.exec_id] = (proc, [0])
        return router_pb2.TaskExecStartResponse()

    def _exec(self, box: _Box, exec_id: str) -> tuple[Process, list[int]] | None:
        return box.execs.get(exec_id)

    async def exec_stdin(self, req: Any, context: Any) -> Any:
        box = await self._router_auth(context, req.task_id, "TaskExecStdinWrite")
        entry = self._exec(box, req.exec_id)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "exec not found")
        assert entry is not None
        proc, written = entry
        if req.offset != written[0]:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stdin offset {req.offset}, expected {written[0]}",
            )
        await proc.write_stdin(req.data, close=req.eof)
        written[0] += len(req.data)
        return router_pb2.TaskExecStdinWriteResponse()

    async def exec_read(self, req: Any, context: Any) -> AsyncIterator[Any]:
        box = await self._router_auth(context, req.task_id, "TaskExecStdioRead")
        entry = self._exec(box, req.exec_id)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "exec not found")
        assert entry is not None
        stdout = req.file_descriptor == router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT
        async for chunk in box.local.process(entry[0].id).attach(
            stdout_offset=req.offset if stdout else FAR, stderr_offset=FAR if stdout else req.offset
        ):
            yield router_pb2.TaskExecStdioReadResponse(data=chunk.data)

    async def exec_wait(self, req: Any, context: Any) -> Any:
        box = await self._router_auth(context, req.task_id, "TaskExecWait")
        entry = self._exec(box, req.exec_id)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "exec not found")
        assert entry is not None
        proc = box.local.process(entry[0].id)
        try:
            async for _ in proc.attach(stdout_offset=FAR, stderr_offset=FAR):
                pass
        except ComputeSDKError as exc:  # the sandbox went away under the wait
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        assert proc.exited is not None
        if proc.exited.signal:
            return router_pb2.TaskExecWaitResponse(signal=proc.exited.signal)
        return router_pb2.TaskExecWaitResponse(code=proc.exited.exit_code)

    async def close(self) -> None:
        for box in self.boxes.values():
            if not box.terminated:
                with contextlib.suppress(ComputeSDKError):
                    await box.local.destroy()
        if self._client is not None:
            await self._client.close()


class GrpcServerThread:
    """Serves the fake's API and router on two loopback ports, from a thread."""

    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake
        self.ports: list[int] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        servers = []
        for _ in range(2):  # ModalClient, then the task command router
            server = grpc.aio.server()
            server.add_generic_rpc_handlers(self.fake.handlers())
            self.ports.append(server.add_insecure_port("127.0.0.1:0"))
            await server.start()
            servers.append(server)
        self.fake.router_port = self.ports[1]
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            await server.stop(None)
        await self.fake.close()

    def start(self) -> GrpcServerThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
