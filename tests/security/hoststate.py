"""What a test daemon holds on the host, seen from the host: mounts, loop devices,
runc containers, cgroups and dirs under its state and runtime dirs. The reaper
and crash tests count these to prove that nothing is left behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from pathlib import Path

from conftest import DaemonProcess

RUNTIME_ROOT = Path("/run/computesdk-sandboxes")
CGROUPS = Path("/sys/fs/cgroup")


def runtime_dir(d: DaemonProcess) -> Path:
    key = hashlib.sha256(str((d.state / "local").resolve()).encode()).hexdigest()[:12]
    return RUNTIME_ROOT / key


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + "/")


def mountpoints() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        out.append(line.split()[4].replace("\\040", " "))
    return out


def loop_devices() -> list[tuple[str, str]]:
    out = []
    for d in Path("/sys/block").glob("loop*"):
        try:
            out.append((d.name, (d / "loop" / "backing_file").read_text().strip()))
        except OSError:
            continue
    return out


def init_pid(d: DaemonProcess, sandbox_id: str) -> int:
    """The sandbox's PID 1 on the host, from runc's state."""
    out = subprocess.run(
        ["runc", "--root", str(d.state / "local" / "runc"), "state", sandbox_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(json.loads(out)["pid"])


def ids_on_disk(d: DaemonProcess) -> set[str]:
    """Every sandbox id the daemon's dirs mention (some may be orphans)."""
    ids: set[str] = set()
    local = d.state / "local"
    for base in (local / "runc", local / "store" / "sandboxes", runtime_dir(d)):
        if base.is_dir():
            ids |= {p.name for p in base.iterdir() if p.name.startswith("sbx-")}
    agents = runtime_dir(d) / "agents"
    if agents.is_dir():
        ids |= {p.name.removesuffix(".sock") for p in agents.iterdir()}
    return ids


def held(d: DaemonProcess, ids: set[str]) -> dict[str, list[str]]:
    """What the daemon holds for each kind, except the store and volumes (which are
    its own, not any sandbox's). ids: the sandbox ids whose cgroups to look for."""
    local = (d.state / "local").resolve()
    store = local / "store"
    rt = runtime_dir(d)
    mounts = [
        m
        for m in mountpoints()
        if (_under(m, d.root.resolve()) or _under(m, rt))
        and m not in (str(store), str(rt / "builds"))  # the store, and its builds/ bound
        and not _under(m, store / "volumes")
    ]
    loops = [
        f"{dev}: {backing}"
        for dev, backing in loop_devices()
        if _under(backing.removesuffix(" (deleted)"), d.root.resolve())
        and backing != str(local / "store.xfs")
        and "/volumes/" not in backing
    ]
    runc_root = local / "runc"
    containers = sorted(p.name for p in runc_root.iterdir()) if runc_root.is_dir() else []
    cgroups = sorted(str(p) for i in ids for p in CGROUPS.glob(f"*/computesdk/{i}"))
    dirs = sorted(
        str(p)
        for base in (store / "sandboxes", rt)
        if base.is_dir()
        for p in base.iterdir()
        if p.name.startswith("sbx-")
    )
    if (rt / "agents").is_dir():
        dirs += sorted(str(p) for p in (rt / "agents").iterdir())
    cache = store / "cache"
    if cache.is_dir():  # half-made empty images and their mount points
        dirs += sorted(str(p) for p in cache.iterdir() if p.suffix != ".img")
    return {
        "mounts": mounts,
        "loop devices": loops,
        "containers": containers,
        "cgroups": cgroups,
        "dirs": dirs,
    }


def orphans(d: DaemonProcess, live: set[str], ids: set[str]) -> dict[str, list[str]]:
    """What is held that names none of the live sandboxes."""
    return {
        kind: [x for x in things if not any(i in x for i in live)]
        for kind, things in held(d, ids).items()
    }


def assert_none(found: dict[str, list[str]]) -> None:
    left = {k: v for k, v in found.items() if v}
    assert not left, f"left behind: {left}"


async def eventually_none(d: DaemonProcess, live: set[str], ids: set[str], timeout: float) -> None:
    """Polls (a condition, not a sleep for luck) until nothing is left or time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = orphans(d, live, ids)
        if not any(found.values()) or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert_none(found)
