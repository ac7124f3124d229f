"""Server interceptors: what applies to every call of our API before a servicer runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from computesdkd.domain.errors import ComputeError, Unavailable
from computesdkd.edge.status import to_status

# Our services; health and reflection keep answering while the daemon drains.
API_PREFIX = "/computesdk.api."

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


class Draining(Interceptor):
    """Refuses new calls once the daemon is shutting down, with a reason."""

    def __init__(self, accepting: Callable[[], bool]) -> None:
        self._accepting = accepting

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or self._accepting() or not details.method.startswith(API_PREFIX):
            return handler
        return refusing(
            handler, Unavailable("the daemon is shutting down", reason="DAEMON_SHUTTING_DOWN")
        )


_MAKE = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def rewrap(handler: Handler, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Handler:
    """The same handler with its behaviour passed through wrap."""
    streaming = (handler.request_streaming, handler.response_streaming)
    behaviour = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[streaming]
    assert behaviour is not None
    return _MAKE[streaming](
        wrap(behaviour),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def refusing(handler: Handler, err: ComputeError) -> Handler:
    """A handler of the same shape that answers err and runs nothing."""
    st = to_status(err)

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(st.code, st.details, st.trailing_metadata)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(st.code, st.details, st.trailing_metadata)
        yield  # pragma: no cover - marks this as an async generator

    # The refused request is never parsed: raw bytes, dropped.
    return _MAKE[(handler.request_streaming, handler.response_streaming)](
        refuse_stream if handler.response_streaming else refuse,
        request_deserializer=None,
        response_serializer=handler.response_serializer,
    )
