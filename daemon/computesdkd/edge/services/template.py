from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.template.v1 import template_pb2 as pb
from computesdk_api.template.v1 import template_pb2_grpc as pb_grpc
from computesdkd.domain.model import TemplateDefinition, TemplateInfo
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.templates import BuildOutcome, Templates

Ctx = ServicerContext[Any, Any]


def definition_from(d: pb.TemplateDefinition) -> TemplateDefinition:
    return TemplateDefinition(
        name=d.name,
        base_image=d.base_image,
        packages=tuple(d.packages),
        env=dict(d.env),
        setup=tuple(d.setup),
        description=d.description,
        package_manager=d.package_manager,
    )


def definition_to(d: TemplateDefinition) -> pb.TemplateDefinition:
    return pb.TemplateDefinition(
        name=d.name,
        base_image=d.base_image,
        packages=list(d.packages),
        env=d.env,
        setup=list(d.setup),
        description=d.description,
        package_manager=d.package_manager,
    )


def template_to(t: TemplateInfo) -> pb.Template:
    out = pb.Template(
        name=t.name,
        provider=t.provider,
        description=t.description,
        builtin=t.builtin,
        digest=t.digest,
        base_image_digest=t.base_image_digest,
        env=t.env,
        layer_count=t.layer_count,
        size_bytes=t.size_bytes,
        unavailable_reason=t.unavailable,
    )
    if t.definition is not None:
        out.definition.CopyFrom(definition_to(t.definition))
    if t.created_at:
        out.create_time.CopyFrom(convert.ts(t.created_at))
    return out


class TemplateServicer(pb_grpc.TemplateServiceServicer):
    def __init__(self, templates: Templates) -> None:
        self._templates = templates

    @edge
    async def BuildTemplate(
        self, request: pb.BuildTemplateRequest, context: Ctx
    ) -> AsyncIterator[pb.BuildTemplateResponse]:
        builds = self._templates.build(
            request.provider, definition_from(request.definition), request.no_cache
        )
        async with contextlib.aclosing(builds):
            async for item in builds:
                if isinstance(item, BuildOutcome):
                    yield pb.BuildTemplateResponse(
                        result=pb.BuildResult(
                            template=template_to(item.template),
                            cache_hit=item.cache_hit,
                            duration_ms=item.duration_ms,
                        )
                    )
                elif item.line is not None:
                    yield pb.BuildTemplateResponse(
                        log=pb.BuildLog(step=item.step, line=item.line, stderr=item.stderr)
                    )
                else:
                    yield pb.BuildTemplateResponse(
                        progress=pb.BuildProgress(
                            step=item.step,
                            total_steps=item.total,
                            description=item.description,
                            bytes_done=item.bytes_done,
                            bytes_total=item.bytes_total,
                        )
                    )

    @edge
    async def GetTemplate(
        self, request: pb.GetTemplateRequest, context: Ctx
    ) -> pb.GetTemplateResponse:
        info = self._templates.get(request.provider, request.name)
        return pb.GetTemplateResponse(template=template_to(info))

    @edge
    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Ctx
    ) -> pb.ListTemplatesResponse:
        infos = self._templates.all(request.provider)
        return pb.ListTemplatesResponse(templates=[template_to(t) for t in infos])

    @edge
    async def DeleteTemplate(
        self, request: pb.DeleteTemplateRequest, context: Ctx
    ) -> pb.DeleteTemplateResponse:
        await self._templates.delete(request.provider, request.name)
        return pb.DeleteTemplateResponse()
