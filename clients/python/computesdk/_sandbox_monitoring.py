"""A sandbox's usage, limits, scaling and health: the monitoring half of Sandbox."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from computesdk_api.monitoring.v1 import monitoring_pb2 as mon_pb

from . import _rpc
from .types import AlertThreshold, HealthReport, Resources, ResourceUsage

if TYPE_CHECKING:
    from .client import Client


class SandboxMonitoring:
    """Sandbox's calls to the monitoring service; Sandbox inherits them."""

    if TYPE_CHECKING:
        client: Client

        @property
        def id(self) -> str: ...

    async def get_resource_usage(self) -> ResourceUsage:
        resp = await _rpc.call(
            self.client.monitoring.GetResourceUsage,
            mon_pb.GetResourceUsageRequest(sandbox_id=self.id),
        )
        return ResourceUsage.from_proto(resp.usage)

    async def monitor(
        self, *, interval_ms: int = 1000, metrics: Sequence[str] = ()
    ) -> AsyncIterator[ResourceUsage]:
        """Samples at a steady pace until the caller stops iterating."""
        req = mon_pb.MonitorRequest(
            sandbox_id=self.id, interval_ms=interval_ms, metrics=list(metrics)
        )
        # Closed with this generator, so that the daemon stops sampling at once.
        async with contextlib.aclosing(_rpc.stream(self.client.monitoring.Monitor, req)) as usage:
            async for resp in usage:
                yield ResourceUsage.from_proto(resp.usage)

    async def set_resource_limits(
        self, *, cpu_percent: float = 0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        resp = await _rpc.call(
            self.client.monitoring.SetResourceLimits,
            mon_pb.SetResourceLimitsRequest(
                sandbox_id=self.id,
                cpu_percent=cpu_percent,
                memory_mb=memory_mb,
                disk_mb=disk_mb,
            ),
        )
        return Resources.from_proto(resp.resources)

    async def scale(self, *, cpu_cores: float = 0, memory_mb: int = 0) -> Resources:
        resp = await _rpc.call(
            self.client.monitoring.Scale,
            mon_pb.ScaleRequest(sandbox_id=self.id, cpu_cores=cpu_cores, memory_mb=memory_mb),
        )
        return Resources.from_proto(resp.resources)

    async def set_alert_thresholds(
        self, thresholds: Sequence[AlertThreshold], *, interval_ms: int = 1000
    ) -> None:
        """Replaces the alerts; each crossing becomes one resourceAlert event."""
        await _rpc.call(
            self.client.monitoring.SetAlertThresholds,
            mon_pb.SetAlertThresholdsRequest(
                sandbox_id=self.id,
                interval_ms=interval_ms,
                thresholds=[
                    mon_pb.AlertThreshold(
                        type=t.type, percent=t.percent, clear_percent=t.clear_percent
                    )
                    for t in thresholds
                ],
            ),
        )

    async def configure_auto_scaling(
        self,
        *,
        enabled: bool = True,
        cpu_threshold: float = 0,
        memory_threshold: float = 0,
        max_cpu_cores: float = 0,
        max_memory_mb: int = 0,
        cooldown_ms: int = 30_000,
        interval_ms: int = 1000,
    ) -> None:
        """Lets the daemon scale this sandbox within the caps; each decision is an
        autoscale event. Thresholds are percents of the current limits."""
        await _rpc.call(
            self.client.monitoring.ConfigureAutoScaling,
            mon_pb.ConfigureAutoScalingRequest(
                sandbox_id=self.id,
                enabled=enabled,
                cpu=mon_pb.ScalingRule(threshold=cpu_threshold, action="scale-up"),
                memory=mon_pb.ScalingRule(threshold=memory_threshold, action="scale-up"),
                max_cpu_cores=max_cpu_cores,
                max_memory_mb=max_memory_mb,
                cooldown_ms=cooldown_ms,
                interval_ms=interval_ms,
            ),
        )

    async def health_check(self) -> bool:
        """Whether every check passes; health_report() says which failed and why."""
        return (await self.health_report()).healthy

    async def health_report(self) -> HealthReport:
        """Built-in checks (agent, exec, disk, memory) plus the registered ones."""
        resp = await _rpc.call(
            self.client.monitoring.CheckHealth, mon_pb.CheckHealthRequest(sandbox_id=self.id)
        )
        return HealthReport.from_proto(resp)

    async def register_health_check(
        self, name: str, command: str, *, interval_ms: int = 0, timeout_ms: int = 0
    ) -> None:
        await _rpc.call(
            self.client.monitoring.RegisterHealthCheck,
            mon_pb.RegisterHealthCheckRequest(
                sandbox_id=self.id,
                name=name,
                command=command,
                interval_ms=interval_ms,
                timeout_ms=timeout_ms,
            ),
        )

    async def unregister_health_check(self, name: str) -> None:
        await _rpc.call(
            self.client.monitoring.UnregisterHealthCheck,
            mon_pb.UnregisterHealthCheckRequest(sandbox_id=self.id, name=name),
        )
