"""Modal's gRPC API, as the provider and its commands use it: ModalClient calls,
and each sandbox's task command router.

The messages come from the `modal` package's generated protos (modal_proto);
the calls are made with grpcio, so the daemon keeps one gRPC stack. Install
with `pip install 'computesdkd[modal]'`.

Configuration: MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (required),
MODAL_SERVER_URL, MODAL_ENVIRONMENT.

Everything Modal answers is untrusted: a message is at most MAX_MESSAGE bytes
(the channel refuses more), tokens at most MAX_TOKEN, and a router address must
be https unless the API itself is on loopback (the SDK's rule too).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
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
V1_ID = re.compile(r"^sb-[0-9A-Za-z]{22}$")
SDK_VERSION = "1.6.4"  # the modal SDK whose wire this speaks (tests/test_modal_contract.py)
MAX_MESSAGE = 16 << 20
MAX_TOKEN = 8192
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


def jwt_exp(token: str) -> float:
    """The exp claim of a JWT, unverified (as the SDK reads it); 0 when there is none."""
    try:
        part = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))).get("exp")
    except (IndexError, ValueError, binascii.Error, AttributeError):
        return 0.0
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else 0.0


def is_v2(sandbox: Sandbox) -> bool:
    """Whether a sandbox is a V2 one: provider_data["api"], or for a record made
    before that was kept, the SDK's rule ("sb-" and 22 letters or digits is V1)."""
    api = sandbox.provider_data.get("api")
    if api:
        return api == "v2"
    return not V1_ID.match(sandbox.provider_sandbox_id)


def bad_answer(what: str) -> Unavailable:
    return Unavailable(f"modal: {what}", reason="PROVIDER_ERROR", provider=NAME)


def checked_token(token: str, what: str) -> str:
    if not token or len(token) > MAX_TOKEN:
        raise bad_answer(f"{what}: no token, or one over {MAX_TOKEN} bytes")
    return token


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


def codec(request: Any, response_type: Any) -> dict[str, Any]:
    return {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_type.FromString,
    }


def is_loopback(url: str) -> bool:
    return urllib.parse.urlparse(url).hostname in ("localhost", "127.0.0.1", "::1")


def open_channel(url: str) -> grpc.aio.Channel:
    o = urllib.parse.urlparse(url)
    port = o.port or (443 if o.scheme == "https" else 80)
    target = f"{o.hostname}:{port}"
    if o.scheme == "https":
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), OPTIONS)
    return grpc.aio.insecure_channel(target, OPTIONS)  # Modal accepts plain http for localhost


class ModalAPI:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.token_id = env.get("MODAL_TOKEN_ID", "")
        self._token_secret = env.get("MODAL_TOKEN_SECRET", "")
        self._server = env.get("MODAL_SERVER_URL", "https://api.modal.com")
        self.environment = env.get("MODAL_ENVIRONMENT", "")
        self._api: grpc.aio.Channel | None = None
        self._auth_token = ""
        self._auth_exp = 0.0

    def has_token(self) -> bool:
        return bool(self.token_id and self._token_secret)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close(None)
            self._api = None

    def _metadata(self) -> list[tuple[str, str]]:
        return [
            ("x-modal-token-id", self.token_id),
            ("x-modal-token-secret", self._token_secret),
            ("x-modal-client-type", "1"),
            ("x-modal-client-version", SDK_VERSION),
        ]

    async def auth_token(self) -> str:
        """The short-lived token the V2 calls carry (AuthTokenGet), as the SDK keeps
        it: fetched again once half its life has gone, or an exp is missing."""
        now = time.time()
        if not self._auth_token or now >= self._auth_exp:
            resp = await self.call(
                "AuthTokenGet", api_pb2.AuthTokenGetRequest(), api_pb2.AuthTokenGetResponse, "auth"
            )
            token = checked_token(resp.token, "auth token")
            exp = jwt_exp(token)
            self._auth_token = token
            self._auth_exp = now + (exp - now) / 2 if exp > now else now + 60.0
        return self._auth_token

    def _channel(self) -> grpc.aio.Channel:
        if self._api is None:
            self._api = open_channel(self._server)
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
        v2: bool = False,
        sandbox_token: str = "",
    ) -> Any:
        """A ModalClient call, retried by the common policy. Every attempt carries
        the same idempotency key, as Modal's SDK sends, so a retried create is
        made once; a V2 call carries the auth token too."""
        stub = self._channel().unary_unary(API + method, **codec(request, response_type))
        key = str(uuid.uuid4())
        tries = 0
        renewed = False

        async def attempt() -> Any:
            nonlocal tries, renewed
            md = [*self._metadata(), ("x-idempotency-key", key), ("x-retry-attempt", str(tries))]
            if v2:
                md.append(("x-modal-auth-token", await self.auth_token()))
            if sandbox_token:  # a V2 sandbox's own token, sent with each call on it
                md.append(("x-modal-sandbox-token", sandbox_token))
            tries += 1
            try:
                return await stub(request, metadata=md, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                error = grpc_error(what, err, not_found)
                if v2 and err.code() == grpc.StatusCode.UNAUTHENTICATED and not renewed:
                    renewed = True  # the token expired on Modal's clock: once more, anew
                    self._auth_token = ""
                    raise retry.Retryable(error, 0.0) from None
                if err.code() in RETRYABLE:
                    raise retry.Retryable(error, retry_hint(err)) from None
                raise error from None

        return await retry.call(attempt)

    def stream(self, method: str, request: Any, response_type: Any) -> AsyncIterator[Any]:
        read = self._channel().unary_stream(API + method, **codec(request, response_type))
        return aiter(read(request, metadata=self._metadata()))

    def router_url(self, url: str) -> str:
        """A router address Modal handed over, refused unless it is https (or the
        API itself runs on loopback, as in tests)."""
        o = urllib.parse.urlparse(url)
        secure = o.scheme == "https" or (o.scheme == "http" and is_loopback(self._server))
        if len(url) > 2048 or not o.hostname or not secure:
            raise bad_answer("the task command router address is not an https URL")
        return url
