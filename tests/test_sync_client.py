"""The blocking facade works without an event loop in the caller."""

from __future__ import annotations

import threading

from computesdk.sync import SyncClient, SyncSandbox, compute
from conftest import DaemonProcess


def _no_running_loop() -> None:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AssertionError("the caller already runs an event loop")


def test_sync_facade(daemon: DaemonProcess) -> None:
    result: dict[str, object] = {}

    def scenario() -> None:  # a plain thread, as a script would be
        _no_running_loop()
        with compute(
            "local", template="python", socket=daemon.socket, metadata={"via": "sync"}
        ) as sb:
            result["six_times_seven"] = sb.exec("python3 -c 'print(6*7)'").stdout
            chunks = [c.text for c in sb.exec_stream("echo a; echo b >&2")]
            result["chunks"] = sorted(chunks)
            sb.files.write("notes.txt", "hi")
            result["file"] = sb.files.read_text("/workspace/notes.txt")
            result["state"] = sb.get_status().state
            result["events"] = [e.type for e in sb.events()][:2]
            result["id"] = sb.id
        with SyncClient(socket=daemon.socket) as c:
            result["gone"] = [s.id for s in c.list(metadata={"via": "sync"})]

    t = threading.Thread(target=scenario)
    t.start()
    t.join(60)
    assert result["six_times_seven"] == "42\n"
    assert result["chunks"] == ["a\n", "b\n"]
    assert result["file"] == "hi" and result["state"] == "running"
    assert result["events"] == ["created", "ready"]
    assert result["gone"] == []


def test_sync_facade_reaches_every_feature(daemon: DaemonProcess) -> None:
    with SyncClient(socket=daemon.socket) as c:
        made = c.batch_create([{"template": "base"}, {"template": "nope"}])
        sb = made[0]
        assert isinstance(sb, SyncSandbox) and not isinstance(made[1], SyncSandbox)
        sb.files.write("/workspace/v", b"one")
        snap = sb.snapshots.create("s")
        sb.files.write("/workspace/v", b"two")
        sb.snapshots.restore(snap)
        assert sb.files.read("/workspace/v") == b"one"
        assert sb.set_env("K", "v") == {"K": "v"}
        assert sb.exec("echo $K").stdout == "v\n"
        c.groups.create("sync-g", [sb.id])
        results = list(c.groups.broadcast("sync-g", "echo hi"))
        assert [r.result.stdout for r in results if r.result] == ["hi\n"]
        c.groups.delete("sync-g")
        built = c.templates.build("sync-tpl", setup=["echo sync > /sync"])
        events = list(c.templates.build_stream("sync-tpl", setup=["echo sync > /sync"]))
        assert events[-1].cache_hit and events[-1].template.digest == built.template.digest
        assert "sync-tpl" in [t.name for t in c.templates.list()]
        c.templates.delete("sync-tpl")
        assert sb.id in [s.id for s in c.list_active_sandboxes()]
        sb.destroy()
