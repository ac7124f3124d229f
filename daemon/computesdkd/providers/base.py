"""The contract every back end implements: this module's Provider (lifecycle and
foreground commands, the part every back end has), plus the optional interfaces
in capabilities.py that a back end inherits for each feature it carries.

A provider turns domain calls into work on one platform: runc on this host, or a
vendor's API. What it cannot carry it does not implement, and the daemon answers
Unsupported naming the provider and the feature, so no call ever succeeds
silently. The daemon, not the provider, owns ids, timeouts, events and
persistence; that is what lets every provider offer the same lifecycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from computesdkd.domain.errors import Unsupported
from computesdkd.domain.model import (
    Command,
    Probe,
    ProcessEvent,
    Resources,
    Sandbox,
    TemplateInfo,
)
from computesdkd.providers.capabilities import derived


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


T = TypeVar("T")


class Provider(ABC):
    name: str = ""
    # What no interface shows (capabilities.TRAITS): stdin on exec, a GPU, ...
    traits: frozenset[str] = frozenset()
    # Why a feature is missing, where that helps the caller ({feature: why}).
    why_not: Mapping[str, str] = {}
    # How often the daemon looks at each sandbox (liveness, OOM). Cloud vendors are
    # asked less often, to stay well inside their rate limits.
    probe_interval_s: float = 1.0

    @property
    def capabilities(self) -> frozenset[str]:
        """What ListProviders reports: derived from the interfaces implemented."""
        return derived(self, self.traits)

    # Objects that carry optional interfaces for the provider (its snapshots,
    # networks, ...), so that the provider class itself stays the contract's core.
    parts: Sequence[object] = ()

    def part(self, kind: type[T]) -> T | None:
        """What carries that optional interface (capabilities.py): one of parts,
        else the provider itself when it inherits the interface."""
        for p in self.parts:
            if isinstance(p, kind):
                return p
        return self if isinstance(self, kind) else None

    async def start(self, ctx: ProviderContext) -> None:  # noqa: B027 - optional hook
        """Prepares the back end. Raise errors.Unavailable if it cannot run here."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases pools and sessions."""

    def availability(self) -> str:
        """Empty when usable, else why not."""
        return ""

    def templates(self) -> list[str]:
        return []

    def expected_resources(self, asked: Resources) -> Resources:
        """What a sandbox that asks this will hold, defaults filled in (quotas count
        it before the sandbox exists). By default what was asked."""
        return asked

    def template_infos(self) -> list[TemplateInfo]:
        """Every template, predefined and built; by default the predefined names."""
        return [TemplateInfo(name=n, provider=self.name) for n in self.templates()]

    def _unsupported(self, feature: str) -> Unsupported:
        return Unsupported(self.name, feature)

    @abstractmethod
    async def create(self, sandbox: Sandbox) -> None:
        """Makes the sandbox and returns once it can run commands.

        Fills sandbox.provider_sandbox_id and sandbox.provider_data, which the
        daemon persists and hands back on every later call.
        """

    @abstractmethod
    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        """Frees everything the sandbox holds. Must succeed on a half-made sandbox."""

    @abstractmethod
    async def adopt(self, sandbox: Sandbox) -> bool:
        """After a daemon restart: True when the sandbox still runs."""

    async def reconcile(self, live_ids: set[str]) -> None:  # noqa: B027 - optional hook
        """Called once at start, after every record was adopted: frees what a daemon
        killed mid-operation left on the back end and no sandbox in live_ids (this
        provider's sandboxes the daemon keeps) owns. Logs each thing it removes."""

    @abstractmethod
    async def probe(self, sandbox: Sandbox) -> Probe: ...

    async def healthy(self, sandbox: Sandbox) -> bool:
        """Whether the sandbox can take work now; pools ask before handing one out."""
        return (await self.probe(sandbox)).alive

    @abstractmethod
    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        """Starts a foreground command; its events say when it started and ended."""


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
