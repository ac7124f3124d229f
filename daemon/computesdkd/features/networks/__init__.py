"""Shared networks between sandboxes, and ports forwarded to the host's loopback.

A network is an isolated segment made by the members' provider (for local: a
bridge in a namespace of its own and a veth per member) with a /24 of its own.
Members find each other by name through a block the daemon keeps in each
member's /etc/hosts. A member's name is what the user controls (names.py: env
SERVICE_NAME, metadata), re-derived when its env changes, and the block is
rewritten then. Networks survive a daemon restart; a member that is destroyed
leaves its networks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import secrets
from collections.abc import AsyncIterator, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from computesdkd.core.bus import EventBus
from computesdkd.core.files import Files
from computesdkd.core.guard import Providers
from computesdkd.core.registry import Registry
from computesdkd.domain import events
from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    already_exists,
    not_found,
)
from computesdkd.domain.service_names import RESERVED
from computesdkd.features.networks.names import Member, Refusal, assign, choices
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
NETWORK_RENAMED, NAME_REFUSED = "network.renamed", "network.name_refused"
# A member's /etc/hosts is the member's to shape: the daemon reads at most this
# much of it, and starts from DEFAULT_HOSTS when it is larger, missing or not a
# regular file (a FIFO, a device, a directory).
HOSTS_MAX = 1 << 20
DEFAULT_HOSTS = "127.0.0.1\tlocalhost\n"


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
        # One task per member, following its env.changed events.
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # What was last refused per member, so a replayed event does not repeat it.
        self._refused: dict[str, list[Refusal]] = {}
        registry.on_destroyed.append(self._member_gone)

    def start(self) -> None:
        live = self._registry.ids()
        for name, value in self._store.records("networks").all():
            members = []
            for m in value.pop("members"):
                if "given" not in m:  # a record from before names were derived
                    m["given"] = m["hostname"] if m["hostname"] != m["sandbox_id"] else ""
                members.append(Member(**m))
            net = Network(**value, members=[m for m in members if m.sandbox_id in live])
            self._networks[name] = net
            self._save(net)
            for m in net.members:
                self._watch(m.sandbox_id)

    async def shutdown(self) -> None:
        self.ports.close()
        for task in self._watchers.values():
            task.cancel()
        self._watchers.clear()

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
            given = [h for _, h in members if h]
            for h in given:
                if not HOSTNAME.match(h) or h in RESERVED:
                    raise InvalidArgument(
                        f"bad hostname {h[:70]!r}: names are DNS labels, not reserved ones",
                        reason="INVALID_HOSTNAME",
                    )
            ids = {sid for sid, _ in members}
            if len(set(given)) != len(given) or len(ids) != len(members):
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
                for i, (sb, (_, hostname)) in enumerate(zip(sandboxes, members, strict=True)):
                    address = str(hosts[i])
                    await require(provider, caps.SharedNetworks, "shared networks").attach_network(
                        sb, net.id, IFNAME, address, PREFIX
                    )
                    net.members.append(Member(sb.id, "", address, given=hostname))
                self._name(net)
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
                self._bus.emit(
                    m.sandbox_id, NETWORK_JOINED, network=name, address=m.address, name=m.hostname
                )
                self._watch(m.sandbox_id)
            log.info("network created", network=name, subnet=net.subnet, members=len(net.members))
            return net

    async def _write_hosts(self, net: Network, tolerant: bool = False) -> None:
        """Each member's /etc/hosts gets one block naming every member. tolerant: a
        member that cannot take it (stopped meanwhile) does not keep it from the others."""
        block = "\n".join(
            [HOSTS_BEGIN, *(f"{m.address}\t{m.hostname}" for m in net.members), HOSTS_END]
        )
        for m in net.members:
            try:
                await self._set_hosts_block(m.sandbox_id, block)
            except ComputeError as exc:
                if not tolerant:
                    raise
                log.warning(
                    "could not rewrite a member's hosts", sandbox_id=m.sandbox_id, error=str(exc)
                )

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
                self._unwatch(m.sandbox_id)
            await require(provider, caps.SharedNetworks, "shared networks").delete_network(net.id)
            self._networks.pop(name, None)
            self._store.records("networks").delete(name)

    def service_url(self, name: str, member: str, port: int) -> str:
        net = self.get(name)
        if not 0 < port < 65536:
            raise InvalidArgument(f"bad port {port}", reason="INVALID_PORT")
        for m in net.members:
            if member.lower() == m.hostname or member == m.sandbox_id:
                return f"http://{m.hostname}:{port}"
        raise NotFound(
            f"{member[:70]!r} is not on network {name!r}; its members are named "
            f"{sorted(m.hostname for m in net.members)} (a member's name is its env "
            "SERVICE_NAME, else metadata service or name, else its sandbox id)",
            reason="MEMBER_NOT_FOUND",
        )

    def _member_gone(self, sandbox_id: str) -> None:
        self._unwatch(sandbox_id)
        for net in self._networks.values():
            if any(m.sandbox_id == sandbox_id for m in net.members):
                # Its veth went with its namespace; only the record is left to fix.
                net.members = [m for m in net.members if m.sandbox_id != sandbox_id]
                self._save(net)
                if net.members:  # the name it held is free: another member may want it
                    self._spawn(self._rename(net.name))
        self.ports.forget(sandbox_id)

    # ------------------------------------------------------------ members' names

    def _name(self, net: Network) -> list[tuple[Member, str]]:
        """Gives every member its name now (names.py); returns (member, old name) of
        those renamed. What a member asked for and did not get is told to it as an
        event, once per change (a replayed env event repeats nothing)."""
        ids = {m.sandbox_id for m in net.members}
        wanted: dict[str, list[str]] = {}
        refused: dict[str, list[Refusal]] = {}
        for m in net.members:
            sb = self._registry.find(m.sandbox_id)
            env, metadata = (sb.spec.env, sb.spec.metadata) if sb else ({}, {})
            wanted[m.sandbox_id], refused[m.sandbox_id] = choices(m, env, metadata, ids)
        names = assign(net.members, wanted)
        renamed = []
        for m in net.members:
            sid = m.sandbox_id
            if names[sid] != wanted[sid][0]:
                refused[sid].append(Refusal(wanted[sid][0], "", "held by another member"))
            if refused[sid] != self._refused.get(sid, []):
                self._refused[sid] = refused[sid]
                for r in refused[sid]:
                    self._bus.emit(
                        sid, NAME_REFUSED, f"{r.source or 'name'} {r.name!r}: {r.why}",
                        network=net.name, name=r.name, source=r.source, why=r.why,
                    )  # fmt: skip
            if names[sid] != m.hostname:
                renamed.append((m, m.hostname))
                m.hostname = names[sid]
        return renamed

    async def _rename(self, network: str) -> None:
        """Re-derives the network's names; on a change, rewrites every member's hosts block."""
        async with self._lock:
            net = self._networks.get(network)
            if net is None:
                return
            renamed = self._name(net)
            if not renamed:
                return
            self._save(net)
            await self._write_hosts(net, tolerant=True)
            for m, old in renamed:
                self._bus.emit(
                    m.sandbox_id, NETWORK_RENAMED, network=network, name=m.hostname, previous=old
                )

    def _network_of(self, sandbox_id: str) -> str:
        for net in self._networks.values():
            if any(m.sandbox_id == sandbox_id for m in net.members):
                return net.name
        return ""

    def _watch(self, sandbox_id: str) -> None:
        if sandbox_id not in self._watchers:
            self._watchers[sandbox_id] = self._spawn(self._follow_env(sandbox_id))

    def _unwatch(self, sandbox_id: str) -> None:
        task = self._watchers.pop(sandbox_id, None)
        if task is not None:
            task.cancel()
        self._refused.pop(sandbox_id, None)

    async def _follow_env(self, sandbox_id: str) -> None:
        # From its first event: an env change while this was not following is seen too
        # (a replay renames nothing that is already right).
        try:
            async for _ in self._bus.subscribe(0, [sandbox_id], [events.ENV_CHANGED]):
                if network := self._network_of(sandbox_id):
                    await self._rename(network)
        except ComputeError as exc:
            log.warning("stopped following a member's env", sandbox_id=sandbox_id, error=str(exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_log_failure)
        return task

    # ------------------------------------------------------------ forwarded ports

    async def expose(self, sandbox_id: str, port: int, gated: bool = False) -> str:
        """A host URL for the sandbox's port (ports.py); gated: a tenant's, with a secret."""
        return await self.ports.expose(sandbox_id, port, gated)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("network task failed", error=repr(exc))
