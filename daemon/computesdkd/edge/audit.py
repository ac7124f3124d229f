"""The audit log: one structlog line per mutating call, refused ones included."""

from __future__ import annotations

from typing import Any

from computesdkd.edge.caller import Caller
from computesdkd.edge.references import made, refs
from computesdkd.support import logs

log = logs.get("computesdkd.audit")


def resource_of(request: Any, answer: Any = None) -> str:
    """The thing a call was about: the one it made, else the first it named (or
    the token or tenant an admin call names)."""
    if hasattr(answer, "ListFields"):
        key = made(answer) or getattr(getattr(answer, "token", None), "id", "")
        if key:
            return str(key)
    if hasattr(request, "ListFields"):
        for _, key, _, _ in refs(request):
            return key
        for name in ("id", "tenant"):
            value = getattr(request, name, "")
            if isinstance(value, str) and value:
                return value
    return ""


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
