"""Plain result types of the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from computesdk_api.events.v1 import events_pb2
from computesdk_api.filesystem.v1 import filesystem_pb2
from computesdk_api.monitoring.v1 import monitoring_pb2
from computesdk_api.process.v1 import process_pb2
from computesdk_api.sandbox.v1 import sandbox_pb2

STATE_NAMES = {
    sandbox_pb2.STATE_CREATING: "creating",
    sandbox_pb2.STATE_RUNNING: "running",
    sandbox_pb2.STATE_STOPPING: "stopping",
    sandbox_pb2.STATE_STOPPED: "stopped",
    sandbox_pb2.STATE_ERROR: "error",
}


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    signal: int = 0
    timed_out: bool = False
    oom_killed: bool = False
    process_id: str = ""
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class OutputChunk:
    stream: Literal["stdout", "stderr"]
    data: bytes
    offset: int

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass(frozen=True)
class Resources:
    cpu_cores: float = 0.0
    memory_mb: int = 0
    disk_mb: int = 0
    pids_limit: int = 0
    gpu: bool = False
    gpu_type: str = ""

    def to_proto(self) -> sandbox_pb2.Resources:
        return sandbox_pb2.Resources(
            cpu_cores=self.cpu_cores,
            memory_mb=self.memory_mb,
            disk_mb=self.disk_mb,
            pids_limit=self.pids_limit,
            gpu=sandbox_pb2.GpuSpec(enabled=self.gpu, type=self.gpu_type),
        )

    @classmethod
    def from_proto(cls, r: sandbox_pb2.Resources) -> Resources:
        return cls(r.cpu_cores, r.memory_mb, r.disk_mb, r.pids_limit, r.gpu.enabled, r.gpu.type)


@dataclass(frozen=True)
class SandboxStatus:
    state: str
    uptime_ms: int
    resources: Resources
    memory_used_bytes: int = 0
    memory_limit_bytes: int = 0
    process_count: int = 0
    cpu_time_ns: int = 0
    disk_used_bytes: int = 0
    disk_limit_bytes: int = 0

    @classmethod
    def from_proto(cls, r: sandbox_pb2.GetSandboxStatusResponse) -> SandboxStatus:
        u = r.usage
        return cls(
            STATE_NAMES.get(r.state, "unknown"),
            r.uptime_ms,
            Resources.from_proto(r.resources),
            u.memory_used_bytes,
            u.memory_limit_bytes,
            u.process_count,
            u.cpu_time_ns,
            u.disk_used_bytes,
            u.disk_limit_bytes,
        )


@dataclass(frozen=True)
class Event:
    sequence: int
    time: datetime
    sandbox_id: str
    type: str
    message: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, e: events_pb2.Event) -> Event:
        return cls(
            e.sequence, e.time.ToDatetime(), e.sandbox_id, e.type, e.message, dict(e.attributes)
        )


@dataclass(frozen=True)
class ProcessInfo:
    process_id: str
    pid: int
    args: list[str]
    tag: str
    running: bool
    exit_code: int | None
    stdout_bytes: int
    stderr_bytes: int

    @classmethod
    def from_proto(cls, p: process_pb2.Process) -> ProcessInfo:
        return cls(
            p.process_id,
            p.pid,
            list(p.args),
            p.tag,
            p.running,
            p.exited.exit_code if p.HasField("exited") else None,
            p.stdout_bytes,
            p.stderr_bytes,
        )


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    type: str
    size: int
    mode: int
    modified: datetime
    link_target: str = ""

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @classmethod
    def from_proto(cls, f: filesystem_pb2.FileInfo) -> FileInfo:
        kinds = {1: "file", 2: "directory", 3: "symlink"}
        return cls(
            f.name,
            f.path,
            kinds.get(f.type, "other"),
            f.size,
            f.mode,
            f.modify_time.ToDatetime(),
            f.link_target,
        )


def _percent(used: float, total: float) -> float:
    return used * 100.0 / total if total > 0 else 0.0


@dataclass(frozen=True)
class CpuUsage:
    percent: float  # of one core: 200 is two cores busy


@dataclass(frozen=True)
class MemoryUsage:
    used_mb: float
    total_mb: float  # the limit; 0 when the provider reports none
    percent: float


@dataclass(frozen=True)
class DiskUsage(MemoryUsage): ...


@dataclass(frozen=True)
class NetworkUsage:
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class ResourceUsage:
    """One sample. Read it in the shape every client shares (usage.cpu.percent,
    usage.memory.used_mb / total_mb, usage.disk..., usage.network.rx_bytes), or
    flat (cpu_percent, memory_used_mb, ...)."""

    time: datetime
    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float
    disk_used_mb: float
    disk_total_mb: float
    network_rx_bytes: int
    network_tx_bytes: int
    has_network: bool
    process_count: int

    @classmethod
    def from_proto(cls, u: monitoring_pb2.Usage) -> ResourceUsage:
        mb = 1024 * 1024
        return cls(
            u.sample_time.ToDatetime(),
            u.cpu_percent,
            u.memory_used_bytes / mb,
            u.memory_limit_bytes / mb,
            u.disk_used_bytes / mb,
            u.disk_limit_bytes / mb,
            u.network_rx_bytes,
            u.network_tx_bytes,
            u.has_network,
            u.process_count,
        )

    @property
    def cpu(self) -> CpuUsage:
        return CpuUsage(self.cpu_percent)

    @property
    def memory(self) -> MemoryUsage:
        m = self.memory_used_mb, self.memory_total_mb
        return MemoryUsage(*m, _percent(*m))

    @property
    def disk(self) -> DiskUsage:
        d = self.disk_used_mb, self.disk_total_mb
        return DiskUsage(*d, _percent(*d))

    @property
    def network(self) -> NetworkUsage:
        return NetworkUsage(self.network_rx_bytes, self.network_tx_bytes)


@dataclass(frozen=True)
class ResourceAlert:
    """A resourceAlert event, as on("resourceAlert") callbacks receive it: type is
    the resource (cpu, memory, disk), current and threshold are percents."""

    type: str
    current: float
    threshold: float
    message: str
    sandbox_id: str
    event: Event

    @property
    def attributes(self) -> dict[str, str]:
        return self.event.attributes

    @classmethod
    def from_event(cls, ev: Event) -> ResourceAlert:
        a = ev.attributes

        def num(key: str) -> float:
            try:
                return float(a.get(key, "0"))
            except ValueError:
                return 0.0

        return cls(a.get("type", ""), num("current"), num("threshold"), ev.message,
                   ev.sandbox_id, ev)  # fmt: skip


@dataclass(frozen=True)
class AlertThreshold:
    """Fires a resourceAlert event when use crosses percent of the limit; re-arms below
    clear_percent (default percent - 10)."""

    type: Literal["cpu", "memory", "disk"]
    percent: float
    clear_percent: float = 0.0


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    results: dict[str, tuple[bool, str]]  # check name -> (healthy, message)

    def __bool__(self) -> bool:
        return self.healthy

    @classmethod
    def from_proto(cls, r: monitoring_pb2.CheckHealthResponse) -> HealthReport:
        return cls(r.healthy, {x.name: (x.healthy, x.message) for x in r.results})
