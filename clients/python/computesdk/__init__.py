"""computesdk: the Python client of computesdkd.

from computesdk import compute

sandbox = await compute("local", template="python")
result = await sandbox.exec("python3 --version")  # CommandExitError on a non-zero exit
await sandbox.destroy()
"""

from .client import Client, compute, connect, list_active_sandboxes
from .coordination import MessageQueue, SharedNetwork, create_shared_network
from .errors import (
    AlreadyExistsError,
    CommandExitError,
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
    SandboxEventError,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxTerminatedError,
    TemplateBuildError,
    TemplateNotFoundError,
    UnavailableError,
    UnsupportedError,
)
from .options import SandboxConfig, TemplateDefinition, VolumeSpec
from .sandbox import ExecStream, Files, Process, Sandbox
from .state import SnapshotInfo, StateInfo, VolumeInfo
from .templates import BuildLog, BuildProgress, BuildResult, TemplateInfo
from .types import (
    AlertThreshold,
    Event,
    ExecResult,
    FileInfo,
    HealthReport,
    OutputChunk,
    ProcessInfo,
    ResourceAlert,
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
    "CommandExitError",
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
    "MessageQueue",
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
    "ResourceAlert",
    "ResourceExhaustedError",
    "ResourceUsage",
    "Resources",
    "Sandbox",
    "SandboxConfig",
    "SandboxEventError",
    "SandboxFileNotFoundError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxStatus",
    "SandboxTerminatedError",
    "SharedNetwork",
    "SnapshotInfo",
    "StateInfo",
    "TemplateBuildError",
    "TemplateDefinition",
    "TemplateInfo",
    "TemplateNotFoundError",
    "UnavailableError",
    "UnsupportedError",
    "VolumeInfo",
    "VolumeSpec",
    "compute",
    "connect",
    "create_shared_network",
    "list_active_sandboxes",
]
