"""The containers of local sandboxes: making one (disk, overlay, runc), stopping
it, taking it back after a daemon restart, and freeing it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from computesdkd.domain.errors import ComputeError, Internal
from computesdkd.domain.model import ProcessInfo, Sandbox
from computesdkd.providers.local import cgroups, disks, host, idmap, initproc, safefs, storage
from computesdkd.providers.local.disks import Disks
from computesdkd.providers.local.layout import Layout
from computesdkd.providers.local.limits import Limits
from computesdkd.providers.local.oci import runtime_spec
from computesdkd.providers.local.tplrecords import Template
from computesdkd.providers.local.volumes import Volumes, unmount_views
from computesdkd.support import logs
from computesdkd.support.testhooks import crash

log = logs.get(__name__)

READY_TIMEOUT_S = 10.0
ADOPT_PING_TIMEOUT_S = 5.0
_T = TypeVar("_T")


def _mount_root(lowers: tuple[Path, ...], disk: Path, target: Path, userns: int, uid: int) -> None:
    """The sandbox's root: an overlay of the template's layers and its upper layer,
    each an idmapped view (storage ids -> the sandbox's range) that exists only as
    an fd. nosuid,nodev: a setuid file or device node made inside is inert on the
    host (inside, no_new_privs already ignores setuid bits)."""
    flags = idmap.MOUNT_ATTR_NOSUID | idmap.MOUNT_ATTR_NODEV
    fds: list[int] = []
    try:
        for p in lowers:
            fds.append(idmap.idmapped_clone(str(p), userns, flags | idmap.MOUNT_ATTR_RDONLY))
        lower_fds = list(fds)
        top = idmap.idmapped_clone(str(disk), userns, flags)
        fds.append(top)
        dirs = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        upper = os.open("upper", dirs, dir_fd=top)
        fds.append(upper)
        work = os.open("work", dirs, dir_fd=top)
        fds.append(work)
        idmap.mount_overlay(lower_fds, upper, work, str(target), uid)
    finally:
        for fd in fds:
            os.close(fd)


class Containers:
    def __init__(
        self,
        layout: Layout,
        disks: Disks,
        volumes: Volumes,
        limits: Limits,
        template: Callable[[str], Template],
        snapshot: Callable[[str], Path],
        emit: Callable[..., object],
    ) -> None:
        self._layout = layout
        self._disks = disks
        self._volumes = volumes
        self._limits = limits
        self._template = template  # the one a sandbox starts from, or a clear error
        self._snapshot = snapshot  # a snapshot's image, or a clear error
        self._emit = emit
        self.agent_binary = Path()  # what sandboxes mount as their init; set by start()
        self._userns = idmap.UserNamespaces()
        # Template layers each live sandbox stands on: its overlay holds them by fd,
        # so the mount table no longer tells, and a template delete must not free them.
        self._pins: dict[str, set[str]] = {}

    async def warm(self) -> None:
        """Makes the user namespaces of the next likely sandboxes ahead."""
        await self._userns.warm(self._layout.slots.likely(2))

    def close(self) -> None:
        self._userns.close()

    def pinned_layers(self) -> set[str]:
        return set().union(*self._pins.values()) if self._pins else set()

    def _uid_base(self, sandbox: Sandbox) -> int:
        """The first host uid of the sandbox's own range (kept across restarts)."""
        data = sandbox.provider_data
        base = self._layout.slots.take(sandbox.id, int(data.get("uid_base") or 0))
        data["uid_base"] = str(base)
        return base

    def _release(self, sandbox: Sandbox) -> None:
        """The sandbox is gone: its uid range and its hold on template layers too."""
        self._layout.slots.release(sandbox.id)
        self._pins.pop(sandbox.id, None)

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        self._template(sandbox.spec.template)
        # Set by the daemon to start from a snapshot's files instead of the template's.
        source = sandbox.provider_data.get("from_snapshot", "")
        layer = sandbox.provider_data.get("import_layer", "")
        volumes = sandbox.provider_data.get("volumes", "[]")
        res = sandbox.resources = self._limits.resolve(sandbox)
        bundle = self._layout.store / "sandboxes" / sandbox.id
        sandbox.provider_sandbox_id = sandbox.id
        sandbox.provider_data = {
            "bundle": str(bundle),
            "runtime": str(self._layout.runtime / sandbox.id),
            "volumes": volumes,
        }
        try:
            bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
            await self._disks.new(bundle, res.disk_mb, self._snapshot(source) if source else None)
            if layer:
                await self._disks.import_layer(bundle, Path(layer))
            await self._boot(sandbox)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(sandbox)
            raise

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        """A new container on the same disk (or, with wipe, a new empty one)."""
        bundle = Path(sandbox.provider_data["bundle"])
        self._template(sandbox.spec.template)
        sandbox.resources = self._limits.resolve(sandbox)
        await self._halt(sandbox)
        if wipe:
            (bundle / "disk.img").unlink(missing_ok=True)
            await self._disks.new(bundle, sandbox.resources.disk_mb, None)
        await self._boot(sandbox)

    async def restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        """The sandbox starts anew on a clone of the snapshot's disk."""
        source = self._snapshot(snapshot_id)
        bundle = Path(sandbox.provider_data["bundle"])
        await self._halt(sandbox)
        await asyncio.to_thread(
            storage.clone_file, source, bundle / "disk.img", self._layout.reflink
        )
        await self._boot(sandbox)

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        """Frees the container, mounts (and with them the loop device), cgroups and
        dirs. Safe to call again on a sandbox destroyed in part; raises Internal
        while anything is left, and the daemon retries."""
        bundle, rt = self._layout.paths(sandbox)
        if graceful_timeout_s > 0:
            await self._stop_gracefully(sandbox, graceful_timeout_s)
        await self._halt(sandbox)
        crash("destroy.halted")
        for d in {bundle, rt}:
            # Never through a mount (a volume's view, should one be left).
            with contextlib.suppress(OSError):
                await asyncio.to_thread(safefs.remove_dir, d)
        self._layout.agent_socket(sandbox.id).unlink(missing_ok=True)
        left = [str(d) for d in {bundle, rt} if d.exists()]
        if left:
            raise Internal(f"destroy left {', '.join(sorted(left))} behind")
        self._release(sandbox)

    async def _boot(self, sandbox: Sandbox) -> None:
        """Mounts the disk and the overlay, and starts the container on them."""
        uid = self._uid_base(sandbox)
        userns = await self._userns.mapping(uid)
        bundle, rt = self._layout.paths(sandbox)
        disk = bundle / "disk"
        disk.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The sandbox's root owns its runtime dir so that runc's init (that uid, in
        # its user namespace) can reach rootfs/ and ctl/; 0700 keeps everyone
        # else on the host, and every other sandbox, out of the sandbox's files.
        rt.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(rt, uid, uid)
        os.chmod(rt, 0o700)
        for sub, mode in (("rootfs", 0o700), ("ctl", 0o755), ("volumes", 0o700)):
            (rt / sub).mkdir(mode=mode, exist_ok=True)
        lowers = self._template(sandbox.spec.template).lowers
        # Kept with the record: after a restart of the daemon, these (not what the
        # template names by then) are what this sandbox's overlay stands on.
        sandbox.provider_data["layers"] = json.dumps([p.name for p in lowers])
        self._pins[sandbox.id] = {p.name for p in lowers}
        await disks.mount_image(bundle / "disk.img", disk)
        # The disk's root is host root's: through the idmapping that is an unmapped
        # owner, so the overlay may pass it only as "others" (the bundle, 0700,
        # keeps host users out).
        os.chmod(disk, 0o711)
        if not (disk / "upper").exists():
            disks.prepare_layers(disk)
        else:
            await asyncio.to_thread(disks.fresh_workdir, disk)
        _mount_root(lowers, disk, rt / "rootfs", userns, uid)
        spec = runtime_spec(
            sandbox_id=sandbox.id,
            root_path=str(rt / "rootfs"),
            ctl_dir=str(rt / "ctl"),
            agent_binary=str(self.agent_binary),
            resources=sandbox.resources,
            cgroup_parent=cgroups.CGROUP_PARENT,
            uid_base=uid,
            volumes=self._volumes.bind_views(sandbox, rt, userns),
        )
        await self._run_container(sandbox, bundle, spec, uid)
        await self._layout.agent(sandbox.id).wait_ready(READY_TIMEOUT_S)

    async def _run_container(
        self, sandbox: Sandbox, bundle: Path, spec: dict[str, Any], uid: int
    ) -> None:
        """`runc run` in the slot's user namespace, with the agent's control socket
        as fd 3; records init's pid."""
        log_path = bundle / "agent.log"
        with contextlib.ExitStack() as held:
            container_ns = await self._userns.container(uid)  # the slot's, kept
            for ns in spec["linux"]["namespaces"]:
                if ns["type"] == "user":
                    ns["path"] = f"/proc/{os.getpid()}/fd/{container_ns}"
            (bundle / "config.json").write_text(json.dumps(spec))
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            log_fd = os.open(log_path, flags, 0o600)
            held.callback(os.close, log_fd)
            # A restart binds a new socket: the last agent's queue must not be reused.
            # Init holds it once started; once init is gone, connects are refused.
            control = held.enter_context(host.listen_unix(self._layout.agent_socket(sandbox.id)))
            try:
                await host.spawn(
                    self._layout.runc(
                        "run",
                        "--detach",
                        # A keyring per sandbox would count against its root's key
                        # quota for nothing: keyctl is refused inside anyway.
                        "--no-new-keyring",
                        "--preserve-fds",
                        "1",
                        "--bundle",
                        str(bundle),
                        "--pid-file",
                        str(bundle / "init.pid"),
                        sandbox.id,
                    ),
                    fds={1: log_fd, 2: log_fd, 3: control.fileno()},
                )
            except Internal as exc:
                tail = log_path.read_text(errors="replace")[-2000:].strip()
                raise Internal(f"runc could not start the sandbox: {tail}") from exc
        sandbox.provider_data["init_pid"] = (bundle / "init.pid").read_text().strip()

    async def _halt(self, sandbox: Sandbox) -> None:
        """Stops the container and unmounts its layers; the disk image stays.
        Idempotent: on a sandbox already halted (or never started) it checks, and
        raises when the container or a mount is still there, so the caller retries."""
        bundle, rt = self._layout.paths(sandbox)
        state = self._layout.runc_root / sandbox.id
        # `runc delete --force` on a running container sleeps 100 ms before it
        # looks again; killing init (and with it the pid namespace) and watching
        # it go first makes the delete a quick cleanup. SIGKILL also ends a
        # stopped (SIGSTOP, frozen) init.
        pid = initproc.pid_of(sandbox)
        killed = initproc.kill(sandbox)
        if not killed and state.exists():
            with contextlib.suppress(Internal):
                await host.run(*self._layout.runc("kill", sandbox.id, "KILL"), timeout=10.0)
        if killed:
            await initproc.wait_exit(pid, 5.0)
        if state.exists():
            with contextlib.suppress(Internal, TimeoutError):
                await host.run(*self._layout.runc("delete", "--force", sandbox.id), timeout=15.0)
            if state.exists():
                raise Internal(f"runc could not delete container {sandbox.id}")
        sandbox.provider_data.pop("init_pid", None)  # a recycled pid must never be hit
        if not await cgroups.remove(sandbox.id):
            raise Internal(f"the cgroups of {sandbox.id} cannot be removed")
        host.umount(str(rt / "rootfs"))
        unmount_views(rt)
        host.umount(str(bundle / "disk"))

    async def _stop_gracefully(self, sandbox: Sandbox, timeout_s: float) -> None:
        """SIGTERM to every process, then up to timeout_s for them to end. Each agent
        call has only what is left of the grace: a hung or frozen agent (one that
        accepts and never answers) costs the grace, never more."""
        agent = self._layout.agent(sandbox.id)
        deadline = time.monotonic() + timeout_s

        async def call(step: Callable[[], Awaitable[_T]]) -> _T:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(step(), left)

        with contextlib.suppress(Exception):
            await call(lambda: agent.killall(15))
            while time.monotonic() < deadline:
                procs: list[ProcessInfo] = await call(agent.processes)
                if not any(p.running for p in procs):
                    return
                await asyncio.sleep(0.05)

    # -------------------------------------------------------------- adopt

    async def adopt(self, sandbox: Sandbox) -> bool:
        """After a daemon restart: True when the sandbox still runs (and is ours again)."""
        # Bounded: a frozen agent must not hold up the daemon's start.
        try:
            runc_state = self._layout.runc("state", sandbox.id)
            state = json.loads(await host.run(*runc_state, timeout=10.0))
        except (Internal, ValueError, TimeoutError):
            return False
        if state.get("status") != "running":
            return False
        sandbox.provider_data["init_pid"] = str(state.get("pid", ""))
        if not sandbox.provider_data.get("uid_base"):
            return await self._upgrade(sandbox)
        self._uid_base(sandbox)  # its range stays taken
        try:
            await asyncio.wait_for(self._layout.agent(sandbox.id).ping(), ADOPT_PING_TIMEOUT_S)
        except Exception:
            return False
        self._pins[sandbox.id] = self._layers_of(sandbox)
        return True

    async def _upgrade(self, sandbox: Sandbox) -> bool:
        """A sandbox an earlier version started: the storage uid for every sandbox,
        its agent on a socket in a dir the sandbox could write. It is not reached
        that way again: its processes end and it boots anew on the same disk, in a
        uid range of its own (as a restart would), so its files survive the
        upgrade."""
        log.warning("restarting a sandbox made by an earlier version on the same disk")
        try:
            await self._halt(sandbox)
            _, rt = self._layout.paths(sandbox)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(safefs.remove_dir, rt / "run")  # the old run dir
            await self._boot(sandbox)
        except (ComputeError, OSError) as exc:
            log.error("could not restart a sandbox of an earlier version", error=str(exc))
            return False
        self._emit(
            sandbox.id,
            "restarted",
            "restarted by a daemon upgrade: its processes ended, its files are kept",
            cause="upgrade",
        )
        sandbox.provider_data["restarted_at_adopt"] = "1"  # the daemon forgets them
        return True

    def _layers_of(self, sandbox: Sandbox) -> set[str]:
        with contextlib.suppress(ValueError, TypeError):
            return {str(x) for x in json.loads(sandbox.provider_data["layers"])}
        with contextlib.suppress(ComputeError, KeyError):
            return {p.name for p in self._template(sandbox.spec.template).lowers}
        return set()
