"""A foreground command whose events a vendor streams.

Each vendor streams a command in its own shape; what the daemon promises on top
is the same everywhere. StreamedRun owns that: the command's timeout (a kill at
the deadline, reported as timed_out), byte offsets per output stream, the
duration, and the kill when the caller leaves before the end. An adapter writes
_stream() (its vendor's events, made with started_event(), output() and
exited()) and _kill().
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Literal

from computesdkd.domain.errors import ComputeError, Unsupported
from computesdkd.domain.model import Command, ExitStatus, Output, ProcessEvent, Started
from computesdkd.providers.base import ProcessRun

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")


class StreamedRun(ProcessRun):
    # False where the command ends at its timeout without us: the vendor's own
    # exec timeout, or one enforced inside the sandbox.
    kill_at_deadline = True
    # Set where the vendor takes no input: why, for the Unsupported error.
    no_stdin = ""

    def __init__(self, provider: str, command: Command, kill_on_close: bool = True) -> None:
        self.provider = provider
        self.command = command
        self._kill_on_close = kill_on_close
        self._offsets: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self._t0 = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._killing: asyncio.Task[None] | None = None
        self.started = False
        self.done = False
        self.timed_out = False

    @abstractmethod
    def _stream(self) -> AsyncIterator[ProcessEvent]:
        """Starts the command and yields its events, made with started_event(),
        output() and exited()."""

    @abstractmethod
    async def _kill(self) -> None:
        """SIGKILL, or the vendor's nearest."""

    async def events(self) -> AsyncIterator[ProcessEvent]:
        self._t0 = time.monotonic()  # the duration counts the vendor's start-up
        try:
            async for ev in self._stream():
                yield ev
        finally:
            if self._deadline is not None:
                self._deadline.cancel()

    def started_event(self, process_id: str, pid: int = 0) -> Started:
        self.started = True
        if self.kill_at_deadline and self.command.timeout_ms:
            self._deadline = asyncio.get_running_loop().call_later(
                self.command.timeout_ms / 1000, self._on_deadline
            )
        return Started(process_id, pid)

    def output(self, stream: Stream, data: bytes) -> Output:
        ev = Output(stream, data, self._offsets[stream])
        self._offsets[stream] += len(data)
        return ev

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def exited(self, code: int, signal: int = 0, timed_out: bool | None = None) -> ExitStatus:
        """code is -1 for a signal; timed_out is ours unless the caller knows better."""
        self.done = True
        late = self.timed_out if timed_out is None else timed_out
        return ExitStatus(code, signal, self.elapsed_ms(), late)

    def _on_deadline(self) -> None:
        self.timed_out = True
        self._killing = asyncio.create_task(self._kill_quietly())

    async def _kill_quietly(self) -> None:
        # A kill that fails leaves the command to end on its own; the stream says how.
        with contextlib.suppress(Exception):
            await self._kill()

    async def send_stdin(self, data: bytes) -> None:
        raise Unsupported(self.provider, "stdin", self.no_stdin)

    async def close_stdin(self) -> None:
        raise Unsupported(self.provider, "stdin", self.no_stdin)

    async def aclose(self) -> None:
        if self._kill_on_close and self.started and not self.done:
            await self._kill_quietly()


async def run_checked(run: ProcessRun, error: ComputeError) -> None:
    """Runs a set-up command to its end; raises error if it exits non-zero."""
    try:
        async for ev in run.events():
            if isinstance(ev, ExitStatus) and ev.exit_code != 0:
                raise error
    finally:
        await run.aclose()
