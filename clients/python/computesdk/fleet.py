"""Calls about many sandboxes at once: warm pools, groups, shared networks and
message channels. Reached as client.pools, client.groups, client.networks and
client.channels."""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from computesdk_api.group.v1 import group_pb2 as group_pb
from computesdk_api.messaging.v1 import messaging_pb2 as msg_pb
from computesdk_api.network.v1 import network_pb2 as net_pb
from computesdk_api.pool.v1 import pool_pb2 as pool_pb

from . import _rpc
from ._process import _command, _result
from .errors import ComputeSDKError, error_from
from .sandbox import Sandbox
from .types import ExecResult, Resources

if TYPE_CHECKING:
    from .client import Client

SandboxRef = str | Sandbox


def _id(s: SandboxRef) -> str:
    return s if isinstance(s, str) else s.id


# ---------------------------------------------------------------- pools


@dataclass(frozen=True)
class PoolInfo:
    name: str
    provider: str
    template: str
    min: int
    max: int
    idle: int
    leased: int
    creating: int
    acquired_total: int
    hits_total: int
    misses_total: int
    released_total: int
    created_total: int
    discarded_total: int
    create_draws_total: int
    draining: bool

    @classmethod
    def from_proto(cls, p: pool_pb.Pool) -> PoolInfo:
        s, t = p.spec, p.stats
        return cls(
            s.name,
            s.provider,
            s.template,
            s.min,
            s.max,
            t.idle,
            t.leased,
            t.creating,
            t.acquired_total,
            t.hits_total,
            t.misses_total,
            t.released_total,
            t.created_total,
            t.discarded_total,
            t.create_draws_total,
            p.draining,
        )


class Pools:
    def __init__(self, client: Client) -> None:
        self._c = client

    async def create(
        self,
        name: str,
        *,
        provider: str = "",
        template: str = "",
        min: int = 1,
        max: int = 10,
        resources: Resources | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PoolInfo:
        spec = pool_pb.PoolSpec(
            name=name,
            provider=provider,
            template=template,
            min=min,
            max=max,
            resources=(resources or Resources()).to_proto(),
            env=dict(env or {}),
        )
        resp = await _rpc.call(self._c.pool_stub.CreatePool, pool_pb.CreatePoolRequest(spec=spec))
        return PoolInfo.from_proto(resp.pool)

    async def get(self, name: str) -> PoolInfo:
        resp = await _rpc.call(self._c.pool_stub.GetPool, pool_pb.GetPoolRequest(name=name))
        return PoolInfo.from_proto(resp.pool)

    async def list(self) -> builtins.list[PoolInfo]:
        resp = await _rpc.call(self._c.pool_stub.ListPools, pool_pb.ListPoolsRequest())
        return [PoolInfo.from_proto(p) for p in resp.pools]

    async def delete(self, name: str) -> None:
        await _rpc.call(self._c.pool_stub.DeletePool, pool_pb.DeletePoolRequest(name=name))

    async def acquire(
        self, name: str, *, metadata: Mapping[str, str] | None = None, wait_timeout_ms: int = 0
    ) -> Sandbox:
        """A healthy warm sandbox; release() gives it back."""
        resp = await _rpc.call(
            self._c.pool_stub.AcquireSandbox,
            pool_pb.AcquireSandboxRequest(
                pool=name, metadata=dict(metadata or {}), wait_timeout_ms=wait_timeout_ms
            ),
        )
        return Sandbox(self._c, resp.sandbox)

    async def release(self, sandbox: SandboxRef, *, hard: bool = False) -> bool:
        """Resets the sandbox and returns it to its pool (True), or destroys it (False)."""
        resp = await _rpc.call(
            self._c.pool_stub.ReleaseSandbox,
            pool_pb.ReleaseSandboxRequest(sandbox_id=_id(sandbox), hard=hard),
        )
        return resp.returned


# ---------------------------------------------------------------- groups


@dataclass(frozen=True)
class MemberResult:
    """One member's outcome of a broadcast: a result, or the error it met."""

    sandbox_id: str
    result: ExecResult | None
    error: ComputeSDKError | None

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.exit_code == 0


class Groups:
    def __init__(self, client: Client) -> None:
        self._c = client

    async def create(self, name: str, members: Sequence[SandboxRef] = ()) -> builtins.list[str]:
        resp = await _rpc.call(
            self._c.group_stub.CreateGroup,
            group_pb.CreateGroupRequest(name=name, sandbox_ids=[_id(m) for m in members]),
        )
        return list(resp.group.sandbox_ids)

    async def get(self, name: str) -> builtins.list[str]:
        resp = await _rpc.call(self._c.group_stub.GetGroup, group_pb.GetGroupRequest(name=name))
        return list(resp.group.sandbox_ids)

    async def list(self) -> dict[str, builtins.list[str]]:
        resp = await _rpc.call(self._c.group_stub.ListGroups, group_pb.ListGroupsRequest())
        return {g.name: list(g.sandbox_ids) for g in resp.groups}

    async def add(self, name: str, members: Sequence[SandboxRef]) -> builtins.list[str]:
        resp = await _rpc.call(
            self._c.group_stub.AddGroupMembers,
            group_pb.AddGroupMembersRequest(name=name, sandbox_ids=[_id(m) for m in members]),
        )
        return list(resp.group.sandbox_ids)

    async def remove(self, name: str, members: Sequence[SandboxRef]) -> builtins.list[str]:
        resp = await _rpc.call(
            self._c.group_stub.RemoveGroupMembers,
            group_pb.RemoveGroupMembersRequest(name=name, sandbox_ids=[_id(m) for m in members]),
        )
        return list(resp.group.sandbox_ids)

    async def broadcast(
        self,
        name: str,
        command: str | Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
    ) -> AsyncIterator[MemberResult]:
        """Runs command on every member at once; yields each outcome as it finishes."""
        req = group_pb.BroadcastRequest(
            name=name, command=_command(command, cwd, env, timeout_ms, False)
        )
        async for resp in _rpc.stream(self._c.group_stub.Broadcast, req):
            if resp.WhichOneof("outcome") == "error":
                e = resp.error
                yield MemberResult(resp.sandbox_id, None, error_from(e.code, e.reason, e.message))
            else:
                r = resp.result
                yield MemberResult(resp.sandbox_id, _result(r.stdout, r.stderr, r.exited, ""), None)

    async def destroy_all(self, name: str) -> builtins.list[str]:
        """Destroys every member and forgets the group; returns the destroyed ids."""
        resp = await _rpc.call(
            self._c.group_stub.DeleteGroup,
            group_pb.DeleteGroupRequest(name=name, destroy_members=True),
        )
        return list(resp.destroyed_sandbox_ids)

    async def delete(self, name: str) -> None:
        """Forgets the group; the members stay."""
        await _rpc.call(self._c.group_stub.DeleteGroup, group_pb.DeleteGroupRequest(name=name))


# ---------------------------------------------------------------- networks


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    subnet: str
    # hostname -> (sandbox id, address)
    members: dict[str, tuple[str, str]]

    @classmethod
    def from_proto(cls, n: net_pb.Network) -> NetworkInfo:
        return cls(n.name, n.subnet, {m.hostname: (m.sandbox_id, m.address) for m in n.members})


class Networks:
    def __init__(self, client: Client) -> None:
        self._c = client

    async def create(
        self, name: str, members: Mapping[str, SandboxRef] | Sequence[SandboxRef]
    ) -> NetworkInfo:
        """members: {hostname: sandbox} or sandboxes (named by their ids)."""
        if isinstance(members, Mapping):
            items = [
                net_pb.NetworkMember(sandbox_id=_id(s), hostname=h) for h, s in members.items()
            ]
        else:
            items = [net_pb.NetworkMember(sandbox_id=_id(s)) for s in members]
        resp = await _rpc.call(
            self._c.network_stub.CreateNetwork,
            net_pb.CreateNetworkRequest(name=name, members=items),
        )
        return NetworkInfo.from_proto(resp.network)

    async def get(self, name: str) -> NetworkInfo:
        resp = await _rpc.call(self._c.network_stub.GetNetwork, net_pb.GetNetworkRequest(name=name))
        return NetworkInfo.from_proto(resp.network)

    async def list(self) -> builtins.list[NetworkInfo]:
        resp = await _rpc.call(self._c.network_stub.ListNetworks, net_pb.ListNetworksRequest())
        return [NetworkInfo.from_proto(n) for n in resp.networks]

    async def delete(self, name: str) -> None:
        await _rpc.call(self._c.network_stub.DeleteNetwork, net_pb.DeleteNetworkRequest(name=name))

    async def get_service_url(self, network: str, member: str, port: int) -> str:
        """The URL other members use to reach member's port."""
        resp = await _rpc.call(
            self._c.network_stub.GetServiceUrl,
            net_pb.GetServiceUrlRequest(network=network, member=member, port=port),
        )
        return resp.url

    async def get_url(self, sandbox: SandboxRef, port: int) -> str:
        """A URL on the host's loopback that forwards to the sandbox's port."""
        resp = await _rpc.call(
            self._c.network_stub.ExposePort,
            net_pb.ExposePortRequest(sandbox_id=_id(sandbox), port=port),
        )
        return resp.url


# ---------------------------------------------------------------- channels


@dataclass(frozen=True)
class Message:
    sequence: int
    sender: str
    recipient: str
    payload: bytes
    sender_sequence: int
    sent_at: datetime

    @property
    def text(self) -> str:
        return self.payload.decode(errors="replace")

    def json(self) -> Any:
        """The payload as JSON (MessageQueue.send sends dicts and lists so)."""
        return json.loads(self.payload)


class Channels:
    """Message queues hosted by the daemon: at least once, ordered per sender."""

    def __init__(self, client: Client) -> None:
        self._c = client

    async def connect(
        self, name: str, members: Sequence[SandboxRef], *, capacity: int = 0
    ) -> builtins.list[str]:
        """Creates a channel for these members (sandboxes or any names)."""
        resp = await _rpc.call(
            self._c.messaging_stub.CreateChannel,
            msg_pb.CreateChannelRequest(
                name=name, members=[_id(m) for m in members], capacity=capacity
            ),
        )
        return list(resp.channel.members)

    async def delete(self, name: str) -> None:
        await _rpc.call(
            self._c.messaging_stub.DeleteChannel, msg_pb.DeleteChannelRequest(name=name)
        )

    async def send(
        self,
        channel: str,
        sender: SandboxRef,
        recipient: SandboxRef | None,
        payload: bytes | str,
        *,
        wait_timeout_ms: int = 0,
    ) -> int:
        """Queues payload for recipient (None: every other member); returns the
        sender's sequence number. Waits while the recipient's queue is full."""
        data = payload.encode() if isinstance(payload, str) else payload
        resp = await _rpc.call(
            self._c.messaging_stub.SendMessage,
            msg_pb.SendMessageRequest(
                channel=channel,
                sender=_id(sender),
                recipient=_id(recipient) if recipient is not None else "",
                payload=data,
                wait_timeout_ms=wait_timeout_ms,
            ),
        )
        return resp.sender_sequence

    async def subscribe(self, channel: str, member: SandboxRef) -> AsyncIterator[Message]:
        """Every unacknowledged message, then new ones; call ack() as they are handled."""
        req = msg_pb.SubscribeRequest(channel=channel, member=_id(member))
        async for resp in _rpc.stream(self._c.messaging_stub.Subscribe, req):
            m = resp.message
            yield Message(
                m.sequence, m.sender, m.recipient, m.payload, m.sender_sequence,
                m.send_time.ToDatetime(),
            )  # fmt: skip

    async def ack(self, channel: str, member: SandboxRef, sequence: int) -> None:
        """Acknowledges member's messages up to sequence: they are not delivered again."""
        await _rpc.call(
            self._c.messaging_stub.AckMessages,
            msg_pb.AckMessagesRequest(channel=channel, member=_id(member), sequence=sequence),
        )
