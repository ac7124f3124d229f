"""An in-memory provider, for fast tests of the core and the features (as httpx's
MockTransport is for HTTP clients): no root, no runc, no network.

A sandbox is a dict of files. Commands are a few built-ins, enough for what the
daemon itself runs (tar for workspace copies, true for health checks) and for
tests: echo, cat (stdin to stdout), sleep, exit, sh -c with one of those, tar.
Tests steer failures through the attributes (create_error, alive, oom_kills)."""

from __future__ import annotations

import asyncio
import io
import itertools
import posixpath
import shlex
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from computesdkd.domain.errors import ComputeError, NotFound
from computesdkd.domain.model import (
    Command,
    ExitStatus,
    FileInfo,
    FileKind,
    Output,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    Started,
    Usage,
)
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps

NAME = "fake"
_ids = itertools.count(1)


@dataclass
class FakeBox:
    files: dict[str, bytes] = field(default_factory=dict)
    alive: bool = True
    oom_kills: int = 0
    processes: dict[str, FakeProcess] = field(default_factory=dict)


@dataclass
class FakeProcess:
    info: ProcessInfo
    out: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()}
    )
    stdin: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def killed_before_start(self) -> None:
        """A kill that lands before the run's first step still ends the process."""
        if not self.done.is_set():
            self.info = replace(self.info, exit=ExitStatus(-1, 9, 0), running=False)
            self.done.set()


class FakeProvider(base.Provider, caps.Files, caps.Metering):
    name = NAME
    traits = frozenset({caps.EXEC_STDIN, caps.SIGNALS, caps.RESOURCE_LIMITS})
    probe_interval_s = 0.0

    def __init__(self, name: str = NAME) -> None:
        self.name = name
        self.boxes: dict[str, FakeBox] = {}
        self.snapshots: dict[str, dict[str, bytes]] = {}
        self.volumes: dict[str, int] = {}
        # Set by tests: the next creates fail with it (a provider fault or a refusal).
        self.create_error: ComputeError | None = None
        self.destroy_error: ComputeError | None = None
        self.created = 0
        self.parts = [_FakeChanges(self), _FakeStorage(self), _FakeProcesses(self)]

    def templates(self) -> list[str]:
        return ["base", "python"]

    # ------------------------------------------------------------ lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        if self.create_error is not None:
            raise self.create_error
        self.created += 1
        box = FakeBox()
        snap = sandbox.provider_data.get("from_snapshot", "")
        if snap:
            box.files = dict(self.snapshots[snap])
        layer = sandbox.provider_data.get("import_layer", "")
        if layer:
            _untar(box.files, "/", Path(layer).read_bytes())
        sandbox.provider_sandbox_id = f"{self.name}-{next(_ids)}"
        sandbox.resources = sandbox.spec.resources
        self.boxes[sandbox.id] = box

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        if self.destroy_error is not None:
            raise self.destroy_error
        box = self.boxes.pop(sandbox.id, None)
        for proc in box.processes.values() if box else ():
            if proc.task:
                proc.task.cancel()

    async def adopt(self, sandbox: Sandbox) -> bool:
        return sandbox.id in self.boxes and self.boxes[sandbox.id].alive

    async def probe(self, sandbox: Sandbox) -> Probe:
        box = self.boxes.get(sandbox.id)
        return Probe(alive=box is not None and box.alive, oom_kills=box.oom_kills if box else 0)

    async def usage(self, sandbox: Sandbox) -> Usage:
        box = self._box(sandbox)
        return Usage(disk_used_bytes=sum(map(len, box.files.values())), sample_time=time.time())

    def _box(self, sandbox: Sandbox) -> FakeBox:
        box = self.boxes.get(sandbox.id)
        if box is None:
            raise NotFound(f"no fake sandbox {sandbox.id}", reason="SANDBOX_NOT_FOUND")
        return box

    # ------------------------------------------------------------ processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> base.ProcessRun:
        return _Run(self, sandbox, command, tag, kill_on_close)

    # ------------------------------------------------------------ files

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        data = self._box(sandbox).files.get(path)
        if data is None:
            raise NotFound(f"{path}: no such file", reason="FILE_NOT_FOUND", path=path)
        yield data[offset : offset + length] if length else data[offset:]

    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        box = self._box(sandbox)
        data = bytearray(box.files.get(path, b"") if append else b"")
        written = 0
        async for chunk in chunks:
            data += chunk
            written += len(chunk)
        box.files[path] = bytes(data)
        return self._info(path, box.files[path]), written

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        box = self._box(sandbox)
        if path in box.files:
            return self._info(path, box.files[path])
        if any(p.startswith(path.rstrip("/") + "/") for p in box.files) or path == "/":
            return FileInfo(posixpath.basename(path) or "/", path, FileKind.DIRECTORY, 0, 0o755, 0)
        raise NotFound(f"{path}: no such file", reason="FILE_NOT_FOUND", path=path)

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        prefix = path.rstrip("/") + "/"
        box = self._box(sandbox)
        return [self._info(p, d) for p, d in sorted(box.files.items()) if p.startswith(prefix)]

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        return FileInfo(posixpath.basename(path), path, FileKind.DIRECTORY, 0, 0o755, 0)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        box = self._box(sandbox)
        for p in [p for p in box.files if p == path or p.startswith(path.rstrip("/") + "/")]:
            del box.files[p]

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        box = self._box(sandbox)
        box.files[destination] = box.files.pop(source)
        return self._info(destination, box.files[destination])

    @staticmethod
    def _info(path: str, data: bytes) -> FileInfo:
        return FileInfo(posixpath.basename(path), path, FileKind.FILE, len(data), 0o644, 0)


class _FakeChanges(caps.LiveLimits, caps.Resettable, caps.Restartable):
    def __init__(self, fake: FakeProvider) -> None:
        self._fake = fake

    async def set_limits(
        self, sandbox: Sandbox, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        r = sandbox.resources
        return Resources(
            cpu_cores=cpu_cores or r.cpu_cores,
            memory_mb=memory_mb or r.memory_mb,
            disk_mb=disk_mb or r.disk_mb,
        )

    async def reset(self, sandbox: Sandbox, hard: bool) -> None:
        box = self._fake._box(sandbox)
        for proc in box.processes.values():
            if proc.task:
                proc.task.cancel()
        if hard:
            box.files.clear()

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        await self.reset(sandbox, wipe)


class _FakeStorage(caps.Snapshots, caps.Volumes):
    def __init__(self, fake: FakeProvider) -> None:
        self._fake = fake

    async def snapshot_create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        files = self._fake.snapshots[snapshot_id] = dict(self._fake._box(sandbox).files)
        return sum(map(len, files.values()))

    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        self._fake._box(sandbox).files = dict(self._fake.snapshots[snapshot_id])

    async def snapshot_delete(self, snapshot_id: str) -> None:
        self._fake.snapshots.pop(snapshot_id, None)

    def snapshot_ids(self) -> list[str]:
        return list(self._fake.snapshots)

    async def volume_create(self, name: str, size_mb: int) -> None:
        self._fake.volumes[name] = size_mb

    async def volume_delete(self, name: str) -> None:
        self._fake.volumes.pop(name, None)

    def volume_used_bytes(self, name: str) -> int:
        return 0

    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        layer.write_bytes(_tar(self._fake.snapshots[snapshot_id], "/"))


class _FakeProcesses(caps.Background, caps.ProcessListing, caps.Reattach):
    def __init__(self, fake: FakeProvider) -> None:
        self._fake = fake

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        run = _Run(self._fake, sandbox, command, tag, kill=False)

        async def drive() -> None:  # the whole run in one task, which a kill cancels
            async for _ in run.events():
                pass

        proc = run.process
        proc.task = asyncio.create_task(drive())
        proc.task.add_done_callback(lambda _: proc.killed_before_start())
        return proc.info

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        proc = self._fake._box(sandbox).processes.get(process_id)
        if proc is None:
            raise NotFound(f"no process {process_id}", reason="PROCESS_NOT_FOUND")
        await proc.done.wait()
        if output:
            for stream, offset in (("stdout", stdout_offset), ("stderr", stderr_offset)):
                data = bytes(proc.out[stream][offset:])
                if data:
                    yield Output(stream, data, offset)  # type: ignore[arg-type]
        assert proc.info.exit is not None
        yield proc.info.exit

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        proc = self._fake._box(sandbox).processes[process_id]
        proc.stdin.put_nowait(data)
        if close:
            proc.stdin.put_nowait(None)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        proc = self._fake._box(sandbox).processes.get(process_id)
        if proc is not None and proc.task is not None:
            proc.task.cancel()

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        return [p.info for p in self._fake._box(sandbox).processes.values()]


class _Run(base.ProcessRun):
    """One command of the fake's little shell, run as a task."""

    def __init__(
        self, provider: FakeProvider, sandbox: Sandbox, command: Command, tag: str, kill: bool
    ) -> None:
        self._box = provider._box(sandbox)
        self._kill = kill
        pid = next(_ids)
        self._proc = FakeProcess(
            ProcessInfo(f"proc-{pid}", pid, list(command.args), tag, True, None, int(time.time()))
        )
        self._box.processes[self._proc.info.process_id] = self._proc
        self.process = self._proc
        self._args = _words(command.args)
        self._queue: asyncio.Queue[ProcessEvent | None] = asyncio.Queue()

    async def events(self) -> AsyncIterator[ProcessEvent]:
        info = self._proc.info
        yield Started(info.process_id, info.pid)
        started = time.monotonic()
        code, signal = 0, 0
        try:
            code = await self._interpret()
        except asyncio.CancelledError:
            code, signal = -1, 9
            raise
        finally:
            ms = int((time.monotonic() - started) * 1000)
            info = self._proc.info = replace(info, exit=ExitStatus(code, signal, ms), running=False)
            self._proc.done.set()
        for stream in ("stdout", "stderr"):
            data = bytes(self._proc.out[stream])
            if data:
                yield Output(stream, data, 0)
        assert info.exit is not None
        yield info.exit

    async def _interpret(self) -> int:
        args, out, files = self._args, self._proc.out, self._box.files
        match args:
            case ["echo", *words]:
                out["stdout"] += (" ".join(words) + "\n").encode()
            case ["cat"]:
                while (chunk := await self._proc.stdin.get()) is not None:
                    out["stdout"] += chunk
            case ["sleep", seconds]:
                await asyncio.sleep(float(seconds))
            case ["exit", code]:
                return int(code)
            case ["true"]:
                return 0
            case ["false"]:
                return 1
            case ["tar", "-C", root, "-cf", "-", "."]:
                out["stdout"] += _tar(files, root)
            case ["tar", "-C", root, "-xf", "-"]:
                data = bytearray()
                while (chunk := await self._proc.stdin.get()) is not None:
                    data += chunk
                _untar(files, root, bytes(data))
            case _:
                out["stderr"] += f"fake: {shlex.join(args)}: not found\n".encode()
                return 127
        return 0

    async def send_stdin(self, data: bytes) -> None:
        self._proc.stdin.put_nowait(data)

    async def close_stdin(self) -> None:
        self._proc.stdin.put_nowait(None)

    async def send_signal(self, signal: int) -> None:
        if self._proc.task is not None:
            self._proc.task.cancel()

    async def aclose(self) -> None:
        if self._kill and self._proc.info.running and self._proc.task is not None:
            self._proc.task.cancel()


def _words(args: list[str]) -> list[str]:
    """sh -c 'CMD' runs CMD as the built-in of that name."""
    if len(args) == 3 and args[0] in ("sh", "/bin/sh") and args[1] == "-c":
        return shlex.split(args[2])
    return list(args)


def _tar(files: dict[str, bytes], root: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in sorted(files.items()):
            if path.startswith(root.rstrip("/") + "/"):
                member = tarfile.TarInfo(posixpath.relpath(path, root))
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return buf.getvalue()


def _untar(files: dict[str, bytes], root: str, data: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is not None:
                files[posixpath.join(root, posixpath.normpath(member.name))] = f.read()


__all__ = ["WORKDIR", "FakeProvider"]
