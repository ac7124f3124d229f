"""Preview URLs: the TLS tunnel Modal opens for each port a sandbox declared at
create (encrypted_ports in the SDK), as Sandbox.tunnels() reads them.

A V2 create answers with its tunnels; otherwise, or after a restore made a new
Modal sandbox, SandboxGetTunnels(V2) is asked (with the SDK's 50 second wait)
and the answer kept in provider_data["tunnels"]. Modal opens no tunnel later:
a port not declared at create is FAILED_PRECONDITION, saying to declare it.

What Modal answers is untrusted: a tunnel's host must be a DNS name and its
port a TCP port, at most MAX_TUNNELS are read, and the URL is built here
(https://HOST[:PORT], as the SDK's Tunnel.url), never taken as given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from computesdkd.domain.errors import FailedPrecondition, Unavailable
from computesdkd.domain.model import Sandbox
from computesdkd.providers import capabilities as caps
from computesdkd.providers.modal.api import HAVE_MODAL, NAME, ModalAPI, bad_answer, is_v2

if HAVE_MODAL:
    from modal_proto import api_pb2

    Status = api_pb2.GenericResult

WAIT_S = 50  # the SDK's Sandbox.tunnels(timeout=50)
MAX_TUNNELS = 64
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST = re.compile(rf"^(?=.{{1,253}}$){LABEL}(?:\.{LABEL})+$")  # a DNS name, two labels or more
NOT_DECLARED = (
    "Modal opens a tunnel only for the ports a sandbox is created with; declare it "
    "there (create(ports=[...]))"
)


def urls(tunnels: Iterable[Any], what: str) -> dict[int, str]:
    """Each container port's https URL, from Modal's TunnelData; refused whole
    when any is malformed."""
    out: dict[int, str] = {}
    for i, t in enumerate(tunnels):
        if i >= MAX_TUNNELS:
            raise bad_answer(f"{what}: over {MAX_TUNNELS} tunnels")
        if not (0 < t.container_port < 65536 and 0 < t.port < 65536 and HOST.match(t.host)):
            raise bad_answer(f"{what}: a tunnel that is not a host and a port")
        out[t.container_port] = f"https://{t.host}" + ("" if t.port == 443 else f":{t.port}")
    return out


def kept(sandbox: Sandbox) -> dict[int, str]:
    raw = json.loads(sandbox.provider_data.get("tunnels") or "{}")
    return {int(p): str(u) for p, u in raw.items()}


def keep(sandbox: Sandbox, found: dict[int, str]) -> None:
    sandbox.provider_data["tunnels"] = json.dumps({str(p): u for p, u in sorted(found.items())})


def keep_from_create(sandbox: Sandbox, tunnels: list[Any]) -> None:
    """The tunnels a V2 create answered with, when they are all there (the SDK
    keeps them only then too)."""
    if sandbox.spec.ports and len(tunnels) == len(sandbox.spec.ports):
        keep(sandbox, urls(tunnels, "create sandbox"))


class ModalTunnels(caps.PreviewUrls):
    def __init__(self, api: ModalAPI) -> None:
        self._api = api

    async def preview_url(self, sandbox: Sandbox, port: int) -> str:
        if port not in sandbox.spec.ports:
            raise FailedPrecondition(
                f"{NAME}: port {port} was not declared at create: {NOT_DECLARED}",
                reason="PORT_NOT_DECLARED",
                provider=NAME,
            )
        found = kept(sandbox)
        if port not in found:
            found = await self._fetch(sandbox)
            keep(sandbox, found)
        if port not in found:
            raise bad_answer(f"get tunnels: Modal has no tunnel for port {port}")
        return found[port]

    async def _fetch(self, sandbox: Sandbox) -> dict[int, str]:
        v2 = is_v2(sandbox)
        resp = await self._api.call(
            "SandboxGetTunnelsV2" if v2 else "SandboxGetTunnels",
            api_pb2.SandboxGetTunnelsRequest(
                sandbox_id=sandbox.provider_sandbox_id, timeout=WAIT_S
            ),
            api_pb2.SandboxGetTunnelsResponse,
            "get tunnels",
            timeout=WAIT_S + 10,
            v2=v2,
            sandbox_token=sandbox.provider_data.get("sandbox_token", ""),
        )
        if resp.result.status == Status.GENERIC_STATUS_TIMEOUT:
            raise Unavailable(
                f"modal: the sandbox's tunnels were not up within {WAIT_S}s",
                reason="PROVIDER_UNAVAILABLE",
                provider=NAME,
            )
        return urls(resp.tunnels, "get tunnels")
