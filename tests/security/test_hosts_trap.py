"""A member's /etc/hosts as a trap for CreateNetwork: a FIFO (would block the
daemon's read forever), a huge sparse file (would balloon its memory), bytes that
are not UTF-8. The daemon reads at most 1 MiB of it and otherwise starts over."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

from computesdk import Client, ComputeSDKError, Sandbox
from conftest import DaemonProcess

HOSTS_MAX = 1 << 20


def _rss_hwm(d: DaemonProcess) -> int:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def _network(client: Client, members: dict[str, Sandbox]) -> str:
    name = f"hosts-{uuid.uuid4().hex[:8]}"
    # Bounded: a regression here is a hang, and the test must fail, not wedge.
    await asyncio.wait_for(client.networks.create(name, members), 60)
    return name


async def test_trap_hosts_files_neither_hang_nor_balloon_create_network(
    client: Client, daemon: DaemonProcess
) -> None:
    fifo = await client.create("local", template="python")
    sparse = await client.create("local", template="python")
    odd = await client.create("local", template="python")
    names: list[str] = []
    try:
        r = await fifo.exec("rm /etc/hosts && mkfifo /etc/hosts && test -p /etc/hosts")
        assert r.exit_code == 0, r.stderr
        r = await sparse.exec("truncate -s 512M /etc/hosts && stat -c %s /etc/hosts")
        assert r.stdout.strip() == str(512 << 20)
        # Not UTF-8, and just under the cap: kept as it is, byte for byte.
        await odd.files.write("/etc/hosts", b"127.0.0.1\tlocalhost\n# caf\xe9\n")
        await odd.exec(f"head -c {HOSTS_MAX - 4096} /dev/zero | tr '\\0' '#' >> /etc/hosts")
        before = _rss_hwm(daemon)

        names.append(await _network(client, {"fifo": fifo, "sparse": sparse, "odd": odd}))

        assert _rss_hwm(daemon) - before < 256 << 20  # it read 512 MiB before the fix
        for sb in (fifo, sparse):
            r = await sb.exec("test -f /etc/hosts && cat /etc/hosts")
            assert r.exit_code == 0, r.stderr
            lines = r.stdout.splitlines()
            assert lines[0] == "127.0.0.1\tlocalhost"
            assert "\tfifo" in r.stdout and "\tsparse" in r.stdout and "\todd" in r.stdout
            assert len(r.stdout) < 1000
        data = await odd.files.read("/etc/hosts")
        assert isinstance(data, bytes)
        assert data.startswith(b"127.0.0.1\tlocalhost\n# caf\xe9\n###")
        assert b"\todd\n" in data and len(data) > HOSTS_MAX - 4096

        # Grown past the cap, it is replaced on the next change (here: the delete).
        await odd.exec(f"head -c {HOSTS_MAX + 10} /dev/zero | tr '\\0' '#' >> /etc/hosts")
        await asyncio.wait_for(client.networks.delete(names.pop()), 60)
        r = await odd.exec("cat /etc/hosts")
        assert r.stdout == "127.0.0.1\tlocalhost\n"
    finally:
        for n in names:
            with contextlib.suppress(ComputeSDKError):
                await client.networks.delete(n)
        for sb in (fifo, sparse, odd):
            with contextlib.suppress(ComputeSDKError):
                await sb.destroy()
