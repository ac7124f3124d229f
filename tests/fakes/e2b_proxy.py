"""The proxy half of the E2B fake: E2B's edge in front of a sandbox's ports other
than envd's (what https://PORT-SANDBOXID.DOMAIN reaches, the SDK's get_host).
It answers as E2B's proxy does: a sandbox whose URLs are private wants its
traffic token in the e2b-traffic-access-token header (403 without it, in E2B's
words), a port nothing listens on is a 502 naming it, and anything else goes to
the port of the box's real local sandbox (through the daemon's loopback forward)
and its answer comes back."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

import httpx

from .asgi import Request, Send, respond

if TYPE_CHECKING:
    from .e2b import Box

ENVD_PORT = 49983
TOKEN_HEADER = "e2b-traffic-access-token"
# Hop-by-hop headers and E2B's own, which do not go on to the sandbox's server.
_DROPPED = {"host", "connection", "content-length", "transfer-encoding", TOKEN_HEADER}


async def _error(
    send: Send, answers: list[tuple[str, int, bytes]], status: int, body: dict[str, Any]
) -> None:
    raw = json.dumps({**body, "code": status}).encode()
    answers.append(("proxy", status, raw))
    await respond(send, status, raw)


async def serve_port(
    req: Request,
    send: Send,
    box: Box | None,
    sid: str,
    port: int,
    answers: list[tuple[str, int, bytes]],
) -> None:
    if box is None or box.state != "running" or not 0 < port < 65536:
        msg = "The sandbox was not found"
        return await _error(send, answers, 502, {"sandboxId": sid, "message": msg})
    if box.traffic_token is not None:
        given = req.headers.get(TOKEN_HEADER)
        if given is None or not hmac.compare_digest(given, box.traffic_token):
            what = "missing" if given is None else "invalid"
            msg = (
                "Sandbox is secured with traffic access token. "
                f"Token header '{TOKEN_HEADER}' is {what}"
            )
            return await _error(send, answers, 403, {"sandboxId": sid, "message": msg})
    if port not in box.port_urls:
        box.port_urls[port] = await box.local.get_url(port)
    query = req.scope["query_string"].decode()
    url = box.port_urls[port] + req.path + (f"?{query}" if query else "")
    headers = {k: v for k, v in req.headers.items() if k not in _DROPPED}
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.request(req.method, url, headers=headers, content=await req.body())
    except httpx.TransportError:
        msg = "The sandbox is running but port is not open"
        return await _error(send, answers, 502, {"sandboxId": sid, "message": msg, "port": port})
    await respond(
        send,
        resp.status_code,
        resp.content,
        resp.headers.get("content-type", "application/octet-stream"),
    )
