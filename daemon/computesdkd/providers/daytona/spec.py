"""A sandbox spec as Daytona's CreateSandbox body, with Daytona's rules checked
before the call (each refusal is INVALID_ARGUMENT naming the rule), and the
labels and lifetimes that keep a dead daemon from leaking a billed sandbox:

- labels `computesdk.owner` (this daemon, one per state dir) and
  `computesdk.sandbox` (the record's id): at start the daemon lists its own
  sandboxes by label and deletes those no record owns (reconcile);
- `ttlMinutes`, the vendor's wall-clock limit counted from creation whatever the
  state: the sandbox's timeout plus a margin, or a lease the daemon extends while
  it runs (keep-alive sandboxes);
- `autoStopInterval` (idle minutes) and `autoDeleteInterval: 0`, so a sandbox
  that stops is deleted rather than kept (and billed for its disk).
"""

from __future__ import annotations

import math
import re
from typing import Any

from computesdkd.domain.errors import InvalidArgument, Unsupported
from computesdkd.domain.model import Sandbox
from computesdkd.providers.daytona.api import NAME

# Daytona's default snapshot carries python and node; other names are snapshots.
DEFAULT_TEMPLATES = {
    *("base", "python", "python:3.11", "python3.11.x"),
    *("node", "nodejs", "nodejs18", "nodejs18.x"),
}
OWNER_LABEL = "computesdk.owner"
SANDBOX_LABEL = "computesdk.sandbox"
RESERVED_PREFIX = "computesdk."
# A keep-alive sandbox's lease, extended while the daemon runs (Leases).
LEASE_MIN = 60
TTL_MARGIN_MIN = 2
# CreateSandboxDto: gpu is @Max(1); gpuType one of GpuType.
MAX_GPUS = 1
GPU_TYPES = ("H100", "H200", "B200", "B300", "RTX-PRO-6000", "RTX-4090", "RTX-5090", "MI355X")
# Daytona's snapshot names: what its API takes as an image or snapshot reference.
_SNAPSHOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")


def invalid(rule: str) -> InvalidArgument:
    return InvalidArgument(f"daytona: {rule}", reason="PROVIDER_LIMIT", provider=NAME)


def ttl_minutes(sandbox: Sandbox) -> int:
    if sandbox.spec.keep_alive:
        return LEASE_MIN
    return max(1, math.ceil(sandbox.spec.timeout_ms / 60_000)) + TTL_MARGIN_MIN


def create_body(sandbox: Sandbox, owner: str, target: str) -> dict[str, Any]:
    spec, r = sandbox.spec, sandbox.spec.resources
    if r.pids_limit:
        raise Unsupported(NAME, "pids limit")
    for key in spec.metadata:
        if key.startswith(RESERVED_PREFIX):
            raise invalid(f"metadata keys starting with {RESERVED_PREFIX!r} are the daemon's")
    ttl = ttl_minutes(sandbox)
    body: dict[str, Any] = {
        "env": dict(spec.env),
        "labels": {**spec.metadata, OWNER_LABEL: owner, SANDBOX_LABEL: sandbox.id},
        "autoStopInterval": 0 if spec.keep_alive else ttl,
        "autoDeleteInterval": 0,  # deleted as soon as it stops
        "ttlMinutes": ttl,
    }
    if spec.template not in DEFAULT_TEMPLATES:
        if not _SNAPSHOT.fullmatch(spec.template):
            raise invalid("a snapshot name is 1-255 letters, digits and ._/:@-")
        body["snapshot"] = spec.template
    if r.cpu_cores:
        body["cpu"] = max(1, math.ceil(r.cpu_cores))  # whole cores
    if r.memory_mb:
        body["memory"] = max(1, math.ceil(r.memory_mb / 1024))  # GiB
    if r.disk_mb:
        body["disk"] = max(1, math.ceil(r.disk_mb / 1024))  # GiB
    if r.gpu_enabled:
        gpus = r.gpu_count or 1
        if gpus > MAX_GPUS:
            raise invalid(f"a sandbox has at most {MAX_GPUS} GPU")
        body["gpu"] = gpus
        if r.gpu_type:
            if r.gpu_type.upper() not in GPU_TYPES:
                raise invalid(f"a GPU type is one of {', '.join(GPU_TYPES)}")
            body["gpuType"] = [r.gpu_type.upper()]
    if target:
        body["target"] = target
    return body
