"""Typed exceptions, mapped from the daemon's status code and ErrorInfo.reason."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from computesdk_api.errors.v1 import errors_pb2

from .types import Event, ExecResult


class ComputeSDKError(Exception):
    """Base of every error the client raises for a failed call."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}

    def __str__(self) -> str:
        return f"{self.reason or self.code.name}: {self.message}"


class NotFoundError(ComputeSDKError): ...


class SandboxNotFoundError(NotFoundError): ...


class TemplateNotFoundError(NotFoundError): ...


class ProviderNotFoundError(NotFoundError): ...


class ProcessNotFoundError(NotFoundError): ...


class SandboxFileNotFoundError(NotFoundError): ...


class InvalidArgumentError(ComputeSDKError): ...


class PathOutsideSandboxError(InvalidArgumentError): ...


class FailedPreconditionError(ComputeSDKError): ...


class SandboxNotRunningError(FailedPreconditionError): ...


class TemplateBuildError(FailedPreconditionError):
    """A template build step failed; the message holds its last lines."""


class AlreadyExistsError(ComputeSDKError): ...


class ResourceExhaustedError(ComputeSDKError): ...


class PayloadTooLargeError(ResourceExhaustedError): ...


class UnsupportedError(ComputeSDKError):
    """The provider cannot carry the feature; metadata names both."""


class UnavailableError(ComputeSDKError): ...


class SandboxTerminatedError(ComputeSDKError):
    """The sandbox went away while the call was running."""


class DeadlineExceededError(ComputeSDKError): ...


class OutOfRangeError(ComputeSDKError):
    """For example OUTPUT_TRUNCATED: output before that offset is no longer kept."""


class PermissionDeniedError(ComputeSDKError): ...


class InternalError(ComputeSDKError): ...


class CommandExitError(ComputeSDKError):
    """A one-shot exec ended with a non-zero exit or a signal (exec(check=False)
    returns the result instead). Raised by the client, not sent by the daemon."""

    def __init__(self, result: ExecResult) -> None:
        how = f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        tail = (result.stderr or result.stdout).strip()[-500:]
        super().__init__(f"command failed with {how}" + (f": {tail}" if tail else ""))
        self.result = result
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exit_code = result.exit_code
        self.signal = result.signal
        self.oom_killed = result.oom_killed

    def __str__(self) -> str:
        return self.message


class SandboxEventError(ComputeSDKError):
    """What on("error") callbacks receive. type: "out-of-memory", "corruption" or
    "error" (the daemon's events of those names, kept in event), or
    "connection-lost" (the client's connection dropped; event is None)."""

    def __init__(self, type: str, message: str, sandbox_id: str, event: Event | None) -> None:
        super().__init__(message)
        self.type = type
        self.sandbox_id = sandbox_id
        self.event = event

    @property
    def attributes(self) -> dict[str, str]:
        return self.event.attributes if self.event is not None else {}

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


# Every reason the daemon can send: the names of the one enum they are defined in,
# without the REASON_ prefix. Reasons not mapped below raise by status code.
REASONS: frozenset[str] = frozenset(
    name.removeprefix("REASON_")
    for name in errors_pb2.Reason.DESCRIPTOR.values_by_name
    if name != "REASON_UNSPECIFIED"
)
_BY_REASON: dict[str, type[ComputeSDKError]] = {
    "SANDBOX_NOT_FOUND": SandboxNotFoundError,
    "TEMPLATE_NOT_FOUND": TemplateNotFoundError,
    "TEMPLATE_BUILD_FAILED": TemplateBuildError,
    "PROVIDER_NOT_FOUND": ProviderNotFoundError,
    "PROCESS_NOT_FOUND": ProcessNotFoundError,
    "FILE_NOT_FOUND": SandboxFileNotFoundError,
    "PATH_OUTSIDE_SANDBOX": PathOutsideSandboxError,
    "SANDBOX_NOT_RUNNING": SandboxNotRunningError,
    "PAYLOAD_TOO_LARGE": PayloadTooLargeError,
    "SANDBOX_TERMINATED": SandboxTerminatedError,
    "FEATURE_UNSUPPORTED": UnsupportedError,
}
_BY_CODE: dict[grpc.StatusCode, type[ComputeSDKError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.ABORTED: SandboxTerminatedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
}


def _typed(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
) -> ComputeSDKError:
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, ComputeSDKError)
    return cls(message, code=code, reason=reason, metadata=metadata)


def from_rpc_error(err: grpc.aio.AioRpcError) -> ComputeSDKError:
    """Turns a failed call into the most specific exception: by the ErrorInfo in
    its google.rpc.Status when the daemon sent one, else by its status code."""
    reason, metadata = "", {}
    # from_call reads only code(), details() and trailing_metadata(), which an
    # AioRpcError answers at once as a finished sync call does; the stubs know
    # only grpc.Call.
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
    return _typed(err.code(), reason, err.details() or "", metadata)


def error_from(code: str, reason: str, message: str) -> ComputeSDKError:
    """The typed error for one failed item of a batch or broadcast."""
    return _typed(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), reason, message)
