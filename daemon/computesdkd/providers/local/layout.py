"""Where the local provider keeps its sandboxes on the host, and its set-up at start.

Layout of a sandbox (every directory 0700; nothing a host user can traverse):
  <store>/sandboxes/<id>/      root's: the bundle
    disk.img   sparse ext4 image: its size is the sandbox's disk limit
    disk/      the image, mounted nosuid,nodev; the overlay's upper and work dirs
    config.json, agent.log, init.pid
  <runtime>/<id>/              the sandbox root's (runc's init must traverse it)
    rootfs/    overlayfs, nosuid,nodev: the template's layers + the upper layer
    ctl/       root's, bound read-only at /.computesdk/ctl (the channel socket)
  <runtime>/agents/<id>.sock   root's: the agent's control socket, bound by the
                               daemon and inherited by init as fd 3; the sandbox
                               has no path to it, so it cannot be swapped
  <runtime>/builds/            <store>/builds/ bound here: a template build's
                               root and binds, which its runc init must reach

Nothing the unprivileged init needs is under the state dir's path, so that dir
may sit in a private (0700) directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from computesdkd.domain.model import Sandbox
from computesdkd.providers.common.agent import Agent
from computesdkd.providers.local import host, idmap, storage
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.support import logs

log = logs.get(__name__)

RUNTIME_ROOT = Path("/run/computesdk-sandboxes")
SANDBOX_PREFIX = "sbx-"  # the daemon's sandbox ids; what else is in the dirs is not one
STORE_DIRS = ("sandboxes", "snapshots", "volumes", "cache", "tmp")


@dataclass
class Layout:
    """The provider's dirs and uid slots on this host. One object, shared by every
    part of the provider; start() fills it in (until then the paths are empty
    placeholders, and nothing found through them is this daemon's)."""

    state: Path = Path()  # <state dir>/local
    store: Path = Path()
    runtime: Path = RUNTIME_ROOT
    builds: Path = Path()  # <runtime>/builds: the store's builds/, bound there
    reflink: bool = False
    slots: idmap.Slots = field(default_factory=lambda: idmap.Slots(Path(), RUNTIME_ROOT, ""))

    @property
    def runc_root(self) -> Path:
        return self.state / "runc"

    def runc(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.runc_root), *args]

    def paths(self, sandbox: Sandbox) -> tuple[Path, Path]:
        """(bundle, runtime dir), also for a record that a create killed before its
        provider_data was saved names neither."""
        data = sandbox.provider_data
        bundle = Path(data.get("bundle") or self.store / "sandboxes" / sandbox.id)
        runtime = data.get("runtime") or (data.get("bundle") or self.runtime / sandbox.id)
        return bundle, Path(runtime)

    def agent_socket(self, sandbox_id: str) -> Path:
        return self.runtime / "agents" / f"{sandbox_id}.sock"

    def agent(self, sandbox_id: str) -> Agent:
        return Agent(self.agent_socket(sandbox_id))

    async def prepare(self, state_dir: Path) -> None:
        """Makes (or finds, after a restart) the state dir, the store and the
        runtime dir, and opens the host-wide uid slots."""
        self.state = state_dir / "local"
        self.state.mkdir(parents=True, exist_ok=True)
        # Traversable (a build's runc init must reach its root in the store), not
        # listable; everything with content below is 0700.
        os.chmod(self.state, 0o711)
        self.store, self.reflink = await asyncio.to_thread(storage.ensure_store, self.state)
        for sub in STORE_DIRS:
            (self.store / sub).mkdir(exist_ok=True)
            os.chmod(self.store / sub, 0o700)
        # What the sandbox's unprivileged init must reach (its root mount, the agent
        # binary, its ctl dir) lives under /run, whose parents anyone may traverse, so
        # the state dir may sit under a private directory (a mktemp dir, /root).
        key = hashlib.sha256(str(self.state.resolve()).encode()).hexdigest()[:12]
        self.runtime = RUNTIME_ROOT / key
        (self.runtime / "agents").mkdir(parents=True, exist_ok=True)
        for d, mode in ((RUNTIME_ROOT, 0o711), (self.runtime, 0o711)):
            os.chmod(d, mode)
        os.chmod(self.runtime / "agents", 0o700)
        # A build's runc init, too, must reach its root and binds; their bytes stay
        # on the store's disk, seen through a bind mount under /run.
        self.builds = self.runtime / "builds"
        await asyncio.to_thread(_bind_dir, self.store / "builds", self.builds)
        leases = RUNTIME_ROOT / "uid-slots"  # host-wide: every daemon's sandboxes
        leases.mkdir(mode=0o700, exist_ok=True)
        os.chmod(leases, 0o700)
        self.slots = idmap.Slots(leases, RUNTIME_ROOT, key)

    def release(self) -> None:
        """At a clean stop: the builds bind goes (the next start binds again), so a
        state dir removed after the daemon stops leaves no mount in /run holding
        its store's disk."""
        if self.builds != Path():
            with contextlib.suppress(OSError):
                host.umount(str(self.builds))

    def install_agent(self, binary: Path) -> Path:
        """A copy of the agent in the runtime dir, where every sandbox's init can
        reach it; returns its path."""
        copy = self.runtime / "computesdk-agent"
        tmp = self.runtime / f".agent-{os.getpid()}"
        shutil.copyfile(binary, tmp)
        os.chmod(tmp, 0o755)
        tmp.rename(copy)  # running sandboxes keep the inode they mounted
        return copy


def agent_binary(env: Mapping[str, str]) -> Path:
    """The sandbox agent: COMPUTESDK_AGENT, else the one setup.sh builds."""
    path = env.get("COMPUTESDK_AGENT")
    if path:
        return Path(path)
    return Path(__file__).resolve().parents[2] / "_bin" / "computesdk-agent"


def _bind_dir(source: Path, target: Path) -> None:
    for d in (source, target):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o711)  # traversable, not listable; each build's dir is 0700
    if storage.is_mountpoint(target):  # after a crash it still is
        here, there = os.stat(source), os.stat(target)
        if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
            return
        # The bind of a store that is gone (the state dir removed and made again at
        # this path): builds would run there and commit from here (FileNotFoundError),
        # and it would keep the old store's disk alive.
        host.umount(str(target))
    host.mount(str(source), str(target), "", "", host.MS_BIND)


def needs_root() -> str:
    if os.geteuid() == 0:
        return ""
    return (
        f"it needs root, and computesdkd runs as uid {os.geteuid()} (it runs runc and "
        "sets up overlayfs, cgroups, loop devices and network namespaces): run "
        "computesdkd as root, or create on another provider such as docker"
    )


def unavailable(base: Path, agent: Path) -> str:
    """Why the provider cannot run on this host; empty when it can."""
    if needs_root():
        return needs_root()
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install -y runc)"
    if not rootfs_mod.is_built():
        return (
            f"the base root filesystem is not built at {base} "
            "(python -m computesdkd.providers.local.rootfs)"
        )
    if not agent.is_file():
        return f"the sandbox agent is not built at {agent} (scripts/setup.sh)"
    return ""


def private_images(image_dir: Path) -> None:
    """The base is owned by the storage uid and holds its setuid files (su, mount):
    no host user may reach them, whatever the umask made of the dir."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(image_dir, 0o700)


def warn_subuid_overlap() -> None:
    """A host user whose /etc/subuid range covers the storage or sandbox uids can
    become them (newuidmap, rootless containers): say so at start."""
    ours = [
        (rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT + rootfs_mod.ID_RANGE),
        (idmap.SLOT_BASE, idmap.host_base(idmap.MAX_SLOTS)),
    ]
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                user, _, rest = line.partition(":")
                start, _, count = rest.partition(":")
                if not (start.isdigit() and count.isdigit()):
                    continue
                lo, hi = int(start), int(start) + int(count)
                if any(lo < b and a < hi for a, b in ours):
                    log.warning(
                        "a subordinate id range overlaps the sandboxes' host ids",
                        file=path,
                        user=user,
                        start=lo,
                        count=hi - lo,
                    )
