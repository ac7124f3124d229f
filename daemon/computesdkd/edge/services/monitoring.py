from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.monitoring.v1 import monitoring_pb2 as pb
from computesdk_api.monitoring.v1 import monitoring_pb2_grpc as pb_grpc
from computesdkd.core.lifecycle import Lifecycle
from computesdkd.domain.errors import InvalidArgument
from computesdkd.domain.model import ScalingPolicy, Usage
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.monitoring import Monitoring
from computesdkd.features.monitoring.health import CustomCheck

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


METRICS = {
    "cpu": ("cpu_percent",),
    "memory": ("memory_used_bytes", "memory_limit_bytes"),
    "disk": ("disk_used_bytes", "disk_limit_bytes"),
    "network": ("network_rx_bytes", "network_tx_bytes", "has_network"),
    "processes": ("process_count",),
}


def _fields(metrics: list[str]) -> set[str] | None:
    """The Usage fields a subscriber asked for; None means all."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise InvalidArgument(
            f"unknown metrics {sorted(unknown)}; known: {sorted(METRICS)}", reason="INVALID_METRICS"
        )
    return {f for m in metrics for f in METRICS[m]} | {"sample_time"} if metrics else None


def _interval(ms: int) -> float:
    if ms and ms < 100:
        raise InvalidArgument("interval_ms is at least 100", reason="INVALID_INTERVAL")
    return (ms or 1000) / 1000


class MonitoringServicer(pb_grpc.MonitoringServiceServicer):
    def __init__(self, monitoring: Monitoring, lifecycle: Lifecycle) -> None:
        self._monitoring = monitoring
        self._lifecycle = lifecycle

    @edge
    async def GetResourceUsage(
        self, request: pb.GetResourceUsageRequest, context: Ctx
    ) -> pb.GetResourceUsageResponse:
        return pb.GetResourceUsageResponse(
            usage=_usage(await self._monitoring.usage(request.sandbox_id))
        )

    @edge
    async def Monitor(
        self, request: pb.MonitorRequest, context: Ctx
    ) -> AsyncIterator[pb.MonitorResponse]:
        wanted = _fields(list(request.metrics))
        async for u in self._monitoring.monitor_usage(
            request.sandbox_id, _interval(request.interval_ms)
        ):
            usage = _usage(u)
            if wanted is not None:
                for field in pb.Usage.DESCRIPTOR.fields_by_name:
                    if field not in wanted:
                        usage.ClearField(field)  # type: ignore[arg-type]
            yield pb.MonitorResponse(usage=usage)

    @edge
    async def SetResourceLimits(
        self, request: pb.SetResourceLimitsRequest, context: Ctx
    ) -> pb.SetResourceLimitsResponse:
        res = await self._lifecycle.set_limits(
            request.sandbox_id,
            cpu_cores=request.cpu_percent / 100,
            memory_mb=request.memory_mb,
            disk_mb=request.disk_mb,
        )
        return pb.SetResourceLimitsResponse(resources=convert.resources_to(res))

    @edge
    async def Scale(self, request: pb.ScaleRequest, context: Ctx) -> pb.ScaleResponse:
        res = await self._lifecycle.set_limits(
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
        self._monitoring.set_alerts(request.sandbox_id, thresholds, _interval(request.interval_ms))
        return pb.SetAlertThresholdsResponse()

    @edge
    async def ConfigureAutoScaling(
        self, request: pb.ConfigureAutoScalingRequest, context: Ctx
    ) -> pb.ConfigureAutoScalingResponse:
        for rule in (request.cpu, request.memory):
            if rule.threshold and rule.action not in ("", "scale-up"):
                raise InvalidArgument(
                    f"unknown scaling action {rule.action!r}", reason="INVALID_SCALING_RULES"
                )
        policy = ScalingPolicy(
            cpu_threshold=request.cpu.threshold,
            memory_threshold=request.memory.threshold,
            max_cpu_cores=request.max_cpu_cores,
            max_memory_mb=request.max_memory_mb,
            cooldown_s=(request.cooldown_ms or 30_000) / 1000,
            interval_s=_interval(request.interval_ms),
        )
        self._monitoring.configure_autoscaling(request.sandbox_id, request.enabled, policy)
        return pb.ConfigureAutoScalingResponse()

    @edge
    async def CheckHealth(
        self, request: pb.CheckHealthRequest, context: Ctx
    ) -> pb.CheckHealthResponse:
        results = await self._monitoring.check_health(request.sandbox_id)
        return pb.CheckHealthResponse(
            healthy=all(r.healthy for r in results),
            results=[
                pb.HealthResult(
                    name=r.name, healthy=r.healthy, message=r.message, duration_ms=r.duration_ms
                )
                for r in results
            ],
        )

    @edge
    async def RegisterHealthCheck(
        self, request: pb.RegisterHealthCheckRequest, context: Ctx
    ) -> pb.RegisterHealthCheckResponse:
        if request.interval_ms and request.interval_ms < 100:
            raise InvalidArgument("interval_ms is at least 100", reason="INVALID_INTERVAL")
        self._monitoring.register_health_check(
            request.sandbox_id,
            CustomCheck(
                name=request.name,
                command=request.command,
                interval_s=request.interval_ms / 1000,
                timeout_ms=request.timeout_ms or 10_000,
            ),
        )
        return pb.RegisterHealthCheckResponse()

    @edge
    async def UnregisterHealthCheck(
        self, request: pb.UnregisterHealthCheckRequest, context: Ctx
    ) -> pb.UnregisterHealthCheckResponse:
        self._monitoring.unregister_health_check(request.sandbox_id, request.name)
        return pb.UnregisterHealthCheckResponse()
