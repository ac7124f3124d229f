"""The Modal adapter's own bookkeeping, driven at the provider against the Modal
fake: a restore leaves one Modal sandbox per record whatever its caller does,
the orphan sweep ends what is no record's current sandbox and only this
daemon's, output is read ahead of the reader by a bounded queue, and router
channels are closed with their sandboxes."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from computesdkd.domain.errors import NotFound
from computesdkd.domain.model import Output, Resources, SandboxSpec, State
from computesdkd.domain.model import Sandbox as Record
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProviderConfig, ProviderContext
from computesdkd.providers.modal import commands, router
from computesdkd.providers.modal.api import ModalAPI
from computesdkd.providers.modal.provider import ModalProvider
from conftest import DaemonProcess
from fakes.modal import FakeModal, Gate


async def _provider(daemon: DaemonProcess, state_dir: Path) -> ModalProvider:
    env = {k: v for k, v in daemon.env.items() if k.startswith("MODAL_")}
    p = ModalProvider(ProviderConfig(name="modal", env=env, options={}))
    await p.start(ProviderContext(state_dir=state_dir, emit=lambda *a, **k: None))
    return p


def _record(template: str = "python") -> Record:
    spec = SandboxSpec(
        provider="modal", template=template, metadata={}, timeout_ms=600_000,
        keep_alive=False, resources=Resources(memory_mb=512), env={},
    )  # fmt: skip
    return Record("mf-" + uuid.uuid4().hex[:10], spec, State.CREATING, time.time(), 0.0)


def _live(fake: FakeModal, record_id: str) -> list[str]:
    """The running Modal sandboxes tagged with this record."""
    return [b.id for b in fake.live() if b.tags.get("computesdk-sandbox") == record_id]


def _snapshots(p: ModalProvider) -> caps.Snapshots:
    snaps = p.part(caps.Snapshots)
    assert snaps is not None
    return snaps


@pytest.fixture
def fake(daemon: DaemonProcess) -> Any:
    f: FakeModal = daemon.fakes["modal"]
    yield f
    f.gates.clear()
    f.fail_next.clear()


@pytest.mark.parametrize("held", ["SandboxCreateV2", "SandboxTerminateV2"])
async def test_a_cancelled_restore_leaves_one_modal_sandbox_the_records(
    daemon: DaemonProcess, fake: FakeModal, tmp_path: Path, held: str
) -> None:
    """The caller goes away while Modal makes the new sandbox, or terminates the
    old one: the swap runs to its end, then the cancel is raised."""
    p = await _provider(daemon, tmp_path)
    rec = _record()
    await p.create(rec)
    snaps = _snapshots(p)
    try:
        old = rec.provider_sandbox_id
        await snaps.snapshot_create(rec, "s1")
        gate = fake.gates[held] = Gate()
        restore = asyncio.create_task(snaps.snapshot_restore(rec, "s1"))
        assert await asyncio.to_thread(gate.entered.wait, 60)
        restore.cancel()
        gate.release.set()
        with pytest.raises(asyncio.CancelledError):
            await restore
        assert _live(fake, rec.id) == [rec.provider_sandbox_id]
        assert rec.provider_sandbox_id != old and fake.boxes[old].terminated
        assert rec.provider_data["task_id"] == fake.boxes[rec.provider_sandbox_id].task_id
    finally:
        fake.gates.clear()
        await p.destroy(rec)
        await snaps.snapshot_delete("s1")
        await p.close()
    assert _live(fake, rec.id) == []


async def test_an_old_sandbox_modal_would_not_terminate_goes_at_reconcile(
    daemon: DaemonProcess, fake: FakeModal, tmp_path: Path
) -> None:
    p = await _provider(daemon, tmp_path)
    rec = _record()
    await p.create(rec)
    snaps = _snapshots(p)
    try:
        old, old_token = rec.provider_sandbox_id, rec.provider_data["sandbox_token"]
        await snaps.snapshot_create(rec, "s1")
        fake.fail_next["SandboxTerminateV2"] = grpc.StatusCode.INTERNAL
        await snaps.snapshot_restore(rec, "s1")  # the restore stands
        assert sorted(_live(fake, rec.id)) == sorted([old, rec.provider_sandbox_id])
        await p.reconcile({rec.id})
        assert _live(fake, rec.id) == [rec.provider_sandbox_id]
        assert fake.boxes[old].terminated
        assert fake.metadata["SandboxTerminateV2"]["x-modal-sandbox-token"] == old_token
    finally:
        await p.destroy(rec)
        await snaps.snapshot_delete("s1")
        await p.close()


async def test_a_restart_takes_back_a_restore_the_store_missed(
    daemon: DaemonProcess, fake: FakeModal, tmp_path: Path
) -> None:
    """The daemon stores the record after the restore returns; when that did not
    happen (its caller went away, or the daemon died), the record at the next start
    still names the old Modal sandbox: adopt takes the new one back from the
    provider's state dir, and reconcile ends the old one."""
    p = await _provider(daemon, tmp_path)
    rec = _record()
    await p.create(rec)
    snaps = _snapshots(p)
    stored = Record(
        rec.id, rec.spec, State.RUNNING, rec.created_at, 0.0,
        provider_sandbox_id=rec.provider_sandbox_id, provider_data=dict(rec.provider_data),
    )  # fmt: skip
    old = rec.provider_sandbox_id
    try:
        await snaps.snapshot_create(rec, "s1")
        fake.fail_next["SandboxTerminateV2"] = grpc.StatusCode.INTERNAL  # the worst case
        await snaps.snapshot_restore(rec, "s1")
        await p.close()
        p = await _provider(daemon, tmp_path)  # the restart
        assert await p.adopt(stored)
        assert stored.provider_sandbox_id == rec.provider_sandbox_id != old
        assert stored.provider_data.pop("restarted_at_adopt") == "1"  # the daemon saves it
        assert stored.provider_data == rec.provider_data
        await p.reconcile({rec.id})
        assert _live(fake, rec.id) == [rec.provider_sandbox_id] and fake.boxes[old].terminated
        assert fake.last["SandboxTerminateV2"].sandbox_id == old
        sent = fake.metadata["SandboxTerminateV2"]["x-modal-sandbox-token"]
        assert sent == fake.boxes[old].token  # the old one's own, from the stored record
    finally:
        await p.destroy(stored)
        await _snapshots(p).snapshot_delete("s1")
        await p.close()
    assert _live(fake, rec.id) == []
    again = await _provider(daemon, tmp_path)  # destroyed: nothing is taken back
    try:
        stale = Record(
            rec.id, rec.spec, State.RUNNING, rec.created_at, 0.0,
            provider_sandbox_id=old, provider_data={"api": "v2"},
        )  # fmt: skip
        assert not await again.adopt(stale) and stale.provider_sandbox_id == old
    finally:
        await again.close()


async def test_reconcile_goes_on_past_a_sandbox_it_cannot_terminate(
    daemon: DaemonProcess, fake: FakeModal, tmp_path: Path
) -> None:
    p = await _provider(daemon, tmp_path)
    orphans = [_record(), _record()]
    for rec in orphans:
        await p.create(rec)
    try:
        fake.fail_next["SandboxTerminateV2"] = grpc.StatusCode.INTERNAL  # the first one
        await p.reconcile(set())
        assert sum(fake.boxes[r.provider_sandbox_id].terminated for r in orphans) == 1
        await p.reconcile(set())
        assert all(fake.boxes[r.provider_sandbox_id].terminated for r in orphans)
    finally:
        for rec in orphans:
            await p.destroy(rec)
        await p.close()


async def test_two_deployments_at_one_host_and_path_keep_their_own(
    daemon: DaemonProcess, fake: FakeModal, tmp_path: Path
) -> None:
    """Two daemons with the same host name and state dir path (containers, pods)
    are two owners: the owner is an id kept in the state dir, not the path."""
    state = tmp_path / "state"
    state.mkdir()
    first = await _provider(daemon, state)
    rec = _record()
    await first.create(rec)
    try:
        owner = (state / "modal-owner").read_text().strip()
        assert fake.boxes[rec.provider_sandbox_id].tags["computesdk-daemon"] == owner
        shutil.move(state, tmp_path / "prod")  # the other deployment's volume, same path
        state.mkdir()
        second = await _provider(daemon, state)
        try:
            await second.reconcile(set())
            assert not fake.boxes[rec.provider_sandbox_id].terminated
        finally:
            await second.close()
        assert (state / "modal-owner").read_text().strip() != owner
        await first.reconcile(set())  # its own owner sweeps it
        assert fake.boxes[rec.provider_sandbox_id].terminated
    finally:
        await first.destroy(rec)
        await first.close()


class _Recording(asyncio.Queue[Any]):
    """The queue commands.read makes, with what it held at most and how often a
    put had to wait."""

    made: list[_Recording] = []

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.high = 0
        self.waited = 0
        _Recording.made.append(self)

    async def put(self, item: Any) -> None:
        if self.full():
            self.waited += 1
        await super().put(item)

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        self.high = max(self.high, self.qsize())


async def test_output_waits_for_a_slow_reader_in_a_bounded_queue(
    daemon: DaemonProcess, fake: FakeModal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "Queue", _Recording)
    _Recording.made.clear()
    p = await _provider(daemon, tmp_path)
    rec = _record()
    await p.create(rec)
    lines = 300  # a line at a time, so that they come as chunks of their own
    size = sum(len(f"line{i}\n") for i in range(lines))
    script = f"i=0; while [ $i -lt {lines} ]; do echo line$i; i=$((i+1)); sleep 0.01; done"
    try:
        info = await p.start_process(rec, _command(script), "")
        events = p.attach(rec, info.process_id, 0, 0)
        await anext(events)  # Started
        got = len((await anext(events)).data)
        queue = _Recording.made[-1]
        for _ in range(3000):  # the reader stalls until the pumps wait, or overrun
            if queue.waited or queue.qsize() > commands.QUEUED_CHUNKS:
                break
            await asyncio.sleep(0.01)
        assert 0 < queue.maxsize <= 16 and queue.high <= queue.maxsize
        assert queue.waited  # the pump waited for the reader instead of reading on
        async for ev in events:
            if isinstance(ev, Output):
                got += len(ev.data)
        assert got == size and queue.high <= queue.maxsize
    finally:
        await p.destroy(rec)
        await p.close()


def _command(script: str) -> Any:
    from computesdkd.domain.model import Command

    return Command(args=["sh", "-c", script], cwd="/")


async def test_router_channels_close_with_their_sandboxes(
    daemon: DaemonProcess, fake: FakeModal, tmp_path: Path
) -> None:
    p = await _provider(daemon, tmp_path)
    a, b = _record(), _record()
    await p.create(a)
    await p.create(b)
    routers = p._router  # one router address in the fake: one channel for both
    c = _record()
    try:
        assert routers.open_channels() == 1
        await p.destroy(a)
        assert routers.open_channels() == 1  # b is still on it
        await p.destroy(b)
        assert routers.open_channels() == 0
        await p.create(c)
        assert routers.open_channels() == 1
        await p.close()  # closes what is open
        assert routers.open_channels() == 0
    finally:
        for rec in (a, b, c):
            await p.destroy(rec)
        await p.close()


async def test_router_channels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router, "MAX_CHANNELS", 3)
    r = router.Router(ModalAPI({}))
    try:
        for i in range(8):  # eight sandboxes, each on a router of its own
            url = f"http://127.0.0.1:{2000 + i}"
            r._access[f"s{i}"] = router.Access(url, "jwt", 0.0)
            await r._channel(url)
            assert r.open_channels() <= 3
        for i in range(8):
            del r._access[f"s{i}"]
        await r._channel("http://127.0.0.1:3000")  # the unused ones go when one opens
        assert r.open_channels() == 1
    finally:
        await r.close()
    assert r.open_channels() == 0


async def test_an_unknown_template_is_named_within_a_bound(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    p = await _provider(daemon, tmp_path)
    try:
        with pytest.raises(NotFound) as e:
            await p.create(_record("t" * 100_000))
        assert e.value.reason == "TEMPLATE_NOT_FOUND" and len(e.value.message) < 400
        assert "t" * 200 in e.value.message
    finally:
        await p.close()
