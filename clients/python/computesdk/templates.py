"""Templates: list the predefined ones, build and register custom ones.
Reached as client.templates."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from computesdk_api.template.v1 import template_pb2 as pb

from . import _rpc
from .errors import InternalError

if TYPE_CHECKING:
    from .client import Client


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    provider: str
    description: str
    builtin: bool
    digest: str
    base_image: str
    packages: tuple[str, ...]
    setup: tuple[str, ...]
    env: dict[str, str]
    base_image_digest: str
    layer_count: int
    size_bytes: int
    created: datetime | None
    unavailable_reason: str

    @classmethod
    def from_proto(cls, t: pb.Template) -> TemplateInfo:
        d = t.definition
        return cls(
            name=t.name,
            provider=t.provider,
            description=t.description,
            builtin=t.builtin,
            digest=t.digest,
            base_image=d.base_image,
            packages=tuple(d.packages),
            setup=tuple(d.setup),
            env=dict(t.env),
            base_image_digest=t.base_image_digest,
            layer_count=t.layer_count,
            size_bytes=t.size_bytes,
            created=t.create_time.ToDatetime() if t.HasField("create_time") else None,
            unavailable_reason=t.unavailable_reason,
        )


@dataclass(frozen=True)
class BuildProgress:
    step: int
    total_steps: int
    description: str
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True)
class BuildLog:
    step: int
    line: str
    stderr: bool = False


@dataclass(frozen=True)
class BuildResult:
    template: TemplateInfo
    cache_hit: bool
    duration_ms: int
    log: tuple[str, ...] = field(default=())


BuildEvent = BuildProgress | BuildLog | BuildResult


class Templates:
    def __init__(self, client: Client) -> None:
        self._c = client

    async def list(self, *, provider: str = "") -> builtins.list[TemplateInfo]:
        resp = await _rpc.call(
            self._c.template_stub.ListTemplates, pb.ListTemplatesRequest(provider=provider)
        )
        return [TemplateInfo.from_proto(t) for t in resp.templates]

    async def get(self, name: str, *, provider: str = "") -> TemplateInfo:
        resp = await _rpc.call(
            self._c.template_stub.GetTemplate, pb.GetTemplateRequest(provider=provider, name=name)
        )
        return TemplateInfo.from_proto(resp.template)

    async def delete(self, name: str, *, provider: str = "") -> None:
        await _rpc.call(
            self._c.template_stub.DeleteTemplate,
            pb.DeleteTemplateRequest(provider=provider, name=name),
        )

    async def build_stream(
        self,
        name: str,
        *,
        base_image: str = "",
        packages: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        setup: Sequence[str] = (),
        description: str = "",
        no_cache: bool = False,
        provider: str = "",
        package_manager: str = "",
    ) -> AsyncIterator[BuildEvent]:
        """Builds a template, yielding progress and log lines; the last item is the
        BuildResult. Leaving the loop early cancels the build. package_manager:
        "" picks by the base (pip on a Python one, npm on Node, else apt), or
        "apt", "pip", "npm"."""
        req = pb.BuildTemplateRequest(
            provider=provider,
            no_cache=no_cache,
            definition=pb.TemplateDefinition(
                name=name,
                base_image=base_image,
                packages=list(packages),
                env=dict(env or {}),
                setup=list(setup),
                description=description,
                package_manager=package_manager,
            ),
        )
        # Closed with this generator: leaving the loop early cancels the build on the daemon.
        async with contextlib.aclosing(
            _rpc.stream(self._c.template_stub.BuildTemplate, req)
        ) as events:
            async for resp in events:
                kind = resp.WhichOneof("event")
                if kind == "progress":
                    p = resp.progress
                    yield BuildProgress(
                        p.step, p.total_steps, p.description, p.bytes_done, p.bytes_total
                    )
                elif kind == "log":
                    yield BuildLog(resp.log.step, resp.log.line, resp.log.stderr)
                elif kind == "result":
                    r = resp.result
                    yield BuildResult(
                        TemplateInfo.from_proto(r.template), r.cache_hit, r.duration_ms
                    )

    async def build(
        self,
        name: str,
        *,
        base_image: str = "",
        packages: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        setup: Sequence[str] = (),
        description: str = "",
        no_cache: bool = False,
        provider: str = "",
        package_manager: str = "",
        on_event: Callable[[BuildEvent], object] | None = None,
    ) -> BuildResult:
        """Builds a template and returns its result, with the build's log lines."""
        lines: builtins.list[str] = []
        stream = self.build_stream(
            name,
            base_image=base_image,
            packages=packages,
            env=env,
            setup=setup,
            description=description,
            no_cache=no_cache,
            provider=provider,
            package_manager=package_manager,
        )
        async for event in stream:
            if on_event is not None:
                on_event(event)
            if isinstance(event, BuildLog):
                lines.append(event.line)
            elif isinstance(event, BuildResult):
                return BuildResult(event.template, event.cache_hit, event.duration_ms, tuple(lines))
        raise InternalError("the build stream ended without a result")
