"""Channels between sandboxes and clients, hosted by the daemon.

Every recipient has a queue per channel. A message stays in it (in SQLite too)
until the recipient acknowledges it, so a subscriber that reconnects gets
everything it has not acknowledged, in order: delivery is at least once and
ordered per sender. Queues are bounded: a sender waits for room, and gives up
with RESOURCE_EXHAUSTED after its timeout.

Members are sandbox ids or names. A sandbox member is also addressed by its
service name (domain/service_names: env SERVICE_NAME, metadata service or name,
read at each call, so a setEnv counts at once; when two members want one name
the earlier member has it). Over the API a sender that is no member is a label
carried as the message's sender: the API caller is the real sender, and a
sandbox's own socket always sends as that sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from computesdkd.core.guard import Providers
from computesdkd.core.registry import Registry
from computesdkd.domain import service_names
from computesdkd.domain.errors import (
    ComputeError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    already_exists,
    not_found,
)
from computesdkd.providers import capabilities as caps
from computesdkd.providers.capabilities import require
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
DEFAULT_CAPACITY = 1000
MAX_CAPACITY = 100_000
MAX_MEMBERS = 1000
MAX_PAYLOAD = 1024 * 1024
# Unacknowledged bytes the daemon holds (in memory and in its state db): per
# recipient, and per channel over all recipients. Past either, senders wait and
# then fail with CHANNEL_FULL, as they do past the message capacity.
MAX_QUEUE_BYTES = 8 * 1024 * 1024
MAX_CHANNEL_BYTES = 64 * 1024 * 1024
DEFAULT_SEND_WAIT_MS = 10_000


@dataclass(frozen=True)
class Message:
    sequence: int
    sender: str
    recipient: str
    payload: bytes
    sender_sequence: int
    time: float


@dataclass
class Queue:
    pending: list[Message] = field(default_factory=list)  # unacknowledged, in order
    next_seq: int = 1
    pending_bytes: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


@dataclass
class Channel:
    name: str
    members: list[str]
    capacity: int
    sender_seq: dict[str, int] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)
    # One send at a time per channel keeps each sender's messages in order.
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Channels:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        store: Store,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._store = store
        self._channels: dict[str, Channel] = {}
        # Sandboxes that are channel members get a socket at /.computesdk/ctl/mq.sock.
        self._servers: dict[str, asyncio.Server] = {}
        registry.on_destroyed.append(self._sandbox_gone)

    async def start(self) -> None:
        for name, value in self._store.records("channels").all():
            ch = self._new(name, value["members"], value["capacity"])
            ch.sender_seq = dict(value.get("sender_seq", {}))
            for q_name, q in ch.queues.items():
                q.next_seq = int(value.get("next_seq", {}).get(q_name, 1))
            for recipient, seq, sender, sender_seq, payload, t in self._store.messages.of(name):
                queue = ch.queues.get(recipient)
                if queue is not None:
                    queue.pending.append(Message(seq, sender, recipient, payload, sender_seq, t))
                    queue.pending_bytes += len(payload)
                    queue.next_seq = max(queue.next_seq, seq + 1)
            await self._serve_members(ch)

    async def shutdown(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    def _new(self, name: str, members: list[str], capacity: int) -> Channel:
        ch = Channel(name, members, capacity, queues={m: Queue() for m in members})
        self._channels[name] = ch
        return ch

    def _save(self, ch: Channel) -> None:
        self._store.records("channels").put(
            ch.name,
            {
                "members": ch.members,
                "capacity": ch.capacity,
                "sender_seq": ch.sender_seq,
                "next_seq": {m: q.next_seq for m, q in ch.queues.items()},
            },
        )

    def get(self, name: str) -> Channel:
        ch = self._channels.get(name)
        if ch is None:
            raise not_found("channel", name)
        return ch

    async def create(self, name: str, members: list[str], capacity: int) -> Channel:
        if not NAME.match(name):
            raise InvalidArgument("bad channel name", reason="INVALID_NAME")
        if name in self._channels:
            raise already_exists("channel", name)
        members = list(dict.fromkeys(members))
        if not 2 <= len(members) <= MAX_MEMBERS or not all(NAME.match(m) for m in members):
            raise InvalidArgument(
                f"a channel has 2 to {MAX_MEMBERS} members with names of A-Z, a-z, 0-9, .:_-",
                reason="INVALID_MEMBERS",
            )
        capacity = capacity or DEFAULT_CAPACITY
        if capacity > MAX_CAPACITY:
            raise InvalidArgument(f"capacity is at most {MAX_CAPACITY}", reason="INVALID_CAPACITY")
        ch = self._new(name, members, capacity)
        self._save(ch)
        await self._serve_members(ch)
        return ch

    async def delete(self, name: str) -> None:
        ch = self.get(name)
        del self._channels[name]
        self._store.messages.delete(name)
        self._store.records("channels").delete(name)
        for q in ch.queues.values():  # wake subscribers and senders so they see it gone
            async with q.changed:
                q.changed.notify_all()

    def _names(self, ch: Channel) -> dict[str, str]:
        """Service name -> the sandbox member that has it (the earlier member on a clash)."""
        names: dict[str, str] = {}
        for m in ch.members:
            sb = self._registry.find(m)
            if sb is None:
                continue
            for name in service_names.candidates(sb.spec.env, sb.spec.metadata):
                if name not in ch.queues and name not in names:
                    names[name] = m
                    break
        return names

    def _resolve(self, ch: Channel, member: str) -> str:
        """The member `member` names: itself, or a sandbox member by service name; "" if none."""
        if member in ch.queues:
            return member
        return self._names(ch).get(member.lower(), "")

    def _member_key(self, ch: Channel, member: str) -> str:
        key = self._resolve(ch, member)
        if not key:
            known = sorted({*ch.members, *self._names(ch)})
            raise NotFound(
                f"{member[:70]!r} is not a member of channel {ch.name!r}; members are known as "
                f"{known[:20]} (a sandbox member also by its env SERVICE_NAME, "
                "else its metadata service or name)",
                reason="MEMBER_NOT_FOUND",
            )
        return key

    def _member(self, ch: Channel, member: str) -> Queue:
        return ch.queues[self._member_key(ch, member)]

    async def send(
        self, name: str, sender: str, recipient: str, payload: bytes, wait_ms: int
    ) -> int:
        """sender: a member (by id, name or service name), else a label (see the module's doc)."""
        ch = self.get(name)
        if not NAME.match(sender):
            raise InvalidArgument(
                "a sender is a member or a label of A-Z, a-z, 0-9, .:_- (1-128)",
                reason="INVALID_MEMBERS",
            )
        sender = self._resolve(ch, sender) or sender
        if len(payload) > MAX_PAYLOAD:
            raise ResourceExhausted(f"payload over {MAX_PAYLOAD} bytes", reason="PAYLOAD_TOO_LARGE")
        targets = (
            [self._member_key(ch, recipient)]
            if recipient
            else [m for m in ch.members if m != sender]
        )
        queues = [self._member(ch, t) for t in targets]
        deadline = time.monotonic() + (wait_ms or DEFAULT_SEND_WAIT_MS) / 1000
        async with ch.send_lock:
            for q in queues:  # room in every queue first: a send is all or nothing
                async with q.changed:
                    while (
                        len(q.pending) >= ch.capacity
                        or q.pending_bytes + len(payload) > MAX_QUEUE_BYTES
                        or _channel_bytes(ch) + len(payload) * len(queues) > MAX_CHANNEL_BYTES
                    ):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or self._channels.get(name) is not ch:
                            raise ResourceExhausted(
                                f"channel {name!r} is full for a recipient ({ch.capacity} "
                                f"messages or {MAX_QUEUE_BYTES >> 20} MiB unacknowledged, "
                                f"{MAX_CHANNEL_BYTES >> 20} MiB in the channel)",
                                reason="CHANNEL_FULL",
                            )
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(q.changed.wait(), remaining)
            # Labels share one counter (the API's): a caller cannot grow the record with names.
            counter = sender if sender in ch.queues else ""
            sender_seq = ch.sender_seq.get(counter, 0) + 1
            ch.sender_seq[counter] = sender_seq
            now = time.time()
            for target, q in zip(targets, queues, strict=True):
                msg = Message(q.next_seq, sender, target, payload, sender_seq, now)
                q.next_seq += 1
                self._store.messages.put(
                    name, target, msg.sequence, sender, sender_seq, payload, now
                )
                q.pending.append(msg)
                q.pending_bytes += len(payload)
                async with q.changed:
                    q.changed.notify_all()
            self._save(ch)
        return sender_seq

    async def subscribe(self, name: str, member: str) -> AsyncIterator[Message]:
        """Everything unacknowledged, then new messages as they come."""
        ch = self.get(name)
        q = self._member(ch, member)
        sent = 0  # highest sequence this stream has delivered
        while self._channels.get(name) is ch:
            batch = [m for m in q.pending if m.sequence > sent]
            if not batch:
                async with q.changed:
                    if not [m for m in q.pending if m.sequence > sent]:
                        await q.changed.wait()
                continue
            for m in batch:
                sent = m.sequence
                yield m

    async def ack(self, name: str, member: str, upto: int) -> None:
        ch = self.get(name)
        member = self._member_key(ch, member)
        q = ch.queues[member]
        if upto >= q.next_seq:
            raise InvalidArgument(
                f"sequence {upto} was never delivered to {member!r}", reason="INVALID_SEQUENCE"
            )
        q.pending = [m for m in q.pending if m.sequence > upto]
        q.pending_bytes = sum(len(m.payload) for m in q.pending)
        self._store.messages.ack(name, member, upto)
        async with q.changed:
            q.changed.notify_all()

    # ------------------------------------------------------------ inside sandboxes
    # `/.computesdk/agent mq send|recv` speaks JSON lines to this socket. The socket
    # belongs to one sandbox, so that sandbox is the sender: it cannot be forged.

    async def _serve_members(self, ch: Channel) -> None:
        for member in ch.members:
            sb = self._registry.find(member)
            if sb is None or member in self._servers:
                continue
            provider = self._providers.by_name[sb.spec.provider]
            try:
                sock = require(
                    provider, caps.SandboxSockets, "in-sandbox sockets"
                ).listen_in_sandbox(sb, "mq.sock")
            except ComputeError:
                continue  # this provider has no way in; its members use the API
            server = await asyncio.start_unix_server(
                functools.partial(self._serve, member), sock=sock, limit=2 * MAX_PAYLOAD
            )
            self._servers[member] = server

    def _sandbox_gone(self, sandbox_id: str) -> None:
        server = self._servers.pop(sandbox_id, None)
        if server is not None:
            server.close()

    async def _serve(
        self, member: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        def reply(obj: dict[str, object]) -> None:
            writer.write(json.dumps(obj).encode() + b"\n")

        try:
            req = json.loads(await reader.readline())
            channel = str(req.get("channel", ""))
            ch = self._channels.get(channel)
            if ch is None or member not in ch.queues:
                # A sandbox reaches only the channels it is a member of; missing and
                # another's read the same, so the socket tells nothing of either.
                raise not_found("channel", channel[:128])
            if req.get("op") == "send":
                seq = await self.send(
                    channel, member, str(req.get("to", "")), str(req.get("payload", "")).encode(), 0
                )
                reply({"sender_sequence": seq})
            elif req.get("op") == "recv":
                acks = asyncio.create_task(self._read_acks(channel, member, reader))
                try:
                    async for m in self.subscribe(channel, member):
                        reply(
                            {
                                "sequence": m.sequence,
                                "sender": m.sender,
                                "payload": m.payload.decode(errors="replace"),
                            }
                        )
                        await writer.drain()
                finally:
                    acks.cancel()
            else:
                reply({"error": "op must be send or recv"})
        except ComputeError as exc:
            reply({"error": f"{exc.reason}: {exc.message}"})
        except (ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()

    async def _read_acks(self, channel: str, member: str, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ValueError, ConnectionError, ComputeError):
            while line := await reader.readline():
                await self.ack(channel, member, int(json.loads(line)["ack"]))


def _channel_bytes(ch: Channel) -> int:
    return sum(q.pending_bytes for q in ch.queues.values())
