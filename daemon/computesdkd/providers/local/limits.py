"""Resource limits of local sandboxes: the sizes a sandbox may ask for, what this
host can give, and changing them while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from computesdkd.domain.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
)
from computesdkd.domain.model import Resources, Sandbox
from computesdkd.providers.local import cgroups, disks, initproc
from computesdkd.providers.local.disks import MIB
from computesdkd.providers.local.host import run
from computesdkd.providers.local.layout import Layout
from computesdkd.support import logs

log = logs.get(__name__)

DEFAULTS = Resources(cpu_cores=1.0, memory_mb=1024, disk_mb=2048, pids_limit=512)
HOST_CPU_CORES = float(os.cpu_count() or 1)
# Sizes a sandbox may ask for. Below the minimums mkfs, runc or the agent fail;
# above the disk cap (MAX_DISK_ENV, 256 GiB unless set) a disk is refused however
# free the store.
MIN_CPU_CORES = 0.01  # runc's smallest CFS quota: 1 ms a 100 ms period
MIN_MEMORY_MB = 16
MIN_DISK_MB = 32
MIN_PIDS = 8
MAX_DISK_ENV = "COMPUTESDK_LOCAL_MAX_DISK_MB"
DEFAULT_MAX_DISK_MB = 256 * 1024


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768


def capped(asked: Resources) -> Resources:
    """A request above this host, capped at it: CPU at its cores, memory at its RAM.
    As cloud providers place a large request on a large machine, a request this
    host cannot give in full runs on what it has (README: "Resources above the
    host"); the sandbox's record keeps what was asked (Sandbox.requested)."""
    host_mb = _host_memory() // MIB
    return replace(
        asked,
        cpu_cores=min(asked.cpu_cores, HOST_CPU_CORES),
        memory_mb=min(asked.memory_mb, host_mb),
    )


def _cap(sandbox: Sandbox, asked: Resources, why: str) -> Resources:
    """asked capped at the host; notes on the sandbox what was asked when it was."""
    res = capped(asked)
    sandbox.requested = asked if res != asked else Resources()
    if res != asked:
        log.info(
            "resources above the host capped at the host",
            why=why,
            cpu_cores=f"{res.cpu_cores:g}",
            asked_cpu_cores=f"{asked.cpu_cores:g}",
            memory_mb=res.memory_mb,
            asked_memory_mb=asked.memory_mb,
        )
    return res


class Limits:
    def __init__(self, layout: Layout, max_disk_mb: int, emit: Callable[..., object]) -> None:
        self._layout = layout
        self._max_disk_mb = max_disk_mb
        self._emit = emit

    def resolve(self, sandbox: Sandbox) -> Resources:
        """The sandbox's resources, defaults filled in, each checked against the
        bounds and this host."""
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise FailedPrecondition(
                "provider 'local' has no GPU on this host",
                reason="GPU_UNAVAILABLE",
                provider="local",
                feature="gpu",
            )
        res = Resources(
            cpu_cores=r.cpu_cores or DEFAULTS.cpu_cores,
            memory_mb=r.memory_mb or DEFAULTS.memory_mb,
            disk_mb=r.disk_mb or DEFAULTS.disk_mb,
            pids_limit=r.pids_limit or DEFAULTS.pids_limit,
        )
        # Every bound is checked before anything is made: a refused size costs
        # nothing, and the error names the resource (RESOURCE_EXHAUSTED when the
        # host cannot give it, INVALID_ARGUMENT when no sandbox could use it).
        for name, value, low in (
            ("cpu_cores", res.cpu_cores, MIN_CPU_CORES),
            ("memory_mb", res.memory_mb, MIN_MEMORY_MB),
            ("disk_mb", res.disk_mb, MIN_DISK_MB),
            ("pids_limit", res.pids_limit, MIN_PIDS),
        ):
            if not value >= low:  # also NaN
                raise InvalidArgument(
                    f"{name} {value:g} is below the minimum of {low:g}",
                    reason="INVALID_RESOURCES",
                    resource=name,
                )
        res = _cap(sandbox, res, "create")
        pid_max = _pid_max()
        if res.pids_limit > pid_max:
            raise ResourceExhausted(
                f"pids_limit {res.pids_limit} exceeds this host's pid_max {pid_max}",
                reason="RESOURCES_UNAVAILABLE",
                resource="pids_limit",
            )
        self._check_disk(res.disk_mb)
        return res

    def _check_disk(self, disk_mb: int, grow_mb: int | None = None) -> None:
        """A disk image is sparse, but its size is a promise: no larger than the cap,
        nor (the new part, grow_mb, when an existing disk grows) than what the store
        has free."""
        if disk_mb > self._max_disk_mb:
            raise ResourceExhausted(
                f"disk_mb {disk_mb} exceeds the cap of {self._max_disk_mb} ({MAX_DISK_ENV})",
                reason="RESOURCES_UNAVAILABLE",
                resource="disk_mb",
                limit_mb=str(self._max_disk_mb),
            )
        try:
            free_mb = shutil.disk_usage(self._layout.store).free // MIB
        except OSError:
            return
        if (disk_mb if grow_mb is None else grow_mb) > free_mb:
            raise ResourceExhausted(
                f"disk_mb {disk_mb} exceeds the {free_mb} MB free in the sandbox store",
                reason="RESOURCES_UNAVAILABLE",
                resource="disk_mb",
                limit_mb=str(free_mb),
            )

    async def update(
        self, sandbox: Sandbox, cpu_cores: float, memory_mb: int, disk_mb: int
    ) -> Resources:
        """Changes a running sandbox's limits; zero leaves one as it is."""
        cur = sandbox.resources
        if memory_mb and memory_mb < MIN_MEMORY_MB:
            raise InvalidArgument(
                f"memory_mb {memory_mb} is below the minimum of {MIN_MEMORY_MB}",
                reason="INVALID_RESOURCES",
                resource="memory_mb",
            )
        asked = replace(
            cur,
            cpu_cores=cpu_cores or cur.cpu_cores,
            memory_mb=memory_mb or cur.memory_mb,
            disk_mb=disk_mb or cur.disk_mb,
        )
        requested_before = sandbox.requested
        want = _cap(sandbox, asked, "limits")
        try:
            return await self._apply(sandbox, cur, want, cpu_cores, memory_mb, disk_mb)
        except BaseException:
            sandbox.requested = requested_before
            raise

    async def _apply(
        self,
        sandbox: Sandbox,
        cur: Resources,
        want: Resources,
        cpu_cores: float,
        memory_mb: int,
        disk_mb: int,
    ) -> Resources:
        cpu_cores = want.cpu_cores if cpu_cores else 0.0
        memory_mb = want.memory_mb if memory_mb else 0
        if disk_mb and disk_mb < cur.disk_mb:
            raise FailedPrecondition(
                "a running sandbox's disk can grow but not shrink",
                reason="DISK_SHRINK_UNSUPPORTED",
                provider="local",
            )
        grows = disk_mb > cur.disk_mb
        if grows:
            self._check_disk(disk_mb, grow_mb=disk_mb - cur.disk_mb)
        if cpu_cores:
            quota, shares = str(int(cpu_cores * 100_000)), str(max(2, int(cpu_cores * 1024)))
            await run(
                *self._layout.runc(
                    "update", "--cpu-quota", quota, "--cpu-period", "100000",
                    "--cpu-share", shares, sandbox.id,
                )
            )  # fmt: skip
        if memory_mb:
            await self._set_memory(sandbox, memory_mb)
        if grows and disks.can_grow_live():
            await disks.grow(Path(sandbox.provider_data["bundle"]), disk_mb)
        elif grows:
            want = self._grow_later(sandbox, cur, want)
        return want

    def _grow_later(self, sandbox: Sandbox, cur: Resources, want: Resources) -> Resources:
        """On a host where a mounted ext4 cannot grow (no CAP_SYS_RESOURCE), the
        image is made larger now and its filesystem grows at the sandbox's next
        restart, unmounted. Until then the disk in force is the old one: the answer
        says so, and Sandbox.requested keeps the size asked."""
        disks.enlarge(Path(sandbox.provider_data["bundle"]) / "disk.img", want.disk_mb)
        sandbox.requested = replace(
            sandbox.requested if sandbox.requested != Resources() else want,
            disk_mb=want.disk_mb,
        )
        log.warning(
            "this host cannot grow a mounted disk: it grows at the next restart",
            disk_mb=cur.disk_mb,
            asked_disk_mb=want.disk_mb,
        )
        self._emit(
            sandbox.id,
            "resources.pending",
            f"the disk grows from {cur.disk_mb} to {want.disk_mb} MB at the next restart: "
            "this host withholds CAP_SYS_RESOURCE, which growing a mounted ext4 needs",
            disk_mb=str(want.disk_mb),
            cause="no-online-resize",
        )
        return replace(want, disk_mb=cur.disk_mb)

    async def _set_memory(self, sandbox: Sandbox, memory_mb: int) -> None:
        """cgroup v1 refuses a limit below current use rather than reclaiming it, so
        the daemon does what the OOM killer would: it kills the largest process
        (never the agent) until the limit fits, and says so in an event."""
        limit = str(memory_mb * MIB)
        update = self._layout.runc("update", "--memory", limit, "--memory-swap", limit, sandbox.id)
        for _ in range(20):
            try:
                await run(*update)
                return
            except Internal as exc:
                if "unable to set memory limit" not in exc.message:
                    raise
            victim = _largest_process(sandbox)
            if victim is None:
                break
            pid, rss = victim
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            log.warning(
                "killed the largest process to fit a lowered memory limit",
                pid=pid,
                rss_mb=rss >> 20,
                memory_mb=memory_mb,
            )
            self._emit(
                sandbox.id,
                "out-of-memory",
                f"a process using {rss >> 20} MB was killed to fit the new {memory_mb} MB limit",
                cause="limit-lowered",
                rss_bytes=str(rss),
                memory_mb=str(memory_mb),
            )
            await asyncio.sleep(0.05)
        raise FailedPrecondition(
            f"the sandbox cannot fit in {memory_mb} MB",
            reason="MEMORY_LIMIT_TOO_LOW",
            memory_mb=str(memory_mb),
        )


def _largest_process(sandbox: Sandbox) -> tuple[int, int] | None:
    """(pid, resident bytes) of the sandbox's largest process other than init."""
    init = initproc.pid_of(sandbox)
    best: tuple[int, int] | None = None
    with contextlib.suppress(OSError):
        pids = cgroups.file(sandbox.id, "memory", "cgroup.procs").read_text().split()
        for pid in map(int, pids):
            if pid == init:
                continue
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                        if best is None or rss > best[1]:
                            best = (pid, rss)
    return best
