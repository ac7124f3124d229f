"""kill -9 and graceful restarts of the daemon lose nothing."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from computesdk import Client, Event, SandboxEventError, SandboxNotFoundError
from conftest import DaemonProcess, new_daemon


@pytest_asyncio.fixture
async def private_daemon() -> AsyncIterator[DaemonProcess]:
    d = new_daemon()
    d.start()
    yield d
    d.cleanup()


async def _wait_for(pred: object, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_kill9_restart_keeps_sandbox_files_output_and_events(
    private_daemon: DaemonProcess,
) -> None:
    d = private_daemon
    client = await Client.connect(socket=d.socket)
    conn: list[str] = []
    for name in ("disconnected", "reconnecting", "connected"):
        client.on(name, lambda n=name: conn.append(n))
    sb = await client.create(template="python")
    await sb.files.write("keep.txt", "survives")
    proc = await sb.start_process("echo before; sleep 1; echo after; echo err >&2")

    received: list[Event] = []

    async def collect() -> None:
        async for ev in client.events(sandbox_ids=[sb.id]):
            received.append(ev)
            if ev.type == "destroyed":
                return

    task = asyncio.create_task(collect())
    await _wait_for(lambda: any(e.type == "process.started" for e in received))

    d.kill9()  # no chance to clean up: sandboxes, mounts and the agent stay behind
    await asyncio.sleep(0.2)
    d.start()

    again = await client.get(sb.id)  # the same client rides out the restart
    assert again.state == "running"
    assert await again.files.read_text("keep.txt") == "survives"
    out = await again.process(proc.id).wait()
    assert (out.stdout, out.stderr, out.exit_code) == ("before\nafter\n", "err\n", 0)
    await _wait_for(lambda: any(e.type == "process.exited" for e in received))
    await again.destroy()
    await asyncio.wait_for(task, 10)

    assert "disconnected" in conn and conn[-1] == "connected"
    seqs = [e.sequence for e in received]
    assert seqs == sorted(set(seqs)), "events repeated or out of order"
    stored = [e.sequence async for e in client.events(sandbox_ids=[sb.id], follow=False)]
    assert seqs == stored, "events lost across the restart"
    types = [e.type for e in received]
    assert types[:2] == ["created", "ready"] and types[-1] == "destroyed"
    assert types.count("process.exited") == 1
    await client.close()


async def test_sigterm_keeps_sandboxes_for_the_next_daemon(private_daemon: DaemonProcess) -> None:
    d = private_daemon
    d.stop()
    d.on_exit = "keep"
    d.start()
    client = await Client.connect(socket=d.socket)
    sb = await client.create()
    assert d.stop() == 0
    assert not d.socket.exists()
    d.on_exit = "destroy"
    d.start()
    assert (await client.get(sb.id)).state == "running"
    assert (await sb.exec("echo back")).stdout == "back\n"
    assert d.stop() == 0  # --on-exit destroy
    runc = subprocess.run(
        ["runc", "--root", str(d.state / "local" / "runc"), "list", "-q"],
        capture_output=True,
        text=True,
    )
    assert runc.stdout.split() == []
    d.start()
    with pytest.raises(SandboxNotFoundError):
        await client.get(sb.id)
    await client.close()


async def test_a_sandbox_killed_behind_the_daemon_is_reported(
    client: Client, daemon: DaemonProcess
) -> None:
    sb = await client.create()
    stream = sb.exec_stream("echo started; sleep 30")
    errors: list[SandboxEventError] = []
    sb.on("error", errors.append)
    with pytest.raises(Exception) as exc_info:
        async for chunk in stream:
            assert chunk.text == "started\n"
            subprocess.run(
                ["runc", "--root", str(daemon.state / "local" / "runc"), "kill", sb.id, "KILL"],
                check=True,
            )
    assert getattr(exc_info.value, "reason", "") == "SANDBOX_TERMINATED"
    await _wait_for(lambda: bool(errors))
    assert errors[0].type == "error" and errors[0].attributes["kind"] == "lost"
    assert (await sb.refresh()).state == "error"
    await sb.destroy()  # a dead sandbox can still be cleaned up


async def test_alerts_and_health_checks_survive_kill9(private_daemon: DaemonProcess) -> None:
    from computesdk import AlertThreshold, Resources

    d = private_daemon
    client = await Client.connect(socket=d.socket)
    sb = await client.create(template="python", resources=Resources(memory_mb=128))
    await sb.register_health_check("marker", "test -f /workspace/ok")
    await sb.set_alert_thresholds([AlertThreshold("memory", 50, 30)], interval_ms=200)
    d.kill9()
    d.start()
    report = await sb.health_report()  # the client rides out the restart
    assert report.results["marker"][0] is False
    alerts: list[Event] = []
    sb.on("resourceAlert", alerts.append)
    await sb.exec(
        [
            "python3",
            "-c",
            "import time\nx=bytearray(80<<20)\n"
            "for i in range(0,len(x),4096): x[i]=1\ntime.sleep(1.5)",
        ]
    )
    await _wait_for(lambda: bool(alerts))
    assert alerts[0].attributes["type"] == "memory"
    await sb.destroy()
    await client.close()


async def test_streaming_calls_wait_for_a_restarting_daemon() -> None:
    d = new_daemon(on_exit="keep")
    d.start()
    try:
        client = await Client.connect(socket=d.socket)
        sb = await client.create("local")
        await asyncio.to_thread(d.stop)

        async def restart_later() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(d.start)

        restart = asyncio.create_task(restart_later())
        # Exec is a bidi stream and ReadFile a server stream: both must wait, not fail.
        result = await sb.exec(["echo", "after-restart"])
        assert result.stdout == "after-restart\n"
        assert await sb.files.read("/etc/hostname")
        await restart
        await sb.destroy()
        await client.close()
    finally:
        d.cleanup()
