"""Processes in sandboxes whose init is our agent (local, kubernetes), through it:
the provider says how each sandbox's agent is reached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from computesdkd.domain.errors import FailedPrecondition, Internal, InvalidArgument
from computesdkd.domain.model import Command, Output, ProcessEvent, ProcessInfo, Sandbox
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun
from computesdkd.providers.common.agent import CLOSE, STDIN, Agent, AgentConnection, AgentGone
from computesdkd.providers.common.agentpb import agent_pb2 as agentpb
from computesdkd.providers.common.env import process_env


class Processes:
    def __init__(
        self,
        agent: Callable[[Sandbox], Agent],
        template_env: Callable[[str], dict[str, str] | None],
    ):
        self._agent = agent
        # A built template's env (None for a predefined one), looked up on every start.
        self._template_env = template_env

    def _start_request(self, sandbox: Sandbox, command: Command, tag: str) -> agentpb.StartRequest:
        env = process_env(sandbox, command, self._template_env(sandbox.spec.template))
        return agentpb.StartRequest(
            args=command.args,
            env=[f"{k}={v}" for k, v in env.items()],
            cwd=command.cwd,
            timeout_ms=command.timeout_ms,
            stdin=command.stdin,
            tag=tag,
        )

    def run(self, sandbox: Sandbox, command: Command, tag: str, kill_on_close: bool) -> ProcessRun:
        req = self._start_request(sandbox, command, tag)
        req.attach, req.kill_on_close = True, kill_on_close
        return _AgentRun(self._agent(sandbox), agentpb.Request(start=req))

    async def start(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        return await self._agent(sandbox).start(self._start_request(sandbox, command, tag))

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool,
    ) -> AsyncIterator[ProcessEvent]:
        conn, started = await self._agent(sandbox).follow(
            agentpb.Request(
                attach=agentpb.AttachRequest(
                    id=process_id,
                    stdout_offset=stdout_offset,
                    stderr_offset=stderr_offset,
                    no_output=not output,
                )
            )
        )
        try:
            yield started
            async for ev in conn.events(stdout_offset, stderr_offset):
                yield ev
        finally:
            await conn.close()

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        await self._agent(sandbox).write_stdin(process_id, data, close)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        if not 0 < signal < 65:
            raise InvalidArgument(
                f"signal {signal} is not a valid signal number", reason="INVALID_SIGNAL"
            )
        await self._agent(sandbox).signal(process_id, signal)

    async def processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        return await self._agent(sandbox).processes()

    async def kill_all(self, sandbox: Sandbox) -> None:
        """SIGKILL to every process; returns once none runs."""
        agent = self._agent(sandbox)
        await agent.killall(9)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if not any(p.running for p in await agent.processes()):
                return
            await asyncio.sleep(0.01)
        raise Internal("processes survived SIGKILL during reset")

    async def healthy(self, sandbox: Sandbox) -> bool:
        # A round trip to the agent: the container runs and can start processes.
        try:
            await asyncio.wait_for(self._agent(sandbox).ping(), 2.0)
        except Exception:
            return False
        return True


class _AgentRun(ProcessRun):
    def __init__(self, agent: Agent, req: agentpb.Request) -> None:
        self._agent = agent
        self._req = req
        self._conn: AgentConnection | None = None
        self._closed = False

    async def events(self) -> AsyncIterator[ProcessEvent]:
        self._conn, started = await self._agent.follow(self._req)
        yield started
        offsets = {"stdout": 0, "stderr": 0}
        try:
            async for ev in self._conn.events():
                if isinstance(ev, Output):
                    offsets[ev.stream] = ev.offset + len(ev.data)
                yield ev
            return
        except AgentGone:
            if self._closed:  # closed on purpose (a failed input): nothing to resume
                raise
            # Input racing the exit can reset this connection (asyncio then drops
            # what was still buffered, the exit status too). The agent keeps the
            # process, so re-attach where the output stopped; if the sandbox is
            # really gone, this fails in turn and says so.
            pass
        conn, _ = await self._agent.follow(
            agentpb.Request(
                attach=agentpb.AttachRequest(
                    id=started.process_id,
                    stdout_offset=offsets["stdout"],
                    stderr_offset=offsets["stderr"],
                )
            )
        )
        try:
            async for ev in conn.events(offsets["stdout"], offsets["stderr"]):
                yield ev
        finally:
            await conn.close()

    def _need(self) -> AgentConnection:
        if self._conn is None:
            raise FailedPrecondition("the process has not started yet", reason="NOT_STARTED")
        return self._conn

    async def send_stdin(self, data: bytes) -> None:
        await self._need().send(STDIN, data)

    async def close_stdin(self) -> None:
        await self._need().send(CLOSE, b"")

    async def send_signal(self, signal: int) -> None:
        await self._need().send_signal(signal)

    async def aclose(self) -> None:
        self._closed = True
        if self._conn is not None:
            await self._conn.close()


class AgentProcesses(caps.Background, caps.ProcessListing, caps.Reattach):
    def __init__(self, processes: Processes) -> None:
        self._processes = processes

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        return await self._processes.start(sandbox, command, tag)

    def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        return self._processes.attach(sandbox, process_id, stdout_offset, stderr_offset, output)

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        await self._processes.write_stdin(sandbox, process_id, data, close)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        await self._processes.signal(sandbox, process_id, signal)

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        return await self._processes.processes(sandbox)
