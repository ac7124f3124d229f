"""Wires the store, event bus, providers and manager to a grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from computesdk_api.events.v1 import events_pb2, events_pb2_grpc
from computesdk_api.filesystem.v1 import filesystem_pb2, filesystem_pb2_grpc
from computesdk_api.group.v1 import group_pb2, group_pb2_grpc
from computesdk_api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from computesdk_api.monitoring.v1 import monitoring_pb2, monitoring_pb2_grpc
from computesdk_api.network.v1 import network_pb2, network_pb2_grpc
from computesdk_api.pool.v1 import pool_pb2, pool_pb2_grpc
from computesdk_api.process.v1 import process_pb2, process_pb2_grpc
from computesdk_api.provider.v1 import provider_pb2, provider_pb2_grpc
from computesdk_api.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from computesdk_api.snapshot.v1 import snapshot_pb2, snapshot_pb2_grpc
from computesdk_api.template.v1 import template_pb2, template_pb2_grpc
from computesdk_api.volume.v1 import volume_pb2, volume_pb2_grpc
from computesdkd.config import Config
from computesdkd.domain.errors import ComputeError
from computesdkd.events import EventBus
from computesdkd.manager import Manager
from computesdkd.pools import parse_warm_pool
from computesdkd.providers import daytona as _daytona  # noqa: F401 - registers the daytona provider
from computesdkd.providers import docker as _docker  # noqa: F401 - registers the docker provider
from computesdkd.providers import e2b as _e2b  # noqa: F401 - registers the e2b provider
from computesdkd.providers import get_factory
from computesdkd.providers import local as _local  # noqa: F401 - registers the local provider
from computesdkd.providers import modal as _modal  # noqa: F401 - registers the modal provider
from computesdkd.providers import vercel as _vercel  # noqa: F401 - registers the vercel provider
from computesdkd.providers.base import ProviderConfig
from computesdkd.servicers.events import EventServicer
from computesdkd.servicers.filesystem import FilesystemServicer
from computesdkd.servicers.group import GroupServicer
from computesdkd.servicers.messaging import MessagingServicer
from computesdkd.servicers.monitoring import MonitoringServicer
from computesdkd.servicers.network import NetworkServicer
from computesdkd.servicers.pool import PoolServicer
from computesdkd.servicers.process import ProcessServicer
from computesdkd.servicers.provider import ProviderServicer
from computesdkd.servicers.sandbox import SandboxServicer
from computesdkd.servicers.snapshot import SnapshotServicer
from computesdkd.servicers.template import TemplateServicer
from computesdkd.servicers.volume import VolumeServicer
from computesdkd.store import Store
from computesdkd.support import logs, metrics

log = logs.get(__name__)

# The transport takes messages well above the per-chunk limit (servicers/_edge.py)
# so that an oversized chunk gets a PAYLOAD_TOO_LARGE reason rather than a bare status.
MAX_MESSAGE = 64 * 1024 * 1024
SERVICE_NAMES = [
    sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name,
    process_pb2.DESCRIPTOR.services_by_name["ProcessService"].full_name,
    filesystem_pb2.DESCRIPTOR.services_by_name["FilesystemService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name,
    monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name,
    pool_pb2.DESCRIPTOR.services_by_name["PoolService"].full_name,
    group_pb2.DESCRIPTOR.services_by_name["GroupService"].full_name,
    network_pb2.DESCRIPTOR.services_by_name["NetworkService"].full_name,
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name,
    snapshot_pb2.DESCRIPTOR.services_by_name["SnapshotService"].full_name,
    volume_pb2.DESCRIPTOR.services_by_name["VolumeService"].full_name,
    template_pb2.DESCRIPTOR.services_by_name["TemplateService"].full_name,
]


class DaemonError(RuntimeError):
    pass


def _lock_state_dir(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    # Traverse-only for others: a sandbox's init runs as an unprivileged host uid and
    # must reach its bundle; nothing here can be listed, and the database is 0600.
    os.chmod(state_dir, 0o711)
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise DaemonError(f"another computesdkd already uses {state_dir}") from exc
    return fd


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale, left by a daemon that was killed
        else:
            raise DaemonError(f"another daemon is listening on {path}")
        finally:
            probe.close()


async def _stop_leftover_tasks(timeout: float = 5.0) -> None:
    """Cancels what is still running (a pool's create, a watcher) while the store
    is open for its cleanup, and names any task that will not stop."""
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in pending:
        t.cancel()
    if not pending:
        return
    _, stuck = await asyncio.wait(pending, timeout=timeout)
    for t in stuck:
        frames = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in t.get_stack()]
        log.error("task did not stop", task=t.get_name(), stack=frames)


class Daemon:
    def __init__(self, cfg: Config, provider_cfgs: dict[str, ProviderConfig]) -> None:
        self.cfg = cfg
        self.provider_cfgs = provider_cfgs
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        cfg = self.cfg
        lock_fd = _lock_state_dir(cfg.state_dir)
        store = Store(cfg.state_dir / "state.db")
        bus = EventBus(store)
        providers = {}
        for name, provider_cfg in self.provider_cfgs.items():
            factory = get_factory(name)
            assert factory is not None
            providers[name] = factory(provider_cfg)
        if cfg.default_provider not in providers:
            raise DaemonError(f"default provider {cfg.default_provider!r} is not registered")
        manager = Manager(
            cfg.state_dir, store, bus, providers, cfg.default_provider, cfg.pool_create
        )
        await manager.start()
        for text in cfg.warm_pools:
            try:
                manager.pools.ensure(parse_warm_pool(text))
            except ComputeError as exc:
                await manager.shutdown(destroy=False)
                raise DaemonError(exc.message) from exc

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ]
        )
        sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(SandboxServicer(manager), server)
        process_pb2_grpc.add_ProcessServiceServicer_to_server(ProcessServicer(manager), server)
        filesystem_pb2_grpc.add_FilesystemServiceServicer_to_server(
            FilesystemServicer(manager), server
        )
        events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(manager), server)
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(ProviderServicer(manager), server)
        monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(
            MonitoringServicer(manager), server
        )
        pool_pb2_grpc.add_PoolServiceServicer_to_server(PoolServicer(manager), server)
        group_pb2_grpc.add_GroupServiceServicer_to_server(GroupServicer(manager), server)
        network_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServicer(manager), server)
        messaging_pb2_grpc.add_MessagingServiceServicer_to_server(
            MessagingServicer(manager), server
        )
        snapshot_pb2_grpc.add_SnapshotServiceServicer_to_server(SnapshotServicer(manager), server)
        volume_pb2_grpc.add_VolumeServiceServicer_to_server(VolumeServicer(manager), server)
        template_pb2_grpc.add_TemplateServiceServicer_to_server(TemplateServicer(manager), server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )

        _prepare_socket(cfg.socket)
        old_umask = os.umask(0o177)  # the socket is born 0600: only its owner may connect
        try:
            server.add_insecure_port(f"unix:{cfg.socket}")
        finally:
            os.umask(old_umask)
        if cfg.listen:
            server.add_insecure_port(cfg.listen)
        await server.start()
        if cfg.metrics_listen:
            metrics.serve(cfg.metrics_listen)
        os.chmod(cfg.socket, 0o600)
        for svc in ["", *SERVICE_NAMES]:
            await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        log.info(
            "computesdkd serving",
            socket=str(cfg.socket),
            listen=cfg.listen or None,
            state_dir=str(cfg.state_dir),
            providers={n: (p.availability() or "ok") for n, p in providers.items()},
        )
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down", destroy_sandboxes=cfg.destroy_on_exit)
            manager.accepting = False
            await health_servicer.enter_graceful_shutdown()
            bus.close()  # event streams end cleanly; clients resume by sequence
            await server.stop(cfg.grace_s)
            await manager.shutdown(destroy=cfg.destroy_on_exit)
            await _stop_leftover_tasks()
            store.close()
            with contextlib.suppress(OSError):
                cfg.socket.unlink()
            os.close(lock_fd)
            log.info("stopped")
