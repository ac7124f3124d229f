"""Domain errors. Each carries a canonical code and a stable reason.

Domain code raises these; the gRPC edge is the only place that turns them into a
status with google.rpc.ErrorInfo. Every reason is listed in
proto/computesdk/api/errors/v1/errors.proto (tests/test_reasons.py checks).
"""

from __future__ import annotations

import enum

DOMAIN = "computesdk.dev"


class Code(enum.Enum):
    """The canonical codes (google.rpc.Code) the daemon answers with; the edge maps
    each to the gRPC status of the same name."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class ComputeError(Exception):
    """Base of every error the daemon reports to a client."""

    code: Code = Code.INTERNAL
    reason: str = "INTERNAL"
    # Seconds after which a retry may succeed (sent as google.rpc.RetryInfo).
    retry_after: float | None = None

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class NotFound(ComputeError):
    code = Code.NOT_FOUND
    reason = "NOT_FOUND"


class InvalidArgument(ComputeError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class FailedPrecondition(ComputeError):
    code = Code.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class AlreadyExists(ComputeError):
    code = Code.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class ResourceExhausted(ComputeError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(ComputeError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


class PermissionDenied(ComputeError):
    code = Code.PERMISSION_DENIED
    reason = "SCOPE_INSUFFICIENT"


class OutOfRange(ComputeError):
    code = Code.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"


class Unavailable(ComputeError):
    code = Code.UNAVAILABLE
    reason = "UNAVAILABLE"


class Aborted(ComputeError):
    code = Code.ABORTED
    reason = "ABORTED"


class DeadlineExceeded(ComputeError):
    code = Code.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unsupported(ComputeError):
    """A provider cannot carry a feature. Names both, never silently succeeds."""

    code = Code.UNIMPLEMENTED
    reason = "FEATURE_UNSUPPORTED"

    def __init__(self, provider: str, feature: str, why: str = "") -> None:
        text = f"provider {provider!r} does not support {feature}"
        super().__init__(f"{text}: {why}" if why else text, provider=provider, feature=feature)


class Internal(ComputeError):
    code = Code.INTERNAL
    reason = "INTERNAL"


def not_found(kind: str, key: str) -> NotFound:
    """What is answered for a pool, group, network, channel, volume or state that is
    not there (or is another tenant's: the answer must be the same)."""
    attr = "state_id" if kind == "state" else kind
    return NotFound(f"{kind} {key!r} not found", reason=f"{kind.upper()}_NOT_FOUND", **{attr: key})


def already_exists(kind: str, key: str) -> AlreadyExists:
    """What a create answers for a name that is taken (by anyone: names are global)."""
    return AlreadyExists(f"{kind} {key!r} exists", reason=f"{kind.upper()}_EXISTS", **{kind: key})


def template_not_found(name: str, provider: str) -> NotFound:
    """One answer for a template that is not there, whoever asks and whatever for:
    another tenant's must read the same, so it lists no names."""
    return NotFound(
        f"template {name!r} is not known to provider {provider!r} "
        "(computesdk template ls lists them)",
        reason="TEMPLATE_NOT_FOUND",
        template=name,
        provider=provider,
    )


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
