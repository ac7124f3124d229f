"""A foreground command on Vercel: POST .../cmd with wait and logs streams NDJSON,
a `command` line, `{stream, data}` log lines, and a final `command` line with
the exit code."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from computesdkd.domain.errors import FailedPrecondition
from computesdkd.domain.model import Command, ProcessEvent, Sandbox
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.run import STREAMS, StreamedRun
from computesdkd.providers.vercel.api import NAME, VercelAPI, session

NO_STDIN = "Vercel's command API takes no input"


class VercelRun(StreamedRun):
    no_stdin = NO_STDIN

    def __init__(
        self, api: VercelAPI, sandbox: Sandbox, command: Command, kill_on_close: bool
    ) -> None:
        super().__init__(NAME, command, kill_on_close)
        self._api = api
        self._sandbox = sandbox
        self._cmd_id = ""

    async def _stream(self) -> AsyncIterator[ProcessEvent]:
        cmd = self.command
        body = {
            "command": cmd.args[0],
            "args": cmd.args[1:],
            "cwd": cmd.cwd,
            "env": process_env(self._sandbox, cmd),
            "sudo": True,
            "wait": True,
            "logs": True,
        }
        async with self._api.stream(
            "POST",
            f"{session(self._sandbox)}/cmd",
            "run command",
            json=body,
            timeout=httpx.Timeout(None, connect=10.0),
        ) as resp:
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "command" in msg:
                    c = msg["command"]
                    if not self._cmd_id:
                        self._cmd_id = c["id"]
                        # Vercel has no exec timeout: StreamedRun kills at the deadline
                        yield self.started_event(c["id"])
                    if c.get("exitCode") is not None:
                        code = int(c["exitCode"])
                        # Vercel reports a signalled command as the shell does, 128 + n.
                        yield (
                            self.exited(-1, code - 128) if code in (137, 143) else self.exited(code)
                        )
                        return
                elif (name := msg.get("stream")) in STREAMS:
                    yield self.output(name, str(msg.get("data", "")).encode())

    async def _kill(self) -> None:
        await self.send_signal(9)

    async def send_signal(self, signal: int) -> None:
        if not self._cmd_id:
            raise FailedPrecondition("the command has not started yet", reason="NOT_STARTED")
        await self._api.call(
            "POST",
            f"{session(self._sandbox)}/cmd/{self._cmd_id}/kill",
            "kill command",
            json={"signal": signal},
        )
