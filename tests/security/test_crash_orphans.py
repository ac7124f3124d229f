"""kill -9 of the daemon at every step of create, destroy, clone and write, then a
restart: nothing is left on the host that no live sandbox owns (no mount under
the daemon's dirs, no loop device backed by a file there, no runc container, no
cgroup, no bundle or runtime dir).

The daemon kills itself at a named step (COMPUTESDK_TEST_CRASH_AT, a test-only
hook in computesdkd/testhooks.py), so each kill lands exactly there, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hoststate import assert_none, held, ids_on_disk, loop_devices, orphans

from computesdk import Client
from conftest import DaemonProcess, new_daemon

CRASH = "COMPUTESDK_TEST_CRASH_AT"


@pytest_asyncio.fixture
async def d() -> AsyncIterator[DaemonProcess]:
    daemon = new_daemon(on_exit="keep")
    try:
        yield daemon
    finally:
        daemon.cleanup()


async def crash_during(d: DaemonProcess, step: str, op: Coroutine[Any, Any, Any]) -> None:
    """Runs op on a daemon that kills itself at step, until the kill."""
    task = asyncio.ensure_future(op)
    assert d.proc is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while d.proc.poll() is None and not task.done() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if d.proc.poll() is None:  # the op ended first: the kill may still be landing
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(d.proc.wait, 5)
    died = d.proc.poll() is not None
    if not died:
        d.kill9()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    assert died, f"the daemon never reached {step}"
    assert d.proc.returncode == -9


async def restart(d: DaemonProcess, client: Client, ids: set[str], live: set[str]) -> set[str]:
    """Restarts without the hook; then nothing is held but the live sandboxes' own.
    Returns every sandbox id seen, for the final check."""
    ids = ids | ids_on_disk(d)
    d.env.pop(CRASH, None)
    d.start()
    listed = {sb.id for sb in await client.list()}
    assert listed == live, listed
    ids |= {e.sandbox_id async for e in client.events(follow=False) if e.sandbox_id}
    assert_none(orphans(d, live, ids))
    snaps = d.state / "local" / "store" / "snapshots"
    assert not snaps.is_dir() or not list(snaps.iterdir()), list(snaps.iterdir())
    return ids


async def destroy_all(d: DaemonProcess, client: Client, ids: set[str]) -> None:
    """Destroying what is left leaves nothing at all."""
    for sb in await client.list():
        await sb.destroy()
    assert_none(held(d, ids))


async def restart_and_check(
    d: DaemonProcess, client: Client, ids: set[str], live: set[str] | None = None
) -> None:
    await destroy_all(d, client, await restart(d, client, ids, live or set()))


def removed_lines(d: DaemonProcess) -> list[str]:
    return [str(e["event"]) for e in d.log_lines() if str(e.get("event", "")).startswith("removed")]


# A fresh daemon's first create makes the default size's empty image (mkfs, mount,
# prepare, unmount), then clones it and boots on it: loop.attached and mount.ext4
# pass once for the cache image (#1) and once for the sandbox's disk (#2).
CREATE_STEPS = [
    "run.mkfs.ext4",
    "loop.attached",
    "mount.ext4",
    "umount",
    "create.disk",
    "loop.attached#2",
    "mount.ext4#2",
    "run.runc.run",
    "create.provisioned",
]


@pytest.mark.parametrize("step", CREATE_STEPS)
async def test_kill9_during_create(d: DaemonProcess, step: str) -> None:
    d.env[CRASH] = step
    d.start()
    client = await Client.connect(socket=d.socket)
    try:
        await crash_during(d, step, client.create("local", template="base"))
        await restart_and_check(d, client, set())
    finally:
        await client.close()


@pytest.mark.parametrize("step", ["mount.ext4#2", "run.runc.run"])
async def test_the_startup_sweep_frees_what_no_record_owns(d: DaemonProcess, step: str) -> None:
    d.env[CRASH] = step
    d.start()
    client = await Client.connect(socket=d.socket)
    try:
        await crash_during(d, step, client.create("local", template="base"))
        ids = ids_on_disk(d)
        assert ids, "the crash left nothing to find"
        # As if the record had gone first (a destroy that failed, a lost db row):
        # only the startup sweep knows the leftovers are there.
        with contextlib.closing(sqlite3.connect(d.state / "state.db")) as db, db:
            db.execute("DELETE FROM sandboxes")
        await restart_and_check(d, client, ids)
        lines = removed_lines(d)
        assert "removed an orphan mount" in lines, lines
        if step == "run.runc.run":
            assert "removed an orphan container" in lines, lines
    finally:
        await client.close()


async def test_an_attached_loop_device_that_nothing_mounts_is_detached(d: DaemonProcess) -> None:
    d.start()
    d.stop()
    junk = d.state / "local" / "store" / "sandboxes" / "sbx-00000000deadbeef"
    junk.mkdir(parents=True)
    (junk / "disk.img").write_bytes(b"\0" * (1 << 20))
    # No autoclear: a device set up this way stays until someone detaches it.
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(junk / "disk.img")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        d.start()
        assert_none(orphans(d, set(), {junk.name}))
        assert "removed an orphan loop device" in removed_lines(d)
        assert not any(b == str(junk / "disk.img") for _, b in loop_devices())
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def _writing(d: DaemonProcess, size: int) -> bool:
    assert d.proc is not None
    for fd in Path(f"/proc/{d.proc.pid}/fd").iterdir():
        try:
            link, st = os.readlink(fd), os.stat(fd)
        except OSError:
            continue
        if "workspace" in link and stat.S_ISREG(st.st_mode) and st.st_size >= size:
            return True
    return False


async def _running_sandbox(d: DaemonProcess, client: Client) -> str:
    sb = await client.create("local", template="base")
    await sb.files.write("/workspace/keep.txt", "kept")
    return sb.id


async def _restart_armed(d: DaemonProcess, step: str) -> None:
    d.stop()  # on_exit=keep: the sandbox stays for the next daemon
    d.env[CRASH] = step
    d.start()


@pytest.mark.parametrize(
    "step", ["destroy.stopping", "run.runc.delete", "umount", "umount#2", "destroy.halted"]
)
async def test_kill9_during_destroy(d: DaemonProcess, step: str) -> None:
    d.start()
    client = await Client.connect(socket=d.socket)
    try:
        sid = await _running_sandbox(d, client)
        await _restart_armed(d, step)
        sb = await client.get(sid)
        await crash_during(d, step, sb.destroy())
        await restart_and_check(d, client, {sid})
    finally:
        await client.close()


@pytest.mark.parametrize(
    "step",
    ["clone.snapshot", "create.disk", "mount.ext4", "run.runc.run", "create.provisioned"],
)  # fmt: skip
async def test_kill9_during_clone(d: DaemonProcess, step: str) -> None:
    d.start()
    client = await Client.connect(socket=d.socket)
    try:
        sid = await _running_sandbox(d, client)
        await _restart_armed(d, step)
        src = await client.get(sid)
        await crash_during(d, step, src.clone())
        # The source is untouched and re-adopted; the half-made clone is gone.
        ids = await restart(d, client, {sid}, {sid})
        again = await client.get(sid)
        assert again.state == "running"
        assert await again.files.read_text("/workspace/keep.txt") == "kept"
        await destroy_all(d, client, ids)
    finally:
        await client.close()


async def test_kill9_during_write(d: DaemonProcess) -> None:
    d.start()
    client = await Client.connect(socket=d.socket)
    try:
        sid = await _running_sandbox(d, client)
        sb = await client.get(sid)
        hold = asyncio.Event()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"x" * (1 << 20)
            await hold.wait()  # the stream stays open: the write is in progress
            yield b"y"

        task = asyncio.create_task(sb.files.write("/workspace/big.bin", chunks()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # The first chunk has reached the sandbox's disk: the daemon holds the file
        # it writes (the target, a temp, or an unnamed one) with that much in it.
        while not _writing(d, 1 << 20):
            assert loop.time() < deadline, "the write never reached the disk"
            await asyncio.sleep(0.02)
        d.kill9()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        ids = await restart(d, client, {sid}, {sid})
        again = await client.get(sid)
        assert again.state == "running"
        assert await again.files.read_text("/workspace/keep.txt") == "kept"
        await destroy_all(d, client, ids)
    finally:
        await client.close()
