"""Where a new sandbox comes from: a warm pool, a saved state, an imported layer, or
a fresh create on its provider or, when that provider is at fault, a fallback.

Features plug in as sources (pools) and preparers (volumes); the core knows only
the hooks."""

from __future__ import annotations

import asyncio
import builtins
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path

from structlog.contextvars import bound_contextvars

from computesdkd.core.breaker import is_provider_fault
from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers
from computesdkd.core.owners import SANDBOX, Owners
from computesdkd.core.processes import Processes
from computesdkd.core.registry import Registry
from computesdkd.domain import events
from computesdkd.domain.env import check_env_names
from computesdkd.domain.errors import (
    AlreadyExists,
    ComputeError,
    InvalidArgument,
    Unavailable,
    Unsupported,
)
from computesdkd.domain.model import Sandbox, SandboxSpec, State
from computesdkd.providers.base import Provider
from computesdkd.providers.common.lifecycle import cannot_run
from computesdkd.store import Store
from computesdkd.support import logs
from computesdkd.support.testhooks import crash

log = logs.get(__name__)

DEFAULT_TIMEOUT_MS = 300_000
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_METADATA = 64
MAX_METADATA_BYTES = 4096
MAX_PORTS = 16  # a bound on the request; vendors check their own (Vercel: 15)
POOL_ALLOW, POOL_NEVER = 1, 2
# Creates of one batch run at once; more only queue behind runc on a small host.
BATCH_CONCURRENCY = 8
MAX_BATCH = 1000

# A source may hand out an existing sandbox for a spec (a warm pool member).
Source = Callable[[SandboxSpec], Awaitable[Sandbox | None]]
# Turns a restore_from spec into the spec to create and the snapshot to start from.
Restorer = Callable[[SandboxSpec], tuple[SandboxSpec, str]]
# Runs before the provider's create (volumes: checks and makes the mounts).
Preparer = Callable[[Sandbox], Awaitable[None]]
# Runs once a sandbox's record is gone (volumes: frees ephemeral ones).
Removed = Callable[[Sandbox], Awaitable[None]]
# Says whether a sandbox of this spec may be made (quotas), given the specs whose
# sandboxes are on their way but not in the registry yet, and whether one is made
# now (not drawn from a pool); raises when not.
Admission = Callable[[SandboxSpec, Iterable[SandboxSpec], bool], None]


class Placement:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        processes: Processes,
        store: Store,
        bus: EventBus,
        owners: Owners,
        pool_create: bool = True,
    ) -> None:
        self._registry = registry
        self._owners = owners
        self._providers = providers
        self._processes = processes
        self._store = store
        self._bus = bus
        # Whether create takes warm pooled sandboxes unless the request says otherwise.
        self.pool_create = pool_create
        self.accepting = True
        # (tenant, request id) -> the create in flight.
        self._creating: dict[tuple[str, str], asyncio.Future[Sandbox]] = {}
        self.sources: list[Source] = []
        self.restorer: Restorer | None = None
        self.preparers: list[Preparer] = []
        self.on_removed: list[Removed] = []
        self.admission: list[Admission] = []
        # Specs of draws from warm pools in flight: their sandboxes count already.
        self._drawing: list[SandboxSpec] = []

    def validate(self, spec: SandboxSpec) -> SandboxSpec:
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
        check_env_names(spec.env)
        if len(spec.ports) > MAX_PORTS or any(not 0 < p < 65536 for p in spec.ports):
            raise InvalidArgument(
                f"ports: at most {MAX_PORTS}, each 1-65535", reason="INVALID_PORT"
            )
        return replace(
            spec,
            ports=tuple(sorted(set(spec.ports))),
            provider=spec.provider or self._providers.default,
            template=spec.template or "base",
            timeout_ms=spec.timeout_ms or DEFAULT_TIMEOUT_MS,
        )

    def _admit(self, spec: SandboxSpec, making: bool = False) -> SandboxSpec:
        """Asks each admission (quotas) about spec as its provider will make it (its
        defaults filled in); returns that spec, for the draws in flight."""
        if not self.admission:
            return spec
        provider = self._providers.by_name.get(spec.provider)
        held = spec
        if provider is not None:
            held = replace(spec, resources=provider.expected_resources(spec.resources))
        for admit in self.admission:
            admit(held, self._drawing, making)
        return held

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down", reason="DAEMON_SHUTTING_DOWN")

    async def create(self, spec: SandboxSpec) -> Sandbox:
        self._check_accepting()
        spec = self.validate(spec)
        if spec.request_id:
            return await self._create_once(spec)
        return await self.create_with_fallback(spec)

    async def create_direct(self, spec: SandboxSpec, import_layer: str = "") -> Sandbox:
        """A fresh sandbox on spec.provider: no pool, no fallback (pools fill with it),
        its files from an imported layer when one is given."""
        self._check_accepting()
        spec = self.validate(spec)
        return await self.create_on(
            self._providers.get(spec.provider), spec, import_layer=import_layer
        )

    async def create_imported(self, spec: SandboxSpec, layer: Path) -> Sandbox:
        """A new sandbox whose files come from an imported layer."""
        return await self.create_direct(spec, import_layer=str(layer))

    async def batch(
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

    async def create_with_fallback(self, spec: SandboxSpec) -> Sandbox:
        """Takes a warm pooled sandbox when allowed and one matches; else tries
        spec.provider, then each fallback in order, while the failure is the
        provider's (down, circuit open); a bad request fails at once."""
        if spec.restore_from:
            if self.restorer is None:
                raise Unsupported(spec.provider, "restore from a saved state")
            spec, snapshot = self.restorer(spec)
            return await self.create_on(self._providers.get(spec.provider), spec, snapshot)
        pool_ok = spec.pool_policy == POOL_ALLOW or (
            spec.pool_policy != POOL_NEVER and self.pool_create
        )
        if pool_ok and not spec.volumes:
            for source in self.sources:
                held = self._admit(spec)
                self._drawing.append(held)
                try:
                    drawn = await source(spec)
                finally:
                    self._drawing.remove(held)
                if drawn is not None:
                    # No await since the draw: it is counted in the registry now.
                    self._owners.claim(SANDBOX, drawn.id, spec.tenant)
                    return drawn
        names = [spec.provider, *(p for p in spec.fallback_providers if p != spec.provider)]
        for i, name in enumerate(names):
            last = i == len(names) - 1
            try:
                provider = self._providers.get(name)
                # One create, however many providers it tries: one from the rate.
                return await self.create_on(provider, replace(spec, provider=name), charged=i > 0)
            except ComputeError as exc:
                if last or not (is_provider_fault(exc) or exc.reason == "CIRCUIT_OPEN"):
                    raise
                log.warning("create falls back", failed=name, to=names[i + 1], why=exc.message)
        raise AssertionError("unreachable")

    async def _create_once(self, spec: SandboxSpec) -> Sandbox:
        key = (spec.tenant, spec.request_id)
        existing = self._store.sandboxes.by_request_id(*key)
        if existing is None and key in self._creating:
            existing = await asyncio.shield(self._creating[key])
        if existing is not None:
            if replace(existing.spec, provider=spec.provider) != spec:
                raise AlreadyExists(
                    "request_id was already used for a different sandbox",
                    reason="REQUEST_ID_CONFLICT",
                    sandbox_id=existing.id,
                )
            return self._registry.find(existing.id) or existing
        fut: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
        self._creating[key] = fut
        try:
            sb = await self.create_with_fallback(spec)
            fut.set_result(sb)
            return sb
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._creating[key]

    async def create_on(
        self,
        provider: Provider,
        spec: SandboxSpec,
        from_snapshot: str = "",
        import_layer: str = "",
        charged: bool = False,
    ) -> Sandbox:
        """Makes the sandbox on this provider, recording every step."""
        why = provider.availability()
        if why:
            # Refused before an id exists, so no event names a sandbox that never was;
            # still through the breaker, which counts it like any failed create.
            await self._providers.guarded(provider, _refuse(provider.name, why))
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
            # No await between the admission and the registry: a burst cannot overshoot.
            self._admit(spec, making=not charged)
            self._owners.claim(SANDBOX, sb.id, spec.tenant)
            self._registry.add(sb)
            self._bus.emit(sb.id, events.CREATED, provider=spec.provider, template=spec.template)
            try:
                for prepare in self.preparers:
                    await prepare(sb)
                # The provider says itself when it cannot run (and may recover).
                await self._providers.guarded(provider, provider.create(sb))
                crash("create.provisioned")
            except BaseException as exc:
                self._registry.remove(sb.id)
                for hook in self.on_removed:
                    await hook(sb)
                self._bus.emit(sb.id, events.ERROR, f"create failed: {exc}", kind="create")
                self._bus.emit(sb.id, events.DESTROYED, "create failed", reason="create-failed")
                raise
            sb.state = State.RUNNING
            sb.started_at = time.time()
            self._registry.save(sb)
            self._processes.oom_baseline(sb.id, 0)
            for m in spec.volumes:
                self._bus.emit(
                    sb.id,
                    events.VOLUME_MOUNTED,
                    volume=m.name,
                    path=m.mount_path,
                    read_only=str(m.read_only).lower(),
                )
            startup_ms = int((sb.started_at - now) * 1000)
            self._bus.emit(sb.id, events.READY, startup_ms=str(startup_ms))
            log.info("sandbox ready", template=spec.template, startup_ms=startup_ms)
            return sb


async def _refuse(provider: str, why: str) -> None:
    raise cannot_run(provider, why)
