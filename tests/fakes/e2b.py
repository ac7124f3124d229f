"""A wire-level fake of E2B as its official SDK (e2b, pinned in daemon[dev]) speaks
to it: the REST API (spec/openapi.yml: v1 and v2 create, list, info, kill,
timeout, connect, pause, metrics), envd inside each sandbox (e2b_envd.py), and
E2B's proxy to a sandbox's other ports (e2b_proxy.py). Each fake sandbox is a
real local sandbox of the daemon under test.

It follows E2B, not our adapter: every sandbox is secured (envd answers only
with the sandbox's access token), a timeout past the plan's longest life is
refused as E2B refuses it, and E2B's life limit counts from the start.
tests/test_e2b_contract.py drives it with the unmodified SDK and checks every
answer it gives against the SDK's own models (answers, below, records them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from computesdk import Client, ComputeSDKError, Sandbox

from .asgi import Receive, Request, Scope, Send, respond, respond_json
from .e2b_envd import Envd
from .e2b_proxy import ENVD_PORT, serve_port

API_KEY = "e2b_fake_key_for_tests"
ENVD_VERSION = "0.5.7"
HOBBY_HOURS = 1  # E2B's Hobby plan: a sandbox lives at most 1 h
PAGE_MAX = 100
# E2B's proxy routes https://PORT-SANDBOXID.DOMAIN to that port of the sandbox.
HOST = re.compile(r"(\d{1,5})-([A-Za-z0-9]+)\.[A-Za-z0-9.-]+(:\d+)?")
Msg = dict[str, Any]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _error(code: int, message: str) -> Msg:
    return {"code": code, "message": message}


class Box:
    def __init__(
        self,
        sid: str,
        body: Msg,
        local: Sandbox,
        timeout_s: int,
        max_s: int,
        envd: tuple[str, list[tuple[str, int, bytes]]],
        public: bool = True,
    ) -> None:
        self.id = sid
        self.template = body["templateID"]
        self.local = local
        self.metadata: dict[str, str] = body.get("metadata") or {}
        self.token = secrets.token_hex(16)
        # A sandbox whose URLs are not public needs this in e2b-traffic-access-token.
        self.public = public
        self.traffic_token = None if public else secrets.token_urlsafe(24)
        self.port_urls: dict[int, str] = {}  # the local sandbox's forward of each port
        self.started = time.time()
        self.max_end = self.started + max_s
        self.end_at = min(self.started + timeout_s, self.max_end)
        self.state = "running"
        self.envd = Envd(self, *envd)

    def sandbox(self) -> Msg:
        """A Sandbox, as create and connect answer it."""
        return {
            "templateID": self.template,
            "sandboxID": self.id,
            "clientID": "fake",
            "envdVersion": self.envd.version,
            "envdAccessToken": self.token,
            "trafficAccessToken": self.traffic_token,
            "domain": None,
        }

    def listed(self) -> Msg:
        """A ListedSandbox."""
        return {
            "templateID": self.template,
            "sandboxID": self.id,
            "clientID": "fake",
            "startedAt": _iso(self.started),
            "endAt": _iso(self.end_at),
            "cpuCount": 1,
            "memoryMB": 1024,
            "diskSizeMB": 2048,
            "metadata": self.metadata,
            "state": self.state,
            "envdVersion": self.envd.version,
        }

    def keep_alive(self, timeout_s: int, allow_shorter: bool) -> Msg | None:
        """E2B's KeepAliveFor: never past the plan's longest life; an error, if any."""
        now = time.time()
        if now - self.started > self.max_end - self.started:
            return _error(400, "Max instance length exceeded")
        end = now + min(timeout_s, max(self.max_end - now, 0))
        if allow_shorter or end > self.end_at:
            self.end_at = end
        return None


class FakeE2B:
    def __init__(self, daemon_socket: str) -> None:
        self.daemon_socket = daemon_socket
        self.boxes: dict[str, Box] = {}
        self.fail_with = 0  # when set, every request gets this status
        # When set, envd serves this many more requests, then answers 503.
        self.envd_budget: int | None = None
        self.max_hours = HOBBY_HOURS
        # The project's rule for sandboxes that do not choose: E2B's default is public.
        self.public_by_default = True
        self.envd_version = ENVD_VERSION  # what new sandboxes run
        self.requests: list[str] = []
        self.bodies: list[tuple[str, Any]] = []  # (route, JSON body) of each REST request
        self.answers: list[tuple[str, int, bytes]] = []  # (route, status, body) given
        self._idempotent: dict[str, str] = {}
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(socket=self.daemon_socket)
        return self._client

    async def _answer(self, send: Send, route: str, status: int, body: Any = None) -> None:
        raw = b"" if body is None else json.dumps(body).encode()
        self.answers.append((route, status, raw))
        if body is None:
            return await respond(send, status)
        await respond(send, status, raw)

    # ------------------------------------------------------------ REST API

    async def api(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive)
        self.requests.append(f"{req.method} {req.path}")
        if self.fail_with:
            return await respond_json(send, self.fail_with, _error(self.fail_with, "unavailable"))
        if req.headers.get("x-api-key") != API_KEY:
            return await respond_json(send, 401, _error(401, "Invalid API key"))
        body = await req.json() if req.method in ("POST", "PUT") else None
        parts = req.path.strip("/").split("/")
        v2 = parts[:1] == ["v2"]
        parts = parts[1:] if v2 else parts
        route = f"{req.method} {'/v2' if v2 else ''}/{parts[0]}" + (
            "/{id}" if len(parts) > 1 else ""
        )
        route += "".join(f"/{p}" for p in parts[2:])
        self.bodies.append((route, body))
        if parts == ["sandboxes"]:
            if req.method == "POST":
                return await self._create(req, send, route, body, v2)
            if req.method == "GET":
                return await self._list(req, send, route, v2)
        if parts[0] != "sandboxes" or len(parts) < 2:
            return await self._answer(send, route, 404, _error(404, "not found"))
        box = self._live(parts[1])
        if box is None:
            return await self._answer(
                send, route, 404, _error(404, f"sandbox {parts[1]} not found")
            )
        await self._sandbox_call(req, send, route, box, parts[2:], body)

    def _live(self, sid: str) -> Box | None:
        box = self.boxes.get(sid)
        if box is not None and box.end_at < time.time():
            self.boxes.pop(sid, None)  # E2B kills it at its timeout
            self._drop(box)
            return None
        return box

    def _drop(self, box: Box) -> None:
        async def kill() -> None:
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()

        asyncio.get_running_loop().create_task(kill())

    async def _sandbox_call(
        self, req: Request, send: Send, route: str, box: Box, rest: list[str], body: Any
    ) -> None:
        if req.method == "GET" and not rest:
            detail = {
                **box.listed(),
                "envdAccessToken": box.token,
                "domain": None,
                "network": {"allowPublicTraffic": box.public},
            }
            return await self._answer(send, route, 200, detail)
        if req.method == "DELETE" and not rest:
            del self.boxes[box.id]
            await box.local.destroy()
            return await self._answer(send, route, 204)
        if req.method == "POST" and rest == ["timeout"]:
            timeout = body.get("timeout") if isinstance(body, dict) else None
            if not isinstance(timeout, int) or timeout < 0:
                return await self._answer(send, route, 400, _error(400, "invalid timeout"))
            if box.state != "running":
                return await self._answer(send, route, 409, _error(409, "sandbox is paused"))
            err = box.keep_alive(timeout, allow_shorter=True)
            return await self._answer(send, route, err["code"] if err else 204, err)
        if req.method == "POST" and rest == ["pause"]:
            if box.state == "paused":
                return await self._answer(send, route, 409, _error(409, "already paused"))
            box.state = "paused"
            return await self._answer(send, route, 204)
        if req.method == "POST" and rest == ["connect"]:
            return await self._connect(send, route, box, body)
        if req.method == "GET" and rest == ["metrics"]:
            st = await box.local.get_status()
            sample = {
                "timestamp": _iso(time.time()),
                "timestampUnix": int(time.time()),
                "cpuCount": 1,
                "cpuUsedPct": 0.0,
                "memUsed": st.memory_used_bytes,
                "memTotal": st.memory_limit_bytes,
                "memCache": 0,
                "diskUsed": st.disk_used_bytes,
                "diskTotal": st.disk_limit_bytes,
            }
            return await self._answer(send, route, 200, [sample])
        await self._answer(send, route, 404, _error(404, "not found"))

    async def _connect(self, send: Send, route: str, box: Box, body: Any) -> None:
        """A running sandbox: its timeout is extended, never shortened (200). A paused
        one is resumed (201)."""
        body = body if isinstance(body, dict) else {}
        timeout = body.get("timeout", 300)
        if not isinstance(timeout, int) or timeout < 0 or timeout > self.max_hours * 3600:
            msg = f"Timeout cannot be greater than {self.max_hours} hours"
            return await self._answer(send, route, 400, _error(400, msg))
        if box.state == "paused":
            box.state = "running"
            box.end_at = min(time.time() + timeout, box.max_end)
            return await self._answer(send, route, 201, box.sandbox())
        err = box.keep_alive(timeout, allow_shorter=False)
        await self._answer(send, route, err["code"] if err else 200, err or box.sandbox())

    async def _create(self, req: Request, send: Send, route: str, body: Any, v2: bool) -> None:
        body = body if isinstance(body, dict) else {}
        template = body.get("templateID")
        if not isinstance(template, str):
            return await self._answer(send, route, 400, _error(400, "templateID is required"))
        timeout = body.get("timeout", 300 if v2 else 15)
        if not isinstance(timeout, int) or timeout <= 0:
            return await self._answer(
                send, route, 400, _error(400, "Timeout must be greater than 0")
            )
        if timeout > self.max_hours * 3600:
            msg = f"Timeout cannot be greater than {self.max_hours} hours"
            return await self._answer(send, route, 400, _error(400, msg))
        network = body.get("network") or {}
        public = network.get("allowPublicTraffic") if isinstance(network, dict) else 0
        if public is None:
            public = self.public_by_default  # omitted or null: the project's default
        if not isinstance(public, bool):
            return await self._answer(send, route, 400, _error(400, "invalid network config"))
        if template != "base":
            msg = f"template '{template}' not found"
            return await self._answer(send, route, 404, _error(404, msg))
        key = req.headers.get("idempotency-key", "")
        if key and (box := self.boxes.get(self._idempotent.get(key, ""))) is not None:
            return await self._answer(send, route, 201, box.sandbox())
        local = await (await self.client()).create(
            "local",
            template="base",
            keep_alive=True,
            env=body.get("envVars") or {},
            metadata={"fake": "e2b"},
        )
        sid = "i" + secrets.token_hex(9)
        envd = (self.envd_version, self.answers)
        box = Box(sid, body, local, timeout, self.max_hours * 3600, envd, public)
        self.boxes[sid] = box
        if key:
            self._idempotent[key] = sid
        await self._answer(send, route, 201, box.sandbox())

    async def _list(self, req: Request, send: Send, route: str, v2: bool) -> None:
        """GET /v2/sandboxes: by metadata (key=value pairs, each URL-encoded), state
        and start, newest first, in pages the X-Next-Token header continues."""
        want: dict[str, str] = {}
        for k, v in urllib.parse.parse_qsl(req.query.get("metadata", "")):
            want[urllib.parse.unquote(k)] = urllib.parse.unquote(v)
        states = req.query.get("state", "running,paused" if v2 else "running").split(",")
        boxes = [
            b
            for sid in list(self.boxes)
            if (b := self._live(sid)) is not None
            and b.state in states
            and all(b.metadata.get(k) == v for k, v in want.items())
        ]
        boxes.sort(key=lambda b: (b.started, b.id), reverse=req.query.get("order") != "asc")
        if not v2:
            return await self._answer(send, route, 200, [b.listed() for b in boxes])
        limit = int(req.query.get("limit", PAGE_MAX))
        if not 1 <= limit <= PAGE_MAX:
            return await self._answer(send, route, 400, _error(400, "limit out of range"))
        start = 0
        if token := req.query.get("nextToken"):
            start = int(base64.urlsafe_b64decode(token).decode())
        page = boxes[start : start + limit]
        headers = {}
        if start + limit < len(boxes):
            headers["X-Next-Token"] = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
        raw = json.dumps([b.listed() for b in page]).encode()
        self.answers.append((route, 200, raw))
        await respond(send, 200, raw, headers=headers)

    # ------------------------------------------------------------ envd

    async def envd(self, scope: Scope, receive: Receive, send: Send) -> None:
        """E2B's sandbox endpoint: by host (PORT-ID.DOMAIN), as the SDK's get_host
        names it, or by the E2b-Sandbox-Id and E2b-Sandbox-Port headers. envd's
        port goes to envd; any other to the sandbox's own server there."""
        req = Request(scope, receive)
        by_host = HOST.fullmatch(req.headers.get("host", ""))
        if by_host:
            sid, port_text = by_host[2], by_host[1]
        else:
            sid = req.headers.get("e2b-sandbox-id", "")
            port_text = req.headers.get("e2b-sandbox-port", "") or str(ENVD_PORT)
        port = int(port_text) if port_text.isdigit() else 0
        if port != ENVD_PORT:
            self.requests.append(f"port {port} {req.method} {req.path}")
            return await serve_port(req, send, self._live(sid), sid, port, self.answers)
        self.requests.append(f"envd {req.method} {req.path}")
        if self.envd_budget is not None:
            self.envd_budget -= 1
        if self.fail_with or (self.envd_budget is not None and self.envd_budget < 0):
            return await respond_json(
                send, self.fail_with or 503, {"code": "unavailable", "message": "unavailable"}
            )
        box = self._live(sid)
        if box is None or box.state != "running":
            return await respond_json(send, 502, _error(502, "sandbox not found"))
        if req.path == "/health":  # the one route envd serves without the token
            return await respond(send, 204)
        # Every sandbox is secured: envd answers only with its access token.
        if req.headers.get("x-access-token") != box.token:
            return await respond_json(send, 401, _error(401, "unauthorized"))
        await box.envd.handle(req, send)

    async def close(self) -> None:
        for box in list(self.boxes.values()):
            with contextlib.suppress(ComputeSDKError):
                await box.local.destroy()
        if self._client is not None:
            await self._client.close()
