"""The guard every API call of the network listener passes: who calls (a bearer
token, or a client certificate a token names), whether the token's scope allows
the method (edge/scopes.py), and what the caller may touch (edge/tenancy.py).
On the Unix socket every call is the admin's; only the calls that can make a
named thing pass it there, so that the names they make are reserved and what
they make over a tenant's stale row is the admin's.
Refusals write their audit line here; calls that run, in edge/status.py."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from computesdkd.domain.errors import ComputeError, PermissionDenied
from computesdkd.edge import caller as callers
from computesdkd.edge.audit import audit
from computesdkd.edge.caller import ADMIN, Caller
from computesdkd.edge.interceptors import API_PREFIX, Interceptor, refusing, rewrap
from computesdkd.edge.references import names_things
from computesdkd.edge.scopes import needed_scope, reads
from computesdkd.edge.status import abort
from computesdkd.edge.tenancy import Tenancy
from computesdkd.features.access import Access, Token

if TYPE_CHECKING:
    from computesdkd.edge.interceptors import Handler


class Guard(Interceptor):
    """access is None on the Unix socket: every call there is the admin's."""

    def __init__(self, access: Access | None, tenancy: Tenancy, certificates: bool = False) -> None:
        self._access = access
        self.tenancy = tenancy
        # Whether the listener verifies client certificates (--tls-client-ca): only
        # then may a call without a token be a certificate's.
        self._certificates = certificates
        # Per method: whether its requests can name a pool, volume, ... (the socket's).
        self._names: dict[str, bool] = {}

    def _admin_needs(self, details: grpc.HandlerCallDetails, handler: Handler) -> bool:
        method = details.method
        if method not in self._names:
            desc = getattr(handler.request_deserializer, "__self__", None)
            d = getattr(desc, "DESCRIPTOR", None)
            self._names[method] = d is None or names_things(d)
        return self._names[method]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(API_PREFIX):
            return handler  # health and reflection: open, they tell nothing of tenants
        if self._access is None and not self._admin_needs(details, handler):
            return handler  # the admin's, and it can make no named thing
        try:
            caller = self._authenticate(details)
        except ComputeError as exc:
            audit(details.method, None, "", exc.code.name, reason=exc.reason)
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
        if header is None and self._certificates:
            return None  # start() asks the connection's certificate
        return self._caller(self._access.authenticate(header), details.method)

    def by_certificate(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Caller:
        assert self._access is not None
        auth = context.auth_context() or {}

        def names(key: str) -> list[str]:
            return [v.decode(errors="replace") for v in auth.get(key, [])]

        # The subject alternative names when there are any: a CA checks those, while
        # a CN is free text that could spell another's URI.
        sans = names("x509_subject_alternative_name")
        return self._caller(self._access.by_certificate(sans or names("x509_common_name")), method)

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
    """One call's passage: who calls, its references checked, its answers
    filtered, and what it made claimed when it ends."""

    def __init__(self, guard: Guard, method: str, caller: Caller | None) -> None:
        self.guard = guard
        self.tenancy = guard.tenancy
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
                ok = False
                try:
                    async for item in inner(self.requests(request), context):
                        kept = self.tenancy.filter(self.caller, item)
                        if kept is not None:
                            yield kept
                    ok = True
                finally:
                    self.finish(None, ok)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self.start(request, context)
            answer, ok = None, False
            try:
                answer = await inner(self.requests(request), context)
                ok = True
            finally:
                self.finish(answer, ok)
            kept = self.tenancy.filter(self.caller, answer)
            return kept if kept is not None else type(answer)()

        return unary

    async def start(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self._caller is None:
            try:
                self._caller = self.guard.by_certificate(context, self.method)
            except ComputeError as exc:
                audit(self.method, None, "", exc.code.name, reason=exc.reason)
                await abort(context, exc)
        # Each call runs in a task of its own, so the binding ends with the call.
        callers.bind(self.caller)
        try:
            if isinstance(request, Message):
                self.check(request)
        except ComputeError as exc:
            if not reads(self.method.rsplit("/", 1)[-1]):
                audit(self.method, self.caller, "", exc.code.name, reason=exc.reason)
            await abort(context, exc)

    def check(self, msg: Message) -> None:
        fresh, named = self.tenancy.check(self.caller, msg)
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

    def finish(self, answer: Message | None, ok: bool) -> None:
        """Claims what the call made, whether or not it then failed (a build whose
        stream was cut made its template all the same)."""
        self.tenancy.settle(self.caller, self.method, self.headers, self.fresh, answer, ok)
