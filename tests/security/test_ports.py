"""An unprivileged host user against an exposed port: ExposePort listens on the
host's 127.0.0.1, which every local user can reach; only root and the daemon's
own user get through to the sandbox."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from computesdk import Sandbox
from conftest import DaemonProcess

BANNER_SERVER = (
    "import socket\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', 8000)); s.listen(16)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'banner from the sandbox\\n'); c.close()\n"
)

# Connects (over AF_INET, or AF_INET6 to a v4-mapped address, whose socket shows
# in /proc/net/tcp6) and reports what the first read gives.
CLIENT = r"""
import json, socket, sys
port, family = int(sys.argv[1]), sys.argv[2]
if family == "v6":
    s = socket.socket(socket.AF_INET6)
    s.settimeout(20)
    s.connect(("::ffff:127.0.0.1", port))
else:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
try:
    data = s.recv(100)
    print(json.dumps({"data": data.decode()}))
except ConnectionResetError:
    print(json.dumps({"data": "", "reset": True}))
"""


def connect_as(port: int, family: str, uid: int | None) -> dict[str, object]:
    prefix = [] if uid is None else [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
    ]  # fmt: skip
    r = subprocess.run(
        [*prefix, sys.executable, "-c", CLIENT, str(port), family],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert isinstance(out, dict)
    return out


async def _until_served(url_port: int) -> None:
    for _ in range(200):
        out = await asyncio.to_thread(connect_as, url_port, "v4", None)
        if out["data"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the exposed port never served root")


async def test_only_root_and_the_daemon_user_reach_an_exposed_port(
    sandbox: Sandbox, daemon: DaemonProcess
) -> None:
    await sandbox.start_process(["python3", "-c", BANNER_SERVER])
    url = ""
    for _ in range(200):  # until the server listens
        try:
            url = await sandbox.get_url(8000)
            break
        except Exception:
            await asyncio.sleep(0.05)
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])

    await _until_served(port)
    for family in ("v4", "v6"):
        assert await asyncio.to_thread(connect_as, port, family, None) == {
            "data": "banner from the sandbox\n"
        }
        # nobody: connected, then closed before a byte of the sandbox's reaches it.
        out = await asyncio.to_thread(connect_as, port, family, 65534)
        assert out["data"] == "", (family, out)

    refusals = [
        line
        for line in daemon.log_lines()
        if line.get("event") == "refused a connection to an exposed port"
        and line.get("sandbox_id") == sandbox.id
    ]
    assert [line.get("peer_uid") for line in refusals] == [65534, 65534]
