"""A wire-level fake of Daytona, as Daytona's own SDK (`daytona` 0.226.1, whose
generated clients are the spec here) and its toolbox daemon's rules describe it:
tests/test_daytona_contract.py drives it with that SDK and validates every JSON
answer against the SDK's models.

- Control API: POST/GET/DELETE /sandbox, the label-filtered, cursor-paged list,
  /ttl, /toolbox-proxy-url, /ports/{port}/preview-url (url and token); Daytona's
  default per-sandbox quotas and DTO rules.
- Preview proxy: /preview/{port}-{id}/... answers 401 for a private sandbox
  without X-Daytona-Preview-Token (or the API key as a bearer), else forwards a
  GET to the port in the sandbox.
- Toolbox: /process/execute; sessions that run their commands one after another
  in one shell, sync or runAsync, with input, the command, its logs (JSON or text)
  and the logs WebSocket; the output markers \\x01\\x01\\x01 / \\x02\\x02\\x02
  only for a client that splits output itself (X-Daytona-SDK-Version >= 0.27, or
  X-Daytona-Split-Output: true and no version), else stripped; /files with
  bulk-upload, bulk-download and download; /user-home-dir, /work-dir, /version.

Each fake sandbox is a real local sandbox of the daemon under test."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import re
import secrets
import shlex
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from computesdk import Client, ComputeSDKError, Process, Resources, Sandbox
from computesdk.types import FileInfo

from .asgi import Receive, Request, Scope, Send, respond, respond_json

API_KEY = "dtn_fake_key"
MARKS = {"stdout": b"\x01\x01\x01", "stderr": b"\x02\x02\x02"}
SNAPSHOTS = {"daytonaio/sandbox:0.4.3"}
# Daytona's default organization quota per sandbox (cores, GiB, GiB).
MAX_CPU, MAX_MEMORY, MAX_DISK = 4, 8, 10
HOME = "/home/daytona"
# The most one logs WebSocket frame carries (a read of the log file).
WS_FRAME = 32 << 10
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _now() -> str:
    return _iso(datetime.now(UTC))


def _ver(v: str) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", v)
    return tuple(int(x) for x in m.groups()) if m else None


def split_output(headers: dict[str, str]) -> bool:
    """Not IsCombinedOutput: a new SDK (or a dev build), or no SDK asking for it."""
    v = headers.get("x-daytona-sdk-version", "")
    if not v:
        return headers.get("x-daytona-split-output") == "true"
    return "dev" in v or (_ver(v) or (1,)) >= (0, 27, 0)


def server_demux(headers: dict[str, str]) -> bool:
    """Not SkipServerDemux: the toolbox splits stdout/stderr for SDKs >= 0.167."""
    v = headers.get("x-daytona-sdk-version", "")
    return bool(v) and ("dev" in v or (_ver(v) or (0,)) >= (0, 167, 0))


def strip(log: bytes) -> bytes:
    return log.replace(MARKS["stdout"], b"").replace(MARKS["stderr"], b"")


def demux(log: bytes) -> tuple[bytes, bytes]:
    out, err, cur = bytearray(), bytearray(), None
    for piece in re.split(rb"(\x01\x01\x01|\x02\x02\x02)", log):
        if piece in (MARKS["stdout"], MARKS["stderr"]):
            cur = out if piece == MARKS["stdout"] else err
        elif cur is not None:
            cur.extend(piece)
    return bytes(out), bytes(err)


def _file(f: FileInfo, parent: str) -> dict[str, Any]:
    mtime = f.modified.replace(tzinfo=UTC)
    return {
        "name": f.name,
        "path": f"{parent.rstrip('/')}/{f.name}" if parent else f.path,
        "isDir": f.is_dir,
        "size": f.size,
        "mode": oct(f.mode)[2:],
        "permissions": oct(f.mode)[2:],
        "owner": "daytona",
        "group": "daytona",
        "modTime": str(mtime),
        "modifiedAt": _iso(mtime),
    }


def _parts(content_type: str, body: bytes) -> dict[str, bytes]:
    boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip('"').encode()
    out = {}
    for part in body.split(b"--" + boundary)[1:]:
        head, _, data = part.partition(b"\r\n\r\n")
        if m := re.search(rb'name="([^"]*)"', head):
            out[m.group(1).decode()] = data[:-2] if data.endswith(b"\r\n") else data
    return out


class _Cmd:
    def __init__(self, command: str, echo: bool) -> None:
        self.id = secrets.token_hex(16)
        self.command = command
        self.echo = echo
        self.log = bytearray()  # marker-prefixed, as the toolbox's log file
        self.exit_code: int | None = None
        self.proc: Process | None = None
        self.changed = asyncio.Condition()
        self.done = False

    async def add(self, data: bytes) -> None:
        async with self.changed:
            self.log.extend(data)
            self.changed.notify_all()

    async def finish(self, code: int | None) -> None:
        async with self.changed:
            self.exit_code, self.done = code, True
            self.changed.notify_all()


class _Session:
    def __init__(self, sid: str) -> None:
        self.id = sid
        self.commands: dict[str, _Cmd] = {}
        self.lock = asyncio.Lock()  # one shell: one command at a time
        self.tasks: set[asyncio.Task[None]] = set()

    def dto(self) -> dict[str, Any]:
        cmds = [
            {"id": c.id, "command": c.command, "exitCode": c.exit_code}
            for c in self.commands.values()
        ]
        return {"sessionId": self.id, "commands": cmds}


class _Box:
    def __init__(self, sid: str, local: Sandbox, body: dict[str, Any], toolbox: str) -> None:
        self.id = sid
        self.local = local
        self.body = body
        self.toolbox = toolbox
        self.polls = 0
        self.state = "creating"
        self.created = datetime.now(UTC)
        self.sessions: dict[str, _Session] = {}
        self.preview_token = secrets.token_urlsafe(24)

    def dto(self, *, listed: bool = False) -> dict[str, Any]:
        b = self.body
        if self.state == "creating":
            self.polls += 1  # the first look says "creating", as Daytona does while it provisions
            self.state = "creating" if self.polls == 1 else "started"
        out = {
            "id": self.id, "organizationId": "org_fake", "name": b.get("name") or self.id,
            "snapshot": b.get("snapshot", "daytonaio/sandbox:0.4.3"),
            "user": b.get("user") or "daytona",
            "labels": b.get("labels") or {}, "public": bool(b.get("public")),
            "networkBlockAll": bool(b.get("networkBlockAll")), "target": b.get("target") or "us",
            "cpu": b.get("cpu") or 1, "gpu": b.get("gpu") or 0, "memory": b.get("memory") or 1,
            "disk": b.get("disk") or 3, "state": self.state, "desiredState": "started",
            "autoStopInterval": b.get("autoStopInterval", 15), "autoArchiveInterval": 10080,
            "autoDeleteInterval": b.get("autoDeleteInterval", -1), "autoPauseInterval": 0,
            "createdAt": _iso(self.created), "updatedAt": _now(), "toolboxProxyUrl": self.toolbox,
        }  # fmt: skip
        if b.get("ttlMinutes"):
            out["autoDestroyAt"] = _iso(self.created + timedelta(minutes=b["ttlMinutes"]))
        if not listed:
            out.update(env=b.get("env") or {}, kvm=bool(b.get("kvm")), volumes=[])
        return out


def check_create(body: object) -> str:
    """CreateSandboxDto's rules and the default quotas: the 400 message, or ''."""
    if not isinstance(body, dict):
        return "Invalid request body"
    for key in ("env", "labels"):
        v = body.get(key)
        if v is not None and not (
            isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
        ):
            return f"{key} must be an object of strings"
    for key in (
        "cpu",
        "memory",
        "disk",
        "gpu",
        "autoStopInterval",
        "autoDeleteInterval",
        "ttlMinutes",
    ):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            return f"{key} must be an integer number"
    for key, most in (("cpu", MAX_CPU), ("memory", MAX_MEMORY), ("disk", MAX_DISK)):
        if (body.get(key) or 0) > most:
            return f"{key} request {body[key]} exceeds maximum allowed per sandbox ({most})"
    if "public" in body and not isinstance(body["public"], bool):
        return "public must be a boolean value"
    if (body.get("gpu") or 0) > 1:
        return "gpu must not be greater than 1"
    if (body.get("ttlMinutes") or 0) < 0:
        return "ttlMinutes must not be less than 0"
    return ""


class FakeDaytona:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, _Box] = {}
        self.gone: dict[str, dict[str, Any]] = {}  # destroyed sandboxes, still readable
        self.port = 0
        self.requests: list[str] = []
        # (method, path, status, JSON body) of every JSON answer, for the contract test.
        self.answers: deque[tuple[str, str, int, Any]] = deque(maxlen=4000)
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    def _recording(self, req: Request, send: Send) -> Send:
        status, ctype = [0], [""]

        async def wrapped(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                ctype[0] = dict(msg.get("headers") or []).get(b"content-type", b"").decode()
            elif msg["type"] == "http.response.body" and ctype[0].startswith("application/json"):
                body = msg.get("body") or b""
                self.answers.append(
                    (req.method, req.path, status[0], json.loads(body) if body else None)
                )
            await send(msg)

        return wrapped

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            return await self._logs_ws(scope, receive, send)
        req = Request(scope, receive)
        send = self._recording(req, send)
        self.requests.append(f"{req.method} {req.path}")
        if req.path.startswith("/preview/"):
            return await self._preview(req, send)
        if req.headers.get("authorization") != f"Bearer {API_KEY}":
            return await respond_json(send, 401, {"statusCode": 401, "message": "Unauthorized"})
        try:
            if req.path.startswith("/api/"):
                return await self._control(req, send)
            if req.path.startswith("/toolbox/"):
                parts = req.path.split("/")
                box = self.boxes.get(parts[2])
                if box is None:
                    return await self._err(req, send, 404, "sandbox not found")
                return await self._toolbox(box, "/" + "/".join(parts[3:]), req, send)
        except ComputeSDKError as exc:
            status = {"NOT_FOUND": 404, "ALREADY_EXISTS": 409}.get(exc.code.name, 400)
            if req.path.startswith("/toolbox/"):
                code = "FILE_NOT_FOUND" if status == 404 and "/files" in req.path else None
                return await self._err(req, send, status, exc.message, code)
            return await respond_json(send, status, {"message": exc.message, "statusCode": status})
        return await respond_json(send, 404, {"statusCode": 404, "message": "Cannot route"})

    async def _err(
        self, req: Request, send: Send, status: int, msg: str, code: str | None = None
    ) -> None:
        """The toolbox's ErrorResponse."""
        codes = {400: "BAD_REQUEST", 404: "NOT_FOUND", 408: "REQUEST_TIMEOUT", 409: "CONFLICT"}
        code = code or codes.get(status, "GONE")
        body = {"statusCode": status, "message": msg, "code": code, "timestamp": _now(),
                "path": req.path, "method": req.method}  # fmt: skip
        await respond_json(send, status, body)

    async def _control(self, req: Request, send: Send) -> None:
        parts = req.path.removeprefix("/api/").split("/")
        if parts == ["sandbox"] and req.method == "POST":
            return await self._create(await req.json(), send)
        if parts == ["sandbox"] and req.method == "GET":
            return await self._list(req, send)
        if parts[0] == "sandbox" and len(parts) >= 2:
            box = self.boxes.get(parts[1])
            if box is None:
                if parts[1] in self.gone and len(parts) == 2 and req.method == "GET":
                    return await respond_json(send, 200, self.gone[parts[1]])
                return await respond_json(
                    send, 404, {"statusCode": 404, "message": f"Sandbox {parts[1]} not found"}
                )
            if len(parts) == 2 and req.method == "GET":
                return await respond_json(send, 200, box.dto())
            if len(parts) == 2 and req.method == "DELETE":
                del self.boxes[box.id]
                for s in box.sessions.values():
                    await self._end(s)
                await box.local.destroy()
                box.state = "destroyed"
                self.gone[box.id] = box.dto()
                return await respond_json(send, 200, {**self.gone[box.id], "state": "destroying"})
            if len(parts) == 5 and parts[2] == "ports" and parts[4] == "preview-url":
                return await self._preview_url(box, parts[3], send)
            if parts[2:] == ["toolbox-proxy-url"]:
                return await respond_json(send, 200, {"url": box.toolbox})
            if len(parts) == 4 and parts[2] == "ttl" and req.method == "POST":
                if not parts[3].isdigit():
                    return await respond_json(
                        send, 400, {"statusCode": 400, "message": "Invalid ttl"}
                    )
                box.body["ttlMinutes"] = int(parts[3])
                return await respond_json(send, 200, box.dto())
        return await respond_json(send, 404, {"statusCode": 404, "message": "Cannot route"})

    async def _preview_url(self, box: _Box, port: str, send: Send) -> None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            return await respond_json(send, 400, {"statusCode": 400, "message": "Invalid port"})
        url = f"http://127.0.0.1:{self.port}/preview/{int(port)}-{box.id}"
        body = {"sandboxId": box.id, "url": url, "token": box.preview_token}
        return await respond_json(send, 200, body)

    async def _preview(self, req: Request, send: Send) -> None:
        """The preview proxy: a private sandbox's port wants its token or the key."""
        host, _, rest = req.path.removeprefix("/preview/").partition("/")
        port, _, sid = host.partition("-")
        box = self.boxes.get(sid)
        if box is None or not port.isdigit():
            return await respond(send, 404, b"sandbox not found", "text/plain")
        allowed = (
            box.body.get("public") is True
            or req.headers.get("x-daytona-preview-token") == box.preview_token
            or req.headers.get("authorization") == f"Bearer {API_KEY}"
        )
        if not allowed:
            return await respond(send, 401, b"Unauthorized", "text/plain")
        url = await box.local.get_url(int(port))
        async with httpx.AsyncClient(timeout=30) as h:
            try:
                r = await h.get(f"{url.rstrip('/')}/{rest}")
            except httpx.HTTPError:
                return await respond(send, 502, b"no server on the port", "text/plain")
        ctype = r.headers.get("content-type", "application/octet-stream")
        return await respond(send, r.status_code, r.content, ctype)

    async def _create(self, body: Any, send: Send) -> None:
        if why := check_create(body):
            return await respond_json(send, 400, {"statusCode": 400, "message": why})
        if "snapshot" in body and body["snapshot"] not in SNAPSHOTS:
            msg = f"Snapshot {body['snapshot']} not found"
            return await respond_json(send, 404, {"statusCode": 404, "message": msg})
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
                cpu_cores=float(body.get("cpu") or 1),
                memory_mb=int(body.get("memory") or 1) * 1024,
                disk_mb=int(body.get("disk") or 3) * 1024,
            ),
        )
        await local.exec(["mkdir", "-p", HOME])
        sid = secrets.token_hex(16)
        box = self.boxes[sid] = _Box(sid, local, body, f"http://127.0.0.1:{self.port}/toolbox")
        return await respond_json(send, 200, box.dto())

    async def _list(self, req: Request, send: Send) -> None:
        q = req.query
        try:
            labels = json.loads(q["labels"]) if "labels" in q else {}
            limit = int(q.get("limit", "100"))
        except ValueError:
            return await respond_json(
                send, 400, {"statusCode": 400, "message": "Invalid labels JSON format"}
            )
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            return await respond_json(send, 400, {"statusCode": 400, "message": "Invalid labels"})
        if not 1 <= limit <= 200:
            return await respond_json(
                send, 400, {"statusCode": 400, "message": "limit must be 1-200"}
            )
        ids = sorted(
            i
            for i, b in self.boxes.items()
            if labels.items() <= (b.body.get("labels") or {}).items()
        )
        start = bisect.bisect_left(ids, q.get("cursor", ""))  # the cursor: the next page's first id
        page = ids[start : start + limit]
        nxt = ids[start + limit] if len(ids) > start + limit else None
        items = [self.boxes[i].dto(listed=True) for i in page]
        return await respond_json(send, 200, {"items": items, "nextCursor": nxt})

    async def _toolbox(self, box: _Box, path: str, req: Request, send: Send) -> None:
        q, files = req.query, box.local.files
        if path == "/process/execute":
            return await self._execute(box, req, send)
        if path == "/process/session" and req.method == "POST":
            sid = (await req.json()).get("sessionId", "")
            if not isinstance(sid, str) or not _ID.fullmatch(sid):
                return await self._err(req, send, 400, "invalid session id")
            if sid in box.sessions:
                return await self._err(req, send, 409, "session already exists")
            box.sessions[sid] = _Session(sid)
            return await respond(send, 201, b"", "text/plain")
        if path == "/process/session" and req.method == "GET":
            return await respond_json(send, 200, [s.dto() for s in box.sessions.values()])
        if path.startswith("/process/session/"):
            return await self._session(box, path.split("/")[3:], req, send)
        if path in ("/user-home-dir", "/work-dir"):
            return await respond_json(send, 200, {"dir": HOME})
        if path == "/version":
            return await respond_json(send, 200, {"version": "fake-0.226.1"})
        if path == "/files/info":
            return await respond_json(send, 200, _file(await files.stat(q["path"]), ""))
        if path == "/files" and req.method == "GET":
            return await respond_json(
                send, 200, [_file(f, q["path"]) for f in await files.list(q["path"])]
            )
        if path == "/files" and req.method == "DELETE":
            await files.remove(q["path"], recursive=q.get("recursive") == "true")
            return await respond(send, 204, b"", "text/plain")
        if path == "/files/download":
            return await respond(send, 200, await files.read(q["path"]), "application/octet-stream")
        if path == "/files/bulk-download":
            return await self._bulk_download(box, await req.json(), send)
        if path == "/files/bulk-upload":
            fields = _parts(req.headers["content-type"], await req.body())
            done = []
            for name, dest in fields.items():
                if name.endswith("].path"):
                    data = fields.get(name.removesuffix("path") + "file", b"")
                    await files.write(dest.decode(), data, make_parents=True)
                    done.append({"path": dest.decode(), "bytes": len(data)})
            return await respond_json(send, 200, {"files": done})
        if path == "/files/folder":
            if await files.exists(q["path"]):
                return await self._err(req, send, 409, "folder already exists")
            await files.mkdir(q["path"], parents=True)
            await box.local.exec(["chmod", q.get("mode", "755"), q["path"]])
            return await respond(send, 201, b"", "text/plain")
        if path == "/files/move":
            await files.move(q["source"], q["destination"])
            return await respond(send, 200, b"", "text/plain")
        if path == "/files/permissions":
            r = (
                await box.local.exec(["chmod", q["mode"], q["path"]], check=False)
                if q.get("mode")
                else None
            )
            return await respond(
                send, 200 if r is None or r.exit_code == 0 else 400, b"", "text/plain"
            )
        return await self._err(req, send, 404, f"no route {path}")

    async def _execute(self, box: _Box, req: Request, send: Send) -> None:
        body = await req.json()
        cmd = body.get("command")
        if not isinstance(cmd, str) or not cmd.strip():
            return await self._err(req, send, 400, "command cannot be empty or whitespace-only")
        timeout = body.get("timeout") or 0
        cd = f"cd {shlex.quote(body['cwd'])} && " if body.get("cwd") else ""
        r = await box.local.exec(
            ["/bin/sh", "-c", cd + cmd],
            env=body.get("envs") or {},
            timeout_ms=timeout * 1000,
            check=False,
        )
        if r.timed_out:
            return await self._err(req, send, 408, "command execution timeout")
        return await respond_json(
            send, 200, {"exitCode": r.exit_code, "result": r.stdout + r.stderr}
        )

    async def _bulk_download(self, box: _Box, body: dict[str, Any], send: Send) -> None:
        boundary = secrets.token_hex(16)
        out = bytearray()
        for p in body.get("paths") or []:
            try:
                data, name, ctype = (
                    await box.local.files.read(p),
                    "file",
                    "application/octet-stream",
                )
            except ComputeSDKError as exc:
                err = {
                    "message": exc.message,
                    "statusCode": 404,
                    "code": "FILE_NOT_FOUND",
                    "source": p,
                }
                data, name, ctype = (
                    json.dumps(err).encode(),
                    "error",
                    "application/json; charset=utf-8",
                )
            out += (
                (
                    f"--{boundary}\r\nContent-Disposition: form-data; "
                    f'name="{name}"; filename="{p}"\r\n'
                    f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
                ).encode()
                + data
                + b"\r\n"
            )
        out += f"--{boundary}--\r\n".encode()
        await respond(send, 200, bytes(out), f"multipart/form-data; boundary={boundary}")

    async def _session(self, box: _Box, rest: list[str], req: Request, send: Send) -> None:
        session = box.sessions.get(rest[0])
        if session is None:
            return await self._err(req, send, 404, "session not found")
        if rest[1:] == ["exec"]:
            return await self._exec(box, session, req, send)
        if len(rest) == 1 and req.method == "GET":
            return await respond_json(send, 200, session.dto())
        if len(rest) == 1 and req.method == "DELETE":
            del box.sessions[session.id]
            await self._end(session)
            return await respond(send, 204, b"", "text/plain")
        cmd = session.commands.get(rest[2]) if len(rest) >= 3 and rest[1] == "command" else None
        if cmd is None:
            return await self._err(req, send, 404, "command not found")
        if len(rest) == 3:
            return await respond_json(
                send, 200, {"id": cmd.id, "command": cmd.command, "exitCode": cmd.exit_code}
            )
        if rest[3:] == ["input"] and req.method == "POST":
            data = (await req.json()).get("data", "")
            async with cmd.changed:  # a queued command takes input once its shell runs it
                await asyncio.wait_for(
                    cmd.changed.wait_for(lambda: cmd.done or cmd.proc is not None), 30
                )
            if cmd.done or cmd.proc is None:
                return await self._err(
                    req, send, 410, "command has already completed", "COMMAND_ALREADY_COMPLETED"
                )
            data += "" if data.endswith("\n") else "\n"
            await cmd.proc.write_stdin(data.encode())
            if cmd.echo:
                await cmd.add(MARKS["stdout"] + data.encode())
            return await respond(send, 204, b"", "text/plain")
        if rest[3:] == ["logs"]:
            log = bytes(cmd.log)
            if not split_output(req.headers):
                return await respond(send, 200, strip(log), "text/plain; charset=utf-8")
            if server_demux(req.headers):
                out, err = demux(log)
                text = {"output": log, "stdout": out, "stderr": err}
                return await respond_json(
                    send, 200, {k: v.decode(errors="replace") for k, v in text.items()}
                )
            return await respond(send, 200, log, "text/plain; charset=utf-8")
        return await self._err(req, send, 404, "no route")

    async def _exec(self, box: _Box, session: _Session, req: Request, send: Send) -> None:
        body, headers = await req.json(), req.headers
        command = body.get("command") if isinstance(body, dict) else None
        if not isinstance(command, str) or not command.strip():
            return await self._err(req, send, 400, "command cannot be empty")
        run_async = bool(body.get("runAsync") or body.get("async"))
        cmd = _Cmd(command, echo=not body.get("suppressInputEcho"))
        session.commands[cmd.id] = cmd
        task = asyncio.create_task(self._run(box, session, cmd, run_async))
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)
        if run_async:
            return await respond_json(send, 202, {"cmdId": cmd.id})
        await asyncio.wait({task})
        if task.cancelled():
            return await self._err(req, send, 400, "session cancelled")
        log = bytes(cmd.log)
        if not split_output(headers):
            combined = strip(log).decode(errors="replace")
            return await respond_json(
                send, 200, {"cmdId": cmd.id, "output": combined, "exitCode": cmd.exit_code}
            )
        answer: dict[str, Any] = {
            "cmdId": cmd.id,
            "output": log.decode(errors="replace"),
            "exitCode": cmd.exit_code,
        }
        if server_demux(headers):
            out, err = demux(log)
            answer.update(stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))
        return await respond_json(send, 200, answer)

    async def _run(self, box: _Box, session: _Session, cmd: _Cmd, run_async: bool) -> None:
        async with session.lock:
            try:
                # Sync commands see EOF on stdin at once; async ones keep it open for input.
                cmd.proc = await box.local.start_process(
                    ["/bin/sh", "-c", cmd.command], stdin=run_async
                )
                await cmd.add(b"")  # wakes input waiting for the command to start
                async for chunk in box.local.process(cmd.proc.id).attach():
                    await cmd.add(MARKS[chunk.stream] + chunk.data)
                result = await box.local.process(cmd.proc.id).wait()
                await cmd.finish(result.exit_code if not result.signal else 128 + result.signal)
            except ComputeSDKError as exc:
                await cmd.add(MARKS["stderr"] + exc.message.encode() + b"\n")
                await cmd.finish(127)

    async def _end(self, session: _Session) -> None:
        """Deleting a session kills its shell: no exit code is written."""
        for task in list(session.tasks):
            task.cancel()
        for cmd in session.commands.values():
            if cmd.proc is not None and not cmd.done:
                with contextlib.suppress(ComputeSDKError):
                    await cmd.proc.kill()
            if not cmd.done:
                await cmd.finish(None)

    async def _logs_ws(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        parts = scope["path"].split("/")  # /toolbox/{id}/process/session/{s}/command/{c}/logs
        box = self.boxes.get(parts[2]) if len(parts) == 9 else None
        session = box.sessions.get(parts[5]) if box else None
        cmd = session.commands.get(parts[7]) if session else None
        if headers.get("authorization") != f"Bearer {API_KEY}" or cmd is None:
            return await send({"type": "websocket.close", "code": 1008})
        await send({"type": "websocket.accept"})
        keep, pos = split_output(headers), 0
        while True:
            async with cmd.changed:
                while not cmd.done and len(cmd.log) <= pos:
                    await cmd.changed.wait()
                data, pos, done = bytes(cmd.log[pos:]), len(cmd.log), cmd.done
            data = data if keep else strip(data)
            for i in range(0, len(data), WS_FRAME):  # the toolbox sends what each read gave
                await send({"type": "websocket.send", "bytes": data[i : i + WS_FRAME]})
            if done:
                break
        await send({"type": "websocket.close", "code": 1000})

    async def close(self) -> None:
        for box in list(self.boxes.values()):
            for s in box.sessions.values():
                await self._end(s)
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        if self._client is not None:
            await self._client.close()
