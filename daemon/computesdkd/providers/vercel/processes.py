"""Background processes on Vercel: detached commands, as @vercel/sandbox runs them
(runCommand({detached: true}), command.logs(), command.wait(), command.kill()).

POST .../cmd without wait answers the command at once; GET .../cmd/{id}/logs
replays its output as NDJSON `{stream, data}` records from the first byte, then
follows it until it ends; GET .../cmd/{id}?wait=true answers once it exited;
.../kill sends a signal; .../stdin takes input by offset (run.py). Vercel keeps
the output, so a re-attach from byte offsets reads the replay and skips what
lies before them, holding one record at a time (MAX_LINE) and nothing more.

Vercel's log records carry text, so output that is not UTF-8 comes back with
replacement characters, and the offsets count the bytes as they come back.
Commands carry no tags: a tagged start is refused by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from computesdkd.domain.errors import InvalidArgument, NotFound, Unsupported
from computesdkd.domain.model import (
    Command,
    Output,
    ProcessEvent,
    ProcessInfo,
    Sandbox,
    Started,
)
from computesdkd.providers import capabilities as caps
from computesdkd.providers.common.run import STREAMS
from computesdkd.providers.vercel.api import (
    NAME,
    VercelAPI,
    bad_answer,
    field,
    ident,
    looks_like_id,
    session,
)
from computesdkd.providers.vercel.run import (
    STDIN_CHUNK,
    command_env,
    exit_status,
    ndjson,
    stdin_call,
    stream_error,
)

# How many commands a listing reads at most (Vercel answers them all at once).
MAX_LISTED = 1000
# How many stdin offsets are remembered; a forgotten one is asked of Vercel again.
MAX_STDIN_KEPT = 1024
_LONG = httpx.Timeout(None, connect=10.0)


def _checked_id(process_id: str) -> str:
    """The caller's process id goes into a URL path: it must look like Vercel's."""
    if not looks_like_id(process_id):
        # Never a Vercel command of ours: as any unknown process, not found.
        raise NotFound(f"no process {process_id[:80]!r}", reason="PROCESS_NOT_FOUND")
    return process_id


def _info(cmd: Any, what: str, tag: str = "") -> ProcessInfo:
    code = cmd.get("exitCode") if isinstance(cmd, dict) else None
    ended = None if code is None else exit_status(field(cmd, "exitCode", int, what), 0)
    args = cmd.get("args") if isinstance(cmd, dict) else None
    args = [a[:4096] for a in args[:256] if isinstance(a, str)] if isinstance(args, list) else []
    return ProcessInfo(
        process_id=ident(cmd, "id", what),
        pid=0,
        args=[field(cmd, "name", str, what)[:4096], *args],
        tag=tag,
        running=ended is None,
        exit=ended,
        start_unix_ms=field(cmd, "startedAt", int, what),
    )


class VercelProcesses(caps.Background, caps.Reattach, caps.ProcessListing):
    def __init__(self, api: VercelAPI) -> None:
        self._api = api
        # The stdin bytes Vercel confirmed, by (session, command); learnt on first use.
        self._stdin_at: dict[tuple[str, str], int] = {}

    def _cmd(self, sandbox: Sandbox, process_id: str) -> str:
        return f"{session(sandbox)}/cmd/{_checked_id(process_id)}"

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        if tag:
            raise Unsupported(NAME, "process tags", "Vercel commands carry no tags")
        what = "start command"
        body: dict[str, Any] = {
            "command": command.args[0],
            "args": command.args[1:],
            "env": command_env(sandbox, command),
            "sudo": True,
        }
        if command.cwd:
            body["cwd"] = command.cwd
        if command.stdin:
            body["attachStdin"] = True
        if command.timeout_ms:
            body["timeout"] = command.timeout_ms  # Vercel kills the command past it
        out = await self._api.json("POST", f"{session(sandbox)}/cmd", what, json=body)
        info = _info(out.get("command"), what)
        if command.stdin:
            self._keep((sandbox.provider_data["session"], info.process_id), 0)
        return info

    def _keep(self, key: tuple[str, str], at: int) -> None:
        self._stdin_at.pop(key, None)
        while len(self._stdin_at) >= MAX_STDIN_KEPT:
            self._stdin_at.pop(next(iter(self._stdin_at)))
        self._stdin_at[key] = at

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        path = self._cmd(sandbox, process_id)
        yield Started(process_id, 0)
        if output:
            async for ev in self._logs(path, stdout_offset, stderr_offset):
                yield ev
        what = "wait for command"
        out = await self._api.json(
            "GET",
            path,
            what,
            params={"wait": "true"},
            timeout=_LONG,
            not_found="PROCESS_NOT_FOUND",
        )
        cmd = out.get("command")
        if ident(cmd, "id", what) != process_id:
            raise bad_answer(what, "the answer is about another command")
        took = cmd.get("durationMs") if isinstance(cmd, dict) else None  # optional
        took = took if isinstance(took, int) and not isinstance(took, bool) and took >= 0 else 0
        yield exit_status(field(cmd, "exitCode", int, what), took)

    async def _logs(
        self, path: str, stdout_offset: int, stderr_offset: int
    ) -> AsyncIterator[Output]:
        """The replay from the start, each stream from its offset."""
        what = "read command logs"
        seen = {"stdout": 0, "stderr": 0}
        skip = {"stdout": max(stdout_offset, 0), "stderr": max(stderr_offset, 0)}
        async with self._api.stream(
            "GET",
            f"{path}/logs",
            what,
            timeout=_LONG,
            headers={"connection": "close"},
            not_found="PROCESS_NOT_FOUND",
        ) as resp:
            async for rec in ndjson(resp, what):
                name = rec.get("stream")
                if name == "error":
                    raise stream_error(rec, what)
                if name not in STREAMS:
                    raise bad_answer(what, "the stream has a record of no known kind")
                data = field(rec, "data", str, what).encode()
                at, seen[name] = seen[name], seen[name] + len(data)
                cut = max(skip[name] - at, 0)
                if cut < len(data):
                    yield Output(name, data[cut:], at + cut)

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        path, key = self._cmd(sandbox, process_id), (sandbox.provider_data["session"], process_id)
        at = self._stdin_at.get(key)
        if at is None:  # an empty call reports what Vercel took so far
            at = await stdin_call(self._api, path, "write stdin", None, b"", False)
        for i in range(0, max(len(data), 1), STDIN_CHUNK):
            last = i + STDIN_CHUNK >= len(data)
            chunk = data[i : i + STDIN_CHUNK]
            at = await stdin_call(self._api, path, "write stdin", at, chunk, close and last)
        if close:
            self._stdin_at.pop(key, None)
        else:
            self._keep(key, at)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        if not 0 < signal < 65:
            raise InvalidArgument(
                f"signal {signal} is not a valid signal number", reason="INVALID_SIGNAL"
            )
        await self._api.call(
            "POST",
            f"{self._cmd(sandbox, process_id)}/kill",
            "kill command",
            json={"signal": signal},
            not_found="PROCESS_NOT_FOUND",
        )

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        what = "list commands"
        out = await self._api.json("GET", f"{session(sandbox)}/cmd", what)
        cmds = out.get("commands")
        if not isinstance(cmds, list):
            raise bad_answer(what, "the answer lacks commands (list)")
        return [_info(c, what) for c in cmds[:MAX_LISTED]]
