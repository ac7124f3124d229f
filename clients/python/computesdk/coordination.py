"""The spec's coordination objects over client.networks and client.channels:
create_shared_network([web, api]) and MessageQueue.

A member's service name is what the user controls, read live by the daemon:
its env SERVICE_NAME (set at create or later with set_env), else metadata
"service", else metadata "name", else the hostname a {name: sandbox} create gave,
else its id."""

from __future__ import annotations

import asyncio
import builtins
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .fleet import Message, NetworkInfo, SandboxRef
from .sandbox import Sandbox

if TYPE_CHECKING:
    from .client import Client


async def _client_of(members: Sequence[SandboxRef], client: Client | None) -> Client:
    if client is not None:
        return client
    for m in members:
        if isinstance(m, Sandbox):
            return m.client
    from .client import default_client

    return await default_client()


class SharedNetwork:
    """A private network its members share; members reach each other by service name."""

    def __init__(self, client: Client, info: NetworkInfo) -> None:
        self.client = client
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def members(self) -> dict[str, tuple[str, str]]:
        """service name -> (sandbox id, address), as of create or refresh()."""
        return self.info.members

    def get_service_url(self, service: str, port: int = 80) -> str:
        """The URL members use for service's port, e.g. http://api:80. No call: it
        is valid before any member has that name (set SERVICE_NAME later)."""
        return f"http://{service}:{port}"

    async def resolve_service_url(self, service: str, port: int = 80) -> str:
        """The same URL, once the daemon confirms a member answers to service
        (NotFoundError otherwise)."""
        return await self.client.networks.get_service_url(self.name, service, port)

    async def refresh(self) -> SharedNetwork:
        self.info = await self.client.networks.get(self.name)
        return self

    async def delete(self) -> None:
        await self.client.networks.delete(self.name)


async def create_shared_network(
    members: Sequence[SandboxRef] | Mapping[str, SandboxRef],
    *,
    name: str = "",
    client: Client | None = None,
) -> SharedNetwork:
    """A network for these sandboxes (a list, or {service name: sandbox}); name
    defaults to a fresh one. Uses the members' client."""
    listed = list(members.values()) if isinstance(members, Mapping) else list(members)
    c = await _client_of(listed, client)
    info = await c.networks.create(name or f"net-{uuid.uuid4().hex[:10]}", members)
    return SharedNetwork(c, info)


class MessageQueue:
    """The spec's MessageQueue: connect([web, api]), then send("web", "api", {...}).
    Members are named as on a shared network (service names). A recipient must be
    a member; a sender that is no member's name is the message's from label.
    Dicts and lists go as JSON; Message.json() reads them back."""

    def __init__(self, name: str = "", *, client: Client | None = None, capacity: int = 0):
        self.name = name or f"mq-{uuid.uuid4().hex[:10]}"
        self._client = client
        self._capacity = capacity

    async def _c(self) -> Client:
        if self._client is None:
            self._client = await _client_of((), None)
        return self._client

    async def connect(self, members: Sequence[SandboxRef]) -> builtins.list[str]:
        self._client = await _client_of(members, self._client)
        return await self._client.channels.connect(self.name, members, capacity=self._capacity)

    async def send(self, sender: SandboxRef, recipient: SandboxRef | None, payload: Any) -> int:
        """Queues payload for recipient (None: every other member); returns the
        sender's sequence number."""
        data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
        return await (await self._c()).channels.send(self.name, sender, recipient, data)

    async def subscribe(self, member: SandboxRef) -> AsyncIterator[Message]:
        """Every unacknowledged message for member, then new ones (see ack())."""
        async for m in (await self._c()).channels.subscribe(self.name, member):
            yield m

    async def receive(self, member: SandboxRef, *, timeout: float | None = None) -> Message:
        """The next message for member, acknowledged (TimeoutError after timeout s)."""
        c = await self._c()
        stream = c.channels.subscribe(self.name, member)
        try:
            m = await asyncio.wait_for(anext(stream), timeout)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        await c.channels.ack(self.name, member, m.sequence)
        return m

    async def ack(self, member: SandboxRef, sequence: int) -> None:
        await (await self._c()).channels.ack(self.name, member, sequence)

    async def delete(self) -> None:
        await (await self._c()).channels.delete(self.name)
