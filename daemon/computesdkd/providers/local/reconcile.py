"""At start, once the daemon has adopted its records: freeing what no live
sandbox owns, as a daemon killed mid-create, -destroy, -clone or -export leaves
it (a container, overlay and disk mounts, a loop device, cgroups, bundle and
runtime dirs, half-made cache images), one log line each.

Only what is this daemon's: containers under its runc root, mounts and loop
devices under its store and runtime dir, and the cgroups of the ids found there
(the cgroup tree is shared with other daemons on the host)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from pathlib import Path

from computesdkd.domain.errors import Internal
from computesdkd.providers.local import cgroups, host, safefs
from computesdkd.providers.local.layout import SANDBOX_PREFIX, Layout
from computesdkd.support import logs

log = logs.get(__name__)


async def reconcile(layout: Layout, live_ids: set[str]) -> None:
    # As the kernel names them (mountinfo, backing files): no symlink, no "..".
    store, runtime = layout.store.resolve(), layout.runtime.resolve()
    sandboxes = store / "sandboxes"
    runc_root = layout.runc_root
    agents = runtime / "agents"
    ids: set[str] = set()
    for d, suffix in ((runc_root, ""), (sandboxes, ""), (runtime, ""), (agents, ".sock")):
        with contextlib.suppress(OSError):
            ids |= {
                p.name.removesuffix(suffix)
                for p in d.iterdir()
                if p.name.startswith(SANDBOX_PREFIX) and p.name.endswith(suffix)
            }
    orphans = ids - live_ids
    # 1. Containers: `runc delete --force` kills init and removes the cgroups.
    for sid in sorted(orphans):
        if (runc_root / sid).exists():
            with contextlib.suppress(Internal, TimeoutError):
                await host.run(*layout.runc("delete", "--force", sid), timeout=15.0)
            if (runc_root / sid).exists():
                # A state dir runc cannot read (killed mid-create): nothing runs
                # from it once its cgroups are empty (step 4).
                await asyncio.to_thread(shutil.rmtree, runc_root / sid, True)
            log.warning("removed an orphan container", sandbox_id=sid)

    # 2. Mounts, deepest first.
    def owned_by_orphan(path: str) -> bool:
        for root in (sandboxes, runtime):
            rel = Path(path).relative_to(root) if Path(path).is_relative_to(root) else None
            if rel is not None and rel.parts and rel.parts[0].startswith(SANDBOX_PREFIX):
                return rel.parts[0] not in live_ids
        parent = Path(path).parent
        return (parent == store / "cache" and path.endswith(".mnt")) or Path(path).is_relative_to(
            store / "tmp"
        )

    kept: set[str] = set()
    for target, _ in sorted(host.mounts(), key=lambda m: len(m[0]), reverse=True):
        if owned_by_orphan(target):
            try:
                host.umount(target)
                log.warning("removed an orphan mount", path=target)
            except OSError as exc:
                kept |= {target}
                log.error("could not remove an orphan mount", path=target, error=str(exc))
    # 3. Loop devices backed by an image in the store that nothing mounts: an
    # attached device that was never mounted does not autoclear.
    sources = {source for _, source in host.mounts()}
    prefix = str(store) + "/"
    for device, backing in host.loop_devices():
        if backing.removesuffix(" (deleted)").startswith(prefix) and device not in sources:
            try:
                host.loop_detach(device)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: it autocleared meanwhile
                    log.error("could not detach a loop device", device=device, error=str(exc))
                continue
            log.warning("removed an orphan loop device", device=device, backing=backing)
    # 4. Cgroups, then 5. dirs (never through a mount still there).
    for sid in sorted(orphans):
        await cgroups.remove(sid, orphan=True)
        for d in (sandboxes / sid, runtime / sid):
            if any(Path(k).is_relative_to(d) for k in kept):
                continue
            if d.exists():
                try:
                    await asyncio.to_thread(safefs.remove_dir, d)
                    log.warning("removed an orphan dir", path=str(d))
                except OSError as exc:
                    log.error("could not remove an orphan dir", path=str(d), error=str(exc))
        sock = agents / f"{sid}.sock"
        if sock.exists():
            sock.unlink(missing_ok=True)
            log.warning("removed an orphan socket", path=str(sock))
    leftovers = [p for p in (store / "cache").glob("empty-*") if p.suffix != ".img"]
    with contextlib.suppress(OSError):
        leftovers += list((store / "tmp").iterdir())
    leftovers += [p for p in runtime.glob(".agent-*") if p.name != f".agent-{os.getpid()}"]
    for p in leftovers:
        if any(Path(k).is_relative_to(p) for k in kept):
            continue
        if p.is_dir() and not p.is_symlink():
            await asyncio.to_thread(shutil.rmtree, p, True)
        else:
            p.unlink(missing_ok=True)
        log.warning("removed an orphan file", path=str(p))
