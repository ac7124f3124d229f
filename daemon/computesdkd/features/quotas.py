"""Per-tenant quotas: how many sandboxes, how much CPU, memory, disk and volume
space a tenant may hold, and how fast it may create sandboxes.

Placement asks admit() with no await between the answer and the sandbox joining
the registry, and counts draws from warm pools that are still in flight, so a
burst of creates cannot overshoot a bound. The admin (tenant "") has none."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

from computesdkd.core.registry import Registry
from computesdkd.domain.errors import InvalidArgument, ResourceExhausted
from computesdkd.domain.model import Resources, Sandbox, SandboxSpec, State
from computesdkd.store import Store


@dataclass(frozen=True)
class Quota:
    """Zero in a field means no bound."""

    max_sandboxes: int = 0
    max_cpu_cores: float = 0.0
    max_memory_mb: int = 0
    max_disk_mb: int = 0
    max_volume_mb: int = 0
    creates_per_second: float = 0.0


@dataclass(frozen=True)
class Usage:
    sandboxes: int = 0
    cpu_cores: float = 0.0
    memory_mb: int = 0
    disk_mb: int = 0
    volume_mb: int = 0


class _Bucket:
    """A token bucket: `rate` creates a second, bursts of up to `rate` (at least 1)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.level = self.capacity
        self.at = time.monotonic()

    def take(self, n: int) -> float:
        """0 when n were taken, else the seconds until they could be."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        if n <= self.level:
            self.level -= n
            return 0.0
        return (n - self.level) / self.rate


class Quotas:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        volume_mb: Callable[[str], int],
    ) -> None:
        self._registry = registry
        self._records = store.records("quotas")
        # The space a tenant's volumes take (those being made included).
        self._volume_mb = volume_mb
        self._quotas = {name: Quota(**value) for name, value in self._records.all()}
        self._buckets: dict[str, _Bucket] = {}

    def get(self, tenant: str) -> Quota:
        return self._quotas.get(tenant, Quota())

    def set(self, tenant: str, quota: Quota) -> Quota:
        for f in fields(quota):
            value = getattr(quota, f.name)
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"{f.name} must be a finite number >= 0")
        self._quotas[tenant] = quota
        self._records.put(tenant, asdict(quota))
        self._buckets.pop(tenant, None)
        return quota

    def usage(self, tenant: str) -> Usage:
        held = self._held_by(tenant)
        return Usage(
            sandboxes=len(held),
            cpu_cores=sum(r.cpu_cores for r in held),
            memory_mb=sum(r.memory_mb for r in held),
            disk_mb=sum(r.disk_mb for r in held),
            volume_mb=self._volume_mb(tenant),
        )

    def admit(
        self, spec: SandboxSpec, pending: Iterable[SandboxSpec] = (), making: bool = False
    ) -> None:
        """Raises QUOTA_EXCEEDED when spec would take its tenant past a bound, and,
        for a sandbox made now (any create, a pool's fill included; not a draw from
        a warm pool), RATE_LIMITED past its creates per second."""
        q = self._quotas.get(spec.tenant)
        if not spec.tenant or q is None:
            return
        held = self._held_by(spec.tenant, pending)
        _bound("sandboxes", len(held) + 1, q.max_sandboxes)
        _bound_resources([*held, spec.resources], q)
        if making:
            self.take_creates(spec.tenant)

    def admit_limits(self, sb: Sandbox, wanted: Resources) -> None:
        """Raises QUOTA_EXCEEDED when new live limits would take the tenant past a bound
        (Scale, SetResourceLimits, autoscaling)."""
        q = self._quotas.get(sb.spec.tenant)
        if sb.spec.tenant and q is not None:
            _bound_resources([*self._held_by(sb.spec.tenant, leaving_out=sb.id), wanted], q)

    def admit_volume(self, tenant: str, size_mb: int) -> None:
        q = self._quotas.get(tenant)
        if tenant and q is not None:
            _bound("volume_mb", self._volume_mb(tenant) + size_mb, q.max_volume_mb)

    def _held_by(
        self, tenant: str, pending: Iterable[SandboxSpec] = (), leaving_out: str = ""
    ) -> list[Resources]:
        """What each of the tenant's live sandboxes holds (and each pending one asks)."""
        held = [
            _held(sb)
            for sb in self._registry.all()
            if sb.spec.tenant == tenant and sb.state != State.STOPPED and sb.id != leaving_out
        ]
        return held + [s.resources for s in pending if s.tenant == tenant]

    def take_creates(self, tenant: str, n: int = 1) -> None:
        """Raises RATE_LIMITED, with when to retry, past creates_per_second."""
        q = self._quotas.get(tenant)
        if not tenant or q is None or not q.creates_per_second:
            return
        bucket = self._buckets.get(tenant)
        if bucket is None or bucket.rate != q.creates_per_second:
            bucket = self._buckets[tenant] = _Bucket(q.creates_per_second)
        wait = bucket.take(n)
        if wait:
            err = ResourceExhausted(
                f"tenant {tenant!r} creates at most {q.creates_per_second:g} sandboxes a second",
                reason="RATE_LIMITED",
                limit=f"{q.creates_per_second:g}",
            )
            err.retry_after = wait
            raise err


def _held(sb: Sandbox) -> Resources:
    """What a sandbox counts: its limits in force, or what it asked while those are
    not known yet (a sandbox that asks nothing counts its provider's defaults once
    it runs). In force, not asked: a request above the host runs capped at it. A
    disk grow waiting for the next restart counts already: the image is grown now."""
    r, asked = sb.resources, sb.spec.resources
    return Resources(
        cpu_cores=r.cpu_cores or asked.cpu_cores,
        memory_mb=r.memory_mb or asked.memory_mb,
        disk_mb=max(r.disk_mb or asked.disk_mb, sb.requested.disk_mb),
    )


def _bound_resources(held: list[Resources], q: Quota) -> None:
    _bound("cpu_cores", sum(r.cpu_cores for r in held), q.max_cpu_cores)
    _bound("memory_mb", sum(r.memory_mb for r in held), q.max_memory_mb)
    _bound("disk_mb", sum(r.disk_mb for r in held), q.max_disk_mb)


def _bound(what: str, wanted: float, limit: float) -> None:
    if limit and wanted > limit:
        raise ResourceExhausted(
            f"quota exceeded: {what} would be {wanted:g}, the tenant's bound is {limit:g}",
            reason="QUOTA_EXCEEDED",
            resource=what,
            limit=f"{limit:g}",
        )
