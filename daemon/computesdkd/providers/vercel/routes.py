"""Preview URLs on Vercel: the ports a sandbox is created with (create's `ports`,
from SandboxSpec.ports) get routes `{port, subdomain, url}`, and a port is
reached at https://<subdomain>.vercel.run, as @vercel/sandbox's
sandbox.domain(port) builds it. Vercel routes only the declared ports, so any
other is refused, saying to declare it at create.

The routes come with the create answer and are kept in provider_data; a port
missing there is looked up again in the session's routes. A subdomain is
untrusted: it must be one DNS label, or the URL is not built."""

from __future__ import annotations

import json
import re
from typing import Any

from computesdkd.domain.errors import FailedPrecondition
from computesdkd.domain.model import Sandbox
from computesdkd.providers import capabilities as caps
from computesdkd.providers.vercel.api import NAME, VercelAPI, bad_answer, field, session

DOMAIN = "vercel.run"
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# A bound on what a route listing may hold (Vercel's limit is 15 ports).
MAX_ROUTES = 64


def parse(routes: Any, what: str) -> dict[int, str]:
    """{port: subdomain} from Vercel's routes; a malformed one is refused."""
    if routes is None:
        return {}
    if not isinstance(routes, list) or len(routes) > MAX_ROUTES:
        raise bad_answer(what, "the answer's routes are not a short list")
    out: dict[int, str] = {}
    for route in routes:
        port, sub = field(route, "port", int, what), field(route, "subdomain", str, what)
        if not _LABEL.fullmatch(sub) or not 0 < port < 65536:
            raise bad_answer(what, "a route's subdomain or port is malformed")
        if not route.get("system"):  # Vercel's own (includeSystemRoutes) are not ours
            out[port] = sub
    return out


def kept(routes: dict[int, str]) -> str:
    return json.dumps({str(p): s for p, s in sorted(routes.items())})


def _loaded(sandbox: Sandbox) -> dict[int, str]:
    raw = json.loads(sandbox.provider_data.get("routes") or "{}")
    return {int(p): str(s) for p, s in raw.items()}


class VercelPreviews(caps.PreviewUrls):
    def __init__(self, api: VercelAPI) -> None:
        self._api = api

    async def preview_url(self, sandbox: Sandbox, port: int) -> str:
        if port not in sandbox.spec.ports:
            raise FailedPrecondition(
                f"{NAME}: port {port} was not declared at create: Vercel routes only the "
                "ports a sandbox is created with; declare it there (create(ports=[...]))",
                reason="PORT_NOT_DECLARED",
                provider=NAME,
            )
        routes = _loaded(sandbox)
        if port not in routes:
            what = "get session routes"
            out = await self._api.json("GET", session(sandbox), what)
            routes = parse(out.get("routes"), what)
            sandbox.provider_data["routes"] = kept(routes)
        if port not in routes:
            raise bad_answer("get session routes", f"Vercel has no route for port {port}")
        return f"https://{routes[port]}.{DOMAIN}"
