"""The modal provider, on Modal's gRPC API (api.py) as the `modal` SDK speaks it.

Sandboxes are made in an app of the daemon's own ("computesdk") in the
configured environment, from an image Modal builds from a Dockerfile line per
template with the environment's image builder version; V2 sandboxes, as the
SDK makes by default, or V1 for a GPU (sandboxes.py). Each carries tags naming
this daemon (an id kept in its state dir) and its sandbox id, so a start after
a crash lists and terminates what is no record's current Modal sandbox
(reconcile, fleet.py), and a timeout, so a dead daemon leaks no billed sandbox
for longer than that. Commands go to the sandbox's task command
router (router.py, commands.py). Ports declared at create get Modal's tunnels
(tunnels.py); snapshots are images of the sandbox's filesystem (snapshots.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from computesdkd.domain.errors import NotFound, Unavailable, Unsupported
from computesdkd.domain.model import (
    Command,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    Started,
)
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider
from computesdkd.providers.common.execfs import FilesByExec, UsageByExec
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure, owner_id
from computesdkd.providers.common.run import run_checked
from computesdkd.providers.modal import commands, sandboxes, tunnels
from computesdkd.providers.modal.api import HAVE_MODAL, NAME, V1_ID, ModalAPI
from computesdkd.providers.modal.fleet import Fleet, to_the_end
from computesdkd.providers.modal.router import Router
from computesdkd.providers.modal.snapshots import NO_EXPORT, NO_IMPORT, ModalSnapshots

if HAVE_MODAL:
    from modal_proto import api_pb2

    Status = api_pb2.GenericResult

APP_NAME = "computesdk"
IMAGES = {
    "base": "FROM python:3.11-slim",
    "python": "FROM python:3.11-slim",
    "python:3.11": "FROM python:3.11-slim",
    "python3.11.x": "FROM python:3.11-slim",
    "node": "FROM node:18-slim",
    "nodejs": "FROM node:18-slim",
    "nodejs18": "FROM node:18-slim",
    "nodejs18.x": "FROM node:18-slim",
}


@base.register(NAME)
class ModalProvider(FilesByExec, UsageByExec, Provider, caps.Background, caps.Reattach):
    name = NAME
    probe_interval_s = 30.0
    traits = frozenset({caps.EXEC_STDIN, caps.RESOURCE_LIMITS, caps.NETWORK_ISOLATION})
    why_not = {
        "state export": NO_EXPORT,
        "state import": NO_IMPORT,
        "volumes": "a Modal Volume takes no size limit, and the daemon's volumes are "
        "size-limited (charged to a tenant's quota)",
    }

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._api = ModalAPI(cfg.env)
        self._router = Router(self._api)
        self._app_id = ""
        self._builder_version = ""
        self._images: dict[str, str] = {}
        self._daemon = ""
        self._fleet = Fleet(self._api)
        self._snapshots = ModalSnapshots(self.recreate, self._api, self._router)
        self.parts = (tunnels.ModalTunnels(self._api), self._snapshots)

    async def start(self, ctx: base.ProviderContext) -> None:
        """This daemon's tag value: a random id kept in its state dir, so two
        daemons on one Modal account never sweep each other's sandboxes, even with
        the same host name and path (containers, pods)."""
        self._daemon = owner_id(ctx.state_dir / "modal-owner")
        self._snapshots.map.load(ctx.state_dir)
        self._fleet.load(ctx.state_dir)

    def availability(self) -> str:
        if not HAVE_MODAL:
            return "the modal extra is not installed (pip install 'computesdkd[modal]')"
        if not self._api.has_token():
            return "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set"
        return ""

    def templates(self) -> list[str]:
        return sorted(IMAGES)

    async def close(self) -> None:
        await self._router.close()
        await self._api.close()

    # -------------------------------------------------------------- lifecycle

    async def _environment(self) -> str:
        """The environment's image builder version, which the SDK sends with each
        image (EnvironmentGetOrCreate)."""
        if not self._builder_version:
            resp = await self._api.call(
                "EnvironmentGetOrCreate",
                api_pb2.EnvironmentGetOrCreateRequest(deployment_name=self._api.environment),
                api_pb2.EnvironmentGetOrCreateResponse,
                "environment",
            )
            self._builder_version = resp.metadata.settings.image_builder_version[:32]
        return self._builder_version

    async def _app(self) -> str:
        if not self._app_id:
            resp = await self._api.call(
                "AppGetOrCreate",
                api_pb2.AppGetOrCreateRequest(
                    app_name=APP_NAME,
                    environment_name=self._api.environment,
                    object_creation_type=api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                ),
                api_pb2.AppGetOrCreateResponse,
                "app",
            )
            self._app_id = resp.app_id
        return self._app_id

    async def _image(self, template: str) -> str:
        if template not in self._images:
            resp = await self._api.call(
                "ImageGetOrCreate",
                api_pb2.ImageGetOrCreateRequest(
                    app_id=await self._app(),
                    image=api_pb2.Image(dockerfile_commands=[IMAGES[template]]),
                    builder_version=await self._environment(),
                ),
                api_pb2.ImageGetOrCreateResponse,
                "image",
            )
            result = resp.result
            while result.status == Status.GENERIC_STATUS_UNSPECIFIED:  # still building
                join = api_pb2.ImageJoinStreamingRequest(image_id=resp.image_id, timeout=55)
                async for msg in self._api.stream(
                    "ImageJoinStreaming", join, api_pb2.ImageJoinStreamingResponse
                ):
                    if msg.result.status:
                        result = msg.result
                        break
            if result.status != Status.GENERIC_STATUS_SUCCESS:
                raise Unavailable(
                    f"modal: image build failed: {result.exception[:500]}",
                    reason="PROVIDER_ERROR",
                    provider=NAME,
                )
            self._images[template] = resp.image_id
        return self._images[template]

    async def create(self, sandbox: Sandbox) -> None:
        if why := self.availability():
            raise cannot_run(NAME, why)
        if sandbox.spec.template not in IMAGES:
            raise NotFound(
                f"template {sandbox.spec.template[:200]!r} has no Modal image "
                f"(known: {', '.join(sorted(IMAGES))})",
                reason="TEMPLATE_NOT_FOUND",
                provider=NAME,
            )
        if sandbox.provider_data.get("import_layer"):
            raise Unsupported(NAME, "state import", NO_IMPORT)
        timeout_s = sandboxes.check_limits(sandbox)
        source = sandbox.provider_data.get("from_snapshot", "")  # a saved state's
        image = self._snapshots.map.image(source) if source else ""
        await self._launch(sandbox, image or await self._image(sandbox.spec.template), timeout_s)
        self._fleet.made(sandbox)

    async def _launch(
        self, sandbox: Sandbox, image_id: str, timeout_s: int, name: str = ""
    ) -> None:
        d = sandboxes.definition(sandbox, image_id, timeout_s, name)
        made = await sandboxes.create(self._api, sandbox, await self._app(), d, self._daemon)
        sandbox.resources = Resources(
            cpu_cores=d.resources.milli_cpu / 1000,
            memory_mb=d.resources.memory_mb,
            gpu_enabled=sandbox.spec.resources.gpu_enabled,
        )
        async with destroyed_on_failure(self, sandbox):
            tunnels.keep_from_create(sandbox, made)
            await sandboxes.task_id(self._api, sandbox)
            await run_checked(
                self.run(sandbox, Command(args=["mkdir", "-p", WORKDIR], cwd="/")),
                Unavailable(
                    "modal: could not create /workspace", reason="PROVIDER_ERROR", provider=NAME
                ),
            )

    async def recreate(self, sandbox: Sandbox, image_id: str) -> None:
        """A new Modal sandbox from the image under the same daemon id, then the old
        one terminated; if the new one cannot be made, the old one stays. Run to
        its end even when the caller is cancelled, so one Modal sandbox is left."""
        timeout_s = sandboxes.check_limits(sandbox)
        await to_the_end(self._swap(sandbox, image_id, timeout_s))

    async def _swap(self, sandbox: Sandbox, image_id: str, timeout_s: int) -> None:
        old = sandbox.provider_sandbox_id, dict(sandbox.provider_data), sandbox.resources
        await self._router.forget(sandbox)
        try:
            await self._launch(sandbox, image_id, timeout_s, sandboxes.restored_name(sandbox))
        except BaseException:
            sandbox.provider_sandbox_id, sandbox.provider_data, sandbox.resources = old
            await self._router.forget(sandbox)
            raise
        self._fleet.restored(sandbox)  # before the old one goes: a crash here keeps the new
        old_id, old_data = old[0], old[1]
        was_v2 = old_data["api"] == "v2" if old_data.get("api") else not V1_ID.match(old_id)
        await self._fleet.end(sandbox.id, old_id, was_v2, old_data.get("sandbox_token", ""))

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        await self._router.forget(sandbox)
        if sandbox.provider_sandbox_id:
            with contextlib.suppress(NotFound):
                await sandboxes.terminate(
                    self._api,
                    sandbox.provider_sandbox_id,
                    sandboxes.v2(sandbox),
                    sandboxes.token(sandbox),
                )
        self._fleet.gone(sandbox)
        await self._fleet.end_old(sandbox.id)

    async def adopt(self, sandbox: Sandbox) -> bool:
        """The record as its last restore left it (a restore whose caller went
        away before the record was stored), saved then with its processes gone."""
        if self._fleet.adopted(sandbox):
            sandbox.provider_data["restarted_at_adopt"] = "1"
        return (await self.probe(sandbox)).alive

    async def reconcile(self, live_ids: set[str]) -> None:
        """Terminates each running sandbox tagged with this daemon that is not a
        live record's current one: one a crash left between SandboxCreate and the
        store, or a restore's old one that Modal would not terminate then."""
        if self.availability() or not self._daemon:
            return
        await self._fleet.reconcile(await self._app(), self._daemon, live_ids)

    async def probe(self, sandbox: Sandbox) -> Probe:
        try:
            result = await sandboxes.wait(self._api, sandbox)
        except NotFound:
            return Probe(alive=False)
        oom = result.status == Status.GENERIC_STATUS_KERNEL_OOM_KILL
        return Probe(alive=result.status == Status.GENERIC_STATUS_UNSPECIFIED, oom_kills=int(oom))

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        return commands.ModalRun(self._router, sandbox, command)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        exec_id = commands.new_exec_id()
        await commands.start(self._router, sandbox, command, exec_id)
        if not command.stdin:  # no input: the process reads EOF, as from /dev/null
            await commands.write_stdin(self._router, sandbox, exec_id, b"", True, fresh=True)
        return ProcessInfo(
            process_id=exec_id,
            pid=0,
            args=command.args,
            tag=tag,
            running=True,
            exit=None,
            start_unix_ms=int(time.time() * 1000),
        )

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        yield Started(process_id, 0)
        if output:
            async for ev in commands.read(
                self._router, sandbox, process_id, stdout_offset, stderr_offset
            ):
                yield ev
        yield await commands.wait(self._router, sandbox, process_id, 0.0, False)

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        """At the offset the router reports (TaskExecStdinStatus, as the SDK resumes)."""
        await commands.write_stdin(self._router, sandbox, process_id, data, close)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        raise Unsupported(NAME, "signals", commands.NO_SIGNALS)
