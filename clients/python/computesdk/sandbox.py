"""A sandbox handle: processes, files, status and events of one sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from computesdk_api.filesystem.v1 import filesystem_pb2 as fs_pb
from computesdk_api.monitoring.v1 import monitoring_pb2 as mon_pb
from computesdk_api.process.v1 import process_pb2 as proc_pb
from computesdk_api.sandbox.v1 import sandbox_pb2

from ._rpc import CHUNK, translated
from .errors import UnsupportedError
from .state import Snapshots
from .types import (
    STATE_NAMES,
    AlertThreshold,
    Event,
    ExecResult,
    FileInfo,
    HealthReport,
    OutputChunk,
    ProcessInfo,
    Resources,
    ResourceUsage,
    SandboxStatus,
)

if TYPE_CHECKING:
    from .client import Client

Callback = Callable[..., Any]
OutputCallback = Callable[[str], Any]


def _command(
    command: str | Sequence[str],
    cwd: str,
    env: Mapping[str, str] | None,
    timeout_ms: int,
    stdin: bool,
) -> proc_pb.Command:
    c = proc_pb.Command(cwd=cwd, env=dict(env or {}), timeout_ms=timeout_ms, stdin=stdin)
    if isinstance(command, str):
        c.command = command
    else:
        c.args.extend(command)
    return c


async def _call(cb: Callable[..., Any] | None, *args: Any) -> None:
    if cb is not None:
        result = cb(*args)
        if inspect.isawaitable(result):
            await result


def _stdin_requests(raw: bytes) -> list[proc_pb.ExecRequest]:
    return [proc_pb.ExecRequest(stdin=raw[i : i + CHUNK]) for i in range(0, len(raw), CHUNK)]


class _Tracked(Protocol):
    process_id: str
    pid: int
    exited: proc_pb.Exited | None


async def _output(call: Any, proc: _Tracked) -> AsyncIterator[OutputChunk]:
    """Turns an Exec or AttachProcess stream into chunks, noting start and exit on proc."""
    try:
        with translated():
            async for resp in call:
                kind = resp.WhichOneof("event")
                if kind == "started":
                    proc.process_id, proc.pid = resp.started.process_id, resp.started.pid
                elif kind in ("stdout", "stderr"):
                    out = getattr(resp, kind)
                    yield OutputChunk(kind, out.data, out.offset)
                elif kind == "exited":
                    proc.exited = resp.exited
                    # The exit is the stream's last word. Input sent as the
                    # command ended can make grpcio report INTERNAL ("Internal
                    # error from Core", grpc/grpc#36066) in place of the OK
                    # that follows: nothing after the exit is worth waiting for.
                    return
    finally:
        call.cancel()


class ExecStream:
    """A running command. Iterate it for output chunks; afterwards .result holds the end."""

    def __init__(self, sandbox: Sandbox, command: proc_pb.Command, stdin: bytes | None) -> None:
        self._sandbox = sandbox
        self._requests: asyncio.Queue[proc_pb.ExecRequest | None] = asyncio.Queue()
        self._requests.put_nowait(
            proc_pb.ExecRequest(start=proc_pb.ExecStart(sandbox_id=sandbox.id, command=command))
        )
        if stdin is not None:
            for req in _stdin_requests(stdin):
                self._requests.put_nowait(req)
            self._requests.put_nowait(proc_pb.ExecRequest(close_stdin=True))
        self.process_id = ""
        self.pid = 0
        self.exited: proc_pb.Exited | None = None

    async def _outgoing(self) -> AsyncIterator[proc_pb.ExecRequest]:
        while (req := await self._requests.get()) is not None:
            yield req

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        try:
            async for chunk in _output(
                self._sandbox.client.processes.Exec(self._outgoing(), wait_for_ready=True), self
            ):
                yield chunk
        finally:
            self._requests.put_nowait(None)

    async def send_stdin(self, data: bytes | str) -> None:
        for req in _stdin_requests(data.encode() if isinstance(data, str) else data):
            await self._requests.put(req)

    async def close_stdin(self) -> None:
        await self._requests.put(proc_pb.ExecRequest(close_stdin=True))

    async def signal(self, signal: int) -> None:
        await self._requests.put(proc_pb.ExecRequest(signal=signal))

    @property
    def exit_code(self) -> int | None:
        return None if self.exited is None else self.exited.exit_code


class Process:
    """A background process; its output can be re-read from any byte offset."""

    @property
    def id(self) -> str:
        return self.process_id

    def __init__(self, sandbox: Sandbox, info: proc_pb.Process) -> None:
        self.sandbox = sandbox
        self.process_id = info.process_id
        self.pid = info.pid
        self.exited: proc_pb.Exited | None = None

    async def attach(
        self, stdout_offset: int = 0, stderr_offset: int = 0
    ) -> AsyncIterator[OutputChunk]:
        req = proc_pb.AttachProcessRequest(
            sandbox_id=self.sandbox.id,
            process_id=self.id,
            stdout_offset=stdout_offset,
            stderr_offset=stderr_offset,
        )
        async for chunk in _output(
            self.sandbox.client.processes.AttachProcess(req, wait_for_ready=True), self
        ):
            yield chunk

    async def wait(self) -> ExecResult:
        """Collects all output from offset 0 until the process exits."""
        return await self._collect(bytearray(), bytearray())

    async def _collect(self, out: bytearray, err: bytearray) -> ExecResult:
        """Appends the output from where out and err end until the process exits."""
        async for chunk in self.attach(len(out), len(err)):
            (out if chunk.stream == "stdout" else err).extend(chunk.data)
        assert self.exited is not None
        return _result(bytes(out), bytes(err), self.exited, self.id)

    async def write_stdin(self, data: bytes | str, *, close: bool = False) -> None:
        raw = data.encode() if isinstance(data, str) else data
        with translated():
            await self.sandbox.client.processes.WriteStdin(
                proc_pb.WriteStdinRequest(
                    sandbox_id=self.sandbox.id, process_id=self.id, data=raw, close=close
                )
            )

    async def signal(self, signal: int) -> None:
        with translated():
            await self.sandbox.client.processes.SignalProcess(
                proc_pb.SignalProcessRequest(
                    sandbox_id=self.sandbox.id, process_id=self.id, signal=signal
                )
            )

    async def kill(self) -> None:
        await self.signal(9)


def _result(out: bytes, err: bytes, ex: proc_pb.Exited, process_id: str) -> ExecResult:
    return ExecResult(
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        exit_code=ex.exit_code,
        duration_ms=ex.duration_ms,
        signal=ex.signal,
        timed_out=ex.timed_out,
        oom_killed=ex.oom_killed,
        process_id=process_id,
        stdout_bytes=out,
        stderr_bytes=err,
    )


class Files:
    """File operations inside the sandbox. Relative paths start at /workspace."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    async def read(self, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        buf = bytearray()
        async for chunk in self.read_stream(path, offset=offset, length=length):
            buf.extend(chunk)
        return bytes(buf)

    async def read_text(self, path: str) -> str:
        return (await self.read(path)).decode()

    async def read_stream(
        self, path: str, *, offset: int = 0, length: int = 0
    ) -> AsyncIterator[bytes]:
        call = self._sb.client.files.ReadFile(
            fs_pb.ReadFileRequest(sandbox_id=self._sb.id, path=path, offset=offset, length=length),
            wait_for_ready=True,
        )
        with translated():
            async for resp in call:
                yield resp.data

    async def write(
        self,
        path: str,
        data: bytes | str | AsyncIterator[bytes],
        *,
        mode: int = 0,
        make_parents: bool = True,
        append: bool = False,
    ) -> FileInfo:
        async def requests() -> AsyncIterator[fs_pb.WriteFileRequest]:
            yield fs_pb.WriteFileRequest(
                header=fs_pb.WriteFileHeader(
                    sandbox_id=self._sb.id,
                    path=path,
                    mode=mode,
                    make_parents=make_parents,
                    append=append,
                    expect_finish=True,
                )
            )
            if isinstance(data, (bytes, str)):
                raw = data.encode() if isinstance(data, str) else data
                for i in range(0, len(raw), CHUNK):
                    yield fs_pb.WriteFileRequest(data=raw[i : i + CHUNK])
            else:
                async for piece in data:
                    yield fs_pb.WriteFileRequest(data=piece)
            # Only now is the file put in place: a write cut short changes nothing.
            yield fs_pb.WriteFileRequest(finish=fs_pb.WriteFileFinish())

        with translated():
            resp = await self._sb.client.files.WriteFile(requests(), wait_for_ready=True)
        return FileInfo.from_proto(resp.info)

    async def list(self, path: str = "/workspace") -> list[FileInfo]:
        with translated():
            resp = await self._sb.client.files.ListDirectory(
                fs_pb.ListDirectoryRequest(sandbox_id=self._sb.id, path=path)
            )
        return [FileInfo.from_proto(e) for e in resp.entries]

    async def stat(self, path: str) -> FileInfo:
        with translated():
            resp = await self._sb.client.files.StatPath(
                fs_pb.StatPathRequest(sandbox_id=self._sb.id, path=path)
            )
        return FileInfo.from_proto(resp.info)

    async def exists(self, path: str) -> bool:
        from .errors import SandboxFileNotFoundError

        try:
            await self.stat(path)
        except SandboxFileNotFoundError:
            return False
        return True

    async def mkdir(self, path: str, *, parents: bool = True) -> FileInfo:
        with translated():
            resp = await self._sb.client.files.MakeDirectory(
                fs_pb.MakeDirectoryRequest(sandbox_id=self._sb.id, path=path, make_parents=parents)
            )
        return FileInfo.from_proto(resp.info)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        with translated():
            await self._sb.client.files.RemovePath(
                fs_pb.RemovePathRequest(sandbox_id=self._sb.id, path=path, recursive=recursive)
            )

    async def move(self, source: str, destination: str) -> FileInfo:
        with translated():
            resp = await self._sb.client.files.MovePath(
                fs_pb.MovePathRequest(
                    sandbox_id=self._sb.id, source=source, destination=destination
                )
            )
        return FileInfo.from_proto(resp.info)


class Sandbox:
    """One sandbox. Use `async with` to destroy it on exit."""

    def __init__(self, client: Client, info: sandbox_pb2.Sandbox) -> None:
        self.client = client
        self.info = info
        self.files = Files(self)
        self.snapshots = Snapshots(self)
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._listener: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def provider(self) -> str:
        return self.info.provider

    @property
    def template(self) -> str:
        return self.info.template

    @property
    def state(self) -> str:
        return STATE_NAMES.get(self.info.state, "unknown")

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.info.metadata)

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, provider={self.provider!r}, state={self.state!r})"

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()

    # ------------------------------------------------------------ processes

    def exec_stream(
        self,
        command: str | Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
        stdin: bytes | str | None = None,
        interactive: bool = False,
    ) -> ExecStream:
        """Runs a command and streams its output as it is produced.

        A string runs through /bin/sh -c; a sequence is the exact argv. With
        interactive=True stdin stays open for ExecStream.send_stdin."""
        raw = stdin.encode() if isinstance(stdin, str) else stdin
        return ExecStream(
            self, _command(command, cwd, env, timeout_ms, interactive or raw is not None), raw
        )

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
        stdin: bytes | str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        """Runs a command to completion; on_stdout/on_stderr see output as it arrives."""
        quick = stdin is None and on_stdout is None and on_stderr is None
        if quick and self.provider not in self.client.no_run_command:
            try:
                return await self._run_command(_command(command, cwd, env, timeout_ms, False))
            except UnsupportedError:
                # The provider cannot re-attach (or the daemon predates RunCommand).
                self.client.no_run_command.add(self.provider)
        stream = self.exec_stream(command, cwd=cwd, env=env, timeout_ms=timeout_ms, stdin=stdin)
        out, err = bytearray(), bytearray()
        async for chunk in stream:
            if chunk.stream == "stdout":
                out.extend(chunk.data)
                await _call(on_stdout, chunk.text)
            else:
                err.extend(chunk.data)
                await _call(on_stderr, chunk.text)
        assert stream.exited is not None
        return _result(bytes(out), bytes(err), stream.exited, stream.process_id)

    async def _run_command(self, command: proc_pb.Command) -> ExecResult:
        """One unary call; a command that writes more than fits inline is read on
        with AttachProcess from where the answer stopped."""
        with translated():
            resp = await self.client.processes.RunCommand(
                proc_pb.RunCommandRequest(sandbox_id=self.id, command=command)
            )
        if resp.HasField("exited"):
            return _result(resp.stdout, resp.stderr, resp.exited, resp.process_id)
        proc = Process(self, proc_pb.Process(process_id=resp.process_id, pid=resp.pid))
        return await proc._collect(bytearray(resp.stdout), bytearray(resp.stderr))

    async def start_process(
        self,
        command: str | Sequence[str],
        *,
        tag: str = "",
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
        stdin: bool = False,
    ) -> Process:
        """Starts a background process that outlives this call and the connection."""
        with translated():
            resp = await self.client.processes.StartProcess(
                proc_pb.StartProcessRequest(
                    sandbox_id=self.id,
                    command=_command(command, cwd, env, timeout_ms, stdin),
                    tag=tag,
                )
            )
        return Process(self, resp.process)

    def process(self, process_id: str) -> Process:
        """A handle to re-attach to an earlier process by id."""
        return Process(self, proc_pb.Process(process_id=process_id))

    async def processes(self) -> list[ProcessInfo]:
        with translated():
            resp = await self.client.processes.ListProcesses(
                proc_pb.ListProcessesRequest(sandbox_id=self.id)
            )
        return [ProcessInfo.from_proto(p) for p in resp.processes]

    # ------------------------------------------------------------ lifecycle

    async def get_status(self) -> SandboxStatus:
        with translated():
            resp = await self.client.sandboxes.GetSandboxStatus(
                sandbox_pb2.GetSandboxStatusRequest(sandbox_id=self.id)
            )
        return SandboxStatus.from_proto(resp)

    async def refresh(self) -> Sandbox:
        with translated():
            resp = await self.client.sandboxes.GetSandbox(
                sandbox_pb2.GetSandboxRequest(sandbox_id=self.id)
            )
        self.info = resp.sandbox
        return self

    async def destroy(self, *, graceful: bool = False, timeout_ms: int = 0) -> None:
        with translated():
            await self.client.sandboxes.DestroySandbox(
                sandbox_pb2.DestroySandboxRequest(
                    sandbox_id=self.id, graceful=graceful, graceful_timeout_ms=timeout_ms
                )
            )
        await self._stop_listening()

    async def reset(self, *, hard: bool = False) -> None:
        """Kills every process; hard also returns the files to the template's state."""
        with translated():
            resp = await self.client.sandboxes.ResetSandbox(
                sandbox_pb2.ResetSandboxRequest(sandbox_id=self.id, hard=hard)
            )
        self.info = resp.sandbox

    async def set_env(
        self, env: Mapping[str, str] | str, value: str | None = None, *, unset: Sequence[str] = ()
    ) -> dict[str, str]:
        """Sets variables for later commands (set_env("K", "v") or set_env({...}));
        kept across daemon restarts. Returns the whole environment now in effect."""
        pairs = {env: value or ""} if isinstance(env, str) else dict(env)
        with translated():
            resp = await self.client.sandboxes.SetSandboxEnv(
                sandbox_pb2.SetSandboxEnvRequest(sandbox_id=self.id, env=pairs, unset=list(unset))
            )
        return dict(resp.env)

    async def restart(
        self,
        *,
        template: str = "",
        env: Mapping[str, str] | None = None,
        resources: Resources | None = None,
    ) -> None:
        """Stops every process and starts again with the same id and files, or with a
        new template's files; env and resources replace the old ones when given."""
        req = sandbox_pb2.RestartSandboxRequest(sandbox_id=self.id, template=template)
        if env is not None:
            req.env.update(env)
        if resources is not None:
            req.resources.CopyFrom(resources.to_proto())
        with translated():
            resp = await self.client.sandboxes.RestartSandbox(req)
        self.info = resp.sandbox

    async def save_state(self, name: str = "") -> str:
        """Saves files, template, env and resources; returns the state id."""
        return (await self.client.states.save(self, name)).id

    async def release(self, *, hard: bool = False) -> bool:
        """Gives a sandbox acquired from a pool back to it (see Client.pools)."""
        return await self.client.pools.release(self, hard=hard)

    async def get_url(self, port: int) -> str:
        """A URL on the host's loopback that forwards to this sandbox's port."""
        return await self.client.networks.get_url(self, port)

    async def clone(
        self,
        *,
        provider: str = "",
        template: str = "",
        env: Mapping[str, str] | None = None,
        resources: Resources | None = None,
    ) -> Sandbox:
        """A new sandbox with a copy of /workspace and the env, on any provider."""
        req = sandbox_pb2.CloneSandboxRequest(
            sandbox_id=self.id, provider=provider, template=template, env=dict(env or {})
        )
        if resources is not None:
            req.resources.CopyFrom(resources.to_proto())
        with translated():
            resp = await self.client.sandboxes.CloneSandbox(req)
        return Sandbox(self.client, resp.sandbox)

    async def migrate(
        self,
        provider: str,
        *,
        template: str = "",
        preserve_files: bool = True,
        preserve_env: bool = True,
        template_mapping: Mapping[str, str] | None = None,
        env_mapping: Mapping[str, str] | None = None,
    ) -> Sandbox:
        """Moves to another provider; this sandbox is destroyed once the move succeeded."""
        with translated():
            resp = await self.client.sandboxes.MigrateSandbox(
                sandbox_pb2.MigrateSandboxRequest(
                    sandbox_id=self.id,
                    provider=provider,
                    template=template,
                    preserve_files=preserve_files,
                    preserve_env=preserve_env,
                    template_mapping=dict(template_mapping or {}),
                    env_mapping=dict(env_mapping or {}),
                )
            )
        return Sandbox(self.client, resp.sandbox)

    # ------------------------------------------------------------ usage and limits

    async def get_resource_usage(self) -> ResourceUsage:
        with translated():
            resp = await self.client.monitoring.GetResourceUsage(
                mon_pb.GetResourceUsageRequest(sandbox_id=self.id)
            )
        return ResourceUsage.from_proto(resp.usage)

    async def monitor(
        self, *, interval_ms: int = 1000, metrics: Sequence[str] = ()
    ) -> AsyncIterator[ResourceUsage]:
        """Samples at a steady pace until the caller stops iterating."""
        call = self.client.monitoring.Monitor(
            mon_pb.MonitorRequest(
                sandbox_id=self.id, interval_ms=interval_ms, metrics=list(metrics)
            ),
            wait_for_ready=True,
        )
        try:
            with translated():
                async for resp in call:
                    yield ResourceUsage.from_proto(resp.usage)
        finally:
            call.cancel()

    async def set_resource_limits(
        self, *, cpu_percent: float = 0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        with translated():
            resp = await self.client.monitoring.SetResourceLimits(
                mon_pb.SetResourceLimitsRequest(
                    sandbox_id=self.id,
                    cpu_percent=cpu_percent,
                    memory_mb=memory_mb,
                    disk_mb=disk_mb,
                )
            )
        return Resources.from_proto(resp.resources)

    async def scale(self, *, cpu_cores: float = 0, memory_mb: int = 0) -> Resources:
        with translated():
            resp = await self.client.monitoring.Scale(
                mon_pb.ScaleRequest(sandbox_id=self.id, cpu_cores=cpu_cores, memory_mb=memory_mb)
            )
        return Resources.from_proto(resp.resources)

    async def set_alert_thresholds(
        self, thresholds: Sequence[AlertThreshold], *, interval_ms: int = 1000
    ) -> None:
        """Replaces the alerts; each crossing becomes one resourceAlert event."""
        with translated():
            await self.client.monitoring.SetAlertThresholds(
                mon_pb.SetAlertThresholdsRequest(
                    sandbox_id=self.id,
                    interval_ms=interval_ms,
                    thresholds=[
                        mon_pb.AlertThreshold(
                            type=t.type, percent=t.percent, clear_percent=t.clear_percent
                        )
                        for t in thresholds
                    ],
                )
            )

    async def configure_auto_scaling(
        self,
        *,
        enabled: bool = True,
        cpu_threshold: float = 0,
        memory_threshold: float = 0,
        max_cpu_cores: float = 0,
        max_memory_mb: int = 0,
        cooldown_ms: int = 30_000,
        interval_ms: int = 1000,
    ) -> None:
        """Lets the daemon scale this sandbox within the caps; each decision is an
        autoscale event. Thresholds are percents of the current limits."""
        with translated():
            await self.client.monitoring.ConfigureAutoScaling(
                mon_pb.ConfigureAutoScalingRequest(
                    sandbox_id=self.id,
                    enabled=enabled,
                    cpu=mon_pb.ScalingRule(threshold=cpu_threshold, action="scale-up"),
                    memory=mon_pb.ScalingRule(threshold=memory_threshold, action="scale-up"),
                    max_cpu_cores=max_cpu_cores,
                    max_memory_mb=max_memory_mb,
                    cooldown_ms=cooldown_ms,
                    interval_ms=interval_ms,
                )
            )

    async def health_check(self) -> HealthReport:
        """Built-in checks (agent, exec, disk, memory) plus the registered ones."""
        with translated():
            resp = await self.client.monitoring.CheckHealth(
                mon_pb.CheckHealthRequest(sandbox_id=self.id)
            )
        return HealthReport.from_proto(resp)

    async def register_health_check(
        self, name: str, command: str, *, interval_ms: int = 0, timeout_ms: int = 0
    ) -> None:
        with translated():
            await self.client.monitoring.RegisterHealthCheck(
                mon_pb.RegisterHealthCheckRequest(
                    sandbox_id=self.id,
                    name=name,
                    command=command,
                    interval_ms=interval_ms,
                    timeout_ms=timeout_ms,
                )
            )

    async def unregister_health_check(self, name: str) -> None:
        with translated():
            await self.client.monitoring.UnregisterHealthCheck(
                mon_pb.UnregisterHealthCheckRequest(sandbox_id=self.id, name=name)
            )

    # ------------------------------------------------------------ events

    def on(self, event: str, callback: Callback) -> None:
        """Calls callback(event) for this sandbox's events: 'created', 'ready', 'error',
        'destroyed', 'process.started', 'process.exited', 'out-of-memory'; and with no
        argument for the connection's 'connected', 'disconnected' and 'reconnecting'.
        Events that already happened are replayed, so 'ready' is seen after create."""
        if event in ("connected", "disconnected", "reconnecting"):
            self.client.on(event, callback)
            return
        self._callbacks[event].append(callback)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def events(
        self, *, types: Sequence[str] = (), after: int = 0, follow: bool = True
    ) -> AsyncIterator[Event]:
        async for ev in self.client.events(
            sandbox_ids=[self.id], types=types, after=after, follow=follow
        ):
            yield ev

    async def _listen(self) -> None:
        async for ev in self.events():
            for cb in list(self._callbacks.get(ev.type, ())):
                await _call(cb, ev)
            if ev.type == "destroyed":
                return

    async def _stop_listening(self) -> None:
        if self._listener is not None and not self._listener.done():
            # Let the 'destroyed' event reach callbacks before stopping.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._listener), 2.0)
            self._listener.cancel()


__all__ = ["ExecStream", "Files", "Process", "Resources", "Sandbox"]
