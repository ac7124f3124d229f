"""Background processes on Daytona's toolbox sessions.

A process is one runAsync command in a session of its own (`POST
/process/session`, then `/process/session/{s}/exec`); its id is SESSION:COMMAND
(run.py). Re-attaching follows the command's logs WebSocket from the first byte
and skips to the offsets asked for, counting stdout and stderr apart as the
markers split them: the offsets are exact, and nothing but the frame at hand is
held. The exit is the command's exitCode (`GET .../command/{c}`). A kill deletes
the session (the toolbox's only kill), so a process whose session is gone ended
by SIGKILL. The listing is `GET /process/session`, the daemon's sessions only.

What the toolbox does not carry is refused by name: stdin (a runAsync command's
input cannot be closed, so it reads /dev/null) and signals other than SIGKILL.
A background command's timeout is a kill the daemon schedules (the toolbox has
no timeout of its own), so it holds while this daemon runs. Tags and argv are
the daemon's own, kept in memory (the toolbox knows only the command line):
after a daemon restart a listed process shows its command line, and one whose
session went while the daemon was down reads as not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import websockets

from computesdkd.domain.errors import InvalidArgument, NotFound, Unsupported
from computesdkd.domain.model import (
    Command,
    ExitStatus,
    Output,
    ProcessEvent,
    ProcessInfo,
    Sandbox,
    Started,
)
from computesdkd.providers.capabilities import Background, ProcessListing, Reattach
from computesdkd.providers.daytona import run
from computesdkd.providers.daytona.api import NAME, DaytonaAPI, bad_answer, ident, integer
from computesdkd.providers.daytona.run import NO_STDIN

# What the daemon remembers of the processes it started (argv, tag, start time);
# the oldest go first past this many.
MAX_KNOWN = 4096
# The most listed processes taken from one answer; a longer list is an error.
MAX_LISTED = 4096
MAX_LINE = 4096
SESSION_PREFIX = "computesdk-"
_PROCESS_ID = re.compile(r"(computesdk-[0-9a-f]{16}):([A-Za-z0-9][A-Za-z0-9_.-]{0,127})")


def no_process(process_id: str) -> NotFound:
    return NotFound(f"no process {process_id[:80]!r}", reason="PROCESS_NOT_FOUND")


def split_id(process_id: str) -> tuple[str, str]:
    """SESSION:COMMAND, as run.py makes it; anything else names no process."""
    m = _PROCESS_ID.fullmatch(process_id)
    if m is None:
        raise no_process(process_id)
    return m.group(1), m.group(2)


def _info(process_id: str, command: Command, tag: str) -> ProcessInfo:
    return ProcessInfo(
        process_id=process_id,
        pid=0,
        args=list(command.args),
        tag=tag,
        running=True,
        exit=None,
        start_unix_ms=int(time.time() * 1000),
    )


class SessionProcesses(Background, Reattach, ProcessListing):
    def __init__(self, api: DaytonaAPI) -> None:
        self._api = api
        self._known: OrderedDict[str, ProcessInfo] = OrderedDict()
        # A background command's timeout is ours to keep (the toolbox has none).
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._timed_out: set[str] = set()
        self._kills: set[asyncio.Task[None]] = set()

    def forget(self, sandbox: Sandbox) -> None:
        prefix = sandbox.provider_sandbox_id + "/"
        for key in [k for k in self._known if k.startswith(prefix)]:
            del self._known[key]
            self._timed_out.discard(key)
            if (handle := self._deadlines.pop(key, None)) is not None:
                handle.cancel()

    def _at_deadline(self, sandbox: Sandbox, key: str, session: str) -> None:
        self._deadlines.pop(key, None)
        self._timed_out.add(key)
        task = asyncio.create_task(self._end_quietly(sandbox, session))
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def _end_quietly(self, sandbox: Sandbox, session: str) -> None:
        with contextlib.suppress(Exception):  # a failed kill: the command runs on
            await self._api.end_session(sandbox, session)

    def started(self, sandbox: Sandbox, command: Command) -> Callable[[str], None]:
        """For a foreground run: remembers its process id once it has one."""

        def remember(process_id: str) -> None:
            self._remember(sandbox, _info(process_id, command, ""))

        return remember

    def _remember(self, sandbox: Sandbox, info: ProcessInfo) -> None:
        self._known[f"{sandbox.provider_sandbox_id}/{info.process_id}"] = info
        while len(self._known) > MAX_KNOWN:
            gone, _ = self._known.popitem(last=False)
            self._timed_out.discard(gone)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        if command.stdin:
            raise Unsupported(NAME, "stdin", NO_STDIN)
        session = await self._api.new_session(sandbox, run.new_session_id())
        try:
            cmd_id = await run.exec_async(
                self._api, sandbox, session, run.command_line(sandbox, command)
            )
        except BaseException:
            await self._api.end_session(sandbox, session)
            raise
        info = _info(f"{session}:{cmd_id}", command, tag)
        self._remember(sandbox, info)
        if command.timeout_ms:
            key = f"{sandbox.provider_sandbox_id}/{info.process_id}"
            self._deadlines[key] = asyncio.get_running_loop().call_later(
                command.timeout_ms / 1000, self._at_deadline, sandbox, key, session
            )
        return info

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        raise Unsupported(NAME, "stdin", NO_STDIN)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        if not 0 < signal < 65:
            raise InvalidArgument(
                f"signal {signal} is not a valid signal number", reason="INVALID_SIGNAL"
            )
        if signal != 9:
            raise Unsupported(NAME, f"signal {signal}", "the toolbox can only end a session")
        session, _ = split_id(process_id)
        resp = await self._api.tb(
            sandbox, "DELETE", f"/process/session/{session}", "delete session", ok=(404,)
        )
        if resp.status_code == 404 and not self._knows(sandbox, process_id):
            raise no_process(process_id)

    def _knows(self, sandbox: Sandbox, process_id: str) -> bool:
        return f"{sandbox.provider_sandbox_id}/{process_id}" in self._known

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        session, cmd = split_id(process_id)
        first = await self._api.tb(
            sandbox,
            "GET",
            f"/process/session/{session}/command/{cmd}",
            "command",
            ok=(404,),
        )
        if first.status_code == 404 and not self._knows(sandbox, process_id):
            raise no_process(process_id)
        yield Started(process_id, 0)
        if first.status_code == 404:  # its session was deleted: killed
            yield self._killed(sandbox, process_id)
            return
        skip = {"stdout": stdout_offset, "stderr": stderr_offset}
        pos = {"stdout": 0, "stderr": 0}
        try:
            async for stream, data in run.follow(self._api, sandbox, session, cmd):
                at = pos[stream]
                pos[stream] += len(data)
                if not output or pos[stream] <= skip[stream]:
                    continue
                lo = max(skip[stream] - at, 0)
                yield Output(stream, data[lo:], at + lo)
        except (OSError, websockets.WebSocketException) as exc:
            # A kill (its session deleted) may cut or refuse the stream: that is an end.
            if not await run.session_gone(self._api, sandbox, session):
                raise run.broken(exc) from exc
        code = await run.exit_code(self._api, sandbox, session, cmd)
        if code is None:
            yield self._killed(sandbox, process_id)
            return
        if handle := self._deadlines.pop(f"{sandbox.provider_sandbox_id}/{process_id}", None):
            handle.cancel()
        yield ExitStatus(code)

    def _killed(self, sandbox: Sandbox, process_id: str) -> ExitStatus:
        late = f"{sandbox.provider_sandbox_id}/{process_id}" in self._timed_out
        return ExitStatus(-1, 9, timed_out=late)

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        resp = await self._api.tb(sandbox, "GET", "/process/session", "list sessions")
        try:
            sessions = resp.json()
        except ValueError:
            raise bad_answer("list sessions", "the answer is not JSON") from None
        if not isinstance(sessions, list):
            raise bad_answer("list sessions", "the answer is not a list")
        out: list[ProcessInfo] = []
        for s in sessions:
            if not isinstance(s, dict) or not isinstance(s.get("commands"), list):
                raise bad_answer("list sessions", "a session is not an object with commands")
            sid = s.get("sessionId")
            if not isinstance(sid, str) or not sid.startswith(SESSION_PREFIX):
                continue  # not the daemon's
            for c in s["commands"]:
                out.append(self._listed(sandbox, ident(sid, "list sessions"), c))
                if len(out) > MAX_LISTED:
                    raise bad_answer("list sessions", f"more than {MAX_LISTED} commands")
        return out

    def _listed(self, sandbox: Sandbox, session: str, c: Any) -> ProcessInfo:
        if not isinstance(c, dict):
            raise bad_answer("list sessions", "a command is not an object")
        cmd_id = ident(c.get("id"), "list sessions")
        pid = f"{session}:{cmd_id}"
        code = c.get("exitCode")
        done = None if code is None else ExitStatus(integer(code, "list sessions"))
        known = self._known.get(f"{sandbox.provider_sandbox_id}/{pid}")
        line = c.get("command")
        args = known.args if known else [str(line)[:MAX_LINE] if line else ""]
        return ProcessInfo(
            process_id=pid,
            pid=0,
            args=args,
            tag=known.tag if known else "",
            running=done is None,
            exit=done,
            start_unix_ms=known.start_unix_ms if known else 0,
        )
