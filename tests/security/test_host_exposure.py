"""An unprivileged user on the host against everything the daemon keeps there: the
runtime and state dirs, the sockets, and the mounts of sandbox content."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from hoststate import runtime_dir

from computesdk import Client
from computesdkd.providers.local import rootfs
from conftest import DaemonProcess

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30)


def mount_options(prefix: str) -> dict[str, set[str]]:
    out = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4].startswith(prefix):
            out[fields[4]] = set(fields[5].split(","))
    return out


async def test_a_host_user_reaches_no_sandbox_file_socket_or_dir(
    client: Client, daemon: DaemonProcess
) -> None:
    name = f"v-{uuid.uuid4().hex[:8]}"
    await client.volumes.create(name, size_mb=16)
    sb = await client.create("local", volumes=[{"name": name, "mount_path": "/data"}])
    try:
        await sb.exec(
            "echo sandbox-secret > /workspace/world-readable && chmod 644 /workspace/*"
            " && echo vol-secret > /data/v && chmod 644 /data/v"
            # A setuid copy of a shell, made by the sandbox's root.
            " && cp /bin/sh /workspace/suid-sh && chmod 4755 /workspace/suid-sh"
        )
        rt = runtime_dir(daemon)
        store = daemon.state / "local" / "store"
        bundle = store / "sandboxes" / sb.id
        targets = [
            rt / sb.id / "rootfs" / "workspace" / "world-readable",
            rt / sb.id / "rootfs" / "workspace" / "suid-sh",
            rt / sb.id / "volumes" / "0" / "v",
            bundle / "disk" / "upper" / "workspace" / "world-readable",
            bundle / "config.json",
            store / "volumes" / name / "data" / "v",
        ]
        for path in targets:
            assert path.parent.exists() or "volumes" in str(path), path  # root sees them
            r = as_nobody("cat", str(path))
            assert r.returncode != 0 and "secret" not in r.stdout, (path, r.stdout)
            assert "Permission denied" in r.stderr, (path, r.stderr)
        private = [rt / sb.id, bundle, Path("/var/lib/computesdk/images")]
        private += [store / d for d in ("sandboxes", "snapshots", "volumes", "tmp", "cache")]
        private += [store / d for d in ("layers", "templates", "blobs")]
        for d in private:
            assert d.is_dir(), d
            r = as_nobody("ls", str(d))
            assert r.returncode != 0, (d, r.stdout)
        # The storage uid's setuid files in the base (su, mount) are out of reach.
        # (through sh: setpriv itself resolves its program before it drops root)
        r = as_nobody("sh", "-c", f"{rootfs.base_path()}/usr/bin/su -c id")
        assert r.returncode != 0 and "Permission denied" in r.stderr
        # Planting a file into the sandbox from the host side.
        r = as_nobody("touch", str(rt / sb.id / "rootfs" / "workspace" / "planted"))
        assert r.returncode != 0
        assert not await sb.files.exists("/workspace/planted")
        # The sockets: the agent's (never inside a sandbox) and the daemon's.
        connect = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
        agent_socket = rt / "agents" / f"{sb.id}.sock"
        assert agent_socket.exists()
        r = as_nobody("python3", "-c", connect, str(agent_socket))
        assert r.returncode != 0 and "Permission" in r.stderr
        r = as_nobody("python3", "-c", connect, str(daemon.socket))
        assert r.returncode != 0
        # Every host-side mount of sandbox content is nosuid,nodev.
        mounts = {**mount_options(str(rt)), **mount_options(str(store))}
        content = [m for m in mounts if m.endswith(("/rootfs", "/disk", "/data", "/volumes/0"))]
        assert any(m.endswith("/rootfs") for m in content) and any(
            m.endswith("/disk") for m in content
        ), mounts
        for m in content:
            assert {"nosuid", "nodev"} <= mounts[m], (m, mounts[m])
    finally:
        await sb.destroy()
        await client.volumes.delete(name)
