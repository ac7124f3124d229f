"""A foreground command on envd: process.Process/Start streams its events."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

from computesdkd.domain.errors import FailedPrecondition, Unsupported
from computesdkd.domain.model import Command, ProcessEvent, Sandbox
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.run import STREAMS, StreamedRun
from computesdkd.providers.e2b.api import E2BAPI, NAME, b64, bad_answer

SIGNALS = {9: "SIGNAL_SIGKILL", 15: "SIGNAL_SIGTERM"}
# envd ends a signalled process with the status "signal: <name>".
SIGNAL_NUMBERS = {"killed": 9, "terminated": 15, "interrupt": 2, "hangup": 1}


def _int(value: object, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value if (signed or value >= 0) and abs(value) < 1 << 31 else 0


def _bytes(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise bad_answer("start process", "output that is not base64") from exc


class E2BRun(StreamedRun):
    def __init__(
        self, api: E2BAPI, sandbox: Sandbox, command: Command, kill_on_close: bool
    ) -> None:
        super().__init__(NAME, command, kill_on_close)
        self._api = api
        self._sandbox = sandbox
        self._pid = 0

    async def _stream(self) -> AsyncIterator[ProcessEvent]:
        cmd = self.command
        req = {
            "process": {
                "cmd": cmd.args[0],
                "args": cmd.args[1:],
                "envs": process_env(self._sandbox, cmd),
                "cwd": cmd.cwd,
            },
            "stdin": cmd.stdin,
        }
        stream = self._api.rpc_stream(self._sandbox, "process.Process/Start", req, "start process")
        async for msg in stream:
            ev = msg.get("event")
            ev = ev if isinstance(ev, dict) else {}
            if isinstance(start := ev.get("start"), dict):
                self._pid = _int(start.get("pid"))
                # envd has no exec timeout: StreamedRun kills at the deadline
                yield self.started_event(str(self._pid), self._pid)
            elif isinstance(data := ev.get("data"), dict):
                for name in STREAMS:
                    if isinstance(chunk := data.get(name), str):
                        yield self.output(name, _bytes(chunk))
            elif isinstance(end := ev.get("end"), dict):
                status = str(end.get("status", ""))
                if status.startswith("signal: "):
                    yield self.exited(-1, SIGNAL_NUMBERS.get(status.split(": ", 1)[1], 0))
                else:
                    yield self.exited(_int(end.get("exitCode"), signed=True))
                return

    async def _kill(self) -> None:
        await self.send_signal(9)

    async def _process_call(self, method: str, extra: dict[str, Any]) -> None:
        if not self._pid:
            raise FailedPrecondition("the process has not started yet", reason="NOT_STARTED")
        await self._api.rpc(
            self._sandbox, f"process.Process/{method}", {"process": {"pid": self._pid}, **extra}
        )

    async def send_stdin(self, data: bytes) -> None:
        await self._process_call("SendInput", {"input": {"stdin": b64(data)}})

    async def close_stdin(self) -> None:
        await self._process_call("CloseStdin", {})

    async def send_signal(self, signal: int) -> None:
        if signal not in SIGNALS:
            raise Unsupported(NAME, f"signal {signal}", "envd sends only SIGTERM and SIGKILL")
        await self._process_call("SendSignal", {"signal": SIGNALS[signal]})
