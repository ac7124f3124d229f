"""The optional part of the provider contract: one small interface per feature.

A back end carries an interface by inheriting it, or by handing out an object that
does from Provider.part() (the local provider's snapshots, networks, ...). Its
capabilities (what ListProviders reports) follow from that, so the two cannot
disagree. The core asks for a feature with require(), which names the provider and
the feature when it is missing: a call never succeeds silently."""

from __future__ import annotations

import asyncio
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from computesdkd.domain.errors import Unsupported
from computesdkd.domain.model import (
    BuildStep,
    FileInfo,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    TemplateDefinition,
    TemplateInfo,
    Usage,
)

if TYPE_CHECKING:
    from computesdkd.domain.model import Command

# Capability names, as reported by ProviderService.ListProviders.
EXEC = "exec"
EXEC_STDIN = "exec.stdin"
EXEC_RESUME = "exec.resume"
BACKGROUND = "process.background"
SIGNALS = "process.signal"
FILESYSTEM = "filesystem"
EVENTS = "events"
RESOURCE_LIMITS = "resources.limits"
LIVE_LIMITS = "resources.live-limits"
USAGE = "resources.usage"
OOM_EVENTS = "events.out-of-memory"
GPU = "resources.gpu"
NETWORK_ISOLATION = "network.isolation"
DISK_LIMIT = "resources.disk"
RESET = "lifecycle.reset"
RESET_HARD = "lifecycle.reset.hard"
SHARED_NETWORK = "network.shared"
PORT_FORWARD = "network.port-forward"
PREVIEW_URL = "network.preview-url"
SNAPSHOTS = "snapshots"
VOLUMES = "volumes"
RESTART = "lifecycle.restart"
TEMPLATE_BUILD = "templates.build"

# What no method shows: a back end declares these as its traits.
TRAITS = frozenset(
    {
        EXEC_STDIN,
        SIGNALS,
        RESOURCE_LIMITS,
        OOM_EVENTS,
        GPU,
        NETWORK_ISOLATION,
        DISK_LIMIT,
        RESET_HARD,
    }
)
# Every back end runs commands and the daemon keeps its events.
ALWAYS = frozenset({EXEC, EVENTS})

# Receives a template build's progress and log lines as they happen.
BuildReport = Callable[[BuildStep], None]


class Files(ABC):
    """The file calls; common.execfs.FilesByExec carries them for any back end that
    can run commands."""

    @abstractmethod
    def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]: ...

    @abstractmethod
    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]: ...

    @abstractmethod
    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo: ...

    @abstractmethod
    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo: ...

    @abstractmethod
    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None: ...

    @abstractmethod
    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo: ...


class Metering(ABC):
    @abstractmethod
    async def usage(self, sandbox: Sandbox) -> Usage: ...


class Background(ABC):
    """Processes that outlive the call that started them."""

    @abstractmethod
    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo: ...

    @abstractmethod
    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None: ...

    @abstractmethod
    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None: ...


class ProcessListing(ABC):
    @abstractmethod
    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]: ...


class Reattach(ABC):
    """A process's output again from any byte offset, and its exit."""

    @abstractmethod
    def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]: ...


class LiveLimits(ABC):
    @abstractmethod
    async def set_limits(
        self, sandbox: Sandbox, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        """Changes limits of a running sandbox; zero leaves one as it is. Returns the
        limits now in force."""


class Resettable(ABC):
    @abstractmethod
    async def reset(self, sandbox: Sandbox, hard: bool) -> None:
        """Soft: kill every process, keep the files. Hard: also return the files to
        the template's initial state, keeping the sandbox id."""


class Restartable(ABC):
    @abstractmethod
    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        """Starts the sandbox again (with its spec and resources as they are now),
        keeping its files, or with wipe from the template's."""


class Snapshots(ABC):
    """A snapshot is the sandbox's files at one instant, kept by the provider under
    an id the daemon chooses. create() starts from one when the daemon puts its id
    in provider_data["from_snapshot"], or from an exported layer's path in
    provider_data["import_layer"]."""

    @abstractmethod
    async def snapshot_create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        """Takes the snapshot; returns the bytes the sandbox had written."""

    @abstractmethod
    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None: ...

    @abstractmethod
    async def snapshot_delete(self, snapshot_id: str) -> None: ...

    @abstractmethod
    def snapshot_ids(self) -> list[str]:
        """Every snapshot the provider holds, so the daemon can free unowned ones."""

    @abstractmethod
    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        """Writes a snapshot's files as an OCI-style tar layer."""


class Volumes(ABC):
    """Named, size-limited filesystems. A sandbox mounts them at create, listed in
    provider_data["volumes"] as JSON [[name, path, read_only], ...]."""

    @abstractmethod
    async def volume_create(self, name: str, size_mb: int) -> None: ...

    @abstractmethod
    async def volume_delete(self, name: str) -> None: ...

    @abstractmethod
    def volume_used_bytes(self, name: str) -> int: ...


class SharedNetworks(ABC):
    @abstractmethod
    async def create_network(self, network_id: str) -> None:
        """Makes an isolated segment that sandboxes of this provider can join."""

    @abstractmethod
    async def delete_network(self, network_id: str) -> None: ...

    @abstractmethod
    async def attach_network(
        self, sandbox: Sandbox, network_id: str, ifname: str, address: str, prefix: int
    ) -> None: ...

    @abstractmethod
    async def detach_network(self, sandbox: Sandbox, ifname: str) -> None: ...


class PortForwarding(ABC):
    @abstractmethod
    async def open_port(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a port the sandbox listens on (its own loopback)."""


class PreviewUrls(ABC):
    @abstractmethod
    async def preview_url(self, sandbox: Sandbox, port: int) -> str:
        """The vendor's own public URL for a port of the sandbox (its preview
        domain or tunnel), which reaches the port without the daemon in the path.
        May be given before anything listens. The vendor's access rules apply."""


class SandboxSockets(ABC):
    @abstractmethod
    def listen_in_sandbox(self, sandbox: Sandbox, name: str) -> socket.socket:
        """A listening Unix socket that processes in the sandbox can connect to (at
        /.computesdk/ctl/NAME inside) but cannot replace or redirect."""


class TemplateBuilds(ABC):
    @abstractmethod
    async def build_template(
        self, definition: TemplateDefinition, no_cache: bool, report: BuildReport
    ) -> tuple[TemplateInfo, bool]:
        """Builds and registers a custom template; returns it and whether it was a
        cache hit. Progress and log lines go to report as the build runs."""

    @abstractmethod
    async def delete_template(self, name: str) -> None: ...


class Leases(ABC):
    """For vendors whose sandboxes end at a timeout of their own."""

    @abstractmethod
    async def refresh_lease(self, sandbox: Sandbox) -> None:
        """Called now and then for keep-alive sandboxes: extend it when it runs low."""


# Each interface and the capability it gives (None: internal, not reported).
INTERFACES: dict[type, str | None] = {
    Files: FILESYSTEM,
    Metering: USAGE,
    Background: BACKGROUND,
    ProcessListing: None,
    Reattach: EXEC_RESUME,
    LiveLimits: LIVE_LIMITS,
    Resettable: RESET,
    Restartable: RESTART,
    Snapshots: SNAPSHOTS,
    Volumes: VOLUMES,
    SharedNetworks: SHARED_NETWORK,
    PortForwarding: PORT_FORWARD,
    PreviewUrls: PREVIEW_URL,
    SandboxSockets: None,
    TemplateBuilds: TEMPLATE_BUILD,
    Leases: None,
}

T = TypeVar("T")


class HasParts(Protocol):
    """A Provider, as derived() and require() see it."""

    name: str
    why_not: Mapping[str, str]

    def part(self, kind: type[T]) -> T | None: ...


def derived(provider: HasParts, traits: frozenset[str]) -> frozenset[str]:
    """What a back end can do: its parts, its declared traits, and ALWAYS."""
    stray = traits - TRAITS
    if stray:
        raise TypeError(f"{type(provider).__name__} declares {sorted(stray)}: not traits")
    shown = {cap for kind, cap in INTERFACES.items() if cap and provider.part(kind) is not None}
    return ALWAYS | traits | shown


def require(provider: HasParts, kind: type[T], feature: str) -> T:
    """The provider's part for that interface, or Unsupported naming both."""
    found = provider.part(kind)
    if found is None:
        raise Unsupported(provider.name, feature, provider.why_not.get(feature, ""))
    return found
