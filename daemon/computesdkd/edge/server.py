"""The grpc.aio server: our services, health and reflection, on the Unix socket
(and TCP when asked), with the state dir held by one daemon at a time."""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from computesdk_api.admin.v1 import admin_pb2
from computesdk_api.events.v1 import events_pb2
from computesdk_api.filesystem.v1 import filesystem_pb2
from computesdk_api.group.v1 import group_pb2
from computesdk_api.messaging.v1 import messaging_pb2
from computesdk_api.monitoring.v1 import monitoring_pb2
from computesdk_api.network.v1 import network_pb2
from computesdk_api.pool.v1 import pool_pb2
from computesdk_api.process.v1 import process_pb2
from computesdk_api.provider.v1 import provider_pb2
from computesdk_api.sandbox.v1 import sandbox_pb2
from computesdk_api.snapshot.v1 import snapshot_pb2
from computesdk_api.template.v1 import template_pb2
from computesdk_api.volume.v1 import volume_pb2
from computesdkd.edge.interceptors import Draining
from computesdkd.support import logs

log = logs.get(__name__)

# The transport takes messages well above the per-chunk limit (servicers/_edge.py)
# so that an oversized chunk gets a PAYLOAD_TOO_LARGE reason rather than a bare status.
MAX_MESSAGE = 64 * 1024 * 1024
# The network listener's: above the per-chunk limit (status.MAX_CHUNK), far below
# what an unauthenticated peer could make the daemon hold.
NETWORK_MAX_MESSAGE = 5 * 1024 * 1024
NETWORK_MAX_STREAMS = 256
SERVICE_NAMES = [
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
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


# A servicer and the generated function that adds it to a server.
Service = tuple[Callable[[Any, grpc.aio.Server], None], object]


class StateDirBusy(RuntimeError):
    pass


class SocketBusy(RuntimeError):
    pass


def lock_state_dir(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    # Traverse-only for others: a sandbox's init runs as an unprivileged host uid and
    # must reach its bundle; nothing here can be listed, and the database is 0600.
    os.chmod(state_dir, 0o711)
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StateDirBusy(f"another computesdkd already uses {state_dir}") from exc
    return fd


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_socket_free(path)


def check_socket_free(path: Path) -> None:
    """Raises SocketBusy when a daemon answers at path; removes a stale socket."""
    if path.exists():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale, left by a daemon that was killed
        else:
            raise SocketBusy(f"another daemon is listening on {path}")
        finally:
            probe.close()


async def stop_leftover_tasks(timeout: float = 5.0) -> None:
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


@dataclass(frozen=True)
class Listener:
    """The network listener: where, and with which TLS (none: plaintext)."""

    address: str
    cert: Path | None = None
    key: Path | None = None
    # Client certificates must be signed by this CA (mutual TLS).
    client_ca: Path | None = None
    insecure: bool = False

    def check(self) -> None:
        """Refuses a plaintext listener off loopback unless it is asked for."""
        if bool(self.cert) != bool(self.key):
            raise ListenerRefused("--tls-cert and --tls-key go together")
        if self.client_ca and not self.cert:
            raise ListenerRefused("--tls-client-ca needs --tls-cert and --tls-key")
        if not self.cert and not self.insecure and not is_loopback(self.address):
            raise ListenerRefused(
                f"refusing plaintext on {self.address}, which is not loopback: give "
                "--tls-cert and --tls-key, or --insecure-listen to accept the risk"
            )

    def credentials(self) -> grpc.ServerCredentials | None:
        if not self.cert or not self.key:
            return None
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            roots = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as exc:
            raise ListenerRefused(f"cannot read TLS material: {exc}") from exc
        return grpc.ssl_server_credentials(
            [pair], root_certificates=roots, require_client_auth=roots is not None
        )


class ListenerRefused(RuntimeError):
    pass


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(
    services: list[Service], accepting: Callable[[], bool], guard: Any, network: bool = False
) -> tuple[grpc.aio.Server, Any]:
    """A server with every service, the health service and reflection, each call
    passing guard (edge/access.py) first. The network's takes smaller messages
    (a client's chunks are 1 MiB): anyone can send before a token is checked."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", NETWORK_MAX_MESSAGE if network else MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
    ]
    if network:
        options.append(("grpc.max_concurrent_streams", NETWORK_MAX_STREAMS))
    server = grpc.aio.server(interceptors=[Draining(accepting), guard], options=options)
    for add, servicer in services:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return server, health_servicer


async def listen_socket(server: grpc.aio.Server, health_servicer: Any, socket_path: Path) -> None:
    """Serves on the Unix socket (born 0600: only its owner may connect); then says
    every service is serving."""
    _prepare_socket(socket_path)
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{socket_path}")
    finally:
        os.umask(old_umask)
    await server.start()
    os.chmod(socket_path, 0o600)
    await serving(health_servicer)


async def listen_network(server: grpc.aio.Server, health_servicer: Any, at: Listener) -> int:
    """Serves on TCP, over TLS unless told otherwise; returns the port bound."""
    at.check()
    creds = at.credentials()
    try:
        if creds is None:
            port = server.add_insecure_port(at.address)
        else:
            port = server.add_secure_port(at.address, creds)
    except RuntimeError as exc:
        raise ListenerRefused(f"cannot listen on {at.address}: {exc}") from exc
    await server.start()
    await serving(health_servicer)
    return port


async def serving(health_servicer: Any) -> None:
    for svc in ["", *SERVICE_NAMES]:
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
