from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
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


def on_terminal(daemon: DaemonProcess, *args: str, until: bytes = b"", times: int = 1) -> bytes:
    """Runs the CLI with stdout and stderr on a pseudo-terminal; with until, sends
    Ctrl-C once that output has been seen that many times. Returns what it drew."""
    env = {**os.environ, "COMPUTESDK_SOCKET": str(daemon.socket), "COLUMNS": "120"}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CLI, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    out, deadline, interrupted = b"", time.monotonic() + 60, not until
    while time.monotonic() < deadline:
        if not interrupted and out.count(until) >= times:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the CLI is gone
                break
            out += chunk
    os.close(master)
    assert proc.wait(10) == (130 if until else 0), out
    return out


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
    assert gone.returncode == 125  # the daemon's error, as docker's 125
    assert json.loads(gone.stdout)["error"]["reason"] == "SANDBOX_NOT_FOUND"


def test_cli_reports_a_missing_daemon(tmp_path: Path) -> None:
    r = subprocess.run(
        [CLI, "--socket", str(tmp_path / "none.sock"), "ls"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 125 and "DAEMON_UNREACHABLE" in r.stderr


def test_stubs_hand_out_the_protos_and_python_modules(tmp_path: Path) -> None:
    repo_protos = Path(__file__).parent.parent / "proto"
    # No daemon needed: a build machine can run this offline.
    env = {**os.environ, "COMPUTESDK_SOCKET": "/nonexistent.sock"}

    def stubs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "stubs", *args], capture_output=True, text=True, env=env)

    assert stubs("--lang", "go", "--out", str(tmp_path / "go")).returncode == 0
    for proto in (repo_protos / "computesdk" / "api").rglob("*.proto"):
        shipped = tmp_path / "go" / proto.relative_to(repo_protos)
        assert shipped.read_text() == proto.read_text(), proto
    # The agent's wire is private to the daemon: never handed out.
    assert (repo_protos / "computesdk/agent/v1/agent.proto").is_file()
    assert not (tmp_path / "go" / "computesdk" / "agent").exists()
    assert "protoc-gen-go-grpc" in (tmp_path / "go" / "buf.gen.yaml").read_text()

    assert stubs("--lang", "python", "--out", str(tmp_path / "py")).returncode == 0
    assert (tmp_path / "py" / "computesdk_api/sandbox/v1/sandbox_pb2_grpc.py").is_file()

    bad = stubs("--lang", "cobol", "--out", str(tmp_path / "x"), "--json")
    assert bad.returncode == 125
    assert json.loads(bad.stdout)["error"]["reason"] == "UNKNOWN_LANGUAGE"


def test_cli_volumes_snapshots_states_and_pools(daemon: DaemonProcess) -> None:
    assert run(daemon, "volume", "create", "cli-vol", "--size-mb", "8").returncode == 0
    sid = run(daemon, "create", "--volume", "cli-vol:/data").stdout.strip()
    assert (
        run(daemon, "exec", sid, "--", "sh", "-c", "echo 1 > /data/a; echo v1 > /root/f").returncode
        == 0
    )
    snap = run(daemon, "snapshot", "create", sid, "first").stdout.strip()
    assert snap.startswith("snap-")
    run(daemon, "exec", sid, "--", "sh", "-c", "echo v2 > /root/f")
    assert run(daemon, "snapshot", "restore", sid, snap).returncode == 0
    assert run(daemon, "exec", sid, "--", "cat", "/root/f").stdout == "v1\n"
    listed = json.loads(run(daemon, "snapshot", "ls", sid, "--json").stdout)
    assert [s["name"] for s in listed] == ["first"]
    state = run(daemon, "state", "save", sid, "--name", "cli").stdout.strip()
    assert run(daemon, "rm", sid).returncode == 0
    again = run(daemon, "create", "--restore-from", state).stdout.strip()
    assert run(daemon, "exec", again, "--", "cat", "/root/f").stdout == "v1\n"
    assert run(daemon, "restart", again, "--env", "K=v").returncode == 0
    assert run(daemon, "exec", again, "--", "sh", "-c", "echo $K").stdout == "v\n"
    run(daemon, "rm", again)
    assert run(daemon, "state", "rm", state).returncode == 0
    vols = json.loads(run(daemon, "volume", "ls", "--json").stdout)
    assert [v["name"] for v in vols if v["name"] == "cli-vol"] == ["cli-vol"]
    assert run(daemon, "volume", "rm", "cli-vol").returncode == 0
    bad = run(daemon, "create", "--volume", "nope:/x:existing", "--json")
    assert json.loads(bad.stdout)["error"]["reason"] == "VOLUME_NOT_FOUND"
    made = run(daemon, "create", "--volume", "cli-made:/data:size=64MB,persistent").stdout.strip()
    assert run(daemon, "exec", made, "--", "sh", "-c", "echo k > /data/k").returncode == 0
    run(daemon, "rm", made)
    assert run(daemon, "volume", "rm", "cli-made").returncode == 0  # it outlived the sandbox
    assert run(daemon, "create", "--volume", "x:/y:bogus").returncode != 0


def test_cli_pools_batches_groups_networks_channels(daemon: DaemonProcess) -> None:
    made = run(daemon, "batch", "--template", "base", "-n", "2").stdout.split()
    assert len(made) == 2
    assert run(daemon, "group", "create", "cli-g", *made).returncode == 0
    out = run(daemon, "group", "exec", "cli-g", "--", "echo", "hi")
    assert out.returncode == 0 and out.stdout.count("exit 0\thi") == 2
    net = run(daemon, "network", "create", "cli-n", f"a={made[0]}", f"b={made[1]}")
    assert net.returncode == 0, net.stderr
    assert run(daemon, "network", "url", "cli-n", "b", "80").stdout.strip() == "http://b:80"
    ping = run(daemon, "exec", made[0], "--", "getent", "hosts", "b")
    assert ping.stdout.split()[1:] == ["b"]
    assert run(daemon, "network", "rm", "cli-n").returncode == 0
    assert run(daemon, "channel", "create", "cli-c", made[0], "me").returncode == 0
    assert run(daemon, "channel", "send", "cli-c", "me", made[0], "hello").stdout.strip() == "1"
    got = run(daemon, "channel", "recv", "cli-c", made[0], "--count", "1")
    assert got.stdout == "1\tme\thello\n"
    run(daemon, "channel", "rm", "cli-c")
    assert run(daemon, "group", "destroy", "cli-g").returncode == 0
    assert (
        run(
            daemon, "pool", "create", "cli-p", "--template", "base", "--min", "0", "--max", "1"
        ).returncode
        == 0
    )
    acquired = run(daemon, "pool", "acquire", "cli-p").stdout.strip()
    assert run(daemon, "pool", "release", acquired).stdout.strip() == "returned"
    assert "cli-p" in run(daemon, "pool", "ls").stdout
    assert run(daemon, "pool", "rm", "cli-p").returncode == 0


def test_template_build_shows_progress_then_ls_info_rm(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    definition = tmp_path / "tpl.json"
    definition.write_text(json.dumps({"setup": ["echo from-file > /from-file"], "env": {"A": "1"}}))
    name = f"cli-tpl-{os.getpid()}"
    built = run(
        daemon, "template", "build", name, "-f", str(definition), "-s", "echo logged", "-e", "B=2"
    )
    assert built.returncode == 0, built.stderr
    # Not a terminal: one line per step, then the build's log.
    assert "[1/5] resolving base" in built.stderr and "[5/5] committing" in built.stderr
    assert "  logged" in built.stderr
    assert built.stdout.startswith(f"{name} sha256:") and "built in" in built.stdout
    again = run(daemon, "template", "build", name, "-f", str(definition), "-s", "echo logged",
                "-e", "B=2", "--json")  # fmt: skip
    assert json.loads(again.stdout)["cache_hit"] is True
    listed = run(daemon, "template", "ls")
    assert any(line.startswith(name) for line in listed.stdout.splitlines())
    info = run(daemon, "template", "info", name)
    assert "env:         A=1" in info.stdout and "setup:       echo logged" in info.stdout
    created = run(daemon, "create", "--template", name)
    sid = created.stdout.strip().splitlines()[-1]
    out = run(daemon, "exec", sid, "--", "sh", "-c", "cat /from-file; echo $A$B")
    assert out.stdout == "from-file\n12\n"
    assert run(daemon, "rm", sid).returncode == 0
    assert run(daemon, "template", "rm", name).returncode == 0
    gone = run(daemon, "--json", "template", "info", name)
    assert json.loads(gone.stdout)["error"]["reason"] == "TEMPLATE_NOT_FOUND"


def test_plain_tables_split_into_columns_and_print_data_as_it_is(daemon: DaemonProcess) -> None:
    marked = "[bold]:smile:"  # Rich markup and an emoji code: shown, not read
    sid = run(daemon, "create", "--metadata", f"tag={marked}").stdout.strip()
    listed = run(daemon, "ls", "--metadata", f"tag={marked}").stdout
    assert [line.split() for line in listed.splitlines()] == [
        ["ID", "PROVIDER", "TEMPLATE", "STATE", "METADATA"],
        [sid, "local", "base", "running", f"tag={marked}"],
    ]
    assert "\x1b" not in listed and all(line == line.rstrip() for line in listed.splitlines())
    top = run(daemon, "top", "--once").stdout.splitlines()
    assert top[0].startswith("ID") and top[0].endswith("NET RX/TX")
    row = next(line.split() for line in top if line.startswith(sid))
    assert row[1] == "local" and len(row) == 7
    assert run(daemon, "rm", sid).returncode == 0


def test_on_a_terminal_rich_draws_tables_and_the_live_top(daemon: DaemonProcess) -> None:
    sid = run(daemon, "create").stdout.strip()
    drawn = on_terminal(daemon, "ls")
    assert b"\x1b[1mID" in drawn and "─".encode() in drawn and sid.encode() in drawn
    live = on_terminal(daemon, "top", "--interval", "0.2", until=sid.encode(), times=3)
    assert b"\x1b[1A" in live  # redrawn in place, not scrolled
    assert live.rstrip().endswith(b"\x1b[?25h")  # Ctrl-C gives the cursor back
    assert b"Traceback" not in live
    assert run(daemon, "rm", sid).returncode == 0
