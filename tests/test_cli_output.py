"""What the CLI prints, as a user of docker or kubectl expects it: one JSON shape
for every --json, ls -q/--filter/-o, rm --all/-f, a quiet end when stdout's reader
goes away, help for every option, shell completion, --version and `version`, and
a build clock that moves."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from test_cli import on_terminal

from computesdk import __version__
from computesdk.cli import parser
from conftest import DaemonProcess

CLI = str(Path(sys.executable).parent / "computesdk")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def run(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMPUTESDK_SOCKET": str(daemon.socket)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=60)


def js(daemon: DaemonProcess, *args: str) -> Any:
    out = run(daemon, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, f"{path}[]")
    else:
        yield path, value


def _check_shape(doc: Any) -> None:
    """Numbers are numbers, times RFC 3339 in UTC, no enum spelled the proto's way."""
    for path, v in _walk(doc):
        key = path.rsplit(".", 1)[-1].removesuffix("[]")
        if ".attributes." in path or ".metadata." in path:
            continue  # string maps in the API: their values stay strings
        if re.search(r"(_ms|_mb|_bytes|_ns|_count|_cores|percent|sequence|pid)$", key):
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (path, v)
        if key in ("time", "create_time", "expire_time", "created", "modified"):
            assert v is None or RFC3339.match(v), (path, v)
            assert v is None or datetime.fromisoformat(v).utcoffset() is not None
        if isinstance(v, str):
            assert not re.fullmatch(r"(STATE|CIRCUIT_STATE)_[A-Z_]+", v), (path, v)
        assert re.fullmatch(r"[a-z0-9_]*", key.split("[")[0] or "x"), path  # snake_case


def test_every_json_has_the_one_shape(daemon: DaemonProcess) -> None:
    made = js(daemon, "create", "--metadata", "shape=yes", "--memory-mb", "512")
    sid = made["id"]
    assert made["state"] == "running" and made["resources"]["memory_mb"] == 512
    assert isinstance(made["timeout_ms"], int)
    listed = js(daemon, "ls", "--filter", "metadata.shape=yes")
    info = js(daemon, "info", sid)
    run(daemon, "exec", sid, "--", "true")
    procs = js(daemon, "ps", sid)
    top = js(daemon, "top", "--once")
    events = [json.loads(line) for line in run(daemon, "events", "--sandbox", sid, "--json")
              .stdout.splitlines()]  # fmt: skip
    providers = js(daemon, "providers")
    for doc in (made, listed, info, procs, top, events, providers):
        _check_shape(doc)
    # One spelling of a state, wherever it is printed.
    assert {listed[0]["state"], info["sandbox"]["state"], info["status"]["state"]} == {"running"}
    # A sandbox has one shape whichever command prints it.
    assert [s["id"] for s in listed] == [sid]
    assert set(listed[0]) == set(made) == set(info["sandbox"])
    assert listed[0]["create_time"] == made["create_time"] == info["sandbox"]["create_time"]
    assert next(r for r in top if r["id"] == sid)["memory_total_mb"] > 0
    assert [e["type"] for e in events][:2] == ["created", "ready"]
    assert procs[0]["exit_code"] == 0 and isinstance(procs[0]["pid"], int)
    assert {p["circuit_state"] for p in providers} <= {"closed", "open", "half_open"}
    assert run(daemon, "rm", sid).returncode == 0


def test_ls_quiet_filters_and_wide(daemon: DaemonProcess) -> None:
    a = run(daemon, "create", "--metadata", "team=ls-a", "--metadata", "k=1").stdout.strip()
    b = run(daemon, "create", "--template", "python", "--metadata", "team=ls-b").stdout.strip()
    try:
        quiet = run(daemon, "ls", "-q", "--filter", "metadata.team=ls-a").stdout
        assert quiet == f"{a}\n"
        either = run(daemon, "ls", "-q", "--filter", "metadata.team=ls-a",
                     "--filter", "metadata.team=ls-b").stdout.split()  # fmt: skip
        assert sorted(either) == sorted([a, b])
        by_template = run(daemon, "ls", "-q", "--filter", "template=python",
                          "--filter", "label=team=ls-b").stdout.split()  # fmt: skip
        assert by_template == [b]
        assert run(daemon, "ls", "-q", "--filter", f"id={a[:8]}", "--filter",
                   "metadata.team=ls-a").stdout.split() == [a]  # fmt: skip
        assert run(daemon, "ls", "-q", "--filter", "state=stopped",
                   "--filter", "metadata.team=ls-a").stdout == ""  # fmt: skip
        wide = run(daemon, "ls", "-o", "wide", "--filter", "metadata.team=ls-a").stdout
        assert wide.split("\n")[0].split()[:6] == ["ID", "PROVIDER", "TEMPLATE", "STATE",
                                                   "CREATED", "EXPIRES"]  # fmt: skip
        assert "k=1,team=ls-a" in wide
        as_json = json.loads(run(daemon, "ls", "-o", "json", "--filter", "label=team=ls-a").stdout)
        assert [s["id"] for s in as_json] == [a]
        bad = run(daemon, "ls", "--filter", "colour=red")
        assert bad.returncode == 125 and "unknown filter" in bad.stderr
    finally:
        run(daemon, "rm", "-f", a, b)


def test_rm_all_with_filters_and_force(daemon: DaemonProcess) -> None:
    ids = [run(daemon, "create", "--metadata", "sweep=me").stdout.strip() for _ in range(2)]
    keep = run(daemon, "create", "--metadata", "sweep=not-me").stdout.strip()
    swept = run(daemon, "rm", "--all", "--filter", "metadata.sweep=me")
    assert swept.returncode == 0 and sorted(swept.stdout.split()) == sorted(ids)
    assert run(daemon, "ls", "-q", "--filter", "metadata.sweep=me").stdout == ""
    assert run(daemon, "ls", "-q", "--filter", "metadata.sweep=not-me").stdout.split() == [keep]
    # docker rm -f: an id that is not there is no error; without -f it is (125).
    assert run(daemon, "rm", "-f", ids[0]).returncode == 0
    missing = run(daemon, "rm", ids[0], keep)
    assert missing.returncode == 125 and "SANDBOX_NOT_FOUND" in missing.stderr
    assert missing.stdout.split() == [keep]  # the others are still destroyed
    assert run(daemon, "rm").returncode == 125  # neither ids nor --all


def test_a_closed_pipe_ends_quietly(daemon: DaemonProcess) -> None:
    sid = run(daemon, "create").stdout.strip()
    env = {**os.environ, "COMPUTESDK_SOCKET": str(daemon.socket)}
    proc = subprocess.Popen([CLI, "top", "--json", "--interval", "0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())  # the first frame
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(30) == 141  # as a tool that SIGPIPE ended
    with proc.stderr:
        assert proc.stderr.read() == b""  # no traceback, no message
    shell = subprocess.run(["bash", "-c", f"set -o pipefail; {CLI} events --json | head -1"],
                           capture_output=True, text=True, env=env, timeout=30)  # fmt: skip
    assert shell.stdout.count("\n") == 1 and "Traceback" not in shell.stderr
    assert run(daemon, "rm", sid).returncode == 0


def test_every_option_has_help() -> None:
    missing = []

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                for sub_name, sub in act.choices.items():
                    walk(sub, f"{name} {sub_name}")
            elif not act.help or act.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(act.option_strings) or act.dest}")

    walk(parser(), "computesdk")
    assert not missing


def test_usage_errors_exit_125(daemon: DaemonProcess) -> None:
    assert run(daemon).returncode == 125
    assert run(daemon, "no-such-command").returncode == 125
    assert run(daemon, "ls", "--bogus").returncode == 125
    assert run(daemon, "create", "--metadata", "no-equals").returncode == 125
    assert run(daemon, "ls", "--help").returncode == 0


def test_shell_completion_scripts(tmp_path: Path) -> None:
    def completion(shell: str) -> str:
        offline = {**os.environ, "COMPUTESDK_SOCKET": "/nonexistent"}
        out = subprocess.run([CLI, "completion", shell], capture_output=True, text=True,
                             timeout=30, env=offline)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    bash = completion("bash")
    script = tmp_path / "computesdk.bash"
    script.write_text(bash)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    for word in ("exec", "cp", "logs", "template", "--follow-link", "--filter"):
        assert word in bash, word
    # The function bash calls completes subcommands.
    probe = subprocess.run(
        ["bash", "-c", f'source {script}; COMP_WORDS=(computesdk l); COMP_CWORD=1; '
         'COMP_LINE="computesdk l"; COMP_POINT=${#COMP_LINE}; '
         '_shtab_computesdk computesdk l computesdk; printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert {"ls", "logs"} <= set(probe.stdout.split()), probe.stderr
    assert "#compdef computesdk" in completion("zsh")
    assert "complete computesdk" in completion("tcsh")
    if shutil.which("zsh"):
        zsh = tmp_path / "_computesdk"
        zsh.write_text(completion("zsh"))
        assert subprocess.run(["zsh", "-n", str(zsh)]).returncode == 0


def test_version_offline_and_from_the_daemon(daemon: DaemonProcess) -> None:
    offline = subprocess.run([CLI, "--socket", "/nonexistent/d.sock", "--version"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (offline.returncode, offline.stdout) == (0, f"computesdk {__version__}\n")
    both = run(daemon, "version")
    assert both.returncode == 0 and __version__ in both.stdout and "Server:" in both.stdout
    doc = js(daemon, "version")
    assert doc["client"]["version"] == __version__ and doc["server"]["reachable"] is True
    nodaemon = subprocess.run([CLI, "--socket", "/nonexistent/d.sock", "version", "--json"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    assert nodaemon.returncode == 125
    gone = json.loads(nodaemon.stdout)
    assert gone["client"]["version"] == __version__ and gone["server"]["reachable"] is False
    assert gone["error"]["reason"] == "DAEMON_UNREACHABLE"


def test_the_build_clock_moves_on_a_terminal(daemon: DaemonProcess) -> None:
    name = f"cli-clock-{os.getpid()}"
    drawn = on_terminal(daemon, "template", "build", name, "-s", "sleep 4", "--no-cache")
    text = drawn.decode(errors="replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    frames = [f for f in re.split(r"[\r\n]", plain) if "setup: sleep 4" in f]
    clocks = {m.group(1) for f in frames if (m := re.search(r"sleep 4\S*\s+(\d+\.\d)s", f))}
    assert len(clocks) >= 3, frames[-3:]  # it moved while the step sent nothing (~40 draws)
    assert run(daemon, "template", "rm", name).returncode == 0
