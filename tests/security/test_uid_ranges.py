"""No two sandboxes share a host uid: per-user kernel limits are per sandbox, and
each sandbox's processes and files are a distinct host user's."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3

from computesdk import Client
from conftest import new_daemon

HOLD_INOTIFY = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while True:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
print(len(fds), flush=True)
time.sleep(120)
"""

ONE_INOTIFY = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("ok" if libc.inotify_init1(0) >= 0 else "EMFILE/" + str(ctypes.get_errno()))
"""

MQUEUE_FILL = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
made = 0
for i in range(64):
    a = Attr(0, 10, 8192, 0)
    if libc.mq_open(f"/q{i}".encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(a)) < 0:
        break
    made += 1
print(made)
"""


def host_uid_of(pid_in_host: int) -> int:
    with open(f"/proc/{pid_in_host}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


async def test_each_sandbox_has_its_own_host_uid_range(client: Client) -> None:
    a, b = await asyncio.gather(client.create("local"), client.create("local"))
    try:
        maps = await asyncio.gather(*(s.exec("cat /proc/self/uid_map") for s in (a, b)))
        (inside_a, host_a, size_a), (inside_b, host_b, size_b) = (
            tuple(map(int, m.stdout.split())) for m in maps
        )
        assert inside_a == inside_b == 0 and size_a == size_b == 65536
        assert abs(host_a - host_b) >= 65536, (host_a, host_b)
        # Not the storage range either: on-disk owners are no sandbox's uids.
        assert min(host_a, host_b) >= 165536
        # The agents (PID 1 of each) run as each sandbox's own host root.
        uids = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "agent":
                        uids.add(host_uid_of(int(pid)))
            except OSError:
                continue
        assert {host_a, host_b} <= uids
    finally:
        await asyncio.gather(a.destroy(), b.destroy())


async def test_per_user_kernel_limits_are_per_sandbox(client: Client) -> None:
    a, b = await asyncio.gather(client.create("local"), client.create("local"))
    try:
        holder = await a.start_process(["python3", "-c", HOLD_INOTIFY])
        out = b""
        async for chunk in a.process(holder.id).attach(stdout_offset=0):
            out += chunk.data
            if out.endswith(b"\n"):
                break
        assert int(out) >= 64, out  # A took every inotify instance its user may have
        assert (await a.exec(["python3", "-c", ONE_INOTIFY])).stdout.startswith("EMFILE")
        r = await b.exec(["python3", "-c", ONE_INOTIFY])
        assert r.stdout == "ok\n", r.stdout + r.stderr
        # POSIX mqueue bytes (RLIMIT_MSGQUEUE) are counted per user too.
        filled = int((await a.exec(["python3", "-c", MQUEUE_FILL])).stdout)
        assert filled < 64
        assert int((await b.exec(["python3", "-c", MQUEUE_FILL])).stdout) == filled
        await a.process(holder.id).kill()
    finally:
        await asyncio.gather(a.destroy(), b.destroy())


async def test_two_daemons_on_one_host_never_share_a_range(
    client: Client, private: tuple[object, Client]
) -> None:
    _, other = private
    ours = await client.create("local")
    theirs = await other.create("local")
    try:
        maps = [(await s.exec("cat /proc/self/uid_map")).stdout.split()[1] for s in (ours, theirs)]
        assert maps[0] != maps[1], maps
    finally:
        await asyncio.gather(ours.destroy(), theirs.destroy())


async def test_a_sandbox_of_an_earlier_version_keeps_its_files_across_the_upgrade() -> None:
    """A record without a uid range is what the previous version left: the new
    daemon cannot reach its agent the old way, so it boots it anew on its disk in
    a range of its own instead of losing it."""
    d = new_daemon(on_exit="keep")
    d.start()
    try:
        c = await Client.connect(socket=d.socket)
        sb = await c.create("local")
        await sb.exec("echo survives > /workspace/f")
        await c.close()
        d.kill9()
        with sqlite3.connect(d.state / "state.db") as db:
            (raw,) = db.execute(
                "SELECT provider_data FROM sandboxes WHERE id=?", (sb.id,)
            ).fetchone()
            data = json.loads(raw)
            del data["uid_base"]
            db.execute("UPDATE sandboxes SET provider_data=? WHERE id=?", (json.dumps(data), sb.id))
        d.start()
        c = await Client.connect(socket=d.socket)
        again = await c.get(sb.id)
        assert again.state == "running"
        r = await again.exec("cat /workspace/f; cat /proc/self/uid_map")
        assert r.stdout.startswith("survives\n"), r.stdout + r.stderr
        assert any(
            line.get("event", "").startswith("restarting a sandbox made by an earlier")
            for line in d.log_lines()
        )
        await again.destroy()
        await c.close()
    finally:
        d.cleanup()
