"""The conformance scenarios every client runs (tests/conformance/scenarios.json),
here through the Python client against its own restartable daemon."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pki import CA

from computesdk import Client, CommandExitError, ComputeSDKError, Sandbox
from computesdk.types import Event
from conftest import DaemonProcess, new_daemon

SCENARIOS = json.loads((Path(__file__).parent / "conformance" / "scenarios.json").read_text())


@pytest_asyncio.fixture(scope="module")
async def conformance_daemon() -> AsyncIterator[DaemonProcess]:
    d = new_daemon(on_exit="keep")  # sandboxes must outlive restart_daemon
    # The network listener too, on a port that stays the same across restarts.
    ca = CA(d.root)
    server = ca.issue("server", server=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d.extra_args = ["--listen", f"127.0.0.1:{port}", "--tls-cert", str(server.cert),
                    "--tls-key", str(server.key)]  # fmt: skip
    d.start()
    async with await Client.connect(socket=d.socket) as admin:
        _, token = await admin.admin.create_token("conformance", "admin")
    d.tls = {"address": f"127.0.0.1:{port}", "ca": str(ca.pem), "token": token}  # type: ignore[attr-defined]
    yield d
    with contextlib.suppress(Exception):
        async with await Client.connect(socket=d.socket) as c:
            for sb in await c.list():
                await sb.destroy()
    d.cleanup()


class Runner:
    def __init__(self, client: Client, daemon: DaemonProcess) -> None:
        self.client = client
        self.daemon = daemon
        self.sandbox: Sandbox | None = None
        self.events: list[Event] = []
        self.states: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.saved: dict[str, Any] = {}  # "$name" values: $snapshot, $state, $export
        for state in ("connected", "disconnected", "reconnecting"):
            client.on(state, lambda s=state: self.states.append(s))

    @property
    def sb(self) -> Sandbox:
        assert self.sandbox is not None, "no sandbox yet"
        return self.sandbox

    @staticmethod
    def _command(st: dict[str, Any]) -> str | list[str]:
        return st["argv"] if "argv" in st else st.get("command", "")

    @staticmethod
    def _stdin(st: dict[str, Any]) -> str | None:
        if "stdin_repeat" in st:
            return str(st["stdin_repeat"]["text"] * st["stdin_repeat"]["count"])
        return st.get("stdin")

    @staticmethod
    def _check_exec(st: dict[str, Any], out: str, err: str, code: int, sig: int) -> None:
        want = st.get("expect", {})
        got = {"stdout": out, "stderr": err, "exit_code": code, "signal": sig}
        for key in ("stdout", "stderr", "exit_code", "signal"):
            if key in want:
                assert got[key] == want[key], f"{st['op']}: {key}"

    def _saved(self, value: Any) -> Any:
        return self.saved[value[1:]] if isinstance(value, str) and value.startswith("$") else value

    async def run(self, st: dict[str, Any]) -> None:
        op, want = st["op"], st.get("expect", {})
        if op == "create":
            self.sandbox = await self.client.create(
                st.get("provider", ""),
                template=st.get("template_definition") or st.get("template", ""),
                metadata=st.get("metadata"),
                env=st.get("env"),
                resources=st.get("resources"),
                volumes=st.get("volumes", ()),
                restore_from=self._saved(st.get("restore_from", "")),
                import_state=self._saved(st.get("import_state")),
            )
        elif op in _NEW_OPS:
            await self._new_op(op, st, want)
        elif op == "destroy":
            await self.sb.destroy()
        elif op == "status":
            assert (await self.sb.get_status()).state == want["state"]
        elif op == "get":
            got = await self.client.get(st.get("sandbox_id") or self.sb.id)
            assert got.state == want["state"]
            if "template" in want:
                assert got.template == want["template"]
            for k, v in want.get("metadata", {}).items():
                assert got.metadata[k] == v
        elif op == "exec":
            r = await self.sb.exec(
                self._command(st),
                env=st.get("env"),
                cwd=st.get("cwd", ""),
                stdin=self._stdin(st),
                check=st.get("check", True),
            )
            self._check_exec(st, r.stdout, r.stderr, r.exit_code, r.signal)
        elif op == "exec_stream":
            stream = self.sb.exec_stream(
                self._command(st), env=st.get("env"), cwd=st.get("cwd", ""), stdin=self._stdin(st)
            )
            out, err, chunks = bytearray(), bytearray(), 0
            async for c in stream:
                if c.stream == "stdout":
                    assert c.offset == len(out), "stdout chunk offset"
                    out += c.data
                    chunks += 1
                else:
                    err += c.data
            assert stream.exited is not None, "no exit status"
            self._check_exec(
                st, out.decode(), err.decode(), stream.exited.exit_code, stream.exited.signal
            )
            assert chunks >= want.get("min_stdout_chunks", 0), f"{chunks} chunks: not streamed"
        elif op == "exec_interactive":
            stream = self.sb.exec_stream(self._command(st), interactive=True)
            for line in st["send"]:
                await stream.send_stdin(line)
            await stream.close_stdin()
            out_b = b"".join([c.data async for c in stream if c.stream == "stdout"])
            assert stream.exited is not None
            self._check_exec(st, out_b.decode(), "", stream.exited.exit_code, 0)
        elif op == "write_file":
            data = (
                base64.b64decode(st["content_base64"])
                if "content_base64" in st
                else st["content"].encode()
            )
            info = await self.sb.files.write(st["path"], data)
            if "size" in want:
                assert info.size == want["size"]
        elif op == "read_file":
            data = await self.sb.files.read(st["path"])
            expected = (
                base64.b64decode(want["content_base64"])
                if "content_base64" in want
                else want.get("content", "").encode()
            )
            assert data == expected
        elif op == "list_dir":
            assert sorted(f.name for f in await self.sb.files.list(st["path"])) == want["names"]
        elif op == "stat":
            assert (await self.sb.files.stat(st["path"])).is_dir == want["is_dir"]
        elif op == "remove":
            await self.sb.files.remove(st["path"])
        elif op == "subscribe":
            self.tasks.append(asyncio.create_task(self._collect(self.sb)))
        elif op == "wait_event":
            for _ in range(1500):
                if any(e.type == st["type"] for e in self.events):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"no {st['type']} event within 30s")
        elif op == "restart_daemon":
            await asyncio.to_thread(self.daemon.stop)
            await asyncio.to_thread(self.daemon.start)
        elif op == "expect_events":
            seqs = [e.sequence for e in self.events]
            assert seqs == sorted(set(seqs)), "events out of order or repeated"
            assert _subsequence(want["types_in_order"], [e.type for e in self.events])
            assert _subsequence(want["connection_states"], self.states), self.states
        else:
            raise AssertionError(f"unknown op {op}")

    async def _new_op(self, op: str, st: dict[str, Any], want: Any) -> None:
        if op == "snapshot_create":
            self.saved["snapshot"] = await self.sb.create_snapshot(
                st.get("name", ""), description=st.get("description", "")
            )
        elif op == "snapshot_list":
            snaps = await self.sb.list_snapshots()
            assert len(snaps) == want["count"], snaps
            assert sorted(s.name for s in snaps) == sorted(want.get("names", [])), snaps
        elif op == "snapshot_restore":
            await self.sb.restore_snapshot(self._saved(st["id"]))
        elif op == "snapshot_delete":
            await self.sb.delete_snapshot(self._saved(st["id"]))
        elif op == "save_state":
            self.saved["state"] = await self.sb.save_state()
        elif op == "export_state":
            self.saved["export"] = await self.sb.export_state()
            assert isinstance(self.saved["export"], bytes) and self.saved["export"]
        elif op == "health_check":
            assert await self.sb.health_check() is want
        elif op == "resource_usage":
            _check_paths(await self.sb.get_resource_usage(), want)
        elif op == "config":
            _check_paths(self.sb.config, want)
        elif op == "volume_delete":
            await self.client.volumes.delete(st["name"])
        elif op == "template_delete":
            await self.client.templates.delete(st["name"])

    async def _collect(self, sb: Sandbox) -> None:
        async for ev in sb.events():
            self.events.append(ev)


_NEW_OPS = {"snapshot_create", "snapshot_list", "snapshot_restore", "snapshot_delete",
            "save_state", "export_state", "health_check", "resource_usage", "config",
            "volume_delete", "template_delete"}  # fmt: skip
_COMPARE = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "eq": lambda a, b: a == b,
}


def _check_paths(obj: object, want: dict[str, Any]) -> None:
    """Each dotted snake_case path of obj equals a value or passes {gt|gte|...: n}."""
    for path, expected in want.items():
        got: Any = obj
        for part in path.split("."):
            got = getattr(got, part)
        tests = expected if isinstance(expected, dict) else {"eq": expected}
        for name, bound in tests.items():
            assert _COMPARE[name](got, bound), f"{path} = {got!r}, expected {name} {bound!r}"


def _check_command_error(err: CommandExitError, want: dict[str, Any]) -> None:
    for key in ("exit_code", "signal", "stdout", "stderr"):
        if key in want:
            assert getattr(err, key) == want[key], f"CommandExitError.{key}"
    assert err.result.exit_code == err.exit_code


def _subsequence(want: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(any(g == w for g in it) for w in want)


@pytest.mark.parametrize("transport", ["socket", "tls"])
@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["name"])
async def test_conformance(
    scenario: dict[str, Any], transport: str, conformance_daemon: DaemonProcess
) -> None:
    """Each scenario over the Unix socket, and over TLS TCP with a tenant's token."""
    if transport == "tls":
        client = await Client.connect(**conformance_daemon.tls)  # type: ignore[attr-defined]
    else:
        client = await Client.connect(socket=conformance_daemon.socket)
    runner = Runner(client, conformance_daemon)
    try:
        for i, st in enumerate(scenario["steps"]):
            if "error" not in st:
                await runner.run(st)
                continue
            if st["error"].get("kind") == "CommandExitError":
                with pytest.raises(CommandExitError) as failed:
                    await runner.run(st)
                _check_command_error(failed.value, st["error"])
                continue
            with pytest.raises(ComputeSDKError) as info:
                await runner.run(st)
            assert info.value.reason == st["error"]["reason"], f"step {i} ({st['op']})"
            assert info.value.code.name == st["error"]["code"], f"step {i} ({st['op']})"
    finally:
        for t in runner.tasks:
            t.cancel()
        await client.close()
