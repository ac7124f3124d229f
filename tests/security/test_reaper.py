"""The reaper: no sandbox stays in stopping or error past a bound, nor keeps its
mounts, loop device, cgroups or container once it is gone. Each attack is one a
client or the host can make: a destroy cancelled mid-way, a graceful destroy of
a frozen agent, a PID 1 killed under the daemon, a destroy that fails mid-way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from hoststate import held, init_pid

from computesdk import Client, SandboxNotFoundError
from computesdk_api.sandbox.v1 import sandbox_pb2
from conftest import DaemonProcess

BOUND_S = 15.0  # generous: a busy 2-core VM


def naming(d: DaemonProcess, sandbox_id: str) -> dict[str, list[str]]:
    """Everything on the host that still belongs to this sandbox."""
    return {k: [x for x in v if sandbox_id in x] for k, v in held(d, {sandbox_id}).items()}


async def gone(client: Client, d: DaemonProcess, sandbox_id: str, timeout: float) -> None:
    """Waits until the sandbox is no longer listed and nothing on the host names it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            sb = await client.get(sandbox_id)
            state = sb.state
        except SandboxNotFoundError:
            state = "gone"
        left = {k: v for k, v in naming(d, sandbox_id).items() if v}
        if state == "gone" and not left:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{sandbox_id} is {state} after {timeout}s, holding {left}")
        await asyncio.sleep(0.1)


async def state_of(client: Client, sandbox_id: str) -> str:
    try:
        return (await client.get(sandbox_id)).state
    except SandboxNotFoundError:
        return "gone"


async def test_a_destroy_cancelled_mid_way_still_frees_everything(
    client: Client, daemon: DaemonProcess
) -> None:
    cut_short = 0
    for delay_ms in (5, 8, 12, 16, 20):
        sb = await client.create("local", template="base")
        assert any(naming(daemon, sb.id)["mounts"]), "the sandbox should hold mounts"
        call = client.sandboxes.DestroySandbox(sandbox_pb2.DestroySandboxRequest(sandbox_id=sb.id))
        await asyncio.sleep(delay_ms / 1000)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await call
        # The teardown runs to the end without its caller; had the cancel come
        # before it began, the sandbox is still running and whole.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND_S
        while (state := await state_of(client, sb.id)) not in ("gone", "running"):
            assert loop.time() < deadline, f"stuck in {state} after a cancelled destroy"
            await asyncio.sleep(0.05)
        if state == "running":
            await sb.destroy()
        else:
            cut_short += 1
        await gone(client, daemon, sb.id, BOUND_S)
    assert cut_short, "no cancel landed while the destroy was in flight"


async def test_a_second_destroy_joins_the_one_in_flight(
    client: Client, daemon: DaemonProcess
) -> None:
    sb = await client.create("local", template="base")
    # A process that ignores SIGTERM holds the graceful destroy for its grace.
    proc = await sb.start_process("trap '' TERM; echo armed; while :; do sleep 1; done")
    async for chunk in sb.process(proc.id).attach(stdout_offset=0):
        if b"armed" in chunk.data:  # the trap is set: SIGTERM no longer ends it
            break
    first = asyncio.create_task(sb.destroy(graceful=True, timeout_ms=2000))
    await asyncio.sleep(0.3)
    assert await state_of(client, sb.id) == "stopping"
    await sb.destroy()  # joins: neither a second teardown nor SANDBOX_NOT_FOUND
    await asyncio.wait_for(first, BOUND_S)
    await gone(client, daemon, sb.id, BOUND_S)
    types = [e.type async for e in client.events(sandbox_ids=[sb.id], follow=False)]
    assert types.count("destroyed") == 1, types


async def test_a_graceful_destroy_of_a_frozen_agent_ends_within_its_grace(
    client: Client, daemon: DaemonProcess
) -> None:
    sb = await client.create("local", template="base")
    pid = init_pid(daemon, sb.id)
    os.kill(pid, signal.SIGSTOP)  # the agent accepts connections and never answers
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(sb.destroy(graceful=True, timeout_ms=2000), 2 + BOUND_S)
        assert loop.time() - start >= 1.5, "the grace was not given"
        await gone(client, daemon, sb.id, BOUND_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def test_a_sandbox_whose_pid1_was_killed_is_freed_and_kept_in_error(
    client: Client, daemon: DaemonProcess
) -> None:
    sb = await client.create("local", template="base")
    os.kill(init_pid(daemon, sb.id), signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    # The sweeper notices, says so, and frees every host resource at once...
    while True:
        info = await client.get(sb.id)
        left = {k: v for k, v in naming(daemon, sb.id).items() if v}
        if info.state == "error" and not left:
            break
        assert loop.time() < deadline, f"{info.state}, holding {left}"
        await asyncio.sleep(0.1)
    assert "stopped unexpectedly" in info.info.error_message
    errors = [e async for e in client.events(sandbox_ids=[sb.id], types=["error"], follow=False)]
    assert errors and errors[0].attributes.get("kind") == "lost"
    # ... while the record stays, in error, until it is destroyed.
    assert sb.id in [s.id for s in await client.list()]
    await sb.destroy()
    await gone(client, daemon, sb.id, BOUND_S)


def _bundle(d: DaemonProcess, sandbox_id: str) -> Path:
    return d.state / "local" / "store" / "sandboxes" / sandbox_id


async def test_a_destroy_that_fails_mid_way_is_retried_until_destroyed(
    client: Client, daemon: DaemonProcess
) -> None:
    sb = await client.create("local", template="base")
    pinned = _bundle(daemon, sb.id) / "config.json"
    subprocess.run(["chattr", "+i", str(pinned)], check=True)  # the bundle cannot go
    try:
        with pytest.raises(Exception, match="destroy"):
            await sb.destroy()
        info = await client.get(sb.id)
        assert info.state in ("error", "stopping"), info.state
        assert "destroy failed" in info.info.error_message
        # Everything but the pinned dir is already freed; the record says why not.
        left = {k: v for k, v in naming(daemon, sb.id).items() if v}
        assert set(left) == {"dirs"}, left
        await asyncio.sleep(1.5)  # at least one retry fails too
        assert await state_of(client, sb.id) in ("error", "stopping")
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
    # The sweeper's next attempt (backoff: 1, 1, 2, 4 s ...) finishes the job.
    await gone(client, daemon, sb.id, BOUND_S)
    types = [e.type async for e in client.events(sandbox_ids=[sb.id], follow=False)]
    assert types.count("destroyed") == 1 and types.count("error") == 1, types


async def test_a_restart_is_not_taken_for_a_death(client: Client) -> None:
    """Restart, hard reset and restore replace the container: its old init is meant
    to go, and the sweeper must not free the sandbox under the new one."""
    sandboxes = await asyncio.gather(*(client.create("local") for _ in range(2)))
    try:
        for i in range(8):
            for sb in sandboxes:
                await sb.restart(env={"K": f"v{i}"})
                r = await sb.exec(["sh", "-c", "echo $K"])
                assert r.stdout == f"v{i}\n", (i, r.stdout, r.stderr)
                assert (await sb.refresh()).state == "running"
    finally:
        await asyncio.gather(*(sb.destroy() for sb in sandboxes))
