"""What Vercel refuses, checked before the call so the answer names Vercel's rule.

The figures are Vercel's published limits (the @vercel/sandbox README and
docstrings): at most 5 tags; at most 15 exposed ports; 1 or an even number
of vCPUs, up to 8 on Hobby and Pro and 32 on Enterprise, each with 2048 MB;
a sandbox runs at most 45
minutes on Hobby and 24 hours on Pro and Enterprise. Which plan applies is
VERCEL_PLAN's (pro unless set).
"""

from __future__ import annotations

from computesdkd.domain.errors import InvalidArgument
from computesdkd.domain.model import Resources, SandboxSpec

MAX_TAGS = 5
MAX_PORTS = 15
# The tag every sandbox carries for the orphan sweep (provider.py), counted in MAX_TAGS.
OWNER_TAG = "computesdk-daemon"
MEMORY_PER_VCPU_MB = 2048
DEFAULT_VCPUS = 2
PLANS = {
    "hobby": (8, 45 * 60 * 1000),
    "pro": (8, 24 * 3600 * 1000),
    "enterprise": (32, 24 * 3600 * 1000),
}
# What the vendor's own timer adds to the daemon's, so that the daemon's fires first.
MARGIN_MS = 30_000
# A keep-alive sandbox's timeout, extended while the daemon lives (refresh_lease).
LEASE_MS = 30 * 60 * 1000


def _refuse(text: str, **meta: str) -> InvalidArgument:
    return InvalidArgument(f"vercel: {text}", reason="PROVIDER_LIMIT", provider="vercel", **meta)


def plan_limits(plan: str) -> tuple[int, int]:
    """(max vCPUs, max sandbox duration in ms)."""
    if plan not in PLANS:
        raise _refuse(f"VERCEL_PLAN is {plan!r}; it must be one of {', '.join(PLANS)}")
    return PLANS[plan]


def tags(metadata: dict[str, str]) -> dict[str, str]:
    if OWNER_TAG in metadata:
        raise _refuse(f"the metadata key {OWNER_TAG!r} is the daemon's own tag", rule="tags")
    if len(metadata) > MAX_TAGS - 1:
        raise _refuse(
            f"Vercel allows at most {MAX_TAGS} tags per sandbox and the daemon uses one, "
            f"so metadata may have at most {MAX_TAGS - 1} entries (got {len(metadata)})",
            rule="tags",
        )
    return dict(metadata)


def ports(declared: tuple[int, ...]) -> list[int]:
    if len(declared) > MAX_PORTS:
        raise _refuse(
            f"Vercel exposes at most {MAX_PORTS} ports per sandbox (asked {len(declared)})",
            rule="ports",
        )
    return list(declared)


def vcpus(r: Resources, plan: str) -> int:
    """The vCPUs to ask for: 1 or even, up to the plan's maximum."""
    most, _ = plan_limits(plan)
    if not r.cpu_cores:
        return DEFAULT_VCPUS
    n = int(r.cpu_cores)
    if n != r.cpu_cores or not (n == 1 or n % 2 == 0) or n > most:
        raise _refuse(
            f"Vercel sandboxes have 1 or an even number of vCPUs, at most {most} on the "
            f"{plan} plan (asked {r.cpu_cores:g})",
            rule="vcpus",
        )
    return n


def expected(r: Resources, plan: str) -> Resources:
    n = vcpus(r, plan)
    return Resources(cpu_cores=float(n), memory_mb=n * MEMORY_PER_VCPU_MB)


def timeout_ms(spec: SandboxSpec, plan: str) -> int:
    """The vendor's timeout for a new sandbox: the daemon's plus a margin, or a lease
    for keep-alive; never past the plan's maximum duration."""
    _, longest = plan_limits(plan)
    if spec.keep_alive:
        return min(LEASE_MS, longest)
    if spec.timeout_ms > longest:
        raise _refuse(
            f"Vercel stops a sandbox after at most {_duration(longest)} on the {plan} plan "
            f"(timeout_ms {spec.timeout_ms})",
            rule="timeout",
        )
    return min(spec.timeout_ms + MARGIN_MS, longest)


def _duration(ms: int) -> str:
    return f"{ms // 3_600_000} hours" if ms % 3_600_000 == 0 else f"{ms // 60_000} minutes"
