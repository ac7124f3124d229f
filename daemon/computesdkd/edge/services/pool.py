from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.pool.v1 import pool_pb2 as pb
from computesdk_api.pool.v1 import pool_pb2_grpc as pb_grpc
from computesdkd.edge import caller as callers
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.pools import Pool, Pools, PoolSpec

Ctx = ServicerContext[Any, Any]


def _pool_to(pools: Any, pool: Pool) -> pb.Pool:
    s = pool.spec
    return pb.Pool(
        spec=pb.PoolSpec(
            name=s.name,
            provider=s.provider,
            template=s.template,
            resources=convert.resources_to(s.resources),
            env=s.env,
            min=s.min,
            max=s.max,
        ),
        stats=pb.PoolStats(**pools.stats(pool)),
        draining=pool.draining,
    )


class PoolServicer(pb_grpc.PoolServiceServicer):
    def __init__(self, pools: Pools) -> None:
        self._pools = pools

    @edge
    async def CreatePool(
        self, request: pb.CreatePoolRequest, context: Ctx
    ) -> pb.CreatePoolResponse:
        s = request.spec
        pool = self._pools.create_pool(
            PoolSpec(
                name=s.name,
                provider=s.provider,
                template=s.template,
                resources=convert.resources_from(s.resources),
                env=dict(s.env),
                min=s.min,
                max=s.max,
                tenant=callers.current().tenant,
            )
        )
        return pb.CreatePoolResponse(pool=_pool_to(self._pools, pool))

    @edge
    async def GetPool(self, request: pb.GetPoolRequest, context: Ctx) -> pb.GetPoolResponse:
        return pb.GetPoolResponse(pool=_pool_to(self._pools, self._pools.get(request.name)))

    @edge
    async def ListPools(self, request: pb.ListPoolsRequest, context: Ctx) -> pb.ListPoolsResponse:
        return pb.ListPoolsResponse(pools=[_pool_to(self._pools, p) for p in self._pools.list()])

    @edge
    async def DeletePool(
        self, request: pb.DeletePoolRequest, context: Ctx
    ) -> pb.DeletePoolResponse:
        await self._pools.delete_pool(request.name)
        return pb.DeletePoolResponse()

    @edge
    async def AcquireSandbox(
        self, request: pb.AcquireSandboxRequest, context: Ctx
    ) -> pb.AcquireSandboxResponse:
        sb = await self._pools.acquire(
            request.pool, dict(request.metadata), request.wait_timeout_ms
        )
        return pb.AcquireSandboxResponse(sandbox=convert.sandbox_to(sb))

    @edge
    async def ReleaseSandbox(
        self, request: pb.ReleaseSandboxRequest, context: Ctx
    ) -> pb.ReleaseSandboxResponse:
        returned = await self._pools.release(request.sandbox_id, request.hard)
        return pb.ReleaseSandboxResponse(returned=returned)
