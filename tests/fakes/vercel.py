"""A wire-level fake of Vercel Sandbox's REST API as Vercel's official SDKs use it
(@vercel/sandbox 3.5.0 and Python vercel 0.12.1 drive it: tests/test_vercel_contract.py):
v3 create from an image and v2 from a runtime, sandboxes by name (scoped by projectId, as
a personal token needs), list by tag and name prefix, sessions, NDJSON commands (wait and
logs, detached, logs replay, wait, kill, stdin by offset, a command's timeout), routes for the
ports declared at create (`{url, port, subdomain}`, at https://<subdomain>.vercel.run as
sandbox.domain(port) builds it), the tar.gz file API. Answers
carry what the SDKs' validators require, shaped like Vercel's own mock (vercel/sandbox
packages/vercel-sandbox-mock). Vercel's published limits hold (5 tags, 1 or an even number
of vCPUs up to 8, 24 hours, 15 ports); sandboxes persist unless created persistent: false.
Each fake sandbox is a real local sandbox of the daemon under test."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import io
import json
import posixpath
import secrets
import tarfile
import time
from collections.abc import AsyncIterator
from typing import Any

from computesdk import Client, ComputeSDKError, ExecStream, Resources, Sandbox

from .asgi import Receive, Request, Scope, Send, respond, respond_json, respond_stream

TOKEN = "vercel_fake_token"
TEAM = "team_fake"
PROJECT = "prj_fake"
CWD = "/vercel/sandbox"
REGION = "iad1"
# The PATH a Vercel sandbox's commands get unless they set their own.
PATH = "/vercel/bin:/vercel/runtimes/node22/bin:/usr/local/sbin:/usr/local/bin:/usr/bin:/bin"
RUNTIMES = {"node22": "node", "node24": "node", "node26": "node", "python3.13": "python"}
IMAGES = {"universal", "node:22", "node:24", "node:26", "python:3.14", "ubuntu", "arch"}
MAX_TAGS, MAX_VCPUS, MAX_PORTS, MAX_TIMEOUT_MS = 5, 8, 15, 24 * 3600 * 1000
STDIN_BODY_LIMIT = 1_000_000


def _now() -> int:
    return int(time.time() * 1000)


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class _Cmd:
    """A command: its output kept for logs replay, its exit, its stdin."""

    def __init__(self, cid: str, box: _Box, body: dict[str, Any], stream: ExecStream) -> None:
        self.id, self.box, self.body, self.stream = cid, box, body, stream
        self.started = _now()
        self.ended: int | None = None
        self.logs: list[dict[str, Any]] = []
        self.exit_code: int | None = None
        self.done = asyncio.Event()
        self.cond = asyncio.Condition()
        self.stdin_open = bool(body.get("attachStdin"))
        self.stdin_written = 0
        self.task = asyncio.create_task(self._pump())
        # Vercel kills a command past its timeout (ms), as the SDKs' killAfter asks.
        limit = body.get("timeout")
        self._timer = (
            asyncio.get_running_loop().call_later(limit / 1000, self._expire)
            if isinstance(limit, int) and limit > 0
            else None
        )

    def _expire(self) -> None:
        if not self.done.is_set():
            self._killer = asyncio.create_task(self.stream.signal(9))

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.body["command"],
            "args": self.body.get("args") or [],
            "cwd": self.body.get("cwd") or CWD,
            "sessionId": self.box.session,
            "exitCode": self.exit_code,
            "startedAt": self.started,
            **({"durationMs": self.ended - self.started} if self.ended is not None else {}),
        }

    async def _pump(self) -> None:
        try:
            async for chunk in self.stream:
                await self._add(
                    {"stream": chunk.stream, "data": chunk.data.decode(errors="replace")}
                )
        except ComputeSDKError as exc:
            await self._add(
                {"stream": "error", "data": {"code": "internal", "message": exc.message}}
            )
        ex = self.stream.exited
        self.exit_code = (
            ex.exit_code if ex is not None and not ex.signal else 128 + (ex.signal if ex else 9)
        )
        self.stdin_open = False
        self.ended = _now()
        if self._timer is not None:
            self._timer.cancel()
        self.done.set()
        async with self.cond:
            self.cond.notify_all()

    async def _add(self, rec: dict[str, Any]) -> None:
        self.logs.append(rec)
        async with self.cond:
            self.cond.notify_all()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every log record from the first, then new ones until the command ends."""
        i = 0
        while True:
            while i < len(self.logs):
                yield self.logs[i]
                i += 1
            if self.done.is_set():
                return
            async with self.cond:
                if i == len(self.logs) and not self.done.is_set():
                    await self.cond.wait()


class _Box:
    def __init__(self, name: str, local: Sandbox, body: dict[str, Any], image: str) -> None:
        self.name, self.local, self.image = name, local, image
        self.runtime = body.get("runtime")
        self.session = "se_" + secrets.token_hex(12)
        self.vcpus = int((body.get("resources") or {}).get("vcpus") or 2)
        # The sandbox's default timeout; extend-timeout lengthens the session's.
        self.timeout = self.session_timeout = int(body.get("timeout") or 300_000)
        self.tags: dict[str, str] = body.get("tags") or {}
        self.env: dict[str, str] = body.get("env") or {}
        self.persistent = body.get("persistent", True) is not False
        self.created = self.updated = _now()
        self.stopped: int | None = None
        self.status = "running"
        self.commands: dict[str, _Cmd] = {}
        self.routes = [
            {"url": f"https://{sub}.vercel.run", "port": port, "subdomain": sub}
            for port in body.get("ports") or []
            for sub in [f"sb-{secrets.token_hex(6)}-{port}"]
        ]

    def sandbox(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "persistent": self.persistent,
            "region": REGION,
            "vcpus": self.vcpus,
            "memory": 2048 * self.vcpus,
            "timeout": self.timeout,
            "createdAt": self.created,
            "updatedAt": self.updated,
            "currentSessionId": self.session,
            "status": self.status,
            "statusUpdatedAt": self.updated,
            "cwd": CWD,
            "tags": self.tags,
            "projectId": PROJECT,
        }
        return {**out, **({"runtime": self.runtime} if self.runtime else {"image": self.image})}

    def session_payload(self) -> dict[str, Any]:
        out = {
            "id": self.session,
            "sourceSandboxName": self.name,
            "projectId": PROJECT,
            "memory": 2048 * self.vcpus,
            "vcpus": self.vcpus,
            "region": REGION,
            "timeout": self.session_timeout,
            "status": self.status,
            "requestedAt": self.created,
            "createdAt": self.created,
            "startedAt": self.created,
            "updatedAt": self.updated,
            "cwd": CWD,
        }
        return {**out, **({"stoppedAt": self.stopped} if self.stopped else {})}

    async def stop(self) -> None:
        if self.status == "running":
            self.status, self.stopped = "stopped", _now()
            self.updated = self.stopped
            with contextlib.suppress(ComputeSDKError):
                await self.local.destroy()


class FakeVercel:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, _Box] = {}
        self.requests: list[str] = []
        # Every answer but file bytes, (method, path, status, body), for model checks.
        self.answers: list[tuple[str, str, int, bytes]] = []
        # Set by a test: the next command's stream breaks with this {code, message}.
        self.break_next_command: dict[str, str] | None = None
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    def _by_session(self, sid: str) -> _Box | None:
        return next((b for b in self.boxes.values() if b.session == sid), None)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = [0], bytearray()

        async def kept(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                octets = (b"content-type", b"application/octet-stream") in msg["headers"]
                status[0] = -1 if octets else msg["status"]
            elif status[0] > 0:
                body.extend(msg.get("body", b""))
            await send(msg)

        await self._handle(Request(scope, receive), scope, kept)
        if status[0] > 0:
            self.answers.append((scope["method"], scope["path"], status[0], bytes(body)))

    async def _handle(self, req: Request, scope: Scope, send: Send) -> None:
        self.requests.append(f"{req.method} {req.path}?{scope['query_string'].decode()}")
        if req.headers.get("authorization") != f"Bearer {TOKEN}" or req.query.get("teamId") != TEAM:
            return await respond_json(send, *_error(403, "forbidden", "Not authorized"))
        parts = req.path.removeprefix("/api").strip("/").split("/")
        try:
            if parts == ["v3", "sandboxes"] and req.method == "POST":
                return await self._create(req, send, v3=True)
            if parts[:2] != ["v2", "sandboxes"]:
                return await respond_json(send, *_error(404, "not_found", "No route"))
            rest = parts[2:]
            if not rest and req.method == "POST":
                return await self._create(req, send, v3=False)
            if rest[:1] == ["sessions"] and len(rest) >= 2:
                return await self._session(rest[1], rest[2:], req, send)
            # A personal token names the project on every call about sandboxes.
            if req.query.get("projectId" if rest else "project") != PROJECT:
                return await respond_json(
                    send, *_error(400, "bad_request", "projectId is required with this token")
                )
            if not rest and req.method == "GET":
                return await respond_json(send, 200, self._list(req.query))
            box = self.boxes.get(rest[0])
            if box is None or len(rest) != 1:
                return await respond_json(send, *_error(404, "not_found", "Sandbox not found"))
            if req.method == "GET":
                body = {"sandbox": box.sandbox(), "session": box.session_payload()}
                body |= {"routes": box.routes, "resumed": False}
                return await respond_json(send, 200, body)
            if req.method == "DELETE":
                del self.boxes[box.name]
                await box.stop()
                return await respond_json(send, 200, {"sandbox": box.sandbox()})
        except ComputeSDKError as exc:
            status = 404 if exc.code.name == "NOT_FOUND" else 400
            return await respond_json(send, *_error(status, "bad_request", exc.message))
        return await respond_json(send, *_error(404, "not_found", f"No route for {req.path}"))

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        boxes = [b for b in self.boxes.values() if b.name.startswith(query.get("namePrefix", ""))]
        if tag := query.get("tags"):
            key, _, value = tag.partition(":")
            boxes = [b for b in boxes if b.tags.get(key) == value]
        boxes.sort(key=lambda b: b.created, reverse=query.get("sortOrder") != "asc")
        start, limit = int(query.get("cursor") or 0), min(int(query.get("limit") or 50), 100)
        page, more = boxes[start : start + limit], start + limit < len(boxes)
        return {
            "sandboxes": [b.sandbox() for b in page],
            "pagination": {"count": len(page), "next": str(start + limit) if more else None},
        }

    def _refusal(self, body: dict[str, Any], v3: bool) -> str:
        """Why Vercel refuses this create body, or ''."""
        if body.get("projectId") != PROJECT:
            return "projectId is required"
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
            return f"A sandbox can have at most {MAX_TAGS} tags"
        vcpus = (body.get("resources") or {}).get("vcpus", 2)
        if not isinstance(vcpus, int) or not (vcpus == 1 or vcpus % 2 == 0) or vcpus > MAX_VCPUS:
            return f"vcpus must be 1 or an even number up to {MAX_VCPUS}"
        timeout = body.get("timeout", 300_000)
        if not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT_MS:
            return f"timeout must be at most {MAX_TIMEOUT_MS} ms on this plan"
        ports = body.get("ports") or []
        if not isinstance(ports, list) or len(ports) > MAX_PORTS:
            return f"A sandbox can expose at most {MAX_PORTS} ports"
        if any(not isinstance(p, int) or not 0 < p < 65536 for p in ports):
            return "ports must be numbers from 1 to 65535"
        if v3 and "runtime" in body:
            return "runtime is not accepted by v3; use image"
        if not v3 and body.get("runtime", "node22") not in RUNTIMES:
            return f"Unsupported runtime {body.get('runtime')}"
        if v3 and body.get("image", "universal").removeprefix("vercel/sandbox/") not in IMAGES:
            return f"Image not found: {body.get('image')}"
        return ""

    async def _create(self, req: Request, send: Send, v3: bool) -> None:
        body = await req.json()
        if why := self._refusal(body, v3):
            return await respond_json(send, *_error(400, "bad_request", why))
        name = body.get("name") or f"sandbox-{secrets.token_hex(6)}"
        if name in self.boxes:
            return await respond_json(send, *_error(409, "conflict", "Sandbox already exists"))
        image = str(body.get("image") or "vercel/sandbox/universal")
        which = str(body.get("runtime") or image)
        vcpus = int((body.get("resources") or {}).get("vcpus", 2))
        local = await (await self.client()).create(
            "local",
            template="python" if "python" in which else "node",
            env={"PATH": PATH, **(body.get("env") or {})},
            keep_alive=True,
            metadata={"fake": "vercel"},
            resources=Resources(memory_mb=2048 * vcpus),
        )
        await local.files.mkdir(CWD)
        box = self.boxes[name] = _Box(name, local, body, image)
        payload = {"sandbox": box.sandbox(), "session": box.session_payload(), "routes": box.routes}
        await respond_json(send, 200, {**payload, "resumed": False})

    async def _session(self, sid: str, sub: list[str], req: Request, send: Send) -> None:
        box = self._by_session(sid)
        if box is None:
            return await respond_json(send, *_error(404, "not_found", "Session not found"))
        if not sub and req.method == "GET":
            body = {"session": box.session_payload(), "routes": box.routes}
            return await respond_json(send, 200, body)
        if sub == ["stop"] and req.method == "POST":
            await box.stop()
            return await respond_json(
                send, 200, {"session": box.session_payload(), "sandbox": box.sandbox()}
            )
        if box.status != "running":
            return await respond_json(send, *_error(410, "sandbox_stopped", "Sandbox is stopped"))
        if sub == ["extend-timeout"] and req.method == "POST":
            duration = (await req.json()).get("duration")
            if not isinstance(duration, int) or duration <= 0:
                return await respond_json(send, *_error(400, "bad_request", "Invalid duration"))
            if box.session_timeout + duration > MAX_TIMEOUT_MS:
                why = f"A sandbox runs at most {MAX_TIMEOUT_MS} ms on this plan"
                return await respond_json(send, *_error(400, "bad_request", why))
            box.session_timeout += duration
            box.updated = _now()
            return await respond_json(send, 200, {"session": box.session_payload()})
        if sub[:1] == ["cmd"]:
            return await self._cmd(box, sub[1:], req, send)
        if sub[:1] == ["fs"] and len(sub) == 2:
            return await self._fs(box, sub[1], req, send)
        return await respond_json(send, *_error(404, "not_found", "No route"))

    async def _cmd(self, box: _Box, sub: list[str], req: Request, send: Send) -> None:
        if not sub and req.method == "POST":
            return await self._run(box, await req.json(), send)
        if not sub and req.method == "GET":
            cmds = [c.payload() for c in box.commands.values()]
            return await respond_json(send, 200, {"commands": cmds})
        cmd = box.commands.get(sub[0])
        if cmd is None:
            return await respond_json(send, *_error(404, "not_found", "Command not found"))
        if len(sub) == 1 and req.method == "GET":
            if req.query.get("wait") == "true":
                await cmd.done.wait()
            return await respond_json(send, 200, {"command": cmd.payload()})
        if sub[1:] == ["kill"] and req.method == "POST":
            if not cmd.done.is_set():
                await cmd.stream.signal(int((await req.json()).get("signal", 15)))
            return await respond_json(send, 200, {"command": cmd.payload()})
        if sub[1:] == ["logs"] and req.method == "GET":
            lines = (_line(rec) async for rec in cmd.follow())
            return await respond_stream(send, 200, "application/x-ndjson", lines)
        if sub[1:] == ["stdin"] and req.method == "POST":
            return await self._stdin(cmd, await req.body(), send)
        return await respond_json(send, *_error(404, "not_found", "No route"))

    async def _run(self, box: _Box, body: dict[str, Any], send: Send) -> None:
        if not isinstance(body.get("command"), str) or not body["command"]:
            return await respond_json(send, *_error(400, "bad_request", "command is required"))
        cid = "cmd_" + secrets.token_hex(12)
        broken, self.break_next_command = self.break_next_command, None
        stream = box.local.exec_stream(
            [body["command"], *(body.get("args") or [])],
            cwd=body.get("cwd") or CWD,
            env={**box.env, **(body.get("env") or {})},
            interactive=bool(body.get("attachStdin")),
        )
        cmd = box.commands[cid] = _Cmd(cid, box, body, stream)
        if not body.get("wait"):
            return await respond_json(send, 200, {"command": cmd.payload()})

        async def lines() -> AsyncIterator[bytes]:
            yield _line({"command": cmd.payload()})
            if broken is not None:  # the vendor fails mid-stream
                yield _line({"stream": "error", "data": broken})
                return
            async for rec in cmd.follow():
                if body.get("logs") or rec["stream"] == "error":
                    yield _line(rec)
            yield _line({"command": cmd.payload()})

        await respond_stream(send, 200, "application/x-ndjson", lines())

    async def _stdin(self, cmd: _Cmd, raw: bytes, send: Send) -> None:
        if len(raw) > STDIN_BODY_LIMIT:
            return await respond_json(send, *_error(413, "payload_too_large", "Body over 1 MB"))
        body = json.loads(raw or b"{}")
        if not cmd.stdin_open:
            why = "The command's stdin is not attached or was closed"
            return await respond_json(send, *_error(400, "command_stdin_unavailable", why))
        try:
            data = base64.b64decode(body.get("data") or "", validate=True)
        except binascii.Error:
            return await respond_json(send, *_error(400, "bad_request", "data is not base64"))
        offset = body.get("offset", cmd.stdin_written)
        if not isinstance(offset, int) or not 0 <= offset <= cmd.stdin_written:
            why = f"offset must be at most the {cmd.stdin_written} bytes written"
            return await respond_json(send, *_error(400, "bad_request", why))
        new = data[cmd.stdin_written - offset :]  # what an earlier attempt did not deliver
        if new:
            await cmd.stream.send_stdin(new)
            cmd.stdin_written += len(new)
        if body.get("close"):
            await cmd.stream.close_stdin()
            cmd.stdin_open = False
        answer = {"command": cmd.payload(), "bytesWritten": cmd.stdin_written}
        return await respond_json(send, 200, answer)

    async def _fs(self, box: _Box, op: str, req: Request, send: Send) -> None:
        if op in ("read", "mkdir"):
            body = await req.json()
            path = posixpath.join(body.get("cwd") or CWD, body["path"])
        if op == "read":
            try:
                data = await box.local.files.read(path)
            except ComputeSDKError:
                return await respond_json(send, *_error(404, "file_not_found", "File not found"))
            return await respond(send, 200, data, "application/octet-stream")
        if op == "mkdir":
            try:
                await box.local.files.mkdir(path, parents=False)
            except ComputeSDKError as exc:
                why = f"mkdir failed: {exc.message}"
                return await respond_json(send, *_error(400, "bad_request", why))
            return await respond_json(send, 200, {})
        if op == "write":
            base = req.headers.get("x-cwd", "/")
            raw = gzip.decompress(await req.body())
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tar:
                for member in tar.getmembers():
                    path = posixpath.join(base, member.name)
                    if member.isdir():
                        await box.local.files.mkdir(path, parents=True)
                    elif (f := tar.extractfile(member)) is not None:
                        await box.local.files.write(path, f.read(), mode=member.mode)
            return await respond_json(send, 200, {})
        return await respond_json(send, *_error(404, "not_found", f"No filesystem op: {op}"))

    async def close(self) -> None:
        for box in list(self.boxes.values()):
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        if self._client is not None:
            await self._client.close()
