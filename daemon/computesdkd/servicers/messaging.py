from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.messaging.v1 import messaging_pb2 as pb
from computesdk_api.messaging.v1 import messaging_pb2_grpc as pb_grpc
from computesdkd.manager import Manager
from computesdkd.messaging import Channel
from computesdkd.servicers import convert
from computesdkd.servicers._edge import edge

Ctx = ServicerContext[Any, Any]


def _channel(ch: Channel) -> pb.Channel:
    return pb.Channel(name=ch.name, members=ch.members, capacity=ch.capacity)


class MessagingServicer(pb_grpc.MessagingServiceServicer):
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.messaging = manager.messaging

    @edge
    async def CreateChannel(
        self, request: pb.CreateChannelRequest, context: Ctx
    ) -> pb.CreateChannelResponse:
        ch = await self.messaging.create(request.name, list(request.members), request.capacity)
        return pb.CreateChannelResponse(channel=_channel(ch))

    @edge
    async def DeleteChannel(
        self, request: pb.DeleteChannelRequest, context: Ctx
    ) -> pb.DeleteChannelResponse:
        await self.messaging.delete(request.name)
        return pb.DeleteChannelResponse()

    @edge
    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Ctx
    ) -> pb.SendMessageResponse:
        seq = await self.messaging.send(
            request.channel,
            request.sender,
            request.recipient,
            request.payload,
            request.wait_timeout_ms,
        )
        return pb.SendMessageResponse(sender_sequence=seq)

    @edge
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Ctx
    ) -> AsyncIterator[pb.SubscribeResponse]:
        async for m in self.messaging.subscribe(request.channel, request.member):
            yield pb.SubscribeResponse(
                message=pb.Message(
                    sequence=m.sequence,
                    sender=m.sender,
                    recipient=m.recipient,
                    payload=m.payload,
                    sender_sequence=m.sender_sequence,
                    send_time=convert.ts(m.time),
                )
            )

    @edge
    async def AckMessages(
        self, request: pb.AckMessagesRequest, context: Ctx
    ) -> pb.AckMessagesResponse:
        await self.messaging.ack(request.channel, request.member, request.sequence)
        return pb.AckMessagesResponse()
