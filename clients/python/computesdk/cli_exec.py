"""CLI commands that run things in a sandbox: `exec` and `logs`.

exec takes its options before or after the sandbox id (`exec ID --cwd /tmp -- pwd`);
the first word that is not an option, or everything after `--`, is the command.
One word runs under /bin/sh -c, as a string does in every SDK; several are the
exact argv. --shell / --no-shell force either way."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ._cli_common import CANNOT_RUN, FAILED, NOT_FOUND, Parser, UsageError, error_json, print_json
from ._cli_common import kv as _kv
from ._process import ExecStream
from .client import Client
from .errors import ComputeSDKError, ProcessNotFoundError
from .types import ProcessInfo

# The daemon's reasons for a command that did not start, as docker's codes.
EXIT_CODES = {
    "EXECUTABLE_NOT_FOUND": NOT_FOUND,
    "EXEC_FAILED": CANNOT_RUN,
    "CWD_NOT_FOUND": CANNOT_RUN,
}
_SHELLISH = re.compile(r"[\s;&|<>()$`*?'\"\\]")


def exit_code_for(err: ComputeSDKError) -> int:
    """127 for a command not found, 126 for one that cannot run, else 125."""
    return EXIT_CODES.get(err.reason, FAILED)


def command_of(words: Sequence[str], shell: bool | None) -> str | list[str]:
    """What runs: one word (or any, with --shell, joined by spaces as ssh does)
    is a shell command line; several words are the argv, as is any with --no-shell."""
    if not words:
        raise UsageError("exec needs a command: exec ID [--] COMMAND [ARG...]")
    if shell is False:
        return list(words)
    if shell or len(words) == 1:
        return " ".join(words)
    return list(words)


def hint_for(err: ComputeSDKError, command: str | list[str]) -> str:
    shellish = isinstance(command, list) and _SHELLISH.search(command[0])
    if err.reason == "EXECUTABLE_NOT_FOUND" and shellish:
        return (
            "hint: the command ran as an argv, not under a shell; to run a shell command "
            "line, pass it as one argument (without --no-shell), or use --shell"
        )
    return ""


# ------------------------------------------------------------ stdin


def _read_stdin(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes], slots: threading.Semaphore
) -> None:
    """Reads fd 0 in a daemon thread: nothing waits for it at exit, so Ctrl-C or the
    command's end never hangs on a read (a pipe, a file or a terminal alike)."""
    fd = sys.stdin.fileno()
    while True:
        slots.acquire()  # at most a few chunks ahead of what was sent
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, data)
        except RuntimeError:
            return  # the loop is closed: the command is over
        if not data:
            return


async def pump_stdin(stream: ExecStream) -> None:
    """Forwards stdin to the command; its end (EOF) closes the command's stdin."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    slots = threading.Semaphore(4)
    reader = threading.Thread(
        target=_read_stdin, args=(loop, queue, slots), name="computesdk-stdin", daemon=True
    )
    reader.start()
    while data := await queue.get():
        slots.release()
        await stream.send_stdin(data)
    await stream.close_stdin()


# ------------------------------------------------------------ exec


def report_exec_error(a: argparse.Namespace, err: ComputeSDKError, hint: str) -> None:
    if a.json:
        print_json(error_json(err))
    else:
        print(f"computesdk: {err}", file=sys.stderr)
        if hint:
            print(hint, file=sys.stderr)


async def cmd_exec(c: Client, a: argparse.Namespace) -> int:
    command = command_of(a.command, a.shell)
    sb = await c.get(a.id)
    stream = sb.exec_stream(
        command,
        cwd=a.cwd,
        env=_kv(a.env, "env"),
        timeout_ms=a.timeout_ms,
        interactive=a.interactive,
    )
    feeder = asyncio.create_task(pump_stdin(stream)) if a.interactive else None
    out, err = bytearray(), bytearray()
    try:
        async for chunk in stream:
            if a.json:
                (out if chunk.stream == "stdout" else err).extend(chunk.data)
                continue
            target = sys.stdout.buffer if chunk.stream == "stdout" else sys.stderr.buffer
            target.write(chunk.data)
            target.flush()
    except ComputeSDKError as e:
        code = exit_code_for(e)
        if code == FAILED:
            raise  # the daemon's own failure: main reports it
        report_exec_error(a, e, hint_for(e, command))
        return code
    finally:
        if feeder is not None:
            feeder.cancel()
    ex = stream.exited
    assert ex is not None
    if a.json:
        print_json(
            {
                "process_id": stream.process_id,
                "exit_code": ex.exit_code,
                "signal": ex.signal,
                "duration_ms": ex.duration_ms,
                "timed_out": ex.timed_out,
                "oom_killed": ex.oom_killed,
                "stdout": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace"),
            }
        )
    return 128 + ex.signal if ex.signal else ex.exit_code


def _exec_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """exec's own options; the copy parsed after the id must not reset values given
    before it, hence SUPPRESS there."""

    def d(default: Any) -> dict[str, Any]:
        return {"default": argparse.SUPPRESS if suppress else default}

    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="forward stdin (its EOF closes the command's stdin)",
        **d(False),
    )
    p.add_argument("--cwd", metavar="DIR", help="working directory (default /workspace)", **d(""))
    p.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="K=V",
        help="an environment variable (repeatable)",
        **d([]),
    )
    p.add_argument(
        "--timeout-ms",
        type=int,
        metavar="MS",
        help="kill the command after this long (0: no limit)",
        **d(0),
    )
    p.add_argument(
        "--shell",
        action=argparse.BooleanOptionalAction,
        help="--shell: run the words joined by spaces under /bin/sh -c; --no-shell: run them "
        "as the exact argv (default: one word runs under sh -c, several are the argv)",
        **d(None),
    )


class _HelpOf(argparse.Action):
    """-h after the id prints exec's own help."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, of: argparse.ArgumentParser, **kw: Any
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)
        self.of = of

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        values: Any,
        option: str | None = None,
    ) -> None:
        self.of.print_help()
        parser.exit()


def _fixup(tail: argparse.ArgumentParser) -> Callable[[argparse.Namespace], None]:
    def take_options(a: argparse.Namespace) -> None:
        # REMAINDER took everything after the id: options up to the first word (or
        # `--`) are exec's, the rest is the command.
        words = list(a.command)
        if words[:1] != ["--"]:
            tail.parse_args(words, namespace=a)
            words = list(a.command)
        a.command = words[1:] if words[:1] == ["--"] else words

    return take_options


# ------------------------------------------------------------ logs


def _find(procs: list[ProcessInfo], name: str) -> ProcessInfo:
    """A process by id, or the latest with that tag."""
    for p in reversed(procs):
        if name in (p.process_id, p.tag):
            return p
    raise ProcessNotFoundError(
        f"no process {name!r} (an id or tag from `computesdk ps`)",
        code=grpc.StatusCode.NOT_FOUND,
        reason="PROCESS_NOT_FOUND",
    )


async def cmd_logs(c: Client, a: argparse.Namespace) -> int:
    """The output from offset 0: what there is now, or with -f until the process ends."""
    sb = await c.get(a.id)
    info = _find(await sb.processes(), a.process)
    want = {"stdout": info.stdout_bytes, "stderr": info.stderr_bytes}
    follow = a.follow or not info.running  # an ended process's stream ends by itself
    if not follow and not any(want.values()):
        return 0
    got = {"stdout": 0, "stderr": 0}
    async for chunk in sb.process(info.process_id).attach(0, 0):
        data = chunk.data
        if not follow:
            data = data[: max(0, want[chunk.stream] - chunk.offset)]
        got[chunk.stream] = chunk.offset + len(chunk.data)
        if a.json:
            print_json(
                {
                    "stream": chunk.stream,
                    "offset": chunk.offset,
                    "data": data.decode(errors="replace"),
                }
            )
            sys.stdout.flush()
        else:
            target = sys.stdout.buffer if chunk.stream == "stdout" else sys.stderr.buffer
            target.write(data)
            target.flush()
        if not follow and all(got[s] >= want[s] for s in want):
            break
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command: exec [OPTIONS] ID [--] COMMAND [ARG...]",
        usage="computesdk exec [OPTIONS] ID [--] COMMAND [ARG...]",
        description="Runs COMMAND in sandbox ID and streams its output; exits with its code "
        "(128+N if signal N killed it). Options may come before or after ID; the first "
        "word that is not one, or everything after --, is the command. One word runs "
        "under /bin/sh -c, like a string in the SDKs (exec ID 'echo a && echo b'); "
        "several are the exact argv (exec ID -- python3 -c 'print(1)'). Exit codes: "
        "125 the CLI or daemon failed, 126 the command cannot run, 127 not found.",
    )
    _exec_options(p, suppress=False)
    p.add_argument("id", metavar="ID", help="the sandbox")
    p.add_argument(
        "command", metavar="COMMAND", nargs=argparse.REMAINDER, help="the command and its arguments"
    )
    tail = Parser(prog="computesdk exec", usage=p.usage, parents=[common], add_help=False)
    tail.add_argument("-h", "--help", action=_HelpOf, of=p, help="show exec's help")
    _exec_options(tail, suppress=True)
    tail.add_argument("command", nargs=argparse.REMAINDER, help="the command")
    p.set_defaults(fn=cmd_exec, fixup=_fixup(tail))

    p = sub.add_parser(
        "logs",
        parents=[common],
        help="a background process's output: logs ID PROC [-f]",
        description="Prints the output of a process (see `computesdk ps`) from its "
        "start: what there is now, or with -f until the process ends.",
    )
    p.add_argument("id", help="the sandbox")
    p.add_argument("process", metavar="PROC", help="a process id or tag")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    p.set_defaults(fn=cmd_logs)
