from __future__ import annotations

import asyncio

from computesdk import Client, Event


async def test_filters_and_resume_after_sequence(client: Client) -> None:
    a = await client.create()
    b = await client.create()
    await a.exec("true")
    await b.exec("true")
    only_a = [e async for e in client.events(sandbox_ids=[a.id], follow=False)]
    assert {e.sandbox_id for e in only_a} == {a.id}
    assert [e.type for e in only_a] == ["created", "ready", "process.started", "process.exited"]
    ready = [
        e async for e in client.events(types=["ready"], sandbox_ids=[a.id, b.id], follow=False)
    ]
    assert [e.sandbox_id for e in ready] == [a.id, b.id]
    resumed = [
        e async for e in client.events(sandbox_ids=[a.id], after=only_a[1].sequence, follow=False)
    ]
    assert resumed == only_a[2:]
    await asyncio.gather(a.destroy(), b.destroy())


async def test_live_subscribers_see_events_as_they_happen(client: Client) -> None:
    seen: list[Event] = []
    got_ready = asyncio.Event()

    async def follow() -> None:
        async for ev in client.events(types=["ready", "destroyed"]):
            seen.append(ev)
            if ev.type == "ready":
                got_ready.set()
            if ev.type == "destroyed" and ev.sandbox_id == sb.id:
                return

    sb = await client.create()
    task = asyncio.create_task(follow())
    await asyncio.wait_for(got_ready.wait(), 10)
    await sb.destroy()
    await asyncio.wait_for(task, 10)
    mine = [e.type for e in seen if e.sandbox_id == sb.id]
    assert mine == ["ready", "destroyed"]


async def test_sandbox_callbacks(client: Client) -> None:
    sb = await client.create()
    got: list[str] = []
    done = asyncio.Event()
    sb.on("ready", lambda e: got.append(e.type))
    sb.on("process.exited", lambda e: got.append(e.attributes["exit_code"]))

    async def on_destroyed(e: Event) -> None:
        got.append(e.type)
        done.set()

    sb.on("destroyed", on_destroyed)
    await sb.exec("exit 4", check=False)
    await sb.destroy()
    await asyncio.wait_for(done.wait(), 10)
    assert got == ["ready", "4", "destroyed"]
