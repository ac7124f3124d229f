"""The Python client's error table: every reason from the enum, a status decoded
by grpc_status, the class by reason before the class by code."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from computesdk.errors import (
    REASONS,
    ComputeSDKError,
    InvalidArgumentError,
    NotFoundError,
    SandboxNotFoundError,
    UnavailableError,
    UnsupportedError,
    error_from,
    from_rpc_error,
)
from computesdk_api.errors.v1 import errors_pb2


def _failed(
    code: grpc.StatusCode, message: str, reason: str = "", **meta: str
) -> grpc.aio.AioRpcError:
    """A failed call as the daemon's edge makes it (rpc_status.to_status)."""
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="computesdk", metadata=meta))
        status = status_pb2.Status(
            code=getattr(code_pb2, code.name), message=message, details=[detail]
        )
        trailing = rpc_status.to_status(status).trailing_metadata
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=message
    )


def test_reasons_are_the_enum() -> None:
    names = {v.name for v in errors_pb2.Reason.DESCRIPTOR.values}
    assert {f"REASON_{r}" for r in REASONS} == names - {"REASON_UNSPECIFIED"}
    assert {"FEATURE_UNSUPPORTED", "SANDBOX_NOT_FOUND", "OUTPUT_TRUNCATED"} <= REASONS


def test_a_status_with_error_info_raises_by_reason_with_its_metadata() -> None:
    err = from_rpc_error(
        _failed(
            grpc.StatusCode.UNIMPLEMENTED,
            "no snapshots on e2b",
            "FEATURE_UNSUPPORTED",
            provider="e2b",
            feature="snapshots",
        )
    )
    assert type(err) is UnsupportedError
    assert (err.reason, err.message) == ("FEATURE_UNSUPPORTED", "no snapshots on e2b")
    assert err.metadata == {"provider": "e2b", "feature": "snapshots"}
    assert err.code == grpc.StatusCode.UNIMPLEMENTED


def test_without_a_mapped_reason_the_code_decides() -> None:
    unmapped = from_rpc_error(_failed(grpc.StatusCode.INVALID_ARGUMENT, "bad", "EMPTY_COMMAND"))
    assert type(unmapped) is InvalidArgumentError and unmapped.reason == "EMPTY_COMMAND"
    bare = from_rpc_error(_failed(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert type(bare) is UnavailableError and bare.reason == "" and bare.metadata == {}
    unknown = from_rpc_error(_failed(grpc.StatusCode.DATA_LOSS, "lost"))
    assert type(unknown) is ComputeSDKError


def test_batch_items_use_the_same_table() -> None:
    assert type(error_from("NOT_FOUND", "SANDBOX_NOT_FOUND", "x")) is SandboxNotFoundError
    assert type(error_from("NOT_FOUND", "VOLUME_NOT_FOUND", "x")) is NotFoundError
    assert type(error_from("UNIMPLEMENTED", "FEATURE_UNSUPPORTED", "x")) is UnsupportedError
    assert error_from("NO_SUCH_CODE", "", "x").code == grpc.StatusCode.UNKNOWN
