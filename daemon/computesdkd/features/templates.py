"""Templates: the predefined ones and the custom ones users build.

The provider builds and keeps a template (for local: cached, content-addressed
layers); this module checks definitions, streams a build's progress while it
runs, and refuses to delete a template that a sandbox, a pool or a saved
state still stands on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    template_not_found,
)
from computesdkd.domain.model import BuildStep, TemplateDefinition, TemplateInfo
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import Provider
from computesdkd.providers.capabilities import require
from computesdkd.support import logs

log = logs.get(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,127}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
MAX_STEPS = 256
MAX_STEP_BYTES = 64 * 1024
MAX_PACKAGES = 1024
MAX_BASE_IMAGE = 4096
# Daemon-wide events (no sandbox): SubscribeEvents without a sandbox filter sees them.
TEMPLATE_BUILT, TEMPLATE_DELETED = "template.built", "template.deleted"


@dataclass(frozen=True)
class BuildOutcome:
    template: TemplateInfo
    cache_hit: bool
    duration_ms: int


class Templates:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        bus: EventBus,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._bus = bus
        # (provider, template) -> what uses it, one per feature that keeps templates.
        self.users_of: list[Callable[[str, str], list[str]]] = []

    def _provider(self, name: str) -> Provider:
        return self._providers.get(name or self._providers.default)

    def all(self, provider: str) -> list[TemplateInfo]:
        return self._provider(provider).template_infos()

    def get(self, provider: str, name: str) -> TemplateInfo:
        p = self._provider(provider)
        for info in p.template_infos():
            if info.name == name:
                return info
        raise template_not_found(name, p.name)

    async def build(
        self, provider: str, definition: TemplateDefinition, no_cache: bool
    ) -> AsyncGenerator[BuildStep | BuildOutcome, None]:
        """Yields progress and log lines as the build runs, then the outcome. Closing
        the iterator early (the client went away) cancels the build."""
        _check(definition)
        p = self._provider(provider)
        started = time.monotonic()
        steps: asyncio.Queue[BuildStep] = asyncio.Queue()
        task = asyncio.create_task(
            self._providers.guarded(
                p,
                require(p, caps.TemplateBuilds, "custom templates").build_template(
                    definition, no_cache, steps.put_nowait
                ),
            )
        )
        try:
            while not task.done():
                getter = asyncio.ensure_future(steps.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            while not steps.empty():
                yield steps.get_nowait()
            info, hit = task.result()
            self._bus.emit(
                "",
                TEMPLATE_BUILT,
                template=info.name,
                provider=p.name,
                digest=info.digest,
                cache_hit=str(hit).lower(),
            )
            yield BuildOutcome(info, hit, int((time.monotonic() - started) * 1000))
        finally:
            if not task.done():
                log.info("template build cancelled", template=definition.name)
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def delete(self, provider: str, name: str) -> None:
        p = self._provider(provider)
        users = self.users(p.name, name)
        if users:
            raise FailedPrecondition(
                f"template {name!r} is in use by {', '.join(users)}",
                reason="TEMPLATE_IN_USE",
                template=name,
            )
        await self._providers.guarded(
            p, require(p, caps.TemplateBuilds, "custom templates").delete_template(name)
        )
        self._bus.emit("", TEMPLATE_DELETED, template=name, provider=p.name)

    def users(self, provider: str, name: str) -> list[str]:
        """What still stands on a template: sandboxes, and what the features that
        keep templates (pools, saved states) report."""
        out = [
            f"sandbox {sb.id}"
            for sb in self._registry.all()
            if sb.spec.provider == provider and sb.spec.template == name
        ]
        for users in self.users_of:
            out += users(provider, name)
        return out


def _check(d: TemplateDefinition) -> None:
    def bad(why: str, reason: str = "TEMPLATE_DEFINITION_INVALID") -> InvalidArgument:
        return InvalidArgument(f"template {d.name!r}: {why}", reason=reason, template=d.name)

    if not NAME.match(d.name):
        raise bad(
            "a name is 1-128 of a-z, 0-9, '.', '_', '-', ':' and starts with a letter or digit",
            "TEMPLATE_NAME_INVALID",
        )
    if len(d.base_image) > MAX_BASE_IMAGE:
        raise bad("base_image is too long")
    if len(d.packages) > MAX_PACKAGES:
        raise bad(f"more than {MAX_PACKAGES} packages")
    if len(d.setup) > MAX_STEPS:
        raise bad(f"more than {MAX_STEPS} setup commands")
    for cmd in d.setup:
        if not cmd.strip():
            raise bad("a setup command is empty")
        if len(cmd.encode()) > MAX_STEP_BYTES:
            raise bad(f"a setup command is over {MAX_STEP_BYTES} bytes")
    for key in d.env:
        if not ENV_KEY.match(key):
            raise bad(f"env name {key!r} is not a variable name")
