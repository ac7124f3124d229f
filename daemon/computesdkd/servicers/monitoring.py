from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from computesdk.api.monitoring.v1 import monitoring_pb2 as pb
from computesdk.api.monitoring.v1 import monitoring_pb2_grpc as pb_grpc

from ..errors import InvalidArgument
from ..manager import Manager
from ..model import Usage
from . import convert
from ._edge import edge

Ctx = ServicerContext[Any, Any]


def _usage(u: Usage) -> pb.Usage:
    return pb.Usage(
        sample_time=convert.ts(u.sample_time),
        cpu_percent=u.cpu_percent,
        memory_used_bytes=u.memory_used_bytes,
        memory_limit_bytes=u.memory_limit_bytes,
        disk_used_bytes=u.disk_used_bytes,
        disk_limit_bytes=u.disk_limit_bytes,
        network_rx_bytes=u.network_rx_bytes,
        network_tx_bytes=u.network_tx_bytes,
        has_network=u.has_network,
        process_count=u.process_count,
    )


def _interval(ms: int) -> float:
    if ms and ms < 100:
        raise InvalidArgument("interval_ms is at least 100", reason="INVALID_INTERVAL")
    return (ms or 1000) / 1000


class MonitoringServicer(pb_grpc.MonitoringServiceServicer):
    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    @edge
    async def GetResourceUsage(
        self, request: pb.GetResourceUsageRequest, context: Ctx
    ) -> pb.GetResourceUsageResponse:
        return pb.GetResourceUsageResponse(
            usage=_usage(await self.manager.usage(request.sandbox_id))
        )

    @edge
    async def Monitor(
        self, request: pb.MonitorRequest, context: Ctx
    ) -> AsyncIterator[pb.MonitorResponse]:
        async for u in self.manager.monitor_usage(
            request.sandbox_id, _interval(request.interval_ms)
        ):
            yield pb.MonitorResponse(usage=_usage(u))

    @edge
    async def SetResourceLimits(
        self, request: pb.SetResourceLimitsRequest, context: Ctx
    ) -> pb.SetResourceLimitsResponse:
        res = await self.manager.set_limits(
            request.sandbox_id,
            cpu_cores=request.cpu_percent / 100,
            memory_mb=request.memory_mb,
            disk_mb=request.disk_mb,
        )
        return pb.SetResourceLimitsResponse(resources=convert.resources_to(res))

    @edge
    async def Scale(self, request: pb.ScaleRequest, context: Ctx) -> pb.ScaleResponse:
        res = await self.manager.set_limits(
            request.sandbox_id, cpu_cores=request.cpu_cores, memory_mb=request.memory_mb
        )
        return pb.ScaleResponse(resources=convert.resources_to(res))

    @edge
    async def SetAlertThresholds(
        self, request: pb.SetAlertThresholdsRequest, context: Ctx
    ) -> pb.SetAlertThresholdsResponse:
        thresholds = [
            (t.type, t.percent, t.clear_percent or max(0.0, t.percent - 10))
            for t in request.thresholds
        ]
        self.manager.set_alerts(request.sandbox_id, thresholds, _interval(request.interval_ms))
        return pb.SetAlertThresholdsResponse()
