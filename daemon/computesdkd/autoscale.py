"""Autoscaling decisions, kept apart from the I/O so they can be read at a glance.

Up: use at or above the threshold doubles the limit, up to the cap. Down: use
below a third of the threshold halves it, never under where the sandbox began.
Memory comes down only when use would sit below half of the new limit, so a
scale-down never kills anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Resources, ScalingPolicy, Usage

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
