"""Domain types shared by the manager, the providers and the gRPC edge."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal


class State(enum.IntEnum):
    # Values match computesdk.api.sandbox.v1.State.
    CREATING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    ERROR = 5


@dataclass(frozen=True)
class Resources:
    cpu_cores: float = 0.0
    memory_mb: int = 0
    disk_mb: int = 0
    pids_limit: int = 0
    gpu_enabled: bool = False
    gpu_type: str = ""
    gpu_count: int = 0


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False
    # Makes the volume (this size) when it does not exist yet; `size` is the
    # same as a string ("10GB", "10GiB"), parsed by features/volumes.py.
    size_mb: int = 0
    size: str = ""
    # For a volume this create makes: it outlives the sandbox.
    persistent: bool = False
    # The volume must exist already (the spec's mountExisting).
    must_exist: bool = False


@dataclass(frozen=True)
class SandboxSpec:
    provider: str
    template: str
    metadata: dict[str, str]
    timeout_ms: int
    keep_alive: bool
    resources: Resources
    env: dict[str, str]
    request_id: str = ""
    fallback_providers: tuple[str, ...] = ()
    # 0: the daemon's default, 1: may take a warm pooled sandbox, 2: never.
    pool_policy: int = 0
    # Start from this saved state (SnapshotService.SaveState) instead of the template.
    restore_from: str = ""
    volumes: tuple[VolumeMount, ...] = ()
    # Who the sandbox belongs to; empty for the admin (the Unix socket).
    tenant: str = ""
    # Ports a provider must know at create to expose them later (Vercel, Modal).
    ports: tuple[int, ...] = ()


@dataclass
class Sandbox:
    id: str
    spec: SandboxSpec
    state: State
    created_at: float
    expires_at: float
    provider_sandbox_id: str = ""
    # Provider-owned data persisted with the sandbox (paths, handles).
    provider_data: dict[str, str] = field(default_factory=dict)
    error_message: str = ""
    started_at: float = 0.0
    # Limits in force, as the provider resolved them (spec.resources is what was asked).
    resources: Resources = field(default_factory=Resources)
    # What the last create, scale or limit change asked for, when the provider
    # capped it at the host; empty when nothing was capped.
    requested: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class Command:
    args: list[str]
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    timeout_ms: int = 0
    stdin: bool = False


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    signal: int = 0
    duration_ms: int = 0
    timed_out: bool = False
    oom_killed: bool = False


@dataclass(frozen=True)
class ProcessInfo:
    process_id: str
    pid: int
    args: list[str]
    tag: str
    running: bool
    exit: ExitStatus | None
    start_unix_ms: int
    stdout_bytes: int = 0
    stderr_bytes: int = 0


@dataclass(frozen=True)
class Started:
    process_id: str
    pid: int


@dataclass(frozen=True)
class Output:
    stream: Literal["stdout", "stderr"]
    data: bytes
    offset: int


ProcessEvent = Started | Output | ExitStatus


class FileKind(enum.IntEnum):
    # Values match computesdk.api.filesystem.v1.FileType.
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    OTHER = 4


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    kind: FileKind
    size: int
    mode: int
    mtime: float
    link_target: str = ""


@dataclass(frozen=True)
class Usage:
    memory_used_bytes: int = 0
    memory_limit_bytes: int = 0
    process_count: int = 0
    cpu_time_ns: int = 0
    disk_used_bytes: int = 0
    disk_limit_bytes: int = 0
    network_rx_bytes: int = 0
    network_tx_bytes: int = 0
    has_network: bool = False
    # Filled in by the daemon's sampler from two cpu_time_ns readings.
    cpu_percent: float = 0.0
    sample_time: float = 0.0


@dataclass(frozen=True)
class Probe:
    """What a periodic look at a sandbox found."""

    alive: bool
    oom_kills: int = 0


@dataclass(frozen=True)
class Event:
    sequence: int
    time: float
    sandbox_id: str
    type: str
    message: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthResult:
    name: str
    healthy: bool
    message: str
    duration_ms: int


@dataclass(frozen=True)
class ScalingPolicy:
    cpu_threshold: float  # percent of the current limit; 0 = not scaled
    memory_threshold: float
    max_cpu_cores: float
    max_memory_mb: int
    cooldown_s: float
    interval_s: float


@dataclass(frozen=True)
class TemplateDefinition:
    """What a custom template is built from."""

    name: str
    base_image: str = ""
    packages: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    description: str = ""
    # What installs `packages`: "", "auto", "apt", "pip", "npm".
    package_manager: str = ""


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    provider: str
    description: str = ""
    builtin: bool = True
    # Content address of a built template; empty for predefined ones.
    digest: str = ""
    definition: TemplateDefinition | None = None
    base_image_digest: str = ""
    env: dict[str, str] = field(default_factory=dict)
    layer_count: int = 0
    size_bytes: int = 0
    created_at: float = 0.0
    unavailable: str = ""


@dataclass(frozen=True)
class BuildStep:
    """One report from a template build: progress, or (with line set) a log line."""

    step: int
    total: int
    description: str = ""
    line: str | None = None
    stderr: bool = False
    bytes_done: int = 0
    bytes_total: int = 0
