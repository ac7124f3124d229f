"""Tokens and quotas (AdminService). Reached as client.admin.

Over the admin socket every tenant is in reach; over the network an admin-scope
token reaches its own tenant's tokens and quota."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from computesdk_api.admin.v1 import admin_pb2 as pb

from . import _rpc

if TYPE_CHECKING:
    from .client import Client

SCOPES = {"read": pb.SCOPE_READ, "write": pb.SCOPE_WRITE, "admin": pb.SCOPE_ADMIN}


def _time(ts: object) -> datetime | None:
    seconds = getattr(ts, "seconds", 0)
    return ts.ToDatetime() if seconds else None  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Token:
    id: str
    tenant: str
    scope: str
    description: str
    created: datetime | None
    expires: datetime | None
    revoked: datetime | None
    # A client certificate identity instead of a secret (mutual TLS).
    client_subject: str = ""

    @classmethod
    def from_proto(cls, t: pb.Token) -> Token:
        scope = {v: k for k, v in SCOPES.items()}.get(t.scope, "unspecified")
        return cls(
            t.id,
            t.tenant,
            scope,
            t.description,
            _time(t.create_time),
            _time(t.expire_time) if t.HasField("expire_time") else None,
            _time(t.revoke_time) if t.HasField("revoke_time") else None,
            t.client_subject,
        )


@dataclass(frozen=True)
class Quota:
    """Zero means no bound."""

    max_sandboxes: int = 0
    max_cpu_cores: float = 0.0
    max_memory_mb: int = 0
    max_disk_mb: int = 0
    max_volume_mb: int = 0
    creates_per_second: float = 0.0


@dataclass(frozen=True)
class QuotaUsage:
    quota: Quota
    sandboxes: int
    cpu_cores: float
    memory_mb: int
    disk_mb: int
    volume_mb: int


def _quota(q: pb.Quota) -> Quota:
    return Quota(
        q.max_sandboxes,
        q.max_cpu_cores,
        q.max_memory_mb,
        q.max_disk_mb,
        q.max_volume_mb,
        q.creates_per_second,
    )


class Admin:
    def __init__(self, client: Client) -> None:
        self._stub = client.admin_stub

    async def create_token(
        self,
        tenant: str,
        scope: str = "write",
        description: str = "",
        ttl_seconds: int = 0,
        client_subject: str = "",
    ) -> tuple[Token, str]:
        """The token and its secret: what a client sends, shown this once only.
        With client_subject, a client certificate naming it (CN or SAN) is the
        credential instead, and the secret is empty."""
        if scope not in SCOPES:
            raise ValueError(f"scope is one of {', '.join(SCOPES)}")
        resp = await _rpc.call(
            self._stub.CreateToken,
            pb.CreateTokenRequest(
                tenant=tenant,
                scope=SCOPES[scope],
                description=description,
                ttl_seconds=ttl_seconds,
                client_subject=client_subject,
            ),
        )
        return Token.from_proto(resp.token), resp.secret

    async def list_tokens(self, tenant: str = "") -> builtins.list[Token]:
        resp = await _rpc.call(self._stub.ListTokens, pb.ListTokensRequest(tenant=tenant))
        return [Token.from_proto(t) for t in resp.tokens]

    async def revoke_token(self, token_id: str) -> Token:
        resp = await _rpc.call(self._stub.RevokeToken, pb.RevokeTokenRequest(id=token_id))
        return Token.from_proto(resp.token)

    async def set_quota(self, tenant: str, quota: Quota) -> Quota:
        resp = await _rpc.call(
            self._stub.SetQuota,
            pb.SetQuotaRequest(tenant=tenant, quota=pb.Quota(**quota.__dict__)),
        )
        return _quota(resp.quota)

    async def get_quota(self, tenant: str = "") -> QuotaUsage:
        resp = await _rpc.call(self._stub.GetQuota, pb.GetQuotaRequest(tenant=tenant))
        u = resp.usage
        return QuotaUsage(
            _quota(resp.quota), u.sandboxes, u.cpu_cores, u.memory_mb, u.disk_mb, u.volume_mb
        )
