from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.sandbox.v1 import sandbox_pb2 as pb
from computesdk_api.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from computesdkd.core.lifecycle import Lifecycle
from computesdkd.core.placement import Placement
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import ComputeError, InvalidArgument
from computesdkd.domain.model import State
from computesdkd.edge import caller as callers
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.clone import Cloning

Ctx = ServicerContext[Any, Any]


class SandboxServicer(pb_grpc.SandboxServiceServicer):
    def __init__(
        self, placement: Placement, lifecycle: Lifecycle, registry: Registry, cloning: Cloning
    ) -> None:
        self._placement = placement
        self._lifecycle = lifecycle
        self._registry = registry
        self._cloning = cloning

    @edge
    async def CreateSandbox(
        self, request: pb.CreateSandboxRequest, context: Ctx
    ) -> pb.CreateSandboxResponse:
        sb = await self._placement.create(convert.spec_from(request, callers.current().tenant))
        return pb.CreateSandboxResponse(sandbox=convert.sandbox_to(sb))

    @edge
    async def GetSandbox(
        self, request: pb.GetSandboxRequest, context: Ctx
    ) -> pb.GetSandboxResponse:
        return pb.GetSandboxResponse(
            sandbox=convert.sandbox_to(self._registry.get(request.sandbox_id))
        )

    @edge
    async def ListSandboxes(
        self, request: pb.ListSandboxesRequest, context: Ctx
    ) -> pb.ListSandboxesResponse:
        states = [State(s) for s in request.states if s in State._value2member_map_]
        caller = callers.current()
        items, token = self._registry.list(
            request.page_size,
            request.page_token,
            dict(request.metadata),
            states,
            request.provider,
            tenant=None if caller.admin else caller.tenant,
        )
        return pb.ListSandboxesResponse(
            sandboxes=[convert.sandbox_to(s) for s in items], next_page_token=token
        )

    @edge
    async def DestroySandbox(
        self, request: pb.DestroySandboxRequest, context: Ctx
    ) -> pb.DestroySandboxResponse:
        await self._lifecycle.destroy(
            request.sandbox_id, request.graceful, request.graceful_timeout_ms
        )
        return pb.DestroySandboxResponse()

    @edge
    async def GetSandboxStatus(
        self, request: pb.GetSandboxStatusRequest, context: Ctx
    ) -> pb.GetSandboxStatusResponse:
        st = await self._lifecycle.status(request.sandbox_id)
        resp = pb.GetSandboxStatusResponse(
            state=int(st.state),  # type: ignore[arg-type]
            uptime_ms=st.uptime_ms,
            resources=convert.resources_to(st.sandbox.resources),
        )
        if st.usage is not None:
            resp.usage.CopyFrom(convert.usage_to(st.usage))
        return resp

    @edge
    async def CloneSandbox(
        self, request: pb.CloneSandboxRequest, context: Ctx
    ) -> pb.CloneSandboxResponse:
        resources = (
            convert.resources_from(request.resources) if request.HasField("resources") else None
        )
        sb = await self._cloning.clone(
            request.sandbox_id,
            provider=request.provider,
            template=request.template,
            env=dict(request.env),
            resources=resources,
        )
        return pb.CloneSandboxResponse(sandbox=convert.sandbox_to(sb))

    @edge
    async def MigrateSandbox(
        self, request: pb.MigrateSandboxRequest, context: Ctx
    ) -> pb.MigrateSandboxResponse:
        if not request.provider:
            raise InvalidArgument("migrate needs a target provider", reason="PROVIDER_REQUIRED")
        sb = await self._cloning.migrate(
            request.sandbox_id,
            request.provider,
            template=request.template,
            preserve_files=request.preserve_files,
            # An env mapping renames the env it carries: asking for one asks for that.
            preserve_env=request.preserve_env or bool(request.env_mapping),
            template_mapping=dict(request.template_mapping),
            env_mapping=dict(request.env_mapping),
        )
        return pb.MigrateSandboxResponse(sandbox=convert.sandbox_to(sb))

    @edge
    async def BatchCreateSandboxes(
        self, request: pb.BatchCreateSandboxesRequest, context: Ctx
    ) -> pb.BatchCreateSandboxesResponse:
        tenant = callers.current().tenant
        results = await self._placement.batch(
            [convert.spec_from(r, tenant) for r in request.requests]
        )
        out = pb.BatchCreateSandboxesResponse()
        for r in results:
            if isinstance(r, ComputeError):
                err = pb.ItemError(code=r.code.name, reason=r.reason, message=r.message)
                out.results.append(pb.BatchCreateResult(error=err))
            else:
                out.results.append(pb.BatchCreateResult(sandbox=convert.sandbox_to(r)))
        return out

    @edge
    async def ResetSandbox(
        self, request: pb.ResetSandboxRequest, context: Ctx
    ) -> pb.ResetSandboxResponse:
        sb = await self._lifecycle.reset(request.sandbox_id, request.hard)
        return pb.ResetSandboxResponse(sandbox=convert.sandbox_to(sb))

    @edge
    async def SetSandboxEnv(
        self, request: pb.SetSandboxEnvRequest, context: Ctx
    ) -> pb.SetSandboxEnvResponse:
        env = self._lifecycle.set_env(request.sandbox_id, dict(request.env), list(request.unset))
        return pb.SetSandboxEnvResponse(env=env)

    @edge
    async def RestartSandbox(
        self, request: pb.RestartSandboxRequest, context: Ctx
    ) -> pb.RestartSandboxResponse:
        sb = await self._lifecycle.restart(
            request.sandbox_id,
            request.template,
            dict(request.env) if request.env else None,
            convert.resources_from(request.resources) if request.HasField("resources") else None,
        )
        return pb.RestartSandboxResponse(sandbox=convert.sandbox_to(sb))
