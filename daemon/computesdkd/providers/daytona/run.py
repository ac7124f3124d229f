"""A foreground command on Daytona: a toolbox session no other command is using
(an idle one or a new one, api.py), `/process/session/{id}/exec` with runAsync,
its output followed over the logs WebSocket, where the markers \\x01\\x01\\x01 and
\\x02\\x02\\x02 switch between stdout and stderr (the toolbox keeps them because
we ask it to: X-Daytona-Split-Output)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
from collections.abc import AsyncIterator

import websockets

from computesdkd.domain.errors import Unavailable, Unsupported
from computesdkd.domain.model import Command, ProcessEvent, Sandbox
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.run import Stream, StreamedRun
from computesdkd.providers.daytona.api import MAX_FRAME, NAME, DaytonaAPI, ident, integer, obj

NO_STDIN = "the toolbox cannot close a command's input"
MARKS: dict[bytes, Stream] = {b"\x01\x01\x01": "stdout", b"\x02\x02\x02": "stderr"}


def demux(
    buf: bytearray, current: Stream | None
) -> tuple[list[tuple[Stream, bytes]], Stream | None]:
    """Splits what arrived so far at the stream markers. Keeps a possible partial
    marker at the end of buf for the next frame. Returns (chunks, current stream)."""
    out: list[tuple[Stream, bytes]] = []
    while True:
        marks = [(i, kind) for m, kind in MARKS.items() if (i := buf.find(m)) != -1]
        if not marks:
            keep = 0
            for k in (2, 1):  # a marker may be split across frames
                if len(buf) >= k and all(b in (1, 2) for b in buf[-k:]):
                    keep = k
                    break
            if len(buf) > keep:
                # Output before any marker (a toolbox that merged the streams) is
                # kept as stdout rather than dropped.
                out.append((current or "stdout", bytes(buf[: len(buf) - keep])))
                del buf[: len(buf) - keep]
            return out, current
        idx, kind = min(marks)
        if idx > 0:
            out.append((current or "stdout", bytes(buf[:idx])))
        del buf[: idx + 3]
        current = kind


class DaytonaRun(StreamedRun):
    no_stdin = NO_STDIN

    def __init__(self, api: DaytonaAPI, sandbox: Sandbox, command: Command) -> None:
        super().__init__(NAME, command)
        self._api = api
        self._sandbox = sandbox
        self._session = ""
        self._reusable = False  # the session's command ended: it can take the next

    def _line(self) -> str:
        cmd = self.command
        env = process_env(self._sandbox, cmd)
        return (
            f"cd {shlex.quote(cmd.cwd)} && env "
            + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
            + " "
            + shlex.join(cmd.args)
        )

    async def _stream(self) -> AsyncIterator[ProcessEvent]:
        api, sb = self._api, self._sandbox
        line = self._line()
        self._session = await api.session(sb, "computesdk-" + secrets.token_hex(8))
        out = obj(
            await api.tb(
                sb,
                "POST",
                f"/process/session/{self._session}/exec",
                "exec",
                idempotent=False,  # a retry could run the command twice
                json={"command": f"( {line} )", "runAsync": True},
            ),
            "exec",
        )
        cmd_id = ident(out.get("cmdId"), "exec")
        # the toolbox has no exec timeout: StreamedRun kills at the deadline
        yield self.started_event(cmd_id)
        url = (
            api.toolbox(sb).replace("http", "ws", 1)
            + f"/process/session/{self._session}/command/{cmd_id}/logs?follow=true"
        )
        buf, current = bytearray(), None
        try:
            async with websockets.connect(
                url, additional_headers=api.auth, max_size=MAX_FRAME
            ) as ws:
                async for frame in ws:
                    buf.extend(frame if isinstance(frame, bytes) else frame.encode())
                    chunks, current = demux(buf, current)
                    for name, data in chunks:
                        yield self.output(name, data)
        except (OSError, websockets.WebSocketException) as exc:
            if not self.timed_out:  # ending the session at the deadline breaks the stream
                raise Unavailable(
                    f"daytona: log stream broke ({type(exc).__name__})",
                    reason="PROVIDER_UNAVAILABLE",
                    provider=NAME,
                ) from exc
        if buf:
            yield self.output(current or "stdout", bytes(buf))
        if self.timed_out:  # the session is gone, and with it the exit code
            yield self.exited(-1, 9)
            return
        code = await self._exit_code(cmd_id)
        self._reusable = True
        yield self.exited(code)

    async def _exit_code(self, cmd_id: str) -> int:
        for _ in range(50):  # the log stream can close a moment before the code is set
            c = obj(
                await self._api.tb(
                    self._sandbox,
                    "GET",
                    f"/process/session/{self._session}/command/{cmd_id}",
                    "command",
                ),
                "command",
            )
            if c.get("exitCode") is not None:
                return integer(c["exitCode"], "command")
            await asyncio.sleep(0.05)
        raise Unavailable(
            "daytona: the command ended without an exit code",
            reason="PROVIDER_ERROR",
            provider=NAME,
        )

    async def _kill(self) -> None:
        self._reusable = False
        if self._session:
            with contextlib.suppress(Exception):
                await self._api.end_session(self._sandbox, self._session)

    async def send_signal(self, signal: int) -> None:
        if signal != 9:
            raise Unsupported(NAME, f"signal {signal}", "the toolbox can only end a session")
        await self._kill()

    async def aclose(self) -> None:
        # A session whose command ended takes the next one; any other is ended, so
        # nothing of this command outlives it.
        session, self._session = self._session, ""
        if not session:
            return
        if self._reusable:
            with contextlib.suppress(Exception):
                await self._api.release(self._sandbox, session)
            return
        with contextlib.suppress(Exception):
            await self._api.end_session(self._sandbox, session)
