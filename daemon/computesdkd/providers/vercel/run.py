"""A foreground command on Vercel, as the SDKs run one: POST .../cmd with wait and
logs streams NDJSON, a `command` record, `{stream, data}` log records, and a
final `command` record with the exit code; a `{stream: "error", data: {code,
message}}` record says the command's fate is unknown, and is raised. stdin: the
command starts with attachStdin, and input goes to .../cmd/{id}/stdin as base64
with the offset of the bytes Vercel confirmed, so a retried write is not
delivered twice."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from computesdkd.domain.errors import ComputeError, FailedPrecondition, Unavailable
from computesdkd.domain.model import Command, ExitStatus, ProcessEvent, Sandbox
from computesdkd.providers.common import http
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.run import STREAMS, StreamedRun
from computesdkd.providers.vercel.api import NAME, VercelAPI, bad_answer, field, ident, session

# A log record is one chunk of output; Vercel's are far smaller.
MAX_LINE = 2 << 20
# Bytes per stdin call, so the base64 JSON body stays under the API's 1 MB limit.
STDIN_CHUNK = 512 * 1024


def command_env(sandbox: Sandbox, command: Command) -> dict[str, str]:
    """The daemon's environment, without its PATH unless the caller set one: Vercel's
    own PATH carries /vercel/bin and the runtimes under /vercel/runtimes."""
    env = process_env(sandbox, command)
    if "PATH" not in sandbox.spec.env and "PATH" not in command.env:
        env.pop("PATH", None)
    return env


async def ndjson(resp: httpx.Response, what: str) -> AsyncIterator[dict[str, Any]]:
    """The stream's records, each line at most MAX_LINE bytes."""
    buf = b""
    async for chunk in resp.aiter_bytes():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        if len(buf) > MAX_LINE:
            raise bad_answer(what, f"an NDJSON line is longer than {MAX_LINE} bytes")
        for line in lines:
            if line.strip():
                yield _record(line, what)
    if buf.strip():
        yield _record(buf, what)


def _record(line: bytes, what: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except ValueError:
        raise bad_answer(what, "a line of the stream is not JSON") from None
    if not isinstance(rec, dict):
        raise bad_answer(what, "a line of the stream is not a JSON object")
    return rec


def stream_error(rec: dict[str, Any], what: str) -> Unavailable:
    raw = rec.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code, message = str(data.get("code", "error"))[:64], str(data.get("message", ""))[:300]
    return Unavailable(
        f"{NAME}: {what}: {code}: {message}",
        reason="PROVIDER_UNAVAILABLE",
        provider=NAME,
        vendor_code=code,
    )


def _exited(what: str, stdin: bool = False) -> FailedPrecondition:
    why = "the command has exited" + (" (or its stdin is closed or not attached)" if stdin else "")
    return FailedPrecondition(f"{NAME}: {what}: {why}", reason="PROCESS_EXITED")


def exit_status(code: int, duration_ms: int) -> ExitStatus:
    """Vercel reports a signalled command as the shell does, 128 + n."""
    if code in (137, 143):
        return ExitStatus(-1, code - 128, duration_ms)
    return ExitStatus(code, 0, duration_ms)


async def stdin_call(
    api: VercelAPI, path: str, what: str, offset: int | None, data: bytes, close: bool
) -> int:
    """One .../stdin call on the command at path; returns the bytes Vercel has taken.
    The offset (the bytes it confirmed before) makes a resent write a no-op for the
    bytes already taken; without one, an empty call just reports them."""

    def error(resp: httpx.Response) -> ComputeError:
        gone = resp.status_code == 404 or (
            resp.status_code == 400 and "command_stdin_unavailable" in resp.text[:2000]
        )
        if gone:
            return _exited(what, stdin=True)
        return http.error_for(NAME, what, resp, "PROCESS_NOT_FOUND")

    body: dict[str, Any] = {} if offset is None else {"offset": offset}
    if data:
        body["data"] = base64.b64encode(data).decode()
    if close:
        body["close"] = True
    out = await api.json(
        "POST", f"{path}/stdin", what, json=body, idempotent=offset is not None, error=error
    )
    written, before = out.get("bytesWritten"), offset or 0
    if isinstance(written, int) and not isinstance(written, bool) and written >= before:
        return written
    return before + len(data)


class VercelRun(StreamedRun):
    def __init__(
        self, api: VercelAPI, sandbox: Sandbox, command: Command, kill_on_close: bool
    ) -> None:
        super().__init__(NAME, command, kill_on_close)
        self._api = api
        self._sandbox = sandbox
        self._cmd_id = ""
        self._stdin_at = 0  # the bytes of input Vercel confirmed

    async def _stream(self) -> AsyncIterator[ProcessEvent]:
        cmd, what = self.command, "run command"
        body: dict[str, Any] = {
            "command": cmd.args[0],
            "args": cmd.args[1:],
            "env": command_env(self._sandbox, cmd),
            "sudo": True,
            "wait": True,
            "logs": True,
        }
        if cmd.cwd:
            body["cwd"] = cmd.cwd
        if cmd.stdin:
            body["attachStdin"] = True
        async with self._api.stream(
            "POST",
            f"{session(self._sandbox)}/cmd",
            what,
            json=body,
            timeout=httpx.Timeout(None, connect=10.0),
        ) as resp:
            async for rec in ndjson(resp, what):
                if "command" in rec:
                    cid = ident(rec["command"], "id", what)
                    if not self._cmd_id:
                        self._cmd_id = cid
                        # Vercel has no exec timeout: StreamedRun kills at the deadline
                        yield self.started_event(cid)
                    elif cid != self._cmd_id:
                        raise bad_answer(what, "the stream switched to another command")
                    if rec["command"].get("exitCode") is not None:
                        code = field(rec["command"], "exitCode", int, what)
                        ended = exit_status(code, 0)
                        yield self.exited(ended.exit_code, ended.signal)
                        return
                elif (name := rec.get("stream")) in STREAMS and self._cmd_id:
                    yield self.output(name, field(rec, "data", str, what).encode())
                elif name == "error":
                    raise stream_error(rec, what)
                else:
                    raise bad_answer(what, "the stream has a record of no known kind")
        raise Unavailable(
            f"{NAME}: {what}: the stream ended before the command did",
            reason="PROVIDER_UNAVAILABLE",
            provider=NAME,
        )

    def _cmd(self, what: str) -> str:
        if not self._cmd_id:
            raise FailedPrecondition("the command has not started yet", reason="NOT_STARTED")
        if self.done:
            raise _exited(what)
        return f"{session(self._sandbox)}/cmd/{self._cmd_id}"

    async def _stdin(self, what: str, data: bytes, close: bool) -> None:
        self._stdin_at = await stdin_call(
            self._api, self._cmd(what), what, self._stdin_at, data, close
        )

    async def send_stdin(self, data: bytes) -> None:
        for i in range(0, len(data), STDIN_CHUNK):
            await self._stdin("write stdin", data[i : i + STDIN_CHUNK], False)

    async def close_stdin(self) -> None:
        await self._stdin("close stdin", b"", True)

    async def _kill(self) -> None:
        await self.send_signal(9)

    async def send_signal(self, signal: int) -> None:
        await self._api.call(
            "POST", f"{self._cmd('kill command')}/kill", "kill command", json={"signal": signal}
        )
