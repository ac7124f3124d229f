"""The guard every API call passes: who calls (a bearer token on the network
listener; the admin on the Unix socket), whether the token's scope allows the
method, what the caller may touch (edge/tenancy.py), and
one audit line per mutating call."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from computesdkd.domain.errors import ComputeError, PermissionDenied
from computesdkd.edge import caller as callers
from computesdkd.edge.caller import ADMIN, Caller
from computesdkd.edge.interceptors import API_PREFIX, refusing, rewrap
from computesdkd.edge.status import abort
from computesdkd.edge.tenancy import Tenancy, refs
from computesdkd.features.access import Access, Scope, Token
from computesdkd.support import logs

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

log = logs.get("computesdkd.audit")

ADMIN_SERVICE = "/computesdk.api.admin.v1.AdminService/"
# Methods that change nothing: a read-scope token may call these.
READ_VERBS = ("Get", "List", "Subscribe", "Read", "Stat", "Check", "Monitor", "Attach", "Export")


# Named like reads, but they act: CheckHealth runs the registered commands in the
# sandbox, ExportState snapshots it.
ACTING_READS = {"CheckHealth", "ExportState"}


def needed_scope(method: str) -> Scope:
    if method.startswith(ADMIN_SERVICE):
        return Scope.ADMIN
    name = method.rsplit("/", 1)[-1]
    return Scope.READ if name.startswith(READ_VERBS) and name not in ACTING_READS else Scope.WRITE


class Guard(_Interceptor):
    """access is None on the Unix socket: every call there is the admin's."""

    def __init__(self, access: Access | None, tenancy: Tenancy) -> None:
        self._access = access
        self._tenancy = tenancy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(API_PREFIX):
            return handler  # health and reflection: open, they tell nothing of tenants
        try:
            caller = self._authenticate(details)
        except ComputeError as exc:
            _audit(details.method, None, "", exc.code.name, reason=exc.reason)
            return refusing(handler, exc)
        return rewrap(handler, lambda inner: _Call(self, details.method, caller).wrap(inner))

    def _authenticate(self, details: grpc.HandlerCallDetails) -> Caller | None:
        """The caller, or None when only the connection's client certificate can
        say (its names are known to the call, not here)."""
        if self._access is None:
            return ADMIN
        header = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
        if header is None:
            return None
        return self._caller(self._access.authenticate(header), details.method)

    def by_certificate(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Caller:
        assert self._access is not None
        auth = context.auth_context() or {}
        names = [
            v.decode(errors="replace") if isinstance(v, bytes) else str(v)
            for key in ("x509_common_name", "x509_subject_alternative_name")
            for v in auth.get(key, [])
        ]
        return self._caller(self._access.by_certificate(names), method)

    def _caller(self, token: Token, method: str) -> Caller:
        need = needed_scope(method)
        if token.scope < need:
            raise PermissionDenied(
                f"this call needs a token of scope {need.name.lower()}",
                reason="SCOPE_INSUFFICIENT",
                needed=need.name.lower(),
            )
        return Caller(tenant=token.tenant, scope=token.scope, token_id=token.id)


class _Call:
    """One call's passage: its references checked, its answers filtered, what it
    made claimed, and its audit line."""

    def __init__(self, guard: Guard, method: str, caller: Caller | None) -> None:
        self.guard = guard
        self.method = method
        self._caller = caller
        self.fresh: list[tuple[str, str]] = []
        self.headers: list[Message] = []  # the requests that named something

    @property
    def caller(self) -> Caller:
        assert self._caller is not None, "start() says who calls"
        return self._caller

    def wrap(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(inner):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await self.start(request, context)
                try:
                    async for item in inner(self.requests(request), context):
                        kept = self.guard._tenancy.filter(self.caller, item)
                        if kept is not None:
                            yield kept
                except BaseException:
                    self.finish(context, None, failed=True)
                    raise
                self.finish(context, None)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self.start(request, context)
            try:
                answer = await inner(self.requests(request), context)
            except BaseException:
                self.finish(context, None, failed=True)
                raise
            self.finish(context, answer)
            kept = self.guard._tenancy.filter(self.caller, answer)
            return kept if kept is not None else type(answer)()

        return unary

    async def start(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self._caller is None:
            try:
                self._caller = self.guard.by_certificate(context, self.method)
            except ComputeError as exc:
                _audit(self.method, None, "", exc.code.name, reason=exc.reason)
                await abort(context, exc)
        # Each call runs in a task of its own, so the binding ends with the call.
        callers.bind(self.caller)
        try:
            if isinstance(request, Message):
                self.check(request)
        except ComputeError as exc:
            self.audit(exc.code.name, exc.reason)
            await abort(context, exc)

    def check(self, msg: Message) -> None:
        fresh, named = self.guard._tenancy.check(self.caller, msg)
        self.fresh += fresh
        if named and len(self.headers) < 8:
            self.headers.append(msg)

    def requests(self, request: Any) -> Any:
        """The request, or for a client stream each message once it is checked."""
        if isinstance(request, Message):
            return request
        return self._checked(request)

    async def _checked(self, requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
        async for msg in requests:
            self.check(msg)
            yield msg

    def finish(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        answer: Message | None,
        failed: bool = False,
    ) -> None:
        code = _code(context) if failed else "OK"
        if code == "OK":
            self.guard._tenancy.settle(self.caller, self.method, self.headers, self.fresh, answer)
        made = self.guard._tenancy.made(answer) if answer is not None else ""
        self.audit(code, resource=made)

    def audit(self, code: str, reason: str = "", resource: str = "") -> None:
        if needed_scope(self.method) == Scope.READ:
            return
        named = next((key for msg in self.headers for _, key, _, _ in refs(msg)), "")
        _audit(self.method, self.caller, named or resource, code, reason=reason)


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "CANCELLED" if code is None else str(code)


def _audit(method: str, caller: Caller | None, resource: str, code: str, reason: str = "") -> None:
    log.info(
        "audit",
        tenant=caller.tenant if caller and caller.tenant else None,
        via="socket" if caller and caller.admin else "network",
        token_id=caller.token_id if caller and caller.token_id else None,
        method=method,
        resource=resource or None,
        status=code,
        reason=reason or None,
    )
