"""The sandbox manager: the daemon's domain layer.

It owns ids, state, timeouts, events and persistence, and delegates the work
on a platform to a Provider. Servicers call it; it raises domain errors only.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import functools
import inspect
import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from structlog.contextvars import bound_contextvars

from computesdkd.autoscale import AutoScaler
from computesdkd.breaker import Circuit, CircuitBreaker, is_provider_fault
from computesdkd.domain.errors import (
    AlreadyExists,
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
    sandbox_not_found,
)
from computesdkd.domain.model import (
    Command,
    ExitStatus,
    FileInfo,
    HealthResult,
    Output,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    SandboxSpec,
    ScalingPolicy,
    Started,
    State,
    Usage,
)
from computesdkd.domain.paths import WORKDIR, normalize
from computesdkd.events import EventBus
from computesdkd.groups import Groups
from computesdkd.health import CustomCheck, HealthChecks
from computesdkd.messaging import Messaging
from computesdkd.monitor import Monitor
from computesdkd.networks import Networks
from computesdkd.pools import POOL_LABEL, Pools
from computesdkd.providers.base import EXEC_RESUME, SNAPSHOTS, ProcessRun, Provider, ProviderContext
from computesdkd.snapshots import RESTARTED, Snapshots
from computesdkd.store import Store
from computesdkd.support import logs, metrics
from computesdkd.support.testhooks import crash
from computesdkd.templates import Templates
from computesdkd.volumes import VOLUME_MOUNTED, Volumes

log = logs.get(__name__)


@dataclass
class RunOutcome:
    """What RunCommand answers: the first bytes of each stream, and the end if it came."""

    started: Started | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exited: ExitStatus | None = None


DEFAULT_TIMEOUT_MS = 300_000
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_METADATA = 64
MAX_METADATA_BYTES = 4096
SWEEP_INTERVAL_S = 1.0
PROVIDER_START_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 10.0
SHUTDOWN_DESTROY_TIMEOUT_S = 30.0
# The reaper: no sandbox stays in stopping or error. A failed or cut-short destroy
# is retried with backoff (first, most); a sandbox that died is freed at once.
REAP_FIRST_S, REAP_MAX_S = 1.0, 60.0
RELEASE_TIMEOUT_S = 60.0
# How long the record of a dead keep_alive sandbox stays (others: to their timeout).
ERROR_RETENTION_S = 3600.0
RECONCILE_TIMEOUT_S = 120.0
# Event types (Event.type). New ones may be added; these are stable.
CREATED, READY, ERROR, DESTROYED = "created", "ready", "error", "destroyed"
PROCESS_STARTED, PROCESS_EXITED, OOM = "process.started", "process.exited", "out-of-memory"
CLONED, MIGRATED, RESOURCES_CHANGED = "cloned", "migrated", "resources.changed"
RESET, ENV_CHANGED = "reset", "env.changed"
POOL_ALLOW, POOL_NEVER = 1, 2
# Creates of one batch run at once; more only queue behind runc on a small host.
BATCH_CONCURRENCY = 8
MAX_BATCH = 1000
# Stdin chunks of a workspace copy stay well under every provider's message limits.
COPY_CHUNK = 256 * 1024
COPY_EXIT_WAIT_S = 5.0
# A provider's circuit breaker changed state; sandbox_id is empty.
CIRCUIT = "provider.circuit"
T = TypeVar("T")


@dataclass
class _Reap:
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


def _prepared(sb: Sandbox, command: Command) -> Command:
    """Every provider gets an absolute, checked working directory, and the
    sandbox's env as it is now (SetSandboxEnv changes it after create)."""
    return replace(
        command, cwd=normalize(command.cwd or WORKDIR), env={**sb.spec.env, **command.env}
    )


class Manager:
    def __init__(
        self,
        state_dir: Path,
        store: Store,
        bus: EventBus,
        providers: dict[str, Provider],
        default_provider: str,
        pool_create: bool = True,
    ) -> None:
        self._state_dir = state_dir
        # Whether create takes warm pooled sandboxes unless the request says otherwise.
        self.pool_create = pool_create
        self.store = store
        self.bus = bus
        self.providers = providers
        self.default_provider = default_provider
        self._sandboxes: dict[str, Sandbox] = {}
        self._creating: dict[str, asyncio.Future[Sandbox]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._oom_seen: dict[str, int] = {}
        self._last_probe: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._destroying: dict[str, asyncio.Task[None]] = {}
        self._reaps: dict[str, _Reap] = {}
        self._released: dict[str, float] = {}  # dead sandboxes already freed: when
        self.accepting = True
        self.monitor = Monitor(bus.emit)
        self.autoscaler = AutoScaler(self)
        self.health = HealthChecks(self)
        metrics.watch_state(self._counts, lambda: bus.subscriber_count)
        self.breakers = {name: CircuitBreaker(name, self._circuit_changed) for name in providers}
        self.pools = Pools(self)
        # Called with the id of every sandbox that goes away (groups, networks, pools).
        self.on_destroyed: list[Callable[[str], object]] = [self.pools.forget_sandbox]
        self.groups = Groups(self)
        self.networks = Networks(self)
        self.messaging = Messaging(self)
        self.snapshots = Snapshots(self)
        self.volumes = Volumes(self)
        self.templates = Templates(self)

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        ctx = ProviderContext(state_dir=self._state_dir, emit=self.bus.emit)
        # Providers start side by side, each bounded: a dead one cannot hold up the rest.
        results = await asyncio.gather(
            *(
                asyncio.wait_for(p.start(ctx), PROVIDER_START_TIMEOUT_S)
                for p in self.providers.values()
            ),
            return_exceptions=True,
        )
        for p, result in zip(self.providers.values(), results, strict=True):
            if isinstance(result, BaseException):
                log.warning("provider failed to start", provider=p.name, error=repr(result))
        for sb in self.store.sandboxes():
            await self._adopt(sb)
        await self._reconcile()
        self._sweeper = asyncio.create_task(self._sweep_forever())
        await self.snapshots.collect_garbage()
        await self.pools.start()
        self.groups.start()
        self.networks.start()
        await self.messaging.start()

    async def _adopt(self, sb: Sandbox) -> None:
        with bound_contextvars(sandbox_id=sb.id):
            provider = self.providers.get(sb.spec.provider)
            alive = False
            if provider is not None and sb.state == State.RUNNING:
                with contextlib.suppress(ComputeError):
                    alive = await provider.adopt(sb)
            if not alive:
                log.warning("sandbox did not survive the daemon restart")
                self.bus.emit(
                    sb.id, ERROR, "sandbox was lost while the daemon was down", kind="lost"
                )
                if provider is not None:
                    with contextlib.suppress(Exception):
                        await provider.destroy(sb)
                self.store.delete_sandbox(sb.id)
                self.bus.emit(sb.id, DESTROYED, "lost", reason="lost")
                self._notify_destroyed(sb.id)
                return
            self._sandboxes[sb.id] = sb
            if sb.provider_data.pop("restarted_at_adopt", ""):
                self.store.forget_processes(sb.id)  # its processes ended with it
            self.store.put_sandbox(sb)
            self._oom_seen[sb.id] = (await provider.probe(sb)).oom_kills if provider else 0
            for pid in self.store.unfinished_processes(sb.id):
                self._watch(sb, pid)
            self._restore_settings(sb)
            log.info("re-adopted sandbox")

    async def _reconcile(self) -> None:
        """Each provider frees what no adopted record owns: the leftovers of a daemon
        killed at any step of a create, destroy, clone or write. Before anything
        new is made (pools start after), so nothing in progress can be mistaken."""
        for p in self.providers.values():
            live = {sb.id for sb in self._sandboxes.values() if sb.spec.provider == p.name}
            try:
                await asyncio.wait_for(p.reconcile(live), RECONCILE_TIMEOUT_S)
            except Exception as exc:
                log.warning("provider could not reconcile", provider=p.name, error=repr(exc))

    def _restore_settings(self, sb: Sandbox) -> None:
        """Alerts, autoscaling and health checks carry on after a daemon restart."""
        for kind, name, value in self.store.settings(sb.id):
            try:
                if kind == "alerts":
                    self.set_alerts(
                        sb.id, [tuple(t) for t in value["thresholds"]], value["interval_s"]
                    )
                elif kind == "autoscale":
                    self.autoscaler.restore(
                        sb.id, ScalingPolicy(**value["policy"]), Resources(**value["base"])
                    )
                elif kind == "health":
                    self.health.register(sb.id, CustomCheck(name=name, **value))
            except (ComputeError, TypeError, KeyError) as exc:
                log.warning("could not restore a setting", kind=kind, name=name, error=str(exc))

    async def shutdown(self, destroy: bool) -> None:
        self.accepting = False
        await self.pools.shutdown()
        await self.networks.shutdown()
        await self.messaging.shutdown()
        if self._sweeper:
            self._sweeper.cancel()
        for t in list(self._tasks):
            t.cancel()
        for sandbox_id in list(self._sandboxes):  # alerts, autoscalers, health checks
            self._forget_watchers(sandbox_id)
        if destroy:
            # Bounded: a vendor that does not answer must not hold the daemon's exit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            self.destroy(
                                i, graceful=True, graceful_timeout_ms=5000, reason="shutdown"
                            )
                            for i in list(self._sandboxes)
                        ),
                        return_exceptions=True,
                    ),
                    SHUTDOWN_DESTROY_TIMEOUT_S,
                )
        if self._destroying:  # destroys in flight finish, as the callers were told
            await asyncio.wait(list(self._destroying.values()), timeout=SHUTDOWN_DESTROY_TIMEOUT_S)
        for p in self.providers.values():
            await p.close()

    def _circuit_changed(self, provider: str, state: Circuit, why: str) -> None:
        log.warning("provider circuit changed", provider=provider, state=state.name, why=why)
        self.bus.emit("", CIRCUIT, why, provider=provider, state=state.name.lower())

    async def guarded(self, provider: Provider, call: Awaitable[T]) -> T:
        """Runs a provider call under its circuit breaker."""
        breaker = self.breakers[provider.name]
        try:
            breaker.before_call()
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()
            raise
        try:
            result = await call
        except BaseException as exc:
            breaker.record(exc)
            raise
        breaker.record(None)
        return result

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ lifecycle

    def _registered(self, name: str) -> Provider:
        p = self.providers.get(name)
        if p is None:
            raise NotFound(
                f"provider {name!r} is not registered (known: {', '.join(sorted(self.providers))})",
                reason="PROVIDER_NOT_FOUND",
                provider=name,
            )
        return p

    def _validate(self, spec: SandboxSpec) -> SandboxSpec:
        if (
            len(spec.metadata) > MAX_METADATA
            or sum(len(k) + len(v) for k, v in spec.metadata.items()) > MAX_METADATA_BYTES
        ):
            raise InvalidArgument(
                f"metadata is limited to {MAX_METADATA} pairs and {MAX_METADATA_BYTES} bytes",
                reason="METADATA_TOO_LARGE",
            )
        if spec.timeout_ms > MAX_TIMEOUT_MS:
            raise InvalidArgument(
                f"timeout_ms is at most {MAX_TIMEOUT_MS}", reason="INVALID_TIMEOUT"
            )
        for k in spec.env:
            if not k or "=" in k or "\x00" in k:
                raise InvalidArgument(f"bad environment variable name {k!r}", reason="INVALID_ENV")
        return replace(
            spec,
            provider=spec.provider or self.default_provider,
            template=spec.template or "base",
            timeout_ms=spec.timeout_ms or DEFAULT_TIMEOUT_MS,
        )

    async def create(self, spec: SandboxSpec) -> Sandbox:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down", reason="DAEMON_SHUTTING_DOWN")
        spec = self._validate(spec)
        if spec.request_id:
            return await self._create_once(spec)
        return await self._create_with_fallback(spec)

    async def _create_with_fallback(self, spec: SandboxSpec) -> Sandbox:
        """Takes a warm pooled sandbox when allowed and one matches; else tries
        spec.provider, then each fallback in order, while the failure is the
        provider's (down, circuit open); a bad request fails at once."""
        if spec.restore_from:
            spec, snapshot = self.snapshots.spec_from_state(spec)
            return await self._create(spec, self._registered(spec.provider), snapshot)
        pool_ok = spec.pool_policy == POOL_ALLOW or (
            spec.pool_policy != POOL_NEVER and self.pool_create
        )
        if pool_ok and not spec.volumes:
            pooled = await self.pools.draw(spec)
            if pooled is not None:
                return pooled
        names = [spec.provider, *(p for p in spec.fallback_providers if p != spec.provider)]
        for i, name in enumerate(names):
            last = i == len(names) - 1
            try:
                provider = self._registered(name)
                return await self._create(replace(spec, provider=name), provider)
            except ComputeError as exc:
                if last or not (is_provider_fault(exc) or exc.reason == "CIRCUIT_OPEN"):
                    raise
                log.warning("create falls back", failed=name, to=names[i + 1], why=exc.message)
        raise AssertionError("unreachable")

    async def _create_once(self, spec: SandboxSpec) -> Sandbox:
        existing = self.store.sandbox_by_request_id(spec.request_id)
        if existing is None and spec.request_id in self._creating:
            existing = await asyncio.shield(self._creating[spec.request_id])
        if existing is not None:
            if replace(existing.spec, provider=spec.provider) != spec:
                raise AlreadyExists(
                    "request_id was already used for a different sandbox",
                    reason="REQUEST_ID_CONFLICT",
                    sandbox_id=existing.id,
                )
            return self._sandboxes.get(existing.id, existing)
        fut: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
        self._creating[spec.request_id] = fut
        try:
            sb = await self._create_with_fallback(spec)
            fut.set_result(sb)
            return sb
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._creating[spec.request_id]

    async def _create(
        self, spec: SandboxSpec, provider: Provider, from_snapshot: str = "", import_layer: str = ""
    ) -> Sandbox:
        now = time.time()
        sb = Sandbox(
            id="sbx-" + secrets.token_hex(8),
            spec=spec,
            state=State.CREATING,
            created_at=now,
            expires_at=now + spec.timeout_ms / 1000,
            provider_data={
                k: v
                for k, v in (("from_snapshot", from_snapshot), ("import_layer", import_layer))
                if v
            },
        )
        with bound_contextvars(sandbox_id=sb.id):
            self._sandboxes[sb.id] = sb
            self.store.put_sandbox(sb)
            self.bus.emit(sb.id, CREATED, provider=spec.provider, template=spec.template)
            try:
                if spec.volumes:
                    sb.provider_data["volumes"] = await self.volumes.prepare(spec, sb.id)
                # The provider says itself when it cannot run (and may recover).
                await self.guarded(provider, provider.create(sb))
                crash("create.provisioned")
            except BaseException as exc:
                self._sandboxes.pop(sb.id, None)
                self.store.delete_sandbox(sb.id)
                await self.volumes.sandbox_gone(sb)
                self.bus.emit(sb.id, ERROR, f"create failed: {exc}", kind="create")
                self.bus.emit(sb.id, DESTROYED, "create failed", reason="create-failed")
                raise
            sb.state = State.RUNNING
            sb.started_at = time.time()
            self.store.put_sandbox(sb)
            self._oom_seen[sb.id] = 0
            for m in spec.volumes:
                self.bus.emit(
                    sb.id,
                    VOLUME_MOUNTED,
                    volume=m.name,
                    path=m.mount_path,
                    read_only=str(m.read_only).lower(),
                )
            self.bus.emit(sb.id, READY, startup_ms=str(int((sb.started_at - now) * 1000)))
            log.info(
                "sandbox ready",
                template=spec.template,
                startup_ms=int((sb.started_at - now) * 1000),
            )
            return sb

    def get(self, sandbox_id: str) -> Sandbox:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            raise sandbox_not_found(sandbox_id)
        return sb

    def running(self, sandbox_id: str) -> tuple[Sandbox, Provider]:
        """The sandbox and its provider; refuses one that is not running."""
        sb = self.get(sandbox_id)
        if sb.state != State.RUNNING:
            raise FailedPrecondition(
                f"sandbox {sandbox_id!r} is {sb.state.name.lower()}",
                reason="SANDBOX_NOT_RUNNING",
                sandbox_id=sandbox_id,
            )
        return sb, self.providers[sb.spec.provider]

    def list(
        self,
        page_size: int,
        page_token: str,
        metadata: dict[str, str],
        states: list[State],
        provider: str,
    ) -> tuple[list[Sandbox], str]:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", reason="INVALID_PAGE_SIZE")
        size = min(page_size or 100, 1000)
        after: tuple[float, str] | None = None
        if page_token:
            try:
                t = json.loads(base64.urlsafe_b64decode(page_token.encode()))
                after = (float(t[0]), str(t[1]))
            except (ValueError, TypeError, IndexError) as exc:
                raise InvalidArgument(
                    "page_token is not valid", reason="INVALID_PAGE_TOKEN"
                ) from exc
        items = sorted(self._sandboxes.values(), key=lambda s: (s.created_at, s.id))
        out: list[Sandbox] = []
        for sb in items:
            if after is not None and (sb.created_at, sb.id) <= after:
                continue
            if states and sb.state not in states:
                continue
            if provider and sb.spec.provider != provider:
                continue
            if any(sb.spec.metadata.get(k) != v for k, v in metadata.items()):
                continue
            if self.pools.is_idle(sb.id):
                continue
            if len(out) == size:
                last = out[-1]
                token = base64.urlsafe_b64encode(
                    json.dumps([last.created_at, last.id]).encode()
                ).decode()
                return out, token
            out.append(sb)
        return out, ""

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
            self.get(sandbox_id)  # NOT_FOUND from the call itself
            task = asyncio.create_task(
                self._destroy(sandbox_id, graceful, graceful_timeout_ms, reason),
                name=f"destroy {sandbox_id}",
            )
            self._destroying[sandbox_id] = task
            task.add_done_callback(functools.partial(self._destroy_done, sandbox_id))
        await asyncio.shield(task)

    def _destroy_done(self, sandbox_id: str, task: asyncio.Task[None]) -> None:
        if self._destroying.get(sandbox_id) is task:
            del self._destroying[sandbox_id]
        if not task.cancelled():
            task.exception()  # retrieved: every caller re-raises it itself

    async def _destroy(
        self, sandbox_id: str, graceful: bool, graceful_timeout_ms: int, reason: str
    ) -> None:
        lock = self._locks.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            sb = self.get(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                sb.state = State.STOPPING
                self.store.put_sandbox(sb)
                crash("destroy.stopping")
                grace = (graceful_timeout_ms or 10_000) / 1000 if graceful else 0.0
                provider = self.providers[sb.spec.provider]
                try:
                    await self.guarded(provider, provider.destroy(sb, grace))
                except Exception as exc:
                    # The record stays, in error and saying why, and the sweeper
                    # retries with backoff until everything is freed.
                    message = exc.message if isinstance(exc, ComputeError) else repr(exc)
                    sb.state = State.ERROR
                    sb.error_message = f"destroy failed: {message}"
                    self.store.put_sandbox(sb)
                    if sandbox_id not in self._reaps:
                        self._reaps[sandbox_id] = _Reap(
                            True, reason, time.monotonic() + REAP_FIRST_S
                        )
                        self.bus.emit(sb.id, ERROR, sb.error_message, kind="destroy")
                    else:
                        self._reaps[sandbox_id].destroy = True
                    log.warning("destroy failed; the sweeper retries it", error=message)
                    if isinstance(exc, ComputeError):
                        raise
                    raise Internal(sb.error_message) from exc
                self._reaps.pop(sandbox_id, None)
                self._released.pop(sandbox_id, None)
                await self.snapshots.drop_all(sb)
                self._sandboxes.pop(sandbox_id, None)
                self._oom_seen.pop(sandbox_id, None)
                self._last_probe.pop(sandbox_id, None)
                self._forget_watchers(sandbox_id)
                self.store.delete_sandbox(sandbox_id)
                await self.volumes.sandbox_gone(sb)
                self.bus.emit(sandbox_id, DESTROYED, reason=reason)
                log.info("sandbox destroyed", reason=reason)
        self._locks.pop(sandbox_id, None)
        self._notify_destroyed(sandbox_id)

    def _notify_destroyed(self, sandbox_id: str) -> None:
        for hook in self.on_destroyed:
            try:
                hook(sandbox_id)
            except Exception as exc:  # one listener's bug must not fail a destroy
                log.error("destroy hook failed", sandbox_id=sandbox_id, error=repr(exc))

    async def status(self, sandbox_id: str) -> Status:
        sb = self.get(sandbox_id)
        usage = None
        if sb.state == State.RUNNING:
            with contextlib.suppress(ComputeError):
                usage = await self.providers[sb.spec.provider].usage(sb)
        uptime = int((time.time() - sb.started_at) * 1000) if sb.started_at else 0
        return Status(sb.state, uptime, sb, usage)

    # ------------------------------------------------------------ usage and limits

    def _counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for sb in self._sandboxes.values():
            key = (sb.state.name.lower(), sb.spec.provider)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _sampler(self, sandbox_id: str) -> Callable[[], Awaitable[Usage]]:
        sb, provider = self.running(sandbox_id)

        async def sample() -> Usage:
            if sb.state != State.RUNNING:
                raise FailedPrecondition(
                    f"sandbox {sandbox_id!r} is {sb.state.name.lower()}",
                    reason="SANDBOX_NOT_RUNNING",
                    sandbox_id=sandbox_id,
                )
            return await provider.usage(sb)

        return sample

    async def usage(self, sandbox_id: str) -> Usage:
        return await self.monitor.sample_once(sandbox_id, self._sampler(sandbox_id))

    def monitor_usage(self, sandbox_id: str, interval_s: float) -> AsyncIterator[Usage]:
        return self.monitor.subscribe(sandbox_id, interval_s, self._sampler(sandbox_id))

    def set_alerts(
        self,
        sandbox_id: str,
        thresholds: builtins.list[tuple[str, float, float]],
        interval_s: float,
    ) -> None:
        sb, _ = self.running(sandbox_id)
        for kind, percent, clear in thresholds:
            if kind not in ("cpu", "memory", "disk") or percent <= 0 or clear >= percent:
                raise InvalidArgument(
                    f"bad alert threshold {kind}:{percent}/{clear}; types are "
                    "cpu, memory, disk, and clear_percent must be below percent",
                    reason="INVALID_THRESHOLD",
                )
        self.monitor.set_alerts(
            sandbox_id,
            thresholds,
            interval_s,
            sb.resources.cpu_cores or 1.0,
            self._sampler(sandbox_id),
        )
        if thresholds:
            self.store.put_setting(
                sandbox_id, "alerts", "", {"thresholds": thresholds, "interval_s": interval_s}
            )
        else:
            self.store.delete_setting(sandbox_id, "alerts")

    async def set_limits(
        self, sandbox_id: str, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        if cpu_cores < 0:
            raise InvalidArgument("cpu must not be negative", reason="INVALID_RESOURCES")
        sb, provider = self.running(sandbox_id)
        with bound_contextvars(sandbox_id=sandbox_id):
            before = sb.resources
            sb.resources = await provider.set_limits(
                sb, cpu_cores=cpu_cores, memory_mb=memory_mb, disk_mb=disk_mb
            )
            self.store.put_sandbox(sb)
            self.bus.emit(
                sb.id,
                RESOURCES_CHANGED,
                f"cpu {before.cpu_cores:g}->{sb.resources.cpu_cores:g} cores, memory "
                f"{before.memory_mb}->{sb.resources.memory_mb} MB, disk "
                f"{before.disk_mb}->{sb.resources.disk_mb} MB",
                cpu_cores=f"{sb.resources.cpu_cores:g}",
                memory_mb=str(sb.resources.memory_mb),
                disk_mb=str(sb.resources.disk_mb),
            )
            return sb.resources

    # ------------------------------------------------------------ autoscaling and health

    def configure_autoscaling(self, sandbox_id: str, enabled: bool, policy: ScalingPolicy) -> None:
        self.autoscaler.configure(sandbox_id, enabled, policy)

    async def check_health(self, sandbox_id: str) -> builtins.list[HealthResult]:
        return await self.health.check(sandbox_id)

    def register_health_check(self, sandbox_id: str, check: CustomCheck) -> None:
        self.health.register(sandbox_id, check)

    def unregister_health_check(self, sandbox_id: str, name: str) -> None:
        self.health.unregister(sandbox_id, name)

    # ------------------------------------------------------------ batch, reset, env, pools

    async def batch_create(
        self, specs: builtins.list[SandboxSpec]
    ) -> builtins.list[Sandbox | ComputeError]:
        """One result per spec, in order; a failed item does not fail the others."""
        if len(specs) > MAX_BATCH:
            raise InvalidArgument(
                f"a batch holds at most {MAX_BATCH} creates", reason="BATCH_TOO_LARGE"
            )
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(spec: SandboxSpec) -> Sandbox | ComputeError:
            async with gate:
                try:
                    return await self.create(spec)
                except ComputeError as exc:
                    return exc

        return list(await asyncio.gather(*(one(s) for s in specs)))

    async def reset(self, sandbox_id: str, hard: bool) -> Sandbox:
        """Soft: every process killed, files kept. Hard: files back to the template's."""
        lock = self._locks.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            sb, provider = self.running(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                self._forget_watchers(sandbox_id)
                await self.guarded(provider, provider.reset(sb, hard))
                self.store.forget_processes(sandbox_id)
                self.store.put_sandbox(sb)
                self.bus.emit(sandbox_id, RESET, hard=str(hard).lower())
                log.info("sandbox reset", hard=hard)
        return sb

    def set_env(
        self, sandbox_id: str, env: dict[str, str], unset: builtins.list[str]
    ) -> dict[str, str]:
        sb = self.get(sandbox_id)
        for k in env:
            if not k or "=" in k or "\x00" in k:
                raise InvalidArgument(f"bad environment variable name {k!r}", reason="INVALID_ENV")
        merged = {k: v for k, v in {**sb.spec.env, **env}.items() if k not in set(unset)}
        sb.spec = replace(sb.spec, env=merged)
        self.store.put_sandbox(sb)
        self.bus.emit(
            sandbox_id, ENV_CHANGED, set=",".join(sorted(env)), unset=",".join(sorted(unset))
        )
        return merged

    async def create_imported(self, spec: SandboxSpec, layer: Path) -> Sandbox:
        """A new sandbox whose files come from an imported layer."""
        if not self.accepting:
            raise Unavailable("the daemon is shutting down", reason="DAEMON_SHUTTING_DOWN")
        spec = self._validate(spec)
        return await self._create(spec, self._registered(spec.provider), import_layer=str(layer))

    def scratch_dir(self) -> Path:
        """Where archives in transit are kept (removed when done)."""
        path = self._state_dir / "tmp"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def sandbox_lock(self, sandbox_id: str) -> asyncio.Lock:
        """Serialises the calls that change a sandbox's whole state."""
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def forget_processes(self, sandbox_id: str) -> None:
        """Its processes are gone (reset, restore, restart): stop following them."""
        self._forget_watchers(sandbox_id)
        self.store.forget_processes(sandbox_id)

    async def restart(
        self,
        sandbox_id: str,
        template: str,
        env: dict[str, str] | None,
        resources: Resources | None,
    ) -> Sandbox:
        async with self.sandbox_lock(sandbox_id):
            sb, provider = self.running(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                new_template = bool(template) and template != sb.spec.template
                before = sb.spec
                sb.spec = replace(
                    sb.spec,
                    template=template or sb.spec.template,
                    env=sb.spec.env if env is None else env,
                    resources=sb.spec.resources if resources is None else resources,
                )
                self.forget_processes(sandbox_id)
                try:
                    await self.guarded(provider, provider.restart(sb, wipe=new_template))
                except ComputeError:
                    sb.spec = before
                    raise
                self.store.put_sandbox(sb)
                self.bus.emit(
                    sandbox_id,
                    RESTARTED,
                    template=sb.spec.template,
                    new_template=str(new_template).lower(),
                )
                log.info("sandbox restarted", template=sb.spec.template)
        return sb

    def sandboxes_by_id(self) -> dict[str, Sandbox]:
        return self._sandboxes

    def pool_defaults(self, provider: str, template: str) -> tuple[str, str]:
        """Checks a pool's provider and template up front; fills in the defaults."""
        name = provider or self.default_provider
        p = self._registered(name)
        template = template or "base"
        known = p.templates()
        if known and template not in known:
            raise NotFound(
                f"template {template!r} is not known to provider {name!r}",
                reason="TEMPLATE_NOT_FOUND",
                template=template,
                provider=name,
            )
        return name, template

    async def create_pooled(self, spec: SandboxSpec) -> Sandbox:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down", reason="DAEMON_SHUTTING_DOWN")
        spec = self._validate(spec)
        return await self._create(spec, self._registered(spec.provider))

    async def sandbox_healthy(self, sandbox_id: str) -> bool:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None or sb.state != State.RUNNING:
            return False
        try:
            return await self.providers[sb.spec.provider].healthy(sb)
        except ComputeError:
            return False

    def lease_pooled(
        self,
        sandbox_id: str,
        metadata: dict[str, str],
        spec: SandboxSpec | None,
        event: str,
        idle: bool = False,
    ) -> Sandbox:
        """Relabels a pooled sandbox for its next holder (or for the pool, when idle)."""
        sb = self.get(sandbox_id)
        now = time.time()
        if spec is not None:  # drawn by create: it takes the caller's lifetime and labels
            sb.spec = replace(
                sb.spec,
                metadata=metadata,
                timeout_ms=spec.timeout_ms,
                keep_alive=spec.keep_alive,
                request_id=spec.request_id,
            )
        else:
            sb.spec = replace(sb.spec, metadata=metadata, keep_alive=idle or sb.spec.keep_alive)
        sb.expires_at = now + sb.spec.timeout_ms / 1000
        self.store.put_sandbox(sb)
        self.bus.emit(sandbox_id, event, pool=metadata.get(POOL_LABEL, ""))
        return sb

    def _forget_watchers(self, sandbox_id: str) -> None:
        self.monitor.forget(sandbox_id)
        self.autoscaler.forget(sandbox_id)
        self.health.forget(sandbox_id)

    # ------------------------------------------------------------ clone and migrate

    async def clone(
        self,
        sandbox_id: str,
        *,
        provider: str = "",
        template: str = "",
        env: dict[str, str] | None = None,
        resources: Resources | None = None,
    ) -> Sandbox:
        src, _ = self.running(sandbox_id)
        target = provider or src.spec.provider
        if resources is None:  # another provider may not take this one's sizing
            resources = src.spec.resources if target == src.spec.provider else Resources()
        spec = replace(
            src.spec,
            provider=target,
            template=template or src.spec.template,
            env={**src.spec.env, **(env or {})},
            resources=resources,
            request_id="",
            fallback_providers=(),
        )
        src_provider = self.providers[src.spec.provider]
        if (
            target == src.spec.provider
            and spec.template == src.spec.template
            and SNAPSHOTS in src_provider.capabilities
        ):
            dst = await self._clone_by_snapshot(src, spec, src_provider)
        else:
            dst = await self._copy_into_new(src, spec, files=True)
        self.bus.emit(dst.id, CLONED, source=src.id, source_provider=src.spec.provider)
        return dst

    async def _clone_by_snapshot(
        self, src: Sandbox, spec: SandboxSpec, provider: Provider
    ) -> Sandbox:
        """Constant in the workspace's size: the new sandbox starts on a
        copy-on-write twin of the source's whole disk, not only /workspace."""
        snap = "clone-" + secrets.token_hex(8)
        async with self.sandbox_lock(src.id):
            await self.guarded(provider, provider.snapshot_create(src, snap))
        crash("clone.snapshot")
        try:
            return await self._create(self._validate(spec), provider, snap)
        finally:
            with contextlib.suppress(ComputeError):
                await provider.snapshot_delete(snap)

    async def migrate(
        self,
        sandbox_id: str,
        provider: str,
        *,
        template: str = "",
        preserve_files: bool = True,
        preserve_env: bool = True,
        template_mapping: dict[str, str] | None = None,
        env_mapping: dict[str, str] | None = None,
    ) -> Sandbox:
        src, _ = self.running(sandbox_id)
        tpl = template or (template_mapping or {}).get(src.spec.template, src.spec.template)
        mapping = env_mapping or {}
        env = {mapping.get(k, k): v for k, v in src.spec.env.items()} if preserve_env else {}
        spec = replace(
            src.spec,
            provider=provider,
            template=tpl,
            env=env,
            resources=Resources(),
            request_id="",
            fallback_providers=(),
        )
        dst = await self._copy_into_new(src, spec, files=preserve_files)
        # Only now that the target is complete does the source go.
        self.bus.emit(src.id, MIGRATED, target=dst.id, target_provider=provider)
        await self.destroy(src.id, reason="migrated")
        return dst

    async def _copy_into_new(self, src: Sandbox, spec: SandboxSpec, files: bool) -> Sandbox:
        dst = await self._create_with_fallback(self._validate(spec))
        if not files:
            return dst
        try:
            await self._copy_workspace(src, dst)
        except BaseException:
            with contextlib.suppress(ComputeError):
                await self.destroy(dst.id, reason="copy-failed")
            raise
        return dst

    async def _copy_workspace(self, src: Sandbox, dst: Sandbox) -> None:
        """Streams /workspace from one sandbox into another as a tar stream.

        It needs only exec with stdin on both sides, so it works between any
        two providers, whatever their file APIs."""
        reader = self.providers[src.spec.provider].run(
            src, Command(args=["tar", "-C", WORKDIR, "-cf", "-", "."], cwd="/")
        )
        writer = self.providers[dst.spec.provider].run(
            dst, Command(args=["tar", "-C", WORKDIR, "-xf", "-"], cwd="/", stdin=True)
        )
        errors = bytearray()

        async def writer_exit(events: AsyncIterator[ProcessEvent]) -> None:
            async for ev in events:
                if isinstance(ev, Output):
                    errors.extend(ev.data)
                elif isinstance(ev, ExitStatus) and ev.exit_code != 0:
                    raise Internal(
                        f"writing /workspace failed: {errors.decode(errors='replace')}",
                        reason="COPY_FAILED",
                    )

        try:
            out = aiter(writer.events())
            await anext(out)  # started
            async for ev in reader.events():
                if isinstance(ev, Output) and ev.stream == "stdout":
                    try:
                        for i in range(0, len(ev.data), COPY_CHUNK):
                            await writer.send_stdin(ev.data[i : i + COPY_CHUNK])
                    except ComputeError as send_error:
                        # tar -x stops at the end-of-archive blocks and may exit before
                        # the record padding arrives: a writer that already ended well
                        # is a finished copy; anything else is the failure it says.
                        try:
                            await asyncio.wait_for(writer_exit(out), COPY_EXIT_WAIT_S)
                        except TimeoutError:
                            raise send_error from None
                        return
                elif isinstance(ev, Output):
                    errors.extend(ev.data)
                elif isinstance(ev, ExitStatus) and ev.exit_code != 0:
                    raise Internal(
                        f"reading /workspace failed: {errors.decode(errors='replace')}",
                        reason="COPY_FAILED",
                    )
            with contextlib.suppress(ComputeError):
                # Fails when tar -x already ended; its exit status says how.
                await writer.close_stdin()
            await writer_exit(out)
        finally:
            await reader.aclose()
            await writer.aclose()

    # ------------------------------------------------------------ sweeping

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")

    async def sweep(self) -> None:
        """Enforces timeouts and notices sandboxes that died or hit OOM under us.

        Probes run side by side, each bounded and at its provider's own pace, so a
        slow or dead vendor cannot hold up the timeouts of any other sandbox."""
        now, mono = time.time(), time.monotonic()
        probes = []
        for sb in list(self._sandboxes.values()):
            if sb.state in (State.STOPPING, State.ERROR) and sb.id not in self._destroying:
                self._reap(sb, now, mono)
                continue
            if sb.state != State.RUNNING:
                continue
            if not sb.spec.keep_alive and now >= sb.expires_at:
                with bound_contextvars(sandbox_id=sb.id):
                    log.info("sandbox timed out")
                self.spawn(self._destroy_quietly(sb.id, "timeout"))
                continue
            provider = self.providers[sb.spec.provider]
            if mono - self._last_probe.get(sb.id, 0.0) < provider.probe_interval_s:
                continue
            self._last_probe[sb.id] = mono
            probes.append(self._probe(sb, provider))
        await asyncio.gather(*probes)

    async def _probe(self, sb: Sandbox, provider: Provider) -> None:
        with bound_contextvars(sandbox_id=sb.id), contextlib.suppress(ComputeError, TimeoutError):
            if sb.spec.keep_alive:
                await asyncio.wait_for(provider.refresh_lease(sb), PROBE_TIMEOUT_S)
            probe = await asyncio.wait_for(provider.probe(sb), PROBE_TIMEOUT_S)
            await self._check_oom(sb, probe.oom_kills)
            if not probe.alive and sb.state == State.RUNNING:
                # A restart, reset or restore replaces the container under this lock:
                # its old init is meant to be gone. Only a death seen again with no
                # such operation in flight is one. The sweep never waits for one
                # (it would hold up every other sandbox's timeout): the next looks.
                if self.sandbox_lock(sb.id).locked():
                    return
                async with self.sandbox_lock(sb.id):
                    if sb.state != State.RUNNING:
                        return
                    again = await asyncio.wait_for(provider.probe(sb), PROBE_TIMEOUT_S)
                    if again.alive:
                        return
                    # As dockerd lists a dead container until it is removed, the
                    # record stays, in error and saying why, until destroyed or its
                    # timeout (ERROR_RETENTION_S for keep_alive); but what it holds on
                    # the host (mounts, loop device, cgroups, container state, disk)
                    # is of no further use, since nothing can run in it again, and
                    # goes at once.
                    sb.state = State.ERROR
                    sb.error_message = "the sandbox stopped unexpectedly"
                    self.store.put_sandbox(sb)
                    self.bus.emit(sb.id, ERROR, sb.error_message, kind="lost")
                    log.warning("sandbox died; freeing what it holds")
                    self._forget_watchers(sb.id)
                    self._start_reap(sb.id, _Reap(False, "died", time.monotonic()))

    def _reap(self, sb: Sandbox, now: float, mono: float) -> None:
        """The sweeper's part for a sandbox in stopping or error with no destroy in
        flight: retries what failed, and ends a dead sandbox's record at its time."""
        job = self._reaps.get(sb.id)
        if job is None and sb.state == State.STOPPING:  # a destroy cut short
            job = self._reaps[sb.id] = _Reap(True, "retry", mono)
        if job is None and sb.id not in self._released:  # in error, still holding
            job = self._reaps[sb.id] = _Reap(False, "died", mono)
        if job is None:  # in error, already freed: the record goes at its time
            died = self._released.get(sb.id, now)
            if now < (died + ERROR_RETENTION_S if sb.spec.keep_alive else sb.expires_at):
                return
            job = self._reaps[sb.id] = _Reap(True, "timeout", mono)
        if not job.running and mono >= job.due:
            self._start_reap(sb.id, job)

    def _start_reap(self, sandbox_id: str, job: _Reap) -> None:
        self._reaps[sandbox_id] = job
        job.running = True
        job.due = time.monotonic() + job.delay
        job.delay = min(job.delay * 2, REAP_MAX_S)

        async def attempt() -> None:
            try:
                with bound_contextvars(sandbox_id=sandbox_id):
                    if job.destroy:
                        await self._destroy_quietly(sandbox_id, job.reason)
                    else:
                        await self._release(sandbox_id, job)
            finally:
                job.running = False

        self.spawn(attempt())

    async def _release(self, sandbox_id: str, job: _Reap) -> None:
        """Frees a dead sandbox's host resources; its record stays, in error."""
        async with self.sandbox_lock(sandbox_id):
            sb = self._sandboxes.get(sandbox_id)
            if sb is None or sb.state != State.ERROR or job.destroy:
                return
            provider = self.providers[sb.spec.provider]
            try:
                await asyncio.wait_for(provider.destroy(sb, 0.0), RELEASE_TIMEOUT_S)
            except Exception as exc:
                log.warning("could not free a dead sandbox; the sweeper retries", error=repr(exc))
                return
            if self._reaps.get(sandbox_id) is job:
                del self._reaps[sandbox_id]
            self._released[sandbox_id] = time.time()
            self.store.put_sandbox(sb)  # its provider_data changed
            log.info("freed what a dead sandbox held")

    async def _check_oom(self, sb: Sandbox, kills: int) -> bool:
        seen = self._oom_seen.get(sb.id, 0)
        if kills <= seen:
            return False
        self._oom_seen[sb.id] = kills
        self.bus.emit(
            sb.id,
            OOM,
            "a process was killed for exceeding the memory limit",
            oom_kills=str(kills),
            memory_mb=str(sb.resources.memory_mb),
        )
        return True

    async def _destroy_quietly(self, sandbox_id: str, reason: str) -> None:
        with contextlib.suppress(ComputeError):
            await self.destroy(sandbox_id, reason=reason)

    # ------------------------------------------------------------ processes

    async def exec(
        self, sandbox_id: str, command: Command
    ) -> tuple[ProcessRun, AsyncGenerator[ProcessEvent, None]]:
        sb, provider = self.running(sandbox_id)
        run = provider.run(sb, _prepared(sb, command))
        return run, self._track(sb, provider, run)

    async def _track(
        self, sb: Sandbox, provider: Provider, run: ProcessRun
    ) -> AsyncGenerator[ProcessEvent, None]:
        process_id = ""
        finished = False
        try:
            async for ev in run.events():
                if isinstance(ev, Started):
                    process_id = ev.process_id
                    self._started(sb, ev)
                elif isinstance(ev, ExitStatus):
                    ev = await self._exited(sb, provider, process_id, ev)
                    finished = True
                yield ev
        finally:
            await run.aclose()
            if process_id and not finished:  # the client left; learn the exit anyway
                self._watch(sb, process_id)

    async def run_command(self, sandbox_id: str, command: Command, limit: int) -> RunOutcome:
        """Runs a command without stdin and collects its output. Past limit bytes of a
        stream, answers at once and leaves the command running; the caller reads
        the rest with attach from the lengths it got. That needs a provider that
        can re-attach; the others say so, and clients fall back to exec."""
        if command.stdin:
            raise InvalidArgument("RunCommand takes no stdin; use Exec", reason="STDIN_NOT_ALLOWED")
        sb, provider = self.running(sandbox_id)
        if EXEC_RESUME not in provider.capabilities:
            raise Unsupported(provider.name, "run command (use Exec)")
        run = provider.run(sb, _prepared(sb, command), kill_on_close=False)
        out = RunOutcome()
        events = self._track(sb, provider, run)
        try:
            async for ev in events:
                if isinstance(ev, Started):
                    out.started = ev
                elif isinstance(ev, Output):
                    buf = out.stdout if ev.stream == "stdout" else out.stderr
                    room = limit - len(buf)
                    buf += ev.data[:room]
                    if len(ev.data) > room:
                        break  # the rest stays with the process, for attach
                elif isinstance(ev, ExitStatus):
                    out.exited = ev
        except asyncio.CancelledError:
            # The caller went away before the answer: as with Exec, the command goes.
            if out.started is not None and out.exited is None:
                with contextlib.suppress(ComputeError):
                    await provider.signal(sb, out.started.process_id, 9)
            raise
        finally:
            await events.aclose()
        return out

    def _started(self, sb: Sandbox, ev: Started) -> None:
        metrics.EXECS.labels(sb.spec.provider).inc()
        self.store.add_process(sb.id, ev.process_id)
        self.bus.emit(sb.id, PROCESS_STARTED, process_id=ev.process_id, pid=str(ev.pid))

    async def _exited(
        self, sb: Sandbox, provider: Provider, process_id: str, status: ExitStatus
    ) -> ExitStatus:
        if status.signal == 9 and sb.id in self._sandboxes:
            with contextlib.suppress(ComputeError):
                if await self._check_oom(sb, (await provider.probe(sb)).oom_kills):
                    status = replace(status, oom_killed=True)
        if self.store.set_process_exit(sb.id, process_id, status):
            self.bus.emit(
                sb.id,
                PROCESS_EXITED,
                process_id=process_id,
                exit_code=str(status.exit_code),
                signal=str(status.signal),
                oom_killed=str(status.oom_killed).lower(),
            )
        return status

    def _watch(self, sb: Sandbox, process_id: str) -> None:
        async def watch() -> None:
            provider = self.providers[sb.spec.provider]
            with contextlib.suppress(ComputeError):
                async for ev in provider.attach(sb, process_id, 0, 0, output=False):
                    if isinstance(ev, ExitStatus):
                        await self._exited(sb, provider, process_id, ev)

        self.spawn(watch())

    async def start_process(self, sandbox_id: str, command: Command, tag: str) -> ProcessInfo:
        sb, provider = self.running(sandbox_id)
        info = await provider.start_process(sb, _prepared(sb, command), tag)
        self._started(sb, Started(info.process_id, info.pid))
        self._watch(sb, info.process_id)
        return info

    def attach(
        self, sandbox_id: str, process_id: str, stdout_offset: int, stderr_offset: int
    ) -> AsyncIterator[ProcessEvent]:
        sb, provider = self.running(sandbox_id)
        return provider.attach(sb, process_id, stdout_offset, stderr_offset)

    async def write_stdin(self, sandbox_id: str, process_id: str, data: bytes, close: bool) -> None:
        sb, provider = self.running(sandbox_id)
        await provider.write_stdin(sb, process_id, data, close)

    async def signal(self, sandbox_id: str, process_id: str, signal: int) -> None:
        sb, provider = self.running(sandbox_id)
        await provider.signal(sb, process_id, signal)

    async def list_processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        sb, provider = self.running(sandbox_id)
        return await provider.list_processes(sb)

    # ------------------------------------------------------------ files

    def read_file(
        self, sandbox_id: str, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        sb, provider = self.running(sandbox_id)
        return provider.read_file(sb, normalize(path), offset, length)

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        sb, provider = self.running(sandbox_id)
        return await provider.write_file(
            sb, normalize(path), chunks, mode=mode, make_parents=make_parents, append=append
        )

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        sb, provider = self.running(sandbox_id)
        return await provider.list_dir(sb, normalize(path))

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        sb, provider = self.running(sandbox_id)
        return await provider.stat(sb, normalize(path))

    async def mkdir(self, sandbox_id: str, path: str, parents: bool) -> FileInfo:
        sb, provider = self.running(sandbox_id)
        return await provider.mkdir(sb, normalize(path), parents)

    async def remove(self, sandbox_id: str, path: str, recursive: bool) -> None:
        sb, provider = self.running(sandbox_id)
        await provider.remove(sb, normalize(path), recursive)

    async def move(self, sandbox_id: str, source: str, destination: str) -> FileInfo:
        sb, provider = self.running(sandbox_id)
        return await provider.move(sb, normalize(source), normalize(destination))
