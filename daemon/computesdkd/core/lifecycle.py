"""A sandbox's life after create: adopt after a restart, reset, restart, env and
limits, destroy, and freeing what a dead one holds."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from structlog.contextvars import bound_contextvars

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers
from computesdkd.core.placement import Placement
from computesdkd.core.processes import Processes
from computesdkd.core.registry import Registry
from computesdkd.domain import events
from computesdkd.domain.env import check_env_names
from computesdkd.domain.errors import ComputeError, Internal, InvalidArgument
from computesdkd.domain.model import Resources, Sandbox, State, Usage
from computesdkd.providers import capabilities as caps
from computesdkd.providers.capabilities import require
from computesdkd.store import Store
from computesdkd.support import logs
from computesdkd.support.testhooks import crash

log = logs.get(__name__)

SHUTDOWN_DESTROY_TIMEOUT_S = 30.0
# The reaper: no sandbox stays in stopping or error. A failed or cut-short destroy
# is retried with backoff (first, most); a sandbox that died is freed at once.
REAP_FIRST_S, REAP_MAX_S = 1.0, 60.0
RELEASE_TIMEOUT_S = 60.0

# Runs before a destroyed sandbox's record goes (snapshots: frees its files).
Teardown = Callable[[Sandbox], Awaitable[None]]


@dataclass
class Reap:
    """A sweeper job: destroy the sandbox (record too), or only free what it holds
    on the host and keep its record in error."""

    destroy: bool
    reason: str
    due: float  # time.monotonic()
    delay: float = REAP_FIRST_S
    running: bool = False


@dataclass(frozen=True)
class Status:
    state: State
    uptime_ms: int
    sandbox: Sandbox
    usage: Usage | None


class Lifecycle:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        processes: Processes,
        placement: Placement,
        store: Store,
        bus: EventBus,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._processes = processes
        self._placement = placement
        self._store = store
        self._bus = bus
        self._destroying: dict[str, asyncio.Task[None]] = {}
        # The sweeper's jobs, and the dead sandboxes already freed (when).
        self.reaps: dict[str, Reap] = {}
        self.released: dict[str, float] = {}
        self.on_teardown: list[Teardown] = []
        # Called for each sandbox re-adopted after a daemon restart (settings come back).
        self.on_adopted: list[Callable[[Sandbox], object]] = []
        # Says whether a running sandbox may take these limits (quotas); raises when not.
        self.limit_admission: list[Callable[[Sandbox, Resources], None]] = []

    # ------------------------------------------------------------ after a restart

    async def adopt(self, sb: Sandbox) -> None:
        with bound_contextvars(sandbox_id=sb.id):
            provider = self._providers.by_name.get(sb.spec.provider)
            alive = False
            if provider is not None and sb.state == State.RUNNING:
                with contextlib.suppress(ComputeError):
                    alive = await provider.adopt(sb)
            if not alive:
                log.warning("sandbox did not survive the daemon restart")
                self._bus.emit(
                    sb.id, events.ERROR, "sandbox was lost while the daemon was down", kind="lost"
                )
                if provider is not None:
                    with contextlib.suppress(Exception):
                        await provider.destroy(sb)
                self._store.sandboxes.delete(sb.id)
                self._bus.emit(sb.id, events.DESTROYED, "lost", reason="lost")
                self._registry.notify_destroyed(sb.id)
                return
            self._registry.add(sb)
            if sb.provider_data.pop("restarted_at_adopt", ""):
                self._store.processes.forget(sb.id)  # its processes ended with it
                self._registry.save(sb)
            assert provider is not None
            self._processes.oom_baseline(sb.id, (await provider.probe(sb)).oom_kills)
            self._processes.watch_unfinished(sb)
            for hook in self.on_adopted:
                hook(sb)
            log.info("re-adopted sandbox")

    # ------------------------------------------------------------ destroy

    async def destroy(
        self,
        sandbox_id: str,
        graceful: bool = False,
        graceful_timeout_ms: int = 0,
        reason: str = "requested",
    ) -> None:
        """The teardown runs as a task of its own, which the caller awaits through a
        shield: a caller that goes away (a cancelled RPC) cannot cut it short and
        leave the sandbox half freed, and a second destroy of the same sandbox
        joins the one in flight."""
        task = self._destroying.get(sandbox_id)
        if task is None:
            self._registry.get(sandbox_id)  # NOT_FOUND from the call itself
            task = asyncio.create_task(
                self._destroy(sandbox_id, graceful, graceful_timeout_ms, reason),
                name=f"destroy {sandbox_id}",
            )
            self._destroying[sandbox_id] = task
            task.add_done_callback(functools.partial(self._destroy_done, sandbox_id))
        await asyncio.shield(task)

    def destroying(self, sandbox_id: str) -> bool:
        return sandbox_id in self._destroying

    async def destroy_quietly(self, sandbox_id: str, reason: str) -> None:
        with contextlib.suppress(ComputeError):
            await self.destroy(sandbox_id, reason=reason)

    async def destroy_all(self) -> None:
        """At shutdown with --on-exit destroy. Bounded: a vendor that does not answer
        must not hold the daemon's exit."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        self.destroy(i, graceful=True, graceful_timeout_ms=5000, reason="shutdown")
                        for i in self._registry.ids()
                    ),
                    return_exceptions=True,
                ),
                SHUTDOWN_DESTROY_TIMEOUT_S,
            )

    async def wait_for_destroys(self) -> None:
        """Destroys in flight finish, as their callers were told."""
        if self._destroying:
            await asyncio.wait(list(self._destroying.values()), timeout=SHUTDOWN_DESTROY_TIMEOUT_S)

    def _destroy_done(self, sandbox_id: str, task: asyncio.Task[None]) -> None:
        if self._destroying.get(sandbox_id) is task:
            del self._destroying[sandbox_id]
        if not task.cancelled():
            task.exception()  # retrieved: every caller re-raises it itself

    async def _destroy(
        self, sandbox_id: str, graceful: bool, graceful_timeout_ms: int, reason: str
    ) -> None:
        async with self._registry.lock(sandbox_id):
            sb = self._registry.get(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                sb.state = State.STOPPING
                self._registry.save(sb)
                crash("destroy.stopping")
                grace = (graceful_timeout_ms or 10_000) / 1000 if graceful else 0.0
                provider = self._providers.of(sb)
                try:
                    await self._providers.guarded(provider, provider.destroy(sb, grace))
                except Exception as exc:
                    self._destroy_failed(sb, reason, exc)
                    if isinstance(exc, ComputeError):
                        raise
                    raise Internal(sb.error_message) from exc
                self.reaps.pop(sandbox_id, None)
                self.released.pop(sandbox_id, None)
                for hook in self.on_teardown:
                    await hook(sb)
                self._processes.forget_oom(sandbox_id)
                self._registry.forget_watchers(sandbox_id)
                self._registry.remove(sandbox_id)
                for removed in self._placement.on_removed:
                    await removed(sb)
                self._bus.emit(sandbox_id, events.DESTROYED, reason=reason)
                log.info("sandbox destroyed", reason=reason)
        self._registry.notify_destroyed(sandbox_id)

    def _destroy_failed(self, sb: Sandbox, reason: str, exc: Exception) -> None:
        """The record stays, in error and saying why, and the sweeper retries with
        backoff until everything is freed."""
        message = exc.message if isinstance(exc, ComputeError) else repr(exc)
        sb.state = State.ERROR
        sb.error_message = f"destroy failed: {message}"
        self._registry.save(sb)
        if sb.id not in self.reaps:
            self.reaps[sb.id] = Reap(True, reason, time.monotonic() + REAP_FIRST_S)
            self._bus.emit(sb.id, events.ERROR, sb.error_message, kind="destroy")
        else:
            self.reaps[sb.id].destroy = True
        log.warning("destroy failed; the sweeper retries it", error=message)

    async def release(self, sandbox_id: str, job: Reap) -> None:
        """Frees a dead sandbox's host resources; its record stays, in error."""
        async with self._registry.lock(sandbox_id):
            sb = self._registry.find(sandbox_id)
            if sb is None or sb.state != State.ERROR or job.destroy:
                return
            provider = self._providers.of(sb)
            try:
                await asyncio.wait_for(provider.destroy(sb, 0.0), RELEASE_TIMEOUT_S)
            except Exception as exc:
                log.warning("could not free a dead sandbox; the sweeper retries", error=repr(exc))
                return
            if self.reaps.get(sandbox_id) is job:
                del self.reaps[sandbox_id]
            self.released[sandbox_id] = time.time()
            self._registry.save(sb)  # its provider_data changed
            log.info("freed what a dead sandbox held")

    # ------------------------------------------------------------ changes

    async def status(self, sandbox_id: str) -> Status:
        sb = self._registry.get(sandbox_id)
        usage = None
        meter = self._providers.of(sb).part(caps.Metering)
        if sb.state == State.RUNNING and meter is not None:
            with contextlib.suppress(ComputeError):
                usage = await meter.usage(sb)
        uptime = int((time.time() - sb.started_at) * 1000) if sb.started_at else 0
        return Status(sb.state, uptime, sb, usage)

    async def reset(self, sandbox_id: str, hard: bool) -> Sandbox:
        """Soft: every process killed, files kept. Hard: files back to the template's."""
        async with self._registry.lock(sandbox_id):
            sb, provider = self._registry.running(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                self._registry.forget_watchers(sandbox_id)
                await self._providers.guarded(
                    provider, require(provider, caps.Resettable, "reset").reset(sb, hard)
                )
                self._store.processes.forget(sandbox_id)
                self._registry.save(sb)
                self._bus.emit(sandbox_id, events.RESET, hard=str(hard).lower())
                log.info("sandbox reset", hard=hard)
        return sb

    async def restart(
        self,
        sandbox_id: str,
        template: str,
        env: dict[str, str] | None,
        resources: Resources | None,
    ) -> Sandbox:
        check_env_names(env or {})
        async with self._registry.lock(sandbox_id):
            sb, provider = self._registry.running(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                held_before = holding = sb.resources
                if resources is not None:
                    expected = provider.expected_resources(resources)
                    for admit in self.limit_admission:
                        admit(sb, expected)
                    # Quotas count what a sandbox holds: while it restarts, the more
                    # of the old and the new, so that no create slips in between.
                    sb.resources = holding = replace(
                        held_before,
                        cpu_cores=max(held_before.cpu_cores, expected.cpu_cores),
                        memory_mb=max(held_before.memory_mb, expected.memory_mb),
                        disk_mb=max(held_before.disk_mb, expected.disk_mb),
                    )
                new_template = bool(template) and template != sb.spec.template
                before = sb.spec
                sb.spec = replace(
                    sb.spec,
                    template=template or sb.spec.template,
                    env=sb.spec.env if env is None else env,
                    resources=sb.spec.resources if resources is None else resources,
                )
                self._processes.forget(sandbox_id)
                try:
                    await self._providers.guarded(
                        provider,
                        require(provider, caps.Restartable, "restart").restart(
                            sb, wipe=new_template
                        ),
                    )
                except ComputeError:
                    sb.spec, sb.resources = before, held_before
                    raise
                if sb.resources is holding:  # a provider that keeps its limits as they were
                    sb.resources = held_before
                self._registry.save(sb)
                self._bus.emit(
                    sandbox_id,
                    events.RESTARTED,
                    template=sb.spec.template,
                    new_template=str(new_template).lower(),
                )
                log.info("sandbox restarted", template=sb.spec.template)
        return sb

    def set_env(self, sandbox_id: str, env: dict[str, str], unset: list[str]) -> dict[str, str]:
        sb = self._registry.get(sandbox_id)
        check_env_names(env)
        merged = {k: v for k, v in {**sb.spec.env, **env}.items() if k not in set(unset)}
        sb.spec = replace(sb.spec, env=merged)
        self._registry.save(sb)
        self._bus.emit(
            sandbox_id,
            events.ENV_CHANGED,
            set=",".join(sorted(env)),
            unset=",".join(sorted(unset)),
        )
        return merged

    async def set_limits(
        self, sandbox_id: str, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        if not cpu_cores >= 0:  # NaN too
            raise InvalidArgument("cpu must not be negative", reason="INVALID_RESOURCES")
        sb, provider = self._registry.running(sandbox_id)
        with bound_contextvars(sandbox_id=sandbox_id):
            before = sb.resources
            wanted = replace(
                before,
                cpu_cores=cpu_cores or before.cpu_cores,
                memory_mb=memory_mb or before.memory_mb,
                disk_mb=disk_mb or before.disk_mb,
            )
            # Quotas count what the provider will give (a request above the host
            # is capped at it), not what was asked.
            wanted = provider.expected_resources(wanted)
            for admit in self.limit_admission:
                admit(sb, wanted)
            sb.resources = await require(provider, caps.LiveLimits, "live limits").set_limits(
                sb, cpu_cores=cpu_cores, memory_mb=memory_mb, disk_mb=disk_mb
            )
            self._registry.save(sb)
            after = sb.resources
            self._bus.emit(
                sb.id,
                events.RESOURCES_CHANGED,
                f"cpu {before.cpu_cores:g}->{after.cpu_cores:g} cores, memory "
                f"{before.memory_mb}->{after.memory_mb} MB, disk "
                f"{before.disk_mb}->{after.disk_mb} MB",
                cpu_cores=f"{after.cpu_cores:g}",
                memory_mb=str(after.memory_mb),
                disk_mb=str(after.disk_mb),
            )
            return sb.resources
