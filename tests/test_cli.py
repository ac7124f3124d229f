from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import DaemonProcess

CLI = str(Path(sys.executable).parent / "computesdk")


def run(
    daemon: DaemonProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMPUTESDK_SOCKET": str(daemon.socket)}
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60
    )


def test_create_exec_rm_as_a_new_user_would(daemon: DaemonProcess) -> None:
    created = run(daemon, "create", "--template", "python", "--metadata", "who=cli")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip().splitlines()[-1]
    out = run(daemon, "exec", sid, "--", "python3", "-c", "print(6*7)")
    assert (out.returncode, out.stdout) == (0, "42\n")
    failing = run(daemon, "exec", sid, "--", "sh", "-c", "echo oops >&2; exit 5")
    assert (failing.returncode, failing.stderr) == (5, "oops\n")
    piped = run(daemon, "exec", "-i", sid, "--", "wc", "-c", stdin="12345")
    assert piped.stdout.strip() == "5"
    listed = json.loads(run(daemon, "ls", "--json", "--metadata", "who=cli").stdout)
    assert [s["id"] for s in listed] == [sid]
    info = json.loads(run(daemon, "info", sid, "--json").stdout)
    assert info["status"]["state"] == "running"
    events = run(daemon, "events", "--sandbox", sid, "--json")
    assert [json.loads(line)["type"] for line in events.stdout.splitlines()][:2] == [
        "created",
        "ready",
    ]
    assert run(daemon, "rm", sid).returncode == 0
    gone = run(daemon, "--json", "info", sid)
    assert gone.returncode == 1
    assert json.loads(gone.stdout)["error"]["reason"] == "SANDBOX_NOT_FOUND"


def test_cli_reports_a_missing_daemon(tmp_path: Path) -> None:
    r = subprocess.run(
        [CLI, "--socket", str(tmp_path / "none.sock"), "ls"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "DAEMON_UNREACHABLE" in r.stderr


def test_stubs_hand_out_the_protos_and_python_modules(tmp_path: Path) -> None:
    repo_protos = Path(__file__).parent.parent / "proto"
    # No daemon needed: a build machine can run this offline.
    env = {**os.environ, "COMPUTESDK_SOCKET": "/nonexistent.sock"}

    def stubs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "stubs", *args], capture_output=True, text=True, env=env)

    assert stubs("--lang", "go", "--out", str(tmp_path / "go")).returncode == 0
    for proto in repo_protos.rglob("*.proto"):
        shipped = tmp_path / "go" / proto.relative_to(repo_protos)
        assert shipped.read_text() == proto.read_text(), proto
    assert "protoc-gen-go-grpc" in (tmp_path / "go" / "buf.gen.yaml").read_text()

    assert stubs("--lang", "python", "--out", str(tmp_path / "py")).returncode == 0
    assert (tmp_path / "py" / "computesdk/api/sandbox/v1/sandbox_pb2_grpc.py").is_file()

    bad = stubs("--lang", "cobol", "--out", str(tmp_path / "x"), "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"]["reason"] == "UNKNOWN_LANGUAGE"
