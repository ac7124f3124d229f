"""A wire-level fake of E2B: the REST API (spec/openapi.yml) and envd inside each
sandbox (spec/envd: Connect with JSON envelopes for process and filesystem, and
the /files HTTP API). Each fake sandbox is a real local sandbox of the daemon
under test, so output, exit codes and files are real.

The official `e2b` SDK runs against it in tests/test_e2b_fake.py; where the fake
is wrong about E2B's API, that SDK fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc

from computesdk import Client, ComputeSDKError, Process, Sandbox
from computesdk.types import FileInfo

from .asgi import Receive, Request, Scope, Send, respond, respond_json, respond_stream

API_KEY = "e2b_fake_key_for_tests"
ENVD_VERSION = "0.5.7"
_ENVELOPE = struct.Struct(">BI")
_CONNECT_CODES = {
    404: "not_found",
    409: "already_exists",
    400: "invalid_argument",
    401: "unauthenticated",
    503: "unavailable",
    500: "internal",
}
_SIGNALS = {"SIGNAL_SIGKILL": 9, "SIGNAL_SIGTERM": 15}
Msg = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _entry(f: FileInfo) -> dict[str, Any]:
    kinds = {"file": "FILE_TYPE_FILE", "directory": "FILE_TYPE_DIRECTORY"}
    kind = kinds.get(f.type, "FILE_TYPE_FILE")
    return {
        "name": f.name,
        "type": kind,
        "path": f.path,
        "size": str(f.size),
        "mode": f.mode,
        "permissions": oct(f.mode),
        "owner": "root",
        "group": "root",
        "modifiedTime": f.modified.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
        **({"symlinkTarget": f.link_target} if f.link_target else {}),
    }


class _Box:
    def __init__(
        self,
        sid: str,
        template: str,
        local: Sandbox,
        timeout_s: int,
        metadata: dict[str, str],
        env: dict[str, str],
    ) -> None:
        self.id = sid
        self.template = template
        self.local = local
        self.metadata = metadata
        self.env = env
        self.token = secrets.token_hex(16)
        self.started = _now()
        self.end_at = time.time() + timeout_s
        self.procs: dict[int, tuple[Process, dict[str, Any]]] = {}


class FakeE2B:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, _Box] = {}
        self.fail_with = 0  # when set, every request gets this status
        # When set, envd serves this many more requests, then answers 503.
        self.envd_budget: int | None = None
        self.requests: list[str] = []
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    # ------------------------------------------------------------ REST API

    async def api(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive)
        self.requests.append(f"{req.method} {req.path}")
        if self.fail_with:
            return await respond_json(
                send, self.fail_with, {"code": self.fail_with, "message": "service unavailable"}
            )
        if req.headers.get("x-api-key") != API_KEY:
            return await respond_json(send, 401, {"code": 401, "message": "Invalid API key"})
        parts = req.path.strip("/").split("/")
        if parts[:1] == ["v2"]:  # v1 and v2 agree on every call the fake serves
            parts = parts[1:]
        if req.method == "POST" and parts == ["sandboxes"]:
            return await self._create(req, send)
        if parts[0] != "sandboxes" or len(parts) < 2:
            return await respond_json(send, 404, {"code": 404, "message": "not found"})
        box = self.boxes.get(parts[1])
        if box is None or box.end_at < time.time():
            return await respond_json(
                send, 404, {"code": 404, "message": f"sandbox {parts[1]} not found"}
            )
        rest = parts[2:]
        if req.method == "GET" and not rest:
            return await respond_json(
                send,
                200,
                {
                    "templateID": box.template,
                    "sandboxID": box.id,
                    "clientID": "fake",
                    "startedAt": box.started,
                    "endAt": datetime.fromtimestamp(box.end_at, UTC)
                    .isoformat()
                    .replace("+00:00", "Z"),
                    "envdVersion": ENVD_VERSION,
                    "cpuCount": 1,
                    "memoryMB": 1024,
                    "diskSizeMB": 2048,
                    "metadata": box.metadata,
                    "state": "running",
                },
            )
        if req.method == "DELETE" and not rest:
            del self.boxes[box.id]
            await box.local.destroy()
            return await respond(send, 204)
        if req.method == "POST" and rest == ["timeout"]:
            box.end_at = time.time() + int((await req.json())["timeout"])
            return await respond(send, 204)
        if req.method == "GET" and rest == ["metrics"]:
            st = await box.local.get_status()
            return await respond_json(
                send,
                200,
                [
                    {
                        "timestamp": _now(),
                        "timestampUnix": int(time.time()),
                        "cpuCount": 1,
                        "cpuUsedPct": 0.0,
                        "memUsed": st.memory_used_bytes,
                        "memTotal": st.memory_limit_bytes,
                        "memCache": 0,
                        "diskUsed": st.disk_used_bytes,
                        "diskTotal": st.disk_limit_bytes,
                    }
                ],
            )
        return await respond_json(send, 404, {"code": 404, "message": "not found"})

    async def _create(self, req: Request, send: Send) -> None:
        body = await req.json()
        template = body.get("templateID", "")
        if template != "base":
            return await respond_json(
                send, 404, {"code": 404, "message": f"template '{template}' not found"}
            )
        local = await (await self.client()).create(
            "local",
            template="base",
            keep_alive=True,
            env=body.get("envVars") or {},
            metadata={"fake": "e2b"},
        )
        sid = "i" + secrets.token_hex(9)
        box = _Box(
            sid,
            template,
            local,
            int(body.get("timeout", 15)),
            body.get("metadata") or {},
            body.get("envVars") or {},
        )
        self.boxes[sid] = box
        await respond_json(
            send,
            201,
            {
                "templateID": template,
                "sandboxID": sid,
                "clientID": "fake",
                "envdVersion": ENVD_VERSION,
                "envdAccessToken": box.token,
                "domain": None,
            },
        )

    # ------------------------------------------------------------ envd

    async def envd(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive)
        self.requests.append(f"envd {req.method} {req.path}")
        if self.envd_budget is not None:
            self.envd_budget -= 1
        if self.fail_with or (self.envd_budget is not None and self.envd_budget < 0):
            return await respond_json(
                send, self.fail_with or 503, {"code": "unavailable", "message": "unavailable"}
            )
        box = self.boxes.get(req.headers.get("e2b-sandbox-id", ""))
        if box is None:
            return await respond_json(send, 502, {"code": 502, "message": "sandbox not found"})
        if req.headers.get("x-access-token") != box.token:
            return await respond_json(send, 401, {"code": 401, "message": "unauthorized"})
        try:
            if req.path == "/health":
                return await respond(send, 204)
            if req.path == "/files":
                return await self._files(box, req, send)
            if req.path == "/process.Process/Start":
                return await self._start(box, req, send)
            service_method = req.path.strip("/")
            handler = getattr(
                self, "_rpc_" + service_method.replace(".", "_").replace("/", "_"), None
            )
            if handler is None:
                return await respond_json(
                    send, 501, {"code": "unimplemented", "message": service_method}
                )
            return await respond_json(send, 200, await handler(box, await req.json()))
        except ComputeSDKError as exc:
            status = {
                "NOT_FOUND": 404,
                "ALREADY_EXISTS": 409,
                "INVALID_ARGUMENT": 400,
                "FAILED_PRECONDITION": 400,
            }.get(exc.code.name, 500)
            if req.path == "/files":
                return await respond_json(send, status, {"code": status, "message": exc.message})
            return await respond_json(
                send,
                status,
                {"code": _CONNECT_CODES.get(status, "internal"), "message": exc.message},
            )

    async def _files(self, box: _Box, req: Request, send: Send) -> None:
        path = req.query.get("path", "")
        if req.method == "GET":
            info = await box.local.files.stat(path)
            if info.is_dir:
                return await respond_json(
                    send, 400, {"code": 400, "message": f"path '{path}' is a directory"}
                )
            data = await box.local.files.read(path)
            rng = req.headers.get("range", "")
            if rng.startswith("bytes="):
                first, _, last = rng[6:].partition("-")
                start = int(first)
                if start >= len(data) and data:
                    return await respond(send, 416)
                end = int(last) + 1 if last else len(data)
                return await respond(
                    send,
                    206,
                    data[start:end],
                    "application/octet-stream",
                    {"content-range": f"bytes {start}-{end - 1}/{len(data)}"},
                )
            return await respond(send, 200, data, "application/octet-stream")
        ctype = req.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            payload = _multipart_file(ctype, await req.body())
            await box.local.files.write(path, payload)
        else:
            await box.local.files.write(path, req.chunks())
        name = path.rstrip("/").rsplit("/", 1)[-1]
        await respond_json(send, 200, [{"name": name, "type": "file", "path": path}])

    async def _start(self, box: _Box, req: Request, send: Send) -> None:
        raw = await req.body()
        _flags, n = _ENVELOPE.unpack_from(raw)
        msg = json.loads(raw[_ENVELOPE.size : _ENVELOPE.size + n])
        cfg = msg["process"]
        proc = await box.local.start_process(
            [cfg["cmd"], *cfg.get("args", [])],
            cwd=cfg.get("cwd") or "/root",
            env=cfg.get("envs") or {},
            stdin=bool(msg.get("stdin")),
            tag=msg.get("tag", ""),
        )
        box.procs[proc.pid] = (proc, cfg)

        def env(obj: dict[str, Any], flags: int = 0) -> bytes:
            body = json.dumps(obj).encode()
            return _ENVELOPE.pack(flags, len(body)) + body

        async def events() -> AsyncIterator[bytes]:
            yield env({"event": {"start": {"pid": proc.pid}}})
            async for chunk in proc.attach():
                data = base64.b64encode(chunk.data).decode()
                yield env({"event": {"data": {chunk.stream: data}}})
            box.procs.pop(proc.pid, None)
            ex = proc.exited
            assert ex is not None
            end: dict[str, Any] = {"exited": True}
            if ex.signal:
                end.update(
                    exitCode=-1,
                    status={9: "signal: killed", 15: "signal: terminated"}.get(
                        ex.signal, f"signal: {ex.signal}"
                    ),
                )
            else:
                end.update(exitCode=ex.exit_code, status=f"exit status {ex.exit_code}")
            if not end["exitCode"]:
                del end["exitCode"]  # protobuf JSON leaves out zero values
            yield env({"event": {"end": end}})
            yield env({}, flags=0x02)

        await respond_stream(send, 200, "application/connect+json", events())

    def _proc(self, box: _Box, msg: dict[str, Any]) -> Process:
        pid = int(msg["process"]["pid"])
        if pid not in box.procs:
            raise ComputeSDKError(
                f"process with pid {pid} not found", code=grpc.StatusCode.NOT_FOUND
            )
        return box.procs[pid][0]

    async def _rpc_process_Process_SendInput(self, box: _Box, msg: Msg) -> Msg:
        await self._proc(box, msg).write_stdin(base64.b64decode(msg["input"]["stdin"]))
        return {}

    async def _rpc_process_Process_CloseStdin(self, box: _Box, msg: Msg) -> Msg:
        await self._proc(box, msg).write_stdin(b"", close=True)
        return {}

    async def _rpc_process_Process_SendSignal(self, box: _Box, msg: Msg) -> Msg:
        await self._proc(box, msg).signal(_SIGNALS[msg["signal"]])
        return {}

    async def _rpc_process_Process_List(self, box: _Box, msg: Msg) -> Msg:
        return {"processes": [{"config": cfg, "pid": pid} for pid, (_, cfg) in box.procs.items()]}

    async def _rpc_filesystem_Filesystem_Stat(self, box: _Box, msg: Msg) -> Msg:
        return {"entry": _entry(await box.local.files.stat(msg["path"]))}

    async def _rpc_filesystem_Filesystem_ListDir(self, box: _Box, msg: Msg) -> Msg:
        return {"entries": [_entry(f) for f in await box.local.files.list(msg["path"])]}

    async def _rpc_filesystem_Filesystem_MakeDir(self, box: _Box, msg: Msg) -> Msg:
        if await box.local.files.exists(msg["path"]):
            raise ComputeSDKError(
                f"directory {msg['path']} already exists", code=grpc.StatusCode.ALREADY_EXISTS
            )
        return {"entry": _entry(await box.local.files.mkdir(msg["path"]))}

    async def _rpc_filesystem_Filesystem_Move(self, box: _Box, msg: Msg) -> Msg:
        return {"entry": _entry(await box.local.files.move(msg["source"], msg["destination"]))}

    async def _rpc_filesystem_Filesystem_Remove(self, box: _Box, msg: Msg) -> Msg:
        await box.local.files.remove(msg["path"], recursive=True)
        return {}

    async def close(self) -> None:
        for box in list(self.boxes.values()):
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        if self._client is not None:
            await self._client.close()


def _multipart_file(content_type: str, body: bytes) -> bytes:
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, sep, data = part.partition(b"\r\n\r\n")
        if sep and b'name="file"' in head:
            return data[:-2] if data.endswith(b"\r\n") else data
    raise ValueError("no file part in the upload")
