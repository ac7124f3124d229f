"""AdminService: tokens and quotas. On the socket every tenant is in reach; over
TCP an admin-scope token reaches its own tenant only (edge/access.py checks the
scope; this confines the tenant)."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.admin.v1 import admin_pb2 as pb
from computesdk_api.admin.v1 import admin_pb2_grpc as pb_grpc
from computesdkd.domain.errors import InvalidArgument, PermissionDenied
from computesdkd.edge import caller as callers
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.access import Access, Scope, Token, check_tenant
from computesdkd.features.quotas import Quota, Quotas

Ctx = ServicerContext[Any, Any]


def _token_to(t: Token) -> pb.Token:
    out = pb.Token(
        id=t.id,
        tenant=t.tenant,
        scope=int(t.scope),  # type: ignore[arg-type]
        description=t.description,
        create_time=convert.ts(t.created_at),
        client_subject=t.subject,
    )
    if t.expires_at:
        out.expire_time.CopyFrom(convert.ts(t.expires_at))
    if t.revoked_at:
        out.revoke_time.CopyFrom(convert.ts(t.revoked_at))
    return out


def _quota_to(q: Quota) -> pb.Quota:
    return pb.Quota(
        max_sandboxes=q.max_sandboxes,
        max_cpu_cores=q.max_cpu_cores,
        max_memory_mb=q.max_memory_mb,
        max_disk_mb=q.max_disk_mb,
        max_volume_mb=q.max_volume_mb,
        creates_per_second=q.creates_per_second,
    )


def _tenant(asked: str, required: bool = True) -> str:
    """The tenant a call may reach: any on the socket, its own over TCP."""
    caller = callers.current()
    if caller.admin:
        return check_tenant(asked) if asked or required else ""
    if asked and asked != caller.tenant:
        # Whether that tenant exists is not the caller's business: same answer.
        raise PermissionDenied("a token reaches its own tenant only", reason="SCOPE_INSUFFICIENT")
    return caller.tenant


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, access: Access, quotas: Quotas) -> None:
        self._access = access
        self._quotas = quotas

    @edge
    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Ctx
    ) -> pb.CreateTokenResponse:
        if request.scope not in (0, *Scope):
            raise InvalidArgument("scope is read, write or admin", reason="INVALID_ARGUMENT")
        scope = Scope(request.scope or Scope.WRITE)
        caller = callers.current()
        if request.client_subject and not caller.admin:
            # A certificate's names are not a tenant's to claim: the socket binds them.
            raise PermissionDenied(
                "client subjects are bound over the admin socket", reason="ADMIN_SOCKET_ONLY"
            )
        parent = self._access.get(caller.token_id) if caller.token_id else None
        token, secret = self._access.create(
            _tenant(request.tenant),
            scope,
            request.description,
            request.ttl_seconds,
            parent,
            request.client_subject,
        )
        return pb.CreateTokenResponse(token=_token_to(token), secret=secret)

    @edge
    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Ctx
    ) -> pb.ListTokensResponse:
        tenant = _tenant(request.tenant, required=False)
        return pb.ListTokensResponse(tokens=[_token_to(t) for t in self._access.list(tenant)])

    @edge
    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Ctx
    ) -> pb.RevokeTokenResponse:
        tenant = _tenant("", required=False)
        return pb.RevokeTokenResponse(token=_token_to(self._access.revoke(request.id, tenant)))

    @edge
    async def SetQuota(self, request: pb.SetQuotaRequest, context: Ctx) -> pb.SetQuotaResponse:
        if not callers.current().admin:
            raise PermissionDenied(
                "quotas are set over the admin socket", reason="ADMIN_SOCKET_ONLY"
            )
        q = request.quota
        quota = self._quotas.set(
            check_tenant(request.tenant),
            Quota(
                q.max_sandboxes,
                q.max_cpu_cores,
                q.max_memory_mb,
                q.max_disk_mb,
                q.max_volume_mb,
                q.creates_per_second,
            ),
        )
        return pb.SetQuotaResponse(quota=_quota_to(quota))

    @edge
    async def GetQuota(self, request: pb.GetQuotaRequest, context: Ctx) -> pb.GetQuotaResponse:
        tenant = _tenant(request.tenant)
        u = self._quotas.usage(tenant)
        return pb.GetQuotaResponse(
            quota=_quota_to(self._quotas.get(tenant)),
            usage=pb.Usage(
                sandboxes=u.sandboxes,
                cpu_cores=u.cpu_cores,
                memory_mb=u.memory_mb,
                disk_mb=u.disk_mb,
                volume_mb=u.volume_mb,
            ),
        )
