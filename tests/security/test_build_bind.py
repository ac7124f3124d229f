"""The store's builds/ is bound under /run so that a build's unprivileged runc init
reaches its root. That bind outlives the daemon (and the store's own mount): a
state dir removed and made again at the same path (its runtime key is the path's)
must not run its builds in the old store's builds/ while committing from the new
one's, nor keep the old store alive through the bind."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from computesdk import Client
from conftest import new_daemon


def _dev(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


async def test_a_state_dir_made_again_at_its_path_builds_in_its_own_store() -> None:
    d = new_daemon()
    try:
        d.start()
        d.kill9()  # a clean stop unbinds; a crash leaves the bind behind
        key = hashlib.sha256(str((d.state / "local").resolve()).encode()).hexdigest()[:12]
        bind = Path("/run/computesdk-sandboxes") / key / "builds"
        # What a user resetting the daemon does: unmount the store, remove the state.
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            point = line.split()[1]
            if point.startswith(str(d.state) + "/"):
                subprocess.run(["umount", "-l", point], check=True)
        subprocess.run(["rm", "-rf", str(d.state)], check=True)
        d.start()
        store_builds = d.state / "local" / "store" / "builds"
        assert _dev(bind) == _dev(store_builds)  # the same directory, not the old one
        c = await Client.connect(socket=d.socket)
        try:
            t = await c.templates.build("after-reset", setup=["echo hi > /hi"])
            assert t.template.name == "after-reset"
        finally:
            await c.close()
    finally:
        d.cleanup()


def _mountpoints() -> set[str]:
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}


def test_a_clean_stop_leaves_no_builds_bind_in_run() -> None:
    d = new_daemon()
    d.start()
    try:
        key = hashlib.sha256(str((d.state / "local").resolve()).encode()).hexdigest()[:12]
        bind = str(Path("/run/computesdk-sandboxes") / key / "builds")
        assert bind in _mountpoints()
        assert d.stop() == 0
        assert bind not in _mountpoints()
        d.start()  # and the next start binds it again
        assert bind in _mountpoints()
    finally:
        d.cleanup()
