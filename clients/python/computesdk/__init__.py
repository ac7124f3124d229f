"""computesdk: the Python client of computesdkd.

from computesdk import compute

sandbox = await compute("local", template="python")
result = await sandbox.exec("python3 --version")
await sandbox.destroy()
"""

from .client import Client, compute, connect
from .errors import (
    AlreadyExistsError,
    ComputeSDKError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PathOutsideSandboxError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProcessNotFoundError,
    ProviderNotFoundError,
    ResourceExhaustedError,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxTerminatedError,
    TemplateBuildError,
    TemplateNotFoundError,
    UnavailableError,
    UnsupportedError,
)
from .sandbox import ExecStream, Files, Process, Sandbox
from .templates import BuildLog, BuildProgress, BuildResult, TemplateInfo
from .types import (
    AlertThreshold,
    Event,
    ExecResult,
    FileInfo,
    HealthReport,
    OutputChunk,
    ProcessInfo,
    Resources,
    ResourceUsage,
    SandboxStatus,
)

__version__ = "0.1.0"

__all__ = [
    "AlertThreshold",
    "AlreadyExistsError",
    "BuildLog",
    "BuildProgress",
    "BuildResult",
    "Client",
    "ComputeSDKError",
    "DeadlineExceededError",
    "Event",
    "ExecResult",
    "ExecStream",
    "FailedPreconditionError",
    "FileInfo",
    "Files",
    "HealthReport",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "OutputChunk",
    "PathOutsideSandboxError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Process",
    "ProcessInfo",
    "ProcessNotFoundError",
    "ProviderNotFoundError",
    "ResourceExhaustedError",
    "ResourceUsage",
    "Resources",
    "Sandbox",
    "SandboxFileNotFoundError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxStatus",
    "SandboxTerminatedError",
    "TemplateBuildError",
    "TemplateInfo",
    "TemplateNotFoundError",
    "UnavailableError",
    "UnsupportedError",
    "compute",
    "connect",
]
