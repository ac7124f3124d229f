"""What a new user meets first: why a client cannot reach the daemon (no daemon,
a stale socket, a socket that is root's, a non-root user's default), a daemon that
cannot run sandboxes as the user it runs as, a second daemon on a busy socket, and
a state dir inside a private directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from computesdk import Client
from computesdk.errors import ComputeSDKError
from conftest import BIN, DaemonProcess

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _as_nobody(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTESDK_")}
    return subprocess.run(
        [*NOBODY, sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "HOME": "/nonexistent", **(env or {})},
        cwd="/",
    )


async def test_a_stale_socket_is_named_as_stale(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: what a killed daemon leaves
    with pytest.raises(ComputeSDKError) as e:
        await Client.connect(socket=path, timeout=30)
    assert e.value.reason == "DAEMON_UNREACHABLE"
    assert "stale socket" in e.value.message and str(path) in e.value.message


async def test_a_path_that_is_no_socket_is_named_as_such(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "file"):
        if path != tmp_path:
            path.write_text("")
        with pytest.raises(ComputeSDKError) as e:
            await Client.connect(socket=path)
        assert e.value.reason == "DAEMON_UNREACHABLE" and "is not a socket" in e.value.message


async def test_no_socket_says_not_running(tmp_path: Path) -> None:
    with pytest.raises(ComputeSDKError) as e:
        await Client.connect(socket=tmp_path / "none.sock")
    assert e.value.reason == "DAEMON_UNREACHABLE" and "not running" in e.value.message
    assert "the default for uid" not in e.value.message  # a path the caller named


def test_a_socket_the_user_may_not_use_is_named_as_a_permission_problem(
    daemon: DaemonProcess,
) -> None:
    r = _as_nobody("-m", "computesdk.cli", "--socket", str(daemon.socket), "ls")
    assert r.returncode != 0
    assert "SOCKET_PERMISSION_DENIED" in r.stderr and "uid 65534" in r.stderr, r.stderr
    assert "not running" not in r.stderr and "Traceback" not in r.stderr


def test_a_non_root_users_default_socket_is_explained() -> None:
    r = _as_nobody("-m", "computesdk.cli", "ls")
    assert r.returncode != 0
    assert "/tmp/computesdk-65534/" in r.stderr and "the default for uid 65534" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def nobody_daemon() -> Iterator[DaemonProcess]:
    root = Path(tempfile.mkdtemp(prefix="computesdk-nobody-", dir="/var/tmp"))
    os.chown(root, 65534, 65534)
    d = DaemonProcess(root)
    proc = subprocess.Popen(
        [
            *NOBODY,
            str(BIN / "computesdkd"),
            "--socket",
            str(d.socket),
            "--state-dir",
            str(d.state),
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    d.proc = proc
    try:
        for _ in range(600):
            if d.socket.exists() or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        assert d.socket.exists(), "the non-root daemon did not start"
        yield d
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


async def test_a_non_root_daemon_says_local_needs_root_and_makes_nothing(
    nobody_daemon: DaemonProcess,
) -> None:
    # Root may connect to any socket: the client side is not what is tested here.
    async with await Client.connect(socket=nobody_daemon.socket) as c:
        local = {p.name: p for p in await c.providers()}["local"]
        assert not local.available and "needs root" in local.unavailable_reason
        with pytest.raises(ComputeSDKError) as e:
            await c.create("local", template="python")
        assert e.value.reason == "PROVIDER_UNAVAILABLE"
        assert "needs root" in e.value.message and "uid 65534" in e.value.message
        # No event names a sandbox that never existed.
        seen = []

        async def watch() -> None:
            async for ev in c.events():
                seen.append(ev)

        task = asyncio.create_task(watch())
        await asyncio.sleep(1)
        task.cancel()
        assert [ev for ev in seen if ev.sandbox_id] == []


def test_a_second_daemon_on_a_busy_socket_says_so(daemon: DaemonProcess, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            str(BIN / "computesdkd"),
            "--socket",
            str(daemon.socket),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert f"another daemon is listening on {daemon.socket}" in r.stderr
    assert "Traceback" not in r.stderr and "excepthook" not in r.stderr
    assert daemon.socket.exists()  # the first one's socket is left alone
    # It stopped before setting anything up: no store of its own was mounted.
    mounts = Path("/proc/mounts").read_text()
    assert str(tmp_path) not in mounts


async def test_templates_build_with_the_state_dir_in_a_private_directory() -> None:
    root = Path(tempfile.mkdtemp(prefix="computesdk-private-", dir="/var/tmp"))
    assert (root.stat().st_mode & 0o777) == 0o700  # what mktemp -d makes
    d = DaemonProcess(root)
    d.start()
    try:
        async with await Client.connect(socket=d.socket) as c:
            await c.templates.build("private", base_image="template:base", setup=["echo ok > /x"])
            async with await c.create(template="private") as sb:
                assert (await sb.exec("cat /x")).stdout == "ok\n"
    finally:
        d.cleanup()
