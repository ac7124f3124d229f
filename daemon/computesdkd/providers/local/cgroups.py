"""The cgroups of local sandboxes (v1): one per sandbox and controller, under
CGROUP_PARENT, named by the sandbox's id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from computesdkd.support import logs

log = logs.get(__name__)

CGROUP_PARENT = "/computesdk"
_ROOT = Path("/sys/fs/cgroup")


def of(sandbox_id: str) -> str:
    """The sandbox's cgroup path, as /proc/PID/cgroup names it."""
    return f"{CGROUP_PARENT}/{sandbox_id}"


def file(sandbox_id: str, controller: str, name: str) -> Path:
    return _ROOT / controller / CGROUP_PARENT.strip("/") / sandbox_id / name


def read_int(path: Path) -> int:
    """The first number in a cgroup file; 0 when it cannot be read."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def contains(pid: int, cgroup: str) -> bool:
    with open(f"/proc/{pid}/cgroup") as f:
        return any(line.rstrip("\n").endswith(":" + cgroup) for line in f)


async def remove(sandbox_id: str, orphan: bool = False) -> bool:
    """Removes the sandbox's cgroup in every v1 hierarchy (runc delete does, unless
    it was cut short), killing what still runs in it first. False if one stays."""
    removed = True
    for d in _ROOT.glob(f"*/{CGROUP_PARENT.strip('/')}/{sandbox_id}"):
        if not d.is_dir():
            continue
        for _ in range(50):
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                d.rmdir()
                if orphan:
                    log.warning("removed an orphan cgroup", path=str(d))
                break
            except FileNotFoundError:
                break
            except OSError:
                await asyncio.sleep(0.02)  # killed tasks leave their cgroup as they exit
        else:
            log.error("could not remove a cgroup", path=str(d))
            removed = False
    return removed
