from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.events.v1 import events_pb2 as pb
from computesdk_api.events.v1 import events_pb2_grpc as pb_grpc
from computesdkd.core.bus import EventBus
from computesdkd.edge import convert
from computesdkd.edge.status import edge

Ctx = ServicerContext[Any, Any]


class EventServicer(pb_grpc.EventServiceServicer):
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    @edge
    async def SubscribeEvents(
        self, request: pb.SubscribeEventsRequest, context: Ctx
    ) -> AsyncIterator[pb.SubscribeEventsResponse]:
        async for ev in self._bus.subscribe(
            after=request.after_sequence,
            sandbox_ids=list(request.sandbox_ids),
            types=list(request.types),
            follow=not request.no_follow,
        ):
            yield pb.SubscribeEventsResponse(event=convert.event_to(ev))
