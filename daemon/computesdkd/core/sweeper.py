"""The sweeper: enforces timeouts, notices sandboxes that died or hit OOM under us,
and retries what a failed destroy left, until nothing stays in stopping or error."""

from __future__ import annotations

import asyncio
import contextlib
import time

from structlog.contextvars import bound_contextvars

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers, Tasks
from computesdkd.core.lifecycle import REAP_MAX_S, Lifecycle, Reap
from computesdkd.core.processes import Processes
from computesdkd.core.registry import Registry
from computesdkd.domain import events
from computesdkd.domain.errors import ComputeError
from computesdkd.domain.model import Sandbox, State
from computesdkd.providers.base import Provider
from computesdkd.providers.capabilities import Leases
from computesdkd.support import logs

log = logs.get(__name__)

SWEEP_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 10.0
# How long the record of a dead keep_alive sandbox stays (others: to their timeout).
ERROR_RETENTION_S = 3600.0


class Sweeper:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        lifecycle: Lifecycle,
        processes: Processes,
        bus: EventBus,
        tasks: Tasks,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._lifecycle = lifecycle
        self._processes = processes
        self._bus = bus
        self._tasks = tasks
        self._last_probe: dict[str, float] = {}
        self._loop: asyncio.Task[None] | None = None
        registry.on_destroyed.append(self._forget)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._sweep_forever())

    def stop(self) -> None:
        if self._loop:
            self._loop.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")

    async def sweep(self) -> None:
        """Probes run side by side, each bounded and at its provider's own pace, so a
        slow or dead vendor cannot hold up the timeouts of any other sandbox."""
        now, mono = time.time(), time.monotonic()
        probes = []
        for sb in self._registry.all():
            if sb.state in (State.STOPPING, State.ERROR) and not self._lifecycle.destroying(sb.id):
                self._reap(sb, now, mono)
                continue
            if sb.state != State.RUNNING:
                continue
            if not sb.spec.keep_alive and now >= sb.expires_at:
                with bound_contextvars(sandbox_id=sb.id):
                    log.info("sandbox timed out")
                self._tasks.spawn(self._lifecycle.destroy_quietly(sb.id, "timeout"))
                continue
            provider = self._providers.of(sb)
            if mono - self._last_probe.get(sb.id, 0.0) < provider.probe_interval_s:
                continue
            self._last_probe[sb.id] = mono
            probes.append(self._probe(sb, provider))
        await asyncio.gather(*probes)

    def _forget(self, sandbox_id: str) -> None:
        self._last_probe.pop(sandbox_id, None)

    async def _probe(self, sb: Sandbox, provider: Provider) -> None:
        with bound_contextvars(sandbox_id=sb.id), contextlib.suppress(ComputeError, TimeoutError):
            lease = provider.part(Leases)
            if sb.spec.keep_alive and lease is not None:
                await asyncio.wait_for(lease.refresh_lease(sb), PROBE_TIMEOUT_S)
            probe = await asyncio.wait_for(provider.probe(sb), PROBE_TIMEOUT_S)
            self._processes.check_oom(sb, probe.oom_kills)
            if not probe.alive and sb.state == State.RUNNING:
                await self._confirm_death(sb, provider)

    async def _confirm_death(self, sb: Sandbox, provider: Provider) -> None:
        # A restart, reset or restore replaces the container under this lock: its
        # old init is meant to be gone. Only a death seen again with no such
        # operation in flight is one. The sweep never waits for one (it would hold
        # up every other sandbox's timeout): the next looks.
        lock = self._registry.lock(sb.id)
        if lock.locked():
            return
        async with lock:
            if sb.state != State.RUNNING:
                return
            again = await asyncio.wait_for(provider.probe(sb), PROBE_TIMEOUT_S)
            if again.alive:
                return
            # As dockerd lists a dead container until it is removed, the record
            # stays, in error and saying why, until destroyed or its timeout
            # (ERROR_RETENTION_S for keep_alive); but what it holds on the host
            # (mounts, loop device, cgroups, container state, disk) is of no further
            # use, since nothing can run in it again, and goes at once.
            sb.state = State.ERROR
            sb.error_message = "the sandbox stopped unexpectedly"
            self._registry.save(sb)
            self._bus.emit(sb.id, events.ERROR, sb.error_message, kind="lost")
            log.warning("sandbox died; freeing what it holds")
            self._registry.forget_watchers(sb.id)
            self._start_reap(sb.id, Reap(False, "died", time.monotonic()))

    def _reap(self, sb: Sandbox, now: float, mono: float) -> None:
        """For a sandbox in stopping or error with no destroy in flight: retries what
        failed, and ends a dead sandbox's record at its time."""
        reaps, released = self._lifecycle.reaps, self._lifecycle.released
        job = reaps.get(sb.id)
        if job is None and sb.state == State.STOPPING:  # a destroy cut short
            job = reaps[sb.id] = Reap(True, "retry", mono)
        if job is None and sb.id not in released:  # in error, still holding
            job = reaps[sb.id] = Reap(False, "died", mono)
        if job is None:  # in error, already freed: the record goes at its time
            died = released.get(sb.id, now)
            if now < (died + ERROR_RETENTION_S if sb.spec.keep_alive else sb.expires_at):
                return
            job = reaps[sb.id] = Reap(True, "timeout", mono)
        if not job.running and mono >= job.due:
            self._start_reap(sb.id, job)

    def _start_reap(self, sandbox_id: str, job: Reap) -> None:
        self._lifecycle.reaps[sandbox_id] = job
        job.running = True
        job.due = time.monotonic() + job.delay
        job.delay = min(job.delay * 2, REAP_MAX_S)

        async def attempt() -> None:
            try:
                with bound_contextvars(sandbox_id=sandbox_id):
                    if job.destroy:
                        await self._lifecycle.destroy_quietly(sandbox_id, job.reason)
                    else:
                        await self._lifecycle.release(sandbox_id, job)
            finally:
                job.running = False

        self._tasks.spawn(attempt())
