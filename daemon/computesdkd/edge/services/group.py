from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.group.v1 import group_pb2 as pb
from computesdk_api.group.v1 import group_pb2_grpc as pb_grpc
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.groups import Groups

Ctx = ServicerContext[Any, Any]


def _group(name: str, members: list[str]) -> pb.Group:
    return pb.Group(name=name, sandbox_ids=members)


class GroupServicer(pb_grpc.GroupServiceServicer):
    def __init__(self, groups: Groups) -> None:
        self._groups = groups

    @edge
    async def CreateGroup(
        self, request: pb.CreateGroupRequest, context: Ctx
    ) -> pb.CreateGroupResponse:
        members = self._groups.create(request.name, list(request.sandbox_ids))
        return pb.CreateGroupResponse(group=_group(request.name, members))

    @edge
    async def GetGroup(self, request: pb.GetGroupRequest, context: Ctx) -> pb.GetGroupResponse:
        return pb.GetGroupResponse(group=_group(request.name, self._groups.get(request.name)))

    @edge
    async def ListGroups(
        self, request: pb.ListGroupsRequest, context: Ctx
    ) -> pb.ListGroupsResponse:
        return pb.ListGroupsResponse(groups=[_group(n, m) for n, m in self._groups.all().items()])

    @edge
    async def AddGroupMembers(
        self, request: pb.AddGroupMembersRequest, context: Ctx
    ) -> pb.AddGroupMembersResponse:
        members = self._groups.add(request.name, list(request.sandbox_ids))
        return pb.AddGroupMembersResponse(group=_group(request.name, members))

    @edge
    async def RemoveGroupMembers(
        self, request: pb.RemoveGroupMembersRequest, context: Ctx
    ) -> pb.RemoveGroupMembersResponse:
        members = self._groups.remove(request.name, list(request.sandbox_ids))
        return pb.RemoveGroupMembersResponse(group=_group(request.name, members))

    @edge
    async def Broadcast(
        self, request: pb.BroadcastRequest, context: Ctx
    ) -> AsyncIterator[pb.BroadcastResponse]:
        command = convert.command_from(request.command)
        async for out in self._groups.broadcast(request.name, command):
            resp = pb.BroadcastResponse(sandbox_id=out.sandbox_id)
            if out.error is not None:
                resp.error.CopyFrom(
                    pb.MemberError(
                        code=out.error.code.name, reason=out.error.reason, message=out.error.message
                    )
                )
            else:
                assert out.exit is not None
                resp.result.CopyFrom(
                    pb.MemberResult(
                        stdout=out.stdout, stderr=out.stderr, exited=convert.exited_to(out.exit)
                    )
                )
            yield resp

    @edge
    async def DeleteGroup(
        self, request: pb.DeleteGroupRequest, context: Ctx
    ) -> pb.DeleteGroupResponse:
        destroyed = await self._groups.delete(request.name, request.destroy_members)
        return pb.DeleteGroupResponse(destroyed_sandbox_ids=destroyed)
