"""The local provider: one runc container per sandbox.

Layout of a sandbox under <state>/sandboxes/<id>/:
  disk.img   sparse ext4 image: its size is the sandbox's disk limit
  disk/      the image, mounted; holds the overlay's upper and work dirs
  rootfs/    overlayfs: read-only Debian base + the sandbox's upper layer
  run/       bind-mounted at /.computesdk/run: the agent's socket and output
  config.json, agent.log
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ... import logs
from ...errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from ...model import (
    Command,
    FileInfo,
    Output,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    TemplateDefinition,
    TemplateInfo,
    Usage,
)
from .. import base
from ..base import ProcessRun, Provider, ProviderContext
from . import builder, host, layers, network, storage
from . import rootfs as rootfs_mod
from .agent import CLOSE, SIGNAL, STDIN, Agent, AgentConnection, AgentGone, process_info
from .fs import SandboxFS
from .host import mount as _mount
from .host import run as _run
from .host import umount as _umount
from .oci import runtime_spec
from .templates import TEMPLATES, process_env

log = logs.get(__name__)

NAME = "local"
DEFAULTS = Resources(cpu_cores=1.0, memory_mb=1024, disk_mb=2048, pids_limit=512)
MAX_CPU_CORES = float(os.cpu_count() or 1)
READY_TIMEOUT_S = 10.0
CGROUP_PARENT = "/computesdk"
RUNTIME_ROOT = Path("/run/computesdk-sandboxes")


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


async def _mount_image(image: Path, target: Path) -> None:
    """Loop-mounts an ext4 image with direct I/O: its writes reach the store without
    a second page cache, so memory is counted once and a snapshot (which must see
    them on the store) has nothing left to flush but the ext4's own dirty pages.
    The device autoclears: it goes with the unmount, even when a test or a crash
    skips ours."""
    flags = host.LO_FLAGS_AUTOCLEAR | host.LO_FLAGS_DIRECT_IO
    with host.loop_device(str(image), flags) as device:
        # noinit_itable: mkfs left the inode tables lazy; zeroing them in the
        # background would write tens of MB to the store for every new sandbox.
        _mount(device, str(target), "ext4", "noinit_itable", host.MS_NOSUID | host.MS_NODEV)


def _prepare_layers(disk: Path) -> None:
    """On a new disk: the overlay's upper (owned by the sandbox's root) and work dirs."""
    for sub in ("upper", "work"):
        (disk / sub).mkdir(exist_ok=True)
    os.chown(disk / "upper", rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
    with contextlib.suppress(OSError):
        (disk / "lost+found").rmdir()


async def _wait_exit(pid: int, timeout: float) -> None:
    """Waits for a process to end: its pidfd becomes readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ended, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _kill_init(pid: int, cgroup: str) -> bool:
    """SIGKILLs a sandbox's init without a `runc kill` process (~6 ms). The pidfd
    pins the process before its cgroup is checked, so a recycled pid is never hit."""
    if pid <= 0:
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            if not any(line.rstrip("\n").endswith(":" + cgroup) for line in f):
                return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _mounted_device(target: Path) -> str:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(target):
                return fields[0]
    return ""


def default_agent_binary() -> Path:
    env = os.environ.get("COMPUTESDK_AGENT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "_bin" / "computesdk-agent"


@base.register("local")
class LocalProvider(Provider):
    name = "local"
    capabilities = frozenset(
        {
            base.EXEC,
            base.EXEC_STDIN,
            base.EXEC_RESUME,
            base.BACKGROUND,
            base.SIGNALS,
            base.FILESYSTEM,
            base.EVENTS,
            base.RESOURCE_LIMITS,
            base.USAGE,
            base.OOM_EVENTS,
            base.NETWORK_ISOLATION,
            base.DISK_LIMIT,
            base.RESET,
            base.RESET_HARD,
            base.SHARED_NETWORK,
            base.PORT_FORWARD,
            base.SNAPSHOTS,
            base.RESTART,
            base.VOLUMES,
            base.TEMPLATE_BUILD,
        }
    )

    def __init__(self) -> None:
        self._state = Path()
        self._store = Path()
        self._reflink = False
        self._empty_lock: dict[int, asyncio.Lock] = {}
        self._base = rootfs_mod.base_path()
        self._agent_binary = default_agent_binary()
        self._agent_copy = self._agent_binary
        self._runtime = RUNTIME_ROOT
        self._unavailable = "not started"
        self._emit: Callable[..., object] | None = None
        self._templates: builder.TemplateStore | None = None

    # -------------------------------------------------------------- set-up

    async def start(self, ctx: ProviderContext) -> None:
        self._emit = ctx.emit
        self._state = ctx.state_dir / "local"
        self._state.mkdir(parents=True, exist_ok=True)
        self._store, self._reflink = await asyncio.to_thread(storage.ensure_store, self._state)
        for sub in ("sandboxes", "snapshots", "volumes"):
            (self._store / sub).mkdir(exist_ok=True)
        self._templates = builder.TemplateStore(self._store, self._base, self._runc, CGROUP_PARENT)
        await self._templates.clean_leftovers()
        # Volume mounts do not outlive a reboot of the host; put them back.
        for d in sorted((self._store / "volumes").iterdir()):
            if (d / "volume.img").exists():
                with contextlib.suppress(Internal, OSError):
                    await self._volume_mount(d.name)
        # What the sandbox's unprivileged init must reach (its root mount, the agent
        # and its run dir) lives under /run, whose parents anyone may traverse, so the
        # state dir may sit under a private directory (a mktemp dir, /root).
        key = hashlib.sha256(str(self._state.resolve()).encode()).hexdigest()[:12]
        self._runtime = RUNTIME_ROOT / key
        self._runtime.mkdir(parents=True, exist_ok=True)
        for d in (RUNTIME_ROOT, self._runtime):
            os.chmod(d, 0o711)
        self._unavailable = self._check()
        if not self._unavailable:
            self._agent_copy = self._runtime / "computesdk-agent"
            tmp = self._runtime / f".agent-{os.getpid()}"
            shutil.copyfile(self._agent_binary, tmp)
            os.chmod(tmp, 0o755)
            tmp.rename(self._agent_copy)  # running sandboxes keep the inode they mounted
        if self._unavailable:
            log.warning("local provider unavailable", why=self._unavailable)

    def _check(self) -> str:
        if os.geteuid() != 0:
            return "the local provider needs root (runc, overlayfs, cgroups)"
        if shutil.which("runc") is None:
            return "runc is not installed (apt-get install -y runc)"
        if not rootfs_mod.is_built():
            return (
                f"the base root filesystem is not built at {self._base} "
                "(python -m computesdkd.providers.local.rootfs)"
            )
        if not self._agent_binary.is_file():
            return f"the sandbox agent is not built at {self._agent_binary} (scripts/setup.sh)"
        return ""

    def availability(self) -> str:
        return self._unavailable

    def templates(self) -> list[str]:
        return self._templates.names() if self._templates else sorted(TEMPLATES)

    def template_infos(self) -> list[TemplateInfo]:
        if self._templates is None:
            return super().template_infos()
        return self._templates.infos()

    async def build_template(
        self, definition: TemplateDefinition, no_cache: bool, report: base.BuildReport
    ) -> tuple[TemplateInfo, bool]:
        self._require()
        assert self._templates is not None
        return await self._templates.build(definition, no_cache, report)

    async def delete_template(self, name: str) -> None:
        self._require()
        assert self._templates is not None
        await self._templates.delete(name)

    def _template(self, name: str) -> builder.Template:
        """The template a sandbox starts from; a clear error when it cannot."""
        tpl = self._templates.lookup(name) if self._templates else None
        if tpl is None:
            raise NotFound(
                f"template {name!r} is not known to provider 'local' "
                f"(known: {', '.join(self.templates())})",
                reason="TEMPLATE_NOT_FOUND",
                template=name,
                provider="local",
            )
        if tpl.info.unavailable:
            raise FailedPrecondition(
                f"template {name!r} cannot run on provider 'local': {tpl.info.unavailable}",
                reason="TEMPLATE_UNAVAILABLE",
                template=name,
                provider="local",
            )
        return tpl

    def _require(self) -> None:
        if self._unavailable:
            raise Unavailable(
                f"provider 'local' cannot run here: {self._unavailable}",
                reason="PROVIDER_UNAVAILABLE",
                provider="local",
            )

    def _runc(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self._state / "runc"), *args]

    # -------------------------------------------------------------- lifecycle

    def resolve_resources(self, sandbox: Sandbox) -> Resources:
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise FailedPrecondition(
                "provider 'local' has no GPU on this host",
                reason="GPU_UNAVAILABLE",
                provider="local",
                feature="gpu",
            )
        cpu = r.cpu_cores or DEFAULTS.cpu_cores
        if cpu > MAX_CPU_CORES:
            raise ResourceExhausted(
                f"cpu_cores {cpu} exceeds this host's {MAX_CPU_CORES:g}",
                reason="RESOURCES_UNAVAILABLE",
                resource="cpu_cores",
            )
        return Resources(
            cpu_cores=cpu,
            memory_mb=r.memory_mb or DEFAULTS.memory_mb,
            disk_mb=r.disk_mb or DEFAULTS.disk_mb,
            pids_limit=r.pids_limit or DEFAULTS.pids_limit,
        )

    async def create(self, sandbox: Sandbox) -> None:
        self._require()
        self._template(sandbox.spec.template)
        # Set by the daemon to start from a snapshot's files instead of the template's.
        source = sandbox.provider_data.get("from_snapshot", "")
        layer = sandbox.provider_data.get("import_layer", "")
        volumes = sandbox.provider_data.get("volumes", "[]")
        res = sandbox.resources = self.resolve_resources(sandbox)
        bundle = self._store / "sandboxes" / sandbox.id
        sandbox.provider_sandbox_id = sandbox.id
        sandbox.provider_data = {
            "bundle": str(bundle),
            "runtime": str(self._runtime / sandbox.id),
            "volumes": volumes,
        }
        try:
            bundle.mkdir(parents=True, exist_ok=True)
            await self._new_disk(
                bundle, res.disk_mb, self._snapshot_path(source) if source else None
            )
            if layer:
                await self._import_layer(bundle, Path(layer))
            await self._boot(sandbox)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(sandbox)
            raise

    def _snapshot_path(self, snapshot_id: str) -> Path:
        path = self._store / "snapshots" / f"{snapshot_id}.img"
        if not snapshot_id.replace("-", "").isalnum() or not path.exists():
            raise NotFound(f"snapshot {snapshot_id!r} has no data", reason="SNAPSHOT_NOT_FOUND")
        return path

    async def _new_disk(self, bundle: Path, disk_mb: int, source: Path | None) -> None:
        """The upper layer's disk: a clone of a snapshot, or a new empty ext4."""
        img = bundle / "disk.img"
        if source is not None:
            await asyncio.to_thread(storage.clone_file, source, img, self._reflink)
            if img.stat().st_size < disk_mb * 1024 * 1024:
                with img.open("r+b") as f:
                    f.truncate(disk_mb * 1024 * 1024)
                await _run("e2fsck", "-fp", str(img))
                await _run("resize2fs", str(img))
            return
        if self._reflink:
            # A clone of an empty disk made once per size: cheaper than mkfs.
            await asyncio.to_thread(storage.clone_file, await self._empty_disk(disk_mb), img, True)
            return
        await self._mkfs(img, disk_mb)

    async def _empty_disk(self, disk_mb: int) -> Path:
        path = self._store / "cache" / f"empty-{disk_mb}.img"
        async with self._empty_lock.setdefault(disk_mb, asyncio.Lock()):
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                tmp = path.with_suffix(".tmp")
                await self._mkfs(tmp, disk_mb)
                mnt = path.with_suffix(".mnt")
                mnt.mkdir(exist_ok=True)
                await _mount_image(tmp, mnt)
                try:
                    _prepare_layers(mnt)
                finally:
                    _umount(str(mnt))
                    mnt.rmdir()
                tmp.rename(path)
        return path

    async def _mkfs(self, img: Path, disk_mb: int) -> None:
        with img.open("wb") as f:
            f.truncate(disk_mb * 1024 * 1024)
        # With a journal, an image cloned while the sandbox writes is what a power
        # cut would leave, and mounting it replays to a consistent filesystem: that
        # is what lets a snapshot skip freezing the sandbox.
        await _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            # 4 KiB blocks even on small disks: the direct-I/O loop device has
            # 4 KiB sectors, and mkfs would pick 1 KiB under 512 MiB.
            "-b",
            "4096",
            "-J",
            "size=8",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            str(img),
        )

    async def _boot(self, sandbox: Sandbox) -> None:
        """Mounts the disk and the overlay, and starts the container on them."""
        uid = rootfs_mod.UID_SHIFT
        bundle = Path(sandbox.provider_data["bundle"])
        rt = _runtime_dir(sandbox)
        disk = bundle / "disk"
        disk.mkdir(parents=True, exist_ok=True)
        for sub in ("rootfs", "run"):
            (rt / sub).mkdir(parents=True, exist_ok=True)
        lowers = ":".join(str(p) for p in self._template(sandbox.spec.template).lowers)
        await _mount_image(bundle / "disk.img", disk)
        if not (disk / "upper").exists():
            _prepare_layers(disk)
        _mount(
            "overlay",
            str(rt / "rootfs"),
            "overlay",
            f"lowerdir={lowers},upperdir={disk}/upper,workdir={disk}/work",
        )
        os.chown(rt / "run", uid, uid)
        os.chmod(rt / "run", 0o700)
        # A restart finds the last agent's socket and output: the new agent must
        # not be mistaken for ready, nor serve files of processes it never ran.
        (rt / "run" / "agent.sock").unlink(missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, rt / "run" / "proc", True)
        spec = runtime_spec(
            sandbox_id=sandbox.id,
            root_path=str(rt / "rootfs"),
            run_dir=str(rt / "run"),
            agent_binary=str(self._agent_copy),
            resources=sandbox.resources,
            cgroup_parent=CGROUP_PARENT,
            volumes=[
                (str(self._volume_dir(name) / "data"), path, bool(ro))
                for name, path, ro in json.loads(sandbox.provider_data.get("volumes", "[]"))
            ],
        )
        (bundle / "config.json").write_text(json.dumps(spec))
        log_path = bundle / "agent.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            await _run(
                *self._runc(
                    "run",
                    "--detach",
                    # Every sandbox's root is the same host uid, and the kernel
                    # allows one uid 200 keys: a keyring per sandbox caps density.
                    "--no-new-keyring",
                    "--bundle",
                    str(bundle),
                    "--pid-file",
                    str(bundle / "init.pid"),
                    sandbox.id,
                ),
                log_fd=log_fd,
            )
        except Internal as exc:
            tail = log_path.read_text(errors="replace")[-2000:].strip()
            raise Internal(f"runc could not start the sandbox: {tail}") from exc
        finally:
            os.close(log_fd)
        sandbox.provider_data["init_pid"] = (bundle / "init.pid").read_text().strip()
        await self._agent(sandbox).wait_ready(READY_TIMEOUT_S)

    async def _halt(self, sandbox: Sandbox) -> None:
        """Stops the container and unmounts its layers; the disk image stays."""
        bundle = Path(sandbox.provider_data.get("bundle", self._store / "sandboxes" / sandbox.id))
        # `runc delete --force` on a running container sleeps 100 ms before it
        # looks again; killing init (and with it the pid namespace) and watching
        # it go first makes the delete a quick cleanup.
        pid = self._init_pid(sandbox)
        if not _kill_init(pid, f"{CGROUP_PARENT}/{sandbox.id}"):
            with contextlib.suppress(Internal):
                await _run(*self._runc("kill", sandbox.id, "KILL"))
        if pid > 0:
            await _wait_exit(pid, 5.0)
        with contextlib.suppress(Internal):
            await _run(*self._runc("delete", "--force", sandbox.id))
        rt = _runtime_dir(sandbox)
        _umount(str(rt / "rootfs"))
        _umount(str(bundle / "disk"))

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        bundle = Path(sandbox.provider_data.get("bundle", self._store / "sandboxes" / sandbox.id))
        if graceful_timeout_s > 0:
            await self._stop_gracefully(sandbox, graceful_timeout_s)
        await self._halt(sandbox)
        await asyncio.to_thread(shutil.rmtree, bundle, True)
        await asyncio.to_thread(shutil.rmtree, _runtime_dir(sandbox), True)

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        """A new container on the same disk (or, with wipe, a new empty one)."""
        bundle = Path(sandbox.provider_data["bundle"])
        self._template(sandbox.spec.template)
        sandbox.resources = self.resolve_resources(sandbox)
        await self._halt(sandbox)
        if wipe:
            (bundle / "disk.img").unlink(missing_ok=True)
            await self._new_disk(bundle, sandbox.resources.disk_mb, None)
        await self._boot(sandbox)

    # -------------------------------------------------------------- volumes
    # Each volume is an ext4 image (its size is the limit) mounted once on the host
    # and bind-mounted into every sandbox that uses it.

    def _volume_dir(self, name: str) -> Path:
        return self._store / "volumes" / name

    async def volume_create(self, name: str, size_mb: int) -> None:
        self._require()
        d = self._volume_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        img = d / "volume.img"
        if not img.exists():
            with img.open("wb") as f:
                f.truncate(size_mb * 1024 * 1024)
            await _run(
                "mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", "-E", "nodiscard", str(img)
            )
        await self._volume_mount(name)

    async def _volume_mount(self, name: str) -> None:
        d = self._volume_dir(name)
        (d / "data").mkdir(exist_ok=True)
        if storage.is_mountpoint(d / "data"):
            return
        await _mount_image(d / "volume.img", d / "data")
        # Root in a sandbox owns the volume's root directory.
        os.chown(d / "data", rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
        with contextlib.suppress(OSError):
            (d / "data" / "lost+found").rmdir()

    async def volume_delete(self, name: str) -> None:
        d = self._volume_dir(name)
        _umount(str(d / "data"))
        await asyncio.to_thread(shutil.rmtree, d, True)

    def volume_used_bytes(self, name: str) -> int:
        try:
            st = os.statvfs(self._volume_dir(name) / "data")
        except OSError:
            return 0
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    # -------------------------------------------------------------- snapshots

    async def snapshot_create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        bundle = Path(sandbox.provider_data["bundle"])
        dst = self._store / "snapshots" / f"{snapshot_id}.img"

        def take() -> int:
            # Everything written before this call reaches the image, then one
            # atomic clone (XFS holds the image's I/O lock while it remaps). No
            # freeze: on this kernel a freeze waits out RCU grace periods (~25 ms).
            storage.syncfs(bundle / "disk")
            storage.clone_file(bundle / "disk.img", dst, self._reflink)
            st = os.statvfs(bundle / "disk")
            return (st.f_blocks - st.f_bfree) * st.f_frsize

        return await asyncio.to_thread(take)

    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        source = self._snapshot_path(snapshot_id)
        bundle = Path(sandbox.provider_data["bundle"])
        await self._halt(sandbox)
        await asyncio.to_thread(storage.clone_file, source, bundle / "disk.img", self._reflink)
        await self._boot(sandbox)

    async def _import_layer(self, bundle: Path, layer: Path) -> None:
        """Fills a new disk's upper layer from a tar layer, before the first boot."""
        disk = bundle / "disk"
        disk.mkdir(parents=True, exist_ok=True)
        await _mount_image(bundle / "disk.img", disk)
        try:
            _prepare_layers(disk)
            await asyncio.to_thread(layers.read_layer, layer, disk / "upper")
        finally:
            _umount(str(disk))

    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        # A twin of the snapshot is mounted read-write, so that its journal is
        # replayed there and the snapshot itself stays as it was taken.
        tmp = self._store / "tmp"
        tmp.mkdir(exist_ok=True)
        twin = tmp / f"export-{snapshot_id}.img"
        mnt = tmp / f"export-{snapshot_id}"
        mnt.mkdir(exist_ok=True)
        try:
            await asyncio.to_thread(
                storage.clone_file, self._snapshot_path(snapshot_id), twin, self._reflink
            )
            await _mount_image(twin, mnt)
            try:

                def write() -> None:
                    with layer.open("wb") as out:
                        layers.write_layer(mnt / "upper", out)

                await asyncio.to_thread(write)
            finally:
                _umount(str(mnt))
        finally:
            twin.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def snapshot_ids(self) -> list[str]:
        snaps = self._store / "snapshots"
        # Half-written clones (*.tmp) of a daemon that died are listed to be freed too.
        return (
            sorted(p.name.removesuffix(".img") for p in snaps.iterdir()) if snaps.exists() else []
        )

    async def snapshot_delete(self, snapshot_id: str) -> None:
        (self._store / "snapshots" / f"{snapshot_id}.img").unlink(missing_ok=True)
        (self._store / "snapshots" / f"{snapshot_id}").unlink(missing_ok=True)

    async def _stop_gracefully(self, sandbox: Sandbox, timeout_s: float) -> None:
        agent = self._agent(sandbox)
        with contextlib.suppress(Exception):
            await agent.call({"op": "killall", "signal": 15})
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                procs = (await agent.call({"op": "list"}))["processes"]
                if not any(p["running"] for p in procs):
                    return
                await asyncio.sleep(0.05)

    async def adopt(self, sandbox: Sandbox) -> bool:
        try:
            state = json.loads(await _run(*self._runc("state", sandbox.id)))
        except (Internal, ValueError):
            return False
        if state.get("status") != "running":
            return False
        sandbox.provider_data["init_pid"] = str(state.get("pid", ""))
        try:
            await self._agent(sandbox).ping()
        except Exception:
            return False
        return True

    async def healthy(self, sandbox: Sandbox) -> bool:
        # A round trip to the agent: the container runs and can start processes.
        try:
            await asyncio.wait_for(self._agent(sandbox).ping(), 2.0)
        except Exception:
            return False
        return True

    async def reset(self, sandbox: Sandbox, hard: bool) -> None:
        if hard:
            # A new container on a new upper layer, under the same id: nothing of
            # the old one (files, processes, mounts) can survive.
            await self.restart(sandbox, wipe=True)
            return
        agent = self._agent(sandbox)
        await agent.call({"op": "killall", "signal": 9})
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            procs = (await agent.call({"op": "list"}))["processes"]
            if not any(p["running"] for p in procs):
                return
            await asyncio.sleep(0.01)
        raise Internal("processes survived SIGKILL during reset")

    def _init_pid(self, sandbox: Sandbox) -> int:
        return int(sandbox.provider_data.get("init_pid") or 0)

    async def create_network(self, network_id: str) -> None:
        self._require()
        await network.create_bridge(network_id)

    async def delete_network(self, network_id: str) -> None:
        await network.delete_bridge(network_id)

    async def attach_network(
        self, sandbox: Sandbox, network_id: str, ifname: str, address: str, prefix: int
    ) -> None:
        await network.attach(network_id, self._init_pid(sandbox), ifname, address, prefix)

    async def detach_network(self, sandbox: Sandbox, ifname: str) -> None:
        await network.detach(self._init_pid(sandbox), ifname)

    async def open_port(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await network.open_port(self._init_pid(sandbox), port)

    def host_socket_path(self, sandbox: Sandbox, name: str) -> Path:
        return _runtime_dir(sandbox) / "run" / name

    def _cgroup_file(self, sandbox: Sandbox, controller: str, name: str) -> Path:
        return Path("/sys/fs/cgroup") / controller / CGROUP_PARENT.strip("/") / sandbox.id / name

    def _read_int(self, path: Path) -> int:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    async def probe(self, sandbox: Sandbox) -> Probe:
        pid = int(sandbox.provider_data.get("init_pid") or 0)
        alive = pid > 0 and Path(f"/proc/{pid}").exists()
        oom = 0
        with contextlib.suppress(OSError):
            for line in (
                self._cgroup_file(sandbox, "memory", "memory.oom_control").read_text().splitlines()
            ):
                if line.startswith("oom_kill "):
                    oom = int(line.split()[1])
        return Probe(alive=alive, oom_kills=oom)

    async def usage(self, sandbox: Sandbox) -> Usage:
        disk_used = disk_total = 0
        bundle = Path(sandbox.provider_data["bundle"])
        with contextlib.suppress(OSError):
            st = os.statvfs(bundle / "disk")
            disk_total = st.f_blocks * st.f_frsize
            disk_used = (st.f_blocks - st.f_bfree) * st.f_frsize
        rx, tx, has_net = self._network(sandbox)
        return Usage(
            memory_used_bytes=self._read_int(
                self._cgroup_file(sandbox, "memory", "memory.usage_in_bytes")
            ),
            memory_limit_bytes=self._read_int(
                self._cgroup_file(sandbox, "memory", "memory.limit_in_bytes")
            ),
            process_count=self._read_int(self._cgroup_file(sandbox, "pids", "pids.current")),
            cpu_time_ns=self._read_int(self._cgroup_file(sandbox, "cpuacct", "cpuacct.usage")),
            disk_used_bytes=disk_used,
            disk_limit_bytes=disk_total,
            network_rx_bytes=rx,
            network_tx_bytes=tx,
            has_network=has_net,
        )

    def _network(self, sandbox: Sandbox) -> tuple[int, int, bool]:
        """Bytes through the sandbox's interfaces other than loopback, from its netns."""
        pid = sandbox.provider_data.get("init_pid", "")
        rx = tx = 0
        has_net = False
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
                name, _, fields = line.partition(":")
                if name.strip() == "lo":
                    continue
                cols = fields.split()
                rx, tx, has_net = rx + int(cols[0]), tx + int(cols[8]), True
        return rx, tx, has_net

    async def set_limits(
        self, sandbox: Sandbox, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        cur = sandbox.resources
        if cpu_cores > MAX_CPU_CORES:
            raise ResourceExhausted(
                f"cpu_cores {cpu_cores:g} exceeds this host's {MAX_CPU_CORES:g}",
                reason="RESOURCES_UNAVAILABLE",
                resource="cpu_cores",
            )
        if memory_mb and memory_mb * 1024 * 1024 > _host_memory():
            raise ResourceExhausted(
                f"memory_mb {memory_mb} exceeds this host's memory",
                reason="RESOURCES_UNAVAILABLE",
                resource="memory_mb",
            )
        if disk_mb and disk_mb < cur.disk_mb:
            raise FailedPrecondition(
                "a running sandbox's disk can grow but not shrink",
                reason="DISK_SHRINK_UNSUPPORTED",
                provider=NAME,
            )
        args: list[str] = []
        if cpu_cores:
            args += [
                "--cpu-quota",
                str(int(cpu_cores * 100_000)),
                "--cpu-period",
                "100000",
                "--cpu-share",
                str(max(2, int(cpu_cores * 1024))),
            ]
        if args:
            await _run(*self._runc("update", *args, sandbox.id))
        if memory_mb:
            await self._set_memory(sandbox, memory_mb)
        if disk_mb and disk_mb > cur.disk_mb:
            await self._grow_disk(sandbox, disk_mb)
        return replace(
            cur,
            cpu_cores=cpu_cores or cur.cpu_cores,
            memory_mb=memory_mb or cur.memory_mb,
            disk_mb=disk_mb or cur.disk_mb,
        )

    async def _set_memory(self, sandbox: Sandbox, memory_mb: int) -> None:
        """cgroup v1 refuses a limit below current use rather than reclaiming it, so
        the daemon does what the OOM killer would: it kills the largest process
        (never the agent) until the limit fits, and says so in an event."""
        limit = str(memory_mb * 1024 * 1024)
        for _ in range(20):
            try:
                await _run(
                    *self._runc("update", "--memory", limit, "--memory-swap", limit, sandbox.id)
                )
                return
            except Internal as exc:
                if "unable to set memory limit" not in exc.message:
                    raise
            victim = self._largest_process(sandbox)
            if victim is None:
                break
            pid, rss = victim
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            log.warning(
                "killed the largest process to fit a lowered memory limit",
                pid=pid,
                rss_mb=rss >> 20,
                memory_mb=memory_mb,
            )
            if self._emit is not None:
                self._emit(
                    sandbox.id,
                    "out-of-memory",
                    f"a process using {rss >> 20} MB was killed to fit the new "
                    f"{memory_mb} MB limit",
                    cause="limit-lowered",
                    rss_bytes=str(rss),
                    memory_mb=str(memory_mb),
                )
            await asyncio.sleep(0.05)
        raise FailedPrecondition(
            f"the sandbox cannot fit in {memory_mb} MB",
            reason="MEMORY_LIMIT_TOO_LOW",
            memory_mb=str(memory_mb),
        )

    def _largest_process(self, sandbox: Sandbox) -> tuple[int, int] | None:
        init = int(sandbox.provider_data.get("init_pid") or 0)
        best: tuple[int, int] | None = None
        with contextlib.suppress(OSError):
            pids = self._cgroup_file(sandbox, "memory", "cgroup.procs").read_text().split()
            for pid in map(int, pids):
                if pid == init:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1]) * 1024
                            if best is None or rss > best[1]:
                                best = (pid, rss)
        return best

    async def _grow_disk(self, sandbox: Sandbox, disk_mb: int) -> None:
        bundle = Path(sandbox.provider_data["bundle"])
        device = _mounted_device(bundle / "disk")
        if not device.startswith("/dev/loop"):
            raise Internal(f"cannot find the loop device of {bundle / 'disk'}")
        with (bundle / "disk.img").open("r+b") as f:
            f.truncate(disk_mb * 1024 * 1024)
        await _run("losetup", "-c", device)
        await _run("resize2fs", device)

    # -------------------------------------------------------------- processes

    def _agent(self, sandbox: Sandbox) -> Agent:
        return Agent(_runtime_dir(sandbox) / "run" / "agent.sock")

    def _start_request(self, sandbox: Sandbox, command: Command, tag: str) -> dict[str, Any]:
        template_env = self._templates.env(sandbox.spec.template) if self._templates else None
        env = process_env(sandbox, command, template_env)
        return {
            "op": "start",
            "args": command.args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": command.cwd,
            "timeout_ms": command.timeout_ms,
            "stdin": command.stdin,
            "tag": tag,
        }

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        req = self._start_request(sandbox, command, tag)
        req.update(attach=True, kill_on_close=kill_on_close)
        return _LocalRun(self._agent(sandbox), req)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        return process_info(
            await self._agent(sandbox).call(self._start_request(sandbox, command, tag))
        )

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        conn, started = await self._agent(sandbox).follow(
            {
                "op": "attach",
                "id": process_id,
                "stdout_offset": stdout_offset,
                "stderr_offset": stderr_offset,
                "no_output": not output,
            }
        )
        try:
            yield started
            async for ev in conn.events(stdout_offset, stderr_offset):
                yield ev
        finally:
            await conn.close()

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        await self._agent(sandbox).call({"op": "stdin", "id": process_id, "close": close}, data)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        if not 0 < signal < 65:
            raise InvalidArgument(
                f"signal {signal} is not a valid signal number", reason="INVALID_SIGNAL"
            )
        await self._agent(sandbox).call({"op": "signal", "id": process_id, "signal": signal})

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        reply = await self._agent(sandbox).call({"op": "list"})
        return [process_info(p) for p in reply["processes"]]

    # -------------------------------------------------------------- files

    def _fs(self, sandbox: Sandbox) -> SandboxFS:
        return SandboxFS(str(_runtime_dir(sandbox) / "rootfs"))

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        async for chunk in self._fs(sandbox).read(path, offset, length):
            yield chunk

    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        return await self._fs(sandbox).write(path, chunks, mode, make_parents, append)

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        return await asyncio.to_thread(self._fs(sandbox).list_sync, path)

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).stat_sync, path)

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).mkdir_sync, path, parents)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        await asyncio.to_thread(self._fs(sandbox).remove_sync, path, recursive)

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).move_sync, source, destination)


def _runtime_dir(sandbox: Sandbox) -> Path:
    """Where the sandbox's root mount and run dir live (older sandboxes: the bundle)."""
    return Path(sandbox.provider_data.get("runtime") or sandbox.provider_data["bundle"])


class _LocalRun(ProcessRun):
    def __init__(self, agent: Agent, req: dict[str, Any]) -> None:
        self._agent = agent
        self._req = req
        self._conn: AgentConnection | None = None
        self._closed = False

    async def events(self) -> AsyncIterator[ProcessEvent]:
        self._conn, started = await self._agent.follow(self._req)
        yield started
        offsets = {"stdout": 0, "stderr": 0}
        try:
            async for ev in self._conn.events():
                if isinstance(ev, Output):
                    offsets[ev.stream] = ev.offset + len(ev.data)
                yield ev
            return
        except AgentGone:
            if self._closed:  # closed on purpose (a failed input): nothing to resume
                raise
            # Input racing the exit can reset this connection (asyncio then drops
            # what was still buffered, the exit status too). The agent keeps the
            # process, so re-attach where the output stopped; if the sandbox is
            # really gone, this fails in turn and says so.
            pass
        conn, _ = await self._agent.follow(
            {
                "op": "attach",
                "id": started.process_id,
                "stdout_offset": offsets["stdout"],
                "stderr_offset": offsets["stderr"],
            }
        )
        try:
            async for ev in conn.events(offsets["stdout"], offsets["stderr"]):
                yield ev
        finally:
            await conn.close()

    def _need(self) -> AgentConnection:
        if self._conn is None:
            raise FailedPrecondition("the process has not started yet", reason="NOT_STARTED")
        return self._conn

    async def send_stdin(self, data: bytes) -> None:
        await self._need().send(STDIN, data)

    async def close_stdin(self) -> None:
        await self._need().send(CLOSE, b"")

    async def send_signal(self, signal: int) -> None:
        await self._need().send(SIGNAL, json.dumps({"signal": signal}).encode())

    async def aclose(self) -> None:
        self._closed = True
        if self._conn is not None:
            await self._conn.close()
