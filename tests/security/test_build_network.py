"""Template builds run on a NAT'd network of their own: package mirrors stay
reachable, the host's own services (on 127.0.0.1 or any host address) do not."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from computesdk import BuildLog, Client
from conftest import DaemonProcess

PROBE = r"""
import socket, struct, sys
targets = sys.argv[2:]
port = int(sys.argv[1])
with open("/proc/net/route") as f:
    for line in f.readlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            targets.append(socket.inet_ntoa(struct.pack("<I", int(fields[2], 16))))
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen()
socket.create_connection(own.getsockname(), timeout=2).close()
print("LOOPBACK ok")
for host in targets:
    try:
        s = socket.create_connection((host, port), timeout=2)
        print("REACHED", host, s.recv(64))
    except OSError as e:
        print("BLOCKED", host, e.errno)
"""


class HostService:
    """A TCP service on every host address (0.0.0.0), counting who reached it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.hits.append(peer[0])
            with conn:
                conn.sendall(b"host-service\n")

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def host_service() -> Iterator[HostService]:
    svc = HostService()
    try:
        yield svc
    finally:
        svc.close()


def host_addresses() -> list[str]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    addrs = [line.split()[3].split("/")[0] for line in out.splitlines()]
    assert "127.0.0.1" in addrs and len(addrs) >= 2, addrs  # loopback and a primary address
    return addrs


def build_netns(d: DaemonProcess) -> list[str]:
    return [
        str(line["netns"])
        for line in d.log_lines()
        if line.get("event") == "build network up" and "netns" in line
    ]


def gone(netns: str) -> bool:
    link = subprocess.run(["ip", "link", "show", netns], capture_output=True)
    return not Path("/run/netns", netns).exists() and link.returncode != 0


async def test_a_build_installs_packages_but_cannot_reach_the_host(
    private: tuple[DaemonProcess, Client], host_service: HostService
) -> None:
    d, c = private
    addrs = host_addresses()
    probe = "python3 -c '{}' {} {}".format(
        PROBE.replace("'", "'\"'\"'"), host_service.port, " ".join(addrs)
    )
    r = await c.templates.build("net-probe", packages=["tree"], setup=[probe])
    assert "LOOPBACK ok" in r.log  # the build's own loopback works
    results = [line for line in r.log if line.startswith(("REACHED", "BLOCKED"))]
    # Every host address, the build's own gateway (a host address) included.
    assert len(results) == len(addrs) + 1, r.log
    assert all(line.startswith("BLOCKED") for line in results), results
    assert host_service.hits == []
    # Yet the mirror was reachable: the package is in the template.
    sb = await c.create("local", template="net-probe")
    out = await sb.exec("tree --version")
    assert out.exit_code == 0 and out.stdout.startswith("tree v")
    await sb.destroy()
    # The build's namespace, veth and address are gone with it.
    names = build_netns(d)
    assert len(names) == 1
    assert gone(names[0])


async def test_a_crashed_build_leaves_no_network_behind(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    stream = c.templates.build_stream("net-crash", setup=["echo started; sleep 60"])
    async for event in stream:
        if isinstance(event, BuildLog) and event.line == "started":
            break
    names = build_netns(d)
    assert len(names) == 1 and not gone(names[0])
    d.kill9()
    with contextlib.suppress(Exception):
        await stream.aclose()  # type: ignore[attr-defined]
    assert not gone(names[0])
    d.start()
    for _ in range(100):
        if gone(names[0]):
            break
        await asyncio.sleep(0.1)
    assert gone(names[0])


HOLD_INOTIFY = (
    "python3 -c 'import ctypes, time; l = ctypes.CDLL(None)\n"
    "n = 0\nwhile l.inotify_init1(0) >= 0: n += 1\n"
    'print("held", n, flush=True); time.sleep(30)\''
)


async def test_a_build_step_draws_on_no_per_user_limit_of_host_root(
    private: tuple[DaemonProcess, Client],
) -> None:
    """A step that takes every inotify instance it may have while it runs: the
    count is charged to the build's own uid, not to host root's (which the
    daemon and the host's services share)."""
    _, c = private
    libc = ctypes.CDLL(None, use_errno=True)
    stream = c.templates.build_stream("inotify-hog", setup=[HOLD_INOTIFY])
    try:
        async for event in stream:
            if isinstance(event, BuildLog) and event.line.startswith("held"):
                assert int(event.line.split()[1]) > 0
                fd = libc.inotify_init1(0)
                assert fd >= 0, f"host root has no inotify instance left: {ctypes.get_errno()}"
                os.close(fd)
                break
        else:
            raise AssertionError("the step never reported")
    finally:
        await stream.aclose()
