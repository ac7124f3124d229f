"""Autoscaling: decide() is the pure rule; AutoScaler runs it on a sampler.

Up: use at or above the threshold doubles the limit, up to the cap. Down: use
below a third of the threshold halves it, never under where the sandbox began.
Memory comes down only when use would sit below half of the new limit, so a
scale-down never kills anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass

from structlog.contextvars import bound_contextvars

from computesdkd.core.bus import EventBus
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import ComputeError, InvalidArgument
from computesdkd.domain.model import Resources, Sandbox, ScalingPolicy, Usage
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)
AUTOSCALE = "autoscale"

DOWN_FRACTION = 1 / 3


@dataclass(frozen=True)
class Decision:
    resource: str  # "cpu" or "memory"
    before: float
    after: float
    reason: str


def decide(policy: ScalingPolicy, base: Resources, now: Resources, usage: Usage) -> Decision | None:
    if policy.cpu_threshold and now.cpu_cores:
        pct = usage.cpu_percent / now.cpu_cores
        if pct >= policy.cpu_threshold and now.cpu_cores < policy.max_cpu_cores:
            to = min(policy.max_cpu_cores, now.cpu_cores * 2)
            return Decision(
                "cpu",
                now.cpu_cores,
                to,
                f"cpu at {pct:.0f}% of its limit (threshold {policy.cpu_threshold:g}%)",
            )
        if pct < policy.cpu_threshold * DOWN_FRACTION and now.cpu_cores > base.cpu_cores:
            to = max(base.cpu_cores, now.cpu_cores / 2)
            return Decision("cpu", now.cpu_cores, to, f"cpu down to {pct:.0f}% of its limit")
    if policy.memory_threshold and usage.memory_limit_bytes:
        pct = 100 * usage.memory_used_bytes / usage.memory_limit_bytes
        used_mb = usage.memory_used_bytes / 2**20
        if pct >= policy.memory_threshold and now.memory_mb < policy.max_memory_mb:
            to_mb = min(policy.max_memory_mb, now.memory_mb * 2)
            return Decision(
                "memory",
                now.memory_mb,
                to_mb,
                f"memory at {pct:.0f}% (threshold {policy.memory_threshold:g}%)",
            )
        down = max(base.memory_mb, now.memory_mb // 2)
        if (
            pct < policy.memory_threshold * DOWN_FRACTION
            and now.memory_mb > base.memory_mb
            and used_mb < down / 2
        ):
            return Decision("memory", now.memory_mb, down, f"memory down to {pct:.0f}%")
    return None


class AutoScaler:
    """One sampling task per sandbox that applies decide() through set_limits."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        bus: EventBus,
        monitor_usage: Callable[[str, float], AsyncIterator[Usage]],
        set_limits: Callable[..., Awaitable[Resources]],
    ) -> None:
        self._registry = registry
        self._store = store
        self._bus = bus
        self._monitor_usage = monitor_usage
        self._set_limits = set_limits
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def configure(self, sandbox_id: str, enabled: bool, policy: ScalingPolicy) -> None:
        sb, _ = self._registry.running(sandbox_id)
        old = self._tasks.pop(sandbox_id, None)
        if old is not None:
            old.cancel()
        if not enabled:
            self._store.sandbox_records("autoscale").delete(sandbox_id)
            return
        if (policy.max_cpu_cores and policy.max_cpu_cores < sb.resources.cpu_cores) or (
            policy.max_memory_mb and policy.max_memory_mb < sb.resources.memory_mb
        ):
            raise InvalidArgument(
                "autoscaling caps are below the sandbox's current limits",
                reason="INVALID_SCALING_LIMITS",
            )
        if not (policy.cpu_threshold or policy.memory_threshold):
            raise InvalidArgument(
                "autoscaling needs a cpu or memory rule", reason="INVALID_SCALING_RULES"
            )
        self._store.sandbox_records("autoscale").put(
            sandbox_id, "", {"policy": asdict(policy), "base": asdict(sb.resources)}
        )
        self._tasks[sandbox_id] = asyncio.create_task(self._run(sb, policy, sb.resources))

    def restore(self, sandbox_id: str, policy: ScalingPolicy, base: Resources) -> None:
        """After a daemon restart: carry on, scaling back down to the original base."""
        sb, _ = self._registry.running(sandbox_id)
        self._tasks[sandbox_id] = asyncio.create_task(self._run(sb, policy, base))

    async def _run(self, sb: Sandbox, policy: ScalingPolicy, base: Resources) -> None:
        last = 0.0
        with bound_contextvars(sandbox_id=sb.id), contextlib.suppress(ComputeError):
            async for usage in self._monitor_usage(sb.id, policy.interval_s):
                if time.monotonic() - last < policy.cooldown_s:
                    continue
                decision = decide(policy, base, sb.resources, usage)
                if decision is None:
                    continue
                last = time.monotonic()
                kwargs = (
                    {"cpu_cores": decision.after}
                    if decision.resource == "cpu"
                    else {"memory_mb": int(decision.after)}
                )
                await self._set_limits(sb.id, **kwargs)
                log.info("autoscaled", resource=decision.resource, to=decision.after)
                self._bus.emit(
                    sb.id,
                    AUTOSCALE,
                    decision.reason,
                    resource=decision.resource,
                    before=f"{decision.before:g}",
                    after=f"{decision.after:g}",
                )

    def forget(self, sandbox_id: str) -> None:
        task = self._tasks.pop(sandbox_id, None)
        if task is not None:
            task.cancel()
