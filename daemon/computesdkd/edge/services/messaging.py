from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.messaging.v1 import messaging_pb2 as pb
from computesdk_api.messaging.v1 import messaging_pb2_grpc as pb_grpc
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.channels import Channel, Channels

Ctx = ServicerContext[Any, Any]


def _channel(ch: Channel) -> pb.Channel:
    return pb.Channel(name=ch.name, members=ch.members, capacity=ch.capacity)


class MessagingServicer(pb_grpc.MessagingServiceServicer):
    def __init__(self, channels: Channels) -> None:
        self._channels = channels

    @edge
    async def CreateChannel(
        self, request: pb.CreateChannelRequest, context: Ctx
    ) -> pb.CreateChannelResponse:
        ch = await self._channels.create(request.name, list(request.members), request.capacity)
        return pb.CreateChannelResponse(channel=_channel(ch))

    @edge
    async def DeleteChannel(
        self, request: pb.DeleteChannelRequest, context: Ctx
    ) -> pb.DeleteChannelResponse:
        await self._channels.delete(request.name)
        return pb.DeleteChannelResponse()

    @edge
    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Ctx
    ) -> pb.SendMessageResponse:
        seq = await self._channels.send(
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
        async for m in self._channels.subscribe(request.channel, request.member):
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
        await self._channels.ack(request.channel, request.member, request.sequence)
        return pb.AckMessagesResponse()
