"""A disk grow a host can only make at the next restart (no CAP_SYS_RESOURCE) is
counted by quotas as soon as it is admitted: the image is grown at once, so two
such grows must not both pass against each other's old sizes."""

from __future__ import annotations

from dataclasses import replace

from computesdkd.domain.model import Resources, Sandbox, State
from computesdkd.features.quotas import _held
from conftest import spec


def test_a_grow_pending_a_restart_counts_what_was_asked() -> None:
    sb = Sandbox(
        "sbx-a", spec(tenant="t", resources=Resources(disk_mb=1000)), State.RUNNING, 0.0, 0.0
    )
    sb.resources = Resources(cpu_cores=1, memory_mb=512, disk_mb=1000)
    assert _held(sb).disk_mb == 1000
    sb.requested = replace(sb.resources, disk_mb=9000)  # what _grow_later leaves
    assert _held(sb).disk_mb == 9000
    # A cap on CPU above the host keeps counting what is in force, not the asked.
    sb.requested = Resources(cpu_cores=64, memory_mb=512, disk_mb=1000)
    assert _held(sb).cpu_cores == 1 and _held(sb).disk_mb == 1000
