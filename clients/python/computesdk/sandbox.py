"""A sandbox handle: processes, lifecycle and events of one sandbox. Its files
(Files), commands (ExecStream, Process) and monitoring calls live in their own
modules; this one puts them together."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from computesdk_api.process.v1 import process_pb2 as proc_pb
from computesdk_api.sandbox.v1 import sandbox_pb2

from . import _rpc
from ._files import Files
from ._process import ExecStream, Process, _command, _result
from ._rpc import fire
from ._sandbox_events import SandboxEvents
from ._sandbox_monitoring import SandboxMonitoring
from ._sandbox_state import SandboxState
from .errors import CommandExitError
from .options import as_resources
from .state import Snapshots
from .types import STATE_NAMES, ExecResult, ProcessInfo, Resources, SandboxStatus

if TYPE_CHECKING:
    from .client import Client

OutputCallback = Callable[[str], Any]


class Sandbox(SandboxMonitoring, SandboxEvents, SandboxState):
    """One sandbox. Use `async with` to destroy it on exit. Usage, limits, scaling
    and health checks come with SandboxMonitoring; on(), events() and reconnect()
    with SandboxEvents; snapshots, saved state and config with SandboxState."""

    def __init__(self, client: Client, info: sandbox_pb2.Sandbox) -> None:
        self.client = client
        self.info = info
        self.files = Files(self)
        self.snapshots = Snapshots(self)
        self._init_events()

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
        check: bool = True,
    ) -> ExecResult:
        """Runs a command to completion; on_stdout/on_stderr see output as it arrives.

        A non-zero exit or a signal raises CommandExitError (holding the result)
        unless check=False; a timeout returns its result with timed_out set."""
        result = await self._exec(command, cwd, env, timeout_ms, stdin, on_stdout, on_stderr)
        if check and not result.timed_out and (result.exit_code != 0 or result.signal):
            raise CommandExitError(result)
        return result

    async def _exec(
        self,
        command: str | Sequence[str],
        cwd: str,
        env: Mapping[str, str] | None,
        timeout_ms: int,
        stdin: bytes | str | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> ExecResult:
        quick = stdin is None and on_stdout is None and on_stderr is None
        # RunCommand reads on past its inline answer by re-attaching: only a
        # provider that can re-attach to a command takes it.
        if quick and "exec.resume" in await self.client.capabilities(self.provider):
            return await self._run_command(_command(command, cwd, env, timeout_ms, False))
        stream = self.exec_stream(command, cwd=cwd, env=env, timeout_ms=timeout_ms, stdin=stdin)
        out, err = bytearray(), bytearray()
        async for chunk in stream:
            if chunk.stream == "stdout":
                out.extend(chunk.data)
                await fire([on_stdout], chunk.text)
            else:
                err.extend(chunk.data)
                await fire([on_stderr], chunk.text)
        assert stream.exited is not None
        return _result(bytes(out), bytes(err), stream.exited, stream.process_id)

    async def _run_command(self, command: proc_pb.Command) -> ExecResult:
        """One unary call; a command that writes more than fits inline is read on
        with AttachProcess from where the answer stopped."""
        resp = await _rpc.call(
            self.client.processes.RunCommand,
            proc_pb.RunCommandRequest(sandbox_id=self.id, command=command),
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
        resp = await _rpc.call(
            self.client.processes.StartProcess,
            proc_pb.StartProcessRequest(
                sandbox_id=self.id,
                command=_command(command, cwd, env, timeout_ms, stdin),
                tag=tag,
            ),
        )
        return Process(self, resp.process)

    def process(self, process_id: str) -> Process:
        """A handle to re-attach to an earlier process by id."""
        return Process(self, proc_pb.Process(process_id=process_id))

    async def processes(self) -> list[ProcessInfo]:
        resp = await _rpc.call(
            self.client.processes.ListProcesses, proc_pb.ListProcessesRequest(sandbox_id=self.id)
        )
        return [ProcessInfo.from_proto(p) for p in resp.processes]

    # ------------------------------------------------------------ lifecycle

    async def get_status(self) -> SandboxStatus:
        resp = await _rpc.call(
            self.client.sandboxes.GetSandboxStatus,
            sandbox_pb2.GetSandboxStatusRequest(sandbox_id=self.id),
        )
        return SandboxStatus.from_proto(resp)

    async def refresh(self) -> Sandbox:
        resp = await _rpc.call(
            self.client.sandboxes.GetSandbox, sandbox_pb2.GetSandboxRequest(sandbox_id=self.id)
        )
        self.info = resp.sandbox
        return self

    async def destroy(self, *, graceful: bool = False, timeout_ms: int = 0) -> None:
        await _rpc.call(
            self.client.sandboxes.DestroySandbox,
            sandbox_pb2.DestroySandboxRequest(
                sandbox_id=self.id, graceful=graceful, graceful_timeout_ms=timeout_ms
            ),
        )
        await self._stop_listening()

    async def reset(self, *, hard: bool = False) -> None:
        """Kills every process; hard also returns the files to the template's state."""
        resp = await _rpc.call(
            self.client.sandboxes.ResetSandbox,
            sandbox_pb2.ResetSandboxRequest(sandbox_id=self.id, hard=hard),
        )
        self.info = resp.sandbox

    async def set_env(
        self, env: Mapping[str, str] | str, value: str | None = None, *, unset: Sequence[str] = ()
    ) -> dict[str, str]:
        """Sets variables for later commands (set_env("K", "v") or set_env({...}));
        kept across daemon restarts. Returns the whole environment now in effect."""
        pairs = {env: value or ""} if isinstance(env, str) else dict(env)
        resp = await _rpc.call(
            self.client.sandboxes.SetSandboxEnv,
            sandbox_pb2.SetSandboxEnvRequest(sandbox_id=self.id, env=pairs, unset=list(unset)),
        )
        return dict(resp.env)

    async def restart(
        self,
        *,
        template: str = "",
        env: Mapping[str, str] | None = None,
        resources: Resources | Mapping[str, Any] | None = None,
    ) -> None:
        """Stops every process and starts again with the same id and files, or with a
        new template's files; env and resources (Resources or a dict, as in create)
        replace the old ones when given."""
        req = sandbox_pb2.RestartSandboxRequest(sandbox_id=self.id, template=template)
        if env is not None:
            req.env.update(env)
        if resources is not None:
            req.resources.CopyFrom(as_resources(resources).to_proto())
        resp = await _rpc.call(self.client.sandboxes.RestartSandbox, req)
        self.info = resp.sandbox

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
        resources: Resources | Mapping[str, Any] | None = None,
    ) -> Sandbox:
        """A new sandbox with a copy of /workspace and the env, on any provider."""
        req = sandbox_pb2.CloneSandboxRequest(
            sandbox_id=self.id, provider=provider, template=template, env=dict(env or {})
        )
        if resources is not None:
            req.resources.CopyFrom(as_resources(resources).to_proto())
        resp = await _rpc.call(self.client.sandboxes.CloneSandbox, req)
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
        resp = await _rpc.call(
            self.client.sandboxes.MigrateSandbox,
            sandbox_pb2.MigrateSandboxRequest(
                sandbox_id=self.id,
                provider=provider,
                template=template,
                preserve_files=preserve_files,
                preserve_env=preserve_env,
                template_mapping=dict(template_mapping or {}),
                env_mapping=dict(env_mapping or {}),
            ),
        )
        return Sandbox(self.client, resp.sandbox)


__all__ = ["ExecStream", "Files", "Process", "Resources", "Sandbox"]
