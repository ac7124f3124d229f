"""A foreground command on Daytona: a toolbox session no other command is using
(an idle one or a new one, api.py), `/process/session/{id}/exec` with runAsync,
its output followed over the logs WebSocket, where the markers \\x01\\x01\\x01 and
\\x02\\x02\\x02 switch between stdout and stderr (the toolbox keeps them because
we ask it to: X-Daytona-Split-Output).

A command's process id is SESSION:COMMAND, so background.py can follow it again
(RunCommand leaves a command running for attach: its session, which no later
command takes, outlives the call). Its input is /dev/null: the toolbox keeps a runAsync
command's stdin open and cannot close it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import secrets
import shlex
from collections.abc import AsyncIterator, Callable

import websockets

from computesdkd.domain.errors import Unavailable, Unsupported
from computesdkd.domain.model import Command, ProcessEvent, Sandbox
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.run import Stream, StreamedRun
from computesdkd.providers.daytona.api import MAX_FRAME, NAME, DaytonaAPI, ident, integer, obj

NO_STDIN = "the toolbox cannot close a command's input"
OUT_MARK, ERR_MARK = b"\x01\x01\x01", b"\x02\x02\x02"
MARKS: dict[bytes, Stream] = {OUT_MARK: "stdout", ERR_MARK: "stderr"}


def demux(
    buf: bytearray, current: Stream | None
) -> tuple[list[tuple[Stream, bytes]], Stream | None]:
    """Splits what arrived so far at the stream markers. Keeps a possible partial
    marker at the end of buf for the next frame. Returns (chunks, current stream):
    a chunk per change of stream (what lies between two markers of one stream
    is one chunk), never an empty one.

    One pass over buf: each marker's next place is searched for from where the
    last one ended, never again from the start (the markers share no byte, so the
    other's next place stays valid), so a frame of markers only, or of no markers
    at all, costs its length, not its length squared."""
    pieces: list[tuple[Stream, int, int]] = []  # (stream, start, end) of each piece
    pos, end = 0, len(buf)
    kind: Stream
    at_out, at_err = buf.find(OUT_MARK), buf.find(ERR_MARK)
    while at_out != -1 or at_err != -1:
        if at_err == -1 or (at_out != -1 and at_out < at_err):
            idx, kind = at_out, "stdout"
            at_out = buf.find(OUT_MARK, idx + 3)
        else:
            idx, kind = at_err, "stderr"
            at_err = buf.find(ERR_MARK, idx + 3)
        if idx > pos:
            # Output before any marker (a toolbox that merged the streams) is kept
            # as stdout rather than dropped.
            pieces.append((current or "stdout", pos, idx))
        current, pos = kind, idx + 3
    keep = 0
    for k in (2, 1):  # a marker may be split across frames
        if end - pos >= k and all(b in (1, 2) for b in buf[end - k :]):
            keep = k
            break
    if end - keep > pos:
        pieces.append((current or "stdout", pos, end - keep))
    out = [
        (stream, b"".join(buf[lo:hi] for _, lo, hi in run))
        for stream, run in itertools.groupby(pieces, key=operator.itemgetter(0))
    ]
    del buf[: end - keep]
    return out, current


def command_line(sandbox: Sandbox, cmd: Command) -> str:
    env = process_env(sandbox, cmd)
    line = (
        f"cd {shlex.quote(cmd.cwd)} && env "
        + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        + " "
        + shlex.join(cmd.args)
    )
    return f"( {line} ) < /dev/null"


def new_session_id() -> str:
    return "computesdk-" + secrets.token_hex(8)


async def exec_async(api: DaytonaAPI, sandbox: Sandbox, session: str, line: str) -> str:
    """Runs line in the session without waiting; the command's id."""
    out = obj(
        await api.tb(
            sandbox,
            "POST",
            f"/process/session/{session}/exec",
            "exec",
            idempotent=False,  # a retry could run the command twice
            json={"command": line, "runAsync": True},
        ),
        "exec",
    )
    return ident(out.get("cmdId"), "exec")


async def follow(
    api: DaytonaAPI, sandbox: Sandbox, session: str, cmd_id: str
) -> AsyncIterator[tuple[Stream, bytes]]:
    """The command's output from its first byte to its end, frame by frame (a
    frame is at most MAX_FRAME; nothing more is held)."""
    url = (
        api.toolbox(sandbox).replace("http", "ws", 1)
        + f"/process/session/{session}/command/{cmd_id}/logs?follow=true"
    )
    buf: bytearray = bytearray()
    current: Stream | None = None
    async with websockets.connect(url, additional_headers=api.auth, max_size=MAX_FRAME) as ws:
        async for frame in ws:
            buf.extend(frame if isinstance(frame, bytes) else frame.encode())
            chunks, current = demux(buf, current)
            for chunk in chunks:
                yield chunk
    if buf:
        yield current or "stdout", bytes(buf)


def broken(exc: Exception) -> Unavailable:
    return Unavailable(
        f"daytona: log stream broke ({type(exc).__name__})",
        reason="PROVIDER_UNAVAILABLE",
        provider=NAME,
    )


async def session_gone(api: DaytonaAPI, sandbox: Sandbox, session: str) -> bool:
    with contextlib.suppress(Exception):
        resp = await api.tb(
            sandbox, "GET", f"/process/session/{session}", "session", ok=(404,), idempotent=True
        )
        return resp.status_code == 404
    return False


async def exit_code(api: DaytonaAPI, sandbox: Sandbox, session: str, cmd_id: str) -> int | None:
    """The command's exit code; None when its session is gone (deleted: killed)."""
    for _ in range(50):  # the log stream can close a moment before the code is set
        resp = await api.tb(
            sandbox,
            "GET",
            f"/process/session/{session}/command/{cmd_id}",
            "command",
            ok=(404,),
            not_found="PROCESS_NOT_FOUND",
        )
        if resp.status_code == 404:
            return None
        c = obj(resp, "command")
        if c.get("exitCode") is not None:
            return integer(c["exitCode"], "command")
        await asyncio.sleep(0.05)
    raise Unavailable(
        "daytona: the command ended without an exit code",
        reason="PROVIDER_ERROR",
        provider=NAME,
    )


class DaytonaRun(StreamedRun):
    no_stdin = NO_STDIN

    def __init__(
        self,
        api: DaytonaAPI,
        sandbox: Sandbox,
        command: Command,
        kill_on_close: bool = True,
        on_started: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(NAME, command, kill_on_close)
        self._on_started = on_started
        self._api = api
        self._sandbox = sandbox
        self._session = ""
        self._reusable = False  # the session's command ended: it can take the next

    async def _stream(self) -> AsyncIterator[ProcessEvent]:
        api, sb = self._api, self._sandbox
        line = command_line(sb, self.command)
        self._session = await api.session(sb, new_session_id())
        cmd_id = await exec_async(api, sb, self._session, line)
        # the toolbox has no exec timeout: StreamedRun kills at the deadline
        process_id = f"{self._session}:{cmd_id}"
        if self._on_started is not None:
            self._on_started(process_id)  # so attach knows a killed one from none
        yield self.started_event(process_id)
        try:
            async for name, data in follow(api, sb, self._session, cmd_id):
                yield self.output(name, data)
        except (OSError, websockets.WebSocketException) as exc:
            # ending the session (a kill, the deadline) may break the stream
            if not self.timed_out and not await session_gone(api, sb, self._session):
                raise broken(exc) from exc
        if self.timed_out:  # the session is gone, and with it the exit code
            yield self.exited(-1, 9)
            return
        code = await exit_code(api, sb, self._session, cmd_id)
        if code is None:  # its session was deleted: a kill
            yield self.exited(-1, 9)
            return
        self._reusable = True
        yield self.exited(code)

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
        if not self._kill_on_close:
            return  # left running for attach (RunCommand): it goes with a kill or the sandbox
        with contextlib.suppress(Exception):
            await self._api.end_session(self._sandbox, session)
