"""Attacks on the daemon's channels into a sandbox: the agent's control socket and
the channel socket. Neither can be redirected, replaced or reached by path from
inside, and PID 1 cannot be traced."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from pathlib import Path

from computesdk import Client, Sandbox
from conftest import DaemonProcess

AGENT = "/.computesdk/agent"

# Run inside a sandbox: every trick the attacker had against the old layout,
# where the agent's socket sat in a directory the sandbox could write.
REDIRECT = r"""
set +e
for d in /.computesdk/run /.computesdk/ctl /.computesdk; do
  for name in agent.sock mq.sock; do
    rm -rf "$d/$name" 2>/dev/null
    ln -sf "/proc/1/root/$name" "$d/$name" 2>/dev/null
    ln -sf "/var/run/other/$name" "$d/$name.tmp" 2>/dev/null
    mv -f "$d/$name.tmp" "$d/$name" 2>/dev/null
  done
done
echo done
"""


async def test_no_socket_of_the_agent_is_reachable_from_inside(sandbox: Sandbox) -> None:
    # The control socket is inherited by init as an fd; no path to it exists inside.
    r = await sandbox.exec(
        "find / -xdev -type s 2>/dev/null; find /.computesdk -type s", check=False
    )
    assert r.stdout.strip() == "", r.stdout
    r = await sandbox.exec("ls -l /proc/1/fd 2>&1; readlink /proc/1/fd/3 2>&1; echo rc=$?")
    assert "socket:" not in r.stdout and "Permission denied" in r.stdout


async def test_replacing_sockets_inside_does_not_redirect_exec(client: Client) -> None:
    a = await client.create("local")
    b = await client.create("local")
    try:
        await b.files.write("/workspace/secret", b"secret-of-b")
        await a.files.write("/workspace/secret", b"secret-of-a")
        r = await a.exec(["sh", "-c", REDIRECT])
        assert r.stdout.endswith("done\n")
        # ctl/ is read-only inside: nothing in it could be swapped.
        r = await a.exec("touch /.computesdk/ctl/x 2>&1; echo rc=$?")
        assert "Read-only file system" in r.stdout
        for _ in range(3):
            r = await a.exec("cat /workspace/secret; hostname; cat /proc/1/comm")
            assert r.stdout.startswith("secret-of-a"), r.stdout
            assert "secret-of-b" not in r.stdout
        assert (await b.exec("cat /workspace/secret")).stdout == "secret-of-b"
    finally:
        await asyncio.gather(a.destroy(), b.destroy())


async def test_channel_socket_cannot_be_swapped_for_a_link(
    client: Client, daemon: DaemonProcess
) -> None:
    """A racer inside replaces mq.sock with a symlink to a root-owned 0600 host
    file while the daemon (re)binds it; the host file keeps its mode."""
    target = Path("/var/tmp") / f"computesdk-trap-{uuid.uuid4().hex}"
    target.write_text("host secret")
    os.chmod(target, 0o600)
    sb = await client.create("local")
    racer = await sb.start_process(
        [
            "sh",
            "-c",
            f"while :; do ln -sf {target} /.computesdk/ctl/mq.sock.x 2>/dev/null;"
            " mv -f /.computesdk/ctl/mq.sock.x /.computesdk/ctl/mq.sock 2>/dev/null; done",
        ]
    )
    try:
        for i in range(10):
            name = f"race-{uuid.uuid4().hex[:8]}-{i}"
            await client.channels.connect(name, [sb, "me"])
            await client.channels.delete(name)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert target.stat().st_uid == 0
        # The real socket still works, and it names this sandbox as the sender.
        await client.channels.connect("after-race", [sb, "me"])
        r = await sb.exec([AGENT, "mq", "send", "after-race", "me", "hi"])
        assert r.exit_code == 0, r.stderr
        async for m in client.channels.subscribe("after-race", "me"):
            assert (m.sender, m.text) == (sb.id, "hi")
            break
        await client.channels.delete("after-race")
    finally:
        await sb.process(racer.id).kill()
        await sb.destroy()
        target.unlink()


PTRACE = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
for req in (PTRACE_ATTACH, PTRACE_SEIZE):
    rc = libc.ptrace(req, 1, 0, 0)
    print("ptrace", req, rc, errno.errorcode.get(ctypes.get_errno(), "?"))
for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fd/0", "/proc/1/root/."):
    try:
        if "/fd/" in path:
            os.readlink(path)
        else:
            open(path, "rb").read(1)
        print("open", path, "ok")
    except OSError as exc:
        print("open", path, errno.errorcode[exc.errno])
"""


async def test_pid1_cannot_be_traced_or_read(sandbox: Sandbox) -> None:
    r = await sandbox.exec(["python3", "-c", PTRACE])
    lines = r.stdout.splitlines()
    assert lines[0] == "ptrace 16 -1 EPERM", r.stdout
    assert lines[1] == "ptrace 16902 -1 EPERM", r.stdout
    assert all(line.endswith(("EACCES", "EPERM")) for line in lines[2:]), r.stdout
    # A child of the agent is traceable by its siblings as usual (gdb, strace work).
    r = await sandbox.exec(
        ["python3", "-c", "import os,sys; p=os.fork()\nif p==0: os.execvp('sleep',['sleep','5'])\n"
         "print(open(f'/proc/{p}/environ','rb').read() is not None); os.kill(p, 9)"]
    )  # fmt: skip
    assert r.stdout.strip() == "True", r.stderr
