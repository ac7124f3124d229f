"""Domain errors. Each carries a canonical gRPC code name and a stable reason.

Domain code raises these; the gRPC edge (servicers/_edge.py) is the only place
that turns them into a status with google.rpc.ErrorInfo.
"""

from __future__ import annotations

import grpc

DOMAIN = "computesdk.dev"


class ComputeError(Exception):
    """Base of every error the daemon reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class NotFound(ComputeError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class InvalidArgument(ComputeError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class FailedPrecondition(ComputeError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class AlreadyExists(ComputeError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class ResourceExhausted(ComputeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class OutOfRange(ComputeError):
    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"


class Unavailable(ComputeError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Aborted(ComputeError):
    code = grpc.StatusCode.ABORTED
    reason = "ABORTED"


class DeadlineExceeded(ComputeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unsupported(ComputeError):
    """A provider cannot carry a feature. Names both, never silently succeeds."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "FEATURE_UNSUPPORTED"

    def __init__(self, provider: str, feature: str, why: str = "") -> None:
        text = f"provider {provider!r} does not support {feature}"
        super().__init__(f"{text}: {why}" if why else text, provider=provider, feature=feature)


class Internal(ComputeError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def sandbox_not_found(sandbox_id: str) -> NotFound:
    return NotFound(
        f"sandbox {sandbox_id!r} not found", reason="SANDBOX_NOT_FOUND", sandbox_id=sandbox_id
    )


# Reasons the agent inside a local sandbox reports, mapped to domain errors.
AGENT_REASONS: dict[str, type[ComputeError]] = {
    "PROCESS_NOT_FOUND": NotFound,
    "EXECUTABLE_NOT_FOUND": NotFound,
    "CWD_NOT_FOUND": NotFound,
    "INVALID_ARGUMENT": InvalidArgument,
    "TAG_IN_USE": AlreadyExists,
    "PROCESS_EXITED": FailedPrecondition,
    "STDIN_CLOSED": FailedPrecondition,
    "OUTPUT_TRUNCATED": OutOfRange,
    "EXEC_FAILED": FailedPrecondition,
}
