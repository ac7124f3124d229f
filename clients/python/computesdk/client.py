"""The connection to computesdkd, and the calls that are not about one sandbox."""

from __future__ import annotations

import asyncio
import builtins
import os
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from computesdk_api.admin.v1 import admin_pb2_grpc
from computesdk_api.events.v1 import events_pb2, events_pb2_grpc
from computesdk_api.filesystem.v1 import filesystem_pb2_grpc
from computesdk_api.group.v1 import group_pb2_grpc
from computesdk_api.messaging.v1 import messaging_pb2_grpc
from computesdk_api.monitoring.v1 import monitoring_pb2_grpc
from computesdk_api.network.v1 import network_pb2_grpc
from computesdk_api.pool.v1 import pool_pb2_grpc
from computesdk_api.process.v1 import process_pb2_grpc
from computesdk_api.provider.v1 import provider_pb2, provider_pb2_grpc
from computesdk_api.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from computesdk_api.snapshot.v1 import snapshot_pb2_grpc
from computesdk_api.template.v1 import template_pb2_grpc
from computesdk_api.volume.v1 import volume_pb2_grpc

from . import _create, _rpc
from ._rpc import Callback, Transport, fire, open_channel, target_for, transport_for
from .admin import Admin
from .errors import ComputeSDKError, error_from
from .fleet import Channels, Groups, Networks, Pools
from .options import SandboxConfig, TemplateDefinition, VolumeSpec
from .sandbox import Sandbox
from .state import States, Volumes
from .templates import Templates
from .types import Event, Resources

# Client-side connection events.
CONNECTED, DISCONNECTED, RECONNECTING = "connected", "disconnected", "reconnecting"
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}


class Client:
    """One channel to the daemon. Cheap to share; close it when done."""

    def __init__(self, target: str | Transport) -> None:
        self._transport = target if isinstance(target, Transport) else Transport(target)
        self.target = self._transport.target
        self._open()
        self._capabilities: dict[str, frozenset[str]] = {}
        self.states = States(self)
        self.volumes = Volumes(self)
        self.templates = Templates(self)
        self.admin = Admin(self)
        self.pools = Pools(self)
        self.groups = Groups(self)
        self.networks = Networks(self)
        self.channels = Channels(self)
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)

    def _open(self) -> None:
        self._closed = False
        self.channel = open_channel(self._transport)
        self.sandboxes = sandbox_pb2_grpc.SandboxServiceStub(self.channel)
        self.processes = process_pb2_grpc.ProcessServiceStub(self.channel)
        self.files = filesystem_pb2_grpc.FilesystemServiceStub(self.channel)
        self.events_stub = events_pb2_grpc.EventServiceStub(self.channel)
        self.providers_stub = provider_pb2_grpc.ProviderServiceStub(self.channel)
        self.monitoring = monitoring_pb2_grpc.MonitoringServiceStub(self.channel)
        self.pool_stub = pool_pb2_grpc.PoolServiceStub(self.channel)
        self.group_stub = group_pb2_grpc.GroupServiceStub(self.channel)
        self.network_stub = network_pb2_grpc.NetworkServiceStub(self.channel)
        self.messaging_stub = messaging_pb2_grpc.MessagingServiceStub(self.channel)
        self.snapshot_stub = snapshot_pb2_grpc.SnapshotServiceStub(self.channel)
        self.volume_stub = volume_pb2_grpc.VolumeServiceStub(self.channel)
        self.template_stub = template_pb2_grpc.TemplateServiceStub(self.channel)
        self.admin_stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    @classmethod
    async def connect(
        cls,
        *,
        socket: str | os.PathLike[str] | None = None,
        target: str | None = None,
        timeout: float = 10.0,
        address: str | None = None,
        token: str | None = None,
        ca: str | bytes | os.PathLike[str] | None = None,
        cert: str | bytes | os.PathLike[str] | None = None,
        key: str | bytes | os.PathLike[str] | None = None,
        insecure: bool | None = None,
        server_name: str | None = None,
    ) -> Client:
        """Connects over the Unix socket (default: $COMPUTESDK_SOCKET), or to a
        daemon's network listener: address "host:port" over TLS (ca: the CA to
        trust, PEM or a path; cert and key for mutual TLS) with a bearer token,
        or plaintext with insecure=True. $COMPUTESDK_ADDRESS, $COMPUTESDK_TOKEN,
        $COMPUTESDK_CA, $COMPUTESDK_CLIENT_CERT, $COMPUTESDK_CLIENT_KEY and
        $COMPUTESDK_INSECURE stand in for options not given."""
        client = cls(
            transport_for(
                socket,
                target,
                address=address,
                token=token,
                ca=ca,
                cert=cert,
                key=key,
                insecure=insecure,
                server_name=server_name,
            )
        )
        if client.target.startswith("unix:"):
            try:
                # Off the loop: a busy daemon's backlog can hold a connect a moment.
                defaulted = not socket and not target and not os.environ.get("COMPUTESDK_SOCKET")
                await asyncio.to_thread(
                    _rpc.probe_socket, client.target.removeprefix("unix:"), defaulted
                )
            except ComputeSDKError:
                await client.close()  # fail fast: nothing will ever listen there by itself
                raise
        try:
            await client._ready(timeout)
        except ComputeSDKError:
            await client.close()
            raise
        return client

    async def _ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError:
            raise ComputeSDKError(
                f"cannot reach computesdkd at {self.target}",
                code=grpc.StatusCode.UNAVAILABLE,
                reason="DAEMON_UNREACHABLE",
            ) from None

    @property
    def closed(self) -> bool:
        return self._closed

    async def reconnect(self, *, timeout: float = 30.0) -> None:
        """Opens the connection again if it was closed, and waits until the daemon
        answers (UnavailableError DAEMON_UNREACHABLE after timeout seconds)."""
        if self._closed:
            self._open()
        await self._ready(timeout)

    async def close(self) -> None:
        self._closed = True
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def on(self, event: str, callback: Callback) -> None:
        """Registers a callback for 'connected', 'disconnected' or 'reconnecting'."""
        self._callbacks[event].append(callback)

    # ------------------------------------------------------------ sandboxes

    async def create(
        self,
        provider: str = "",
        *,
        template: str | TemplateDefinition | Mapping[str, Any] = "",
        metadata: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
        keep_alive: bool = False,
        resources: Resources | Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        request_id: str | None = None,
        fallback_providers: Sequence[str] = (),
        use_pool: bool | None = None,
        restore_from: str = "",
        import_state: bytes | None = None,
        volumes: Sequence[VolumeSpec | Mapping[str, Any]] = (),
        ports: Sequence[int] = (),
    ) -> Sandbox:
        """Creates a sandbox and returns once it is ready. fallback_providers are tried
        in order when the provider is down or its circuit breaker is open. use_pool:
        None follows the daemon (takes a never-used warm sandbox from a matching pool
        unless started with --no-pool-create), True/False force it either way.

        template: a name, or an inline definition (TemplateDefinition or a dict
        {"name", "base_image" or "baseImage", "packages", "env"}) that is built
        first (an identical one again is a cache hit); TemplateBuildError if the
        build fails. restore_from starts from a saved state (sandbox.save_state()),
        import_state from an archive (sandbox.export_state()). volumes: VolumeSpec
        or dicts {"name", "path", "size": "10GB", "persistent", "mount_existing"}
        (also "mountExisting", "mount_path", "size_mb"); a volume that does not
        exist is made on first use unless mount_existing. ports: the ports get_url
        will expose, for providers that must know them at create (Vercel, Modal);
        elsewhere any port can be exposed later. sandbox.config keeps all of it."""
        return await _create.create(self, SandboxConfig.given(
            provider, template=template, metadata=metadata, timeout_ms=timeout_ms,
            keep_alive=keep_alive, resources=resources, env=env, request_id=request_id,
            fallback_providers=fallback_providers, use_pool=use_pool,
            restore_from=restore_from, import_state=import_state, volumes=volumes, ports=ports,
        ))  # fmt: skip

    async def batch_create(
        self, items: Sequence[Mapping[str, Any]]
    ) -> builtins.list[Sandbox | ComputeSDKError]:
        """Creates many sandboxes in one call; each item takes create()'s keyword
        arguments (plus "provider"). One result per item, in order: a failed item is
        its typed error, and does not fail the others."""
        reqs = [SandboxConfig.given(**{"provider": "", **i}).create_request() for i in items]
        resp = await _rpc.call(
            self.sandboxes.BatchCreateSandboxes,
            sandbox_pb2.BatchCreateSandboxesRequest(requests=reqs),
        )
        out: builtins.list[Sandbox | ComputeSDKError] = []
        for r in resp.results:
            if r.WhichOneof("result") == "sandbox":
                out.append(Sandbox(self, r.sandbox))
            else:
                out.append(error_from(r.error.code, r.error.reason, r.error.message))
        return out

    async def list_active_sandboxes(self) -> builtins.list[Sandbox]:
        """Every sandbox that is running now."""
        return await self.list(states=["running"])

    async def get(self, sandbox_id: str) -> Sandbox:
        resp = await _rpc.call(
            self.sandboxes.GetSandbox, sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id)
        )
        return Sandbox(self, resp.sandbox)

    async def list(
        self,
        *,
        metadata: Mapping[str, str] | None = None,
        states: Sequence[str] = (),
        provider: str = "",
        page_size: int = 100,
    ) -> list[Sandbox]:
        """Every matching sandbox, following pages."""
        names = {"creating": 1, "running": 2, "stopping": 3, "stopped": 4, "error": 5}
        out: list[Sandbox] = []
        token = ""
        while True:
            resp = await _rpc.call(
                self.sandboxes.ListSandboxes,
                sandbox_pb2.ListSandboxesRequest(
                    page_size=page_size,
                    page_token=token,
                    metadata=dict(metadata or {}),
                    states=[names[s] for s in states],  # type: ignore[misc]
                    provider=provider,
                ),
            )
            out.extend(Sandbox(self, s) for s in resp.sandboxes)
            token = resp.next_page_token
            if not token:
                return out

    async def providers(self) -> builtins.list[provider_pb2.Provider]:
        resp = await _rpc.call(
            self.providers_stub.ListProviders, provider_pb2.ListProvidersRequest()
        )
        return list(resp.providers)

    async def capabilities(self, provider: str) -> frozenset[str]:
        """The provider's features ("exec.resume", "snapshots", ...), from
        ListProviders once per client; empty for a provider the daemon lacks."""
        if provider not in self._capabilities:
            for p in await self.providers():
                self._capabilities[p.name] = frozenset(p.capabilities)
        return self._capabilities.setdefault(provider, frozenset())

    # ------------------------------------------------------------ events

    async def events(
        self,
        *,
        sandbox_ids: Sequence[str] = (),
        types: Sequence[str] = (),
        after: int = 0,
        follow: bool = True,
        on_disconnect: Callback | None = None,
    ) -> AsyncIterator[Event]:
        """Lifecycle events. Survives daemon restarts: it reconnects by itself and
        resumes after the last sequence it delivered, so nothing is lost or repeated.
        on_disconnect is called once each time the connection drops."""
        last = after
        backoff = 0.05
        while True:
            req = events_pb2.SubscribeEventsRequest(
                sandbox_ids=list(sandbox_ids),
                types=list(types),
                after_sequence=last,
                no_follow=not follow,
            )
            try:
                async for resp in _rpc.stream(self.events_stub.SubscribeEvents, req):
                    ev = Event.from_proto(resp.event)
                    last = ev.sequence
                    backoff = 0.05
                    yield ev
                if not follow:
                    return
                # A following stream only ends when the daemon shuts down: reconnect.
            except ComputeSDKError as err:
                if err.code not in _RETRYABLE:
                    raise
            await fire([*self._callbacks[DISCONNECTED], on_disconnect])
            while True:
                await fire(self._callbacks[RECONNECTING])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                try:
                    await asyncio.wait_for(self.channel.channel_ready(), 5.0)
                    break
                except TimeoutError:
                    continue
            await fire(self._callbacks[CONNECTED])


async def connect(
    *,
    socket: str | os.PathLike[str] | None = None,
    target: str | None = None,
    timeout: float = 10.0,
) -> Client:
    return await Client.connect(socket=socket, target=target, timeout=timeout)


# grpc.aio channels belong to one event loop, so the shared client is per loop.
_default_clients: dict[tuple[str, int], Client] = {}


async def default_client(
    socket: str | os.PathLike[str] | None = None, target: str | None = None
) -> Client:
    """The connection compute() and list_active_sandboxes() share (one per daemon
    address and event loop)."""
    key = (target_for(socket, target), id(asyncio.get_running_loop()))
    client = _default_clients.get(key)
    if client is None or client.closed:
        client = _default_clients[key] = await Client.connect(socket=socket, target=target)
    return client


async def compute(
    provider: str = "local",
    *,
    socket: str | os.PathLike[str] | None = None,
    target: str | None = None,
    **options: Any,
) -> Sandbox:
    """Creates a sandbox, like the spec's compute(provider, options), on the shared
    default connection. options are Client.create's: template (a name or an inline
    definition), metadata, timeout_ms, keep_alive, resources, env, volumes,
    restore_from, import_state, ..."""
    return await (await default_client(socket, target)).create(provider, **options)


async def list_active_sandboxes(
    *, socket: str | os.PathLike[str] | None = None, target: str | None = None
) -> builtins.list[Sandbox]:
    """Every running sandbox, over the shared default connection (the spec's
    listActiveSandboxes())."""
    return await (await default_client(socket, target)).list_active_sandboxes()
