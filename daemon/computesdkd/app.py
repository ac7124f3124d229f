"""The composition root: builds the store, the core, the features and the servicers,
wires the features into the core's hooks, and runs them behind a grpc.aio server.

Nothing below this module knows how the others are put together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from computesdk_api.admin.v1 import admin_pb2_grpc
from computesdk_api.events.v1 import events_pb2_grpc
from computesdk_api.filesystem.v1 import filesystem_pb2_grpc
from computesdk_api.group.v1 import group_pb2_grpc
from computesdk_api.messaging.v1 import messaging_pb2_grpc
from computesdk_api.monitoring.v1 import monitoring_pb2_grpc
from computesdk_api.network.v1 import network_pb2_grpc
from computesdk_api.pool.v1 import pool_pb2_grpc
from computesdk_api.process.v1 import process_pb2_grpc
from computesdk_api.provider.v1 import provider_pb2_grpc
from computesdk_api.sandbox.v1 import sandbox_pb2_grpc
from computesdk_api.snapshot.v1 import snapshot_pb2_grpc
from computesdk_api.template.v1 import template_pb2_grpc
from computesdk_api.volume.v1 import volume_pb2_grpc
from computesdkd.config import Config
from computesdkd.core.bus import EventBus
from computesdkd.core.files import Files
from computesdkd.core.guard import Providers, Tasks
from computesdkd.core.lifecycle import Lifecycle
from computesdkd.core.owners import SANDBOX, Owners
from computesdkd.core.placement import Placement
from computesdkd.core.processes import Processes
from computesdkd.core.registry import Registry
from computesdkd.core.sweeper import Sweeper
from computesdkd.domain.errors import ComputeError, NotFound
from computesdkd.edge import references, tenancy
from computesdkd.edge import server as edge_server
from computesdkd.edge.access import Guard
from computesdkd.edge.services.admin import AdminServicer
from computesdkd.edge.services.events import EventServicer
from computesdkd.edge.services.filesystem import FilesystemServicer
from computesdkd.edge.services.group import GroupServicer
from computesdkd.edge.services.messaging import MessagingServicer
from computesdkd.edge.services.monitoring import MonitoringServicer
from computesdkd.edge.services.network import NetworkServicer
from computesdkd.edge.services.pool import PoolServicer
from computesdkd.edge.services.process import ProcessServicer
from computesdkd.edge.services.provider import ProviderServicer
from computesdkd.edge.services.sandbox import SandboxServicer
from computesdkd.edge.services.snapshot import SnapshotServicer
from computesdkd.edge.services.template import TemplateServicer
from computesdkd.edge.services.volume import VolumeServicer
from computesdkd.features.access import Access
from computesdkd.features.channels import Channels
from computesdkd.features.clone import Cloning
from computesdkd.features.groups import Groups
from computesdkd.features.monitoring import Monitoring
from computesdkd.features.networks import Networks
from computesdkd.features.pools import Pools, parse_warm_pool
from computesdkd.features.quotas import Quotas
from computesdkd.features.snapshots import Snapshots
from computesdkd.features.templates import Templates
from computesdkd.features.volumes import Volumes
from computesdkd.providers import get_factory
from computesdkd.providers.base import Provider, ProviderConfig, ProviderContext
from computesdkd.store import Store
from computesdkd.support import logs, metrics

log = logs.get(__name__)


class DaemonError(RuntimeError):
    pass


class App:
    """Every service of one daemon, built and wired."""

    def __init__(
        self,
        state_dir: Path,
        store: Store,
        providers: dict[str, Provider],
        default_provider: str,
        pool_create: bool = True,
        expose_host: str = "",
        public_host: str = "",
        tenant_registries: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = state_dir
        self.store = store
        self.bus = bus = EventBus(store)
        self.tasks = tasks = Tasks()
        self.providers = guard = Providers(providers, default_provider, bus)
        self.registry = registry = Registry(store, guard)
        self.owners = owners = Owners(store)
        self.processes = processes = Processes(registry, guard, store, bus, tasks)
        self.files = Files(registry)
        self.placement = placement = Placement(
            registry, guard, processes, store, bus, owners, pool_create
        )
        self.lifecycle = lifecycle = Lifecycle(registry, guard, processes, placement, store, bus)
        self.sweeper = Sweeper(registry, guard, lifecycle, processes, bus, tasks)
        scratch = state_dir / "tmp"  # archives in transit (removed when done)
        scratch.mkdir(mode=0o700, exist_ok=True)
        self.scratch = scratch
        self.monitoring = Monitoring(registry, lifecycle, store, bus)
        self.pools = Pools(registry, guard, placement, lifecycle, store, bus, tasks)
        self.groups = Groups(registry, processes, lifecycle, store)
        self.networks = Networks(registry, guard, self.files, store, bus, expose_host, public_host)
        self.channels = Channels(registry, guard, store)
        self.snapshots = Snapshots(registry, guard, placement, processes, store, bus, scratch)
        self.volumes = Volumes(registry, guard, store, bus)
        self.templates = Templates(registry, guard, bus)
        self.cloning = Cloning(registry, guard, placement, lifecycle, bus)
        self.access = Access(store)
        self.quotas = Quotas(registry, store, self.volumes.mb_of)
        placement.admission.append(self.quotas.admit)
        self.volumes.admission.append(self.quotas.admit_volume)
        self.volumes.on_deleted.append(lambda name: owners.release(references.VOLUME, name))
        lifecycle.limit_admission.append(self.quotas.admit_limits)
        self.tenancy = tenancy.Tenancy(
            owners, self._exists(), default_provider, frozenset(tenant_registries)
        )
        # The features that keep sandboxes' parts outside the core.
        placement.preparers.append(self.volumes.prepare_sandbox)
        placement.on_removed.append(self.volumes.sandbox_gone)
        lifecycle.on_teardown.append(self.snapshots.drop_all)
        self.templates.users_of += [self.pools.template_users, self.snapshots.template_users]
        metrics.watch_state(registry.counts, lambda: bus.subscriber_count)

    def _exists(self) -> dict[str, Callable[[str], bool]]:
        """Whether a thing of each kind exists now, whoever owns it (edge/tenancy.py)."""

        def found(get: Callable[[str], object]) -> Callable[[str], bool]:
            def exists(key: str) -> bool:
                try:
                    get(key)
                except NotFound:
                    return False
                return True

            return exists

        return {
            SANDBOX: lambda key: self.registry.find(key) is not None,
            references.POOL: found(self.pools.get),
            references.GROUP: found(self.groups.get),
            references.NETWORK: found(self.networks.get),
            references.CHANNEL: found(self.channels.get),
            references.VOLUME: found(self.volumes.get),
            references.STATE: found(self.snapshots.state),
            references.TEMPLATE: lambda key: any(
                info.name == key for p in self.providers for info in p.template_infos()
            ),
        }

    def guard(self, network: bool, certificates: bool = False) -> Guard:
        """What every call passes: the network's callers need a token (or a client
        certificate a token names)."""
        return Guard(self.access if network else None, self.tenancy, certificates)

    async def start(self) -> None:
        await self.providers.start(ProviderContext(state_dir=self.state_dir, emit=self.bus.emit))
        for sb in self.store.sandboxes.all():
            await self.lifecycle.adopt(sb)
        # Before anything new is made (pools start after), so that nothing in
        # progress can be mistaken for a leftover.
        await self.providers.reconcile({(sb.spec.provider, sb.id) for sb in self.registry.all()})
        self.sweeper.start()
        await self.snapshots.collect_garbage()
        await self.pools.start()
        self.groups.start()
        self.networks.start()
        await self.channels.start()

    async def shutdown(self, destroy: bool) -> None:
        self.placement.accepting = False
        await self.pools.shutdown()
        await self.networks.shutdown()
        await self.channels.shutdown()
        self.sweeper.stop()
        self.tasks.cancel_all()
        for sandbox_id in self.registry.ids():  # alerts, autoscalers, health checks
            self.registry.forget_watchers(sandbox_id)
        if destroy:
            await self.lifecycle.destroy_all()
        await self.lifecycle.wait_for_destroys()
        await self.providers.close()

    def services(self) -> list[edge_server.Service]:
        """Each servicer, given only what it needs, with its registration function."""
        return [
            (
                admin_pb2_grpc.add_AdminServiceServicer_to_server,
                AdminServicer(self.access, self.quotas),
            ),
            (
                sandbox_pb2_grpc.add_SandboxServiceServicer_to_server,
                SandboxServicer(self.placement, self.lifecycle, self.registry, self.cloning),
            ),
            (
                process_pb2_grpc.add_ProcessServiceServicer_to_server,
                ProcessServicer(self.processes),
            ),
            (
                filesystem_pb2_grpc.add_FilesystemServiceServicer_to_server,
                FilesystemServicer(self.files),
            ),
            (events_pb2_grpc.add_EventServiceServicer_to_server, EventServicer(self.bus)),
            (
                provider_pb2_grpc.add_ProviderServiceServicer_to_server,
                ProviderServicer(self.providers),
            ),
            (
                monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server,
                MonitoringServicer(self.monitoring, self.lifecycle),
            ),
            (pool_pb2_grpc.add_PoolServiceServicer_to_server, PoolServicer(self.pools)),
            (group_pb2_grpc.add_GroupServiceServicer_to_server, GroupServicer(self.groups)),
            (network_pb2_grpc.add_NetworkServiceServicer_to_server, NetworkServicer(self.networks)),
            (
                messaging_pb2_grpc.add_MessagingServiceServicer_to_server,
                MessagingServicer(self.channels),
            ),
            (
                snapshot_pb2_grpc.add_SnapshotServiceServicer_to_server,
                SnapshotServicer(self.snapshots, self.scratch, self.tenancy),
            ),
            (
                volume_pb2_grpc.add_VolumeServiceServicer_to_server,
                VolumeServicer(self.volumes),
            ),
            (
                template_pb2_grpc.add_TemplateServiceServicer_to_server,
                TemplateServicer(self.templates),
            ),
        ]


class Daemon:
    def __init__(self, cfg: Config, provider_cfgs: dict[str, ProviderConfig]) -> None:
        self.cfg = cfg
        self.provider_cfgs = provider_cfgs
        self._stop = asyncio.Event()
        self.port = 0  # of the network listener, once bound

    def request_stop(self) -> None:
        self._stop.set()

    def _providers(self) -> dict[str, Provider]:
        providers = {}
        for name, provider_cfg in self.provider_cfgs.items():
            factory = get_factory(name)
            assert factory is not None
            providers[name] = factory(provider_cfg)
        if self.cfg.default_provider not in providers:
            raise DaemonError(f"default provider {self.cfg.default_provider!r} is not registered")
        return providers

    async def _start(self, store: Store) -> tuple[App, list[tuple[Any, Any]]]:
        cfg = self.cfg
        app = App(
            cfg.state_dir,
            store,
            self._providers(),
            cfg.default_provider,
            cfg.pool_create,
            cfg.expose_host,
            cfg.public_host,
            cfg.tenant_registries,
        )
        await app.start()
        for text in cfg.warm_pools:
            try:
                app.pools.ensure(parse_warm_pool(text))
            except ComputeError as exc:
                await app.shutdown(destroy=False)
                raise DaemonError(exc.message) from exc
        accepting = lambda: app.placement.accepting  # noqa: E731
        servers = []
        try:
            server, health = edge_server.build(app.services(), accepting, app.guard(False))
            servers.append((server, health))
            await edge_server.listen_socket(server, health, cfg.socket)
            if cfg.listener is not None:
                # A server of its own: its calls pass the token check, the socket's not.
                server, health = edge_server.build(
                    app.services(),
                    accepting,
                    app.guard(True, cfg.listener.client_ca is not None),
                    network=True,
                )
                servers.append((server, health))
                self.port = await edge_server.listen_network(server, health, cfg.listener)
        except (edge_server.SocketBusy, edge_server.ListenerRefused) as exc:
            for server, _ in servers:
                await server.stop(0)
            await app.shutdown(destroy=False)
            raise DaemonError(str(exc)) from exc
        return app, servers

    async def run(self, ready: asyncio.Event | None = None) -> None:
        cfg = self.cfg
        try:
            lock_fd = edge_server.lock_state_dir(cfg.state_dir)
        except edge_server.StateDirBusy as exc:
            raise DaemonError(str(exc)) from exc
        try:
            # Before any provider sets up (mounts its store): a daemon that cannot
            # serve leaves nothing behind. Checked again when the socket is bound.
            edge_server.check_socket_free(cfg.socket)
        except edge_server.SocketBusy as exc:
            os.close(lock_fd)
            raise DaemonError(str(exc)) from exc
        store = Store(cfg.state_dir / "state.db")
        try:
            app, servers = await self._start(store)
        except BaseException:
            store.close()  # what start queued (adopt's events) reaches the disk
            os.close(lock_fd)
            raise
        if cfg.metrics_listen:
            metrics.serve(cfg.metrics_listen)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        log.info(
            "computesdkd serving",
            socket=str(cfg.socket),
            listen=cfg.listener.address if cfg.listener else None,
            port=self.port or None,
            tls=bool(cfg.listener and cfg.listener.cert),
            state_dir=str(cfg.state_dir),
            providers={p.name: (p.availability() or "ok") for p in app.providers},
        )
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down", destroy_sandboxes=cfg.destroy_on_exit)
            app.placement.accepting = False
            for _, health in servers:
                await health.enter_graceful_shutdown()
            app.bus.close()  # event streams end cleanly; clients resume by sequence
            await asyncio.gather(*(server.stop(cfg.grace_s) for server, _ in servers))
            await app.shutdown(destroy=cfg.destroy_on_exit)
            await edge_server.stop_leftover_tasks()
            store.close()
            with contextlib.suppress(OSError):
                cfg.socket.unlink()
            os.close(lock_fd)
            log.info("stopped")
