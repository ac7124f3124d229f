"""A wire-level fake of Daytona: the control API (`/sandbox`) and the toolbox API
of each sandbox (sessions with runAsync commands, the logs WebSocket with
\\x01\\x01\\x01 / \\x02\\x02\\x02 stream markers, and `/files`). Request and response
shapes follow Daytona's published API clients (daytona-api-client,
daytona-toolbox-api-client). Each fake sandbox is a real local sandbox of the
daemon under test."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import UTC, datetime
from typing import Any

from computesdk import Client, ComputeSDKError, Process, Resources, Sandbox
from computesdk.types import FileInfo

from .asgi import Receive, Request, Scope, Send, respond, respond_json
from .e2b import _multipart_file

API_KEY = "dtn_fake_key"
MARKS = {"stdout": b"\x01\x01\x01", "stderr": b"\x02\x02\x02"}
SNAPSHOTS = {"daytonaio/sandbox:0.4.3"}


def _file(f: FileInfo) -> dict[str, Any]:
    return {
        "name": f.name,
        "isDir": f.is_dir,
        "size": f.size,
        "mode": oct(f.mode)[2:],
        "permissions": oct(f.mode)[2:],
        "owner": "daytona",
        "group": "daytona",
        "modTime": f.modified.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
    }


class _Box:
    def __init__(self, sid: str, local: Sandbox, body: dict[str, Any], toolbox: str) -> None:
        self.id = sid
        self.local = local
        self.body = body
        self.toolbox = toolbox
        self.polls = 0
        self.commands: dict[str, tuple[str, Process, str]] = {}  # cmd -> (session, proc, line)
        self.exit_codes: dict[str, int] = {}

    def dto(self) -> dict[str, Any]:
        b = self.body
        self.polls += 1
        # The first look says "creating", as Daytona does while it provisions.
        state = "creating" if self.polls == 1 else "started"
        return {
            "id": self.id,
            "organizationId": "org_fake",
            "name": self.id,
            "snapshot": b.get("snapshot", "daytonaio/sandbox:0.4.3"),
            "user": "daytona",
            "env": b.get("env") or {},
            "labels": b.get("labels") or {},
            "public": False,
            "target": b.get("target", "us"),
            "cpu": b.get("cpu", 1),
            "gpu": 0,
            "memory": b.get("memory", 1),
            "disk": b.get("disk", 3),
            "state": state,
            "toolboxProxyUrl": self.toolbox,
            "createdAt": datetime.now(UTC).isoformat(),
        }


class FakeDaytona:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, _Box] = {}
        self.port = 0
        self.requests: list[str] = []
        self._client: Client | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            return await self._logs_ws(scope, receive, send)
        req = Request(scope, receive)
        self.requests.append(f"{req.method} {req.path}")
        if req.headers.get("authorization") != f"Bearer {API_KEY}":
            return await respond_json(send, 401, {"statusCode": 401, "message": "Unauthorized"})
        try:
            if req.path.startswith("/api/"):
                return await self._control(req, send)
            if req.path.startswith("/toolbox/"):
                parts = req.path.split("/")
                box = self.boxes.get(parts[2])
                if box is None:
                    return await respond_json(send, 404, {"message": "sandbox not found"})
                return await self._toolbox(box, "/" + "/".join(parts[3:]), req, send)
        except ComputeSDKError as exc:
            status = {"NOT_FOUND": 404, "ALREADY_EXISTS": 409}.get(exc.code.name, 400)
            return await respond_json(send, status, {"message": exc.message})
        return await respond_json(send, 404, {"statusCode": 404, "message": "Cannot route"})

    async def _control(self, req: Request, send: Send) -> None:
        parts = req.path.removeprefix("/api/").split("/")
        if parts == ["sandbox"] and req.method == "POST":
            body = await req.json()
            if "snapshot" in body and body["snapshot"] not in SNAPSHOTS:
                return await respond_json(
                    send,
                    404,
                    {"statusCode": 404, "message": f"Snapshot {body['snapshot']} not found"},
                )
            if body.get("gpu"):
                return await respond_json(
                    send, 400, {"statusCode": 400, "message": "No GPU capacity in target us"}
                )
            local = await (await self.client()).create(
                "local",
                template="python",
                env=body.get("env") or {},
                keep_alive=True,
                metadata={"fake": "daytona"},
                resources=Resources(
                    cpu_cores=float(body.get("cpu", 1)),
                    memory_mb=int(body.get("memory", 1)) * 1024,
                    disk_mb=int(body.get("disk", 3)) * 1024,
                ),
            )
            sid = secrets.token_hex(16)
            box = self.boxes[sid] = _Box(sid, local, body, f"http://127.0.0.1:{self.port}/toolbox")
            return await respond_json(send, 200, box.dto())
        if parts[0] == "sandbox" and len(parts) >= 2:
            box = self.boxes.get(parts[1])
            if box is None:
                return await respond_json(
                    send, 404, {"statusCode": 404, "message": f"Sandbox {parts[1]} not found"}
                )
            if len(parts) == 2 and req.method == "GET":
                return await respond_json(send, 200, box.dto())
            if len(parts) == 2 and req.method == "DELETE":
                del self.boxes[box.id]
                await box.local.destroy()
                return await respond(send, 200)
            if parts[2:] == ["toolbox-proxy-url"]:
                return await respond_json(send, 200, {"url": box.toolbox})
        return await respond_json(send, 404, {"statusCode": 404, "message": "Cannot route"})

    async def _toolbox(self, box: _Box, path: str, req: Request, send: Send) -> None:
        q = req.query
        files = box.local.files
        if path == "/process/session" and req.method == "POST":
            await req.json()
            return await respond(send, 201)
        if path.startswith("/process/session/"):
            return await self._session(box, path.split("/")[3:], req, send)
        if path == "/files/info":
            return await respond_json(send, 200, _file(await files.stat(q["path"])))
        if path == "/files" and req.method == "GET":
            return await respond_json(send, 200, [_file(f) for f in await files.list(q["path"])])
        if path == "/files" and req.method == "DELETE":
            await files.remove(q["path"], recursive=q.get("recursive") == "true")
            return await respond(send, 204)
        if path == "/files/download":
            return await respond(send, 200, await files.read(q["path"]), "application/octet-stream")
        if path == "/files/upload":
            payload = _multipart_file(req.headers["content-type"], await req.body())
            await files.write(q["path"], payload, make_parents=False)
            return await respond(send, 200)
        if path == "/files/folder":
            if await files.exists(q["path"]):
                return await respond_json(send, 409, {"message": "folder already exists"})
            await files.mkdir(q["path"], parents=True)
            await box.local.exec(["chmod", q.get("mode", "755"), q["path"]])
            return await respond(send, 201)
        if path == "/files/move":
            await files.move(q["source"], q["destination"])
            return await respond(send, 200)
        if path == "/files/permissions":
            r = await box.local.exec(["chmod", q["mode"], q["path"]])
            return await respond(send, 200 if r.exit_code == 0 else 400)
        return await respond_json(send, 404, {"message": f"no route {path}"})

    async def _session(self, box: _Box, rest: list[str], req: Request, send: Send) -> None:
        session = rest[0]
        if rest[1:] == ["exec"]:
            body = await req.json()
            if not body.get("runAsync"):
                r = await box.local.exec(["/bin/sh", "-c", body["command"]])
                return await respond_json(
                    send, 200, {"exitCode": r.exit_code, "output": r.stdout + r.stderr}
                )
            proc = await box.local.start_process(["/bin/sh", "-c", body["command"]])
            cmd_id = secrets.token_hex(12)
            box.commands[cmd_id] = (session, proc, body["command"])
            task = asyncio.create_task(self._watch(box, cmd_id, proc))
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)
            return await respond_json(send, 200, {"cmdId": cmd_id})
        if len(rest) == 3 and rest[1] == "command":
            entry = box.commands.get(rest[2])
            if entry is None:
                return await respond_json(send, 404, {"message": "command not found"})
            return await respond_json(
                send,
                200,
                {"id": rest[2], "command": entry[2], "exitCode": box.exit_codes.get(rest[2])},
            )
        if len(rest) == 1 and req.method == "DELETE":
            for cmd_id, (sess, proc, _) in list(box.commands.items()):
                if sess == session and cmd_id not in box.exit_codes:
                    with contextlib.suppress(ComputeSDKError):
                        await proc.kill()
            return await respond(send, 204)
        return await respond_json(send, 404, {"message": "no route"})

    async def _watch(self, box: _Box, cmd_id: str, proc: Process) -> None:
        result = await box.local.process(proc.id).wait()
        box.exit_codes[cmd_id] = result.exit_code if not result.signal else 128 + result.signal

    async def _logs_ws(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        parts = scope["path"].split("/")
        box = self.boxes.get(parts[2]) if len(parts) > 2 else None
        entry = box.commands.get(parts[-2]) if box else None
        if headers.get("authorization") != f"Bearer {API_KEY}" or entry is None:
            return await send({"type": "websocket.close", "code": 1008})
        await send({"type": "websocket.accept"})
        async for chunk in box.local.process(entry[1].id).attach():  # type: ignore[union-attr]
            await send({"type": "websocket.send", "bytes": MARKS[chunk.stream] + chunk.data})
        await send({"type": "websocket.close", "code": 1000})

    async def close(self) -> None:
        for box in list(self.boxes.values()):
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        if self._client is not None:
            await self._client.close()
