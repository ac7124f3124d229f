"""The contract every back end implements.

A provider turns domain calls into work on one platform: runc on this host, or a
vendor's API. Anything it cannot carry raises errors.Unsupported naming itself and
the feature, so no call ever succeeds silently. The daemon, not the provider,
owns ids, timeouts, events and persistence; that is what lets every provider
offer the same lifecycle.
"""

from __future__ import annotations

import asyncio
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from computesdkd.domain.errors import Unsupported
from computesdkd.domain.model import (
    BuildStep,
    Command,
    FileInfo,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    TemplateDefinition,
    TemplateInfo,
    Usage,
)
from computesdkd.providers.execfs import ExecFS

# Capability names, as reported by ProviderService.ListProviders.
EXEC = "exec"
EXEC_STDIN = "exec.stdin"
EXEC_RESUME = "exec.resume"
BACKGROUND = "process.background"
SIGNALS = "process.signal"
FILESYSTEM = "filesystem"
EVENTS = "events"
RESOURCE_LIMITS = "resources.limits"
USAGE = "resources.usage"
OOM_EVENTS = "events.out-of-memory"
GPU = "resources.gpu"
NETWORK_ISOLATION = "network.isolation"
DISK_LIMIT = "resources.disk"
RESET = "lifecycle.reset"
RESET_HARD = "lifecycle.reset.hard"
SHARED_NETWORK = "network.shared"
PORT_FORWARD = "network.port-forward"
SNAPSHOTS = "snapshots"
VOLUMES = "volumes"
RESTART = "lifecycle.restart"
TEMPLATE_BUILD = "templates.build"


# Receives a template build's progress and log lines as they happen.
BuildReport = Callable[[BuildStep], None]


@dataclass(frozen=True)
class ProviderConfig:
    """What a provider's factory gets: its own settings, read once at start.
    Providers read nothing from os.environ themselves."""

    name: str
    # The variables the provider may read (credentials, endpoints): the daemon's
    # environment, with the config file's indirections applied.
    env: Mapping[str, str] = field(default_factory=dict)
    # The rest of the provider's [providers.NAME] table in the config file.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderContext:
    """What the daemon hands a provider when it starts."""

    state_dir: Path
    # Called with (sandbox_id, event type, message, attributes) for events the
    # provider notices on its own.
    emit: Callable[..., object]


class Provider(ABC):
    name: str = ""
    capabilities: frozenset[str] = frozenset()
    # How often the daemon looks at each sandbox (liveness, OOM). Cloud vendors are
    # asked less often, to stay well inside their rate limits.
    probe_interval_s: float = 1.0

    async def start(self, ctx: ProviderContext) -> None:  # noqa: B027 - optional hook
        """Prepares the back end. Raise errors.Unavailable if it cannot run here."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases pools and sessions."""

    def availability(self) -> str:
        """Empty when usable, else why not."""
        return ""

    def templates(self) -> list[str]:
        return []

    def template_infos(self) -> list[TemplateInfo]:
        """Every template, predefined and built; by default the predefined names."""
        return [TemplateInfo(name=n, provider=self.name) for n in self.templates()]

    async def build_template(
        self, definition: TemplateDefinition, no_cache: bool, report: BuildReport
    ) -> tuple[TemplateInfo, bool]:
        """Builds and registers a custom template; returns it and whether it was
        a cache hit. Progress and log lines go to report as the build runs."""
        raise self._unsupported("custom templates")

    async def delete_template(self, name: str) -> None:
        raise self._unsupported("custom templates")

    def _unsupported(self, feature: str) -> Unsupported:
        return Unsupported(self.name, feature)

    # -------------------------------------------------------------- lifecycle

    @abstractmethod
    async def create(self, sandbox: Sandbox) -> None:
        """Makes the sandbox and returns once it can run commands.

        Fills sandbox.provider_sandbox_id and sandbox.provider_data, which the
        daemon persists and hands back on every later call.
        """

    @abstractmethod
    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        """Frees everything the sandbox holds. Must succeed on a half-made sandbox."""

    async def refresh_lease(self, sandbox: Sandbox) -> None:  # noqa: B027 - optional hook
        """Called now and then for keep-alive sandboxes, for vendors whose sandboxes end
        at a timeout of their own; extend it here when it runs low."""

    async def set_limits(
        self,
        sandbox: Sandbox,
        *,
        cpu_cores: float = 0.0,
        memory_mb: int = 0,
        disk_mb: int = 0,
    ) -> Resources:
        """Changes limits of a running sandbox; zero leaves one as it is. Returns the
        limits now in force."""
        raise self._unsupported("live limits")

    async def adopt(self, sandbox: Sandbox) -> bool:
        """After a daemon restart: True when the sandbox still runs."""
        raise self._unsupported("adopt")

    async def reconcile(self, live_ids: set[str]) -> None:  # noqa: B027 - optional hook
        """Called once at start, after every record was adopted: frees what a daemon
        killed mid-operation left on the back end and no sandbox in live_ids (this
        provider's sandboxes the daemon keeps) owns. Logs each thing it removes."""

    async def probe(self, sandbox: Sandbox) -> Probe:
        raise self._unsupported("probe")

    async def healthy(self, sandbox: Sandbox) -> bool:
        """Whether the sandbox can take work now; pools ask before handing one out."""
        return (await self.probe(sandbox)).alive

    async def reset(self, sandbox: Sandbox, hard: bool) -> None:
        """Soft: kill every process, keep the files. Hard: also return the files to
        the template's initial state, keeping the sandbox id."""
        if hard:
            raise self._unsupported("hard reset")
        if BACKGROUND not in self.capabilities:
            raise self._unsupported("reset")
        for proc in await self.list_processes(sandbox):
            if proc.running:
                await self.signal(sandbox, proc.process_id, 9)

    async def usage(self, sandbox: Sandbox) -> Usage:
        """Default: sampled by a command inside the sandbox."""
        if USAGE not in self.capabilities:
            raise self._unsupported("resource usage")
        return await self._files(sandbox).usage()

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        """Starts the sandbox again (with its spec and resources as they are now),
        keeping its files, or with wipe from the template's."""
        raise self._unsupported("restart")

    # -------------------------------------------------------------- snapshots
    # A snapshot is the sandbox's files at one instant, kept by the provider under
    # an id the daemon chooses. create() starts from one when the daemon puts its
    # id in provider_data["from_snapshot"].

    async def snapshot_create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        """Takes the snapshot; returns the bytes the sandbox had written."""
        raise self._unsupported("snapshots")

    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        raise self._unsupported("snapshots")

    async def snapshot_delete(self, snapshot_id: str) -> None:
        raise self._unsupported("snapshots")

    def snapshot_ids(self) -> list[str]:
        """Every snapshot the provider holds, so the daemon can free unowned ones."""
        return []

    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        """Writes a snapshot's files as an OCI-style tar layer. create() starts from
        one when the daemon puts its path in provider_data["import_layer"]."""
        raise self._unsupported("state export")

    # -------------------------------------------------------------- volumes
    # Named, size-limited filesystems. A sandbox mounts them at create, listed in
    # provider_data["volumes"] as JSON [[name, path, read_only], ...].

    async def volume_create(self, name: str, size_mb: int) -> None:
        raise self._unsupported("volumes")

    async def volume_delete(self, name: str) -> None:
        raise self._unsupported("volumes")

    def volume_used_bytes(self, name: str) -> int:
        raise self._unsupported("volumes")

    # -------------------------------------------------------------- networks

    async def create_network(self, network_id: str) -> None:
        """Makes an isolated segment that sandboxes of this provider can join."""
        raise self._unsupported("shared networks")

    async def delete_network(self, network_id: str) -> None:
        raise self._unsupported("shared networks")

    async def attach_network(
        self, sandbox: Sandbox, network_id: str, ifname: str, address: str, prefix: int
    ) -> None:
        raise self._unsupported("shared networks")

    async def detach_network(self, sandbox: Sandbox, ifname: str) -> None:
        raise self._unsupported("shared networks")

    def listen_in_sandbox(self, sandbox: Sandbox, name: str) -> socket.socket:
        """A listening Unix socket that processes in the sandbox can connect to (at
        /.computesdk/ctl/NAME inside) but cannot replace or redirect."""
        raise self._unsupported("in-sandbox sockets")

    async def open_port(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a port the sandbox listens on (its own loopback)."""
        raise self._unsupported("port forwarding")

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        raise self._unsupported("exec")

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        raise self._unsupported("process attach")
        yield  # pragma: no cover - marks this as an async generator

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        raise self._unsupported("background processes")

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        raise self._unsupported("stdin")

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        raise self._unsupported("signals")

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        raise self._unsupported("process listing")

    # -------------------------------------------------------------- filesystem
    # Defaults run commands inside the sandbox (execfs.py), so every provider that
    # can exec serves the same file calls; providers with a native API override them.

    def _files(self, sandbox: Sandbox) -> ExecFS:
        if EXEC not in self.capabilities:
            raise self._unsupported("filesystem")
        return ExecFS(lambda cmd: self.run(sandbox, cmd))

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        async for chunk in self._files(sandbox).read(path, offset, length):
            yield chunk

    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        return await self._files(sandbox).write(path, chunks, mode, make_parents, append)

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        return await self._files(sandbox).list_dir(path)

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        return await self._files(sandbox).stat(path)

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        return await self._files(sandbox).mkdir(path, parents)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        await self._files(sandbox).remove(path, recursive)

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        return await self._files(sandbox).move(source, destination)


class ProcessRun(ABC):
    """A foreground command: its events, plus the means to feed and signal it."""

    @abstractmethod
    def events(self) -> AsyncIterator[ProcessEvent]: ...

    @abstractmethod
    async def send_stdin(self, data: bytes) -> None: ...

    @abstractmethod
    async def close_stdin(self) -> None: ...

    @abstractmethod
    async def send_signal(self, signal: int) -> None: ...

    @abstractmethod
    async def aclose(self) -> None:
        """Stops listening; kills the command if it still runs and kill_on_close was set."""


Factory = Callable[[ProviderConfig], Provider]
_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Registers a back end's factory under a provider name; the daemon calls it
    once at start with that provider's config."""

    def deco(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        return factory

    return deco


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def get_factory(name: str) -> Factory | None:
    return _REGISTRY.get(name)
