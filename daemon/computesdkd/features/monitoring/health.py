"""Health checks: the built-in ones and the custom ones a client registers.

Built-in: the agent answers, `true` runs, free disk and memory headroom. Custom:
a command that must exit 0, run on demand or on an interval; every custom run
is a health event.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from computesdkd.core.bus import EventBus
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import ComputeError, InvalidArgument, NotFound
from computesdkd.domain.model import Command, ExitStatus, HealthResult, Output, Sandbox, State
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import Provider
from computesdkd.providers.capabilities import require
from computesdkd.store import Store

HEALTH = "health"
HEALTH_TIMEOUT_S = 15.0
MIN_FREE_PERCENT = 10.0


@dataclass
class CustomCheck:
    name: str
    command: str
    interval_s: float
    timeout_ms: int
    task: asyncio.Task[None] | None = None


class HealthChecks:
    def __init__(self, registry: Registry, store: Store, bus: EventBus) -> None:
        self._registry = registry
        self._store = store
        self._bus = bus
        self._checks: dict[str, dict[str, CustomCheck]] = {}

    async def _run_check(
        self, sb: Sandbox, provider: Provider, args: builtins.list[str], timeout_ms: int
    ) -> tuple[int, str]:
        run = provider.run(sb, Command(args=args, cwd=WORKDIR, timeout_ms=timeout_ms))
        out = bytearray()
        code = -1
        try:
            async for ev in run.events():
                if isinstance(ev, Output):
                    out.extend(ev.data[: 4096 - len(out)])
                elif isinstance(ev, ExitStatus):
                    code = ev.exit_code
        finally:
            await run.aclose()
        return code, out.decode(errors="replace").strip()

    async def check(self, sandbox_id: str) -> builtins.list[HealthResult]:
        sb, provider = self._registry.running(sandbox_id)

        async def timed(name: str, check: Coroutine[Any, Any, tuple[bool, str]]) -> HealthResult:
            started = time.monotonic()
            try:
                ok, message = await asyncio.wait_for(check, HEALTH_TIMEOUT_S)
            except (ComputeError, TimeoutError) as exc:
                ok, message = False, getattr(exc, "message", "timed out")
            return HealthResult(name, ok, message, int((time.monotonic() - started) * 1000))

        async def agent() -> tuple[bool, str]:
            probe = await provider.probe(sb)
            return probe.alive, "responding" if probe.alive else "not running"

        async def exec_() -> tuple[bool, str]:
            code, _ = await self._run_check(sb, provider, ["true"], 5000)
            return code == 0, "ran true" if code == 0 else f"true exited {code}"

        async def disk() -> tuple[bool, str]:
            u = await require(provider, caps.Metering, "resource usage").usage(sb)
            if not u.disk_limit_bytes:
                return True, "no disk limit to measure"
            free = 100 * (1 - u.disk_used_bytes / u.disk_limit_bytes)
            return free >= MIN_FREE_PERCENT, f"{free:.0f}% free"

        async def memory() -> tuple[bool, str]:
            u = await require(provider, caps.Metering, "resource usage").usage(sb)
            if not u.memory_limit_bytes:
                return True, "no memory limit to measure"
            free = 100 * (1 - u.memory_used_bytes / u.memory_limit_bytes)
            return free >= MIN_FREE_PERCENT, f"{free:.0f}% headroom"

        checks = [
            timed("agent", agent()),
            timed("exec", exec_()),
            timed("disk", disk()),
            timed("memory", memory()),
        ]
        checks += [
            self._custom_check(sb, provider, c) for c in self._checks.get(sandbox_id, {}).values()
        ]
        return builtins.list(await asyncio.gather(*checks))

    async def _custom_check(
        self, sb: Sandbox, provider: Provider, check: CustomCheck
    ) -> HealthResult:
        started = time.monotonic()
        try:
            code, out = await self._run_check(
                sb, provider, ["/bin/sh", "-c", check.command], check.timeout_ms
            )
            ok, message = code == 0, out or f"exit {code}"
        except ComputeError as exc:
            ok, message = False, exc.message
        result = HealthResult(
            check.name, ok, message[:500], int((time.monotonic() - started) * 1000)
        )
        self._bus.emit(
            sb.id,
            HEALTH,
            result.message,
            check=check.name,
            healthy=str(ok).lower(),
            duration_ms=str(result.duration_ms),
        )
        return result

    def register(self, sandbox_id: str, check: CustomCheck) -> None:
        sb, provider = self._registry.running(sandbox_id)
        if not check.name or not check.command.strip():
            raise InvalidArgument(
                "a health check needs a name and a command", reason="INVALID_HEALTH_CHECK"
            )
        self.unregister(sandbox_id, check.name, missing_ok=True)
        self._checks.setdefault(sandbox_id, {})[check.name] = check
        self._store.sandbox_records("health").put(
            sandbox_id,
            check.name,
            {
                "command": check.command,
                "interval_s": check.interval_s,
                "timeout_ms": check.timeout_ms,
            },
        )
        if check.interval_s:

            async def every() -> None:
                with contextlib.suppress(ComputeError):
                    while sb.state == State.RUNNING:
                        await self._custom_check(sb, provider, check)
                        await asyncio.sleep(check.interval_s)

            check.task = asyncio.create_task(every())

    def unregister(self, sandbox_id: str, name: str, missing_ok: bool = False) -> None:
        self._store.sandbox_records("health").delete(sandbox_id, name)
        check = self._checks.get(sandbox_id, {}).pop(name, None)
        if check is None and not missing_ok:
            raise NotFound(f"no health check {name!r}", reason="HEALTH_CHECK_NOT_FOUND")
        if check is not None and check.task is not None:
            check.task.cancel()

    def forget(self, sandbox_id: str) -> None:
        for check in self._checks.pop(sandbox_id, {}).values():
            if check.task is not None:
                check.task.cancel()
