"""Shared networks between sandboxes, and ports forwarded to the host's loopback.

A network is an isolated segment made by the members' provider (for local: a
bridge in a namespace of its own and a veth per member) with a /24 of its own.
Members find each other by hostname through a block the daemon keeps in each
member's /etc/hosts. Networks survive a daemon restart; a member that is
destroyed leaves its networks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

from computesdkd.core.bus import EventBus
from computesdkd.core.files import Files
from computesdkd.core.guard import Providers
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    already_exists,
    not_found,
)
from computesdkd.features.networks.ports import Ports
from computesdkd.providers import capabilities as caps
from computesdkd.providers.capabilities import require
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SUBNETS = ipaddress.ip_network("10.213.0.0/16")
PREFIX = 24
MAX_MEMBERS = 250
IFNAME = "eth0"  # one shared network per sandbox keeps names and routes simple
HOSTS_BEGIN = "# computesdk network: begin"
HOSTS_END = "# computesdk network: end"
NETWORK_JOINED, NETWORK_LEFT = "network.joined", "network.left"
# A member's /etc/hosts is the member's to shape: the daemon reads at most this
# much of it, and starts from DEFAULT_HOSTS when it is larger, missing or not a
# regular file (a FIFO, a device, a directory).
HOSTS_MAX = 1 << 20
DEFAULT_HOSTS = "127.0.0.1\tlocalhost\n"


@dataclass
class Member:
    sandbox_id: str
    hostname: str
    address: str


@dataclass
class Network:
    name: str
    id: str
    provider: str
    subnet: str
    members: list[Member] = field(default_factory=list)


class Networks:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        files: Files,
        store: Store,
        bus: EventBus,
        expose_host: str = "",
        public_host: str = "",
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._files = files
        self._store = store
        self._bus = bus
        self._networks: dict[str, Network] = {}
        self.ports = Ports(registry, providers, expose_host, public_host)
        self._lock = asyncio.Lock()
        registry.on_destroyed.append(self._member_gone)

    def start(self) -> None:
        live = self._registry.ids()
        for name, value in self._store.records("networks").all():
            members = [Member(**m) for m in value.pop("members")]
            net = Network(**value, members=[m for m in members if m.sandbox_id in live])
            self._networks[name] = net
            self._save(net)

    async def shutdown(self) -> None:
        self.ports.close()

    def _save(self, net: Network) -> None:
        self._store.records("networks").put(net.name, asdict(net))

    def get(self, name: str) -> Network:
        net = self._networks.get(name)
        if net is None:
            raise not_found("network", name)
        return net

    def all(self) -> list[Network]:
        return [self._networks[n] for n in sorted(self._networks)]

    def _free_subnet(self) -> str:
        used = {n.subnet for n in self._networks.values()}
        for sub in SUBNETS.subnets(new_prefix=PREFIX):
            if str(sub) not in used and sub.network_address.packed[2] != 0:
                return str(sub)
        raise FailedPrecondition("every shared-network subnet is in use", reason="NO_SUBNET")

    async def create(self, name: str, members: list[tuple[str, str]]) -> Network:
        if not NAME.match(name):
            raise InvalidArgument(
                "network names are 1-63 of A-Z, a-z, 0-9, '.', '_', '-'", reason="INVALID_NAME"
            )
        if len(members) > MAX_MEMBERS:
            raise InvalidArgument(f"at most {MAX_MEMBERS} members", reason="NETWORK_TOO_LARGE")
        async with self._lock:
            if name in self._networks:
                raise already_exists("network", name)
            sandboxes = [self._registry.running(sid)[0] for sid, _ in members]
            providers = {sb.spec.provider for sb in sandboxes}
            if len(providers) > 1:
                raise FailedPrecondition(
                    "members of one network must share a provider", reason="MIXED_PROVIDERS"
                )
            hostnames = [h or sid for sid, h in members]
            for h in hostnames:
                if not HOSTNAME.match(h):
                    raise InvalidArgument(f"bad hostname {h!r}", reason="INVALID_HOSTNAME")
            ids = {sid for sid, _ in members}
            if len(set(hostnames)) != len(hostnames) or len(ids) != len(members):
                raise InvalidArgument("hostnames and members must be unique", reason="DUPLICATE")
            for sb in sandboxes:
                if any(m.sandbox_id == sb.id for n in self._networks.values() for m in n.members):
                    raise FailedPrecondition(
                        f"sandbox {sb.id} is already on a network", reason="ALREADY_ON_NETWORK"
                    )
            provider_name = providers.pop() if providers else self._providers.default
            provider = self._providers.by_name[provider_name]
            subnet = ipaddress.ip_network(self._free_subnet())
            net = Network(name, secrets.token_hex(4), provider_name, str(subnet))
            await require(provider, caps.SharedNetworks, "shared networks").create_network(net.id)
            hosts = list(subnet.hosts())
            try:
                for i, (sb, hostname) in enumerate(zip(sandboxes, hostnames, strict=True)):
                    address = str(hosts[i])
                    await require(provider, caps.SharedNetworks, "shared networks").attach_network(
                        sb, net.id, IFNAME, address, PREFIX
                    )
                    net.members.append(Member(sb.id, hostname, address))
                await self._write_hosts(net)
            except BaseException:
                for m in net.members:
                    with contextlib.suppress(Exception):
                        await require(
                            provider, caps.SharedNetworks, "shared networks"
                        ).detach_network(self._registry.get(m.sandbox_id), IFNAME)
                with contextlib.suppress(Exception):
                    await require(provider, caps.SharedNetworks, "shared networks").delete_network(
                        net.id
                    )
                raise
            self._networks[name] = net
            self._save(net)
            for m in net.members:
                self._bus.emit(m.sandbox_id, NETWORK_JOINED, network=name, address=m.address)
            log.info("network created", network=name, subnet=net.subnet, members=len(net.members))
            return net

    async def _write_hosts(self, net: Network) -> None:
        """Each member's /etc/hosts gets one block naming every member."""
        block = "\n".join(
            [HOSTS_BEGIN, *(f"{m.address}\t{m.hostname}" for m in net.members), HOSTS_END]
        )
        for m in net.members:
            await self._set_hosts_block(m.sandbox_id, block)

    async def _read_hosts(self, sandbox_id: str) -> str:
        """The member's /etc/hosts, or DEFAULT_HOSTS when it cannot be used as it is.
        Never more than HOSTS_MAX (+1, to tell) bytes in memory; the file API refuses
        non-regular files without opening them for I/O, so a FIFO cannot block this."""
        data, why = bytearray(), ""
        try:
            async for chunk in self._files.read(sandbox_id, "/etc/hosts", 0, HOSTS_MAX + 1):
                data += chunk
                if len(data) > HOSTS_MAX:
                    why = f"larger than {HOSTS_MAX} bytes"
                    break
        except (NotFound, FailedPrecondition, ResourceExhausted, InvalidArgument) as exc:
            why = exc.reason or type(exc).__name__
        if why:
            log.warning("replacing a member's /etc/hosts", sandbox_id=sandbox_id, why=why)
            return DEFAULT_HOSTS
        # Bytes that are not UTF-8 go back as they came.
        return bytes(data).decode("utf-8", errors="surrogateescape")

    async def _set_hosts_block(self, sandbox_id: str, block: str) -> None:
        current = await self._read_hosts(sandbox_id)
        kept, skipping = [], False
        for line in current.splitlines():
            if line == HOSTS_BEGIN:
                skipping = True
            elif line == HOSTS_END:
                skipping = False
            elif not skipping:
                kept.append(line)
        text = "\n".join([*kept, *([block] if block else [])]) + "\n"
        await self._files.write(
            sandbox_id, "/etc/hosts", _once(text.encode("utf-8", errors="surrogateescape")),
            mode=0o644, make_parents=True,
            append=False,
        )  # fmt: skip

    async def delete(self, name: str) -> None:
        async with self._lock:
            net = self.get(name)
            provider = self._providers.by_name[net.provider]
            for m in net.members:
                sb = self._registry.find(m.sandbox_id)
                if sb is None:
                    continue
                with contextlib.suppress(ComputeError):
                    await require(provider, caps.SharedNetworks, "shared networks").detach_network(
                        sb, IFNAME
                    )
                    await self._set_hosts_block(m.sandbox_id, "")
                self._bus.emit(m.sandbox_id, NETWORK_LEFT, network=name)
            await require(provider, caps.SharedNetworks, "shared networks").delete_network(net.id)
            self._networks.pop(name, None)
            self._store.records("networks").delete(name)

    def service_url(self, name: str, member: str, port: int) -> str:
        net = self.get(name)
        if not 0 < port < 65536:
            raise InvalidArgument(f"bad port {port}", reason="INVALID_PORT")
        for m in net.members:
            if member in (m.hostname, m.sandbox_id):
                return f"http://{m.hostname}:{port}"
        raise NotFound(f"{member!r} is not on network {name!r}", reason="MEMBER_NOT_FOUND")

    def _member_gone(self, sandbox_id: str) -> None:
        for net in self._networks.values():
            if any(m.sandbox_id == sandbox_id for m in net.members):
                # Its veth went with its namespace; only the record is left to fix.
                net.members = [m for m in net.members if m.sandbox_id != sandbox_id]
                self._save(net)
        self.ports.forget(sandbox_id)

    # ------------------------------------------------------------ forwarded ports

    async def expose(self, sandbox_id: str, port: int, gated: bool = False) -> str:
        """A host URL for the sandbox's port (ports.py); gated: a tenant's, with a secret."""
        return await self.ports.expose(sandbox_id, port, gated)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
