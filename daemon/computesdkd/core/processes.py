"""Commands in sandboxes: foreground runs, background processes, and what the daemon
records about each (its start and exit, as rows and events), plus OOM kills."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers, Tasks
from computesdkd.core.registry import Registry
from computesdkd.domain import events
from computesdkd.domain.env import check_env_names
from computesdkd.domain.errors import ComputeError, InvalidArgument
from computesdkd.domain.model import (
    Command,
    ExitStatus,
    Output,
    ProcessEvent,
    ProcessInfo,
    Sandbox,
    Started,
)
from computesdkd.domain.paths import WORKDIR, normalize
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.capabilities import require
from computesdkd.store import Store
from computesdkd.support import metrics


@dataclass
class RunOutcome:
    """What RunCommand answers: the first bytes of each stream, and the end if it came."""

    started: Started | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exited: ExitStatus | None = None


def _prepared(sb: Sandbox, command: Command) -> Command:
    """Every provider gets an absolute, checked working directory, and the
    sandbox's env as it is now (SetSandboxEnv changes it after create). A name
    with "=" or NUL would silently become another variable inside: refused."""
    check_env_names(command.env)
    return replace(
        command, cwd=normalize(command.cwd or WORKDIR), env={**sb.spec.env, **command.env}
    )


class Processes:
    def __init__(
        self, registry: Registry, providers: Providers, store: Store, bus: EventBus, tasks: Tasks
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._store = store
        self._bus = bus
        self._tasks = tasks
        self._oom_seen: dict[str, int] = {}
        # Per (sandbox, process): the sandbox's OOM kill count known when it started.
        self._oom_at_start: dict[tuple[str, str], int] = {}

    async def exec(
        self, sandbox_id: str, command: Command
    ) -> tuple[ProcessRun, AsyncGenerator[ProcessEvent, None]]:
        sb, provider = self._registry.running(sandbox_id)
        run = provider.run(sb, _prepared(sb, command))
        return run, self._track(sb, provider, run)

    async def run_command(self, sandbox_id: str, command: Command, limit: int) -> RunOutcome:
        """Runs a command without stdin and collects its output. Past limit bytes of a
        stream, answers at once and leaves the command running; the caller reads
        the rest with attach from the lengths it got. That needs a provider that
        can re-attach; the others say so, and clients use exec for them."""
        if command.stdin:
            raise InvalidArgument("RunCommand takes no stdin; use Exec", reason="STDIN_NOT_ALLOWED")
        sb, provider = self._registry.running(sandbox_id)
        require(provider, caps.Reattach, "run command (use Exec)")
        run = provider.run(sb, _prepared(sb, command), kill_on_close=False)
        out = RunOutcome()
        tracked = self._track(sb, provider, run)
        try:
            async for ev in tracked:
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
                    await require(provider, caps.Background, "signals").signal(
                        sb, out.started.process_id, 9
                    )
            raise
        finally:
            await tracked.aclose()
        return out

    async def start(self, sandbox_id: str, command: Command, tag: str) -> ProcessInfo:
        sb, provider = self._registry.running(sandbox_id)
        info = await require(provider, caps.Background, "background processes").start_process(
            sb, _prepared(sb, command), tag
        )
        self._started(sb, Started(info.process_id, info.pid))
        self.watch(sb, info.process_id)
        return info

    def attach(
        self, sandbox_id: str, process_id: str, stdout_offset: int, stderr_offset: int
    ) -> AsyncIterator[ProcessEvent]:
        sb, provider = self._registry.running(sandbox_id)
        return require(provider, caps.Reattach, "process attach").attach(
            sb, process_id, stdout_offset, stderr_offset
        )

    async def write_stdin(self, sandbox_id: str, process_id: str, data: bytes, close: bool) -> None:
        sb, provider = self._registry.running(sandbox_id)
        await require(provider, caps.Background, "stdin").write_stdin(sb, process_id, data, close)

    async def signal(self, sandbox_id: str, process_id: str, signal: int) -> None:
        sb, provider = self._registry.running(sandbox_id)
        await require(provider, caps.Background, "signals").signal(sb, process_id, signal)

    async def list(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        sb, provider = self._registry.running(sandbox_id)
        return await require(provider, caps.ProcessListing, "process listing").list_processes(sb)

    def forget(self, sandbox_id: str) -> None:
        """Its processes are gone (reset, restore, restart): stop following them."""
        self._registry.forget_watchers(sandbox_id)
        self._store.processes.forget(sandbox_id)

    def watch_unfinished(self, sb: Sandbox) -> None:
        """After a daemon restart: learn the exits of what was still running."""
        for pid in self._store.processes.unfinished(sb.id):
            self.watch(sb, pid)

    def watch(self, sb: Sandbox, process_id: str) -> None:
        async def watch() -> None:
            provider = self._providers.of(sb)
            with contextlib.suppress(ComputeError):
                async for ev in require(provider, caps.Reattach, "process attach").attach(
                    sb, process_id, 0, 0, output=False
                ):
                    if isinstance(ev, ExitStatus):
                        await self._exited(sb, provider, process_id, ev)

        self._tasks.spawn(watch())

    # ------------------------------------------------------------ out of memory

    def oom_baseline(self, sandbox_id: str, kills: int) -> None:
        self._oom_seen[sandbox_id] = kills

    def forget_oom(self, sandbox_id: str) -> None:
        self._oom_seen.pop(sandbox_id, None)
        for key in [k for k in self._oom_at_start if k[0] == sandbox_id]:
            del self._oom_at_start[key]

    def check_oom(self, sb: Sandbox, kills: int) -> bool:
        """Emits out-of-memory when the kill count grew; True if it did."""
        if kills <= self._oom_seen.get(sb.id, 0):
            return False
        self._oom_seen[sb.id] = kills
        self._bus.emit(
            sb.id,
            events.OOM,
            "a process was killed for exceeding the memory limit",
            oom_kills=str(kills),
            memory_mb=str(sb.resources.memory_mb),
        )
        return True

    # ------------------------------------------------------------ bookkeeping

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
                self.watch(sb, process_id)

    def _started(self, sb: Sandbox, ev: Started) -> None:
        metrics.EXECS.labels(sb.spec.provider).inc()
        self._oom_at_start[(sb.id, ev.process_id)] = self._oom_seen.get(sb.id, 0)
        self._store.processes.add(sb.id, ev.process_id)
        self._bus.emit(sb.id, events.PROCESS_STARTED, process_id=ev.process_id, pid=str(ev.pid))

    async def _exited(
        self, sb: Sandbox, provider: Provider, process_id: str, status: ExitStatus
    ) -> ExitStatus:
        at_start = self._oom_at_start.pop((sb.id, process_id), self._oom_seen.get(sb.id, 0))
        if self._registry.find(sb.id) is None:
            return status  # the sandbox is gone, and its rows with it
        # The OOM killer counts kills per sandbox (its cgroup), not per process: a
        # process ended by SIGKILL, itself or (through `sh -c`) its child, so that
        # it exits 137, was OOM-killed when the sandbox's count grew while it ran.
        # With processes running side by side, one that another's OOM kill happened
        # under and that was SIGKILLed in that time is reported OOM-killed too.
        if status.signal == 9 or (status.signal == 0 and status.exit_code == 128 + 9):
            with contextlib.suppress(ComputeError):
                kills = (await provider.probe(sb)).oom_kills
                self.check_oom(sb, kills)  # the event, once per kill, whoever sees it first
                if kills > at_start:
                    status = replace(status, oom_killed=True)
        if self._store.processes.set_exit(sb.id, process_id, status):
            self._bus.emit(
                sb.id,
                events.PROCESS_EXITED,
                process_id=process_id,
                exit_code=str(status.exit_code),
                signal=str(status.signal),
                oom_killed=str(status.oom_killed).lower(),
            )
        return status
