"""Sandboxed code cannot reach the host, the daemon or other sandboxes."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from computesdk import Client, Resources, Sandbox
from conftest import DaemonProcess


async def test_host_processes_are_invisible(sandbox: Sandbox) -> None:
    r = await sandbox.exec("for p in /proc/[0-9]*; do cat $p/cmdline; echo; done")
    assert "computesdkd" not in r.stdout and "pytest" not in r.stdout
    pids = await sandbox.exec("ls -d /proc/[0-9]* | wc -l")
    assert int(pids.stdout) < 10
    assert (
        await sandbox.exec("kill -0 1 && echo pid1-is-agent; cat /proc/1/comm")
    ).stdout.endswith("agent\n")


async def test_host_files_state_dir_and_root_are_invisible(
    sandbox: Sandbox, daemon: DaemonProcess
) -> None:
    marker = Path("/root") / f"computesdk-marker-{uuid.uuid4().hex}"
    marker.write_text("host secret")
    try:
        for path in (marker, daemon.state, daemon.state / "state.db", daemon.socket):
            r = await sandbox.exec(["test", "-e", str(path)], check=False)
            assert r.exit_code == 1, f"{path} is visible inside the sandbox"
        r = await sandbox.exec("grep -c . /etc/shadow; ls /root | wc -l")
        assert "computesdk-marker" not in r.stdout
    finally:
        marker.unlink()


async def test_sandboxes_cannot_see_each_other(client: Client) -> None:
    a = await client.create()
    b = await client.create()
    try:
        await a.exec("echo secret-of-a > /workspace/secret; sleep 30 &")
        r = await b.exec("cat /workspace/secret; ps -e -o args")
        assert "secret-of-a" not in r.stdout and "sleep 30" not in r.stdout
        assert not await b.files.exists("/workspace/secret")
    finally:
        await asyncio.gather(a.destroy(), b.destroy())


async def test_no_network_but_loopback(sandbox: Sandbox) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"host-server\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        probe = (
            "import socket\n"
            f"try:\n  s=socket.create_connection(('127.0.0.1',{port}),timeout=2)\n"
            "  print('CONNECTED', s.recv(64))\n"
            "except OSError as e:\n  print('refused', e.errno)\n"
        )
        r = await sandbox.exec(["python3", "-c", probe])
        assert r.stdout.startswith("refused"), r.stdout
        ifaces = await sandbox.exec("ls /sys/class/net")
        assert ifaces.stdout.split() == ["lo"]
        # Loopback inside the sandbox works, for servers the sandbox runs itself.
        inner = await sandbox.exec(
            [
                "python3",
                "-c",
                "import socket;s=socket.socket();s.bind(('127.0.0.1',0));"
                "s.listen();c=socket.create_connection(s.getsockname());"
                "print('ok')",
            ]
        )
        assert inner.stdout == "ok\n"
    finally:
        server.close()
        await server.wait_closed()


async def test_fork_bomb_hits_the_pids_limit(client: Client) -> None:
    victim = await client.create(resources=Resources(pids_limit=64))
    bystander = await client.create()
    try:
        await victim.exec("bomb() { bomb | bomb & }; bomb; sleep 2", timeout_ms=4000, check=False)
        events = Path("/sys/fs/cgroup/pids/computesdk") / victim.id / "pids.events"
        assert int(events.read_text().split()[1]) > 0, "the pids limit was never hit"
        st = await victim.get_status()
        assert st.process_count <= 64
        assert (await bystander.exec("echo alive")).stdout == "alive\n"
        assert (await client.get(bystander.id)).state == "running"
    finally:
        await asyncio.gather(victim.destroy(), bystander.destroy())


async def test_memory_hog_is_oom_killed_and_reported(client: Client) -> None:
    sb = await client.create(resources=Resources(memory_mb=64))
    try:
        seen: list[str] = []
        sb.on("out-of-memory", lambda ev: seen.append(ev.type))
        r = await sb.exec(
            ["python3", "-c", "x=[]\nwhile True: x.append(bytearray(8<<20))"], check=False
        )
        assert r.signal == 9 and r.oom_killed
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen == ["out-of-memory"]
        # The sandbox itself lives on.
        assert (await sb.exec("echo still-here")).stdout == "still-here\n"
    finally:
        await sb.destroy()


async def test_cpu_and_memory_limits_are_in_the_cgroup(client: Client) -> None:
    async with await client.create(resources=Resources(cpu_cores=0.5, memory_mb=128)) as sb:
        cg = Path("/sys/fs/cgroup")
        assert int((cg / "cpu/computesdk" / sb.id / "cpu.cfs_quota_us").read_text()) == 50_000
        limit = int((cg / "memory/computesdk" / sb.id / "memory.limit_in_bytes").read_text())
        assert limit == 128 * 2**20


async def test_root_owns_its_system_but_nothing_more(sandbox: Sandbox) -> None:
    r = await sandbox.exec(
        "echo changed >> /etc/motd && touch /usr/local/bin/mine && stat -c %u /usr && id -u"
    )
    assert r.exit_code == 0 and r.stdout == "0\n0\n"
    status = (await sandbox.exec("cat /proc/self/status")).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    cap_sys_admin = 1 << 21
    assert int(fields["CapEff"], 16) & cap_sys_admin == 0
    for cmd in ("unshare -U true", "mount -t tmpfs x /mnt", "cat /proc/kcore | head -c1 | wc -c"):
        out = await sandbox.exec(cmd, check=False)
        assert out.exit_code != 0 or out.stdout.strip() == "0", cmd


async def test_host_view_of_sandbox_files_is_owned_by_the_shifted_root(
    sandbox: Sandbox, daemon: DaemonProcess
) -> None:
    await sandbox.exec("echo x > /workspace/made-inside")
    bundle = daemon.state / "local" / "store" / "sandboxes" / sandbox.id
    upper = bundle / "disk" / "upper" / "workspace"
    st = os.stat(upper / "made-inside")
    assert st.st_uid == 100_000  # an unprivileged uid on the host, not host root
