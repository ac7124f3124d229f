"""Destroy, the sweeper, adopt after a restart, processes and OOM, on the fake."""

from __future__ import annotations

import asyncio

import pytest

from computesdkd.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from computesdkd.domain.model import Command, ExitStatus, Output, State
from conftest import Harness, spec


async def test_two_destroys_join_one_teardown(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    await asyncio.gather(h.app.lifecycle.destroy(sb.id), h.app.lifecycle.destroy(sb.id))
    assert h.events(sb.id).count("destroyed") == 1
    with pytest.raises(NotFound) as e:
        await h.app.lifecycle.destroy(sb.id)
    assert e.value.reason == "SANDBOX_NOT_FOUND"


async def test_a_failed_destroy_stays_in_error_until_the_sweeper_frees_it(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    h.fake.destroy_error = Unavailable("vendor down", reason="PROVIDER_UNAVAILABLE")
    with pytest.raises(Unavailable):
        await h.app.lifecycle.destroy(sb.id)
    assert h.app.registry.get(sb.id).state == State.ERROR
    h.fake.destroy_error = None
    h.app.lifecycle.reaps[sb.id].due = 0  # due now, not after the backoff
    await h.app.sweeper.sweep()
    for _ in range(100):
        if h.app.registry.find(sb.id) is None:
            break
        await asyncio.sleep(0.01)
    assert h.app.registry.find(sb.id) is None and sb.id not in h.fake.boxes


async def test_the_sweeper_ends_a_timed_out_sandbox(h: Harness) -> None:
    sb = await h.app.placement.create(spec(timeout_ms=1))
    await asyncio.sleep(0.01)
    await h.app.sweeper.sweep()
    await asyncio.sleep(0.05)
    assert h.app.registry.find(sb.id) is None
    assert h.store.events.after(0, {sb.id})[-1].attributes["reason"] == "timeout"


async def test_a_dead_sandbox_goes_to_error_and_is_freed(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    h.fake.boxes[sb.id].alive = False
    await h.app.sweeper.sweep()
    await asyncio.sleep(0.05)
    kept = h.app.registry.get(sb.id)  # the record stays, saying why
    assert kept.state == State.ERROR and "unexpectedly" in kept.error_message
    assert sb.id not in h.fake.boxes  # what it held is freed at once
    with pytest.raises(FailedPrecondition) as e:
        await h.app.processes.exec(sb.id, Command(["true"]))
    assert e.value.reason == "SANDBOX_NOT_RUNNING"


async def test_restart_adopts_live_sandboxes_and_drops_lost_ones(h: Harness) -> None:
    live = await h.app.placement.create(spec(keep_alive=True))
    lost = await h.app.placement.create(spec(keep_alive=True))
    h.fake.boxes[lost.id].alive = False
    app = await h.restart()
    assert app.registry.get(live.id).state == State.RUNNING
    assert app.registry.find(lost.id) is None
    assert "destroyed" in h.events(lost.id)


async def test_exec_records_start_and_exit(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    _, events = await h.app.processes.exec(sb.id, Command(["echo", "hi"]))
    got = [ev async for ev in events]
    assert any(isinstance(ev, Output) and ev.data == b"hi\n" for ev in got)
    assert isinstance(got[-1], ExitStatus) and got[-1].exit_code == 0
    assert h.events(sb.id)[-2:] == ["process.started", "process.exited"]


async def test_run_command_collects_output(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    out = await h.app.processes.run_command(sb.id, Command(["sh", "-c", "echo 42"]), 1 << 20)
    assert bytes(out.stdout) == b"42\n" and out.exited is not None


async def test_an_oom_kill_is_reported_once(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    h.fake.boxes[sb.id].oom_kills = 1
    await h.app.sweeper.sweep()
    await h.app.sweeper.sweep()
    assert h.events(sb.id).count("out-of-memory") == 1


async def test_set_env_checks_names_and_merges(h: Harness) -> None:
    sb = await h.app.placement.create(spec(env={"A": "1", "B": "2"}))
    assert h.app.lifecycle.set_env(sb.id, {"C": "3"}, ["A"]) == {"B": "2", "C": "3"}
    with pytest.raises(Exception) as e:
        h.app.lifecycle.set_env(sb.id, {"X=Y": "1"}, [])
    assert getattr(e.value, "reason", "") == "INVALID_ENV"


async def test_exec_refuses_env_names_a_process_cannot_carry(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    for bad in ("A=B", "", "X\x00Y"):
        with pytest.raises(InvalidArgument) as e:
            await h.app.processes.exec(sb.id, Command(["true"], env={bad: "1"}))
        assert e.value.reason == "INVALID_ENV"


@pytest.mark.parametrize("change", ["reset", "restart"])
async def test_a_process_ended_by_a_reset_or_restart_still_reports_its_exit(
    h: Harness, change: str
) -> None:
    sb = await h.app.placement.create(spec())
    await h.app.processes.start(sb.id, Command(["sleep", "30"]), "")
    if change == "reset":
        await h.app.lifecycle.reset(sb.id, hard=False)
    else:
        await h.app.lifecycle.restart(sb.id, "", None, None)
    for _ in range(100):
        if "process.exited" in h.events(sb.id):
            break
        await asyncio.sleep(0.01)
    assert "process.exited" in h.events(sb.id)


async def test_restart_refuses_env_names_a_process_cannot_carry(h: Harness) -> None:
    sb = await h.app.placement.create(spec())
    with pytest.raises(InvalidArgument) as e:
        await h.app.lifecycle.restart(sb.id, "", {"A=B": "1"}, None)
    assert e.value.reason == "INVALID_ENV"
