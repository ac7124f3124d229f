"""Monitoring: usage samples and streams, alert thresholds, autoscaling and health
checks, each kept across a daemon restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from computesdkd.core.bus import EventBus
from computesdkd.core.lifecycle import Lifecycle
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import ComputeError, FailedPrecondition, InvalidArgument
from computesdkd.domain.model import HealthResult, Resources, Sandbox, ScalingPolicy, State, Usage
from computesdkd.features.monitoring.autoscale import AutoScaler
from computesdkd.features.monitoring.health import CustomCheck, HealthChecks
from computesdkd.features.monitoring.monitor import Monitor
from computesdkd.providers import capabilities as caps
from computesdkd.providers.capabilities import require
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

__all__ = ["CustomCheck", "Monitoring"]


class Monitoring:
    def __init__(
        self, registry: Registry, lifecycle: Lifecycle, store: Store, bus: EventBus
    ) -> None:
        self._registry = registry
        self._store = store
        self.monitor = Monitor(bus.emit)
        self.autoscaler = AutoScaler(registry, store, bus, self.monitor_usage, lifecycle.set_limits)
        self.health = HealthChecks(registry, store, bus)
        registry.on_forget.append(self.forget)
        lifecycle.on_adopted.append(self.restore)

    def _sampler(self, sandbox_id: str) -> Callable[[], Awaitable[Usage]]:
        sb, provider = self._registry.running(sandbox_id)

        async def sample() -> Usage:
            if sb.state != State.RUNNING:
                raise FailedPrecondition(
                    f"sandbox {sandbox_id!r} is {sb.state.name.lower()}",
                    reason="SANDBOX_NOT_RUNNING",
                    sandbox_id=sandbox_id,
                )
            return await require(provider, caps.Metering, "resource usage").usage(sb)

        return sample

    async def usage(self, sandbox_id: str) -> Usage:
        return await self.monitor.sample_once(sandbox_id, self._sampler(sandbox_id))

    def monitor_usage(self, sandbox_id: str, interval_s: float) -> AsyncIterator[Usage]:
        return self.monitor.subscribe(sandbox_id, interval_s, self._sampler(sandbox_id))

    def set_alerts(
        self, sandbox_id: str, thresholds: list[tuple[str, float, float]], interval_s: float
    ) -> None:
        sb, _ = self._registry.running(sandbox_id)
        for kind, percent, clear in thresholds:
            if kind not in ("cpu", "memory", "disk") or percent <= 0 or clear >= percent:
                raise InvalidArgument(
                    f"bad alert threshold {kind}:{percent}/{clear}; types are "
                    "cpu, memory, disk, and clear_percent must be below percent",
                    reason="INVALID_THRESHOLD",
                )
        self.monitor.set_alerts(
            sandbox_id,
            thresholds,
            interval_s,
            sb.resources.cpu_cores or 1.0,
            self._sampler(sandbox_id),
        )
        if thresholds:
            self._store.sandbox_records("alerts").put(
                sandbox_id, "", {"thresholds": thresholds, "interval_s": interval_s}
            )
        else:
            self._store.sandbox_records("alerts").delete(sandbox_id)

    def configure_autoscaling(self, sandbox_id: str, enabled: bool, policy: ScalingPolicy) -> None:
        self.autoscaler.configure(sandbox_id, enabled, policy)

    async def check_health(self, sandbox_id: str) -> list[HealthResult]:
        return await self.health.check(sandbox_id)

    def register_health_check(self, sandbox_id: str, check: CustomCheck) -> None:
        self.health.register(sandbox_id, check)

    def unregister_health_check(self, sandbox_id: str, name: str) -> None:
        self.health.unregister(sandbox_id, name)

    def forget(self, sandbox_id: str) -> None:
        self.monitor.forget(sandbox_id)
        self.autoscaler.forget(sandbox_id)
        self.health.forget(sandbox_id)

    def restore(self, sb: Sandbox) -> None:
        """Alerts, autoscaling and health checks carry on after a daemon restart."""
        saved = [
            (table, name, value)
            for table in ("alerts", "autoscale", "health")
            for name, value in self._store.sandbox_records(table).of(sb.id)
        ]
        for kind, name, value in saved:
            try:
                if kind == "alerts":
                    self.set_alerts(
                        sb.id, [tuple(t) for t in value["thresholds"]], value["interval_s"]
                    )
                elif kind == "autoscale":
                    self.autoscaler.restore(
                        sb.id, ScalingPolicy(**value["policy"]), Resources(**value["base"])
                    )
                elif kind == "health":
                    self.health.register(sb.id, CustomCheck(name=name, **value))
            except (ComputeError, TypeError, KeyError) as exc:
                log.warning("could not restore a setting", kind=kind, name=name, error=str(exc))
