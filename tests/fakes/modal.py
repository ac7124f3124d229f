"""A wire-level fake of Modal's gRPC API, as the official `modal` SDK (1.6.4)
speaks it: environments, apps, images, sandboxes V1 and V2 (create, task id,
command router access, tags, list, wait, terminate, tunnels for open ports,
filesystem snapshots as images, image delete), the short-lived auth token the
V2 calls carry, and the task command router that runs commands and snapshots.

Every method is bound to the request and response types that the SDK's own
service descriptor (modal_proto) names, and every response is checked against
them and recorded in `responses`, so a contract test can validate each one.
Each fake sandbox is a real local sandbox of the daemon under test."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import string
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as router_pb2

from computesdk import (
    Client,
    ComputeSDKError,
    FailedPreconditionError,
    Process,
    Resources,
    Sandbox,
)

TOKEN_ID = "ak-fake"
TOKEN_SECRET = "as-fake"
IMAGES = {"FROM python:3.11-slim": "python", "FROM node:18-slim": "node"}
BUILDER_VERSION = "2025.06"
MAX_TIMEOUT_SECS = 24 * 3600  # Modal: a sandbox lives at most 24 hours
Status = api_pb2.GenericResult
FAR = 1 << 62  # an offset past anything: "not this stream"
API_SERVICE = api_pb2.DESCRIPTOR.services_by_name["ModalClient"]
ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["TaskCommandRouter"]
V1_ALPHABET = string.digits + string.ascii_letters
# The V2 calls carry the short-lived token from AuthTokenGet, as the SDK sends it.
V2_CALLS = {"SandboxCreateV2", "SandboxGetCommandRouterAccess"}


def mint_jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{secrets.token_urlsafe(16)}"


class Gate:
    """Holds the calls of one method until released: a test sees the call in
    flight (entered) and decides when Modal answers it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


class _Box:
    def __init__(self, local: Sandbox, v2: bool, app_id: str, tags: dict[str, str]) -> None:
        self.local = local
        self.v2 = v2
        self.app_id = app_id
        self.tags = tags
        if v2:
            self.id = "sb-" + secrets.token_hex(12)  # not V1's shape: the SDK routes it to V2
            self.task_id = "ta-" + secrets.token_hex(8) + "V"
        else:
            self.id = "sb-" + "".join(secrets.choice(V1_ALPHABET) for _ in range(22))
            self.task_id = "ta-" + secrets.token_hex(8)
        self.created_at = time.time()
        self.name = ""
        self.token = secrets.token_urlsafe(24) if v2 else ""  # sent back on calls on it
        self.polls = 0  # SandboxGetTaskId calls answered so far
        self.terminated = False
        self.execs: dict[str, tuple[Process, list[int]]] = {}  # exec_id -> (proc, [stdin offset])
        self.tunnels: list[Any] = []  # TunnelData, one per open port


def _tunnel(spec: Any, host: str) -> Any:
    """A tunnel as Modal gives one: TLS on 443 at a host of its own; an unencrypted
    port also gets a raw TCP endpoint."""
    t = api_pb2.TunnelData(host=host, port=443, container_port=spec.port)
    if spec.unencrypted:
        t.unencrypted_host, t.unencrypted_port = "tcp-" + host, 20000 + spec.port % 10000
    return t


class FakeModal:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, _Box] = {}
        self.images: dict[str, str] = {}
        self.router_port = 0
        self.requests: list[str] = []
        self.last: dict[str, Any] = {}  # method -> its last request
        self.metadata: dict[str, dict[str, Any]] = {}  # method -> its last call's metadata
        self.responses: list[tuple[str, Any]] = []  # (method, response message)
        self.idempotency_keys: list[str] = []
        self.auth_tokens: dict[str, float] = {}  # AuthTokenGet's tokens -> exp
        self.jwts: dict[str, tuple[str, float]] = {}  # router JWT -> (task id, exp)
        self.jwt_ttl_s = 3600.0
        self.clock_offset_s = 0.0
        # A sandbox is scheduled after this many SandboxGetTaskId calls answered "not yet".
        self.schedule_after = 1
        # When set, this many more ModalClient calls are turned away as Modal's
        # server throttles: RESOURCE_EXHAUSTED with an RPCRetryPolicy in the details.
        self.throttle = 0
        self.throttle_retry_after_s = 0.0
        # Filesystem snapshots: image id -> the local saved state holding the files.
        self.snapshots: dict[str, str] = {}
        # When set, every tunnel's host is this (a test of what the adapter accepts).
        self.tunnel_host: str | None = None
        # Test knobs, by ModalClient method: a Gate holding its calls, or a status
        # its next call fails with (Modal's server can fail any call).
        self.gates: dict[str, Gate] = {}
        self.fail_next: dict[str, grpc.StatusCode] = {}
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    def now(self) -> float:
        """The fake's clock, which a test moves on with advance() instead of waiting."""
        return time.time() + self.clock_offset_s

    def advance(self, seconds: float) -> None:
        self.clock_offset_s += seconds

    # ------------------------------------------------------------ plumbing

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        api = {
            n: self._bind(API_SERVICE, n, getattr(self, n))
            for n in API_SERVICE.methods_by_name
            if hasattr(self, n)
        }
        router = {
            n: self._bind(ROUTER_SERVICE, n, getattr(self, n))
            for n in ROUTER_SERVICE.methods_by_name
            if hasattr(self, n)
        }
        return [
            grpc.method_handlers_generic_handler(API_SERVICE.full_name, api),
            grpc.method_handlers_generic_handler(ROUTER_SERVICE.full_name, router),
        ]

    def _bind(self, service: Any, name: str, fn: Callable[..., Any]) -> grpc.RpcMethodHandler:
        """fn as the method the SDK's descriptor defines, with its own types."""
        method = service.methods_by_name[name]
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)

        def check(resp: Any) -> Any:
            assert resp.DESCRIPTOR is method.output_type, (name, resp.DESCRIPTOR.full_name)
            self.responses.append((name, resp))
            return resp

        kw = {"request_deserializer": req_cls.FromString}
        kw["response_serializer"] = resp_cls.SerializeToString
        if method.server_streaming:

            async def stream(req: Any, context: Any) -> AsyncIterator[Any]:
                await self._enter(service, name, req, context)
                async for msg in fn(req, context):
                    yield check(msg)

            return grpc.unary_stream_rpc_method_handler(stream, **kw)

        async def unary(req: Any, context: Any) -> Any:
            await self._enter(service, name, req, context)
            return check(await fn(req, context))

        return grpc.unary_unary_rpc_method_handler(unary, **kw)

    async def _enter(self, service: Any, name: str, req: Any, context: Any) -> None:
        self.requests.append(name)
        self.last[name] = req
        md = dict(context.invocation_metadata() or ())
        self.metadata[name] = md
        if service is ROUTER_SERVICE:
            token = str(md.get("authorization", "")).removeprefix("Bearer ")
            task, exp = self.jwts.get(token, ("", 0.0))
            if task != getattr(req, "task_id", None) or exp <= self.now():
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or expired jwt")
            return
        self.idempotency_keys.append(str(md.get("x-idempotency-key", "")))
        if md.get("x-modal-token-id") != TOKEN_ID or md.get("x-modal-token-secret") != TOKEN_SECRET:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Invalid token")
        if name in V2_CALLS or name.endswith("V2"):
            exp = self.auth_tokens.get(str(md.get("x-modal-auth-token", "")), 0.0)
            if exp <= self.now():
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "missing or expired auth token"
                )
        if self.throttle:
            self.throttle -= 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "rate limit exceeded",
                trailing_metadata=(("grpc-status-details-bin", self._retry_policy()),),
            )
        if (code := self.fail_next.pop(name, None)) is not None:
            await context.abort(code, f"{name} failed")
        if (gate := self.gates.get(name)) is not None:
            gate.entered.set()
            await asyncio.to_thread(gate.release.wait, 60)

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

    async def _box(self, context: Any, sandbox_id: str, v2: bool | None) -> _Box:
        box = self.boxes.get(sandbox_id)
        if box is None or (v2 is not None and box.v2 != v2):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        assert box is not None
        return box

    # ------------------------------------------------------------ ModalClient

    async def ClientHello(self, req: Any, context: Any) -> Any:
        return api_pb2.ClientHelloResponse()

    async def AuthTokenGet(self, req: Any, context: Any) -> Any:
        exp = int(self.now()) + 1200
        token = mint_jwt({"exp": exp, "sub": TOKEN_ID})
        self.auth_tokens[token] = exp
        return api_pb2.AuthTokenGetResponse(token=token)

    async def EnvironmentGetOrCreate(self, req: Any, context: Any) -> Any:
        name = req.deployment_name or "main"
        settings = api_pb2.EnvironmentSettings(image_builder_version=BUILDER_VERSION)
        return api_pb2.EnvironmentGetOrCreateResponse(
            environment_id="en-" + name,
            metadata=api_pb2.EnvironmentMetadata(name=name, settings=settings),
        )

    async def AppGetOrCreate(self, req: Any, context: Any) -> Any:
        return api_pb2.AppGetOrCreateResponse(app_id="ap-" + req.app_name)

    async def ImageGetOrCreate(self, req: Any, context: Any) -> Any:
        line = "\n".join(req.image.dockerfile_commands)
        if line not in IMAGES:
            failed = Status(
                status=Status.GENERIC_STATUS_FAILURE, exception=f"cannot build {line!r}"
            )
            return api_pb2.ImageGetOrCreateResponse(image_id="im-failed", result=failed)
        image_id = self.images.setdefault(line, "im-" + secrets.token_hex(8))
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id, result=Status(status=Status.GENERIC_STATUS_SUCCESS)
        )

    async def _create(self, req: Any, context: Any, v2: bool) -> _Box:
        d = req.definition
        template = next((IMAGES[k] for k, v in self.images.items() if v == d.image_id), None)
        state = self.snapshots.get(d.image_id, "")
        if template is None and not state:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Image {d.image_id} not found")
        ports = list(d.open_ports.ports)
        blocked = d.network_access.network_access_type == d.network_access.BLOCKED
        if ports and (blocked or d.block_network):  # the SDK refuses it before the call; so do we
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Cannot specify open ports when `block_network` is enabled",
            )
        if any(not 0 < p.port < 65536 for p in ports):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "port must be in 1-65535")
        gpu = d.resources.gpu_config  # the SDK always sends one; count 0 asks for none
        if gpu.count and v2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "V2 Sandboxes have no GPUs")
        if gpu.count:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no GPU capacity available")
        if d.resources.ephemeral_disk_mb:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Sandboxes do not support ephemeral disk requests"
            )
        if not 0 < d.timeout_secs <= MAX_TIMEOUT_SECS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "timeout must be between 1 second and 24 hours"
            )
        if d.name and any(b.name == d.name and b.app_id == req.app_id for b in self.live()):
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Sandbox {d.name} exists")
        env: dict[str, str] = {}
        for source in req.secret_sources if v2 else ():
            env.update(source.env.contents)
        local = await (await self.client()).create(
            "local",
            template="" if state else template or "",
            restore_from=state,  # an image of a snapshot: the files as they were
            keep_alive=True,
            metadata={"fake": "modal"},
            env=env,
            resources=Resources(
                memory_mb=d.resources.memory_mb_max or d.resources.memory_mb,
                cpu_cores=(d.resources.milli_cpu_max or d.resources.milli_cpu) / 1000,
            ),
        )
        tags = {t.tag_name: t.tag_value for t in req.tags}
        box = _Box(local, v2, req.app_id, tags)
        box.name = d.name
        box.tunnels = [
            _tunnel(p, self.tunnel_host or f"{secrets.token_hex(7)}.r5.modal-fake.test")
            for p in ports
        ]
        self.boxes[box.id] = box
        return box

    def live(self) -> list[_Box]:
        return [b for b in self.boxes.values() if not b.terminated]

    async def SandboxCreate(self, req: Any, context: Any) -> Any:
        box = await self._create(req, context, v2=False)
        return api_pb2.SandboxCreateResponse(sandbox_id=box.id)

    async def SandboxCreateV2(self, req: Any, context: Any) -> Any:
        box = await self._create(req, context, v2=True)
        return api_pb2.SandboxCreateV2Response(
            sandbox_id=box.id,
            metadata=api_pb2.SandboxHandleMetadata(app_id=box.app_id),
            sandbox_token=box.token,
            # Unencrypted endpoints are not known at create (the SDK says so).
            tunnels=[t for t in box.tunnels if not t.HasField("unencrypted_host")],
        )

    async def _task_id(self, req: Any, context: Any, v2: bool) -> Any:
        box = await self._box(context, req.sandbox_id, v2)
        if box.terminated:
            result = Status(status=Status.GENERIC_STATUS_TERMINATED)
            return api_pb2.SandboxGetTaskIdResponse(task_result=result)
        box.polls += 1
        if box.polls <= self.schedule_after:  # not scheduled yet
            return api_pb2.SandboxGetTaskIdResponse()
        return api_pb2.SandboxGetTaskIdResponse(task_id=box.task_id)

    async def SandboxGetTaskId(self, req: Any, context: Any) -> Any:
        return await self._task_id(req, context, v2=False)

    async def SandboxGetTaskIdV2(self, req: Any, context: Any) -> Any:
        return await self._task_id(req, context, v2=True)

    def _router_access(self, box: _Box) -> tuple[str, str]:
        exp = int(self.now() + self.jwt_ttl_s)
        jwt = mint_jwt({"exp": exp, "task_id": box.task_id})
        self.jwts[jwt] = (box.task_id, exp)
        return jwt, f"http://127.0.0.1:{self.router_port}"

    async def TaskGetCommandRouterAccess(self, req: Any, context: Any) -> Any:
        box = next((b for b in self.live() if b.task_id == req.task_id and not b.v2), None)
        if box is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Task {req.task_id} not found")
        assert box is not None
        jwt, url = self._router_access(box)
        return api_pb2.TaskGetCommandRouterAccessResponse(jwt=jwt, url=url)

    async def SandboxGetCommandRouterAccess(self, req: Any, context: Any) -> Any:
        if req.WhichOneof("target") == "task_id":
            box = next((b for b in self.live() if b.task_id == req.task_id), None)
        else:
            box = self.boxes.get(req.sandbox_id)
        if box is None or not box.v2 or box.terminated:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Sandbox not found")
        assert box is not None
        jwt, url = self._router_access(box)
        return api_pb2.SandboxGetCommandRouterAccessResponse(jwt=jwt, url=url)

    async def _terminate(self, req: Any, context: Any, v2: bool) -> Any:
        box = await self._box(context, req.sandbox_id, v2)
        if not box.terminated:
            box.terminated = True
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        return api_pb2.SandboxTerminateResponse(
            existing_result=Status(status=Status.GENERIC_STATUS_TERMINATED)
        )

    async def SandboxTerminate(self, req: Any, context: Any) -> Any:
        return await self._terminate(req, context, v2=False)

    async def SandboxTerminateV2(self, req: Any, context: Any) -> Any:
        return await self._terminate(req, context, v2=True)

    async def _wait(self, req: Any, context: Any, v2: bool) -> Any:
        box = await self._box(context, req.sandbox_id, v2)
        meta = api_pb2.SandboxHandleMetadata(app_id=box.app_id)
        if box.terminated:
            result = Status(status=Status.GENERIC_STATUS_TERMINATED)
            return api_pb2.SandboxWaitResponse(result=result, metadata=meta)
        return api_pb2.SandboxWaitResponse(metadata=meta)  # still running (timeout 0)

    async def SandboxWait(self, req: Any, context: Any) -> Any:
        return await self._wait(req, context, v2=False)

    async def SandboxWaitV2(self, req: Any, context: Any) -> Any:
        return await self._wait(req, context, v2=True)

    async def _list(self, req: Any, v2: bool) -> Any:
        want = {t.tag_name: t.tag_value for t in req.tags}
        boxes = [
            b
            for b in self.boxes.values()
            if (v2 or not b.v2)
            and (req.include_finished or not b.terminated)
            and (not req.app_id or b.app_id == req.app_id)
            and (not req.before_timestamp or b.created_at < req.before_timestamp)
            and all(b.tags.get(k) == v for k, v in want.items())
        ]
        boxes.sort(key=lambda b: b.created_at, reverse=True)
        return api_pb2.SandboxListResponse(
            sandboxes=[
                api_pb2.SandboxInfo(
                    id=b.id,
                    created_at=b.created_at,
                    app_id=b.app_id,
                    tags=_tags(b),
                    task_info=api_pb2.TaskInfo(id=b.task_id),
                    metadata=api_pb2.SandboxHandleMetadata(app_id=b.app_id),
                )
                for b in boxes[:50]  # a page
            ]
        )

    async def SandboxList(self, req: Any, context: Any) -> Any:
        return await self._list(req, v2=False)

    async def SandboxListV2(self, req: Any, context: Any) -> Any:
        return await self._list(req, v2=True)

    async def SandboxTagsGet(self, req: Any, context: Any) -> Any:
        box = await self._box(context, req.sandbox_id, None)
        return api_pb2.SandboxTagsGetResponse(tags=_tags(box))

    SandboxTagsGetV2 = SandboxTagsGet

    async def SandboxTagsSet(self, req: Any, context: Any) -> Any:
        box = await self._box(context, req.sandbox_id, None)
        box.tags.update({t.tag_name: t.tag_value for t in req.tags})
        return _empty(API_SERVICE, "SandboxTagsSet")  # google.protobuf.Empty

    SandboxTagsSetV2 = SandboxTagsSet

    async def _tunnels(self, req: Any, context: Any, v2: bool) -> Any:
        box = await self._box(context, req.sandbox_id, v2)
        if box.terminated:
            result = Status(status=Status.GENERIC_STATUS_TERMINATED)
            return api_pb2.SandboxGetTunnelsResponse(result=result)
        return api_pb2.SandboxGetTunnelsResponse(
            result=Status(status=Status.GENERIC_STATUS_SUCCESS), tunnels=box.tunnels
        )

    async def SandboxGetTunnels(self, req: Any, context: Any) -> Any:
        return await self._tunnels(req, context, v2=False)

    async def SandboxGetTunnelsV2(self, req: Any, context: Any) -> Any:
        return await self._tunnels(req, context, v2=True)

    async def _snapshot(self, box: _Box) -> str:
        """The box's files as an image: a saved state of its local sandbox."""
        state = await (await self.client()).states.save(box.local.id)
        image_id = "im-" + secrets.token_hex(12)
        self.snapshots[image_id] = state.id
        return image_id

    async def SandboxSnapshotFs(self, req: Any, context: Any) -> Any:
        """The V1 call the SDK makes with MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT=1."""
        box = await self._box(context, req.sandbox_id, False)
        if box.terminated:
            failed = Status(status=Status.GENERIC_STATUS_FAILURE, exception="Sandbox terminated")
            return api_pb2.SandboxSnapshotFsResponse(result=failed)
        return api_pb2.SandboxSnapshotFsResponse(
            image_id=await self._snapshot(box),
            result=Status(status=Status.GENERIC_STATUS_SUCCESS),
            image_metadata=api_pb2.ImageMetadata(image_builder_version=BUILDER_VERSION),
        )

    async def ImageFromId(self, req: Any, context: Any) -> Any:
        known = req.image_id in self.snapshots or req.image_id in self.images.values()
        if not known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Image {req.image_id} not found")
        return api_pb2.ImageFromIdResponse(
            image_id=req.image_id,
            metadata=api_pb2.ImageMetadata(image_builder_version=BUILDER_VERSION),
        )

    async def ImageDelete(self, req: Any, context: Any) -> Any:
        state = self.snapshots.pop(req.image_id, "")
        if not state:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Image {req.image_id} not found")
        with contextlib.suppress(ComputeSDKError):
            await (await self.client()).states.delete(state)
        return _empty(API_SERVICE, "ImageDelete")  # google.protobuf.Empty

    # ------------------------------------------------------------ command router

    async def TaskSnapshotFilesystem(self, req: Any, context: Any) -> Any:
        box = await self._task(context, req.task_id)
        if req.ttl_seconds == 0 or req.ttl_seconds < -1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ttl must be positive or -1")
        return router_pb2.TaskSnapshotFilesystemResponse(image_id=await self._snapshot(box))

    async def _task(self, context: Any, task_id: str) -> _Box:
        box = next((b for b in self.live() if b.task_id == task_id), None)
        if box is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} not found")
        assert box is not None
        return box

    async def _exec(self, context: Any, req: Any) -> tuple[_Box, Process, list[int]]:
        box = await self._task(context, req.task_id)
        entry = box.execs.get(req.exec_id)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "exec not found")
        assert entry is not None
        return box, *entry

    async def TaskExecStart(self, req: Any, context: Any) -> Any:
        box = await self._task(context, req.task_id)
        if req.HasField("timeout_secs") and req.timeout_secs <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "timeout_secs must be positive")
        env = dict(req.env)
        for source in req.secret_sources:
            env.update(source.env.contents)
        try:
            proc = await box.local.start_process(
                list(req.command_args),
                cwd=req.workdir or "/",
                env=env,
                stdin=True,
                timeout_ms=req.timeout_secs * 1000,
            )
        except ComputeSDKError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        box.execs[req.exec_id] = (proc, [0, 0])  # stdin: [bytes written, closed]
        return router_pb2.TaskExecStartResponse()

    async def TaskExecStdinWrite(self, req: Any, context: Any) -> Any:
        _, proc, written = await self._exec(context, req)
        if written[1] or req.offset != written[0]:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stdin offset {req.offset}, expected {written[0]} (closed: {bool(written[1])})",
            )
        # Modal takes input for a command that has already exited; the local process may not.
        with contextlib.suppress(FailedPreconditionError):
            await proc.write_stdin(req.data, close=req.eof)
        written[0] += len(req.data)
        written[1] = int(req.eof)
        return router_pb2.TaskExecStdinWriteResponse()

    async def TaskExecStdinStatus(self, req: Any, context: Any) -> Any:
        _, _, written = await self._exec(context, req)
        return router_pb2.TaskExecStdinStatusResponse(
            num_bytes_written=written[0], closed=bool(written[1])
        )

    async def TaskExecStdioRead(self, req: Any, context: Any) -> AsyncIterator[Any]:
        box, proc, _ = await self._exec(context, req)
        stdout = req.file_descriptor == router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT
        async for chunk in box.local.process(proc.id).attach(
            stdout_offset=req.offset if stdout else FAR, stderr_offset=FAR if stdout else req.offset
        ):
            yield router_pb2.TaskExecStdioReadResponse(data=chunk.data)

    async def _exited(self, box: _Box, proc: Process, context: Any) -> Any:
        proc = box.local.process(proc.id)
        try:
            async for _ in proc.attach(stdout_offset=FAR, stderr_offset=FAR):
                pass
        except ComputeSDKError as exc:  # the sandbox went away under the wait
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
        assert proc.exited is not None
        return proc.exited

    async def TaskExecWait(self, req: Any, context: Any) -> Any:
        box, proc, _ = await self._exec(context, req)
        exited = await self._exited(box, proc, context)
        if exited.signal:
            return router_pb2.TaskExecWaitResponse(signal=exited.signal)
        return router_pb2.TaskExecWaitResponse(code=exited.exit_code)

    async def close(self) -> None:
        for box in self.live():
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        if self._client is not None:
            await self._client.close()


def _empty(service: Any, name: str) -> Any:
    return message_factory.GetMessageClass(service.methods_by_name[name].output_type)()


def _tags(box: _Box) -> list[Any]:
    return [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in box.tags.items()]


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
