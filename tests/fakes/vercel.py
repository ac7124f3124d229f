"""A wire-level fake of Vercel Sandbox's REST API (v2: sandboxes, sessions, NDJSON
commands, tar.gz uploads), modelled on the in-memory double Vercel ships
(vercel/sandbox packages/vercel-sandbox-mock). Each fake sandbox is a real
local sandbox of the daemon under test."""

from __future__ import annotations

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
RUNTIMES = {"node22": "node", "python3.13": "python"}


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


class _Box:
    def __init__(self, name: str, local: Sandbox, body: dict[str, Any]) -> None:
        self.name = name
        self.local = local
        self.session = "se_" + secrets.token_hex(12)
        self.vcpus = int(body.get("resources", {}).get("vcpus", 2))
        self.timeout = int(body.get("timeout", 300_000))
        self.tags = body.get("tags") or {}
        self.created = int(time.time() * 1000)
        self.status = "running"
        self.commands: dict[str, ExecStream] = {}

    def sandbox(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "persistent": False,
            "region": "iad1",
            "vcpus": self.vcpus,
            "memory": 2048 * self.vcpus,
            "timeout": self.timeout,
            "createdAt": self.created,
            "updatedAt": self.created,
            "currentSessionId": self.session,
            "status": self.status,
            "cwd": CWD,
            "tags": self.tags,
        }

    def session_payload(self) -> dict[str, Any]:
        return {
            "id": self.session,
            "memory": 2048 * self.vcpus,
            "vcpus": self.vcpus,
            "region": "iad1",
            "timeout": self.timeout,
            "status": self.status,
            "createdAt": self.created,
            "startedAt": self.created,
            "cwd": CWD,
        }


class FakeVercel:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, _Box] = {}
        self.requests: list[str] = []
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    def _by_session(self, sid: str) -> _Box | None:
        return next((b for b in self.boxes.values() if b.session == sid), None)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive)
        self.requests.append(f"{req.method} {req.path}")
        if req.headers.get("authorization") != f"Bearer {TOKEN}" or req.query.get("teamId") != TEAM:
            return await respond_json(send, *_error(403, "forbidden", "Not authorized"))
        parts = req.path.removeprefix("/api").strip("/").split("/")
        if parts[:2] != ["v2", "sandboxes"]:
            return await respond_json(send, *_error(404, "not_found", "No route"))
        rest = parts[2:]
        try:
            if not rest and req.method == "POST":
                return await self._create(req, send)
            if rest[:1] == ["sessions"] and len(rest) >= 3:
                box = self._by_session(rest[1])
                if box is None or box.status != "running":
                    return await respond_json(
                        send, *_error(410, "sandbox_stopped", "Sandbox is stopped")
                    )
                return await self._session(box, rest[2:], req, send)
            box = self.boxes.get(rest[0]) if rest else None
            if box is None:
                return await respond_json(send, *_error(404, "not_found", "Sandbox not found"))
            if req.method == "GET":
                return await respond_json(
                    send,
                    200,
                    {"sandbox": box.sandbox(), "session": box.session_payload(), "routes": []},
                )
            if req.method == "DELETE":
                del self.boxes[box.name]
                box.status = "stopped"
                await box.local.destroy()
                return await respond_json(send, 200, {"sandbox": box.sandbox()})
        except ComputeSDKError as exc:
            status = 404 if exc.code.name == "NOT_FOUND" else 400
            return await respond_json(send, *_error(status, "bad_request", exc.message))
        return await respond_json(send, *_error(404, "not_found", f"No route for {req.path}"))

    async def _create(self, req: Request, send: Send) -> None:
        body = await req.json()
        if body.get("projectId") != PROJECT:
            return await respond_json(send, *_error(400, "bad_request", "projectId is required"))
        runtime = body.get("runtime", "node22")
        if runtime not in RUNTIMES:
            return await respond_json(
                send, *_error(400, "bad_request", f"Unsupported runtime {runtime}")
            )
        name = body.get("name") or f"sandbox-{secrets.token_hex(6)}"
        local = await (await self.client()).create(
            "local",
            template=RUNTIMES[runtime],
            env=body.get("env") or {},
            keep_alive=True,
            metadata={"fake": "vercel"},
            resources=Resources(memory_mb=2048 * int(body.get("resources", {}).get("vcpus", 2))),
        )
        await local.files.mkdir(CWD)
        box = self.boxes[name] = _Box(name, local, body)
        await respond_json(
            send,
            200,
            {
                "sandbox": box.sandbox(),
                "session": box.session_payload(),
                "routes": [],
                "resumed": False,
            },
        )

    async def _session(self, box: _Box, sub: list[str], req: Request, send: Send) -> None:
        if sub == ["cmd"] and req.method == "POST":
            return await self._run(box, await req.json(), send)
        if len(sub) == 3 and sub[0] == "cmd" and sub[2] == "kill":
            stream = box.commands.get(sub[1])
            if stream is None:
                return await respond_json(send, *_error(404, "not_found", "Command not found"))
            await stream.signal(int((await req.json()).get("signal", 15)))
            return await respond_json(send, 200, {"command": {"id": sub[1]}})
        if sub == ["extend-timeout"]:
            box.timeout += int((await req.json())["duration"])
            return await respond_json(send, 200, {"session": box.session_payload()})
        if sub[:1] == ["fs"] and len(sub) == 2:
            return await self._fs(box, sub[1], req, send)
        return await respond_json(send, *_error(404, "not_found", "No route"))

    async def _run(self, box: _Box, body: dict[str, Any], send: Send) -> None:
        cmd_id = "cmd_" + secrets.token_hex(12)
        stream = box.local.exec_stream(
            [body["command"], *body.get("args", [])],
            cwd=body.get("cwd") or CWD,
            env=body.get("env") or {},
        )
        box.commands[cmd_id] = stream
        started = int(time.time() * 1000)

        def command(exit_code: int | None) -> bytes:
            return (
                json.dumps(
                    {
                        "command": {
                            "id": cmd_id,
                            "name": body["command"],
                            "args": body.get("args", []),
                            "cwd": body.get("cwd") or CWD,
                            "sessionId": box.session,
                            "exitCode": exit_code,
                            "startedAt": started,
                        }
                    }
                ).encode()
                + b"\n"
            )

        if not body.get("wait"):
            return await respond_json(send, 200, json.loads(command(None)))

        async def lines() -> AsyncIterator[bytes]:
            yield command(None)
            try:
                async for chunk in stream:
                    if body.get("logs"):
                        yield (
                            json.dumps(
                                {
                                    "stream": chunk.stream,
                                    "data": chunk.data.decode(errors="replace"),
                                }
                            ).encode()
                            + b"\n"
                        )
            finally:
                box.commands.pop(cmd_id, None)
            ex = stream.exited
            code = (
                ex.exit_code if ex is not None and not ex.signal else 128 + (ex.signal if ex else 9)
            )
            yield command(code)

        await respond_stream(send, 200, "application/x-ndjson", lines())

    async def _fs(self, box: _Box, op: str, req: Request, send: Send) -> None:
        if op == "read":
            body = await req.json()
            path = posixpath.join(body.get("cwd") or CWD, body["path"])
            try:
                data = await box.local.files.read(path)
            except ComputeSDKError:
                return await respond(send, 404)
            return await respond(send, 200, data, "application/octet-stream")
        if op == "mkdir":
            body = await req.json()
            try:
                await box.local.files.mkdir(
                    posixpath.join(body.get("cwd") or CWD, body["path"]), parents=False
                )
            except ComputeSDKError as exc:
                return await respond_json(
                    send, *_error(400, "bad_request", f"mkdir failed: {exc.message}")
                )
            return await respond(send, 200)
        if op == "write":
            base = req.headers.get("x-cwd", "/")
            raw = gzip.decompress(await req.body())
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tar:
                for member in tar.getmembers():
                    f = tar.extractfile(member)
                    if f is None:
                        continue
                    path = posixpath.join(base, member.name)
                    await box.local.files.write(path, f.read(), mode=member.mode)
            return await respond(send, 200)
        return await respond_json(send, *_error(404, "not_found", f"No filesystem op: {op}"))

    async def close(self) -> None:
        for box in list(self.boxes.values()):
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        if self._client is not None:
            await self._client.close()
