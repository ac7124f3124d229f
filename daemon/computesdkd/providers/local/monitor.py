"""What the daemon watches of a running local sandbox: liveness, OOM kills and
resource use, read from its cgroups, its disk and its network namespace."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from computesdkd.domain.model import Probe, Sandbox, Usage
from computesdkd.providers.local import cgroups, initproc


def probe(sandbox: Sandbox) -> Probe:
    oom = 0
    with contextlib.suppress(OSError):
        oom_control = cgroups.file(sandbox.id, "memory", "memory.oom_control")
        for line in oom_control.read_text().splitlines():
            if line.startswith("oom_kill "):
                oom = int(line.split()[1])
    return Probe(alive=initproc.is_live(sandbox), oom_kills=oom)


def usage(sandbox: Sandbox) -> Usage:
    disk_used = disk_total = 0
    with contextlib.suppress(OSError):
        st = os.statvfs(Path(sandbox.provider_data["bundle"]) / "disk")
        disk_total = st.f_blocks * st.f_frsize
        disk_used = (st.f_blocks - st.f_bfree) * st.f_frsize
    rx, tx, has_net = _network(sandbox)

    def counter(controller: str, name: str) -> int:
        return cgroups.read_int(cgroups.file(sandbox.id, controller, name))

    return Usage(
        memory_used_bytes=counter("memory", "memory.usage_in_bytes"),
        memory_limit_bytes=counter("memory", "memory.limit_in_bytes"),
        process_count=counter("pids", "pids.current"),
        cpu_time_ns=counter("cpuacct", "cpuacct.usage"),
        disk_used_bytes=disk_used,
        disk_limit_bytes=disk_total,
        network_rx_bytes=rx,
        network_tx_bytes=tx,
        has_network=has_net,
    )


def _network(sandbox: Sandbox) -> tuple[int, int, bool]:
    """Bytes through the sandbox's interfaces other than loopback, from its netns."""
    rx = tx = 0
    has_net = False
    with contextlib.suppress(OSError, ValueError):
        dev = Path(f"/proc/{initproc.pid_of(sandbox)}/net/dev")
        for line in dev.read_text().splitlines()[2:]:
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                continue
            cols = fields.split()
            rx, tx, has_net = rx + int(cols[0]), tx + int(cols[8]), True
    return rx, tx, has_net
