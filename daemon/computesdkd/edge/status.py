"""The one place where domain errors become gRPC statuses with google.rpc.ErrorInfo,
and the wrapper every servicer method wears (log binding, metrics, status)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from structlog.contextvars import bound_contextvars

from computesdkd.domain.errors import DOMAIN, ComputeError, Internal, ResourceExhausted
from computesdkd.edge import caller as callers
from computesdkd.edge.audit import audit, resource_of
from computesdkd.edge.scopes import reads
from computesdkd.support import logs, metrics

log = logs.get(__name__)

# Largest stdin or file chunk a client may send in one message. The transport
# accepts more, so that an oversized message gets a clear reason, not a bare status.
MAX_CHUNK = 4 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])


def to_status(err: ComputeError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    details = [any_pb2.Any()]
    details[0].Pack(info)
    if err.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(err.retry_after * 1e9))
        details.append(any_pb2.Any())
        details[1].Pack(retry)
    code = getattr(code_pb2, err.code.name)
    return rpc_status.to_status(status_pb2.Status(code=code, message=err.message, details=details))


def check_chunk(data: bytes, what: str) -> None:
    if len(data) > MAX_CHUNK:
        raise ResourceExhausted(
            f"{what} chunk of {len(data)} bytes exceeds {MAX_CHUNK}",
            reason="PAYLOAD_TOO_LARGE",
            limit=str(MAX_CHUNK),
        )


# Failing a client-streaming call while the client still sends can surface on the
# client as a bare INTERNAL ("Internal error from Core") instead of our status;
# reading what is in flight first lets the real error through. Bounded, so a huge
# upload to a full disk is not read whole.
DRAIN_LIMIT = 32 * 1024 * 1024
DRAIN_SECONDS = 2.0


async def drain_requests(requests: AsyncIterator[Any], seconds: float = DRAIN_SECONDS) -> None:
    async def consume() -> None:
        seen = 0
        async for req in requests:
            seen += req.ByteSize()
            if seen > DRAIN_LIMIT:
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(consume(), seconds)


def _translate(exc: BaseException) -> ComputeError:
    if isinstance(exc, ComputeError):
        return exc
    log.error("unexpected error", exc_info=exc)
    return Internal(f"internal error: {type(exc).__name__}")


def _context_of(self: Any, request: Any) -> dict[str, str]:
    sid = getattr(request, "sandbox_id", "")
    return {"sandbox_id": sid} if isinstance(sid, str) and sid else {}


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: ComputeError) -> None:
    st = to_status(err)
    await context.abort(st.code, st.details, st.trailing_metadata)


def edge(fn: F) -> F:
    """Wraps a servicer method: binds sandbox_id, maps errors to status once,
    records the call's latency and, for streams, that it is open, and writes the
    audit line of a call that changes something."""
    method = fn.__name__
    owner = fn.__qualname__.split(".")[0].removesuffix("Servicer")
    audited = f"{owner}Service/{method}" if not reads(method) else ""

    def record(request: Any, answer: Any, code: str) -> None:
        if audited:
            audit(audited, callers.current(), resource_of(request, answer), code)

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started, code = time.perf_counter(), "OK"
            metrics.OPEN_STREAMS.labels(method).inc()
            with bound_contextvars(**_context_of(self, request)):
                try:
                    async for item in fn(self, request, context):
                        yield item
                except (asyncio.CancelledError, GeneratorExit):
                    code = "CANCELLED"  # the client went (GeneratorExit: it closed early)
                    raise
                except grpc.aio.AbortError:
                    code = "ABORTED_BY_HANDLER"
                    raise
                except Exception as exc:
                    err = _translate(exc)
                    code = err.code.name
                    await abort(context, err)
                finally:
                    metrics.OPEN_STREAMS.labels(method).dec()
                    metrics.RPC_SECONDS.labels(method, code).observe(time.perf_counter() - started)
                    record(request, None, code)

        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started, code = time.perf_counter(), "OK"
        answer = None
        with bound_contextvars(**_context_of(self, request)):
            try:
                answer = await fn(self, request, context)
                return answer
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = "ABORTED_BY_HANDLER"
                raise
            except Exception as exc:
                err = _translate(exc)
                code = err.code.name
                await abort(context, err)
            finally:
                metrics.RPC_SECONDS.labels(method, code).observe(time.perf_counter() - started)
                record(request, answer, code)

    return unary  # type: ignore[return-value]
