"""`computesdk exec` and `logs` as a user of docker exec expects them: exit codes that
say who failed, one word under a shell as in the SDKs, options after the id, stdin
from a pipe or a file, and Ctrl-C that ends the CLI and the command at once."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from computesdk.sync import SyncClient
from conftest import DaemonProcess

CLI = str(Path(sys.executable).parent / "computesdk")


def env(daemon: DaemonProcess) -> dict[str, str]:
    return {**os.environ, "COMPUTESDK_SOCKET": str(daemon.socket)}


def run(daemon: DaemonProcess, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("input", None)
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env(daemon), timeout=60, **kw
    )


@pytest.fixture
def sid(daemon: DaemonProcess) -> Iterator[str]:
    made = run(daemon, "create", "--metadata", "suite=cli-exec")
    assert made.returncode == 0, made.stderr
    yield made.stdout.strip()
    run(daemon, "rm", "-f", made.stdout.strip())


def test_exit_codes_say_who_failed(daemon: DaemonProcess, sid: str) -> None:
    assert run(daemon, "exec", sid, "--", "true").returncode == 0
    assert run(daemon, "exec", sid, "--", "sh", "-c", "exit 3").returncode == 3
    assert run(daemon, "exec", sid, "--", "sh", "-c", "exit 1").returncode == 1
    # Killed by a signal: 128 + its number.
    assert run(daemon, "exec", sid, "--", "sh", "-c", "kill -9 $$").returncode == 137
    # Not found: 127, whether the daemon looked it up (argv) or a shell did (one word).
    missing = run(daemon, "exec", sid, "--", "no-such-command", "x")
    assert missing.returncode == 127 and "EXECUTABLE_NOT_FOUND" in missing.stderr
    assert run(daemon, "exec", sid, "no-such-command").returncode == 127
    # Found but not runnable: 126 (a file without x, a working directory that is not).
    run(daemon, "exec", sid, "--", "sh", "-c", "echo data > /workspace/plain")
    denied = run(daemon, "exec", sid, "--", "/workspace/plain", "arg")
    assert denied.returncode == 126 and "EXEC_FAILED" in denied.stderr
    assert run(daemon, "exec", sid, "/workspace/plain").returncode == 126  # sh says 126 too
    nocwd = run(daemon, "exec", sid, "--cwd", "/no/such/dir", "--", "pwd", "-P")
    assert nocwd.returncode == 126 and "CWD_NOT_FOUND" in nocwd.stderr
    # The daemon or the CLI failed: 125, never a code the command could have given.
    gone = run(daemon, "exec", "sbx-0000000000000000", "--", "true")
    assert gone.returncode == 125 and "SANDBOX_NOT_FOUND" in gone.stderr
    usage = run(daemon, "exec", sid, "--no-such-option", "true")
    assert usage.returncode == 125 and "--no-such-option" in usage.stderr
    assert run(daemon, "exec", sid).returncode == 125  # no command
    unreachable = subprocess.run(
        [CLI, "--socket", "/nonexistent/d.sock", "exec", sid, "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unreachable.returncode == 125
    as_json = run(daemon, "exec", sid, "--json", "--", "no-such-command", "x")
    assert as_json.returncode == 127
    assert json.loads(as_json.stdout)["error"]["reason"] == "EXECUTABLE_NOT_FOUND"


def test_one_word_runs_under_a_shell_several_are_the_argv(daemon: DaemonProcess, sid: str) -> None:
    shell = run(daemon, "exec", sid, "echo a && echo b")
    assert (shell.returncode, shell.stdout) == (0, "a\nb\n")
    argv = run(daemon, "exec", sid, "--", "printf", "%s|", "a b", "$HOME", "*")
    assert argv.stdout == "a b|$HOME|*|"  # exactly these words: no shell read them
    joined = run(daemon, "exec", sid, "--shell", "echo", "x", "&&", "echo", "y")
    assert joined.stdout == "x\ny\n"
    forced = run(daemon, "exec", sid, "--no-shell", "echo a")
    assert forced.returncode == 127
    assert "--shell" in forced.stderr and "argv" in forced.stderr  # the hint


def test_options_after_the_id_are_options(daemon: DaemonProcess, sid: str) -> None:
    out = run(daemon, "exec", sid, "--cwd", "/tmp", "--", "pwd")
    assert out.stdout == "/tmp\n"
    out = run(daemon, "exec", "--env", "A=1", sid, "-e", "B=2", "--cwd", "/tmp", "sh", "-c",
              "echo $A$B; pwd")  # fmt: skip
    assert out.stdout == "12\n/tmp\n"
    # After the first word everything is the command's, its options too.
    out = run(daemon, "exec", sid, "ls", "-d", "--", "/tmp")
    assert (out.returncode, out.stdout) == (0, "/tmp\n")
    out = run(daemon, "exec", sid, "--json", "--cwd", "/tmp", "pwd")
    assert json.loads(out.stdout)["stdout"] == "/tmp\n"
    helped = run(daemon, "exec", sid, "--help")
    assert helped.returncode == 0 and "COMMAND" in helped.stdout


def test_stdin_from_a_pipe_or_a_file_ends_with_its_eof(
    daemon: DaemonProcess, sid: str, tmp_path: Path
) -> None:
    piped = run(daemon, "exec", "-i", sid, "--", "wc", "-c", input="12345")
    assert piped.stdout.strip() == "5"
    data = tmp_path / "in.txt"
    data.write_bytes(b"x" * 300_000)
    with data.open("rb") as f:
        filed = subprocess.run(
            [CLI, "exec", "-i", sid, "--", "wc", "-c"],
            stdin=f, capture_output=True, text=True, env=env(daemon), timeout=60,
        )  # fmt: skip
    assert filed.stdout.strip() == "300000"
    # A command that ends without reading: the CLI does not wait for input.
    proc = subprocess.Popen(
        [CLI, "exec", "-i", sid, "--", "true"], stdin=subprocess.PIPE, env=env(daemon)
    )
    try:
        assert proc.wait(30) == 0
    finally:
        assert proc.stdin is not None
        proc.stdin.close()


def _running(daemon: DaemonProcess, sid: str, word: str) -> list[dict[str, Any]]:
    procs = json.loads(run(daemon, "ps", sid, "--json").stdout)
    return [p for p in procs if p["running"] and any(word in a for a in p["args"])]


@pytest.mark.parametrize("stdin", ["pipe", "terminal"])
def test_ctrl_c_ends_the_cli_and_the_command(daemon: DaemonProcess, sid: str, stdin: str) -> None:
    master = slave = -1
    if stdin == "terminal":
        master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CLI, "exec", "-i", sid, "--", "cat"],
        stdin=subprocess.PIPE if stdin == "pipe" else slave,
        stdout=subprocess.DEVNULL,
        env=env(daemon),
    )
    try:
        deadline = time.monotonic() + 30
        while not _running(daemon, sid, "cat") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _running(daemon, sid, "cat"), "cat never started"
        proc.send_signal(signal.SIGINT)  # stdin stays open: nothing else ends it
        assert proc.wait(10) == 130
    finally:
        proc.kill()
        if proc.stdin is not None:
            proc.stdin.close()
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
    deadline = time.monotonic() + 10
    while _running(daemon, sid, "cat") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(daemon, sid, "cat")


def test_logs_print_a_background_process_output(daemon: DaemonProcess, sid: str) -> None:
    with SyncClient(socket=daemon.socket) as c:
        sb = c.get(sid)
        done = sb.start_process("echo one; echo err >&2; echo two", tag="done")
        deadline = time.monotonic() + 10
        while _running(daemon, sid, "echo one") and time.monotonic() < deadline:
            time.sleep(0.05)
        # It ends when the test says so (a file), not after a sleep that a busy
        # machine could outlast before the first `logs` even starts.
        slow = sb.start_process(
            "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo last", tag="slow"
        )
    out = run(daemon, "logs", sid, "done")
    assert (out.returncode, out.stdout, out.stderr) == (0, "one\ntwo\n", "err\n")
    assert run(daemon, "logs", sid, done.id).stdout == "one\ntwo\n"  # by id too
    deadline = time.monotonic() + 10
    now = run(daemon, "logs", sid, "slow")  # what there is now, while it runs
    while now.stdout != "first\n" and time.monotonic() < deadline:
        now = run(daemon, "logs", sid, "slow")
    assert now.stdout == "first\n"
    with SyncClient(socket=daemon.socket) as c:
        c.get(sid).exec("touch /tmp/go")
    followed = run(daemon, "logs", "-f", sid, slow.id)
    assert followed.stdout == "first\nlast\n"
    lines = run(daemon, "logs", sid, "done", "--json").stdout.splitlines()
    assert {json.loads(line)["stream"] for line in lines} == {"stdout", "stderr"}
    missing = run(daemon, "logs", sid, "no-such-tag")
    assert missing.returncode == 125 and "PROCESS_NOT_FOUND" in missing.stderr
