"""Modal's gRPC API, as the provider and its commands use it: ModalClient calls,
and each sandbox's task command router.

The messages come from the `modal` package's generated protos (modal_proto);
the calls are made with grpcio, so the daemon keeps one gRPC stack. Install
with `pip install 'computesdkd[modal]'`.

Configuration: MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (required),
MODAL_SERVER_URL, MODAL_ENVIRONMENT.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast

import grpc

from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import retry

try:
    from modal_proto import api_pb2

    HAVE_MODAL = True
except ImportError:  # the optional extra is not installed: availability() says so
    HAVE_MODAL = False

NAME = "modal"
API = "/modal.client.ModalClient/"
ROUTER = "/modal.task_command_router.TaskCommandRouter/"
CODES = {
    grpc.StatusCode.NOT_FOUND: (NotFound, "NOT_FOUND"),
    grpc.StatusCode.INVALID_ARGUMENT: (InvalidArgument, "PROVIDER_REJECTED"),
    grpc.StatusCode.FAILED_PRECONDITION: (FailedPrecondition, "PROVIDER_REJECTED"),
    grpc.StatusCode.UNAUTHENTICATED: (FailedPrecondition, "PROVIDER_AUTH_FAILED"),
    grpc.StatusCode.PERMISSION_DENIED: (FailedPrecondition, "PROVIDER_AUTH_FAILED"),
    grpc.StatusCode.UNAVAILABLE: (Unavailable, "PROVIDER_UNAVAILABLE"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (Unavailable, "PROVIDER_UNAVAILABLE"),
}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def grpc_error(what: str, err: grpc.aio.AioRpcError, not_found: str = "NOT_FOUND") -> ComputeError:
    cls, reason = CODES.get(err.code(), (Internal, "PROVIDER_ERROR"))
    if cls is NotFound:
        reason = not_found
    return cls(
        f"modal: {what}: {err.code().name} {err.details() or ''}".strip(),
        reason=reason,
        provider=NAME,
    )


def retry_hint(err: grpc.aio.AioRpcError) -> float | None:
    """The wait Modal asks for, as its SDK reads it: an RPCRetryPolicy among the
    status details (trailing metadata grpc-status-details-bin, an RPCStatus)."""
    # grpc-stubs says _Metadatum objects; grpc.aio hands over (key, value) pairs.
    pairs = cast("Sequence[tuple[str, str | bytes]]", err.trailing_metadata() or ())
    value = dict(pairs).get("grpc-status-details-bin")
    if not isinstance(value, bytes):
        return None
    for detail in api_pb2.RPCStatus.FromString(value).details:
        policy = api_pb2.RPCRetryPolicy()
        if detail.Unpack(policy):
            return max(policy.retry_after_secs, 0.1)  # the SDK's floor
    return None


def _codec(request: Any, response_type: Any) -> dict[str, Any]:
    return {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_type.FromString,
    }


def _channel(url: str) -> grpc.aio.Channel:
    o = urllib.parse.urlparse(url)
    port = o.port or (443 if o.scheme == "https" else 80)
    target = f"{o.hostname}:{port}"
    if o.scheme == "https":
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
    return grpc.aio.insecure_channel(target)  # Modal accepts plain http for localhost


class ModalAPI:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.token_id = env.get("MODAL_TOKEN_ID", "")
        self._token_secret = env.get("MODAL_TOKEN_SECRET", "")
        self._server = env.get("MODAL_SERVER_URL", "https://api.modal.com")
        self.environment = env.get("MODAL_ENVIRONMENT", "")
        self._api: grpc.aio.Channel | None = None
        self._routers: dict[str, grpc.aio.Channel] = {}

    def has_token(self) -> bool:
        return bool(self.token_id and self._token_secret)

    async def close(self) -> None:
        for ch in [self._api, *self._routers.values()]:
            if ch is not None:
                await ch.close(None)

    def _metadata(self) -> list[tuple[str, str]]:
        return [
            ("x-modal-token-id", self.token_id),
            ("x-modal-token-secret", self._token_secret),
            ("x-modal-client-type", "1"),
            ("x-modal-client-version", "1.6.4"),
        ]

    def _channel(self) -> grpc.aio.Channel:
        if self._api is None:
            self._api = _channel(self._server)
        return self._api

    async def call(
        self,
        method: str,
        request: Any,
        response_type: Any,
        what: str,
        *,
        not_found: str = "NOT_FOUND",
        timeout: float = 60.0,
    ) -> Any:
        """A ModalClient call, retried by the common policy. Every attempt carries
        the same idempotency key, as Modal's SDK sends, so a retried create is
        made once."""
        stub = self._channel().unary_unary(API + method, **_codec(request, response_type))
        key = str(uuid.uuid4())
        tries = 0

        async def attempt() -> Any:
            nonlocal tries
            md = [*self._metadata(), ("x-idempotency-key", key), ("x-retry-attempt", str(tries))]
            tries += 1
            try:
                return await stub(request, metadata=md, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                error = grpc_error(what, err, not_found)
                if err.code() in RETRYABLE:
                    raise retry.Retryable(error, retry_hint(err)) from None
                raise error from None

        return await retry.call(attempt)

    def stream(self, method: str, request: Any, response_type: Any) -> AsyncIterator[Any]:
        read = self._channel().unary_stream(API + method, **_codec(request, response_type))
        return aiter(read(request, metadata=self._metadata()))

    def _router(self, sandbox: Sandbox) -> tuple[grpc.aio.Channel, list[tuple[str, str]]]:
        url = sandbox.provider_data["router_url"]
        if url not in self._routers:
            self._routers[url] = _channel(url)
        return self._routers[url], [("authorization", f"Bearer {sandbox.provider_data['jwt']}")]

    async def router_call(
        self, sandbox: Sandbox, method: str, request: Any, response_type: Any, what: str
    ) -> Any:
        ch, md = self._router(sandbox)
        stub = ch.unary_unary(ROUTER + method, **_codec(request, response_type))
        try:
            return await stub(request, metadata=md)
        except grpc.aio.AioRpcError as err:
            raise grpc_error(what, err, "PROCESS_NOT_FOUND") from None

    def router_stream(
        self, sandbox: Sandbox, method: str, request: Any, response_type: Any
    ) -> AsyncIterator[Any]:
        ch, md = self._router(sandbox)
        read = ch.unary_stream(ROUTER + method, **_codec(request, response_type))
        return aiter(read(request, metadata=md))
