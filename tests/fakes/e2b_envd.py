"""The envd half of the E2B fake: what runs inside each E2B sandbox (E2B's
spec/envd: Connect with the JSON codec for the process and filesystem services,
and the /files HTTP API), as envd answers E2B's SDK. Each call runs on the box's
real local sandbox, so output, exit codes and files are real."""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC
from typing import TYPE_CHECKING, Any

import grpc

from computesdk import ComputeSDKError, Process
from computesdk.types import FileInfo

from .asgi import Request, Send, respond, respond_json, respond_stream

if TYPE_CHECKING:
    from .e2b import Box

# The first envd that takes application/octet-stream uploads (the SDK's
# ENVD_OCTET_STREAM_UPLOAD); an older one reads only multipart/form-data.
OCTET_STREAM = (0, 5, 7)
_ENVELOPE = struct.Struct(">BI")
_CONNECT_CODES = {404: "not_found", 409: "already_exists", 400: "invalid_argument"}
_SIGNALS = {"SIGNAL_SIGKILL": 9, "SIGNAL_SIGTERM": 15}
_STATUS = {"NOT_FOUND": 404, "ALREADY_EXISTS": 409, "INVALID_ARGUMENT": 400}
Msg = dict[str, Any]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _stamp(f: FileInfo) -> str:
    return f.modified.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def entry(f: FileInfo) -> Msg:
    """filesystem.EntryInfo in protobuf JSON: int64 as a string, enums by name."""
    kinds = {"file": "FILE_TYPE_FILE", "directory": "FILE_TYPE_DIRECTORY"}
    out: Msg = {
        "name": f.name,
        "type": kinds.get(f.type, "FILE_TYPE_SYMLINK" if f.link_target else "FILE_TYPE_FILE"),
        "path": f.path,
        "size": str(f.size),
        "mode": f.mode,
        "permissions": oct(f.mode),
        "owner": "root",
        "group": "root",
        "modifiedTime": _stamp(f),
    }
    if f.link_target:
        out["symlinkTarget"] = f.link_target
    return out


def frame(obj: Msg, flags: int = 0) -> bytes:
    body = json.dumps(obj).encode()
    return _ENVELOPE.pack(flags, len(body)) + body


def method_is_watch(route: str) -> bool:
    return route.endswith("Filesystem/WatchDir")


def _not_found(what: str) -> ComputeSDKError:
    return ComputeSDKError(what, code=grpc.StatusCode.NOT_FOUND)


class Envd:
    """One box's envd: the fake's envd app hands each authenticated request here."""

    def __init__(self, box: Box, envd_version: str, answers: list[tuple[str, int, bytes]]) -> None:
        self.box = box
        self.version = envd_version
        self.answers = answers  # (route, status, JSON body) of each answer, for the contract test
        self.procs: dict[int, tuple[Process, Msg]] = {}
        self.sent: dict[int, dict[str, int]] = {}  # output already streamed, per pid

    async def handle(self, req: Request, send: Send) -> None:
        try:
            if req.path == "/health":
                return await respond(send, 204)
            if req.path == "/files":
                return await self._files(req, send)
            method = req.path.strip("/")
            stream = {
                "process.Process/Start": self._start,
                "process.Process/Connect": self._connect,
                "filesystem.Filesystem/WatchDir": self._watch,
            }.get(method)
            if stream is not None:
                return await self._serve_stream(req, send, stream)
            handler = getattr(self, "_rpc_" + method.replace(".", "_").replace("/", "_"), None)
            if handler is None:
                return await respond_json(send, 404, {"code": "unimplemented", "message": method})
            await self._json(send, f"envd {method}", 200, await handler(await req.json()))
        except ComputeSDKError as exc:
            status = _STATUS.get(exc.code.name, 500)
            if req.path == "/files":
                err = {"code": status, "message": exc.message}
                return await self._json(send, "envd /files", status, err)
            code = _CONNECT_CODES.get(status, "internal")
            await respond_json(send, status, {"code": code, "message": exc.message})

    async def _json(self, send: Send, route: str, status: int, body: Any) -> None:
        self.answers.append((route, status, json.dumps(body).encode()))
        await respond_json(send, status, body)

    # ------------------------------------------------------------ /files

    def _home(self, req: Request) -> str:
        return "/root" if req.query.get("username", "user") == "root" else "/home/user"

    def _resolve(self, req: Request, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self._home(req), path)

    async def _files(self, req: Request, send: Send) -> None:
        files = self.box.local.files
        if req.method == "GET":
            path = self._resolve(req, req.query.get("path", ""))
            if (await files.stat(path)).is_dir:
                return await respond_json(
                    send, 400, {"code": 400, "message": f"path '{path}' is a directory"}
                )
            data = await files.read(path)
            rng = req.headers.get("range", "")
            if not rng.startswith("bytes="):
                return await respond(send, 200, data, "application/octet-stream")
            first, _, last = rng[6:].partition("-")
            start = int(first)
            if start >= len(data) and data:
                return await respond(send, 416)
            end = int(last) + 1 if last else len(data)
            headers = {"content-range": f"bytes {start}-{end - 1}/{len(data)}"}
            return await respond(send, 206, data[start:end], "application/octet-stream", headers)
        ctype = req.headers.get("content-type", "")
        written: list[str] = []
        if ctype.startswith("multipart/form-data"):
            parts = _multipart(ctype, await req.body())
            if not parts:
                return await respond_json(send, 400, {"code": 400, "message": "no file in form"})
            for name, data in parts:
                target = req.query.get("path") if len(parts) == 1 else None
                path = self._resolve(req, target or name)
                await files.write(path, data)
                written.append(path)
        elif ctype == "application/octet-stream" and version(self.version) >= OCTET_STREAM:
            if not req.query.get("path"):
                return await respond_json(send, 400, {"code": 400, "message": "path is required"})
            path = self._resolve(req, req.query["path"])
            await files.write(path, req.chunks())
            written.append(path)
        else:
            return await respond_json(
                send, 400, {"code": 400, "message": f"unsupported content type {ctype!r}"}
            )
        body = [{"name": posixpath.basename(p), "type": "file", "path": p} for p in written]
        await self._json(send, f"envd {req.method} /files", 200, body)

    # ------------------------------------------------------------ streams

    async def _serve_stream(self, req: Request, send: Send, make: Any) -> None:
        raw = await req.body()
        _flags, n = _ENVELOPE.unpack_from(raw)
        msg = json.loads(raw[_ENVELOPE.size : _ENVELOPE.size + n])
        deadline_ms = req.headers.get("connect-timeout-ms", "")
        deadline = time.monotonic() + int(deadline_ms) / 1000 if deadline_ms else None
        events: AsyncIterator[Msg] = await make(msg)
        route = "envd " + req.path.strip("/")

        ping = float(req.headers.get("keepalive-ping-interval", "0") or 0)
        keepalive = {"keepalive": {}} if method_is_watch(route) else {"event": {"keepalive": {}}}

        async def frames() -> AsyncIterator[bytes]:
            it = aiter(events)
            pending: asyncio.Task[Msg] | None = None
            try:
                while True:
                    left = None if deadline is None else max(deadline - time.monotonic(), 0)
                    wait = min(x for x in (left, ping or None, 1e9) if x is not None)
                    pending = pending or asyncio.ensure_future(anext(it))
                    done, _ = await asyncio.wait({pending}, timeout=wait)
                    if not done and left is not None and left <= wait:
                        err = {"code": "deadline_exceeded", "message": "context deadline exceeded"}
                        yield frame({"error": err}, flags=0x02)
                        return
                    if not done:  # envd pings an idle stream when asked to
                        self.answers.append((route, 200, json.dumps(keepalive).encode()))
                        yield frame(keepalive)
                        continue
                    try:
                        ev = pending.result()
                    except StopAsyncIteration:
                        self.answers.append((route + " end", 200, b"{}"))
                        yield frame({}, flags=0x02)
                        return
                    pending = None
                    self.answers.append((route, 200, json.dumps(ev).encode()))
                    yield frame(ev)
            finally:
                if pending is not None:
                    pending.cancel()

        await respond_stream(send, 200, "application/connect+json", frames())

    async def _start(self, msg: Msg) -> AsyncIterator[Msg]:
        cfg = msg["process"]
        proc = await self.box.local.start_process(
            [cfg["cmd"], *cfg.get("args", [])],
            cwd=cfg.get("cwd") or "/root",
            env=cfg.get("envs") or {},
            stdin=msg.get("stdin", True),  # optional in the proto; envd defaults to true
            tag=msg.get("tag", ""),
        )
        self.procs[proc.pid] = (proc, cfg)
        self.sent[proc.pid] = {"stdout": 0, "stderr": 0}
        return self._events(proc)

    async def _connect(self, msg: Msg) -> AsyncIterator[Msg]:
        proc = self._proc(msg)
        return self._events(proc, **{f"{k}_offset": v for k, v in self.sent[proc.pid].items()})

    async def _events(self, proc: Process, **offsets: int) -> AsyncIterator[Msg]:
        yield {"event": {"start": {"pid": proc.pid}}}
        async for chunk in proc.attach(**offsets):
            sent = self.sent.get(proc.pid)
            if sent is not None:
                sent[chunk.stream] += len(chunk.data)
            yield {"event": {"data": {chunk.stream: base64.b64encode(chunk.data).decode()}}}
        self.procs.pop(proc.pid, None)
        ex = proc.exited
        assert ex is not None
        end: Msg = {"exited": True}
        if ex.signal:
            names = {9: "signal: killed", 15: "signal: terminated"}
            end.update(exitCode=-1, status=names.get(ex.signal, f"signal: {ex.signal}"))
        else:
            end.update(exitCode=ex.exit_code, status=f"exit status {ex.exit_code}")
        if not end["exitCode"]:
            del end["exitCode"]  # protobuf JSON leaves out zero values
        yield {"event": {"end": end}}

    async def _watch(self, msg: Msg) -> AsyncIterator[Msg]:
        path = msg["path"]
        if not (await self.box.local.files.stat(path)).is_dir:
            raise ComputeSDKError(f"path {path} not a directory", code=grpc.StatusCode.NOT_FOUND)
        return self._watch_events(path, bool(msg.get("includeEntry")))

    async def _watch_events(self, path: str, include_entry: bool) -> AsyncIterator[Msg]:
        """envd watches with inotify; the fake compares listings a few times a second."""
        seen = {f.name: f for f in await self.box.local.files.list(path)}
        yield {"start": {}}  # WatchDirResponse: the oneof's fields are its own
        while True:
            await asyncio.sleep(0.1)
            now = {f.name: f for f in await self.box.local.files.list(path)}
            changes = [(n, "EVENT_TYPE_CREATE") for n in now.keys() - seen.keys()]
            changes += [(n, "EVENT_TYPE_REMOVE") for n in seen.keys() - now.keys()]
            changes += [
                (n, "EVENT_TYPE_WRITE")
                for n in now.keys() & seen.keys()
                if (now[n].size, now[n].modified) != (seen[n].size, seen[n].modified)
            ]
            for name, kind in sorted(changes):
                ev: Msg = {"name": name, "type": kind}
                if include_entry and name in now:
                    ev["entry"] = entry(now[name])
                yield {"filesystem": ev}
            seen = now

    # ------------------------------------------------------------ unary

    def _proc(self, msg: Msg) -> Process:
        pid = int(msg["process"]["pid"])
        if pid not in self.procs:
            raise _not_found(f"process with pid {pid} not found")
        return self.procs[pid][0]

    async def _rpc_process_Process_SendInput(self, msg: Msg) -> Msg:
        await self._proc(msg).write_stdin(base64.b64decode(msg["input"]["stdin"]))
        return {}

    async def _rpc_process_Process_CloseStdin(self, msg: Msg) -> Msg:
        await self._proc(msg).write_stdin(b"", close=True)
        return {}

    async def _rpc_process_Process_SendSignal(self, msg: Msg) -> Msg:
        await self._proc(msg).signal(_SIGNALS[msg["signal"]])
        return {}

    async def _rpc_process_Process_List(self, msg: Msg) -> Msg:
        procs = [{"config": cfg, "pid": pid} for pid, (_, cfg) in self.procs.items()]
        return {"processes": procs}

    async def _rpc_filesystem_Filesystem_Stat(self, msg: Msg) -> Msg:
        return {"entry": entry(await self.box.local.files.stat(msg["path"]))}

    async def _rpc_filesystem_Filesystem_ListDir(self, msg: Msg) -> Msg:
        depth = int(msg.get("depth") or 1)
        return {"entries": [entry(f) for f in await self._walk(msg["path"], depth)]}

    async def _walk(self, path: str, depth: int) -> list[FileInfo]:
        out = []
        for f in await self.box.local.files.list(path):
            out.append(f)
            if f.is_dir and depth > 1:
                out += await self._walk(f.path, depth - 1)
        return out

    async def _rpc_filesystem_Filesystem_MakeDir(self, msg: Msg) -> Msg:
        if await self.box.local.files.exists(msg["path"]):
            raise ComputeSDKError(
                f"directory {msg['path']} already exists", code=grpc.StatusCode.ALREADY_EXISTS
            )
        return {"entry": entry(await self.box.local.files.mkdir(msg["path"]))}

    async def _rpc_filesystem_Filesystem_Move(self, msg: Msg) -> Msg:
        moved = await self.box.local.files.move(msg["source"], msg["destination"])
        return {"entry": entry(moved)}

    async def _rpc_filesystem_Filesystem_Remove(self, msg: Msg) -> Msg:
        await self.box.local.files.remove(msg["path"], recursive=True)
        return {}


def _multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """Every part named "file": (its file name, its bytes)."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    out = []
    for part in body.split(b"--" + boundary)[1:]:
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep or b'name="file"' not in head:
            continue
        name = (
            head.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
            if b"filename=" in head
            else ""
        )
        out.append((name.replace("%22", '"'), data[:-2] if data.endswith(b"\r\n") else data))
    return out
