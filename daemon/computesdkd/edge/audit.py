"""The audit log: one structlog line per mutating call, refused ones included."""

from __future__ import annotations

from typing import Any

from computesdkd.edge.caller import Caller
from computesdkd.edge.tenancy import made, refs
from computesdkd.support import logs

log = logs.get("computesdkd.audit")


def resource_of(request: Any, answer: Any = None) -> str:
    """The thing a call was about: the first it named, else the one it made."""
    if hasattr(request, "ListFields"):
        for _, key, _, _ in refs(request):
            return key
    return made(answer) if hasattr(answer, "ListFields") else ""


def audit(method: str, caller: Caller | None, resource: str, code: str, reason: str = "") -> None:
    """method: /package.Service/Method, or Service/Method; the line says the latter."""
    service, _, name = method.lstrip("/").rpartition("/")
    log.info(
        "audit",
        tenant=caller.tenant if caller and caller.tenant else None,
        via=None if caller is None else "socket" if caller.admin else "network",
        token_id=caller.token_id if caller and caller.token_id else None,
        method=f"{service.rsplit('.', 1)[-1]}/{name}",
        resource=resource or None,
        status=code,
        reason=reason or None,
    )
